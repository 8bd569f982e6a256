import numpy as np
import pytest

import graphc as gc
from graphc.testing import GradientCheckError, check_grads


def test_structure_is_preserved(rng):
    x = gc.placeholder("x", (3,))
    w = gc.parameter("w", shape=(3,), seed=0)
    y = gc.sum(x * w)
    assert isinstance(gc.grad(y, x), gc.Tensor)
    assert isinstance(gc.grad(y, [x, w]), list)
    assert isinstance(gc.grad(y, (x, w)), tuple)
    gd = gc.grad(y, {"x": x, "w": w})
    assert set(gd) == {"x", "w"}
    xv = rng.normal(size=3).astype(np.float32)
    out = gc.compile(gd)(x=xv)
    np.testing.assert_allclose(out["x"], w.value)
    np.testing.assert_allclose(out["w"], xv)


def test_unrelated_tensor_gets_zeros():
    x = gc.placeholder("x", (None, 2))
    z = gc.placeholder("z", (None, 3))
    gz = gc.grad(gc.sum(x * 3.0), z)
    out = gc.compile(gz)(x=np.ones((4, 2)), z=np.ones((5, 3)))
    assert out.shape == (5, 3) and not out.any()


def test_contributions_are_summed():
    x = gc.placeholder("x", (4,), dtype="float64")
    y = gc.sum(x * x + gc.exp(x) * x + 3.0 * x)
    xv = np.linspace(-1, 1, 4)
    g = gc.compile(gc.grad(y, x))(x=xv)
    np.testing.assert_allclose(g, 2 * xv + np.exp(xv) * (1 + xv) + 3, rtol=1e-12)


def test_gradient_wrt_intermediate():
    x = gc.placeholder("x", (3,), dtype="float64")
    h = gc.tanh(x)
    y = gc.sum(h * h)
    gh, gx = gc.grad(y, [h, x])
    xv = np.array([0.1, -0.5, 2.0])
    out_h, out_x = gc.compile([gh, gx])(x=xv)
    np.testing.assert_allclose(out_h, 2 * np.tanh(xv))
    np.testing.assert_allclose(out_x, 2 * np.tanh(xv) * (1 - np.tanh(xv) ** 2))


def test_grad_output_vector_jacobian_product(rng):
    x = gc.placeholder("x", (2, 3), dtype="float64")
    w = gc.parameter("w", shape=(3, 4), dtype="float64", seed=0)
    y = x @ w
    v = rng.normal(size=(2, 4))
    gx = gc.grad(y, x, grad_output=v)
    np.testing.assert_allclose(gc.compile(gx)(x=np.ones((2, 3))), v @ w.value.T)


def test_gradient_through_non_differentiable_path_is_zero():
    x = gc.placeholder("x", (3,))
    mask = gc.cast(x > 0, "float32")  # comparison: no gradient flows through it
    g = gc.compile(gc.grad(gc.sum(mask * 5.0), x))(x=np.array([1.0, -1.0, 2.0]))
    np.testing.assert_array_equal(g, 0)


def test_gradients_are_graph_nodes_and_differentiable_again():
    x = gc.placeholder("x", (3,), dtype="float64")
    y = gc.sum(x ** 3)
    g = gc.grad(y, x)
    h = gc.grad(gc.sum(g), x)  # d/dx sum(3x^2) = 6x
    xv = np.array([1.0, 2.0, -3.0])
    np.testing.assert_allclose(gc.compile(h)(x=xv), 6 * xv)
    check_grads(gc.sum(g * g), x, {"x": xv})


def test_double_backward_mlp_gradient_penalty(rng):
    x = gc.placeholder("x", (4, 3))
    w1 = gc.parameter("w1", shape=(3, 5), seed=1)
    w2 = gc.parameter("w2", shape=(5, 1), seed=2)
    y = gc.sum(gc.tanh(x @ w1) @ w2)
    gx = gc.grad(y, x)
    penalty = gc.mean(gc.square(gx))
    check_grads(penalty, [w1, w2], {"x": rng.normal(size=(4, 3))})


def test_check_grads_reports_worst_element():
    x = gc.placeholder("x", (3,))
    y = gc.sum(gc.abs(x))
    # abs has a kink at 0: the finite difference there is 0, the symbolic gradient sign(0)=0
    # matches; a wrong rule would be caught, so fake one by checking a non-smooth point of max
    z = gc.sum(gc.maximum(x, 0.5))
    with pytest.raises(GradientCheckError, match=r"gradient of 'x' at index \(1,\)"):
        check_grads(z, x, {"x": np.array([0.1, 0.5 + 1e-7, 2.0])})
    check_grads(y, x, {"x": np.array([0.3, -0.2, 1.0])})


def test_mlp_gradients_match_finite_differences(rng):
    x = gc.placeholder("x", (None, 4))
    t = gc.placeholder("t", (None,), dtype="int32")
    w1 = gc.parameter("w1", shape=(4, 8), seed=3)
    b1 = gc.parameter("b1", shape=(8,), init="normal", seed=4)
    w2 = gc.parameter("w2", shape=(8, 3), seed=5)
    logits = gc.gelu(x @ w1 + b1) @ w2
    loss = gc.softmax_cross_entropy(logits, t)
    check_grads(loss, [w1, b1, w2, x], {"x": rng.normal(size=(5, 4)), "t": [0, 2, 1, 1, 0]})


def test_gradients_of_many_slices_merge_into_one_scatter(rng):
    from graphc.graph import topo_order
    from graphc.testing import check_grads
    x = gc.placeholder("x", (None, 4, 6))
    parts = [x[:, t] for t in range(4)] + [x[..., 0:3], x[..., 3:6]]
    y = sum(gc.sum(gc.tanh(p) * float(i + 1)) for i, p in enumerate(parts))
    g = gc.grad(y, x)
    ops = [n.op.name for n in topo_order([g])]
    assert ops.count("scatter_slices") == 1 and "getitem_grad" not in ops
    check_grads(y, x, {x: rng.normal(size=(2, 4, 6))})
    check_grads(gc.sum(g * g), x, {x: rng.normal(size=(2, 4, 6))})


def test_weight_shared_across_steps_gets_one_stacked_gemm():
    """An unrolled recurrence: W's gradient is one matmul over the stacked steps, not one
    product per step plus their sum, and it is still the true gradient."""
    from graphc.testing import check_grads
    with gc.Graph():
        w = gc.parameter("w", shape=(3, 3), dtype="float64", seed=0)
        x = gc.placeholder("x", (4, 2, 3), dtype="float64")
        h = None
        for t in range(4):
            z = x[t] if h is None else x[t] + h @ w.T
            h = gc.tanh(z)
        loss = gc.sum(h * h)
        (gw,) = gc.grad(loss, [w])
        matmuls = [n for n in gc.graph.topo_order([gw]) if n.op is not None
                   and n.op.name == "matmul" and n.shape == (3, 3)]
        assert len(matmuls) == 1 and matmuls[0].inputs[0].shape == (3, 6)  # 3 steps stacked
        check_grads(loss, [w], {x: np.random.default_rng(0).normal(size=(4, 2, 3))})


def test_grad_wrt_a_nested_structure_returns_the_same_nesting():
    x = gc.placeholder("x", (2,))
    w = gc.parameter("w", value=np.array([1.0, 2.0], np.float32))
    b = gc.parameter("b", value=np.array([0.5, 0.5], np.float32))
    y = (x * w + b).sum()
    g = gc.grad(y, {"layer": {"w": w, "b": (b,)}, "inputs": [x]})
    assert list(g) == ["layer", "inputs"] and list(g["layer"]) == ["w", "b"]
    assert isinstance(g["layer"]["b"], tuple) and isinstance(g["inputs"], list)
    out = gc.compile(g)(x=np.array([3.0, 4.0], np.float32))
    np.testing.assert_allclose(out["layer"]["w"], [3.0, 4.0])
    np.testing.assert_allclose(out["layer"]["b"][0], [1.0, 1.0])
    np.testing.assert_allclose(out["inputs"][0], [1.0, 2.0])


def test_grad_names_the_path_of_a_non_tensor_in_wrt():
    x = gc.placeholder("x", (2,))
    with pytest.raises(gc.GraphError, match=r"wrt must be tensors, got 'w' at wrt\['a'\]\[1\]"):
        gc.grad(x.sum(), {"a": [x, "w"]})
