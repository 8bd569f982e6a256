"""compile(..., check_numerics=True): the first kernel producing NaN or Inf is named, with the
original op inside a fused kernel, and a failed step leaves every parameter as it was."""
import numpy as np
import pytest

import graphc as gc


def _params(graph=None):
    graph = graph or gc.get_default_graph()
    return {p.name: p.value for p in graph.parameters()}


def _assert_same(before, after):
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_finite_step_runs_and_matches_unchecked():
    x = gc.placeholder("x", (None, 3))
    w = gc.parameter("w", shape=(3, 2), seed=0)
    y = gc.tanh(x @ w) * 2.0
    feed = {"x": np.ones((4, 3), np.float32)}
    np.testing.assert_array_equal(gc.compile(y, check_numerics=True)(feed), gc.compile(y)(feed))


def test_nan_inside_a_fused_kernel_names_the_original_op_and_line():
    x = gc.placeholder("x", (None, 3))
    y = gc.log(x - 1.0) * 2.0 + 1.0  # the log makes the NaN
    fn = gc.compile(y, check_numerics=True)
    assert any(k.kind == "fused" and "log" in k.ops and len(k.steps) > 1
               for k in fn.bound_plan(x=(4, 3)).kernels)
    fn(x=np.full((4, 3), 3.0, np.float32))
    with pytest.raises(gc.NumericsError) as info:
        fn(x=np.full((4, 3), 0.5, np.float32))
    msg = str(info.value)
    assert "NaN" in msg and "fused kernel [" in msg
    assert "first of its ops to produce NaN is log" in msg
    line = y.inputs[0].inputs[0].source.line
    assert f"test_numerics.py:{line}" in msg
    assert "from finite inputs" in msg


def test_inf_first_then_nan_reports_the_op_that_made_the_inf():
    x = gc.placeholder("x", (None, 4))
    big = gc.exp(x * 100.0)  # overflows to Inf
    y = big - big * 1.0  # Inf - Inf: NaN in the kernel's output
    fn = gc.compile(y, check_numerics=True)
    with pytest.raises(gc.NumericsError) as info:
        fn(x=np.full((2, 4), 10.0, np.float32))
    msg = str(info.value)
    assert "NaN in value" in msg
    assert "first of its ops to produce Inf is exp" in msg
    assert f"test_numerics.py:{big.source.line}" in msg


def test_single_op_kernel_names_op_node_name_and_line():
    x = gc.placeholder("x", (None, 3))
    w = gc.parameter("w", value=np.full((3, 3), 1e30, np.float32))
    y = x @ w
    fn = gc.compile(y * 1.0, check_numerics=True, optimize=False)
    with pytest.raises(gc.NumericsError) as info:
        fn(x=np.full((2, 3), 1e30, np.float32))
    msg = str(info.value)
    assert "Inf in value" in msg and "matmul" in msg
    assert f"test_numerics.py:{y.source.line}" in msg


def test_nan_in_a_feed_names_the_placeholder():
    x = gc.placeholder("x", (None, 3))
    fn = gc.compile(x * 2.0, check_numerics=True)
    bad = np.ones((2, 3), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(gc.NumericsError, match=r"placeholder 'x' is fed NaN \(at index \(1, 2\)\)"):
        fn(x=bad)


def test_parameter_already_non_finite_is_named():
    x = gc.placeholder("x", (3,))
    w = gc.parameter("w", shape=(3,), seed=0)
    fn = gc.compile(x * w, check_numerics=True)
    w.value = np.array([1.0, np.inf, 0.0], np.float32)
    with pytest.raises(gc.NumericsError, match=r"parameter 'w' .*already holds Inf"):
        fn(x=np.ones(3, np.float32))


def test_failed_step_restores_parameters_and_optimizer_state(rng):
    x = gc.placeholder("x", (None, 4))
    t = gc.placeholder("t", (None,), dtype="int32")
    scale = gc.placeholder("scale", ())
    w1 = gc.parameter("w1", shape=(4, 8), seed=1)
    w2 = gc.parameter("w2", shape=(8, 3), seed=2)
    h = gc.relu(x @ w1)
    logits = (h @ w2) * scale
    loss = gc.softmax_cross_entropy(logits, t)
    opt = gc.optim.Adam(lr=0.01)
    step = gc.compile(loss, optimizer=opt, check_numerics=True)
    xb = rng.normal(size=(16, 4)).astype(np.float32)
    tb = rng.integers(0, 3, 16)
    for _ in range(3):
        step(x=xb, t=tb, scale=1.0)
    before = _params()
    with pytest.raises(gc.NumericsError):
        step(x=xb, t=tb, scale=np.float32(3e38))  # logits overflow to Inf
    _assert_same(before, _params())
    assert opt.step_count == 3
    step(x=xb, t=tb, scale=1.0)  # and the step still works
    assert opt.step_count == 4


def test_in_place_parameter_write_of_inf_is_caught_and_undone():
    x = gc.placeholder("x", (3,))
    w = gc.parameter("w", value=np.array([1.0, 2.0, 3.0], np.float32))
    v = gc.parameter("v", value=np.array([1.0, 1.0, 1.0], np.float32))
    fn = gc.compile(gc.sum(x), updates={v: v + 1.0, w: w * x})
    checked = gc.compile(gc.sum(x), updates={v: v + 1.0, w: w * x}, check_numerics=True)
    assert any(s in checked.bound_plan(x=(3,)).memory.param_writes
               for s in [u for _, u in checked.bound_plan(x=(3,)).plan.updates])
    fn(x=np.ones(3, np.float32))
    before = _params()
    with pytest.raises(gc.NumericsError, match="Inf in value") as info:
        checked(x=np.array([1.0, 3e38, 1.0], np.float32))
    assert "mul" in str(info.value)
    _assert_same(before, _params())


@pytest.mark.parametrize("optimize", [True, False])
def test_infinite_constant_input_is_named(optimize):
    x = gc.placeholder("x", (2,))
    c = gc.log(gc.constant(np.zeros(2, np.float32)))  # -inf, folded at compile or bind time
    y = x + c
    fn = gc.compile(y, check_numerics=True, optimize=optimize)
    with pytest.raises(gc.NumericsError) as info:
        fn(x=np.ones(2, np.float32))
    msg = str(info.value)
    assert "Inf" in msg and f"test_numerics.py:{c.source.line}" in msg
    if optimize:  # folded by the compiler pass: the add reads a constant holding -inf
        assert "add" in msg and "from its input constant" in msg and "holds Inf" in msg
    else:  # folded when the plan was bound: the log itself is reported
        assert "folded when the plan was bound: log" in msg and "from finite inputs" in msg


def test_unchecked_function_lets_nan_through():
    x = gc.placeholder("x", (2,))
    out = gc.compile(gc.log(x))(x=np.array([-1.0, 1.0], np.float32))
    assert np.isnan(out[0])
