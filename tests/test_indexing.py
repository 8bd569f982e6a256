"""Gathering and integer-array indexing: gc.gather (torch.gather), gc.take_along_axis
(numpy.take_along_axis), x[idx] and x[gc.arange(n), y], gc.nll_loss (F.nll_loss), and the
simplifier's canonical forms that turn every spelling of the cross-entropy into the fused op.
Forward values against formulas written with loops, gradients against float64 finite
differences (check_grads), gradients of gradients, and torch where it is installed."""
import numpy as np
import pytest

import graphc as gc
from graphc.passes import DEFAULT_PASSES, Program, run_passes
from graphc.testing import check_grads

TOL = dict(rtol=1e-5, atol=1e-6)


def _run(outputs, feeds=None):
    return gc.compile(outputs)(feeds or {})


def _np_gather(x, axis, index):
    """torch.gather by its definition: out[i][j][k] = x[index[i][j][k]][j][k] (axis 0)."""
    out = np.empty(index.shape, x.dtype)
    for pos in np.ndindex(index.shape):
        src = list(pos)
        src[axis] = index[pos]
        out[pos] = x[tuple(src)]
    return out


# --- gather and take_along_axis: values ---------------------------------------------------
@pytest.mark.parametrize("xshape, axis, ishape", [
    ((4, 5), 1, (4, 1)), ((4, 5), 1, (4, 3)), ((4, 5), 0, (2, 5)), ((4, 5), 0, (3, 2)),
    ((2, 3, 4), 2, (2, 3, 6)), ((2, 3, 4), 1, (1, 2, 2)), ((5,), 0, (7,)), ((3, 4), -1, (3, 2)),
])
def test_gather_is_torch_gather(xshape, axis, ishape, rng):
    xv = rng.normal(size=xshape)
    iv = rng.integers(0, xshape[axis], size=ishape)
    x = gc.placeholder("x", xshape, "float64")
    i = gc.placeholder("i", ishape, "int64")
    y = gc.gather(x, axis, i)
    assert y.shape == ishape and y.dtype == np.float64
    np.testing.assert_array_equal(_run(y, {x: xv, i: iv}), _np_gather(xv, axis % len(xshape), iv))


@pytest.mark.parametrize("xshape, axis, ishape", [
    ((4, 5), 1, (4, 1)), ((4, 5), 1, (1, 3)), ((4, 1), 1, (4, 2)), ((1, 5), 0, (3, 5)),
    ((2, 3, 4), 2, (2, 1, 3)), ((2, 1, 4), 1, (1, 3, 4)),
])
def test_take_along_axis_broadcasts_as_numpy(xshape, axis, ishape, rng):
    xv = rng.normal(size=xshape).astype(np.float32)
    iv = rng.integers(0, xshape[axis], size=ishape)
    x = gc.placeholder("x", xshape)
    y = gc.take_along_axis(x, iv, axis)
    want = np.take_along_axis(xv, iv, axis)
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_array_equal(_run(y, {x: xv}), want)


def test_take_along_axis_on_the_flattened_input_and_unbound_batch(rng):
    xv = rng.normal(size=(3, 4))
    iv = np.array([11, 0, 5, 5])
    x = gc.placeholder("x", (None, 4), "float64")
    np.testing.assert_array_equal(_run(gc.take_along_axis(x, iv, None), {x: xv}), xv.ravel()[iv])
    t = gc.placeholder("t", (None,), "int32")
    y = gc.take_along_axis(x, gc.expand_dims(t, 1), 1)
    assert y.shape == (None, 1)
    tv = np.array([3, 0, 2], np.int32)
    np.testing.assert_array_equal(_run(y, {x: xv, t: tv})[:, 0], xv[np.arange(3), tv])


def test_gather_of_integers_and_arange():
    x = gc.arange(10, 0, -1)
    assert x.dtype == np.int64 and x.shape == (10,)
    np.testing.assert_array_equal(_run(gc.gather(x, 0, [0, 9, 9])), [10, 1, 1])
    np.testing.assert_array_equal(_run(gc.arange(3) * 2), [0, 2, 4])


# --- gradients: scatter-add, and its gradient, gather again ---------------------------------
@pytest.mark.parametrize("build, xshape, ishape, hi", [
    (lambda x, i: gc.gather(x, 1, i), (3, 4), (3, 5), 4),    # repeated indices accumulate
    (lambda x, i: gc.gather(x, 0, i), (4, 3), (2, 2), 4),    # torch: a corner of x only
    (lambda x, i: gc.take_along_axis(x, i, 1), (3, 1), (3, 4), 1),  # x broadcast
    (lambda x, i: gc.take_along_axis(x, i, 2), (2, 3, 4), (1, 3, 2), 4),  # index broadcast
])
def test_gradients_and_double_backward(build, xshape, ishape, hi, rng):
    xv = rng.normal(size=xshape)
    iv = rng.integers(0, hi, size=ishape)
    iv.flat[:2] = 0  # a repeated index at least once
    x = gc.placeholder("x", xshape, "float32")
    i = gc.placeholder("i", ishape, "int64")
    y = build(x, i)
    feed = {x: xv, i: iv}
    check_grads(gc.sum(gc.tanh(y) * y), x, feed, rtol=1e-5, atol=1e-8)
    g = gc.grad(gc.sum(y * y * y), x)  # 3 * scatter_add(y^2): its gradient gathers again
    check_grads(gc.sum(g * g), x, feed, rtol=1e-5, atol=1e-8)


def test_scatter_add_gradient_values(rng):
    """d/dx sum(w * gather(x)): w added at the gathered positions, repeats summed."""
    x = gc.placeholder("x", (2, 3), "float64")
    iv = np.array([[2, 2, 0], [1, 1, 1]])
    wv = rng.normal(size=(2, 3))
    g = _run(gc.grad(gc.sum(gc.gather(x, 1, iv) * wv), x), {x: np.zeros((2, 3))})
    want = np.zeros((2, 3))
    np.add.at(want, (np.arange(2)[:, None], iv), wv)
    np.testing.assert_allclose(g, want, rtol=1e-12)


# --- integer-array indexing -------------------------------------------------------------------
@pytest.mark.parametrize("index", [
    np.array([2, 0, 2]), [1, 3], np.array([[0, 1], [3, 3]]), np.array(2), np.array([-1, 0]),
    (slice(None), np.array([4, 0])), (slice(None), [[1], [2]]), (Ellipsis, np.array([0, 0])),
    (slice(None), slice(None), [1]),
])
def test_one_index_array_is_numpy_take(index, rng):
    xv = rng.normal(size=(4, 5, 2)) if isinstance(index, tuple) and len(index) == 3 \
        else rng.normal(size=(4, 5))
    x = gc.placeholder("x", xv.shape, "float64")
    y = x[index]
    want = xv[index]
    assert y.shape == want.shape
    np.testing.assert_array_equal(_run(y, {x: xv}), want)
    check_grads(gc.sum(y * y), x, {x: xv}, rtol=1e-5, atol=1e-8)


def test_arange_and_labels_pick_one_entry_per_row(rng):
    xv = rng.normal(size=(4, 5, 2))
    yv = np.array([4, 0, 0, 3])
    x = gc.placeholder("x", (4, 5, 2), "float64")
    y = gc.placeholder("y", (None,), "int64")
    rows = x[gc.arange(4), y]
    cols = x[:, gc.arange(5), gc.constant(np.array([1, 0, 0, 1, 1]))]
    first = x[gc.constant(np.array([3, 3])), np.arange(2)]  # the arange second
    got = _run([rows, cols, first], {x: xv, y: yv})
    np.testing.assert_array_equal(got[0], xv[np.arange(4), yv])
    np.testing.assert_array_equal(got[1], xv[:, np.arange(5), [1, 0, 0, 1, 1]])
    np.testing.assert_array_equal(got[2], xv[[3, 3], np.arange(2)])
    check_grads(gc.sum(rows * rows), x, {x: xv, y: yv}, rtol=1e-5, atol=1e-8)


def test_arange_reads_the_leading_rows_of_an_unbound_batch(rng):
    xv = rng.normal(size=(5, 3))
    x = gc.placeholder("x", (None, 3), "float64")
    got = _run(x[gc.arange(2), [2, 0]], {x: xv})
    np.testing.assert_array_equal(got, xv[np.arange(2), [2, 0]])


@pytest.mark.parametrize("build, pattern", [
    (lambda x: x[x > 0], r"boolean mask indexing .*gc\.where"),
    (lambda x: x[np.array([0.5])], r"index arrays must hold integers"),
    (lambda x: x[[1, 0], [1, 2]], r"unsupported integer-array index .*gc\.gather"),
    (lambda x: x[1:, [0]], r"integer-array indexing mixed with .*gc\.take_along_axis"),
    (lambda x: x[gc.arange(5), [0, 1, 2, 3, 0]], r"index 4 of gc\.arange\(5\) is out of range "
                                                 r"for dimension 0 of size 4"),
    (lambda x: x[gc.arange(4), [0, 1]], r"index arrays of lengths 4 and 2"),
    (lambda x: gc.gather(x, 1, np.array([[7]])), r"gather: index 7 is out of range for an axis "
                                                 r"of size 5"),
    (lambda x: gc.gather(x, 1, np.array([1, 2])), r"the index must have the input's rank"),
    (lambda x: gc.gather(x, 0, np.zeros((2, 6), np.int64)), r"larger than the input on "
                                                            r"dimension 1 \(6 > 5\)"),
    (lambda x: gc.gather(x, 2, np.zeros((1, 1), np.int64)), r"axis 2 is out of range"),
    (lambda x: gc.take_along_axis(x, np.zeros(3, np.int64), 1), r"indices must have the "
                                                                r"input's rank \(2\)"),
    (lambda x: gc.gather(x, 0, np.zeros((1, 1))), r"indices must be integers, got float64"),
])
def test_errors_say_what_to_do(build, pattern):
    x = gc.placeholder("x", (4, 5))
    with pytest.raises(gc.GraphcError, match=pattern):  # GraphError, ShapeError for shapes
        build(x)


def test_fed_indices_out_of_range_are_refused_before_running():
    x = gc.placeholder("x", (None, 5))
    i = gc.placeholder("i", (None, 1), "int64")
    w = gc.parameter("w", value=np.ones(5, np.float32))
    step = gc.compile(gc.sum(gc.gather(x * w, 1, i)), optimizer=gc.optim.SGD(lr=1.0))
    with pytest.raises(gc.FeedError, match=r"placeholder 'i': index 5 is out of range for 5 "
                                           r"positions along the gathered axis"):
        step(x=np.ones((2, 5)), i=np.array([[0], [5]]))
    np.testing.assert_array_equal(w.value, np.ones(5))
    with pytest.raises(gc.FeedError, match=r"index -1 is out of range"):
        step(x=np.ones((2, 5)), i=np.array([[-1], [0]]))


def test_nll_loss_labels_are_checked_before_running_ignored_ones_allowed():
    """ignore_index replaces the ignored label before the gather: the pre-run check sees
    through that, so a bad label is refused before any kernel runs (on every backend)."""
    with gc.Graph():
        x = gc.placeholder("x", (None, 4))
        t = gc.placeholder("t", (None,), "int64")
        w = gc.parameter("w", value=np.ones(4, np.float32))
        step = gc.compile(gc.nll_loss(gc.log_softmax(x * w), t), optimizer=gc.optim.SGD(lr=1.0))
        checks = step._feeds._index_checks
        assert checks and all(c[4] == (-100, 0) for c in checks)  # forward and backward
        with pytest.raises(gc.FeedError, match=r"placeholder 't': label 4 is out of range for 4 "
                                               r"classes"):
            step(x=np.ones((3, 4)), t=np.array([0, -100, 4]))
        np.testing.assert_array_equal(w.value, np.ones(4))
        with pytest.raises(gc.FeedError, match=r"label -7 is out of range"):
            step(x=np.ones((2, 4)), t=np.array([-7, 1]))
        loss = float(step(x=np.ones((3, 4)), t=np.array([3, -100, 0])))
        assert np.isclose(loss, np.log(4.0))  # the ignored row counts for nothing


# --- nll_loss ------------------------------------------------------------------------------------
def _np_nll(lp, t, weight=None, ignore_index=-100, reduction="mean"):
    """F.nll_loss from its documented formula, class axis 1 (0 for one sample)."""
    lp = lp[None] if lp.ndim == 1 else lp
    t = np.asarray(t)[None] if np.ndim(t) == 0 else np.asarray(t)
    w = np.ones(lp.shape[1]) if weight is None else weight
    per, wsum = np.zeros(t.shape), 0.0
    for pos in np.ndindex(t.shape):
        c = t[pos]
        if c == ignore_index:
            continue
        per[pos] = -w[c] * lp[(pos[0], c) + pos[1:]]
        wsum += w[c]
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / wsum


NLL_CASES = [
    dict(), dict(reduction="sum"), dict(reduction="none"), dict(ignore_index=2),
    dict(weight=np.array([0.5, 2.0, 1.0, 3.0])), dict(weight=np.array([0.5, 2.0, 1.0, 3.0]),
                                                      ignore_index=1, reduction="none"),
    dict(ignore_index=None),
]


@pytest.mark.parametrize("kw", NLL_CASES)
@pytest.mark.parametrize("shape", [(6, 4), (3, 4, 2), (4,)])
def test_nll_loss_is_torch_nll_loss(kw, shape, rng):
    xv = rng.normal(size=shape)
    tshape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    tv = rng.integers(0, 4, size=tshape)
    if kw.get("ignore_index") is None and "ignore_index" not in kw and tv.ndim:
        tv.flat[0] = -100  # the default ignore_index
    x = gc.placeholder("x", shape, "float64")
    t = gc.placeholder("t", tshape, "int64")
    lp = gc.log_softmax(x, axis=1 if len(shape) > 1 else 0)
    loss = gc.nll_loss(lp, t, **kw)
    got = _run(loss, {x: xv, t: tv})
    lpv = _run(lp, {x: xv})
    np.testing.assert_allclose(got, _np_nll(lpv, tv, kw.get("weight"),
                                            kw.get("ignore_index", -100),
                                            kw.get("reduction", "mean")).reshape(got.shape),
                               rtol=1e-12, atol=1e-12)
    check_grads(gc.sum(loss * loss), x, {x: xv, t: tv}, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kw", NLL_CASES)
def test_nll_loss_against_torch(kw, rng):
    torch = pytest.importorskip("torch")
    xv = rng.normal(size=(6, 4))
    tv = rng.integers(0, 4, size=6)
    tv[0] = -100 if "ignore_index" not in kw else tv[0]
    x = gc.placeholder("x", (None, 4), "float64")
    t = gc.placeholder("t", (None,), "int64")
    loss = gc.nll_loss(gc.log_softmax(x), t, **kw)
    got, gx = _run([loss, gc.grad(gc.sum(loss), x)], {x: xv, t: tv})
    tx = torch.tensor(xv, requires_grad=True)
    tkw = {k: (torch.tensor(v) if k == "weight" else v) for k, v in kw.items()
           if not (k == "ignore_index" and v is None)}
    want = torch.nn.functional.nll_loss(torch.log_softmax(tx, 1), torch.tensor(tv), **tkw)
    want.sum().backward()
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_nll_loss_of_log_softmax_compiles_to_the_fused_cross_entropy(rng):
    x = gc.placeholder("x", (None, 5))
    t = gc.placeholder("t", (None,), "int32")
    loss = gc.nll_loss(gc.log_softmax(x), t, ignore_index=None)
    ops = [n.op.name for n in run_passes(Program((loss,)), DEFAULT_PASSES).nodes()]
    assert "softmax_cross_entropy" in ops and "gather" not in ops and "log_softmax" not in ops
    xv = rng.normal(size=(7, 5)).astype(np.float32)
    tv = rng.integers(0, 5, size=7)
    np.testing.assert_allclose(_run(loss, {x: xv, t: tv}),
                               _run(gc.softmax_cross_entropy(x, t), {x: xv, t: tv}), rtol=1e-6)
    lp = gc.log_softmax(x)  # the same through a gather written by hand
    picked = gc.take_along_axis(lp, gc.expand_dims(t, 1), 1)
    ops = [n.op.name for n in run_passes(Program((picked,)), DEFAULT_PASSES).nodes()]
    assert "softmax_cross_entropy" in ops and "gather" not in ops


def test_nll_loss_errors():
    x = gc.placeholder("x", (3, 4))
    with pytest.raises(gc.GraphError, match=r"nll_loss: labels must be integer"):
        gc.nll_loss(x, gc.placeholder("t", (3,)))
    with pytest.raises(gc.GraphError, match=r"nll_loss: expects log-probabilities \(N, C\)"):
        gc.nll_loss(x, gc.placeholder("u", (3, 4), "int32"))
    with pytest.raises(gc.GraphError, match=r"nll_loss: reduction must be"):
        gc.nll_loss(x, gc.placeholder("v", (3,), "int32"), reduction="avg")


# --- every spelling of the cross-entropy is the fused op ---------------------------------------
N, D, C = 8, 6, 5


def _oh(y):
    return gc.one_hot(y, C, "float32")


SPELLINGS = {
    "minus outside the mean": lambda z, y: -(_oh(y) * gc.log_softmax(z)).sum(axis=1).mean(),
    "minus inside the mean": lambda z, y: (-(_oh(y) * gc.log_softmax(z)).sum(axis=1)).mean(),
    "functions": lambda z, y: -gc.mean(gc.sum(_oh(y) * gc.log_softmax(z), axis=1)),
    "times minus one": lambda z, y: (_oh(y) * gc.log_softmax(z)).sum(axis=1).mean() * -1,
    "minus one times": lambda z, y: -1.0 * gc.mean(gc.sum(gc.log_softmax(z) * _oh(y), axis=1)),
    "log of softmax": lambda z, y: -(_oh(y) * gc.log(gc.softmax(z))).sum(axis=1).mean(),
    "total over n": lambda z, y: gc.sum(-_oh(y) * gc.log_softmax(z)) / N,
    "int one_hot total over n": lambda z, y: gc.sum(-gc.one_hot(y, C) * gc.log_softmax(z)) / N,
    "scaled inside": lambda z, y: gc.sum(_oh(y) * gc.log_softmax(z) * (-1.0 / N)),
    "nll_loss": lambda z, y: gc.nll_loss(gc.log_softmax(z), y, ignore_index=None),
    "arange index": lambda z, y: -gc.log_softmax(z)[gc.arange(N), y].mean(),
}


def _train_step(loss_fn, batch, optimize=True):
    """Kernel count, loss and updated weight of one SGD step on a linear classifier."""
    rng = np.random.default_rng(0)
    xv = rng.normal(size=(N, D)).astype(np.float32)
    yv = rng.integers(0, C, size=N)
    with gc.Graph():
        x = gc.placeholder("x", (batch, D))
        y = gc.placeholder("y", (batch,), "int64")
        w = gc.parameter("w", shape=(D, C), seed=1)
        b = gc.parameter("b", shape=(C,), init="zeros")
        fn = gc.compile(loss_fn(x @ w + b, y), optimizer=gc.optim.SGD(lr=0.5),
                        optimize=optimize)
        loss = float(fn(x=xv, y=yv))
        return len(fn.plan.kernels), loss, w.value, b.value


@pytest.mark.parametrize("name", sorted(SPELLINGS))
def test_every_spelling_compiles_to_the_fused_loss(name):
    fused = _train_step(lambda z, y: gc.softmax_cross_entropy(z, y), N)
    written = _train_step(SPELLINGS[name], N, optimize=False)  # as written, op by op
    got = _train_step(SPELLINGS[name], N)
    assert got[0] == fused[0], f"{name}: {got[0]} kernels, the fused loss {fused[0]}"
    assert written[0] > got[0]
    for a, b in zip(got[1:], written[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["minus outside the mean", "functions", "times minus one",
                                  "log of softmax", "nll_loss"])
def test_spellings_with_an_unbound_batch(name):
    fused = _train_step(lambda z, y: gc.softmax_cross_entropy(z, y), None)
    got = _train_step(SPELLINGS[name], None)
    assert got[0] == fused[0]
    for a, b in zip(got[1:], fused[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_canonical_signs_keep_values_and_gradients(rng):
    """Negation and scalar scaling moved through products, sums and means: values and
    gradients of expressions that are not losses stay the same."""
    xv = rng.normal(size=(3, 4))
    x = gc.placeholder("x", (3, 4), "float64")
    ys = [gc.mean(-x * gc.exp(x), axis=0), gc.sum((x * 2.5) / -gc.exp(x)),
          gc.sum(x * -1.0, axis=1, keepdims=True), (-x).astype("float32").sum()]
    loss = sum(gc.sum(gc.cast(y, "float64") * gc.cast(y, "float64")) for y in ys)
    a = gc.compile([*ys, gc.grad(loss, x)], optimize=False)(x=xv)
    b = gc.compile([*ys, gc.grad(loss, x)])(x=xv)
    for u, v in zip(a, b):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-12)
    check_grads(loss, x, {x: xv})
