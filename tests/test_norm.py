"""layer_norm and batch_norm ops: forward against torch's documented definition (float64
NumPy) and torch itself, gradients and gradients of gradients against finite differences,
BatchNorm's modes and running statistics, shape errors, and a compiled training step."""
import numpy as np
import pytest

import graphc as gc
from graphc.testing import check_grads

EPS = 1e-5
batch_norm = gc.batch_norm


# --- float64 references written from torch's documentation ------------------------------------
def ref_layer_norm(x, k, w=None, b=None, eps=EPS):
    axes = tuple(range(x.ndim - k, x.ndim))
    mu = x.mean(axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axes, keepdims=True)  # biased, as torch
    y = (x - mu) / np.sqrt(var + eps)
    return y * (1 if w is None else w) + (0 if b is None else b)


def _c(v, ndim):
    return v.reshape((-1,) + (1,) * (ndim - 2))


def ref_batch_norm(x, rm=None, rv=None, w=None, b=None, training=False, eps=EPS):
    axes = (0,) + tuple(range(2, x.ndim))
    if training:
        mu, var = x.mean(axes), x.var(axes)
    else:
        mu, var = rm, rv
    y = (x - _c(mu, x.ndim)) / np.sqrt(_c(var, x.ndim) + eps)
    if w is not None:
        y = y * _c(w, x.ndim)
    if b is not None:
        y = y + _c(b, x.ndim)
    return y


def ref_running(x, rm, rv, momentum):
    axes = (0,) + tuple(range(2, x.ndim))
    return ((1 - momentum) * rm + momentum * x.mean(axes),
            (1 - momentum) * rv + momentum * x.var(axes, ddof=1))


def _params(rng, shape, prefix="p"):
    w = gc.parameter(f"{prefix}_w", value=rng.normal(size=shape) + 1.0, dtype="float64")
    b = gc.parameter(f"{prefix}_b", value=rng.normal(size=shape), dtype="float64")
    return w, b


# --- forward -----------------------------------------------------------------------------------
@pytest.mark.parametrize("normalized_shape", [5, (5,), (4, 5)])
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_forward(rng, normalized_shape, affine):
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else normalized_shape
    xv = rng.normal(loc=3.0, scale=2.0, size=(3, 4, 5))
    x = gc.placeholder("x", (None, 4, 5), dtype="float64")
    w, b = _params(rng, shape) if affine else (None, None)
    y = gc.layer_norm(x, normalized_shape, w, b)
    assert y.op_name == "layer_norm" and y.shape == (None, 4, 5)
    want = ref_layer_norm(xv, len(shape), *((w.value, b.value) if affine else ()))
    np.testing.assert_allclose(gc.compile(y)(x=xv), want, rtol=1e-10, atol=1e-12)


def test_layer_norm_float32_keeps_its_dtype(rng):
    xv = rng.normal(loc=100.0, size=(8, 16)).astype(np.float32)
    x = gc.placeholder("x", (None, 16))
    y = gc.compile(gc.layer_norm(x, 16, eps=1e-3))(x=xv)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, ref_layer_norm(xv.astype(np.float64), 1, eps=1e-3),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (2, 3, 2, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_forward(rng, shape, training):
    xv = rng.normal(loc=1.5, scale=2.0, size=shape)
    rm, rv = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    wv, bv = rng.normal(size=3), rng.normal(size=3)
    x = gc.placeholder("x", (None,) + shape[1:], dtype="float64")
    y = batch_norm(x, rm, rv, wv, bv, training=training)
    assert y.op_name == "batch_norm" and y.shape == (None,) + shape[1:]
    want = ref_batch_norm(xv, rm, rv, wv, bv, training=training)
    np.testing.assert_allclose(gc.compile(y)(x=xv), want, rtol=1e-10, atol=1e-12)
    bare = gc.compile(batch_norm(x, rm, rv, training=training))(x=xv)
    np.testing.assert_allclose(bare, ref_batch_norm(xv, rm, rv, training=training),
                               rtol=1e-10, atol=1e-12)


# --- against torch ------------------------------------------------------------------------------
def test_layer_norm_and_grads_match_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xv, gv = rng.normal(size=(3, 4, 5)), rng.normal(size=(3, 4, 5))
    wv, bv = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    x = gc.placeholder("x", (3, 4, 5), dtype="float64")
    w, b = gc.constant(wv), gc.constant(bv)
    y = gc.layer_norm(x, (4, 5), w, b, eps=1e-3)
    loss = gc.sum(y * gv)
    got = gc.compile([y] + gc.grad(loss, [x, w, b]))(x=xv)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xv, wv, bv))
    ty = F.layer_norm(tx, (4, 5), tw, tb, eps=1e-3)
    (ty * torch.tensor(gv)).sum().backward()
    for mine, theirs in zip(got, [ty, tx.grad, tw.grad, tb.grad]):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_grads_and_running_stats_match_torch(rng, training):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xv, gv = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=(4, 3, 2, 2))
    rmv, rvv = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    wv, bv = rng.normal(size=3), rng.normal(size=3)
    x = gc.placeholder("x", (4, 3, 2, 2), dtype="float64")
    rm = gc.parameter("rm", value=rmv, dtype="float64", trainable=False)
    rv = gc.parameter("rv", value=rvv, dtype="float64", trainable=False)
    w, b = gc.constant(wv), gc.constant(bv)
    updates = {}
    y = batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, updates=updates)
    assert bool(updates) == training
    got = gc.compile([y] + gc.grad(gc.sum(y * gv), [x, w, b]), updates=updates)(x=xv)

    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xv, wv, bv))
    trm, trv = torch.tensor(rmv), torch.tensor(rvv)
    ty = F.batch_norm(tx, trm, trv, tw, tb, training=training, momentum=0.3)
    (ty * torch.tensor(gv)).sum().backward()
    for mine, theirs in zip(got, [ty, tx.grad, tw.grad, tb.grad]):
        np.testing.assert_allclose(mine, theirs.detach().numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(rm.value, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv.value, trv.numpy(), rtol=1e-12)


def test_modules_load_torch_state_and_agree(rng):
    torch = pytest.importorskip("torch")
    tbn = torch.nn.BatchNorm2d(3, momentum=0.2).double()
    tln = torch.nn.LayerNorm((3, 4)).double()
    with torch.no_grad():
        for p in list(tbn.parameters()) + list(tln.parameters()):
            p.copy_(torch.tensor(rng.normal(size=tuple(p.shape))))
    bn = gc.nn.BatchNorm(3, momentum=0.2, dtype="float64")
    ln = gc.nn.LayerNorm((3, 4), dtype="float64")
    bn.load_state_dict({k: v.numpy() for k, v in tbn.state_dict().items()
                        if k != "num_batches_tracked"})
    ln.load_state_dict({k: v.numpy() for k, v in tln.state_dict().items()})
    x = gc.placeholder("x", (None, 3, 3, 4), dtype="float64")
    step = gc.compile(ln(bn(x, training=True)), updates=bn.updates())
    for _ in range(3):
        xv = rng.normal(loc=2.0, size=(5, 3, 3, 4))
        np.testing.assert_allclose(step(x=xv), tln(tbn.train()(torch.tensor(xv))).detach(),
                                   rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(bn.running_mean.value, tbn.running_mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var.value, tbn.running_var, rtol=1e-12)
    xv = rng.normal(size=(2, 3, 3, 4))
    np.testing.assert_allclose(gc.compile(ln(bn(x)))(x=xv),
                               tln(tbn.eval()(torch.tensor(xv))).detach(), rtol=1e-9, atol=1e-10)


# --- gradients against finite differences -------------------------------------------------------
@pytest.mark.parametrize("affine", [False, True])
def test_layer_norm_gradients(rng, affine):
    x = gc.placeholder("x", (None, 2, 3), dtype="float64")
    w, b = _params(rng, (2, 3)) if affine else (None, None)
    y = gc.layer_norm(x, (2, 3), w, b)
    check_grads(y, [x] + ([w, b] if affine else []), {x: rng.normal(size=(3, 2, 3))})
    y1 = gc.layer_norm(x, 3, None if w is None else w[0], None if b is None else b[1])
    check_grads(gc.tanh(y1), [x] + ([w, b] if affine else []), {x: rng.normal(size=(2, 2, 3))})


@pytest.mark.parametrize("shape", [(5, 3), (3, 3, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_gradients(rng, shape, training):
    x = gc.placeholder("x", (None,) + shape[1:], dtype="float64")
    w, b = _params(rng, (3,))
    rm = gc.parameter("rm", value=rng.normal(size=3), dtype="float64", trainable=False)
    rv = gc.parameter("rv", value=rng.uniform(0.5, 2, size=3), dtype="float64",
                      trainable=False)
    y = batch_norm(x, rm, rv, w, b, training=training)
    wrt = [x, w, b] + ([] if training else [rm, rv])
    check_grads(y, wrt, {x: rng.normal(size=shape)})
    check_grads(batch_norm(x, rm, rv, training=training), [x] + wrt[3:],
                {x: rng.normal(size=shape)})


def test_layer_norm_double_backward(rng):
    """Gradient of a function of the gradient (a gradient penalty), checked by finite
    differences: the rules are differentiable graph ops."""
    x = gc.placeholder("x", (None, 4), dtype="float64")
    w, b = _params(rng, (4,))
    v = gc.constant(rng.normal(size=(3, 4)))
    inner = gc.sum(gc.tanh(gc.layer_norm(x, 4, w, b)) * v)
    gx, gw = gc.grad(inner, [x, w])
    penalty = gc.sum(gx * gx) + gc.sum(gw * gw * gw)
    check_grads(penalty, [x, w, b], {x: rng.normal(size=(3, 4))}, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_double_backward(rng, training):
    x = gc.placeholder("x", (None, 2, 3), dtype="float64")
    w, b = _params(rng, (2,))
    rm = gc.parameter("rm", value=rng.normal(size=2), dtype="float64", trainable=False)
    rv = gc.parameter("rv", value=rng.uniform(0.5, 2, size=2), dtype="float64",
                      trainable=False)
    v = gc.constant(rng.normal(size=(4, 2, 3)))
    inner = gc.sum(gc.tanh(batch_norm(x, rm, rv, w, b, training=training)) * v)
    gx, gw, gb = gc.grad(inner, [x, w, b])
    penalty = gc.sum(gx * gx) + gc.sum(gw * gw * gb)
    check_grads(penalty, [x, w, b], {x: rng.normal(size=(4, 2, 3))}, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("op", ["layer_norm", "batch_norm"])
def test_double_backward_matches_torch(rng, op):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    xv, vv = rng.normal(size=(4, 3, 2)), rng.normal(size=(4, 3, 2))
    shape = (3, 2) if op == "layer_norm" else (3,)
    wv, bv = rng.normal(size=shape), rng.normal(size=shape)
    x = gc.placeholder("x", (4, 3, 2), dtype="float64")
    w, b = gc.constant(wv), gc.constant(bv)

    def mine(x, w, b):
        if op == "layer_norm":
            return gc.layer_norm(x, shape, w, b)
        return batch_norm(x, None, None, w, b, training=True)

    def theirs(x, w, b):
        if op == "layer_norm":
            return F.layer_norm(x, shape, w, b)
        return F.batch_norm(x, None, None, w, b, training=True)

    gx = gc.grad(gc.sum(gc.tanh(mine(x, w, b)) * vv), x)
    got = gc.compile(gc.grad(gc.sum(gx * gx), [x, w, b]), optimize=False)(x=xv)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (xv, wv, bv))
    tgx, = torch.autograd.grad((torch.tanh(theirs(tx, tw, tb)) * torch.tensor(vv)).sum(), tx,
                               create_graph=True)
    want = torch.autograd.grad((tgx * tgx).sum(), [tx, tw, tb])
    for a, t in zip(got, want):
        np.testing.assert_allclose(a, t.numpy(), rtol=1e-8, atol=1e-10)


# --- BatchNorm module ---------------------------------------------------------------------------
def test_batchnorm_running_statistics_over_steps(rng):
    bn = gc.nn.BatchNorm(3, momentum=0.3)
    x = gc.placeholder("x", (None, 3, 2))
    train = gc.compile(bn(x, training=True), updates=bn.updates())
    evaluate = gc.compile(bn(x))
    rm, rv = np.zeros(3), np.ones(3)
    for n in (4, 7, 5):
        xv = rng.normal(loc=[[[1.0], [-2.0], [0.5]]], scale=[[[1.0], [3.0], [0.2]]],
                        size=(n, 3, 2))
        y = train(x=xv.astype(np.float32))
        np.testing.assert_allclose(y, ref_batch_norm(xv, training=True), rtol=1e-4, atol=1e-4)
        rm, rv = ref_running(xv, rm, rv, 0.3)
        np.testing.assert_allclose(bn.running_mean.value, rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.running_var.value, rv, rtol=1e-5, atol=1e-6)
    xv = rng.normal(size=(2, 3, 2)).astype(np.float32)
    np.testing.assert_allclose(evaluate(x=xv), ref_batch_norm(xv.astype(np.float64), rm, rv),
                               rtol=1e-4, atol=1e-5)
    # evaluation neither reads the batch statistics nor moves the running ones
    assert not np.allclose(evaluate(x=xv), ref_batch_norm(xv, training=True), atol=1e-2)
    np.testing.assert_allclose(bn.running_mean.value, rm, rtol=1e-5, atol=1e-6)


def test_batchnorm_without_affine_and_layernorm_shapes(rng):
    bn = gc.nn.BatchNorm(2, affine=False)
    assert bn.parameters(trainable=True) == []
    x = gc.placeholder("x", (None, 2))
    xv = rng.normal(size=(6, 2)).astype(np.float32)
    np.testing.assert_allclose(gc.compile(bn(x, training=True))(x=xv),
                               ref_batch_norm(xv.astype(np.float64), training=True),
                               rtol=1e-4, atol=1e-5)
    ln = gc.nn.LayerNorm((2, 3), elementwise_affine=False)
    assert ln.parameters() == []
    z = gc.placeholder("z", (None, 2, 3))
    zv = rng.normal(size=(4, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(gc.compile(ln(z))(z=zv), ref_layer_norm(zv.astype(np.float64), 2),
                               rtol=1e-4, atol=1e-5)


# --- errors -------------------------------------------------------------------------------------
def test_shape_errors_name_the_op_and_shapes():
    x = gc.placeholder("x", (None, 4, 5))
    with pytest.raises(gc.ShapeError, match=r"layer_norm: normalized_shape \(4,\) does not "
                                            r"match .*\(None, 4, 5\)"):
        gc.layer_norm(x, 4)
    with pytest.raises(gc.ShapeError, match=r"layer_norm: weight must have shape \(5,\), "
                                            r"got \(4,\)"):
        gc.layer_norm(x, 5, np.ones(4, np.float32))
    with pytest.raises(gc.ShapeError, match=r"layer_norm: bias has dtype float64 but the "
                                            r"input is float32"):
        gc.layer_norm(x, 5, None, gc.constant(np.zeros(5)))
    with pytest.raises(gc.GraphError, match="normalized_shape must be a positive int"):
        gc.layer_norm(x, ())
    with pytest.raises(gc.ShapeError, match=r"batch_norm: running_mean must have shape "
                                            r"\(4,\), got \(3,\)"):
        batch_norm(x, np.zeros(3), np.ones(4))
    with pytest.raises(gc.ShapeError, match=r"batch_norm: expects an \(N, C\) or \(N, C, "
                                            r"...\) input, got shape \(4,\)"):
        batch_norm(gc.placeholder("v", (4,)), None, None, training=True)
    with pytest.raises(gc.ShapeError, match="batch_norm: training needs more than one value "
                                            r"per channel.*\(1, 3\)"):
        batch_norm(gc.placeholder("one", (1, 3)), None, None, training=True)
    with pytest.raises(gc.GraphError, match="running_mean and running_var are needed"):
        batch_norm(x, None, None)
    p = gc.parameter("rm", value=np.zeros(3, np.float32), trainable=False)
    with pytest.raises(gc.ShapeError, match=r"batch_norm: running_mean must be a \(4,\) "
                                            r"float32 parameter"):
        batch_norm(x, p, None, training=True, updates={})
    with pytest.raises(gc.GraphError, match="running_var must be a parameter to be updated"):
        batch_norm(x, None, np.ones(4), training=True, updates={})


def test_one_value_per_channel_is_caught_when_fed():
    x = gc.placeholder("x", (None, 3))
    fn = gc.compile(batch_norm(x, None, None, training=True))
    with pytest.raises(gc.FeedError, match="batch_norm: training needs more than one value"):
        fn(x=np.ones((1, 3), np.float32))


# --- in a compiled training step ----------------------------------------------------------------
def _blobs(rng, n=256):
    labels = rng.integers(0, 3, size=n)
    centers = rng.normal(scale=2.0, size=(3, 1, 6, 6))
    xs = centers[labels] + rng.normal(scale=1.0, size=(n, 1, 6, 6))
    return xs.astype(np.float32), labels.astype(np.int32)


def test_training_step_with_batchnorm_and_layernorm(rng):
    model = gc.nn.Sequential(
        gc.nn.Conv2D(1, 4, 3, padding=1), gc.nn.BatchNorm(4), gc.nn.ReLU(), gc.nn.Flatten(),
        gc.nn.Dense(144, 16), gc.nn.LayerNorm(16), gc.nn.Tanh(), gc.nn.Dense(16, 3))
    x = gc.placeholder("x", (None, 1, 6, 6))
    t = gc.placeholder("t", (None,), dtype="int32")
    loss = gc.softmax_cross_entropy(model(x, training=True), t)
    step = gc.compile(loss, updates=model.updates(), optimizer=gc.optim.SGD(lr=0.1))
    evaluate = gc.compile(gc.softmax_cross_entropy(model(x), t))
    xs, ts = _blobs(rng)
    kinds = {k.steps[0].op.name: k.kind for k in step.bound_plan(x=(32, 1, 6, 6), t=(32,)).kernels
             if k.steps}
    assert kinds["batch_norm"] == "op" and kinds["layer_norm"] == "op"  # opaque kernels
    before = float(evaluate(x=xs, t=ts))
    for epoch in range(5):
        for i in range(0, len(xs), 32):
            step(x=xs[i:i + 32], t=ts[i:i + 32])
    after = float(evaluate(x=xs, t=ts))
    assert after < 0.5 * before
    bn = model[1]
    assert not np.allclose(bn.running_mean.value, 0) and not np.allclose(bn.running_var.value, 1)


def test_fused_and_unfused_plans_agree(rng):
    x = gc.placeholder("x", (None, 3, 4))
    bn = gc.nn.BatchNorm(3)
    ln = gc.nn.LayerNorm(4)
    y = gc.relu(ln(bn(x, training=True)) * 2.0 + 1.0)
    loss = gc.sum(y * y)
    outs = [y] + gc.grad(loss, [x] + bn.parameters(True) + ln.parameters(True))
    xv = rng.normal(size=(5, 3, 4)).astype(np.float32)
    fused = gc.compile(outs)(x=xv)
    plain = gc.compile(outs, optimize=False)(x=xv)
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
