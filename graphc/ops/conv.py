"""2-D convolution and pooling over NCHW tensors (graph stage: registry ops), with
torch.nn.functional's semantics (conv2d: stride, padding, dilation, groups; max_pool2d pads
with -inf; avg_pool2d counts the padding, as count_include_pad=True).

Convolution runs as im2col + matmul. Its gradients are two more ops (the input gradient, a
transposed convolution, and the weight gradient), each linear in both operands, so the three
ops close under differentiation: gradients of gradients work."""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .. import dtypes as _dt
from ..errors import GraphError
from ..graph import Tensor
from .common import lift
from .registry import apply, fail, register
from .shape_ops import reshape, zeros_like


def _pair(v, what: str) -> tuple:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) for i in t):
        raise GraphError(f"{what} must be an int or a pair of ints, got {v!r}")
    return int(t[0]), int(t[1])


def _out_size(n, k, s, p, d):
    if n is None:
        return None
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _windows(xp, kh, kw, stride, dilation):
    """(N, C, OH, OW, KH, KW) view of the padded input's receptive fields."""
    (sh, sw), (dh, dw) = stride, dilation
    v = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    return v[:, :, ::sh, ::sw, ::dh, ::dw]


def _pad(x, padding, value=0.0):
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _slices(k, out, s, d):
    """Padded-input rows touched by kernel offset k for every output position."""
    return slice(k * d, k * d + (out - 1) * s + 1, s)


# --- conv2d ----------------------------------------------------------------------------------
def _infer_conv(shapes, dts, stride, padding, dilation, groups):
    xs, ws = shapes
    if len(xs) != 4 or len(ws) != 4:
        fail("expects a 4-D NCHW input and a 4-D (out, in/groups, kh, kw) weight")
    if not (_dt.is_float(dts[0]) and dts[0] == dts[1]):
        fail(f"input and weight must share a float dtype, got {dts[0]} and {dts[1]}")
    n, c, h, w = xs
    o, cg, kh, kw = ws
    if kh is None or kw is None:
        fail(f"the weight's kernel size must be known when the graph is built, got {ws}")
    if c is not None and cg is not None and c != cg * groups:
        fail(f"input has {c} channels but weight expects {cg} x groups={groups}")
    if o is not None and o % groups:
        fail(f"{o} output channels are not divisible by groups={groups}")
    oh = _out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = _out_size(w, kw, stride[1], padding[1], dilation[1])
    if (oh is not None and oh < 1) or (ow is not None and ow < 1):
        fail(f"the {kh}x{kw} kernel (dilation {dilation}, padding {padding}) does not fit "
             f"the {h}x{w} input")
    return (n, o, oh, ow), dts[0]


def _cols(x, w_shape, stride, padding, dilation, groups):
    """Per group: the (N*OH*OW, Cg*KH*KW) im2col matrix, and (OH, OW)."""
    o, cg, kh, kw = w_shape
    v = _windows(_pad(x, padding), kh, kw, stride, dilation)
    n, _, oh, ow = v.shape[:4]
    cols = [v[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, -1)
            for g in range(groups)]
    return cols, (oh, ow)


def _conv2d(x, w, stride, padding, dilation, groups):
    n = x.shape[0]
    o = w.shape[0]
    og = o // groups
    cols, (oh, ow) = _cols(x, w.shape, stride, padding, dilation, groups)
    out = np.empty((n, o, oh, ow), np.result_type(x, w))
    for g, c in enumerate(cols):
        wm = w[g * og:(g + 1) * og].reshape(og, -1)
        out[:, g * og:(g + 1) * og] = (c @ wm.T).reshape(n, oh, ow, og).transpose(0, 3, 1, 2)
    return out


def _conv2d_input_grad(gy, w, x_shape, stride, padding, dilation, groups):
    n, c, h, wd = x_shape
    o, cg, kh, kw = w.shape
    og = o // groups
    oh, ow = gy.shape[2:]
    ph, pw = padding
    dxp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.result_type(gy, w))
    for g in range(groups):
        gm = gy[:, g * og:(g + 1) * og].transpose(0, 2, 3, 1).reshape(n * oh * ow, og)
        dcols = (gm @ w[g * og:(g + 1) * og].reshape(og, -1)).reshape(n, oh, ow, cg, kh, kw)
        for i in range(kh):
            for j in range(kw):
                dxp[:, g * cg:(g + 1) * cg, _slices(i, oh, stride[0], dilation[0]),
                    _slices(j, ow, stride[1], dilation[1])] += \
                    dcols[..., i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, ph:ph + h, pw:pw + wd]


def _conv2d_weight_grad(x, gy, w_shape, stride, padding, dilation, groups):
    o, cg, kh, kw = w_shape
    og = o // groups
    n, _, oh, ow = gy.shape
    cols, _ = _cols(x, w_shape, stride, padding, dilation, groups)
    dw = np.empty(w_shape, np.result_type(x, gy))
    for g, c in enumerate(cols):
        gm = gy[:, g * og:(g + 1) * og].transpose(0, 2, 3, 1).reshape(n * oh * ow, og)
        dw[g * og:(g + 1) * og] = (gm.T @ c).reshape(og, cg, kh, kw)
    return dw


def _infer_like(index):
    def infer(shapes, dts, **_):
        return shapes[index], np.result_type(*dts[:2])
    return infer


def _attrs(node) -> dict:
    return {k: node.attrs[k] for k in ("stride", "padding", "dilation", "groups")}


register("conv2d", _infer_conv, _conv2d, (
    lambda g, y, x, w: apply("conv2d_input_grad", (g, w, x), **_attrs(y)),
    lambda g, y, x, w: apply("conv2d_weight_grad", (x, g, w), **_attrs(y)),
))
# <gg, Ct(g, w)> = <conv(gg, w), g> = <Cw(gg, g), w>
register("conv2d_input_grad", _infer_like(2), _conv2d_input_grad, (
    lambda gg, y, g, w, like: apply("conv2d", (gg, w), **_attrs(y)),
    lambda gg, y, g, w, like: apply("conv2d_weight_grad", (gg, g, w), **_attrs(y)),
    None,
), shape_only=(2,))
# <gg, Cw(x, g)> = <conv(x, gg), g> = <Ct(g, gg), x>
register("conv2d_weight_grad", _infer_like(2), _conv2d_weight_grad, (
    lambda gg, y, x, g, like: apply("conv2d_input_grad", (g, gg, x), **_attrs(y)),
    lambda gg, y, x, g, like: apply("conv2d", (x, gg), **_attrs(y)),
    None,
), shape_only=(2,))


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """torch.nn.functional.conv2d over NCHW: weight (out, in/groups, kh, kw), bias (out,)."""
    x, weight = lift(x), lift(weight)
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise GraphError(f"conv2d: groups must be a positive int, got {groups!r}")
    y = apply("conv2d", (x, weight), stride=_pair(stride, "conv2d: stride"),
              padding=_pair(padding, "conv2d: padding"),
              dilation=_pair(dilation, "conv2d: dilation"), groups=int(groups))
    if bias is not None:
        bias = lift(bias, like=y)
        y = y + reshape(bias, (-1, 1, 1))
    return y


# --- pooling ---------------------------------------------------------------------------------
def _infer_pool(shapes, dts, kernel, stride, padding):
    xs = shapes[0]
    if len(xs) != 4:
        fail("expects a 4-D NCHW input")
    if not _dt.is_float(dts[0]):
        fail(f"needs a float input, got {dts[0]}")
    if padding[0] * 2 > kernel[0] or padding[1] * 2 > kernel[1]:
        fail(f"padding {padding} must be at most half the kernel {kernel}")
    n, c, h, w = xs
    oh = _out_size(h, kernel[0], stride[0], padding[0], 1)
    ow = _out_size(w, kernel[1], stride[1], padding[1], 1)
    if (oh is not None and oh < 1) or (ow is not None and ow < 1):
        fail(f"the {kernel} window does not fit the {h}x{w} input")
    return (n, c, oh, ow), dts[0]


def _max_windows(x, kernel, stride, padding):
    v = _windows(_pad(x, padding, -np.inf), kernel[0], kernel[1], stride, (1, 1))
    return v.reshape(v.shape[:4] + (-1,))


def _max_pool2d(x, kernel, stride, padding):
    return _max_windows(x, kernel, stride, padding).max(-1)


def _max_pool2d_grad(gy, x, kernel, stride, padding):
    """Each output's gradient goes to the first maximum of its window."""
    arg = _max_windows(x, kernel, stride, padding).argmax(-1)
    n, c, h, w = x.shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), gy.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dxp[:, :, _slices(i, oh, stride[0], 1), _slices(j, ow, stride[1], 1)] += \
                np.where(arg == i * kernel[1] + j, gy, 0)
    return dxp[:, :, ph:ph + h, pw:pw + w]


def _max_pool2d_gather(gx, x, kernel, stride, padding):
    """gx read at each window's first maximum of x (the adjoint of _max_pool2d_grad)."""
    arg = _max_windows(x, kernel, stride, padding).argmax(-1)
    v = _windows(_pad(gx, padding), kernel[0], kernel[1], stride, (1, 1))
    v = v.reshape(v.shape[:4] + (-1,))
    return np.take_along_axis(v, arg[..., None], -1)[..., 0]


def _pool_attrs(node) -> dict:
    return {k: node.attrs[k] for k in ("kernel", "stride", "padding")}


register("max_pool2d", _infer_pool, _max_pool2d, (
    lambda g, y, x: apply("max_pool2d_grad", (g, x), **_pool_attrs(y)),))
# Which element wins a window is piecewise constant in x: zero gradient with respect to x.
register("max_pool2d_grad", lambda shapes, dts, **_: (shapes[1], dts[0]), _max_pool2d_grad, (
    lambda gg, y, g, x: apply("max_pool2d_gather", (gg, x), **_pool_attrs(y)),
    lambda gg, y, g, x: zeros_like(x)))
register("max_pool2d_gather", lambda shapes, dts, **a: _infer_pool(shapes[1:], dts[1:], **a),
         _max_pool2d_gather, (
             lambda gg, y, gx, x: apply("max_pool2d_grad", (gg, x), **_pool_attrs(y)),
             lambda gg, y, gx, x: zeros_like(x)))


def _avg_pool2d(x, kernel, stride, padding):
    v = _windows(_pad(x, padding), kernel[0], kernel[1], stride, (1, 1))
    return v.mean((-2, -1), dtype=np.float64).astype(x.dtype, copy=False)


def _avg_pool2d_grad(gy, x_shape, kernel, stride, padding):
    n, c, h, w = x_shape
    oh, ow = gy.shape[2:]
    ph, pw = padding
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), gy.dtype)
    share = gy / gy.dtype.type(kernel[0] * kernel[1])
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            dxp[:, :, _slices(i, oh, stride[0], 1), _slices(j, ow, stride[1], 1)] += share
    return dxp[:, :, ph:ph + h, pw:pw + w]


register("avg_pool2d", _infer_pool, _avg_pool2d, (
    lambda g, y, x: apply("avg_pool2d_grad", (g, x), **_pool_attrs(y)),))
register("avg_pool2d_grad", lambda shapes, dts, **_: (shapes[1], dts[0]), _avg_pool2d_grad, (
    lambda gg, y, g, like: apply("avg_pool2d", (gg,), **_pool_attrs(y)), None),
    shape_only=(1,))


def _pool(name, x, kernel_size, stride, padding):
    kernel = _pair(kernel_size, f"{name}: kernel_size")
    stride = kernel if stride is None else _pair(stride, f"{name}: stride")
    return apply(name, (lift(x),), kernel=kernel, stride=stride,
                 padding=_pair(padding, f"{name}: padding"))


def max_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """torch.nn.functional.max_pool2d (stride defaults to the kernel size)."""
    return _pool("max_pool2d", x, kernel_size, stride, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0) -> Tensor:
    """torch.nn.functional.avg_pool2d with count_include_pad=True."""
    return _pool("avg_pool2d", x, kernel_size, stride, padding)
