"""Every error a user can trigger names the thing to fix."""
import re

import numpy as np
import pytest

import graphc as gc


def test_shape_error_names_op_shapes_and_line():
    a = gc.placeholder("a", (3, 4))
    b = gc.placeholder("b", (5, 6))
    with pytest.raises(gc.ShapeError) as info:
        a @ b  # the line the message must name
    msg = str(info.value)
    assert msg.startswith("matmul:")
    assert "(3, 4)" in msg and "(5, 6)" in msg and "4 != 5" in msg
    assert "test_errors.py:" in msg


@pytest.mark.parametrize("build, pattern", [
    (lambda a, b: a + b, r"add: shapes cannot broadcast .*\(3, 4\) float32, \(5, 6\) float32"),
    (lambda a, b: gc.reshape(a, (5, 5)), r"reshape: cannot reshape 12 elements into \(5, 5\)"),
    (lambda a, b: gc.sum(a, axis=2), r"sum: axis 2 is out of range for a tensor of rank 2"),
    (lambda a, b: gc.concat([a, b], axis=0), r"concat: sizes differ on dimension 1"),
    (lambda a, b: gc.broadcast_to(a, (3, 5)), r"broadcast_to:"),
    (lambda a, b: gc.transpose(a, (0, 0)), r"transpose: axes \(0, 0\) are not a permutation"),
    (lambda a, b: a[5], r"getitem: index 5 is out of bounds for dimension 0 of size 3"),
    (lambda a, b: gc.softmax_cross_entropy(a, b), r"softmax_cross_entropy: labels must be integer"),
])
def test_shape_errors(build, pattern):
    a = gc.placeholder("a", (3, 4))
    b = gc.placeholder("b", (5, 6))
    with pytest.raises(gc.ShapeError, match=pattern) as info:
        build(a, b)
    assert "test_errors.py:" in str(info.value)


def test_sce_batch_mismatch_at_build_time():
    logits = gc.placeholder("logits", (8, 10))
    labels = gc.placeholder("labels", (7,), dtype="int32")
    with pytest.raises(gc.ShapeError, match="batch sizes differ: 8 logits rows, 7 labels"):
        gc.softmax_cross_entropy(logits, labels)


def _fn():
    x = gc.placeholder("x", (None, 3))
    t = gc.placeholder("t", (None,), dtype="int32")
    loss = gc.softmax_cross_entropy(x * 2.0, t)
    return gc.compile(loss), x


def test_feed_missing():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match="missing feed for placeholder\\(s\\) 't'"):
        fn(x=np.zeros((2, 3), np.float32))


def test_feed_unknown_name():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match="unknown placeholder 'q'.*\\['t', 'x'\\]"):
        fn(x=np.zeros((2, 3)), t=np.zeros(2, int), q=1)


def test_feed_wrong_shape():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match=r"'x' expects shape \(None, 3\), got \(2, 4\)"):
        fn(x=np.zeros((2, 4)), t=np.zeros(2, int))
    with pytest.raises(gc.FeedError, match=r"'t' expects shape \(None,\), got \(2, 1\)"):
        fn(x=np.zeros((2, 3)), t=np.zeros((2, 1), int))


def test_feed_wrong_dtype():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match="'t' is int32; cannot convert fed dtype float64"):
        fn(x=np.zeros((2, 3)), t=np.zeros(2))


def test_feed_int64_labels_converted_and_range_checked():
    fn, _ = _fn()
    out = fn(x=np.zeros((2, 3), np.float32), t=np.array([0, 2], dtype=np.int64))
    np.testing.assert_allclose(out, np.log(3), rtol=1e-6)
    with pytest.raises(gc.FeedError, match="'t' is int32; fed values .* do not fit"):
        fn(x=np.zeros((2, 3)), t=np.array([0, 2**40]))


def test_feed_batch_sizes_that_do_not_fit_name_the_op():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match=r"softmax_cross_entropy.*batch sizes differ.*"
                                           r"test_errors.py:"):
        fn(x=np.zeros((4, 3)), t=np.zeros(3, int))


def test_label_out_of_range_names_placeholder_range_op_and_line():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match=r"placeholder 't': label 7 is out of range for 3 "
                                           r"classes \(1 value\(s\) outside \[0, 3\); fed range "
                                           r"\[0, 7\]\), read by softmax_cross_entropy made at "
                                           r"test_errors\.py:\d+"):
        fn(x=np.zeros((2, 3)), t=np.array([0, 7]))


def test_label_out_of_range_behind_a_slice_is_still_caught_by_the_kernel():
    t = gc.placeholder("t", (None, 2), dtype="int32")
    x = gc.placeholder("x", (None, 3))
    fn = gc.compile(gc.softmax_cross_entropy(x, t[:, 0]))  # not traced to the placeholder
    with pytest.raises(gc.FeedError, match="label 5 is out of range for 3 classes"):
        fn(x=np.zeros((2, 3)), t=np.array([[0, 0], [5, 0]]))


def test_feed_twice_and_bad_key():
    fn, x = _fn()
    with pytest.raises(gc.FeedError, match="'x' is fed twice"):
        fn({x: np.zeros((2, 3))}, x=np.zeros((2, 3)), t=np.zeros(2, int))
    with pytest.raises(gc.FeedError, match="feed keys must be placeholders"):
        fn({3: 1})


def test_compile_errors():
    x = gc.placeholder("x", (3,))
    w = gc.parameter("w", shape=(3,))
    with pytest.raises(gc.CompileError, match="unknown backend 'tpu'"):
        gc.compile(x * w, backend="tpu")
    with pytest.raises(gc.CompileError, match="update of parameter 'w' has shape \\(4,\\)"):
        gc.compile(x, updates={w: gc.placeholder("z", (4,))})
    with pytest.raises(gc.CompileError, match="keys must be parameters"):
        gc.compile(x, updates={x: x})
    with pytest.raises(gc.CompileError, match="needs a scalar loss"):
        gc.compile(x * w, optimizer=gc.optim.SGD(0.1))


def test_gradient_errors():
    x = gc.placeholder("x", (3,))
    labels = gc.placeholder("labels", (3,), dtype="int32")
    y = gc.sum(x * gc.cast(labels, "float32"))
    with pytest.raises(gc.GradientError, match="'labels'.*int32 is not floating point"):
        gc.grad(y, labels)
    with pytest.raises(gc.GradientError, match="must be a scalar.*grad_output"):
        gc.grad(x * 2.0, x)
    with pytest.raises(gc.GradientError, match="greater.*bool is not floating point"):
        gc.grad(y, x > 0)


def test_all_errors_are_graphc_errors():
    for cls in (gc.GraphError, gc.ShapeError, gc.FeedError, gc.GradientError, gc.CompileError,
                gc.NumericsError, gc.ResourceError, gc.DataError, gc.CheckpointError,
                gc.train.TrainError, gc.testing.GradientCheckError):
        assert issubclass(cls, gc.GraphcError)
    assert issubclass(gc.ResourceError, MemoryError)


# --- GraphError: building the graph ---------------------------------------------------------
def test_graph_errors_name_the_node_and_line():
    x = gc.placeholder("x", (3, 4))
    with pytest.raises(gc.GraphError, match=r"name 'x' is already used in this graph by "
                                            r"placeholder 'x' \(3, 4\) float32 at test_errors\.py:"):
        gc.placeholder("x", (2,))
    with gc.Graph():
        y = gc.placeholder("y", (3, 4))
    with pytest.raises(gc.GraphError, match=r"add: tensors come from different graphs: "
                                            r"placeholder 'x' .*test_errors\.py:\d+ and "
                                            r"placeholder 'y' .*test_errors\.py:\d+"):
        x + y
    with pytest.raises(gc.GraphError, match=r"truth value .*greater \(3, 4\) bool at "
                                            r"test_errors\.py:\d+.*gc\.where"):
        bool(x > 0)


@pytest.mark.parametrize("build, pattern", [
    (lambda x: gc.placeholder("z", (3, -1)), r"placeholder 'z': shape entries must be "
                                             r"non-negative ints or None, got \(3, -1\)"),
    (lambda x: gc.parameter("v", shape=(3,), init="bogus"),
     r"parameter 'v': unknown initializer 'bogus'; choose one of \[.*'zeros'\]"),
    (lambda x: gc.parameter("v"), r"parameter 'v' needs either value= or shape="),
    (lambda x: gc.dropout(x, 1.5), r"dropout: p must lie in \[0, 1\], got 1\.5"),
    (lambda x: x[1.5], r"only basic indexing .*got 1\.5; integer arrays work too"),
    (lambda x: x[x > 0], r"boolean mask indexing .*use gc\.where"),
    (lambda x: gc.concat([]), r"concat needs at least one tensor"),
    (lambda x: gc.one_hot(gc.placeholder("l", (3,), "int32"), 0),
     r"one_hot: num_classes must be a positive int, got 0"),
    (lambda x: gc.mse_loss(x, x, reduction="avg"), r"mse_loss: reduction must be 'mean', 'sum' "
                                                   r"or 'none', got 'avg'"),
    (lambda x: gc.gelu(x, approximate="fast"), r"gelu: approximate must be 'none' or 'tanh'"),
    (lambda x: gc.get_default_graph().get("nope"), r"no placeholder or parameter named 'nope' "
                                                   r"in this graph; known: \['x'\]"),
    (lambda x: gc.nn.Dense(5, 2)(x), r"dense_\d+: expects 5 input features, got a tensor of "
                                     r"shape \(3, 4\)"),
])
def test_graph_errors_name_what_to_fix(build, pattern):
    x = gc.placeholder("x", (3, 4))
    with pytest.raises(gc.GraphError, match=pattern):
        build(x)


def test_parameter_assignment_names_parameter_and_shapes():
    w = gc.parameter("w", shape=(4,))
    with pytest.raises(gc.GraphError, match=r"parameter 'w' has shape \(4,\); cannot assign a "
                                            r"value of shape \(5,\)"):
        w.value = np.zeros(5)


def test_hinge_loss_shape_error_names_both_shapes():
    scores = gc.placeholder("scores", (3, 4))
    with pytest.raises(gc.ShapeError, match=r"hinge_loss: expects scores \(N, C\) and labels "
                                            r"\(N,\), got \(3, 4\) and \(3, 1\)"):
        gc.hinge_loss(scores, gc.placeholder("l", (3, 1), "int32"))


# --- GradientError ----------------------------------------------------------------------------
def test_op_without_gradient_rule_names_op_input_and_line(monkeypatch):
    from graphc.ops import registry
    from graphc.ops.registry import OpDef, apply
    op = OpDef("test_no_grad", lambda shapes, dts: (shapes[0], dts[0]), lambda a: a * 2.0,
               grads=(None,), elementwise=True)
    monkeypatch.setitem(registry._REGISTRY, "test_no_grad", op)
    x = gc.placeholder("x", (3,))
    y = gc.sum(apply("test_no_grad", (x,)))
    with pytest.raises(gc.GradientError, match=r"op 'test_no_grad' has no gradient with respect "
                                               r"to its input 0 \(placeholder 'x'.*test_errors\.py:"):
        gc.grad(y, x)


def test_grad_output_shape_mismatch_names_both_shapes():
    x = gc.placeholder("x", (3,))
    with pytest.raises(gc.GradientError, match=r"grad_output has shape \(3,\) but y has shape "
                                               r"\(\)"):
        gc.grad(gc.sum(x), x, grad_output=np.ones(3))


# --- CompileError -----------------------------------------------------------------------------
def test_op_without_backend_kernel_fails_at_compile_time_naming_op_and_backend(monkeypatch):
    from graphc.ops import registry
    from graphc.ops.registry import OpDef, apply
    op = OpDef("test_no_kernel", lambda shapes, dts: (shapes[0], dts[0]), None,
               grads=(lambda g, y, a: g,), elementwise=True)
    monkeypatch.setitem(registry._REGISTRY, "test_no_kernel", op)
    x = gc.placeholder("x", (3,))
    y = apply("test_no_kernel", (x * 2.0,))
    with pytest.raises(gc.CompileError, match=r"the numpy backend has no kernel for op "
                                              r"'test_no_kernel' \(node made at test_errors\.py:"
                                              rf"{y.source.line}\)"):
        gc.compile(y + 1.0)
    with pytest.raises(gc.CompileError, match="test_no_kernel"):
        gc.compile(y, backend="auto")
    assert "test_no_kernel" in registry._REGISTRY  # removed again by monkeypatch


def test_compile_errors_name_parameters_and_outputs():
    x = gc.placeholder("x", (3,))
    w = gc.parameter("w", shape=(3,))
    with pytest.raises(gc.CompileError, match="outputs must be tensors, got 3"):
        gc.compile([x, 3])
    with pytest.raises(gc.CompileError, match="nothing to compute"):
        gc.compile([])
    with pytest.raises(gc.CompileError, match="parameter 'w' is updated both by `updates` and "
                                              "by the optimizer"):
        gc.compile(gc.sum(x * w), updates={w: w * 2.0}, optimizer=gc.optim.SGD(0.1))
    with pytest.raises(gc.CompileError, match=r"the optimizer needs a scalar loss, got mul "
                                              r"\(3,\) float32 at test_errors\.py:"):
        gc.compile(x * w, optimizer=gc.optim.SGD(0.1))
    with pytest.raises(gc.CompileError, match=r"memory_limit: expected a positive number of "
                                              r"bytes .* got 'lots'"):
        gc.compile(x, memory_limit="lots")


# --- ResourceError ----------------------------------------------------------------------------
def _wide():
    x = gc.placeholder("x", (None, 64))
    w = gc.parameter("w", shape=(64, 256), seed=0)
    h = gc.relu(x @ w)  # the largest buffer: (batch, 256)
    return gc.sum(h * h), h


def test_plan_over_memory_limit_gives_need_largest_buffer_and_hint():
    loss, h = _wide()
    fn = gc.compile(loss, memory_limit="64K")
    fn(x=np.ones((8, 64), np.float32))  # 8 KiB of activations fit
    w_before = gc.get_default_graph().get("w").value
    with pytest.raises(gc.ResourceError) as info:
        fn(x=np.ones((512, 64), np.float32))
    msg = str(info.value)
    assert re.search(r"the plan for feed shapes x=\(512, 64\) needs \d+\.\d KiB \(arena "
                     r"\d+\.\d KiB \+ output arrays 4 B\)", msg)
    assert "exceeds the memory limit of 64.0 KiB" in msg
    assert re.search(r"largest buffer is matmul \(512, 256\) float32 \(512\.0 KiB\) at "
                     r"test_errors\.py:\d+", msg)
    assert "smaller batch size" in msg and "memory_limit=" in msg and "GRAPHC_MEMORY_LIMIT" in msg
    np.testing.assert_array_equal(gc.get_default_graph().get("w").value, w_before)


def test_memory_limit_from_the_environment(monkeypatch):
    loss, _ = _wide()
    monkeypatch.setenv("GRAPHC_MEMORY_LIMIT", "100000")
    with pytest.raises(gc.ResourceError, match=r"exceeds the memory limit of 97\.7 KiB"):
        gc.compile(loss)(x=np.ones((512, 64), np.float32))
    monkeypatch.setenv("GRAPHC_MEMORY_LIMIT", "1G")
    gc.compile(loss)(x=np.ones((512, 64), np.float32))
    monkeypatch.setenv("GRAPHC_MEMORY_LIMIT", "many")
    with pytest.raises(gc.CompileError, match="GRAPHC_MEMORY_LIMIT: expected a positive number"):
        gc.compile(loss)(x=np.ones((512, 64), np.float32))


def test_allocation_the_machine_cannot_make_is_a_resource_error():
    # (n, 1, 1) + (1, n, 1) + (1, 1, n) with n = 2**20 is 4 EiB: beyond any address space
    n = 1 << 20
    a = gc.placeholder("a", (None, 1, 1))
    b = gc.placeholder("b", (1, None, 1))
    c = gc.placeholder("c", (1, 1, None))
    feeds = dict(a=np.zeros((n, 1, 1), np.float32), b=np.zeros((1, n, 1), np.float32),
                 c=np.zeros((1, 1, n), np.float32))
    in_arena = gc.compile(gc.sum(a + b + c), optimize=False)  # a + b lives in the arena
    with pytest.raises(gc.ResourceError, match=r"needs 4\.0 EiB .* the machine could not "
                                               r"allocate it .*Hint: use a smaller batch"):
        in_arena(feeds)
    x = gc.placeholder("x", (1, 1, 1))
    handed_back = gc.compile(gc.broadcast_to(x, (n, n, n)) * 2.0)  # writes the returned array
    assert handed_back.bound_plan(x=(1, 1, 1)).memory.arena_bytes < 1024
    with pytest.raises(gc.ResourceError, match=r"needs 4\.0 EiB .*an allocation failed while "
                                               r"it ran"):
        handed_back(x=np.ones((1, 1, 1), np.float32))


# --- NumericsError, DataError, CheckpointError, TrainError -----------------------------------
def test_numerics_error_names_op_and_line():
    x = gc.placeholder("x", (2,))
    y = gc.sqrt(x)
    with pytest.raises(gc.NumericsError, match=rf"NaN in value .*: sqrt %\d+ made at "
                                               rf"test_errors\.py:{y.source.line}"):
        gc.compile(y, check_numerics=True)(x=np.array([1.0, -1.0], np.float32))


def test_data_error_names_the_file(tmp_path):
    with pytest.raises(gc.DataError, match=f"{tmp_path}/missing.idx: no such file"):
        gc.data.read_idx(str(tmp_path / "missing.idx"))
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(gc.DataError, match=f"{bad}: not an IDX file"):
        gc.data.read_idx(str(bad))


def test_checkpoint_errors_name_the_file_and_parameter(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    with pytest.raises(gc.CheckpointError, match=f"{path}: no such checkpoint file"):
        gc.load(path, gc.get_default_graph())
    with gc.Graph() as g1:
        gc.parameter("w", shape=(4,))
    gc.save(path, g1)
    with gc.Graph() as g2:
        gc.parameter("w", shape=(5,))
    with pytest.raises(gc.CheckpointError, match=r"'w' is saved as \(4,\) float32 but the "):
        gc.load(path, g2)


def test_train_error_names_the_option():
    model = gc.nn.Dense(4, 2)
    data = (np.zeros((4, 4), np.float32), np.zeros(4, int))
    with pytest.raises(gc.train.TrainError, match=r"unknown loss 'l1'; known: \['bce', "):
        gc.fit(model, data, loss="l1", progress=False)
    with pytest.raises(gc.train.TrainError, match=r"inputs and labels differ in length \(4 and 3\)"):
        gc.fit(model, (data[0], data[1][:3]), progress=False)
