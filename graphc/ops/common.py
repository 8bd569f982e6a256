"""Helpers shared by op definitions (graph stage): broadcasting with None dims, axes, scalar
lifting."""
from __future__ import annotations

import numbers

import numpy as np

from .. import dtypes as _dt
from ..errors import GraphError
from ..graph import Constant, Tensor, get_default_graph
from .registry import fail


def broadcast_shapes(*shapes) -> tuple:
    """NumPy broadcasting where None (unbound) matches 1 or any size."""
    nd = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(nd):
        dims = [s[len(s) - nd + i] for s in shapes if len(s) - nd + i >= 0]
        known = {d for d in dims if d is not None and d != 1}
        if len(known) > 1:
            fail(f"shapes cannot broadcast (dimension {i - nd}: sizes {sorted(known)})")
        if known:
            out.append(known.pop())
        elif any(d is None for d in dims):
            out.append(None)
        else:
            out.append(1)
    return tuple(out)


def normalize_axes(axis, ndim: int) -> tuple:
    """Sorted tuple of non-negative axes; None means every axis."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, (int, np.integer)):
            fail(f"axis must be an int or a tuple of ints, got {axis!r}")
        if not -ndim <= a < ndim:
            fail(f"axis {a} is out of range for a tensor of rank {ndim}")
        out.append(int(a) % ndim)
    if len(set(out)) != len(out):
        fail(f"repeated axis in {axis!r}")
    return tuple(sorted(out))


def reduced_shape(shape: tuple, axes: tuple, keepdims: bool) -> tuple:
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def lift(value, like: Tensor | None = None, dtype=None) -> Tensor:
    """Turn a Python scalar or array into a constant; scalars take the other operand's dtype
    (weak typing as in torch and JAX), so `x * 2.0` stays float32."""
    if isinstance(value, Tensor):
        return value
    graph = like.graph if like is not None else get_default_graph()
    if dtype is None:
        if isinstance(value, (numbers.Number, np.generic)) and not isinstance(value, np.ndarray):
            if like is not None and (_dt.is_float(like.dtype) or not isinstance(value, float)):
                if isinstance(value, bool) or like.dtype.kind != "b":
                    dtype = like.dtype
            if dtype is None:
                dtype = _dt.DEFAULT_FLOAT if isinstance(value, float) else np.int32
        else:
            arr = np.asarray(value)
            if arr.dtype == np.float64 and like is not None and _dt.is_float(like.dtype):
                dtype = like.dtype  # float64 NumPy arrays adopt the tensor's float width
            else:
                dtype = arr.dtype
    try:
        arr = np.array(value, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise GraphError(f"cannot use {value!r} as a tensor: {e}") from None
    return Constant(graph, arr)


def lift_pair(a, b) -> tuple[Tensor, Tensor]:
    """Lift both operands of a binary op, each taking the dtype of the other if needed."""
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        a = lift(a)
    if not isinstance(a, Tensor):
        a = lift(a, like=b)
    if not isinstance(b, Tensor):
        b = lift(b, like=a)
    return a, b
