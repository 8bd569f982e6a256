"""Reductions over any set of axes as Numba CUDA kernels (backend stage): sum, mean, max,
min and logsumexp, and argmax along one axis.

The launcher views the input, without copying, as five dimensions (K0, R0, K1, R1, K2):
consecutive axes that are all kept (or all reduced) and laid out one inside the other merge
into one, so any pattern with at most two runs of reduced axes between kept ones fits (NCHW
over (0, 2, 3) is (1, N, C, H*W, 1)). Other patterns (three or more separate reduced runs,
or strides that do not merge) are first copied contiguous with the reduced axes last. The
output (C-contiguous) is viewed as (K0, K1, K2). `lanes` threads share each output: as many
as the reduced length needs when the reduced axes are the innermost, one thread per output
(coalesced across outputs) when a kept axis is. Sums and means accumulate in float64 (int64
for integers); max, min and argmax propagate NaN as NumPy does; argmax returns the first
index of the maximum (the first NaN if any)."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int64

from . import _cuda
from ._cuda import FLOATS, INTS, MAX_THREADS

NEG, POS, NAN = -math.inf, math.inf, math.nan
SUM, MEAN, MAX, MIN, LSE = range(5)
OPS = {"sum": SUM, "mean": MEAN, "max": MAX, "min": MIN, "logsumexp": LSE}
I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def _make_reduce(op: int, ACC, ident):
    """Reduce x (K0, R0, K1, R1, K2) over R0 and R1 into out (K0, K1, K2)."""
    def reduce5(x, out, lanes):
        sh_a = cuda.shared.array(MAX_THREADS, ACC)
        sh_s = cuda.shared.array(MAX_THREADS, float64)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        first = tid - lane
        per_block = cuda.blockDim.x // lanes
        k0, r0, k1, r1, k2 = x.shape
        n_out = k0 * k1 * k2
        n_red = r0 * r1
        for base in range(cuda.blockIdx.x * per_block, n_out, cuda.gridDim.x * per_block):
            r = base + tid // lanes
            a = r // (k1 * k2)
            c = (r // k2) % k1
            e = r % k2
            acc = ACC(ident)
            s = 0.0
            if r < n_out:
                for t in range(lane, n_red, lanes):
                    v = x[a, t // r1, c, t % r1, e]
                    if op == SUM or op == MEAN:
                        acc += v
                    elif op == MAX:
                        if v > acc or v != v:
                            acc = v
                    elif op == MIN:
                        if v < acc or v != v:
                            acc = v
                    else:
                        if v > acc:
                            s = s * math.exp(acc - v) + 1.0
                            acc = v
                        elif v != v:
                            acc = v
                        elif acc > NEG:
                            s += math.exp(v - acc)
            sh_a[tid] = acc
            sh_s[tid] = s
            cuda.syncthreads()
            step = lanes // 2
            while step > 0:
                if lane < step:
                    va, vb = sh_a[tid], sh_a[tid + step]
                    if op == SUM or op == MEAN:
                        sh_a[tid] = va + vb
                    elif op == MAX:
                        if vb > va or vb != vb:
                            sh_a[tid] = vb
                    elif op == MIN:
                        if vb < va or vb != vb:
                            sh_a[tid] = vb
                    else:
                        if va != va or vb != vb:
                            sh_a[tid] = NAN
                        elif vb > va:
                            sh_s[tid] = sh_s[tid + step] + sh_s[tid] * math.exp(va - vb)
                            sh_a[tid] = vb
                        elif vb > NEG:
                            sh_s[tid] += sh_s[tid + step] * math.exp(vb - va)
                cuda.syncthreads()
                step //= 2
            if r < n_out and lane == 0:
                res = sh_a[first]
                if op == MEAN:
                    out[a, c, e] = res / n_red
                elif op == LSE:
                    # as the reference: log(sum(exp(x))) when the maximum is not finite
                    if res > NEG and res < POS:
                        out[a, c, e] = math.log(sh_s[first]) + res
                    else:
                        out[a, c, e] = res
                else:
                    out[a, c, e] = res
            cuda.syncthreads()
    return reduce5


def _make_argmax(ACC):
    """Index of the first maximum of x (K0, R0, K1, R1, K2) along its one reduced axis (R0
    or R1, the other 1) into out (K0, K1, K2); a NaN beats everything, as in np.argmax."""
    def argmax5(x, out, lanes):
        sh_v = cuda.shared.array(MAX_THREADS, ACC)
        sh_i = cuda.shared.array(MAX_THREADS, int64)
        tid = cuda.threadIdx.x
        lane = tid % lanes
        first = tid - lane
        per_block = cuda.blockDim.x // lanes
        k0, r0, k1, r1, k2 = x.shape
        n_out = k0 * k1 * k2
        n_red = r0 * r1
        for base in range(cuda.blockIdx.x * per_block, n_out, cuda.gridDim.x * per_block):
            r = base + tid // lanes
            a = r // (k1 * k2)
            c = (r // k2) % k1
            e = r % k2
            best = ACC(0)
            at = int64(-1)
            if r < n_out:
                for t in range(lane, n_red, lanes):
                    v = x[a, t // r1, c, t % r1, e]
                    if at < 0 or (best == best and (v > best or v != v)):
                        best = v
                        at = t
            sh_v[tid] = best
            sh_i[tid] = at
            cuda.syncthreads()
            step = lanes // 2
            while step > 0:
                if lane < step:
                    ia, ib = sh_i[tid], sh_i[tid + step]
                    va, vb = sh_v[tid], sh_v[tid + step]
                    take = False
                    if ib >= 0:
                        if ia < 0:
                            take = True
                        elif vb != vb:
                            take = va == va or ib < ia
                        elif va == va:
                            take = vb > va or (vb == va and ib < ia)
                    if take:
                        sh_v[tid] = vb
                        sh_i[tid] = ib
                cuda.syncthreads()
                step //= 2
            if r < n_out and lane == 0:
                out[a, c, e] = sh_i[first]
            cuda.syncthreads()
    return argmax5


_FUNCS: dict = {}  # (kernel, op, input dtype) -> plain Python function
for _dt in FLOATS:
    for _name, _op in OPS.items():
        _ident = {MAX: NEG, MIN: POS, LSE: NEG}.get(_op, 0.0)
        _FUNCS["reduce5", _name, _dt.name] = _make_reduce(_op, float64, _ident)
    _FUNCS["argmax5", "argmax", _dt.name] = _make_argmax(float64)
for _dt in INTS + (np.dtype(bool),):
    for _name, _ident in (("sum", 0), ("max", I64_MIN), ("min", I64_MAX)):
        _FUNCS["reduce5", _name, _dt.name] = _make_reduce(OPS[_name], int64, _ident)
    _FUNCS["argmax5", "argmax", _dt.name] = _make_argmax(int64)

_OUT = {("sum", "int32"): "int64", ("sum", "bool"): "int64"}


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    out = {}
    for (name, op, dt), fn in _FUNCS.items():
        ty = "boolean" if dt == "bool" else dt
        res = "int64" if name == "argmax5" else _OUT.get((op, dt), dt)
        out[f"{name}[{op},{dt}]"] = (fn, [f"void({ty}[:, :, :, :, :], {res}[:, :, ::1], int64)"])
    return out


# --- views -----------------------------------------------------------------------------------
def five_d(shape: tuple, strides: tuple, axes: tuple) -> tuple | None:
    """(shape, byte strides) of the (K0, R0, K1, R1, K2) view of an array over `axes`, or
    None when its axes do not fit that pattern without a copy."""
    groups: list = []  # [reduced?, size, stride] of merged runs, outermost first
    for d, (n, st) in enumerate(zip(shape, strides)):
        if n == 1:
            continue
        red = d in axes
        if groups and groups[-1][0] == red and groups[-1][2] == st * n:
            groups[-1][1] *= n
            groups[-1][2] = st
        else:
            groups.append([red, n, st])
    slots = [[1, 0] for _ in range(5)]
    filled = [False] * 5
    p = 0
    for red, n, st in groups:
        while p < 5 and (p % 2 != int(red) or filled[p]):
            p += 1
        if p == 5:
            return None
        slots[p], filled[p] = [n, st], True
    return tuple(s[0] for s in slots), tuple(s[1] for s in slots)


def _view(x, axes: tuple):
    """x as (K0, R0, K1, R1, K2): a view when the pattern fits, else a contiguous copy."""
    if x.ndim == 0:
        return x.reshape(1, 1, 1, 1, 1)
    fit = five_d(tuple(x.shape), tuple(x.strides), axes)
    if fit is None:
        xp = _cuda.xp_of(x)
        kept = tuple(d for d in range(x.ndim) if d not in axes)
        x = xp.ascontiguousarray(xp.transpose(x, kept + tuple(axes)))
        fit = five_d(tuple(x.shape), tuple(x.strides), tuple(range(len(kept), x.ndim)))
    return _cuda.restride(x, *fit)


def _out3(out, v5):
    return _cuda.writable_view(out, (v5.shape[0], v5.shape[2], v5.shape[4]))


def _lanes(v5) -> int | None:
    """One thread per output when a kept axis is innermost, so reads coalesce across
    outputs; otherwise as many lanes as the reduced length needs."""
    return 1 if v5.shape[4] > 1 or (v5.shape[3] == 1 and v5.shape[2] > 1) else None


def _launch(kernel, v5, out3, stream, launch) -> None:
    n_out = v5.shape[0] * v5.shape[2] * v5.shape[4]
    if n_out == 0:
        return
    blocks, threads, lanes = _cuda.group_grid(launch, n_out, v5.shape[1] * v5.shape[3],
                                              _lanes(v5))
    _cuda.run(kernel, blocks, threads, stream, v5, out3, lanes)


def _reduction(name: str):
    def launcher(x, *, out, axes, keepdims: bool = False, stream=None, launch=None) -> None:
        axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
        if ("reduce5", name, x.dtype.name) not in _FUNCS or x.size == 0:
            _cuda.reference_into(name, x, out=out, axes=axes, keepdims=keepdims)
            return
        v5 = _view(x, axes)
        _launch(_cuda.jit(_FUNCS["reduce5", name, x.dtype.name]), v5, _out3(out, v5), stream,
                launch)
    launcher.__name__ = name
    launcher.__doc__ = f"{name} of x over `axes` into `out` (NumPy semantics)."
    return launcher


def argmax(x, *, out, axis: int, stream=None, launch=None) -> None:
    """Index of the first maximum of x along `axis` into `out` (int64), as np.argmax."""
    if ("argmax5", "argmax", x.dtype.name) not in _FUNCS or x.size == 0 or x.ndim == 0:
        _cuda.reference_into("argmax", x, out=out, axis=axis)
        return
    v5 = _view(x, (int(axis) % x.ndim,))
    _launch(_cuda.jit(_FUNCS["argmax5", "argmax", x.dtype.name]), v5, _out3(out, v5), stream,
            launch)


KERNELS = {name: _reduction(name) for name in OPS}
KERNELS["argmax"] = argmax
