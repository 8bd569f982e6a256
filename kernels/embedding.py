"""Embedding lookup and its gradient as Numba CUDA kernels (backend stage).

`embedding` gathers rows, one thread per output element. `embedding_grad` zeroes its output
and scatter-adds each gradient row into the row of its index with atomic adds: repeated
indices are summed in whatever order the atomics land, so float sums (float32 above all)
can differ from the sequential np.add.at of the reference in the last bits from run to run.
An index out of range (indices are checked where they are fed) gives a NaN row in
`embedding` and is skipped by `embedding_grad`."""
from __future__ import annotations

import math

from numba import cuda

from . import _cuda
from ._cuda import FLOATS

NAN = math.nan


def embedding_kernel(w, ids, out):
    """out[k, :] = w[ids[k], :] over (n, dim)."""
    n_emb, dim = w.shape
    for t in range(cuda.grid(1), out.shape[0] * dim, cuda.gridsize(1)):
        k = t // dim
        j = t - k * dim
        row = ids[k]
        if row >= 0 and row < n_emb:
            out[k, j] = w[row, j]
        else:
            out[k, j] = NAN


def zero_kernel(out):
    """out[:] = 0 over a flat array."""
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[t] = 0


def embedding_grad_kernel(g, ids, out):
    """out[ids[k], :] += g[k, :] with atomics (out zeroed first)."""
    n_emb, dim = out.shape
    for t in range(cuda.grid(1), g.shape[0] * dim, cuda.gridsize(1)):
        k = t // dim
        j = t - k * dim
        row = ids[k]
        if row >= 0 and row < n_emb:
            cuda.atomic.add(out, (row, j), g[k, j])


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    fl, it = ("float32", "float64"), ("int64", "int32")
    return {
        "embedding": (embedding_kernel, [f"void({t}[:, :], {i}[:], {t}[:, ::1])"
                                         for t in fl for i in it]),
        "zero": (zero_kernel, [f"void({t}[::1])" for t in fl]),
        "embedding_grad": (embedding_grad_kernel, [f"void({t}[:, :], {i}[:], {t}[:, ::1])"
                                                   for t in fl for i in it]),
    }


def _rows(a, dim: int):
    """a (..., dim) as (n, dim) without a copy where it is C-contiguous."""
    n = a.size // dim if dim else 0
    return a.reshape(n, dim)


def embedding(w, ids, *, out, stream=None, launch=None) -> None:
    """Rows of `w` (num_embeddings, dim) picked by `ids` into `out` (ids.shape + (dim,))."""
    if w.dtype not in FLOATS or ids.dtype.kind not in "iu" or not _cuda.c_contiguous(ids):
        _cuda.reference_into("embedding", w, ids, out=out)
        return
    if out.size == 0:
        return
    dim = w.shape[1]
    blocks, threads = _cuda.grid(launch, out.size)
    _cuda.run(_cuda.jit(embedding_kernel), blocks, threads, stream, w, ids.reshape(-1),
              _cuda.writable_view(out, (ids.size, dim)))


def embedding_grad(g, ids, *, out, stream=None, launch=None) -> None:
    """Scatter-add of `g` (ids.shape + (dim,)) into `out` (num_embeddings, dim) at `ids`."""
    if out.dtype not in FLOATS or g.dtype != out.dtype or ids.dtype.kind not in "iu" \
            or not (_cuda.c_contiguous(ids) and _cuda.c_contiguous(g)):
        _cuda.reference_into("embedding_grad", g, ids, tuple(out.shape), out=out)
        return
    blocks, threads = _cuda.grid(launch, out.size)
    _cuda.run(_cuda.jit(zero_kernel), blocks, threads, stream,
              _cuda.writable_view(out, (out.size,)))
    if g.size == 0:
        return
    blocks, threads = _cuda.grid(launch, g.size)
    _cuda.run(_cuda.jit(embedding_grad_kernel), blocks, threads, stream,
              _rows(g, out.shape[1]), ids.reshape(-1), out)


KERNELS = {"embedding": embedding, "embedding_grad": embedding_grad}
