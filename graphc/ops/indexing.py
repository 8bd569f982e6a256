"""Gathering along an axis (torch.gather, numpy.take_along_axis) and its gradient, a
scatter-add; integer-array indexing (`x[idx]`, `x[gc.arange(n), y]`) and `nll_loss` built
on them."""
from __future__ import annotations

import numpy as np

from ..errors import FeedError, GraphError
from ..graph import Constant, Tensor
from .common import broadcast_shapes, lift
from .elementwise import _float, cast, equal, where
from .nn import _reduce
from .registry import apply, fail, register
from .reductions import sum as _sum
from .shape_ops import expand_dims, getitem, reshape


# --- the ops: gather and scatter_add -----------------------------------------------------
def _infer_gather(shapes, dts, axis, broadcast):
    x, index = shapes
    if dts[1].kind not in "iu":
        fail(f"the index must hold integers, got {dts[1]}")
    if len(x) != len(index):
        fail(f"the index must have the input's rank ({len(x)}), got rank {len(index)}")
    if not 0 <= axis < len(x):
        fail(f"axis {axis} is out of range for rank {len(x)}")
    out = []
    for d, (a, b) in enumerate(zip(x, index)):
        if d == axis:
            out.append(b)
        elif broadcast:
            out.append(broadcast_shapes((a,), (b,))[0])
        else:
            if a is not None and b is not None and b > a:
                fail(f"the index is larger than the input on dimension {d} ({b} > {a}); "
                     f"off the gather axis it may be smaller, not larger")
            out.append(b)
    return tuple(out), dts[0]


def _check_range(index: np.ndarray, n: int, op: str) -> None:
    if index.size and (index.min() < 0 or index.max() >= n):
        bad = index[(index < 0) | (index >= n)].flat[0]
        raise FeedError(f"{op}: index {bad} is out of range for an axis of size {n} "
                        f"(indices must lie in [0, {n}))")


def _prefix(x: np.ndarray, sizes: tuple, axis: int) -> np.ndarray:
    """x cut to `sizes` off `axis` (torch.gather reads only that corner of the input)."""
    for d, (a, b) in enumerate(zip(x.shape, sizes)):
        if d != axis and b > a:
            raise FeedError(f"gather: the index has {b} entries on dimension {d}, the input "
                            f"only {a}")
    return x[tuple(slice(None) if d == axis else slice(0, s) for d, s in enumerate(sizes))]


def _gather(x, index, axis, broadcast):
    _check_range(index, x.shape[axis], "gather")
    if not broadcast:
        x = _prefix(x, index.shape, axis)
    try:
        return np.take_along_axis(x, index, axis)
    except (ValueError, IndexError) as e:
        raise FeedError(f"take_along_axis: an input of shape {x.shape} and indices of shape "
                        f"{index.shape} do not broadcast off axis {axis} ({e})") from None


def _fit(out: np.ndarray, shape: tuple) -> np.ndarray:
    """A gradient computed over the gathered region, brought to the input's shape: summed
    where the input was broadcast (size 1), zero-padded where torch read only a prefix."""
    axes = tuple(d for d, (o, s) in enumerate(zip(out.shape, shape)) if s == 1 and o != 1)
    if axes:
        out = np.sum(out, axis=axes, keepdims=True)
    if out.shape != tuple(shape):
        full = np.zeros(shape, out.dtype)
        full[tuple(slice(0, o) for o in out.shape)] = out
        out = full
    return out


def _scatter_add(g, index, shape, axis, broadcast):
    _check_range(index, shape[axis], "gather")
    region = g.shape[:axis] + (shape[axis],) + g.shape[axis + 1:]
    out = np.zeros(region, g.dtype)
    where_ = list(np.ogrid[tuple(slice(0, s) for s in g.shape)])
    where_[axis] = np.broadcast_to(index, g.shape)
    np.add.at(out, tuple(where_), g)
    return _fit(out, tuple(shape))


def _index_count(position: int):
    return (1, lambda shapes, attrs: shapes[position][attrs["axis"]],
            "positions along the gathered axis")


register("gather", _infer_gather, _gather, (
    lambda g, y, x, index: apply("scatter_add", (g, index, x), **y.attrs), None),
    indices=_index_count(0))
# The gradient of gather: zeros of the input's shape with g added at the gathered positions
# (repeated indices accumulate). Its own gradient gathers again.
register("scatter_add", lambda shapes, dts, axis, broadcast: (shapes[2], dts[0]), _scatter_add, (
    lambda gg, y, g, index, like: apply("gather", (gg, index), **y.attrs), None, None),
    shape_only=(2,), indices=_index_count(2))


# --- public functions --------------------------------------------------------------------
def _axis(axis, ndim: int, op: str) -> int:
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < max(ndim, 1):
        raise GraphError(f"{op}: axis {axis!r} is out of range for a tensor of rank {ndim}")
    return int(axis) % ndim


def _index_tensor(index, op: str) -> Tensor:
    t = lift(index)
    if t.dtype.kind not in "iu":
        raise GraphError(f"{op}: indices must be integers, got {t.dtype} (cast them with "
                         f".astype('int64'))")
    return t


def _check_constant(index: Tensor, size, op: str) -> None:
    """Constant indices are checked when the graph is built, not when it first runs."""
    if isinstance(index, Constant) and size is not None and index.value.size:
        v = index.value
        if v.min() < 0 or v.max() >= size:
            bad = v[(v < 0) | (v >= size)].flat[0]
            raise GraphError(f"{op}: index {bad} is out of range for an axis of size {size}")


def _apply_gather(x: Tensor, index: Tensor, axis: int, broadcast: bool) -> Tensor:
    _check_constant(index, x.shape[axis], "take_along_axis" if broadcast else "gather")
    return apply("gather", (x, index), axis=axis, broadcast=broadcast)


def gather(x, axis: int, index) -> Tensor:
    """torch.gather: out[i][j] = x[index[i][j]][j] for axis 0 (and so on); `index` has x's
    rank, off `axis` no larger sizes than x, and gives the result its shape."""
    x, index = lift(x), _index_tensor(index, "gather")
    return _apply_gather(x, index, _axis(axis, x.ndim, "gather"), broadcast=False)


def take_along_axis(x, indices, axis: int | None) -> Tensor:
    """numpy.take_along_axis: as gather, but off `axis` x and `indices` broadcast against
    each other; axis=None reads the flattened x with 1-D indices."""
    x, indices = lift(x), _index_tensor(indices, "take_along_axis")
    if axis is None:
        x, axis = reshape(x, (-1,)), 0
    if indices.ndim != x.ndim:
        raise GraphError(f"take_along_axis: indices must have the input's rank ({x.ndim}), "
                         f"got shape {indices.shape}; add axes with gc.expand_dims")
    return _apply_gather(x, indices, _axis(axis, x.ndim, "take_along_axis"), broadcast=True)


def arange(start: int, stop: int | None = None, step: int = 1, dtype="int64") -> Tensor:
    """numpy.arange as a constant tensor (int64 by default)."""
    from ..graph import constant
    return constant(np.arange(start, stop, step, dtype=np.dtype(dtype)))


# --- integer-array indexing: x[idx] and x[gc.arange(n), y] --------------------------------
def is_array_index(index) -> bool:
    """Whether a subscript holds an integer array (a tensor, a NumPy array or a list)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, (Tensor, np.ndarray, list)) for i in items)


_ADVICE = ("supported are one integer array on one axis (x[idx], x[:, idx]) and "
           "x[gc.arange(n), idx] on two adjacent axes, the other axes taken whole (':'); for "
           "other forms use gc.gather or gc.take_along_axis")


def _expand_items(index, ndim: int) -> list:
    items = list(index) if isinstance(index, tuple) else [index]
    ellipses = [k for k, i in enumerate(items) if i is Ellipsis]
    if len(ellipses) > 1:
        raise GraphError("an index can only have one ellipsis (...)")
    if ellipses:
        k = ellipses[0]
        items[k:k + 1] = [slice(None)] * (ndim - len(items) + 1)
    if len(items) > ndim:
        raise GraphError(f"too many indices ({len(items)}) for a tensor of rank {ndim}")
    return items + [slice(None)] * (ndim - len(items))


def _array_item(item, op: str = "indexing") -> Tensor:
    t = item if isinstance(item, Tensor) else lift(np.asarray(item))
    if t.dtype.kind == "b":
        raise GraphError("boolean mask indexing gives a shape known only when the graph runs;"
                         " use gc.where(mask, x, 0) or multiply by the mask instead")
    if t.dtype.kind not in "iu":
        raise GraphError(f"{op}: index arrays must hold integers, got {t.dtype}")
    return t


def _is_full(item) -> bool:
    return isinstance(item, slice) and item == slice(None)


def _is_arange(t: Tensor) -> bool:
    return isinstance(t, Constant) and t.value.ndim == 1 and \
        np.array_equal(t.value, np.arange(t.value.size))


def index_with_arrays(x: Tensor, index) -> Tensor:
    """NumPy integer-array indexing where it is a gather (see _ADVICE for the forms)."""
    items = _expand_items(index, x.ndim)
    arrays = [k for k, i in enumerate(items) if isinstance(i, (Tensor, np.ndarray, list))]
    tensors = {k: _array_item(items[k]) for k in arrays}
    if not all(_is_full(i) for k, i in enumerate(items) if k not in tensors):
        raise GraphError(f"integer-array indexing mixed with {index!r}: {_ADVICE}")
    if len(arrays) == 1:
        return _take(x, tensors[arrays[0]], arrays[0])
    if len(arrays) == 2 and arrays[1] == arrays[0] + 1:
        a, b = tensors[arrays[0]], tensors[arrays[1]]
        if a.ndim == 1 and b.ndim == 1 and (_is_arange(a) or _is_arange(b)):
            return _pick_pairs(x, a, b, arrays[0])
    raise GraphError(f"unsupported integer-array index {index!r}: {_ADVICE}")


def _wrap_negative(idx: Tensor, size) -> Tensor:
    """Constant indices count from the end when negative, as in NumPy."""
    if isinstance(idx, Constant) and size is not None and idx.value.size \
            and idx.value.min() < 0 and idx.value.min() >= -size:
        return lift(np.where(idx.value < 0, idx.value + size, idx.value))
    return idx


def _take(x: Tensor, idx: Tensor, k: int) -> Tensor:
    """numpy.take(x, idx, axis=k): shape x.shape[:k] + idx.shape + x.shape[k+1:]."""
    idx = _wrap_negative(idx, x.shape[k])
    flat = reshape(idx, (-1,)) if idx.ndim != 1 else idx
    index = flat if x.ndim == 1 else reshape(flat, (1,) * k + (-1,) + (1,) * (x.ndim - k - 1))
    out = take_along_axis(x, index, k)
    if idx.ndim == 1:
        return out
    if idx.ndim == 0:
        return getitem(out, (slice(None),) * k + (0,))
    shape = x.shape[:k] + idx.shape + x.shape[k + 1:]
    if sum(1 for d in shape if d is None) > 1:
        raise GraphError(f"indexing with a {idx.ndim}-D index array needs known sizes; got "
                         f"input {x.shape} and index {idx.shape}: index with a 1-D array")
    return reshape(out, tuple(-1 if d is None else d for d in shape))


def _pick_pairs(x: Tensor, a: Tensor, b: Tensor, k: int) -> Tensor:
    """x[..., a, b, ...] with one of a, b an arange: one entry per pair, a gather along the
    other axis (of the rows the arange selects)."""
    rows_first = _is_arange(a)
    ar, idx = (a, b) if rows_first else (b, a)
    n = int(ar.shape[0])
    ax_rows = k if rows_first else k + 1  # the axis the arange walks
    ax_pick = k + 1 if rows_first else k
    size = x.shape[ax_rows]
    if size is not None and size < n:
        raise GraphError(f"index {n - 1} of gc.arange({n}) is out of range for dimension "
                         f"{ax_rows} of size {size}")
    idx = _wrap_negative(idx, x.shape[ax_pick])
    if idx.shape[0] is not None and idx.shape[0] != n:
        raise GraphError(f"shape mismatch: index arrays of lengths {n} and {idx.shape[0]} "
                         f"cannot be broadcast together")
    if size != n:
        x = getitem(x, (slice(None),) * ax_rows + (slice(0, n),))
    pair_shape = (n, 1) if rows_first else (1, n)
    index = reshape(idx, (1,) * k + pair_shape + (1,) * (x.ndim - k - 2))
    out = take_along_axis(x, index, ax_pick)
    return getitem(out, (slice(None),) * ax_pick + (0,))


# --- nll_loss ----------------------------------------------------------------------------
def _check_nll(x: Tensor, t: Tensor) -> None:
    if t.dtype.kind not in "iu":
        raise GraphError(f"nll_loss: labels must be integer class indices, got {t.dtype}")
    if x.ndim < 1 or t.ndim != x.ndim - 1:
        raise GraphError(f"nll_loss: expects log-probabilities (N, C) (or (C,), or (N, C, d1, "
                         f"...)) and labels (N,) (or (), or (N, d1, ...)); got {x.shape} "
                         f"and {t.shape}")


def nll_loss(log_probs, labels, weight=None, ignore_index: int | None = -100,
             reduction: str = "mean") -> Tensor:
    """torch.nn.functional.nll_loss: -log_probs[n, labels[n]] (class axis 1, or 0 for one
    sample), optionally weighted per class; labels equal to ignore_index count for nothing.
    On log_softmax(x) it compiles to the fused softmax_cross_entropy."""
    x, t = _float(log_probs), lift(labels)
    _check_nll(x, t)
    axis = 1 if x.ndim >= 2 else 0
    keep = None
    if ignore_index is not None:
        ignored = equal(t, int(ignore_index))
        t = where(ignored, 0, t)
        keep = 1.0 - cast(ignored, x.dtype)
    picked = take_along_axis(x, expand_dims(t, axis), axis)
    per = -getitem(picked, (slice(None),) * axis + (0,))
    w = keep
    if weight is not None:
        wt = _take(cast(lift(weight, like=x), x.dtype), t, 0)  # weight[labels]
        w = wt if w is None else wt * w
    if w is not None:
        per = per * w
    if reduction == "mean" and w is not None:
        return _sum(per) / _sum(w)
    return _reduce(per, reduction, "nll_loss")
