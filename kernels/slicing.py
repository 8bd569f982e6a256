"""concat, basic slicing and the slicing gradients as Numba CUDA kernels (backend stage),
with the semantics of graphc/ops/shape_ops.py: `concat` along one axis, `getitem` (a basic
index of ints, slices, None and Ellipsis; the plan runs it as a view, so its kernel copies
only where a slice is materialised), `getitem_grad` (zeros with the gradient at the index)
and `scatter_slices` (zeros with each gradient added at its index, in order, so overlapping
slices sum as the reference sums them).

Every one is a strided copy (or add) between a source and a destination view of the same
shape, up to 6-D (padded with leading unit axes), one thread per destination element:
concat launches once per operand into the operand's slab of the output, the gradients zero
the output and launch once per gradient into `out[index]`."""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import _cuda
from ._cuda import FLOATS
from .embedding import zero_kernel

RANK = 6
# dtypes the copy covers (concat of any of these; gradients are floats)
DTYPES = FLOATS + _cuda.INTS + (np.dtype(bool),)


def copy6_kernel(src, dst, off, s0, s1, s2, s3, s4, s5, add):
    """dst[off + i . s] = src[i] (add = 0) or += src[i] (add = 1): src a 6-D view, dst the
    whole (flat, C-contiguous) output, s the element strides of the destination view."""
    n0, n1, n2, n3, n4, n5 = src.shape
    for t in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        i5 = t % n5
        r = t // n5
        i4 = r % n4
        r //= n4
        i3 = r % n3
        r //= n3
        i2 = r % n2
        r //= n2
        i1 = r % n1
        i0 = r // n1
        d = off + i0 * s0 + i1 * s1 + i2 * s2 + i3 * s3 + i4 * s4 + i5 * s5
        if add:
            dst[d] += src[i0, i1, i2, i3, i4, i5]
        else:
            dst[d] = src[i0, i1, i2, i3, i4, i5]


_D6 = ", ".join([":"] * RANK)
_I8 = ", int64" * 8


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    sigs = [f"void({s}[{_D6}], {d}[::1]{_I8})"
            for s, d in (("float32", "float32"), ("float64", "float64"), ("int32", "int32"),
                         ("int64", "int64"), ("boolean", "boolean"), ("float32", "float64"))]
    return {"copy6[any]": (copy6_kernel, sigs)}


def _six(a):
    """a as a 6-D view (leading unit axes), no copy."""
    return a[(None,) * (RANK - a.ndim)]


def _address(a) -> int:
    face = getattr(a, "__cuda_array_interface__", None) or a.__array_interface__
    return int(face["data"][0])


def _copy(src, out, dst, add: bool, stream, launch) -> None:
    """dst (a view of the C-contiguous `out`) = or += src, broadcast to dst's shape. The
    kernel writes through `out` with dst's offset and strides (the simulator cannot pass
    a strided destination)."""
    if dst.size == 0:
        return
    xp = _cuda.xp_of(out)
    item = out.dtype.itemsize
    off = (_address(dst) - _address(out)) // item
    strides = [0] * (RANK - dst.ndim) + [st // item for st in dst.strides]
    src = _six(xp.broadcast_to(src, dst.shape))
    blocks, threads = _cuda.grid(launch, dst.size)
    _cuda.run(_cuda.jit(copy6_kernel), blocks, threads, stream, src,
              _cuda.writable_view(out, (out.size,)), off, *strides, int(add))


def _zero(out, stream, launch) -> None:
    blocks, threads = _cuda.grid(launch, out.size)
    _cuda.run(_cuda.jit(zero_kernel), blocks, threads, stream,
              _cuda.writable_view(out, (out.size,)))


def _at(out, index):
    """The writable view out[index] of a basic index encoded as getitem encodes it (a 0-d
    view, not a scalar copy, for an all-int index)."""
    from graphc.ops.shape_ops import _decode_index
    return out[_decode_index(index) + (Ellipsis,)]


def concat(*xs, out, axis, stream=None, launch=None) -> None:
    """The operands joined along `axis` into `out`: one strided copy per operand."""
    if out.ndim > RANK or out.dtype not in DTYPES or any(x.dtype != out.dtype for x in xs) \
            or not _cuda.c_contiguous(out):
        _cuda.reference_into("concat", *xs, out=out, axis=axis)
        return
    ax = int(axis) % out.ndim
    start = 0
    for x in xs:
        n = x.shape[ax]
        _copy(x, out, out[(slice(None),) * ax + (slice(start, start + n),)], False, stream,
              launch)
        start += n


def getitem(x, *, out, index, stream=None, launch=None) -> None:
    """x[index] copied into `out`."""
    if out.ndim > RANK or x.ndim > RANK or out.dtype not in DTYPES or x.dtype != out.dtype \
            or not _cuda.c_contiguous(out):
        _cuda.reference_into("getitem", x, out=out, index=index)
        return
    from graphc.ops.shape_ops import _decode_index
    _copy(x[_decode_index(index) + (Ellipsis,)], out, out, False, stream, launch)


def getitem_grad(g, *, out, index, stream=None, launch=None) -> None:
    """Zeros of out's shape with g at `index`."""
    if out.ndim > RANK or out.dtype not in FLOATS or g.dtype != out.dtype \
            or not _cuda.c_contiguous(out):
        _cuda.reference_into("getitem_grad", g, tuple(out.shape), out=out, index=index)
        return
    if out.size == 0:
        return
    _zero(out, stream, launch)
    _copy(g, out, _at(out, index), False, stream, launch)


def scatter_slices(*gs, out, indices, stream=None, launch=None) -> None:
    """Zeros of out's shape with each gradient added at its index, in order."""
    if out.ndim > RANK or out.dtype not in FLOATS or any(g.dtype not in FLOATS for g in gs) \
            or not _cuda.c_contiguous(out):
        _cuda.reference_into("scatter_slices", tuple(out.shape), *gs, out=out,
                             indices=indices)
        return
    if out.size == 0:
        return
    _zero(out, stream, launch)
    for g, index in zip(gs, indices):
        _copy(g, out, _at(out, index), True, stream, launch)


KERNELS = {"concat": concat, "getitem": getitem, "getitem_grad": getitem_grad,
           "scatter_slices": scatter_slices}
