"""The softmax family as Numba CUDA kernels (backend stage): softmax and log_softmax along any
axis, softmax cross-entropy forward, backward, and both in one pass over the logits.

Each row's statistics (its maximum and the sum of exponentials relative to it) come from one
read of the row: every lane keeps a running maximum and rescales its float64 sum when the
maximum grows (the online softmax), then the lanes of a row merge their pairs in shared
memory. The write pass reads the row again, just read by the same block, so from cache.
Exponentials are computed in the input's precision, as the NumPy references do; sums are
accumulated in float64. A row whose maximum is not finite (NaN, +inf, or a row of -inf)
comes out NaN, as in the references."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from . import _cuda
from ._cuda import FLOATS, MAX_THREADS

NEG, POS, NAN = -math.inf, math.inf, math.nan
LOSS, GRAD = 1, 2  # what a softmax cross-entropy kernel writes (bit flags)


def _make_rows(T, log: bool):
    """softmax (or log_softmax) over axis 1 of a 3-D (outer, n, inner) view; `lanes`
    threads per row, rows indexed (outer, inner)."""
    def softmax_rows(x, out, lanes):
        sh_m = cuda.shared.array(MAX_THREADS, float64)
        sh_s = cuda.shared.array(MAX_THREADS, float64)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        first = tid - lane
        per_block = cuda.blockDim.x // lanes
        n, inner = x.shape[1], x.shape[2]
        n_rows = x.shape[0] * inner
        for base in range(cuda.blockIdx.x * per_block, n_rows, cuda.gridDim.x * per_block):
            r = base + tid // lanes
            o = r // inner
            i = r - o * inner
            m = T(NEG)
            s = 0.0
            if r < n_rows:
                for j in range(lane, n, lanes):
                    v = x[o, j, i]
                    if v > m:
                        s = s * math.exp(m - v) + 1.0
                        m = v
                    elif v != v:
                        m = v
                    elif m > NEG:
                        s += math.exp(v - m)
            sh_m[tid] = m
            sh_s[tid] = s
            cuda.syncthreads()
            step = lanes // 2
            while step > 0:
                if lane < step:
                    ma, mb = sh_m[tid], sh_m[tid + step]
                    if ma != ma or mb != mb:
                        sh_m[tid] = NAN
                    elif mb > ma:
                        sh_s[tid] = sh_s[tid + step] + sh_s[tid] * math.exp(ma - mb)
                        sh_m[tid] = mb
                    elif mb > NEG:
                        sh_s[tid] += sh_s[tid + step] * math.exp(mb - ma)
                cuda.syncthreads()
                step //= 2
            mx = sh_m[first]
            total = sh_s[first]
            if r < n_rows:
                if mx > NEG and mx < POS:
                    mt = T(mx)
                    lse = math.log(total)
                    for j in range(lane, n, lanes):
                        if log:
                            out[o, j, i] = float64(x[o, j, i] - mt) - lse
                        else:
                            out[o, j, i] = float64(math.exp(x[o, j, i] - mt)) / total
                else:
                    for j in range(lane, n, lanes):
                        out[o, j, i] = NAN
            cuda.syncthreads()
    return softmax_rows


def _make_sce(T, mode: int):
    """Softmax cross-entropy over the rows of (N, C) logits: the per-row loss
    logsumexp(x) - x[label] (mode & LOSS) and g * (softmax(x) - one_hot(label))
    (mode & GRAD); g is read at g[row * gstep] (gstep 0 broadcasts one value)."""
    def sce_rows(x, labels, g, gstep, loss, grad, lanes):
        sh_m = cuda.shared.array(MAX_THREADS, float64)
        sh_s = cuda.shared.array(MAX_THREADS, float64)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        first = tid - lane
        per_block = cuda.blockDim.x // lanes
        n_rows, n = x.shape[0], x.shape[1]
        for base in range(cuda.blockIdx.x * per_block, n_rows, cuda.gridDim.x * per_block):
            r = base + tid // lanes
            m = T(NEG)
            s = 0.0
            if r < n_rows:
                for j in range(lane, n, lanes):
                    v = x[r, j]
                    if v > m:
                        s = s * math.exp(m - v) + 1.0
                        m = v
                    elif v != v:
                        m = v
                    elif m > NEG:
                        s += math.exp(v - m)
            sh_m[tid] = m
            sh_s[tid] = s
            cuda.syncthreads()
            step = lanes // 2
            while step > 0:
                if lane < step:
                    ma, mb = sh_m[tid], sh_m[tid + step]
                    if ma != ma or mb != mb:
                        sh_m[tid] = NAN
                    elif mb > ma:
                        sh_s[tid] = sh_s[tid + step] + sh_s[tid] * math.exp(ma - mb)
                        sh_m[tid] = mb
                    elif mb > NEG:
                        sh_s[tid] += sh_s[tid + step] * math.exp(mb - ma)
                cuda.syncthreads()
                step //= 2
            mx = sh_m[first]
            total = sh_s[first]
            if r < n_rows:
                lab = labels[r]
                # labels are range-checked where they are fed; a bad one gives a NaN row
                ok = mx > NEG and mx < POS and lab >= 0 and lab < n
                mt = T(mx)
                if mode & LOSS and lane == 0:
                    if ok:
                        loss[r] = math.log(total) - float64(x[r, lab] - mt)
                    else:
                        loss[r] = NAN
                if mode & GRAD:
                    gr = float64(g[r * gstep])
                    for j in range(lane, n, lanes):
                        if ok:
                            p = float64(math.exp(x[r, j] - mt)) / total
                            if j == lab:
                                p -= 1.0
                            grad[r, j] = p * gr
                        else:
                            grad[r, j] = NAN
            cuda.syncthreads()
    return sce_rows


_NUMBA = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}
_FUNCS: dict = {}  # (kernel, dtype name, variant) -> plain Python function
for _dt in FLOATS:
    _FUNCS["softmax_rows", _dt.name, False] = _make_rows(_NUMBA[_dt], False)
    _FUNCS["softmax_rows", _dt.name, True] = _make_rows(_NUMBA[_dt], True)
    for _mode in (LOSS, GRAD, LOSS | GRAD):
        _FUNCS["sce_rows", _dt.name, _mode] = _make_sce(_NUMBA[_dt], _mode)


def _kernel(name: str, dtype, variant):
    return _cuda.jit(_FUNCS[name, np.dtype(dtype).name, variant])


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    out = {}
    for (name, dt, variant), fn in _FUNCS.items():
        if name == "softmax_rows":
            sigs = [f"void({dt}[:, :, :], {dt}[:, :, :], int64)",
                    f"void({dt}[:, :, ::1], {dt}[:, :, ::1], int64)"]
        else:
            sigs = [f"void({dt}[:, :], {lt}[:], {dt}[:], int64, {dt}[:], {dt}[:, :], int64)"
                    for lt in ("int64", "int32")]
        out[f"{name}[{dt},{variant}]"] = (fn, sigs)
    return out


# --- launchers -------------------------------------------------------------------------------
def _three_d(a, axis: int) -> tuple:
    """(outer, n, inner) for a reduction along `axis` of a shape."""
    shape = tuple(a.shape)
    axis %= len(shape)
    outer = int(np.prod(shape[:axis], dtype=np.int64))
    inner = int(np.prod(shape[axis + 1:], dtype=np.int64))
    return outer, shape[axis], inner


def _softmax_family(log: bool):
    op = "log_softmax" if log else "softmax"

    def launcher(x, *, out, axis: int = -1, stream=None, launch=None) -> None:
        if x.dtype not in FLOATS or x.ndim == 0 or not _cuda.c_contiguous(x):
            _cuda.reference_into(op, x, out=out, axis=axis)
            return
        if x.size == 0:
            return
        outer, n, inner = _three_d(x, axis)
        # inner > 1: one thread per row, so neighbouring threads read neighbouring columns
        blocks, threads, lanes = _cuda.group_grid(launch, outer * inner, n,
                                                  1 if inner > 1 else None)
        _cuda.run(_kernel("softmax_rows", x.dtype, log), blocks, threads, stream,
                  x.reshape(outer, n, inner), _cuda.writable_view(out, (outer, n, inner)),
                  lanes)
    launcher.__name__ = op
    launcher.__doc__ = f"{op} of x along `axis` into `out` (any rank; C-contiguous x)."
    return launcher


softmax = _softmax_family(log=False)
log_softmax = _softmax_family(log=True)


def _sce_launch(mode: int, logits, labels, g, loss, grad, stream, launch) -> None:
    n, c = logits.shape
    if n == 0:
        return
    gstep = 1
    if g.ndim == 0 or (g.shape[0] == 1 and n != 1):
        g, gstep = g.reshape(1), 0
    blocks, threads, lanes = _cuda.group_grid(launch, n, c)
    _cuda.run(_kernel("sce_rows", logits.dtype, mode), blocks, threads, stream,
              logits, labels, g, gstep, loss, grad, lanes)


def _covered(logits, labels) -> bool:
    return logits.dtype in FLOATS and logits.ndim == 2 and labels.dtype.kind in "iu"


def softmax_cross_entropy(logits, labels, *, out, stream=None, launch=None) -> None:
    """Per-row loss logsumexp(logits) - logits[label] into `out` (N,) (reduction "none")."""
    if not _covered(logits, labels):
        _cuda.reference_into("softmax_cross_entropy", logits, labels, out=out)
        return
    _sce_launch(LOSS, logits, labels, out, out, logits, stream, launch)


def softmax_cross_entropy_backward(g, logits, labels, *, out, stream=None,
                                   launch=None) -> None:
    """g[:, None] * (softmax(logits) - one_hot(labels)) into `out` (N, C)."""
    if not _covered(logits, labels):
        _cuda.reference_into("softmax_cross_entropy_backward", g, logits, labels, out=out)
        return
    _sce_launch(GRAD, logits, labels, g, g, out, stream, launch)


def sce_with_backward(logits, labels, g, loss_out, grad_out, *, stream=None,
                      launch=None) -> None:
    """Loss and gradient of softmax cross-entropy in one pass over the logits (the pair
    softmax_cross_entropy -> softmax_cross_entropy_backward; the CPU's calling convention)."""
    if not _covered(logits, labels):
        _cuda.reference_into("softmax_cross_entropy", logits, labels, out=loss_out)
        _cuda.reference_into("softmax_cross_entropy_backward", g, logits, labels, out=grad_out)
        return
    _sce_launch(LOSS | GRAD, logits, labels, g, loss_out, grad_out, stream, launch)


KERNELS = {"softmax": softmax, "log_softmax": log_softmax,
           "softmax_cross_entropy": softmax_cross_entropy,
           "softmax_cross_entropy_backward": softmax_cross_entropy_backward}
PAIRS = {("softmax_cross_entropy", "softmax_cross_entropy_backward"): sce_with_backward}
