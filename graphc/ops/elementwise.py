"""Elementwise ops (graph stage: registry ops; NumPy broadcasting): arithmetic, comparisons,
activations."""
from __future__ import annotations

import math

import numpy as np

from .. import dtypes as _dt
from ..graph import Tensor
from .common import broadcast_shapes, lift, lift_pair
from .registry import COST_CHEAP as C1
from .registry import COST_MEDIUM as C4
from .registry import apply, fail, register

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_TANH_C = 0.044715


# --- inference ---------------------------------------------------------------------------
def _same(shapes, dts, **_):
    return shapes[0], dts[0]


def _float_same(shapes, dts, **_):
    if not _dt.is_float(dts[0]):
        fail(f"needs a floating-point input, got {dts[0]}")
    return shapes[0], dts[0]


def _arith(shapes, dts, **_):
    return broadcast_shapes(*shapes), _dt.promote(*dts)


def _compare(shapes, dts, **_):
    return broadcast_shapes(*shapes), np.dtype(bool)


def _where(shapes, dts, **_):
    if dts[0] != np.bool_:
        fail(f"condition must be bool, got {dts[0]}")
    return broadcast_shapes(*shapes), _dt.promote(dts[1], dts[2])


def _cast(shapes, dts, dtype):
    return shapes[0], np.dtype(dtype)


# --- stable NumPy references ---------------------------------------------------------------
def _sigmoid(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def _softplus(x, beta, threshold):
    z = x * x.dtype.type(beta)
    soft = (np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z)))) / x.dtype.type(beta)
    return np.where(z > threshold, x, soft).astype(x.dtype, copy=False)


def _erf(x):
    from .special import erf
    return erf(x)


def _gelu(x, approximate):
    t = x.dtype.type
    if approximate == "tanh":
        inner = t(SQRT_2_OVER_PI) * (x + t(GELU_TANH_C) * x * x * x)
        return t(0.5) * x * (1 + np.tanh(inner))
    return t(0.5) * x * (1 + _erf(x * t(INV_SQRT_2)))


def _bce_logits(x, t):
    return (np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))).astype(
        np.result_type(x, t), copy=False)


def _pow(a, b):
    return np.power(a, b)


# --- registry ------------------------------------------------------------------------------
def _unary(name, ref, grad, infer=_float_same, **kw):
    register(name, infer, ref, (grad,), elementwise=True, **kw)


def _binary(name, ref, grads, infer=_arith, **kw):
    register(name, infer, ref, grads, elementwise=True, **kw)


_unary("neg", np.negative, lambda g, y, x: neg(g), infer=_same, cost=C1, scalar="(-{0})")
_unary("exp", np.exp, lambda g, y, x: g * y, scalar="math.exp({0})")
_unary("log", np.log, lambda g, y, x: g / x, scalar="math.log({0})")
_unary("sqrt", np.sqrt, lambda g, y, x: g * 0.5 / y, cost=C4, scalar="math.sqrt({0})")
_unary("abs", np.abs, lambda g, y, x: g * sign(x), infer=_same, cost=C1, scalar="abs({0})")
_unary("sign", np.sign, lambda g, y, x: zeros_like(x), infer=_same, cost=C1,
       scalar="({one} if {0} > {zero} else (-{one} if {0} < {zero} else {0}))")
_unary("square", np.square, lambda g, y, x: g * 2.0 * x, infer=_same, cost=C1,
       scalar="({0} * {0})")
_unary("relu", lambda x: np.maximum(x, x.dtype.type(0)),
       lambda g, y, x: where(greater(x, 0), g, 0), infer=_same, cost=C1,
       scalar="({0} if {0} > {zero} else {zero})")
_unary("leaky_relu", lambda x, negative_slope: np.where(x > 0, x, x * x.dtype.type(negative_slope)),
       lambda g, y, x: where(greater(x, 0), g, g * y.attrs["negative_slope"]), cost=C1,
       scalar="({0} if {0} > {zero} else {0} * {negative_slope})")
_unary("sigmoid", _sigmoid, lambda g, y, x: g * y * (1.0 - y),
       scalar="({one} / ({one} + math.exp(-{0})))")
_unary("tanh", np.tanh, lambda g, y, x: g * (1.0 - square(y)), scalar="math.tanh({0})")
_unary("erf", _erf, lambda g, y, x: g * (2.0 / math.sqrt(math.pi)) * exp(neg(square(x))),
       scalar="math.erf({0})")
_unary("elu", lambda x, alpha: np.where(x > 0, x, x.dtype.type(alpha) * np.expm1(x)),
       lambda g, y, x: where(greater(x, 0), g, g * (y + y.attrs["alpha"])),
       scalar="({0} if {0} > {zero} else {alpha} * math.expm1({0}))")
_unary("softplus", _softplus,
       lambda g, y, x: where(greater(x * y.attrs["beta"], y.attrs["threshold"]), g,
                             g * sigmoid(x * y.attrs["beta"])),
       scalar="({0} if {0} * {beta} > {threshold} else (max({0} * {beta}, {zero})"
              " + math.log1p(math.exp(-abs({0} * {beta})))) / {beta})")
_unary("gelu", _gelu, lambda g, y, x: g * _gelu_derivative(x, y.attrs["approximate"]),
       scalar=lambda attrs: (
           "({half} * {0} * ({one} + math.tanh({s2pi} * ({0} + {c} * {0} * {0} * {0}))))"
           if attrs.get("approximate") == "tanh" else
           "({half} * {0} * ({one} + math.erf({0} * {inv_sqrt2})))"),
       scalar_consts={"s2pi": SQRT_2_OVER_PI, "c": GELU_TANH_C, "inv_sqrt2": INV_SQRT_2})
_unary("cast", lambda x, dtype: x.astype(dtype), lambda g, y, x: cast(g, x.dtype), infer=_cast,
       cost=C1, scalar="{T}({0})", value_preserving=True)

_binary("add", np.add, (lambda g, y, a, b: g, lambda g, y, a, b: g), cost=C1, scalar="({0} + {1})")
_binary("sub", np.subtract, (lambda g, y, a, b: g, lambda g, y, a, b: neg(g)), cost=C1,
        scalar="({0} - {1})")
_binary("mul", np.multiply, (lambda g, y, a, b: g * b, lambda g, y, a, b: g * a), cost=C1,
        scalar="({0} * {1})")
_binary("div", np.divide, (lambda g, y, a, b: g / b, lambda g, y, a, b: neg(g) * y / b), cost=C4,
        scalar="({0} / {1})")
_binary("pow", _pow, (lambda g, y, a, b: g * b * (a ** (b - 1.0)),
                      lambda g, y, a, b: where(equal(a, 0), 0, g * y * log(a))),
        scalar="({0} ** {1})")
_binary("maximum", np.maximum, (lambda g, y, a, b: _tie_grad(g, a, b),
                                lambda g, y, a, b: _tie_grad(g, b, a)), cost=C1,
        scalar="({0} if ({0} > {1} or {0} != {0}) else {1})")  # NaN propagates, as NumPy
_binary("minimum", np.minimum, (lambda g, y, a, b: _tie_grad(g, b, a),
                                lambda g, y, a, b: _tie_grad(g, a, b)), cost=C1,
        scalar="({0} if ({0} < {1} or {0} != {0}) else {1})")
_binary("greater", np.greater, None, infer=_compare, cost=C1, scalar="({0} > {1})")
_binary("greater_equal", np.greater_equal, None, infer=_compare, cost=C1, scalar="({0} >= {1})")
_binary("less", np.less, None, infer=_compare, cost=C1, scalar="({0} < {1})")
_binary("equal", np.equal, None, infer=_compare, cost=C1, scalar="({0} == {1})")
_binary("binary_cross_entropy_with_logits", _bce_logits,
        (lambda g, y, x, t: g * (sigmoid(x) - t), lambda g, y, x, t: neg(g) * x),
        scalar="(max({0}, {zero}) - {0} * {1} + math.log1p(math.exp(-abs({0}))))")
register("where", _where, np.where,
         (None, lambda g, y, c, a, b: where(c, g, 0), lambda g, y, c, a, b: where(c, 0, g)),
         elementwise=True, cost=C1, scalar="({1} if {0} else {2})")


def _tie_grad(g, winner, other):
    """Gradient for the first argument of max/min: all of it where it wins, half on ties
    (torch's rule for maximum and minimum)."""
    return where(greater(winner, other), g, where(equal(winner, other), g * 0.5, 0))


def _gelu_derivative(x, approximate):
    if approximate == "tanh":
        inner = SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x)
        t = tanh(inner)
        d_inner = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_C * square(x))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - square(t)) * d_inner
    cdf = 0.5 * (1.0 + erf(x * INV_SQRT_2))
    pdf = exp(-0.5 * square(x)) * INV_SQRT_2PI
    return cdf + x * pdf


# --- public functions ----------------------------------------------------------------------
def _float(x) -> Tensor:
    """Integer tensors are promoted to the default float by transcendental functions."""
    x = lift(x)
    return x if _dt.is_float(x.dtype) else cast(x, _dt.DEFAULT_FLOAT)


def _promoted(a, b) -> tuple[Tensor, Tensor]:
    """Lift both operands and cast them to their common dtype, so that kernels never see
    mixed dtypes and every backend computes in the dtype inference promised."""
    a, b = lift_pair(a, b)
    dtype = _dt.promote(a.dtype, b.dtype)
    return cast(a, dtype), cast(b, dtype)


def _bin(name):
    def fn(a, b) -> Tensor:
        return apply(name, _promoted(a, b))
    fn.__name__ = name
    return fn


add = _bin("add")
sub = _bin("sub")
mul = _bin("mul")
maximum = _bin("maximum")
minimum = _bin("minimum")
greater = _bin("greater")
greater_equal = _bin("greater_equal")
less = _bin("less")
equal = _bin("equal")


def div(a, b) -> Tensor:
    """True division; integer operands give the default float."""
    a, b = _promoted(a, b)
    if not _dt.is_float(a.dtype):
        a, b = _float(a), _float(b)
    return apply("div", (a, b))


def pow(a, b) -> Tensor:  # noqa: A001 - mirrors numpy/torch naming
    """a ** b elementwise."""
    return apply("pow", _promoted(a, b))


def where(condition, a, b) -> Tensor:
    """Elementwise choice: a where condition holds, else b (broadcasting all three)."""
    condition = lift(condition)
    if not isinstance(a, Tensor) and isinstance(b, Tensor):
        a = lift(a, like=b)
    return apply("where", (condition, *_promoted(a, b)))


def neg(x) -> Tensor:
    return apply("neg", (lift(x),))


def abs(x) -> Tensor:  # noqa: A001
    return apply("abs", (lift(x),))


def sign(x) -> Tensor:
    return apply("sign", (lift(x),))


def square(x) -> Tensor:
    return apply("square", (lift(x),))


def relu(x) -> Tensor:
    return apply("relu", (lift(x),))


def cast(x, dtype) -> Tensor:
    """Convert to another dtype (no-op when it already has it)."""
    x = lift(x)
    if x.dtype == np.dtype(dtype):
        return x
    return apply("cast", (x,), dtype=np.dtype(dtype).name)


def _unary_fn(name):
    def fn(x) -> Tensor:
        return apply(name, (_float(x),))
    fn.__name__ = name
    return fn


exp = _unary_fn("exp")
log = _unary_fn("log")
sqrt = _unary_fn("sqrt")
sigmoid = _unary_fn("sigmoid")
tanh = _unary_fn("tanh")
erf = _unary_fn("erf")


def leaky_relu(x, negative_slope: float = 0.01) -> Tensor:
    """torch.nn.functional.leaky_relu."""
    return apply("leaky_relu", (_float(x),), negative_slope=float(negative_slope))


def elu(x, alpha: float = 1.0) -> Tensor:
    """torch.nn.functional.elu."""
    return apply("elu", (_float(x),), alpha=float(alpha))


def softplus(x, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """torch.nn.functional.softplus: log(1 + exp(beta x)) / beta, linear above threshold."""
    return apply("softplus", (_float(x),), beta=float(beta), threshold=float(threshold))


def gelu(x, approximate: str = "none") -> Tensor:
    """torch.nn.functional.gelu: exact (erf) by default, approximate='tanh' for the tanh form."""
    if approximate not in ("none", "tanh"):
        from ..errors import GraphError
        raise GraphError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return apply("gelu", (_float(x),), approximate=approximate)


def zeros_like(x) -> Tensor:
    from .shape_ops import zeros_like as _z
    return _z(x)
