"""Every error a user can trigger names the thing to fix."""
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


def test_label_out_of_range():
    fn, _ = _fn()
    with pytest.raises(gc.FeedError, match="label 7 is out of range for 3 classes"):
        fn(x=np.zeros((2, 3)), t=np.array([0, 7]))


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
    for cls in (gc.GraphError, gc.ShapeError, gc.FeedError, gc.GradientError, gc.CompileError):
        assert issubclass(cls, gc.GraphcError)
