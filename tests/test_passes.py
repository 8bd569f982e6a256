"""Each compiler pass, before and after: the rewrite happens and values are unchanged."""
import numpy as np
import pytest

import graphc as gc
from graphc.passes import DEFAULT_PASSES, Program, cse, dce, fold, run_passes, simplify, sink


def _ops(program):
    return [n.op.name for n in program.nodes() if n.inputs]


def _same_values(outputs, feeds, rtol=1e-6):
    a = gc.compile(outputs, optimize=False)(feeds)
    b = gc.compile(outputs)(feeds)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=1e-6)


def test_cse_merges_equal_subexpressions():
    x = gc.placeholder("x", (3,))
    y = gc.exp(x) + gc.exp(x) * gc.constant(2.0) + gc.constant(2.0)
    after = cse.run(Program((y,)))
    assert _ops(Program((y,))).count("exp") == 2 and _ops(after).count("exp") == 1
    assert sum(1 for n in after.nodes() if n.op.name == "constant") == 1
    _same_values([y], {"x": np.array([0.1, 0.2, 0.3])})


def test_constant_folding():
    x = gc.placeholder("x", (3,))
    y = x + gc.constant(2.0) * gc.constant(3.0) - gc.exp(gc.constant(0.0))
    after = fold.run(Program((y,)))
    assert _ops(after) == ["add", "sub"]
    consts = sorted(float(n.value) for n in after.nodes() if n.op.name == "constant")
    assert consts == [1.0, 6.0]


def test_dce_drops_self_updates_and_unreached_nodes():
    w = gc.parameter("w", value=[1.0])
    x = gc.placeholder("x", (1,))
    unused = gc.exp(x) * 3.0  # noqa: F841 - never an output
    after = dce.run(Program((x * 2.0,), ((w, w),)))
    assert after.updates == () and _ops(after) == ["mul"]


@pytest.mark.parametrize("build, gone", [
    (lambda x: x * 1.0, "mul"), (lambda x: 1.0 * x, "mul"), (lambda x: x + 0.0, "add"),
    (lambda x: 0.0 + x, "add"), (lambda x: x - 0.0, "sub"), (lambda x: x / 1.0, "div"),
    (lambda x: -(-x), "neg"), (lambda x: x.T.T, "transpose"),
])
def test_identities(build, gone):
    x = gc.placeholder("x", (2, 3))
    y = build(x)
    assert gone in _ops(Program((y,)))
    assert gone not in _ops(simplify.run(Program((y,))))
    _same_values([y * 1.5], {"x": np.arange(6.0).reshape(2, 3)})


def test_reshape_chain_becomes_one_reshape():
    x = gc.placeholder("x", (2, 3, 4))
    y = x.reshape(6, 4).reshape(4, 6).reshape(24)
    after = simplify.run(Program((y,)))
    assert _ops(after) == ["reshape"]
    _same_values([y], {"x": np.arange(24.0).reshape(2, 3, 4)})


def test_log_softmax_and_fused_cross_entropy():
    x = gc.placeholder("x", (4, 5))
    t = gc.placeholder("t", (4,), dtype="int32")
    loss = gc.mean(-gc.sum(gc.one_hot(t, 5, "float32") * gc.log(gc.softmax(x, axis=1)), axis=1))
    after = simplify.run(Program((loss,)))
    assert "softmax_cross_entropy" in _ops(after) and "log" not in _ops(after)
    xv = np.array([[1000.0, 0, 0, 0, 0]] * 4, np.float32)  # overflows the written-out form
    got = gc.compile(loss)(x=xv, t=[1, 2, 3, 0])
    np.testing.assert_allclose(got, 750.0, rtol=1e-6)


def test_optimizer_differentiates_the_stable_form():
    w = gc.parameter("w", value=np.zeros((3, 2)))
    x = gc.placeholder("x", (4, 3))
    t = gc.placeholder("t", (4,), dtype="int32")
    logits = x @ w
    loss = gc.mean(-gc.sum(gc.one_hot(t, 2, "float32") * gc.log(gc.softmax(logits)), axis=1))
    fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    ops = [s.op.name for s in fn.symbolic_plan.steps]
    assert "softmax_cross_entropy_backward" in ops and "log" not in ops


def test_log_sigmoid_is_stable():
    x = gc.placeholder("x", (3,))
    y = gc.log(gc.sigmoid(x)) + gc.log(1.0 - gc.sigmoid(x))
    after = simplify.run(Program((y,)))
    assert "softplus" in _ops(after) and "log" not in _ops(after)
    got = gc.compile(y)(x=np.array([-200.0, 0.0, 200.0]))
    np.testing.assert_allclose(got, [-200.0, 2 * np.log(0.5), -200.0], rtol=1e-5)


def test_broadcast_then_sum():
    x = gc.placeholder("x", (3,))
    g = gc.grad(gc.sum(gc.broadcast_to(x, (5, 3)) * 2.0), x)
    _same_values([g], {"x": np.ones(3)})


OPS = [gc.tanh, gc.sigmoid, gc.exp, lambda t: t * 1.5, lambda t: t + 0.25, gc.relu, gc.square,
       lambda t: gc.maximum(t, 0.1), lambda t: gc.where(t > 0, t, t * 0.5), gc.softplus, gc.elu]
BINARY = [lambda a, b: a + b, lambda a, b: a * b, lambda a, b: a - b, gc.maximum]


@pytest.mark.parametrize("seed", range(25))
def test_optimized_equals_unoptimized_on_random_graphs(seed):
    rng = np.random.default_rng(seed)
    x = gc.placeholder("x", (None, 4))
    w = gc.parameter("w", shape=(4, 4), seed=seed)
    b = gc.parameter("b", shape=(4,), init="normal", seed=seed + 1)
    pool = [x, x @ w, b]
    for _ in range(int(rng.integers(4, 14))):
        if rng.random() < 0.6:
            pool.append(OPS[int(rng.integers(len(OPS)))](pool[int(rng.integers(len(pool)))]))
        else:
            a, c = (pool[int(rng.integers(len(pool)))] for _ in range(2))
            pool.append(BINARY[int(rng.integers(len(BINARY)))](a, c))
        if rng.random() < 0.2:
            pool.append(gc.sum(pool[-1], axis=0, keepdims=bool(rng.integers(2))))
    loss = gc.mean(pool[-1]) + gc.mean(pool[len(pool) // 2])
    grads = gc.grad(loss, [w, b])
    feeds = {"x": rng.normal(size=(int(rng.integers(1, 6)), 4))}
    _same_values([loss, *grads], feeds, rtol=1e-5)


def test_compile_passes_argument():
    x = gc.placeholder("x", (3,))
    y = gc.exp(x) + gc.exp(x)
    fn = gc.compile(y, passes=["cse"])
    assert [s.op.name for s in fn.symbolic_plan.steps].count("exp") == 1
    fused = gc.compile(gc.tanh(y) * 2.0, passes=["cse", "fuse"])
    fused(x=np.ones(3))
    assert [k.kind for k in fused.plan.kernels].count("fused") == 1
    fn = gc.compile(y, optimize=False)
    assert [s.op.name for s in fn.symbolic_plan.steps].count("exp") == 2
    assert set(DEFAULT_PASSES) <= {"simplify", "fold", "sink", "cse", "dce"}
    run_passes(Program((y,)), [cse.run, "dce"])  # callables and names mix


# --- sink: broadcast adds moved into the slices that read them ------------------------------
def _stacked_projection(steps=3, batch=None):
    x = gc.placeholder("x", (steps, batch, 4))
    w = gc.parameter("w", value=np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32))
    b = gc.parameter("b", value=np.arange(6, dtype=np.float32))
    proj = gc.reshape(gc.reshape(x, (-1, 4)) @ w.T + b, (steps, -1, 6))
    return x, w, b, proj


def _full_adds(program, shape):
    """The adds of the bias to the whole stacked projection."""
    return [n for n in program.nodes() if n.op.name == "add" and n.shape == shape
            and any(i.op.name == "matmul" for i in n.inputs)]


def test_sink_moves_a_bias_add_into_the_steps_slices():
    x, w, b, proj = _stacked_projection()
    h = None
    for t in range(3):
        z = proj[t] if h is None else proj[t] + h
        h = gc.tanh(z)
    loss = gc.sum(h * h)
    grads = gc.grad(loss, [w, b])
    before = run_passes(Program((loss, *grads)), ("simplify", "fold"))
    assert len(_full_adds(before, (None, 6))) == 1
    after = sink.run(before)
    assert not _full_adds(after, (None, 6))  # no pass over the stacked projection
    step_adds = [n for n in after.nodes() if n.op.name == "add"
                 and any(i.op.name == "getitem" for i in n.inputs)]
    assert len(step_adds) == 3 and all(b in n.inputs for n in step_adds)
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 5, 4)).astype(np.float32)}
    _same_values([loss, *grads], feeds, rtol=1e-5)


def test_sink_leaves_an_add_that_is_read_whole():
    x, w, b, proj = _stacked_projection()
    stacked = gc.sum(proj)  # the whole sum reads every element: the add stays
    loss = stacked + gc.sum(gc.tanh(proj[0]))
    after = sink.run(run_passes(Program((loss,)), ("simplify", "fold")))
    assert len(_full_adds(after, (None, 6))) == 1


def test_sink_slices_the_bias_with_slices_that_cut_its_dims():
    x, w, b, proj = _stacked_projection()
    loss = gc.sum(gc.tanh(proj[:, :, 0:3])) + gc.sum(gc.sigmoid(proj[:, :, 3:6]))
    after = sink.run(run_passes(Program((loss,)), ("simplify", "fold")))
    assert not _full_adds(after, (None, 6))
    bias_parts = [n for n in after.nodes() if n.op.name == "getitem" and n.inputs[0] is b]
    assert sorted(n.shape for n in bias_parts) == [(3,), (3,)]
    feeds = {"x": np.random.default_rng(2).normal(size=(3, 2, 4)).astype(np.float32)}
    _same_values([loss], feeds, rtol=1e-5)


def test_sink_leaves_an_add_read_by_overlapping_slices():
    # columns 2 and 3 are read twice: sunk, their sums would be computed twice
    x, w, b, proj = _stacked_projection()
    loss = gc.sum(gc.tanh(proj[:, :, 0:4])) + gc.sum(gc.sigmoid(proj[:, :, 2:6]))
    after = sink.run(run_passes(Program((loss,)), ("simplify", "fold")))
    assert len(_full_adds(after, (None, 6))) == 1


def test_sink_moves_a_full_size_add_into_its_slices():
    # an LSTM step's input projection plus recurrent product, read only in gate slices
    a = gc.placeholder("a", (None, 8))
    w = gc.parameter("w", value=np.random.default_rng(4).normal(size=(8, 8)).astype(np.float32))
    z = a + gc.tanh(a) @ w
    loss = gc.sum(gc.sigmoid(z[:, 0:4]) * gc.tanh(z[:, 4:8]))
    grads = gc.grad(loss, [a, w])
    before = run_passes(Program((loss, *grads)), ("simplify", "fold"))
    after = sink.run(before)
    full = [n for n in after.nodes() if n.op.name == "add" and n.shape == (None, 8)
            and any(i.op.name == "matmul" for i in n.inputs)]
    assert not full
    feeds = {"a": np.random.default_rng(5).normal(size=(3, 8)).astype(np.float32)}
    _same_values([loss, *grads], feeds, rtol=1e-5)


def test_lstm_plan_has_no_pass_over_the_stacked_projection():
    lstm = gc.nn.LSTM(8, 16)
    x = gc.placeholder("x", (5, None, 8))
    _, (h, _) = lstm.run(x)
    fn = gc.compile(gc.sum(h * h), optimizer=gc.optim.SGD(lr=0.1))
    feeds = {"x": np.random.default_rng(3).normal(size=(5, 4, 8)).astype(np.float32)}
    fn(feeds)
    stacked = [k for k in fn.plan.kernels if k.kind == "fused"
               and fn.plan.shapes[k.outputs[0]] == (20, 64)]
    assert not stacked
