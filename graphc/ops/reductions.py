"""Reductions over axes (graph stage: registry ops): sum, mean, max, min, logsumexp."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..graph import Tensor
from .common import lift, normalize_axes, reduced_shape
from .elementwise import cast, equal, exp
from .registry import apply, fail, register
from .shape_ops import broadcast_like, count, expand_dims


def _infer_reduce(shapes, dts, axes, keepdims):
    return reduced_shape(shapes[0], axes, keepdims), dts[0]


def _infer_sum(shapes, dts, axes, keepdims):
    dtype = dts[0] if _dt.is_float(dts[0]) else np.sum(np.zeros(1, dts[0])).dtype
    return reduced_shape(shapes[0], axes, keepdims), dtype


def _expand(g: Tensor, y: Tensor, x: Tensor) -> Tensor:
    """Bring a reduction's gradient (or output) back to the input's shape."""
    if not y.attrs["keepdims"]:
        g = expand_dims(g, y.attrs["axes"])
    return broadcast_like(g, x)


def _extremum_grad(g, y, x):
    """Gradient of max/min: shared evenly between tied extremal elements (torch's amax)."""
    mask = cast(equal(x, _expand(y, y, x)), x.dtype)
    ties = apply("sum", (mask,), axes=y.attrs["axes"], keepdims=True)
    return _expand(g, y, x) * mask / broadcast_like(ties, x)


def _logsumexp(x, axes, keepdims):
    m = np.max(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)
    out = np.log(np.sum(np.exp(x - m), axis=axes, keepdims=True)) + m
    return out if keepdims else np.squeeze(out, axis=axes)


def _attr_axes(shapes, attrs) -> tuple:
    return tuple(attrs["axes"])


register("sum", _infer_sum,
         lambda x, axes, keepdims: np.asarray(np.sum(x, axis=axes, keepdims=keepdims)),
         (lambda g, y, x: _expand(g, y, x),), reduction="sum", reduce_axes=_attr_axes)
register("mean", _infer_reduce,
         lambda x, axes, keepdims: np.asarray(np.mean(x, axis=axes, keepdims=keepdims)),
         (lambda g, y, x: _expand(g, y, x) / count(x, y.attrs["axes"], x.dtype),),
         reduction="mean", reduce_axes=_attr_axes)
register("max", _infer_reduce,
         lambda x, axes, keepdims: np.asarray(np.max(x, axis=axes, keepdims=keepdims)),
         (_extremum_grad,))
register("min", _infer_reduce,
         lambda x, axes, keepdims: np.asarray(np.min(x, axis=axes, keepdims=keepdims)),
         (_extremum_grad,))
register("logsumexp", _infer_reduce, _logsumexp,
         (lambda g, y, x: _expand(g, y, x) * exp(x - _expand(y, y, x)),))


def _reduction(name, float_only=False):
    def fn(x, axis=None, keepdims: bool = False) -> Tensor:
        x = lift(x)
        if float_only and not _dt.is_float(x.dtype):
            x = cast(x, _dt.DEFAULT_FLOAT)
        try:
            axes = normalize_axes(axis, x.ndim)
        except Exception as e:  # InferError: report through apply for a uniform message
            from ..errors import ShapeError
            from ..graph import user_source
            raise ShapeError(f"{name}: {e}; operand: {x.shape} {x.dtype} (at {user_source()})") \
                from None
        if not axes and name != "logsumexp":
            return x
        return apply(name, (x,), axes=axes, keepdims=bool(keepdims))
    fn.__name__ = name
    fn.__doc__ = f"{name} over `axis` (None: all axes), NumPy semantics."
    return fn


sum = _reduction("sum")  # noqa: A001
mean = _reduction("mean", float_only=True)
max = _reduction("max")  # noqa: A001
min = _reduction("min")  # noqa: A001
logsumexp = _reduction("logsumexp", float_only=True)


# --- argmax: the index of the first maximum along one axis (int64, no gradient) -------------
def _infer_argmax(shapes, dts, axis):
    shape = shapes[0]
    if not -len(shape) <= axis < len(shape):
        fail(f"axis {axis} is out of range for rank {len(shape)}")
    ax = axis % len(shape)
    return shape[:ax] + shape[ax + 1:], np.dtype("int64")


register("argmax", _infer_argmax, lambda x, axis: np.argmax(x, axis=axis), (None,))


def argmax(x, axis: int = -1) -> Tensor:
    """Index of the first maximum along `axis` (torch.argmax / numpy.argmax), as int64."""
    return apply("argmax", (lift(x),), axis=int(axis))
