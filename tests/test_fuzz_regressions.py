"""Bugs the graph fuzzer (tests/test_fuzz.py) found, each as a plain deterministic test."""
import numpy as np
import pytest

import graphc as gc
from graphc.testing import evaluate


def _layer_norm_second_derivative(dynamic: bool):
    shape = (None,) if dynamic else (3,)
    x = gc.placeholder("x", shape, dtype="float64")
    w = gc.placeholder("w", shape, dtype="float64")
    y = gc.ops.layer_norm(x, (3,), weight=w)
    loss = gc.sum(y * gc.constant(np.array([0.3, -1.2, 0.8])))
    (gx,) = gc.grad(loss, [x])
    (hx,) = gc.grad(gc.sum(gx * gc.constant(np.array([1.0, 2.0, -0.5]))), [x])
    feeds = {"x": np.array([-0.13, 0.64, 0.10]), "w": np.array([-0.53, 0.36, 1.3])}
    return hx, feeds


def test_inplace_output_does_not_clobber_an_input_the_epilogue_reads():
    """A fused kernel wrote a main-loop output over an input its epilogue read afterwards
    (fixed in graphc/memory.py)."""
    hx, feeds = _layer_norm_second_derivative(dynamic=False)
    np.testing.assert_allclose(gc.compile(hx)(feeds), evaluate(hx, feeds), rtol=1e-12)


def test_layer_norm_second_derivative_unfused_matches_reference():
    hx, feeds = _layer_norm_second_derivative(dynamic=True)
    np.testing.assert_allclose(gc.compile(hx, optimize=False)(feeds), evaluate(hx, feeds),
                               rtol=1e-12)


def test_fusion_of_layer_norm_double_backward_has_no_cycle():
    """A step joined an old kernel's epilogue, making that kernel depend on a newer one;
    the legality search pruned kernels by their own step indices and missed the cycle.
    It now prunes by the highest step index a kernel depends on."""
    x = gc.placeholder("x", (1, 4), dtype="float64")
    y = gc.log(gc.sigmoid(gc.ops.layer_norm(gc.square(x), (4,),
                                            bias=gc.constant(np.array([0.1, -0.2, 0.3, 0.4])))))
    loss = gc.sum(y * gc.constant(np.array([[0.5, -1.0, 0.25, 2.0]])))
    (gx,) = gc.grad(loss, [x])
    (hx,) = gc.grad(gc.sum(gx * gc.constant(np.array([[1.0, -0.5, 0.3, 0.7]]))), [x])
    feeds = {"x": np.array([[0.3, -1.1, 0.8, 0.05]])}
    np.testing.assert_allclose(gc.compile(hx)(feeds), evaluate(hx, feeds), rtol=1e-10)


def test_shared_weight_gradient_with_unbound_batch_differentiates_twice():
    """gc.grad stacks the products of a weight used at several steps into one GEMM; with an
    unbound (None) batch the stacking axis is unbound and the concat could not be
    differentiated again (GradientError). Such terms now stay separate."""
    w = gc.parameter("w", value=np.array([[0.5, -1.0], [2.0, 0.3]]), dtype="float64")
    x1 = gc.placeholder("x1", (None, 2), dtype="float64")
    x2 = gc.placeholder("x2", (None, 2), dtype="float64")
    loss = gc.sum(gc.tanh(x1 @ w + x2 @ w))
    (gw,) = gc.grad(loss, [w])
    (hw,) = gc.grad(gc.sum(gw * gw), [w])
    feeds = {"x1": np.array([[0.1, 0.2], [0.3, -0.4]]), "x2": np.array([[1.0, -0.5], [0.2, 0.7]])}
    np.testing.assert_allclose(gc.compile(hw)(feeds), evaluate(hw, feeds), rtol=1e-10)
    gc.testing.check_grads(gc.sum(gw * gw), w, feeds)


def test_broadcast_to_accepts_an_unbound_dimension():
    """broadcast_to of a (None, 1) tensor to (2, 3, 1) raised a ShapeError at build time;
    the None size is now checked when the plan binds."""
    x = gc.placeholder("x", (None, 1))
    y = gc.broadcast_to(x, (2, 3, 1))
    assert y.shape == (2, 3, 1)
    out = gc.compile(y)(x=np.ones((3, 1), np.float32))
    assert out.shape == (2, 3, 1)
    with pytest.raises(gc.FeedError):
        gc.compile(y)(x=np.ones((4, 1), np.float32))


def test_conv2d_weight_with_unbound_output_channels():
    """A conv2d weight whose output-channel count is None raised a TypeError in inference."""
    x = gc.placeholder("x", (1, 2, 4, 4))
    w = gc.placeholder("w", (None, 2, 3, 3))
    y = gc.ops.conv2d(x, w)
    assert y.shape == (1, None, 2, 2)
    xv = np.random.default_rng(0).normal(size=(1, 2, 4, 4)).astype(np.float32)
    wv = np.random.default_rng(1).normal(size=(3, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(gc.compile(y)(x=xv, w=wv), evaluate(y, {"x": xv, "w": wv}),
                               rtol=1e-5, atol=1e-5)


def test_finite_differences_see_the_same_random_numbers_as_the_first_call():
    """Counter-based randomness: a compiled call advances the graph's counter, so an
    evaluation after it draws other numbers unless the counter is reset (the fuzzer's
    double-backward check compared against another dropout mask)."""
    x = gc.placeholder("x", (8,), dtype="float64")
    y = gc.ops.dropout(x, p=0.5)
    xv = np.arange(1.0, 9.0)
    first = gc.compile(y)(x=xv)
    counter = gc.get_default_graph()._names["rng/counter"]
    assert int(counter.value) == 1
    counter.value = np.zeros((), np.int64)
    np.testing.assert_array_equal(evaluate(y, {"x": xv}), first)


def test_integer_index_to_a_scalar_feeds_a_numba_kernel(monkeypatch):
    """x[0] of a 1-d tensor came out of the view kernel as a NumPy scalar copy (not a 0-d
    view), which a Numba kernel cannot index (TypingError; found by `make fuzz`)."""
    from graphc.backends.cpu import numba_printer as numba_cpu
    if not numba_cpu.available():
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 1)
    x = gc.placeholder("x", (3,), dtype="float64")
    y = x[0] * 2.0 + 1.0
    np.testing.assert_array_equal(gc.compile(y)(x=np.array([1.0, 2.0, 3.0])), 3.0)
