"""Layer and batch normalisation as registry ops (graph stage), with torch.nn.functional's
semantics.

Each op has one output, the normalised (and scaled, shifted) tensor; the graph has no
multi-output nodes, so the gradient rules recompute the mean and inverse standard deviation
with graph ops (mean, sub, mul, sqrt: CSE shares them between the rules, the fuser groups
them). Because the rules are built only from differentiable graph ops, gradients of
gradients work. The backward of x is the analytic one:
dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * weight.
"""
from __future__ import annotations

import functools
import numbers

import numpy as np

from .. import dtypes as _dt
from ..errors import GraphError, ShapeError
from ..graph import Parameter, Tensor, format_shape
from .common import lift
from .elementwise import _float, maximum, sqrt
from .registry import apply, fail, register
from .reductions import mean, sum as _sum
from .shape_ops import count, reshape


def moments(x, axes) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over `axes`, keepdims, in graph ops."""
    mu = mean(x, axes, keepdims=True)
    centered = x - mu
    return mu, mean(centered * centered, axes, keepdims=True)


def _standardized(x: Tensor, axes: tuple, eps: float) -> tuple[Tensor, Tensor]:
    """(xhat, rstd) in graph ops: xhat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps)."""
    mu, var = moments(x, axes)
    rstd = 1.0 / sqrt(var + eps)
    return (x - mu) * rstd, rstd


def _standardized_grad(gh: Tensor, xhat: Tensor, rstd: Tensor, axes: tuple) -> Tensor:
    """Gradient reaching x through xhat = standardize(x) when xhat receives `gh`."""
    return rstd * (gh - mean(gh, axes, keepdims=True)
                   - xhat * mean(gh * xhat, axes, keepdims=True))


def _np_standardize(x: np.ndarray, axes: tuple, eps: float) -> np.ndarray:
    """NumPy: (x - mean) / sqrt(var + eps), statistics accumulated in float64."""
    mu = np.mean(x, axis=axes, keepdims=True, dtype=np.float64).astype(x.dtype)
    xc = x - mu
    var = np.mean(np.square(xc), axis=axes, keepdims=True, dtype=np.float64)
    xc *= (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    return xc


def _roles(attrs: dict) -> list[str]:
    """What each input of a normalisation node is, from its attributes."""
    roles = ["x"]
    # only evaluation-mode batch_norm reads running statistics (layer_norm has no `training`)
    if not attrs.get("training", True):
        roles += ["running_mean", "running_var"]
    if attrs["has_weight"]:
        roles.append("weight")
    if attrs["has_bias"]:
        roles.append("bias")
    return roles


def _check_affine(roles, shapes, dts, want: tuple) -> None:
    """Every input after x has shape `want` (None entries match anything) and x's dtype."""
    for role, shape, dt in zip(roles[1:], shapes[1:], dts[1:]):
        if len(shape) != len(want) or any(
                a is not None and b is not None and a != b for a, b in zip(shape, want)):
            fail(f"{role} must have shape {tuple(want)}, got {tuple(shape)}")
        if dt != dts[0]:
            fail(f"{role} has dtype {dt} but the input is {dts[0]}")


def _rules(grad_fn):
    """Per-input gradient rules dispatching on the input's role (grads(n_inputs) form)."""
    def rules(n_inputs: int):
        return [functools.partial(grad_fn, i) for i in range(n_inputs)]
    return rules


# --- layer_norm ------------------------------------------------------------------------------
def _ln_axes(ndim: int, normalized_shape: tuple) -> tuple:
    return tuple(range(ndim - len(normalized_shape), ndim))


def _infer_layer_norm(shapes, dts, normalized_shape, eps, has_weight, has_bias):
    x, k = shapes[0], len(normalized_shape)
    if not _dt.is_float(dts[0]):
        fail(f"needs a floating-point input, got {dts[0]}")
    trailing = x[len(x) - k:] if len(x) >= k else x
    if len(x) < k or any(d is not None and d != n for d, n in zip(trailing, normalized_shape)):
        fail(f"normalized_shape {normalized_shape} does not match the input's trailing "
             f"dimensions (input shape {tuple(x)})")
    _check_affine(_roles(dict(has_weight=has_weight, has_bias=has_bias)),
                  shapes, dts, normalized_shape)
    return tuple(x[:len(x) - k]) + tuple(normalized_shape), dts[0]


def _layer_norm(*arrays, normalized_shape, eps, has_weight, has_bias):
    named = dict(zip(_roles(dict(has_weight=has_weight, has_bias=has_bias)), arrays))
    x = named["x"]
    y = _np_standardize(x, _ln_axes(x.ndim, normalized_shape), eps)
    if has_weight:
        y *= named["weight"]
    if has_bias:
        y += named["bias"]
    return y


def _layer_norm_grad(i, g, y, *inputs):
    attrs = y.attrs
    roles = _roles(attrs)
    named = dict(zip(roles, inputs))
    x = named["x"]
    axes = _ln_axes(x.ndim, attrs["normalized_shape"])
    leading = tuple(range(x.ndim - len(axes)))
    role = roles[i]
    if role == "bias":
        return _sum(g, leading)
    xhat, rstd = _standardized(x, axes, attrs["eps"])
    if role == "weight":
        return _sum(g * xhat, leading)
    gh = g * named["weight"] if attrs["has_weight"] else g
    return _standardized_grad(gh, xhat, rstd, axes)


register("layer_norm", _infer_layer_norm, _layer_norm, _rules(_layer_norm_grad),
         variadic=True, doc="torch.nn.functional.layer_norm")


def _normalized_shape(value) -> tuple:
    shape = (value,) if isinstance(value, numbers.Integral) else value
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or not all(isinstance(d, numbers.Integral) and d > 0 for d in shape):
        raise GraphError(f"layer_norm: normalized_shape must be a positive int or a non-empty "
                         f"tuple of positive ints, got {value!r}")
    return tuple(int(d) for d in shape)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """torch.nn.functional.layer_norm: normalise over the trailing `normalized_shape`
    dimensions (biased variance), then scale by `weight` and shift by `bias` (both of shape
    normalized_shape)."""
    x = _float(x)
    shape = _normalized_shape(normalized_shape)
    inputs = [x] + [lift(t, like=x) for t in (weight, bias) if t is not None]
    return apply("layer_norm", inputs, normalized_shape=shape, eps=float(eps),
                 has_weight=weight is not None, has_bias=bias is not None)


# --- batch_norm ------------------------------------------------------------------------------
def _bn_axes(ndim: int) -> tuple:
    return (0,) + tuple(range(2, ndim))


def _channel(t: Tensor, ndim: int) -> Tensor:
    """A (C,) tensor shaped to broadcast over (N, C, ...)."""
    return reshape(t, (-1,) + (1,) * (ndim - 2))


def _infer_batch_norm(shapes, dts, training, eps, has_weight, has_bias):
    x = shapes[0]
    if not _dt.is_float(dts[0]):
        fail(f"needs a floating-point input, got {dts[0]}")
    if len(x) < 2:
        fail(f"expects an (N, C) or (N, C, ...) input, got shape {tuple(x)}")
    roles = _roles(dict(training=training, has_weight=has_weight, has_bias=has_bias))
    channels = x[1]
    for s in shapes[1:]:
        if channels is None and len(s) == 1:
            channels = s[0]
    _check_affine(roles, shapes, dts, (channels,))
    per_channel = [x[a] for a in _bn_axes(len(x))]
    if training and None not in per_channel and int(np.prod(per_channel)) == 1:
        fail(f"training needs more than one value per channel to compute batch statistics, "
             f"got input shape {tuple(x)}")
    return (x[0], channels) + tuple(x[2:]), dts[0]


def _batch_norm(*arrays, training, eps, has_weight, has_bias):
    named = dict(zip(_roles(dict(training=training, has_weight=has_weight,
                                 has_bias=has_bias)), arrays))
    x = named["x"]
    bshape = (-1,) + (1,) * (x.ndim - 2)
    if training:
        y = _np_standardize(x, _bn_axes(x.ndim), eps)
    else:
        rm = named["running_mean"].reshape(bshape)
        rstd = 1.0 / np.sqrt(named["running_var"].astype(np.float64) + eps)
        y = (x - rm) * rstd.astype(x.dtype).reshape(bshape)
    if has_weight:
        y *= named["weight"].reshape(bshape)
    if has_bias:
        y += named["bias"].reshape(bshape)
    return y


def _batch_norm_grad(i, g, y, *inputs):
    attrs = y.attrs
    roles = _roles(attrs)
    named = dict(zip(roles, inputs))
    x, role = named["x"], roles[i]
    axes = _bn_axes(x.ndim)
    if role == "bias":
        return _sum(g, axes)
    gh = g * _channel(named["weight"], x.ndim) if attrs["has_weight"] else g
    if attrs["training"]:
        xhat, rstd = _standardized(x, axes, attrs["eps"])
        if role == "weight":
            return _sum(g * xhat, axes)
        return _standardized_grad(gh, xhat, rstd, axes)
    rstd = 1.0 / sqrt(named["running_var"] + attrs["eps"])  # (C,)
    centered = x - _channel(named["running_mean"], x.ndim)
    if role == "weight":
        return _sum(g * centered, axes) * rstd
    if role == "running_mean":
        return -_sum(gh, axes) * rstd
    if role == "running_var":
        return _sum(gh * centered, axes) * (-0.5 * rstd * rstd * rstd)
    return gh * _channel(rstd, x.ndim)


register("batch_norm", _infer_batch_norm, _batch_norm, _rules(_batch_norm_grad),
         variadic=True, doc="torch.nn.functional.batch_norm")


def _running_updates(x: Tensor, running_mean, running_var, momentum: float) -> dict:
    """The new running mean and unbiased running variance after a training step, as
    torch updates them: (1 - momentum) * old + momentum * batch statistic."""
    axes = _bn_axes(x.ndim)
    mu, var = moments(x, axes)
    n = count(x, axes, x.dtype)
    unbiased = reshape(var, (-1,)) * (n / maximum(n - 1.0, 1.0))
    m = float(momentum)
    out = {}
    if running_mean is not None:
        out[running_mean] = (1 - m) * running_mean + m * reshape(mu, (-1,))
    if running_var is not None:
        out[running_var] = (1 - m) * running_var + m * unbiased
    return out


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, updates: dict | None = None
               ) -> Tensor:
    """torch.nn.functional.batch_norm over (N, C) or (N, C, ...) inputs: per channel, normalise
    by the batch statistics (training) or by `running_mean` and `running_var` (evaluation),
    then scale by `weight` and shift by `bias` (all of shape (C,)).

    A graph cannot update the running statistics in place as torch does: in training mode,
    pass a dict as `updates` and the new running mean and unbiased running variance
    ((1 - momentum) * old + momentum * batch value) are added to it as {parameter: new
    value}, to compile with the step (`gc.compile(..., updates=updates)`)."""
    x = _float(x)
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise GraphError(f"batch_norm: momentum must be a number, got {momentum!r}")
    if not training and (running_mean is None or running_var is None):
        raise GraphError("batch_norm: running_mean and running_var are needed in evaluation "
                         "mode (training=False)")
    stats = [lift(t, like=x) for t in (running_mean, running_var) if t is not None]
    affine = [lift(t, like=x) for t in (weight, bias) if t is not None]
    inputs = [x] + ([] if training else stats) + affine
    y = apply("batch_norm", inputs, training=bool(training), eps=float(eps),
              has_weight=weight is not None, has_bias=bias is not None)
    if training and updates is not None:
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            _check_running(name, t, y)
        updates.update(_running_updates(x, running_mean, running_var, momentum))
    return y


def _check_running(name: str, t, y: Tensor) -> None:
    """A running statistic to update: a parameter of shape (C,) and the input's dtype."""
    if t is None:
        return
    if not isinstance(t, Parameter):
        raise GraphError(f"batch_norm: {name} must be a parameter to be updated, got "
                         f"{t.describe() if isinstance(t, Tensor) else type(t).__name__}")
    c = y.shape[1]
    if len(t.shape) != 1 or (c is not None and t.shape[0] != c) or t.dtype != y.dtype:
        where = f" (at {y.source})" if y.source else ""
        raise ShapeError(f"batch_norm: {name} must be a ({c},) {y.dtype} parameter for an "
                         f"input of shape {format_shape(y.shape)}, got {t.describe()}{where}")
