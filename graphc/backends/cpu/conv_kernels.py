"""Convolution and max-pooling kernels of the CPU backend that write into their output
(`out=`): Numba loops for im2col, col2im and pooling, NumPy's BLAS for the products.

Each computes exactly its op's NumPy reference (graphc/ops/conv.py stays the definition);
unsupported cases (groups > 1, dtypes Numba does not loop over) run the reference. The
im2col operand is laid out (N, C*KH*KW, OH*OW), the layout a batched GEMM with the weight
on the left wants, in a per-thread scratch buffer reused from call to call."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from . import numba_printer

_FLOATS = (np.float32, np.float64)
_scratch = threading.local()


def _buffer(tag: str, shape: tuple, dtype) -> np.ndarray:
    """A scratch array kept per thread and per (tag, shape, dtype): no allocation per step."""
    store = getattr(_scratch, "arrays", None)
    if store is None:
        store = _scratch.arrays = {}
    key = (tag, shape, np.dtype(dtype).str)
    a = store.get(key)
    if a is None:
        a = store[key] = np.empty(shape, dtype)
    return a




def _valid(n_out, stride, offset, size):
    """[lo, hi): the output positions j whose input j * stride + offset lies in [0, size)."""
    lo = 0
    while lo < n_out and lo * stride + offset < 0:
        lo += 1
    hi = n_out
    while hi > lo and (hi - 1) * stride + offset >= size:
        hi -= 1
    return lo, hi


def _im2col(x, kh, kw, sh, sw, ph, pw, dh, dw, cols):
    n, c, h, w = x.shape
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    oh = cols.shape[2] // ow
    for b in range(n):
        for ch in range(c):
            for p in range(kh):
                for q in range(kw):
                    k = (ch * kh + p) * kw + q
                    off = q * dw - pw
                    lo, hi = _valid(ow, sw, off, w)
                    for i in range(oh):
                        y = i * sh - ph + p * dh
                        row = cols[b, k, i * ow:(i + 1) * ow]
                        if y < 0 or y >= h:
                            row[:] = 0.0
                            continue
                        src = x[b, ch, y]
                        for j in range(lo):
                            row[j] = 0.0
                        for j in range(lo, hi):
                            row[j] = src[j * sw + off]
                        for j in range(hi, ow):
                            row[j] = 0.0


def _col2im(dcols, kh, kw, sh, sw, ph, pw, dh, dw, out):
    n, c, h, w = out.shape
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    oh = dcols.shape[2] // ow
    out[:] = 0.0
    for b in range(n):
        for ch in range(c):
            for p in range(kh):
                for q in range(kw):
                    k = (ch * kh + p) * kw + q
                    off = q * dw - pw
                    lo, hi = _valid(ow, sw, off, w)
                    for i in range(oh):
                        y = i * sh - ph + p * dh
                        if y < 0 or y >= h:
                            continue
                        row = dcols[b, k, i * ow:(i + 1) * ow]
                        dst = out[b, ch, y]
                        for j in range(lo, hi):
                            dst[j * sw + off] += row[j]


def _window_arg(x, b, ch, i, j, kh, kw, sh, sw, ph, pw):
    """(value, window index) of the first maximum of a -inf padded window (NaN wins, as
    np.max and np.argmax)."""
    h, w = x.shape[2], x.shape[3]
    best = -np.inf
    arg = 0
    for p in range(kh):
        y = i * sh - ph + p
        for q in range(kw):
            xx = j * sw - pw + q
            v = -np.inf
            if 0 <= y < h and 0 <= xx < w:
                v = x[b, ch, y, xx]
            if p == 0 and q == 0:
                best = v
            elif v > best or (v != v and best == best):
                best, arg = v, p * kw + q
    return best, arg


def _first_max(x, b, ch, y0, x0, kh, kw):
    """(value, window index) of the first maximum of an in-bounds window (NaN wins)."""
    best = x[b, ch, y0, x0]
    arg = 0
    for p in range(kh):
        for q in range(kw):
            v = x[b, ch, y0 + p, x0 + q]
            if v > best or (v != v and best == best):
                best, arg = v, p * kw + q
    return best, arg


def _pool_fwd(x, kh, kw, sh, sw, ph, pw, out):
    n, c, oh, ow = out.shape
    if ph == 0 and pw == 0:  # every window in bounds: no -inf padding to test
        for b in range(n):
            for ch in range(c):
                for i in range(oh):
                    for j in range(ow):
                        out[b, ch, i, j] = _first_max(x, b, ch, i * sh, j * sw, kh, kw)[0]
        return
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    out[b, ch, i, j] = _window_arg(x, b, ch, i, j, kh, kw, sh, sw, ph, pw)[0]


def _pool_bwd(gy, x, kh, kw, sh, sw, ph, pw, out):
    n, c, oh, ow = gy.shape
    out[:] = 0.0
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    arg = _window_arg(x, b, ch, i, j, kh, kw, sh, sw, ph, pw)[1]
                    y, xx = i * sh - ph + arg // kw, j * sw - pw + arg % kw
                    if 0 <= y < out.shape[2] and 0 <= xx < out.shape[3]:
                        out[b, ch, y, xx] += gy[b, ch, i, j]


def _pool_gather(gx, x, kh, kw, sh, sw, ph, pw, out):
    n, c, oh, ow = out.shape
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    arg = _window_arg(x, b, ch, i, j, kh, kw, sh, sw, ph, pw)[1]
                    y, xx = i * sh - ph + arg // kw, j * sw - pw + arg % kw
                    v = 0.0
                    if 0 <= y < gx.shape[2] and 0 <= xx < gx.shape[3]:
                        v = gx[b, ch, y, xx]
                    out[b, ch, i, j] = v


_JIT = None


def _jit():
    """The loops above compiled by Numba, on first use (importing Numba costs 0.5 s)."""
    global _JIT, _window_arg, _first_max, _valid
    if _JIT is None:
        import numba
        jit = numba.njit(cache=True, nogil=True)
        # the loops call these: bound to their compiled forms before the loops compile
        _window_arg, _first_max, _valid = jit(_window_arg), jit(_first_max), jit(_valid)
        _JIT = SimpleNamespace(im2col=jit(_im2col), col2im=jit(_col2im),
                               pool_fwd=jit(_pool_fwd), pool_bwd=jit(_pool_bwd),
                               pool_gather=jit(_pool_gather))
    return _JIT


def _fast(*arrays) -> bool:
    dt = arrays[0].dtype
    return (all(a.dtype == dt for a in arrays) and dt.type in _FLOATS
            and numba_printer.available())


def _reference(name):
    from ...ops import conv
    return getattr(conv, name)


def _geometry(w_shape, stride, padding, dilation):
    _, _, kh, kw = w_shape
    return (kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])


def _cols(x, w_shape, oh_ow, stride, padding, dilation, tag):
    n, c = x.shape[:2]
    cols = _buffer(tag, (n, c * w_shape[2] * w_shape[3], oh_ow), x.dtype)
    geometry = _geometry(w_shape, stride, padding, dilation)
    _jit().im2col(np.ascontiguousarray(x), *geometry, cols)
    return cols


def conv2d(x, w, out, stride, padding, dilation, groups):
    """conv2d into out: im2col, then one batched GEMM W (O, K) @ cols_n (K, OH*OW)."""
    if groups != 1 or not _fast(x, w, out):
        np.copyto(out, _reference("_conv2d")(x, w, stride, padding, dilation, groups))
        return
    n, o, oh, ow = out.shape
    cols = _cols(x, w.shape, oh * ow, stride, padding, dilation, "conv_cols")
    np.matmul(w.reshape(o, -1), cols, out=out.reshape(n, o, oh * ow))


def conv2d_input_grad(gy, w, *like, out, stride, padding, dilation, groups):
    """The transposed convolution into out: W^T @ gy_n per image, then col2im."""
    if groups != 1 or not _fast(gy, w, out):
        np.copyto(out, _reference("_conv2d_input_grad")(gy, w, out.shape, stride, padding,
                                                        dilation, groups))
        return
    n, o, oh, ow = gy.shape
    dcols = _buffer("conv_dcols", (n, w[0].size, oh * ow), gy.dtype)
    np.matmul(w.reshape(o, -1).T, np.ascontiguousarray(gy).reshape(n, o, oh * ow), out=dcols)
    _jit().col2im(dcols, *_geometry(w.shape, stride, padding, dilation), out)


def conv2d_weight_grad(x, gy, *like, out, stride, padding, dilation, groups):
    """sum_n gy_n (O, OH*OW) @ cols_n^T into out (batched GEMM, then a sum over N)."""
    if groups != 1 or not _fast(x, gy, out):
        np.copyto(out, _reference("_conv2d_weight_grad")(x, gy, out.shape, stride, padding,
                                                         dilation, groups))
        return
    n, o, oh, ow = gy.shape
    cols = _cols(x, out.shape, oh * ow, stride, padding, dilation, "conv_wcols")
    per_image = _buffer("conv_dw", (n, o, cols.shape[1]), out.dtype)
    np.matmul(np.ascontiguousarray(gy).reshape(n, o, oh * ow), cols.transpose(0, 2, 1),
              out=per_image)
    np.sum(per_image, axis=0, out=out.reshape(o, -1))


def _pool_args(kernel, stride, padding):
    return (kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1])


def max_pool2d(x, out, kernel, stride, padding):
    """Max over each -inf padded window, one Numba pass."""
    if not _fast(x, out):
        np.copyto(out, _reference("_max_pool2d")(x, kernel, stride, padding))
        return
    _jit().pool_fwd(np.ascontiguousarray(x), *_pool_args(kernel, stride, padding), out)


def max_pool2d_grad(gy, x, out, kernel, stride, padding):
    """Each output's gradient added at its window's first maximum, found again from x
    (recomputing the argmax reads x once; storing it would cost a write and a read)."""
    if not _fast(gy, x, out):
        np.copyto(out, _reference("_max_pool2d_grad")(gy, x, kernel, stride, padding))
        return
    _jit().pool_bwd(np.ascontiguousarray(gy), np.ascontiguousarray(x),
              *_pool_args(kernel, stride, padding), out)


def max_pool2d_gather(gx, x, out, kernel, stride, padding):
    """gx read at each window's first maximum of x."""
    if not _fast(gx, x, out):
        np.copyto(out, _reference("_max_pool2d_gather")(gx, x, kernel, stride, padding))
        return
    _jit().pool_gather(np.ascontiguousarray(gx), np.ascontiguousarray(x),
                 *_pool_args(kernel, stride, padding), out)


INTO = {
    "conv2d": conv2d, "conv2d_input_grad": conv2d_input_grad,
    "conv2d_weight_grad": conv2d_weight_grad, "max_pool2d": max_pool2d,
    "max_pool2d_grad": max_pool2d_grad, "max_pool2d_gather": max_pool2d_gather,
}
