"""conv2d and pooling: forward against direct loops written here, gradients against float64
finite differences (first and second order), torch's shape rules."""
import itertools

import numpy as np
import pytest

import graphc as gc
from graphc.testing import check_grads


def _conv_loops(x, w, b, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding[0],) * 2, (padding[1],) * 2))
    oh = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // groups
    for ni, oi, i, j in itertools.product(range(n), range(o), range(oh), range(ow)):
        g = oi // og
        acc = 0.0 if b is None else b[oi]
        for ci, a, bb in itertools.product(range(cg), range(kh), range(kw)):
            acc += w[oi, ci, a, bb] * xp[ni, g * cg + ci, i * stride[0] + a * dilation[0],
                                         j * stride[1] + bb * dilation[1]]
        out[ni, oi, i, j] = acc
    return out


CONV_CASES = [  # (x shape, w shape, stride, padding, dilation, groups)
    ((2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (0, 0), (1, 1), 1),
    ((1, 2, 8, 8), (3, 2, 3, 2), (2, 1), (1, 2), (1, 1), 1),
    ((2, 4, 9, 7), (6, 2, 3, 3), (2, 2), (1, 1), (2, 1), 2),
    ((1, 3, 6, 6), (3, 1, 2, 2), (1, 1), (0, 1), (1, 2), 3),
]


@pytest.mark.parametrize("xs, ws, stride, padding, dilation, groups", CONV_CASES)
def test_conv2d_forward_and_gradients(xs, ws, stride, padding, dilation, groups, rng):
    xv, wv, bv = rng.normal(size=xs), rng.normal(size=ws), rng.normal(size=ws[0])
    x = gc.placeholder("x", (None,) + xs[1:])
    w = gc.placeholder("w", ws)
    b = gc.placeholder("b", (ws[0],))
    y = gc.conv2d(x, w, b, stride, padding, dilation, groups)
    want = _conv_loops(xv, wv, bv, stride, padding, dilation, groups)
    assert y.shape == (None,) + want.shape[1:]
    got = gc.compile(y)(x=xv.astype(np.float32), w=wv.astype(np.float32),
                        b=bv.astype(np.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    feed = {x: xv, w: wv, b: bv}
    check_grads(y, [x, w, b], feed, rtol=1e-5, atol=1e-7)
    gx, gw = gc.grad(gc.sum(gc.square(y)), [x, w])
    check_grads(gc.sum(gx * gx) + gc.sum(gc.tanh(gw)), [x, w], feed, rtol=1e-5, atol=1e-7)


def _pool_loops(x, k, s, p, kind):
    n, c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), (0, 0), (p[0],) * 2, (p[1],) * 2), constant_values=fill)
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    out = np.zeros((n, c, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        win = xp[:, :, i * s[0]:i * s[0] + k[0], j * s[1]:j * s[1] + k[1]]
        out[:, :, i, j] = win.max((2, 3)) if kind == "max" else win.mean((2, 3))
    return out


@pytest.mark.parametrize("kind", ["max", "avg"])
@pytest.mark.parametrize("xs, k, s, p", [((2, 3, 6, 6), (2, 2), (2, 2), (0, 0)),
                                         ((1, 2, 7, 5), (3, 2), (2, 1), (1, 1)),
                                         ((2, 1, 5, 5), (3, 3), (1, 1), (1, 0))])
def test_pooling_forward_and_gradients(kind, xs, k, s, p, rng):
    xv = rng.normal(size=xs)  # continuous values: no ties, so the max is differentiable
    x = gc.placeholder("x", (None,) + xs[1:])
    pool = gc.max_pool2d if kind == "max" else gc.avg_pool2d
    y = pool(x, k, s, p)
    want = _pool_loops(xv, k, s, p, kind)
    np.testing.assert_allclose(gc.compile(y)(x=xv.astype(np.float32)), want, rtol=1e-5,
                               atol=1e-6)
    check_grads(y, x, {x: xv}, rtol=1e-5, atol=1e-7)
    gx = gc.grad(gc.sum(gc.square(y)), x)
    check_grads(gc.sum(gx * gx), x, {x: xv}, rtol=1e-5, atol=1e-7)


def test_max_pool_gradient_goes_to_the_first_maximum():
    x = gc.placeholder("x", (1, 1, 2, 2))
    g = gc.grad(gc.sum(gc.max_pool2d(x, 2)), x)
    np.testing.assert_array_equal(gc.compile(g)(x=np.ones((1, 1, 2, 2))), [[[[1, 0], [0, 0]]]])


def test_shape_errors_name_the_problem():
    x = gc.placeholder("x", (None, 3, 8, 8))
    with pytest.raises(gc.ShapeError, match="3 channels but weight expects 2 x groups=1"):
        gc.conv2d(x, gc.placeholder("w", (4, 2, 3, 3)))
    with pytest.raises(gc.ShapeError, match="does not fit"):
        gc.conv2d(x, gc.placeholder("w2", (4, 3, 9, 9)))
    with pytest.raises(gc.ShapeError, match="at most half the kernel"):
        gc.max_pool2d(x, 2, padding=2)
