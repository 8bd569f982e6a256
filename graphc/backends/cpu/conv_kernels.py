"""Convolution and max-pooling kernels of the CPU backend that write into their output
(`out=`): Numba loops for im2col, col2im and pooling, NumPy's BLAS for the products.

Each computes exactly its op's NumPy reference (graphc/ops/conv.py stays the definition);
unsupported cases (groups > 1, dtypes Numba does not loop over) run the reference.

The batch is cut into chunks of a few images that graphc's CPU threads take in turn (see
_run_chunks; every Numba loop releases the GIL, as np.matmul does). A chunk's im2col
operand (images, C*KH*KW, pixels), the layout a batched GEMM with the weight on the left
wants, is written into a per-thread scratch buffer that stays in cache and is consumed
there by np.matmul at once: nothing is allocated per step, and no transposed copy follows.
Each image's product is small enough for OpenBLAS's single-threaded small-matrix kernels,
so the BLAS thread pool is never woken (on a busy 2-core machine a woken pool waits for its
threads to be scheduled: milliseconds for a product of microseconds). Stride-1 convolutions
use the "wide" layout described below, whose copies run over long contiguous runs. Max
pooling recomputes each window's argmax in the backward pass (2x2 windows by selects)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from . import numba_printer

_FLOATS = (np.float32, np.float64)
_scratch = threading.local()
CHUNK_BYTES = 1 << 19  # a chunk's im2col operand: about 512 KB, well inside L2


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


# --- threads -----------------------------------------------------------------------------
def _run_chunks(fn, n_chunks: int) -> None:
    """fn(c) for c in range(n_chunks) on graphc's CPU threads (kernels.run_chunks: the
    calling thread and kernels.threads() - 1 helpers, each taking the next chunk nobody has
    taken, the caller waiting only for chunks a helper has started); serially in a graphc
    without it."""
    from . import kernels
    shared = getattr(kernels, "run_chunks", None)
    if shared is not None:
        shared(fn, n_chunks)
        return
    for c in range(n_chunks):
        fn(c)


def _images_per_chunk(n: int, per_image_bytes: int) -> int:
    return max(1, min(n, CHUNK_BYTES // max(per_image_bytes, 1)))


def _over_batch(n: int, nb: int, work, state=None) -> list:
    """work(b0, b1, s) over chunks of nb images of the batch [0, n) (see _run_chunks); s is
    the thread's own state(), made when it takes its first chunk, or None. Returns the
    states of the threads that took a chunk."""
    states: dict = {}

    def chunk(c):
        s = None
        if state is not None:
            s = states.get(threading.get_ident())
            if s is None:
                s = states[threading.get_ident()] = state()
        work(c * nb, min((c + 1) * nb, n), s)

    _run_chunks(chunk, -(-n // nb))
    return list(states.values())


# --- Numba loops (compiled on first use) --------------------------------------------------
def _valid(n_out, stride, offset, size):
    """[lo, hi): the output positions j whose input j * stride + offset lies in [0, size)."""
    lo = 0
    while lo < n_out and lo * stride + offset < 0:
        lo += 1
    hi = n_out
    while hi > lo and (hi - 1) * stride + offset >= size:
        hi -= 1
    return lo, hi


def _im2col(x, b0, b1, kh, kw, sh, sw, ph, pw, dh, dw, cols):
    """cols[b - b0, (ch, p, q), i * OW + j] = x[b, ch, i*sh - ph + p*dh, j*sw - pw + q*dw]
    (0 outside x) for the images b0..b1."""
    _, c, h, w = x.shape
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    oh = cols.shape[2] // ow
    for b in range(b0, b1):
        for ch in range(c):
            for p in range(kh):
                for q in range(kw):
                    k = (ch * kh + p) * kw + q
                    off = q * dw - pw
                    lo, hi = _valid(ow, sw, off, w)
                    for i in range(oh):
                        y = i * sh - ph + p * dh
                        base = i * ow
                        if y < 0 or y >= h:
                            for j in range(ow):
                                cols[b - b0, k, base + j] = 0.0
                            continue
                        for j in range(lo):
                            cols[b - b0, k, base + j] = 0.0
                        if sw == 1:
                            for j in range(lo, hi):
                                cols[b - b0, k, base + j] = x[b, ch, y, j + off]
                        else:
                            for j in range(lo, hi):
                                cols[b - b0, k, base + j] = x[b, ch, y, j * sw + off]
                        for j in range(hi, ow):
                            cols[b - b0, k, base + j] = 0.0


def _col2im(dcols, b0, b1, kh, kw, sh, sw, ph, pw, dh, dw, out):
    """out[b] = the sum of dcols[b - b0] scattered back where _im2col gathered it from."""
    _, c, h, w = out.shape
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    oh = dcols.shape[2] // ow
    for b in range(b0, b1):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    out[b, ch, y, xx] = 0.0
            for p in range(kh):
                for q in range(kw):
                    k = (ch * kh + p) * kw + q
                    off = q * dw - pw
                    lo, hi = _valid(ow, sw, off, w)
                    for i in range(oh):
                        y = i * sh - ph + p * dh
                        if y < 0 or y >= h:
                            continue
                        base = i * ow
                        if sw == 1:
                            for j in range(lo, hi):
                                out[b, ch, y, j + off] += dcols[b - b0, k, base + j]
                        else:
                            for j in range(lo, hi):
                                out[b, ch, y, j * sw + off] += dcols[b - b0, k, base + j]


# Stride 1, dilation 1: the "wide" layout. With xp the zero-padded image, rows Wp = W + 2pw
# apart, output pixel (i, j) reads xp[ch, (i + p) * Wp + j + q]: for each weight index k =
# (ch, p, q) the pixels of all rows are one contiguous run xp[ch, p*Wp + q :][:OH*Wp], if
# each output row is taken Wp wide (its last Wp - OW columns are garbage, dropped after the
# product or zeroed before it). Copies and adds then run over long runs, not rows of OW.
def _pad_image(x, b, ph, pw, xp):
    """xp[ch] = x[b, ch] zero-padded, flattened rows Wp wide (plus one zero row of slack)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    wp = w + 2 * pw
    for ch in range(c):
        dst = xp[ch]
        dst[:] = 0.0
        for y in range(h):
            src = x[b, ch, y]
            row = dst[(y + ph) * wp + pw:]
            for xx in range(w):
                row[xx] = src[xx]


# The loops below index one-dimensional views: Numba then knows each index is in bounds and
# non-negative, and LLVM vectorizes the runs (three times faster than indexing the 3-D arrays).
def _im2col_wide(x, b0, b1, kh, kw, ph, pw, zero_garbage, xp, cols, k_first=False):
    """cols[b - b0, (ch, p, q), i * Wp + j] = xp[ch, (i + p) * Wp + j + q] (k_first: cols[(ch,
    p, q), b - b0, i * Wp + j], every image's columns side by side); the garbage columns
    j >= OW zeroed when asked (before a product that sums over pixels)."""
    c, w = x.shape[1], x.shape[3]
    wp = w + 2 * pw
    ow = wp - kw + 1
    run = cols.shape[2]
    for b in range(b0, b1):
        _pad_image(x, b, ph, pw, xp)
        for ch in range(c):
            for p in range(kh):
                for q in range(kw):
                    kk = (ch * kh + p) * kw + q
                    dst = cols[kk, b - b0] if k_first else cols[b - b0, kk]
                    src = xp[ch, p * wp + q:p * wp + q + run]
                    for t in range(run):
                        dst[t] = src[t]
                    if zero_garbage:
                        for i in range(run // wp):
                            for t in range(i * wp + ow, (i + 1) * wp):
                                dst[t] = 0.0


def _gy_wide(gy, b0, b1, wp, transpose, out):
    """gy[b] with each row Wp wide (garbage columns 0): out[b - b0, o, i * Wp + j], or
    transposed out[b - b0, i * Wp + j, o]."""
    _, o, oh, ow = gy.shape
    for b in range(b0, b1):
        dst = out[b - b0]
        dst[:] = 0.0
        for oo in range(o):
            for i in range(oh):
                src = gy[b, oo, i]
                if transpose:
                    for j in range(ow):
                        dst[i * wp + j, oo] = src[j]
                else:
                    row = dst[oo, i * wp:]
                    for j in range(ow):
                        row[j] = src[j]


def _col2im_wide(dcols, b0, b1, kh, kw, ph, pw, xp, out):
    """out[b] = dcols[b - b0] added back where _im2col_wide read it (its garbage columns
    must be 0), then cropped."""
    c, h, w = out.shape[1], out.shape[2], out.shape[3]
    wp = w + 2 * pw
    run = dcols.shape[2]
    for b in range(b0, b1):
        for ch in range(c):
            acc = xp[ch]
            acc[:] = 0.0
            for p in range(kh):
                for q in range(kw):
                    dst = acc[p * wp + q:p * wp + q + run]
                    src = dcols[b - b0, (ch * kh + p) * kw + q]
                    for t in range(run):
                        dst[t] += src[t]
            for y in range(h):
                row = acc[(y + ph) * wp + pw:]
                dst = out[b, ch, y]
                for xx in range(w):
                    dst[xx] = row[xx]


# A layer with few weights (the first of a CNN: one to three input channels) makes GEMMs too
# small for a BLAS: per image (6, 25) @ (25, 896) for LeNet's first convolution, and
# (25, 896) @ (896, 6) for its weight gradient. Both are computed directly from the padded
# image instead (the wide layout: each weight's window is one contiguous run of the padded
# image), with no im2col copy: LeNet's first convolution 2.0-2.5 -> 1.3-1.5 ms, its weight
# gradient 3.3-3.8 -> 1.3-1.9 ms (batch 256, 2 threads). The weight gradient is direct for
# C*KH*KW <= DIRECT_GRAD_K (it lost at LeNet's second layer, C*KH*KW = 150: 3.6 vs 3.5 ms, and won
# 1.3-1.6x for 1-3 channels and 6-32 outputs at 5x5), the convolution for O*C*KH*KW <=
# DIRECT_WEIGHTS (even at 3 channels and 16 outputs, 1200 weights; it lost at 2400).
DIRECT_GRAD_K = 100
DIRECT_WEIGHTS = 512


def _conv_direct(x, wm, b0, b1, kh, kw, ph, pw, xp, res, out):
    """out[b, o] = sum over (ch, p, q) of wm[o, (ch, p, q)] times the padded image's run
    starting at (p, q), in the wide layout (rows Wp wide), cropped into out."""
    c = x.shape[1]
    _, o, oh, ow = out.shape
    wp = x.shape[3] + 2 * pw
    run = oh * wp
    for b in range(b0, b1):
        _pad_image(x, b, ph, pw, xp)
        for oo in range(o):
            r = res[oo]
            for t in range(run):
                r[t] = 0.0
            for ch in range(c):
                for p in range(kh):
                    for q in range(kw):
                        src = xp[ch, p * wp + q:p * wp + q + run]
                        v = wm[oo, (ch * kh + p) * kw + q]
                        for t in range(run):
                            r[t] += v * src[t]
            for i in range(oh):
                dst, row = out[b, oo, i], r[i * wp:]
                for j in range(ow):
                    dst[j] = row[j]


def _direct_weight_sums(x, gy, b0, b1, kh, kw, ph, pw, xp, gyw, zero, acc):
    """acc[o, (ch, p, q)] += the dot product of gy[b, o] (rows Wp wide, garbage columns 0)
    with the padded image's run starting at (p, q), for the images b0..b1; two outputs per
    pass over the run (one load of the image serves both), summed in x's dtype from `zero`."""
    c = x.shape[1]
    _, o, oh, ow = gy.shape
    wp = x.shape[3] + 2 * pw
    run = oh * wp
    for b in range(b0, b1):
        _pad_image(x, b, ph, pw, xp)
        for oo in range(o):
            dst = gyw[oo]
            for t in range(run):
                dst[t] = 0.0
            for i in range(oh):
                src, row = gy[b, oo, i], dst[i * wp:]
                for j in range(ow):
                    row[j] = src[j]
        for ch in range(c):
            for p in range(kh):
                for q in range(kw):
                    src = xp[ch, p * wp + q:p * wp + q + run]
                    k = (ch * kh + p) * kw + q
                    oo = 0
                    while oo + 1 < o:
                        g0, g1 = gyw[oo], gyw[oo + 1]
                        s0 = zero
                        s1 = zero
                        for t in range(run):
                            v = src[t]
                            s0 += g0[t] * v
                            s1 += g1[t] * v
                        acc[oo, k] += s0
                        acc[oo + 1, k] += s1
                        oo += 2
                    if oo < o:
                        g0 = gyw[oo]
                        s0 = zero
                        for t in range(run):
                            s0 += g0[t] * src[t]
                        acc[oo, k] += s0


def _argmax(plane, i, j, kh, kw, sh, sw, ph, pw):
    """(value, y, x) of the first maximum of window (i, j) of a -inf padded plane (NaN
    wins, as np.max and np.argmax); y, x = -1, -1 when the window holds no element. Selects,
    not branches: which element wins is data, and a mispredicted branch costs more than the
    window."""
    h, w = plane.shape
    y0, x0 = i * sh - ph, j * sw - pw
    if y0 >= 0 and x0 >= 0 and y0 + kh <= h and x0 + kw <= w:  # no padding to test
        best = plane[y0, x0]
        by, bx = y0, x0
        for p in range(kh):
            row = plane[y0 + p]
            for q in range(kw):
                v = row[x0 + q]
                take = (v > best) | ((v != v) & (best == best))
                best = v if take else best
                by = y0 + p if take else by
                bx = x0 + q if take else bx
        return best, by, bx
    best = -np.inf
    by, bx = -1, -1
    first = True
    for p in range(kh):
        y = y0 + p
        for q in range(kw):
            xx = x0 + q
            inside = 0 <= y < h and 0 <= xx < w
            v = plane[y, xx] if inside else -np.inf
            if first:
                first = False
                best = v
                if inside:
                    by, bx = y, xx
            elif v > best or (v != v and best == best):
                best, by, bx = v, y, xx
    return best, by, bx


def _nanmax2(a, b):
    """b where it is bigger, or NaN while a is not, else a: the running first maximum."""
    return b if (b > a) | ((b != b) & (a == a)) else a


def _is_2x2(kh, kw, sh, sw, ph, pw):
    return kh == 2 and kw == 2 and sh == 2 and sw == 2 and ph == 0 and pw == 0


def _pool_fwd(x, b0, b1, kh, kw, sh, sw, ph, pw, out):
    _, c, oh, ow = out.shape
    for b in range(b0, b1):
        for ch in range(c):
            plane, dst = x[b, ch], out[b, ch]
            for i in range(oh):
                row = dst[i]
                if _is_2x2(kh, kw, sh, sw, ph, pw):
                    r0, r1 = plane[2 * i], plane[2 * i + 1]
                    for j in range(ow):
                        row[j] = _nanmax2(_nanmax2(_nanmax2(r0[2 * j], r0[2 * j + 1]),
                                                   r1[2 * j]), r1[2 * j + 1])
                    continue
                for j in range(ow):
                    row[j] = _argmax(plane, i, j, kh, kw, sh, sw, ph, pw)[0]


def _pool_bwd(gy, x, b0, b1, kh, kw, sh, sw, ph, pw, out):
    """out[b] = each output's gradient added at its window's first maximum."""
    _, c, oh, ow = gy.shape
    code = np.empty(ow, np.int8)  # 2x2: which element of each window of a row is its maximum
    for b in range(b0, b1):
        for ch in range(c):
            plane, g, dst = x[b, ch], gy[b, ch], out[b, ch]
            flat = dst.reshape(-1)
            if _is_2x2(kh, kw, sh, sw, ph, pw):
                # two passes per row of windows, each of which LLVM vectorizes: the windows'
                # codes (selects), then both rows written in order, each element once
                # (3.8 -> 1.6 ms on one thread for LeNet's (256, 6, 28, 28), against one pass
                # writing the four elements of each window in turn)
                for i in range(oh):
                    r0, r1 = plane[2 * i], plane[2 * i + 1]
                    for j in range(ow):
                        v0, v1, v2, v3 = r0[2 * j], r0[2 * j + 1], r1[2 * j], r1[2 * j + 1]
                        m = _nanmax2(_nanmax2(_nanmax2(v0, v1), v2), v3)
                        # the first element equal to the maximum (the first NaN if it is)
                        e0 = (v0 == m) | (v0 != v0)
                        e1 = (v1 == m) | (v1 != v1)
                        e2 = (v2 == m) | (v2 != v2)
                        code[j] = 0 if e0 else (1 if e1 else (2 if e2 else 3))
                    gi, d0, d1 = g[i], dst[2 * i], dst[2 * i + 1]
                    for t in range(2 * ow):
                        k, v = code[t >> 1], gi[t >> 1]
                        d0[t] = v if k == (t & 1) else 0.0
                        d1[t] = v if k == (t & 1) + 2 else 0.0
                    for t in range(2 * ow, dst.shape[1]):  # an odd width's last column
                        d0[t] = 0.0
                        d1[t] = 0.0
                for t in range(2 * oh * dst.shape[1], flat.size):  # an odd height's last row
                    flat[t] = 0.0
                continue
            flat[:] = 0.0
            for i in range(oh):
                for j in range(ow):
                    _, y, xx = _argmax(plane, i, j, kh, kw, sh, sw, ph, pw)
                    if y >= 0:
                        dst[y, xx] += g[i, j]


def _pool_gather(gx, x, b0, b1, kh, kw, sh, sw, ph, pw, out):
    _, c, oh, ow = out.shape
    for b in range(b0, b1):
        for ch in range(c):
            plane, src, dst = x[b, ch], gx[b, ch], out[b, ch]
            for i in range(oh):
                for j in range(ow):
                    _, y, xx = _argmax(plane, i, j, kh, kw, sh, sw, ph, pw)
                    dst[i, j] = src[y, xx] if y >= 0 else 0.0


_JIT = None


def _jit():
    """The loops above compiled by Numba, on first use (importing Numba costs 0.5 s)."""
    global _JIT, _argmax, _valid, _pad_image, _nanmax2, _is_2x2
    if _JIT is None:
        import numba
        jit = numba.njit(cache=True, nogil=True, boundscheck=False)
        # the loops call these: bound to their compiled forms before the loops compile
        inline = numba.njit(cache=True, nogil=True, inline="always")
        _argmax, _valid = inline(_argmax), inline(_valid)
        _pad_image, _nanmax2, _is_2x2 = inline(_pad_image), inline(_nanmax2), inline(_is_2x2)
        # the direct weight gradient's dot products vectorize only when LLVM may reorder
        # their sums (the order is still fixed by the compiled code: the same every call)
        dots = numba.njit(cache=True, nogil=True, boundscheck=False,
                          fastmath={"reassoc", "contract"})
        _JIT = SimpleNamespace(im2col=jit(_im2col), col2im=jit(_col2im),
                               conv_direct=jit(_conv_direct),
                               direct_weight_sums=dots(_direct_weight_sums),
                               im2col_wide=jit(_im2col_wide), gy_wide=jit(_gy_wide),
                               col2im_wide=jit(_col2im_wide),
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


def _scratch_of(nb, dtype, **shapes):
    """state() for _over_batch: the calling thread's scratch arrays, one per name, each of
    nb images of the given per-image shape (or of exactly that shape, for names ending in
    '_'), looked up once per thread and call rather than once per chunk."""
    def state():
        return SimpleNamespace(**{
            name: _buffer(f"conv_{name}", shape if name.endswith("_") else (nb,) + shape,
                          dtype) for name, shape in shapes.items()})
    return state


def _wide(x_shape, w_shape, stride, dilation, padding):
    """(Wp, scratch shape of a padded image) when the wide layout applies, else None."""
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1):
        return None
    _, c, h, w = x_shape
    hp, wp = h + 2 * padding[0], w + 2 * padding[1]
    return wp, (c, (hp + 1) * wp)


# --- convolution ---------------------------------------------------------------------------
def conv2d(x, w, out, stride, padding, dilation, groups):
    """conv2d into out: per chunk of images, im2col, then W (O, K) @ cols_b (K, pixels)."""
    if groups != 1 or not _fast(x, w, out):
        np.copyto(out, _reference("_conv2d")(x, w, stride, padding, dilation, groups))
        return
    n, o, oh, ow = out.shape
    x = np.ascontiguousarray(x)
    wm = w.reshape(o, -1)
    k, kh, kw = wm.shape[1], w.shape[2], w.shape[3]
    jit, wide = _jit(), _wide(x.shape, w.shape, stride, dilation, padding)
    if wide is None:
        geometry, p = _geometry(w.shape, stride, padding, dilation), oh * ow
        out3 = out.reshape(n, o, p)
        nb = _images_per_chunk(n, max(k, o) * p * x.itemsize)
        state = _scratch_of(nb, x.dtype, cols=(k, p))

        def work(b0, b1, s):
            cols = s.cols[:b1 - b0]
            jit.im2col(x, b0, b1, *geometry, cols)
            np.matmul(wm, cols, out=out3[b0:b1])
    elif o * k <= DIRECT_WEIGHTS:
        wp, pad_shape = wide
        p = oh * wp
        nb = _images_per_chunk(n, o * p * x.itemsize)
        state = _scratch_of(nb, x.dtype, res_=(o, p), xp_=pad_shape)

        def work(b0, b1, s):
            jit.conv_direct(x, wm, b0, b1, kh, kw, padding[0], padding[1], s.xp_, s.res_, out)
    else:
        wp, pad_shape = wide
        p = oh * wp
        nb = _images_per_chunk(n, max(k, o) * p * x.itemsize)
        state = _scratch_of(nb, x.dtype, wcols=(k, p), res=(o, p), xp_=pad_shape)

        def work(b0, b1, s):
            cols, res = s.wcols[:b1 - b0], s.res[:b1 - b0]
            jit.im2col_wide(x, b0, b1, kh, kw, padding[0], padding[1], False, s.xp_, cols)
            np.matmul(wm, cols, out=res)
            np.copyto(out[b0:b1], res.reshape(b1 - b0, o, oh, wp)[..., :ow])
    _over_batch(n, nb, work, state)


def conv2d_input_grad(gy, w, *like, out, stride, padding, dilation, groups):
    """The transposed convolution into out: per chunk, W^T @ gy_b per image, then col2im."""
    if groups != 1 or not _fast(gy, w, out):
        np.copyto(out, _reference("_conv2d_input_grad")(gy, w, out.shape, stride, padding,
                                                        dilation, groups))
        return
    n, o, oh, ow = gy.shape
    k, kh, kw = w[0].size, w.shape[2], w.shape[3]
    wt = _buffer("conv_wt", (k, o), w.dtype)
    np.copyto(wt, w.reshape(o, k).T)  # W^T once, so each product reads both operands as is
    gy = np.ascontiguousarray(gy)
    jit = _jit()
    # garbage columns are 0 in gy's wide rows; an Inf or NaN weight would make them NaN
    wide = _wide(out.shape, w.shape, stride, dilation, padding)
    if wide is not None and np.isfinite(wt).all():
        wp, pad_shape = wide
        p = oh * wp
        nb = _images_per_chunk(n, max(k, o) * p * gy.itemsize)
        state = _scratch_of(nb, gy.dtype, gyw=(o, p), wcols=(k, p), xp_=pad_shape)

        def work(b0, b1, s):
            g, dcols = s.gyw[:b1 - b0], s.wcols[:b1 - b0]
            jit.gy_wide(gy, b0, b1, wp, False, g)
            np.matmul(wt, g, out=dcols)
            jit.col2im_wide(dcols, b0, b1, kh, kw, padding[0], padding[1], s.xp_, out)
    else:
        geometry, p = _geometry(w.shape, stride, padding, dilation), oh * ow
        gy3 = gy.reshape(n, o, p)
        nb = _images_per_chunk(n, max(k, o) * p * gy.itemsize)
        state = _scratch_of(nb, gy.dtype, cols=(k, p))

        def work(b0, b1, s):
            dcols = s.cols[:b1 - b0]
            np.matmul(wt, gy3[b0:b1], out=dcols)
            jit.col2im(dcols, b0, b1, *geometry, out)
    _over_batch(n, nb, work, state)


def conv2d_weight_grad(x, gy, *like, out, stride, padding, dilation, groups):
    """sum_b cols_b (K, pixels) @ gy_b^T (pixels, O), the transpose of out: per chunk,
    im2col and a batched GEMM summed into that chunk's own slot; the slots are added in
    chunk order at the end, so the result does not depend on which thread took which
    chunk (bit-for-bit reproducible, as the README promises)."""
    if groups != 1 or not _fast(x, gy, out):
        np.copyto(out, _reference("_conv2d_weight_grad")(x, gy, out.shape, stride, padding,
                                                         dilation, groups))
        return
    x, gy = np.ascontiguousarray(x), np.ascontiguousarray(gy)
    wide = _wide(x.shape, out.shape, stride, dilation, padding)
    if wide is not None and out[0].size <= DIRECT_GRAD_K:
        _weight_grad_direct(x, gy, out, padding, wide)
        if np.isfinite(out).all():
            return
        # garbage columns read image values (times a zero gradient): redo with them zeroed
    _weight_grad(x, gy, out, stride, padding, dilation, wide, False)
    if wide is not None and not np.isfinite(out).all():
        # garbage columns hold image values, times a zero gradient: 0, unless Inf or NaN
        _weight_grad(x, gy, out, stride, padding, dilation, wide, True)


def _weight_grad_direct(x, gy, out, padding, wide):
    """The weight gradient without im2col (see DIRECT_GRAD_K): each chunk sums its images
    into its own float64 slot, the slots added in chunk order (reproducible, as below)."""
    n, o, oh, _ = gy.shape
    k, kh, kw = out[0].size, out.shape[2], out.shape[3]
    jit = _jit()
    wp, pad_shape = wide
    nb = _images_per_chunk(n, o * oh * wp * x.itemsize)
    chunks = -(-n // nb)
    sums = _buffer("conv_wgrad_direct", (chunks, o, k), np.float64)
    sums[:] = 0.0
    scratch = _scratch_of(nb, x.dtype, gyw_=(o, oh * wp), xp_=pad_shape)

    def work(b0, b1, s):
        jit.direct_weight_sums(x, gy, b0, b1, kh, kw, padding[0], padding[1], s.xp_,
                               s.gyw_, x.dtype.type(0), sums[b0 // nb])

    _over_batch(n, nb, work, scratch)
    total = sums[0] if chunks else np.zeros((o, k))
    for c in range(1, chunks):
        total += sums[c]
    np.copyto(out.reshape(o, k), total, casting="same_kind")


def _weight_grad(x, gy, out, stride, padding, dilation, wide, zero_garbage):
    n, o, oh, ow = gy.shape
    k, kh, kw = out[0].size, out.shape[2], out.shape[3]
    jit = _jit()
    wp, pad_shape = wide if wide is not None else (ow, (1, 1))
    p = oh * wp
    nb = _images_per_chunk(n, max(k, o) * p * x.itemsize)
    chunks = -(-n // nb)
    # the calling thread's: one (K, O) sum per chunk
    sums = _buffer("conv_wgrad_sums", (chunks, k, o), x.dtype)
    if wide is not None:
        # the chunk's columns image beside image, (K, images x pixels): one GEMM per chunk
        # over all its pixels, where a product per image ((150, 140) @ (140, 16) at LeNet's
        # second layer) costs a BLAS call each
        scratch = _scratch_of(nb, x.dtype, gyt=(p, o), xp_=pad_shape, side_=(k, nb, p))

        def work(b0, b1, s):
            m = b1 - b0
            gt = s.gyt[:m]
            jit.im2col_wide(x, b0, b1, kh, kw, padding[0], padding[1], zero_garbage, s.xp_,
                            s.side_, True)
            jit.gy_wide(gy, b0, b1, wp, True, gt)
            np.matmul(s.side_[:, :m].reshape(k, m * p), gt.reshape(m * p, o),
                      out=sums[b0 // nb])
    else:
        geometry = _geometry(out.shape, stride, padding, dilation)
        scratch = _scratch_of(nb, x.dtype, wcols=(k, p), gyt=(p, o), dw=(k, o))

        def work(b0, b1, s):
            cols, gt, per_image = s.wcols[:b1 - b0], s.gyt[:b1 - b0], s.dw[:b1 - b0]
            jit.im2col(x, b0, b1, *geometry, cols)
            jit.gy_wide(gy, b0, b1, wp, True, gt)
            np.matmul(cols, gt, out=per_image)
            np.sum(per_image, axis=0, out=sums[b0 // nb])

    _over_batch(n, nb, work, scratch)
    total = out.reshape(o, k).T
    if chunks == 0:
        total[:] = 0.0
        return
    np.copyto(total, sums[0])
    for c in range(1, chunks):
        total += sums[c]


# --- max pooling ---------------------------------------------------------------------------
def _pool_args(kernel, stride, padding):
    return (kernel[0], kernel[1], stride[0], stride[1], padding[0], padding[1])


def _images(a) -> int:
    """Images per chunk of a pooling kernel over a."""
    return _images_per_chunk(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)) * a.itemsize)


def max_pool2d(x, out, kernel, stride, padding):
    """Max over each -inf padded window, one Numba pass."""
    if not _fast(x, out):
        np.copyto(out, _reference("_max_pool2d")(x, kernel, stride, padding))
        return
    x, args, fwd = np.ascontiguousarray(x), _pool_args(kernel, stride, padding), _jit().pool_fwd
    _over_batch(x.shape[0], _images(x), lambda b0, b1, _: fwd(x, b0, b1, *args, out))


def max_pool2d_grad(gy, x, out, kernel, stride, padding):
    """Each output's gradient added at its window's first maximum, found again from x
    (recomputing the argmax reads x once; storing it would cost a write and a read)."""
    if not _fast(gy, x, out):
        np.copyto(out, _reference("_max_pool2d_grad")(gy, x, kernel, stride, padding))
        return
    gy, x = np.ascontiguousarray(gy), np.ascontiguousarray(x)
    args, bwd = _pool_args(kernel, stride, padding), _jit().pool_bwd
    _over_batch(x.shape[0], _images(x), lambda b0, b1, _: bwd(gy, x, b0, b1, *args, out))


def max_pool2d_gather(gx, x, out, kernel, stride, padding):
    """gx read at each window's first maximum of x."""
    if not _fast(gx, x, out):
        np.copyto(out, _reference("_max_pool2d_gather")(gx, x, kernel, stride, padding))
        return
    gx, x = np.ascontiguousarray(gx), np.ascontiguousarray(x)
    args, gather = _pool_args(kernel, stride, padding), _jit().pool_gather
    _over_batch(x.shape[0], _images(x),
                lambda b0, b1, _: gather(gx, x, b0, b1, *args, out))


INTO = {
    "conv2d": conv2d, "conv2d_input_grad": conv2d_input_grad,
    "conv2d_weight_grad": conv2d_weight_grad, "max_pool2d": max_pool2d,
    "max_pool2d_grad": max_pool2d_grad, "max_pool2d_gather": max_pool2d_gather,
}
