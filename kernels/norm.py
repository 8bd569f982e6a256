"""layer_norm and batch_norm forward as Numba CUDA row kernels (backend stage), with the
numerics of graphc/ops/norm.py: the mean accumulated in float64 and rounded to the input's
precision, the centred values in the input's precision, the biased variance of their
squares accumulated in float64, rstd = 1 / sqrt(var + eps) rounded to the input's precision,
then the scale and shift in the input's precision.

The input is viewed as reduce.py does, (K0, R0, K1, R1, K2) without a copy: one "row" per
normalised group (a leading index for layer_norm, a channel for batch_norm, whose only kept
axis is the channel axis, so the row index is the channel), `lanes` threads per row (up to a
block: one block per row for long rows), two passes over the row for the statistics (sum,
then sum of squared deviations, each merged across lanes in shared memory) and one to
write. The output (C-contiguous) is viewed with the same five dimensions, whose C order is
the input's. Evaluation-mode batch_norm reads the running statistics instead (no reduction).

The gradients of both ops are graph ops (graphc/ops/norm.py writes them with mean, sub and
mul), so they run as fused kernels and reductions, not here."""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from . import _cuda
from .reduce import _lanes, _view
from ._cuda import FLOATS, MAX_THREADS

LAYER, BATCH, EVAL = range(3)  # layer_norm, training batch_norm, evaluation batch_norm


def _make_norm(T, mode: int, has_w: bool, has_b: bool):
    """Normalise x (K0, R0, K1, R1, K2) over R0 and R1 into out (same shape); w and b are
    indexed by the element's position in the row (layer_norm) or by the row (batch_norm);
    rm and rv are the running statistics (evaluation batch_norm; otherwise ignored)."""
    def norm5(x, out, w, b, rm, rv, eps, lanes):
        sh = cuda.shared.array(MAX_THREADS, float64)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        first = tid - lane
        per_block = cuda.blockDim.x // lanes
        k0, r0, k1, r1, k2 = x.shape
        n_rows = k0 * k1 * k2
        n_red = r0 * r1
        for base in range(cuda.blockIdx.x * per_block, n_rows, cuda.gridDim.x * per_block):
            r = base + tid // lanes
            a = r // (k1 * k2)
            c = (r // k2) % k1
            e = r % k2
            if mode == EVAL:
                mu = T(0)
                rstd = T(0)
                if r < n_rows:
                    mu = rm[r]
                    rstd = T(1.0 / math.sqrt(float64(rv[r]) + eps))
            else:
                s = 0.0
                if r < n_rows:
                    for t in range(lane, n_red, lanes):
                        s += float64(x[a, t // r1, c, t % r1, e])
                sh[tid] = s
                cuda.syncthreads()
                step = lanes // 2
                while step > 0:
                    if lane < step:
                        sh[tid] += sh[tid + step]
                    cuda.syncthreads()
                    step //= 2
                mu = T(sh[first] / n_red)
                cuda.syncthreads()
                s = 0.0
                if r < n_rows:
                    for t in range(lane, n_red, lanes):
                        d = x[a, t // r1, c, t % r1, e] - mu
                        s += float64(d * d)
                sh[tid] = s
                cuda.syncthreads()
                step = lanes // 2
                while step > 0:
                    if lane < step:
                        sh[tid] += sh[tid + step]
                    cuda.syncthreads()
                    step //= 2
                rstd = T(1.0 / math.sqrt(sh[first] / n_red + eps))
                cuda.syncthreads()
            if r < n_rows:
                for t in range(lane, n_red, lanes):
                    y = (x[a, t // r1, c, t % r1, e] - mu) * rstd
                    if has_w:
                        y = y * (w[t] if mode == LAYER else w[r])
                    if has_b:
                        y = y + (b[t] if mode == LAYER else b[r])
                    out[a, t // r1, c, t % r1, e] = y
    return norm5


_NUMBA = {"float32": float32, "float64": float64}
_MODES = {"layer_norm": LAYER, "batch_norm": BATCH, "batch_norm_eval": EVAL}
_FUNCS = {(name, dt, w, b): _make_norm(T, mode, w, b)
          for name, mode in _MODES.items() for dt, T in _NUMBA.items()
          for w in (False, True) for b in (False, True)}


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    out = {}
    for (name, dt, w, b), fn in _FUNCS.items():
        v = f"{dt}[:]"
        sig = f"void({dt}[:, :, :, :, :], {dt}[:, :, :, :, ::1], {v}, {v}, {v}, {v}, " \
              f"float64, int64)"
        out[f"norm5[{name},{dt},w={int(w)},b={int(b)}]"] = (fn, [sig])
    return out


def _normalize(name: str, x, named: dict, axes: tuple, out, eps: float, stream, launch):
    """Launch the norm5 kernel of `name` over x's five-dimensional view into out."""
    v5 = _view(x, axes)
    out5 = _cuda.writable_view(out, v5.shape)
    n_rows = v5.shape[0] * v5.shape[2] * v5.shape[4]
    blocks, threads, lanes = _cuda.group_grid(launch, n_rows, v5.shape[1] * v5.shape[3],
                                              _lanes(v5))
    # the vectors as 1-D (a normalized_shape weight in C order); an absent one is never
    # read, and a 1-D view of x stands in for it
    stand_in = v5[0, 0, 0, :, 0]
    vectors = [stand_in if named.get(k) is None else named[k].reshape(-1)
               for k in ("weight", "bias", "running_mean", "running_var")]
    fn = _FUNCS[name, x.dtype.name, "weight" in named, "bias" in named]
    _cuda.run(_cuda.jit(fn), blocks, threads, stream, v5, out5, *vectors, float(eps), lanes)


def _covered(*arrays) -> bool:
    return all(a.dtype in FLOATS for a in arrays) and len({a.dtype for a in arrays}) == 1


def layer_norm(*arrays, out, normalized_shape, eps, has_weight, has_bias, stream=None,
               launch=None) -> None:
    """layer_norm of x over its trailing `normalized_shape` axes into `out`; arrays are x,
    then the weight and the bias where the node has them."""
    roles = ["x"] + ["weight"] * bool(has_weight) + ["bias"] * bool(has_bias)
    named = dict(zip(roles, arrays))
    x = named["x"]
    if not _covered(*arrays, out) or x.ndim == 0:
        _cuda.reference_into("layer_norm", *arrays, out=out, normalized_shape=normalized_shape,
                             eps=eps, has_weight=has_weight, has_bias=has_bias)
        return
    if out.size == 0:
        return
    axes = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    _normalize("layer_norm", x, named, axes, out, eps, stream, launch)


def batch_norm(*arrays, out, training, eps, has_weight, has_bias, stream=None,
               launch=None) -> None:
    """batch_norm of x (N, C, ...) per channel into `out`: by the batch statistics when
    training, else by the running mean and variance; arrays are x, (running_mean,
    running_var when not training), then the weight and the bias where the node has them."""
    roles = ["x"] + ["running_mean", "running_var"] * (not training) + \
        ["weight"] * bool(has_weight) + ["bias"] * bool(has_bias)
    named = dict(zip(roles, arrays))
    x = named["x"]
    if not _covered(*arrays, out) or x.ndim < 2:
        _cuda.reference_into("batch_norm", *arrays, out=out, training=training, eps=eps,
                             has_weight=has_weight, has_bias=has_bias)
        return
    if out.size == 0:
        return
    axes = (0,) + tuple(range(2, x.ndim))
    _normalize("batch_norm" if training else "batch_norm_eval", x, named, axes, out, eps,
               stream, launch)


KERNELS = {"layer_norm": layer_norm, "batch_norm": batch_norm}
