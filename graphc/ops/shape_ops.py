"""Ops that move or reshape data: reshape, transpose, broadcast, concat, slicing, and the
shape-matching ops gradients use (sum_to_like, broadcast_like, reshape_like, zeros_like)."""
from __future__ import annotations

import functools

import numpy as np

from .. import dtypes as _dt
from ..errors import GradientError, GraphError
from ..graph import Tensor
from .common import broadcast_shapes, lift
from .registry import apply, fail, register


# --- reshape -------------------------------------------------------------------------------
def _infer_reshape(shapes, dts, shape):
    src = shapes[0]
    if sum(1 for d in shape if d == -1) > 1:
        fail(f"at most one -1 in the target shape {shape}")
    if any(d < -1 for d in shape):
        fail(f"negative size in target shape {shape}")
    known_target = int(np.prod([d for d in shape if d != -1], dtype=np.int64))
    if None in src:
        return tuple(None if d == -1 else d for d in shape), dts[0]
    total = int(np.prod(src, dtype=np.int64))
    if -1 in shape:
        if known_target == 0 or total % known_target:
            fail(f"cannot reshape {total} elements into {shape}")
        return tuple(total // known_target if d == -1 else d for d in shape), dts[0]
    if total != known_target:
        fail(f"cannot reshape {total} elements into {shape}")
    return tuple(shape), dts[0]


register("reshape", _infer_reshape, lambda x, shape: np.reshape(x, shape),
         (lambda g, y, x: reshape_like(g, x),), noop_if_same_shape=True, view=True,
         value_preserving=True)


def reshape(x, shape) -> Tensor:
    """View x with a new shape; one entry may be -1."""
    x = lift(x)
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        return x
    return apply("reshape", (x,), shape=shape)


# --- transpose -----------------------------------------------------------------------------
def _infer_transpose(shapes, dts, axes):
    src = shapes[0]
    if sorted(axes) != list(range(len(src))):
        fail(f"axes {axes} are not a permutation of {len(src)} dimensions")
    return tuple(src[a] for a in axes), dts[0]


register("transpose", _infer_transpose, lambda x, axes: np.transpose(x, axes),
         (lambda g, y, x: transpose(g, tuple(int(i) for i in np.argsort(y.attrs["axes"]))),),
         view=True, value_preserving=True)


def transpose(x, axes=None) -> Tensor:
    """Permute dimensions; by default reverse them (x.T)."""
    x = lift(x)
    if axes is None:
        axes = tuple(reversed(range(x.ndim)))
    axes = tuple(int(a) % max(x.ndim, 1) for a in axes)
    if axes == tuple(range(x.ndim)):
        return x
    return apply("transpose", (x,), axes=axes)


# --- broadcasting --------------------------------------------------------------------------
def _infer_broadcast_to(shapes, dts, shape):
    out = broadcast_shapes(shapes[0], shape)
    # an unbound (None) input dimension may match any target size: bind checks it
    if len(shapes[0]) > len(shape) or any(
            o != t for o, t in zip(out, shape) if t is not None and o is not None):
        fail(f"cannot broadcast to {shape}")
    return tuple(shape), dts[0]


register("broadcast_to", _infer_broadcast_to, lambda x, shape: np.broadcast_to(x, shape),
         (lambda g, y, x: sum_to_like(g, x),), noop_if_same_shape=True, view=True)


def broadcast_to(x, shape) -> Tensor:
    """Broadcast x to `shape` (NumPy rules)."""
    x = lift(x)
    shape = tuple(int(d) for d in shape)
    if shape == x.shape:
        return x
    return apply("broadcast_to", (x,), shape=shape)


def _sum_to(g, shape):
    """Sum a broadcast gradient back down to `shape`."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, d in enumerate(shape) if d == 1 and g.shape[lead + i] != 1)
    return np.sum(g, axis=axes, keepdims=True).reshape(shape)


def _like(shapes, dts, **_):
    return shapes[1], dts[0]


def _sum_to_axes(shapes, attrs) -> tuple:
    """The axes sum_to_like reduces: the leading ones and those broadcast from size 1."""
    src, target = shapes
    lead = len(src) - len(target)
    return tuple(range(lead)) + tuple(lead + i for i, d in enumerate(target)
                                      if d == 1 and src[lead + i] != 1)


register("sum_to_like", _like, _sum_to, (lambda g, y, x, like: broadcast_like(g, x), None),
         shape_only=(1,), noop_if_same_shape=True, reduction="sum", reduce_axes=_sum_to_axes)
register("broadcast_like", _like, lambda x, shape: np.broadcast_to(x, shape),
         (lambda g, y, x, like: sum_to_like(g, x), None), shape_only=(1,), noop_if_same_shape=True,
         view=True)
register("reshape_like", _like, lambda x, shape: np.reshape(x, shape),
         (lambda g, y, x, like: reshape_like(g, x), None), shape_only=(1,), noop_if_same_shape=True,
         view=True, value_preserving=True)
register("zeros_like", lambda shapes, dts, dtype: (shapes[0], np.dtype(dtype)),
         lambda shape, dtype: np.zeros(shape, dtype), (None,), shape_only=(0,))


def sum_to_like(g: Tensor, like: Tensor) -> Tensor:
    """Sum g over the dimensions that broadcasting added relative to `like`."""
    if g.shape == like.shape and (None not in like.shape or _shaped_by(g, like)):
        return g
    return apply("sum_to_like", (g, like))


def _shaped_by(g: Tensor, like: Tensor) -> bool:
    """g takes its run-time shape from `like` (a shape-only input of g's op), so the two
    agree even where the static shape has None (a getitem or conv input gradient)."""
    return any(x is like for i, x in enumerate(g.inputs) if i in g.op.shape_only)


def broadcast_like(x: Tensor, like: Tensor) -> Tensor:
    """Broadcast x to the (run-time) shape of `like`."""
    if x.shape == like.shape and None not in like.shape:
        return x
    return apply("broadcast_like", (x, like))


def reshape_like(x: Tensor, like: Tensor) -> Tensor:
    """Reshape x to the (run-time) shape of `like`."""
    if x.shape == like.shape and None not in like.shape:
        return x
    return apply("reshape_like", (x, like))


def zeros_like(x, dtype=None) -> Tensor:
    """Zeros with x's shape; reads only x's shape, never its values."""
    x = lift(x)
    return apply("zeros_like", (x,), dtype=np.dtype(dtype or x.dtype).name)


# --- expand_dims ---------------------------------------------------------------------------
def _infer_expand(shapes, dts, axes):
    out = list(shapes[0])
    for a in axes:
        out.insert(a, 1)
    return tuple(out), dts[0]


register("expand_dims", _infer_expand, lambda x, axes: np.expand_dims(x, axes),
         (lambda g, y, x: reshape_like(g, x),), view=True, value_preserving=True)


def expand_dims(x, axes) -> Tensor:
    """Insert size-1 dimensions at `axes` (positions in the output)."""
    x = lift(x)
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    if not axes:
        return x
    ndim = x.ndim + len(axes)
    axes = tuple(sorted(a % ndim for a in axes))
    return apply("expand_dims", (x,), axes=axes)


# --- concat --------------------------------------------------------------------------------
def _infer_concat(shapes, dts, axis):
    first = shapes[0]
    nd = len(first)
    if not -nd <= axis < nd:
        fail(f"axis {axis} is out of range for rank {nd}")
    ax = axis % nd
    for s in shapes[1:]:
        if len(s) != nd:
            fail("all operands must have the same rank")
        for i, (a, b) in enumerate(zip(first, s)):
            if i != ax and a is not None and b is not None and a != b:
                fail(f"sizes differ on dimension {i} ({a} vs {b}), which is not the concat axis")
    sizes = [s[ax] for s in shapes]
    total = None if None in sizes else sum(sizes)
    out = list(first)
    for i in range(nd):
        if i != ax and out[i] is None:
            out[i] = next((s[i] for s in shapes if s[i] is not None), None)
    out[ax] = total
    return tuple(out), _dt.promote(*dts)


def _concat_rule(i):
    def rule(g, y, *xs):
        ax = y.attrs["axis"] % y.ndim
        sizes = [x.shape[ax] for x in xs]
        if None in sizes[:i + 1]:
            raise GradientError("concat: gradient along an unbound (None) axis is not supported; "
                                f"operand sizes on axis {ax}: {sizes}")
        start = sum(sizes[:i])
        index = (slice(None),) * ax + (slice(start, start + sizes[i]),)
        return getitem(g, index)
    return rule


def _concat_grad_rules(n):
    return tuple(_concat_rule(i) for i in range(n))


register("concat", _infer_concat, lambda *xs, axis: np.concatenate(xs, axis=axis),
         _concat_grad_rules, variadic=True)


def concat(tensors, axis: int = 0) -> Tensor:
    """Join tensors along an existing axis."""
    tensors = [lift(t) for t in tensors]
    if not tensors:
        raise GraphError("concat needs at least one tensor")
    dtype = _dt.promote(*(t.dtype for t in tensors))
    from .elementwise import cast
    tensors = [cast(t, dtype) for t in tensors]
    if len(tensors) == 1:
        return tensors[0]
    return apply("concat", tensors, axis=int(axis))


# --- basic slicing -------------------------------------------------------------------------
def _encode_index(index, ndim):
    """Normalize a basic index to a hashable tuple of ('i', k) / ('s', a, b, c) / ('n',)."""
    if not isinstance(index, tuple):
        index = (index,)
    for item in index:
        if isinstance(item, (Tensor, list, np.ndarray)) or (
                not isinstance(item, (int, np.integer, slice)) and item is not None
                and item is not Ellipsis):
            raise GraphError(f"only basic indexing (ints, slices, None, ...) is supported, "
                             f"got {item!r}; integer arrays work too (x[idx], gc.take_along_axis)")
    n_ell = sum(1 for i in index if i is Ellipsis)
    if n_ell > 1:
        raise GraphError("an index can only have one ellipsis (...)")
    used = sum(1 for i in index if i is not None and i is not Ellipsis)
    if used > ndim:
        raise GraphError(f"too many indices ({used}) for a tensor of rank {ndim}")
    out = []
    for item in index:
        if item is Ellipsis:
            out.extend([("s", None, None, None)] * (ndim - used))
        elif item is None:
            out.append(("n",))
        elif isinstance(item, slice):
            out.append(("s", item.start, item.stop, item.step))
        else:
            out.append(("i", int(item)))
    if not n_ell:
        out.extend([("s", None, None, None)] * (ndim - used))
    return tuple(out)


def _decode_index(code):
    return tuple(slice(c[1], c[2], c[3]) if c[0] == "s" else (None if c[0] == "n" else c[1])
                 for c in code)


def _infer_getitem(shapes, dts, index):
    src = shapes[0]
    out, dim = [], 0
    for c in index:
        if c[0] == "n":
            out.append(1)
            continue
        d = src[dim]
        dim += 1
        if c[0] == "i":
            if d is not None and not -d <= c[1] < d:
                fail(f"index {c[1]} is out of bounds for dimension {dim - 1} of size {d}")
            continue
        sl = slice(c[1], c[2], c[3])
        if sl.step == 0:
            fail("slice step cannot be zero")
        if d is not None:
            out.append(len(range(*sl.indices(d))))
        else:
            out.append(None)
    return tuple(out), dts[0]


def _getitem(x, index):
    # the trailing Ellipsis keeps an all-integer index a 0-d view, not a NumPy scalar copy
    return x[_decode_index(index) + (Ellipsis,)]


register("getitem", _infer_getitem, _getitem,
         (lambda g, y, x: _getitem_grad(g, x, y.attrs["index"]),), view=True)


def _scatter(g, shape, index):
    out = np.zeros(shape, g.dtype)
    out[_decode_index(index)] = g
    return out


register("getitem_grad", lambda shapes, dts, index: (shapes[1], dts[0]), _scatter,
         (lambda gg, y, g, like: apply("getitem", (gg,), index=y.attrs["index"]), None),
         shape_only=(1,))


def _scatter_slices(shape, *gs, indices):
    out = np.zeros(shape, np.result_type(*gs))
    for g, index in zip(gs, indices):
        out[_decode_index(index)] += g
    return out


def _scatter_slices_rules(n):
    def rule(i):
        return lambda gg, y, *inputs: apply("getitem", (gg,), index=y.attrs["indices"][i - 1])
    return (None,) + tuple(rule(i) for i in range(1, n))


# The gradient of many slices of one tensor (an RNN's time steps, an LSTM's gates) in one
# buffer, instead of one zero-filled full-size buffer per slice summed up.
register("scatter_slices", lambda shapes, dts, indices: (shapes[0], _dt.promote(*dts[1:])),
         _scatter_slices, _scatter_slices_rules, variadic=True, shape_only=(0,))


@functools.lru_cache(maxsize=256)
def slices_tile(shape: tuple, indices: tuple) -> bool:
    """Whether the basic indices (encoded as getitem's) cover every element of an array of
    `shape` exactly once (checked once per shape and indices, on a byte mask): then a
    scatter_slices is each gradient copied into place, no zeros and no sums."""
    cover = np.zeros(shape, np.uint8)
    for code in indices:
        cover[_decode_index(code)] += 1
    return bool((cover == 1).all())


def index_str(code) -> str:
    """A basic index (encoded as getitem's) as Python writes it: `:, 0:512`."""
    def one(c):
        if c[0] == "i":
            return str(c[1])
        if c[0] == "n":
            return "None"
        text = ":".join("" if v is None else str(v) for v in c[1:3])
        return text + (f":{c[3]}" if c[3] is not None else "")
    return ", ".join(one(c) for c in code)


def scatter_slices(like: Tensor, grads: list, indices: list) -> Tensor:
    """zeros_like(like) with each g added at its basic index (encoded as getitem does)."""
    return apply("scatter_slices", (like, *grads), indices=tuple(indices))


def _getitem_grad(g, x, index):
    return apply("getitem_grad", (g, x), index=index)


def getitem(x, index) -> Tensor:
    """Basic NumPy slicing: ints, slices, None and Ellipsis; integer arrays go to
    indexing.index_with_arrays."""
    x = lift(x)
    from . import indexing
    if indexing.is_array_index(index):
        return indexing.index_with_arrays(x, index)
    code = _encode_index(index, x.ndim)
    if all(c == ("s", None, None, None) for c in code) and len(code) == x.ndim:
        return x
    return apply("getitem", (x,), index=code)


# --- count: the run-time number of elements over some axes, as a 0-d tensor -----------------
register("count", lambda shapes, dts, axes, dtype: ((), np.dtype(dtype)),
         lambda shape, axes, dtype: np.array(np.prod([shape[a] for a in axes]), dtype=dtype),
         (None,), shape_only=(0,))


def count(x: Tensor, axes, dtype) -> Tensor:
    """How many elements a reduction over `axes` of x combines; constant when shapes are known."""
    sizes = [x.shape[a] for a in axes]
    if None not in sizes:
        return lift(np.array(np.prod(sizes, dtype=np.int64), dtype=dtype))
    return apply("count", (x,), axes=tuple(axes), dtype=np.dtype(dtype).name)
