"""Every public op: forward values against independent NumPy formulas (float32 and float64),
gradients against float64 finite differences (graphc.testing.check_grads), at several shapes
including broadcasting, size-1 dimensions and scalars; numerically stable forms; gradients of
gradients.

Each case is one row of a table: how to build the op from placeholders, a NumPy formula for
the expected value, and the inputs (shape and how to sample them). `check_forward` and
`check_gradient` are the only two drivers, shared by every row."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest

import graphc as gc
from graphc.testing import check_grads

FLOATS = (np.float32, np.float64)
# (rtol, atol) of forward checks, per dtype of the computation.
TOL = {np.dtype(np.float32): (1e-5, 1e-5), np.dtype(np.float64): (1e-12, 1e-12)}
GRAD_TOL = dict(rtol=1e-5, atol=1e-6)

_erf = np.vectorize(math.erf, otypes=[np.float64])


# --- inputs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class In:
    """One input of a case: its shape and how to sample it.

    kinds: n normal; p positive in [0.5, 2]; nz |x| in [0.2, 2] (away from kinks at 0);
    u uniform in [0.05, 0.95]; w wide normal (scale 4); d small integers as floats (ties);
    bool; lab integer labels in [0, arg); a fixed values `arg`."""

    shape: tuple
    kind: str = "n"
    arg: object = None

    @property
    def is_float(self) -> bool:
        return self.kind not in ("bool", "lab")

    @property
    def diff(self) -> bool:
        """Whether gradient checks differentiate with respect to this input."""
        return self.kind in ("n", "p", "nz", "u", "w", "a")


def N(*s): return In(s)
def P(*s): return In(s, "p")
def NZ(*s): return In(s, "nz")
def U(*s): return In(s, "u")
def W(*s): return In(s, "w")
def D(*s): return In(s, "d")
def BOOL(*s): return In(s, "bool")
def LAB(c, *s): return In(s, "lab", c)
def A(values): return In(np.shape(values), "a", tuple(np.ravel(values).tolist()))


def sample(spec: In, rng, dtype) -> np.ndarray:
    s = spec.shape
    k = spec.kind
    if k == "bool":
        return np.asarray(rng.random(s) < 0.5)
    if k == "lab":
        return np.asarray(rng.integers(0, spec.arg, s), dtype=np.int64)
    if k == "n":
        v = rng.standard_normal(s)
    elif k == "w":
        v = 4.0 * rng.standard_normal(s)
    elif k == "p":
        v = rng.uniform(0.5, 2.0, s)
    elif k == "nz":
        v = rng.uniform(0.2, 2.0, s) * np.where(rng.random(s) < 0.5, -1.0, 1.0)
    elif k == "u":
        v = rng.uniform(0.05, 0.95, s)
    elif k == "d":
        v = rng.integers(-2, 3, s).astype(np.float64)
    elif k == "a":
        v = np.reshape(np.array(spec.arg, dtype=np.float64), s)
    else:
        raise ValueError(k)
    return np.asarray(v, dtype=dtype)


def fmt_shape(s) -> str:
    return "(" + ",".join(map(str, s)) + ("," if len(s) == 1 else "") + ")"


@dataclass
class Case:
    name: str
    build: Callable  # placeholders -> tensor
    ref: Callable  # float64 arrays (labels, bools as given) -> expected array
    ins: tuple
    grad: bool = True  # run the finite-difference gradient check
    out_dtype: object = None  # None: the test's float dtype
    float64_only: bool = False  # inputs have no float dtype to vary
    marks: tuple = ()  # e.g. (pytest.mark.xfail(reason=..., strict=True),)
    id: str = field(init=False)

    def __post_init__(self):
        self.id = self.name + "-" + "&".join(fmt_shape(i.shape) for i in self.ins)


def feeds_for(case: Case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [sample(spec, rng, dtype) for spec in case.ins]


def placeholders(arrays):
    return [gc.placeholder(f"x{i}", a.shape, a.dtype) for i, a in enumerate(arrays)]


def check_forward(case: Case, dtype) -> None:
    """Build the op in `dtype`, run it, and compare with the NumPy formula in float64."""
    dtype = np.dtype(dtype)
    arrays = feeds_for(case, dtype)
    with gc.Graph():
        phs = placeholders(arrays)
        t = case.build(*phs)
        fn = gc.compile(t)
        got = fn({p: a for p, a in zip(phs, arrays)})
    expected = np.asarray(case.ref(*[a.astype(np.float64) if a.dtype.kind == "f" else a
                                      for a in arrays]))
    want_dtype = np.dtype(case.out_dtype) if case.out_dtype is not None else dtype
    assert t.dtype == want_dtype, f"inferred dtype {t.dtype}, expected {want_dtype}"
    assert got.dtype == t.dtype
    assert t.shape == got.shape == expected.shape, (t.shape, got.shape, expected.shape)
    if want_dtype.kind in "biu":
        np.testing.assert_array_equal(got, expected)
    else:
        rtol, atol = TOL[dtype]
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)


def check_gradient(case: Case, seed=0) -> None:
    """check_grads on the op built from float32 placeholders (rebuilt in float64 by
    check_grads) with respect to every differentiable input."""
    arrays = feeds_for(case, np.float64, seed)
    with gc.Graph():
        phs = [gc.placeholder(f"x{i}", a.shape, np.float32 if a.dtype.kind == "f" else a.dtype)
               for i, a in enumerate(arrays)]
        y = case.build(*phs)
        wrt = [p for p, spec in zip(phs, case.ins) if spec.diff]
        assert wrt
        check_grads(y, wrt, {p: a for p, a in zip(phs, arrays)}, **GRAD_TOL)


# --- NumPy formulas, written independently of graphc's references ------------------------
def np_sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def np_softplus(x, beta=1.0, threshold=20.0):
    with np.errstate(over="ignore"):
        return np.where(beta * x > threshold, x, np.log1p(np.exp(beta * x)) / beta)


def np_gelu(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def np_matmul(a, b):
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    out = np.sum(a2[..., :, :, None] * b2[..., None, :, :], axis=-2)
    if a.ndim == 1:
        out = out[..., 0, :]
    if b.ndim == 1:
        out = out[..., 0]
    return out


def np_logsumexp(x, axis=None, keepdims=False):
    return np.log(np.sum(np.exp(x), axis=axis, keepdims=keepdims))


def np_softmax(x, axis=-1):
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def np_log_softmax(x, axis=-1):
    return x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))


def np_reduce(per, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda v: v}[reduction](per)


def np_sce(logits, labels, reduction="mean"):
    n = logits.shape[0]
    p = np.exp(logits) / np.sum(np.exp(logits), axis=1, keepdims=True)
    return np_reduce(-np.log(p[np.arange(n), labels]), reduction)


def np_bce(x, t, reduction="mean"):
    # -(t log s(x) + (1 - t) log(1 - s(x))), with -log s(x) = log(1 + e^-x)
    return np_reduce(t * np.log1p(np.exp(-x)) + (1 - t) * np.log1p(np.exp(x)), reduction)


def np_mse(p, t, reduction="mean"):
    return np_reduce((p - t) ** 2, reduction)


def np_hinge(x, y, margin=1.0, reduction="mean"):
    n, c = x.shape
    per = np.zeros(n)
    for i in range(n):
        for j in range(c):
            if j != y[i]:
                per[i] += max(0.0, margin - x[i, y[i]] + x[i, j])
    return np_reduce(per / c, reduction)


def np_pdist(a, b, eps=1e-6):
    return np.sqrt(np.sum((a - b + eps) ** 2, axis=-1))


def np_triplet(a, p, n, margin=1.0, reduction="mean"):
    return np_reduce(np.maximum(np_pdist(a, p) - np_pdist(a, n) + margin, 0.0), reduction)


def np_one_hot(labels, c):
    out = np.zeros(labels.shape + (c,), dtype=np.int64)
    for idx in np.ndindex(labels.shape):
        out[idx + (labels[idx],)] = 1
    return out


# --- the table -------------------------------------------------------------------------------
UNARY_SHAPES = [(3, 4), (2, 1, 3), (1,), ()]
BINARY_SHAPES = [((3, 4), (4,)), ((2, 1, 3), (1, 4, 1)), ((3, 1), (1,)), ((1,), ()), ((), ()),
                 ((4,), (3, 1))]

CASES: list[Case] = []


def add_cases(*cases):
    CASES.extend(cases)


# unary elementwise: (name, build, ref, input kind)
UNARY = [
    ("neg", gc.neg, np.negative, "n"),
    ("exp", gc.exp, np.exp, "n"),
    ("log", gc.log, np.log, "p"),
    ("sqrt", gc.sqrt, lambda x: x ** 0.5, "p"),
    ("abs", gc.abs, lambda x: np.where(x < 0, -x, x), "nz"),
    ("sign", gc.sign, np.sign, "nz"),
    ("square", gc.square, lambda x: x * x, "n"),
    ("relu", gc.relu, lambda x: np.where(x > 0, x, 0.0), "nz"),
    ("leaky_relu", gc.leaky_relu, lambda x: np.where(x > 0, x, 0.01 * x), "nz"),
    ("leaky_relu_0.2", lambda x: gc.leaky_relu(x, negative_slope=0.2),
     lambda x: np.where(x > 0, x, 0.2 * x), "nz"),
    ("sigmoid", gc.sigmoid, np_sigmoid, "w"),
    ("tanh", gc.tanh, lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1), "n"),
    ("erf", gc.erf, _erf, "n"),
    ("gelu", gc.gelu, np_gelu, "w"),
    ("gelu_tanh", lambda x: gc.gelu(x, approximate="tanh"), np_gelu_tanh, "w"),
    ("elu", gc.elu, lambda x: np.where(x > 0, x, np.exp(x) - 1), "nz"),
    ("elu_0.7", lambda x: gc.elu(x, alpha=0.7), lambda x: np.where(x > 0, x, 0.7 * (np.exp(x) - 1)),
     "nz"),
    ("softplus", gc.softplus, np_softplus, "w"),
    ("softplus_b2_t3", lambda x: gc.softplus(x, beta=2.0, threshold=3.0),
     lambda x: np_softplus(x, 2.0, 3.0), "w"),
]
for _name, _b, _r, _k in UNARY:
    for _s in UNARY_SHAPES:
        add_cases(Case(_name, _b, _r, (In(_s, _k),)))

# softplus beyond the threshold (linear branch) and below it, values chosen off the kink
add_cases(
    Case("softplus_thresh", lambda x: gc.softplus(x, beta=1.0, threshold=5.0),
         lambda x: np_softplus(x, 1.0, 5.0), (A([-30.0, -3.0, 0.5, 4.9, 5.1, 25.0, 40.0]),)),
    Case("softplus_default_thresh", gc.softplus, np_softplus,
         (A([[-25.0, 19.5, 20.5], [30.0, 0.0, -1.0]]),)),
    Case("softplus_b0.5_t4", lambda x: gc.softplus(x, beta=0.5, threshold=4.0),
         lambda x: np_softplus(x, 0.5, 4.0), (A([-9.0, 7.5, 8.5, 12.0]),)),
)

# binary elementwise and operators with tensors on both sides
BINARY = [
    ("add", gc.add, lambda a, b: a + b, "n", "n"),
    ("sub", gc.sub, lambda a, b: a - b, "n", "n"),
    ("mul", gc.mul, lambda a, b: a * b, "n", "n"),
    ("div", gc.div, lambda a, b: a / b, "n", "nz"),
    ("pow", gc.pow, lambda a, b: np.exp(b * np.log(a)), "p", "n"),
    ("maximum", gc.maximum, lambda a, b: np.where(a > b, a, b), "n", "n"),
    ("minimum", gc.minimum, lambda a, b: np.where(a < b, a, b), "n", "n"),
    ("op+", lambda a, b: a + b, lambda a, b: a + b, "n", "n"),
    ("op-", lambda a, b: a - b, lambda a, b: a - b, "n", "n"),
    ("op*", lambda a, b: a * b, lambda a, b: a * b, "n", "n"),
    ("op/", lambda a, b: a / b, lambda a, b: a / b, "n", "nz"),
    ("op**", lambda a, b: a ** b, lambda a, b: np.exp(b * np.log(a)), "p", "n"),
]
for _name, _b, _r, _ka, _kb in BINARY:
    for _sa, _sb in BINARY_SHAPES:
        add_cases(Case(_name, _b, _r, (In(_sa, _ka), In(_sb, _kb))))

COMPARE = [
    ("greater", gc.greater, lambda a, b: a > b),
    ("less", gc.less, lambda a, b: a < b),
    ("equal", gc.equal, lambda a, b: a == b),
    ("greater_equal", gc.greater_equal, lambda a, b: a >= b),
    ("op>", lambda a, b: a > b, lambda a, b: a > b),
    ("op<", lambda a, b: a < b, lambda a, b: a < b),
]
for _name, _b, _r in COMPARE:
    for _sa, _sb in BINARY_SHAPES:
        add_cases(Case(_name, _b, _r, (D(*_sa), D(*_sb)), grad=False, out_dtype=bool))

# maximum/minimum forward on ties (values only; the gradient of ties is tested below)
add_cases(Case("maximum_ties", gc.maximum, np.maximum, (D(3, 4), D(4)), grad=False),
          Case("minimum_ties", gc.minimum, np.minimum, (D(2, 1, 3), D(1, 4, 1)), grad=False))

# where: condition, a, b, all broadcasting
for _sc, _sa, _sb in [((3, 4), (4,), (3, 1)), ((2, 1, 3), (1, 4, 1), ()), ((1,), (3,), (1,)),
                      ((), (2, 3), (2, 3)), ((3, 4), (3, 4), (3, 4))]:
    add_cases(Case("where", gc.where, lambda c, a, b: np.where(c, a, b),
                   (BOOL(*_sc), N(*_sa), N(*_sb))))
add_cases(
    Case("where_scalar_b", lambda c, a: gc.where(c, a, 0.0), lambda c, a: np.where(c, a, 0.0),
         (BOOL(3, 4), N(4))),
    Case("where_scalar_a", lambda c, b: gc.where(c, -1.5, b), lambda c, b: np.where(c, -1.5, b),
         (BOOL(2, 3), N(2, 1))),
    Case("where_greater", lambda a, b: gc.where(gc.greater(a, b), a * b, a - b),
         lambda a, b: np.where(a > b, a * b, a - b), (N(3, 4), N(4))),
)

# Python scalars on either side of the operators: values and float dtype preserved
SCALAR_OPS = [
    ("x*2", lambda x: x * 2.0, lambda x: x * 2.0, "n"),
    ("2*x", lambda x: 2.0 * x, lambda x: 2.0 * x, "n"),
    ("x+1", lambda x: x + 1, lambda x: x + 1.0, "n"),
    ("1+x", lambda x: 1 + x, lambda x: 1.0 + x, "n"),
    ("x-0.5", lambda x: x - 0.5, lambda x: x - 0.5, "n"),
    ("1-x", lambda x: 1 - x, lambda x: 1.0 - x, "n"),
    ("x/4", lambda x: x / 4, lambda x: x / 4.0, "n"),
    ("3/x", lambda x: 3.0 / x, lambda x: 3.0 / x, "nz"),
    ("x**2", lambda x: x ** 2, lambda x: x * x, "n"),
    ("x**0.5", lambda x: x ** 0.5, np.sqrt, "p"),
    ("x**-1.5", lambda x: x ** -1.5, lambda x: 1.0 / (x * np.sqrt(x)), "p"),
    ("2**x", lambda x: 2 ** x, lambda x: np.exp(x * math.log(2.0)), "n"),
    ("0.5**x", lambda x: 0.5 ** x, lambda x: np.exp(-x * math.log(2.0)), "n"),
    ("-x", lambda x: -x, lambda x: -x, "n"),
    ("+x", lambda x: +x, lambda x: x, "n"),
    ("abs(x)", lambda x: abs(x), np.abs, "nz"),
    ("maximum(x,0.3)", lambda x: gc.maximum(x, 0.3), lambda x: np.where(x > 0.3, x, 0.3), "nz"),
    ("minimum(0.3,x)", lambda x: gc.minimum(0.3, x), lambda x: np.where(x < 0.3, x, 0.3), "nz"),
    ("add(x,np)", lambda x: gc.add(x, np.array([1.0, -2.0, 0.5, 3.0])),
     lambda x: x + np.array([1.0, -2.0, 0.5, 3.0]), "n"),
    ("np*x", lambda x: np.array([1.0, -2.0, 0.5, 3.0]) * x,
     lambda x: np.array([1.0, -2.0, 0.5, 3.0]) * x, "n"),
]
for _name, _b, _r, _k in SCALAR_OPS:
    add_cases(Case(_name, _b, _r, (In((3, 4), _k),)))
    if "np" not in _name:
        add_cases(Case(_name, _b, _r, (In((), _k),)))
add_cases(
    Case("x>0.5", lambda x: x > 0.5, lambda x: x > 0.5, (D(3, 4),), grad=False, out_dtype=bool),
    Case("x<0", lambda x: x < 0, lambda x: x < 0, (D(3, 4),), grad=False, out_dtype=bool),
)

# matmul
for _sa, _sb in [((3, 4), (4, 5)), ((1, 1), (1, 1)), ((2, 3, 4), (4, 5)), ((4, 5), (2, 5, 3)),
                 ((1, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (3, 4, 2)), ((4,), (4, 5)),
                 ((3, 4), (4,)), ((4,), (4,)), ((2, 3, 4), (4,)), ((4,), (2, 4, 5))]:
    add_cases(Case("matmul", gc.matmul, np_matmul, (N(*_sa), N(*_sb))))
add_cases(Case("op@", lambda a, b: a @ b, np_matmul, (N(2, 3, 4), N(1, 4, 2))))

# shape ops
add_cases(
    Case("transpose", gc.transpose, lambda x: np.einsum("ij->ji", x), (N(3, 4),)),
    Case("transpose_rev", gc.transpose, lambda x: np.einsum("ijk->kji", x), (N(2, 3, 4),)),
    Case("transpose_201", lambda x: gc.transpose(x, (2, 0, 1)),
         lambda x: np.einsum("ijk->kij", x), (N(2, 3, 4),)),
    Case("transpose_neg", lambda x: gc.transpose(x, (-1, 0, -2)),
         lambda x: np.einsum("ijk->kij", x), (N(2, 3, 4),)),
    Case("transpose_1d", gc.transpose, lambda x: x, (N(5),)),
    Case(".T", lambda x: x.T, lambda x: np.einsum("ij->ji", x), (N(3, 4),)),
    Case(".T_3d", lambda x: x.T, lambda x: np.einsum("ijk->kji", x), (N(2, 3, 4),)),
    Case(".transpose", lambda x: x.transpose(1, 0, 2), lambda x: np.einsum("ijk->jik", x),
         (N(2, 3, 4),)),
    Case("reshape", lambda x: gc.reshape(x, (6, 4)), lambda x: x.ravel().reshape(6, 4),
         (N(2, 3, 4),)),
    Case("reshape_-1", lambda x: gc.reshape(x, (4, -1)), lambda x: x.ravel().reshape(4, 6),
         (N(2, 3, 4),)),
    Case("reshape_flat", lambda x: gc.reshape(x, -1), lambda x: x.ravel(), (N(2, 3, 4),)),
    Case("reshape_ones", lambda x: gc.reshape(x, (1, 3, 1, 4)),
         lambda x: x.ravel().reshape(1, 3, 1, 4), (N(3, 4),)),
    Case("reshape_scalar_up", lambda x: gc.reshape(x, (1, 1)), lambda x: x.reshape(1, 1), (N(),)),
    Case("reshape_to_scalar", lambda x: gc.reshape(x, ()), lambda x: x.reshape(()), (N(1),)),
    Case(".reshape_args", lambda x: x.reshape(2, -1), lambda x: x.ravel().reshape(2, 6),
         (N(3, 4),)),
    Case(".reshape_tuple", lambda x: x.reshape((-1, 2, 3)), lambda x: x.ravel().reshape(4, 2, 3),
         (N(2, 3, 4),)),
    Case("broadcast_to", lambda x: gc.broadcast_to(x, (2, 3, 4)),
         lambda x: x + np.zeros((2, 3, 4)), (N(3, 1),)),
    Case("broadcast_to", lambda x: gc.broadcast_to(x, (3, 4)), lambda x: x + np.zeros((3, 4)),
         (N(4),)),
    Case("broadcast_to", lambda x: gc.broadcast_to(x, (2, 3)), lambda x: x + np.zeros((2, 3)),
         (N(),)),
    Case("broadcast_to", lambda x: gc.broadcast_to(x, (5,)), lambda x: x + np.zeros(5), (N(1),)),
    Case("broadcast_to", lambda x: gc.broadcast_to(x, (2, 4, 3)),
         lambda x: x + np.zeros((2, 4, 3)), (N(2, 1, 3),)),
    Case("expand_dims_0", lambda x: gc.expand_dims(x, 0), lambda x: x[None], (N(3, 4),)),
    Case("expand_dims_-1", lambda x: gc.expand_dims(x, -1), lambda x: x[..., None], (N(3, 4),)),
    Case("expand_dims_02", lambda x: gc.expand_dims(x, (0, 2)), lambda x: x[None, :, None],
         (N(3),)),
    Case("concat_0", lambda a, b: gc.concat([a, b], 0), lambda a, b: np.vstack([a, b]),
         (N(2, 3), N(4, 3))),
    Case("concat_1", lambda a, b, c: gc.concat([a, b, c], axis=1),
         lambda a, b, c: np.hstack([a, b, c]), (N(2, 3), N(2, 1), N(2, 2))),
    Case("concat_-1", lambda a, b: gc.concat([a, b], axis=-1),
         lambda a, b: np.dstack([a, b]), (N(2, 3, 1), N(2, 3, 2))),
    Case("concat_mid", lambda a, b, c: gc.concat([a, b, c], axis=1),
         lambda a, b, c: np.concatenate([a, b, c], axis=1), (N(2, 1, 4), N(2, 3, 4), N(2, 2, 4))),
    Case("concat_1d", lambda a, b: gc.concat([a, b]), lambda a, b: np.hstack([a, b]),
         (N(1), N(3))),
    Case("concat_one", lambda a: gc.concat([a], axis=0), lambda a: a, (N(2, 3),)),
    Case("zeros_like", gc.zeros_like, lambda x: x * 0.0, (N(2, 3),), grad=False),
    Case("cast_f64", lambda x: gc.cast(x, "float64"), lambda x: x, (N(3, 4),),
         out_dtype=np.float64),
    Case(".astype_f32", lambda x: x.astype("float32"), lambda x: x.astype(np.float32),
         (N(3, 4),), out_dtype=np.float32),
    Case("cast_int32", lambda x: gc.cast(x, "int32"), lambda x: x.astype(np.int32), (D(3, 4),),
         grad=False, out_dtype=np.int32),
)

# basic slicing
SLICES = [
    ("[1:3,:,None]", (4, 5), lambda t: t[1:3, :, None]),
    ("[...,0]", (2, 3, 4), lambda t: t[..., 0]),
    ("[::-1]", (5,), lambda t: t[::-1]),
    ("[3:0:-2,::-1]", (4, 5), lambda t: t[3:0:-2, ::-1]),
    ("[-1]", (4, 5), lambda t: t[-1]),
    ("[:,-2]", (4, 5), lambda t: t[:, -2]),
    ("[None,...,1:]", (2, 3), lambda t: t[None, ..., 1:]),
    ("[1,None,::2]", (3, 5), lambda t: t[1, None, ::2]),
    ("[::-2,1:-1,-1]", (5, 4, 3), lambda t: t[::-2, 1:-1, -1]),
    ("[0]", (1,), lambda t: t[0]),
    ("[None]", (), lambda t: t[None]),
    ("[...,::1,None]", (3, 2), lambda t: t[..., ::1, None]),
]
for _name, _s, _f in SLICES:
    add_cases(Case("getitem" + _name, _f, _f, (N(*_s),)))

# reductions: function and method forms, axis None / int / negative / tuple, keepdims
RED = [
    ("sum", gc.sum, np.sum),
    ("mean", gc.mean, lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims)
     / (x.size / np.sum(x, axis=axis, keepdims=keepdims).size)),
    ("max", gc.max, np.max),
    ("min", gc.min, np.min),
    ("logsumexp", gc.logsumexp, np_logsumexp),
]
RED_AXES = [((2, 3, 4), None), ((2, 3, 4), 0), ((2, 3, 4), -1), ((2, 3, 4), (0, 2)),
            ((2, 3, 4), (-1, -3)), ((2, 3, 4), (0, 1, 2)), ((3,), 0), ((1,), None), ((), None),
            ((3, 1), 1)]
for _name, _b, _r in RED:
    for _s, _ax in RED_AXES:
        for _kd in (False, True):
            add_cases(Case(f"{_name}_ax{_ax}_kd{int(_kd)}",
                           (lambda b, ax, kd: lambda x: b(x, axis=ax, keepdims=kd))(_b, _ax, _kd),
                           (lambda r, ax, kd: lambda x: r(x, axis=ax, keepdims=kd))(_r, _ax, _kd),
                           (N(*_s),)))
add_cases(
    Case(".sum(1)", lambda x: x.sum(1), lambda x: np.sum(x, 1), (N(3, 4),)),
    Case(".sum()", lambda x: x.sum(), lambda x: np.sum(x), (N(3, 4),)),
    Case(".mean(kd)", lambda x: x.mean(axis=(0, 1), keepdims=True),
         lambda x: np.sum(x, axis=(0, 1), keepdims=True) / 6, (N(2, 3, 4),)),
    Case(".max(-1)", lambda x: x.max(-1), lambda x: np.max(x, -1), (N(2, 3, 4),)),
    Case(".min()", lambda x: x.min(), lambda x: np.min(x), (N(2, 3, 4),)),
    Case(".min(0,kd)", lambda x: x.min(0, True), lambda x: np.min(x, 0, keepdims=True),
         (N(3, 4),)),
    Case("max_ties", lambda x: gc.max(x, axis=1), lambda x: np.max(x, axis=1), (D(3, 5),),
         grad=False),
)

# one_hot
add_cases(
    Case("one_hot", lambda l: gc.one_hot(l, 4), lambda l: np_one_hot(l, 4), (LAB(4, 5),),
         grad=False, out_dtype=np.int64, float64_only=True),
    Case("one_hot", lambda l: gc.one_hot(l, 3), lambda l: np_one_hot(l, 3), (LAB(3, 2, 3),),
         grad=False, out_dtype=np.int64, float64_only=True),
    Case("one_hot", lambda l: gc.one_hot(l, 5), lambda l: np_one_hot(l, 5), (LAB(5),),
         grad=False, out_dtype=np.int64, float64_only=True),
    Case("one_hot_f32", lambda l: gc.one_hot(l, 4, dtype="float32"),
         lambda l: np_one_hot(l, 4).astype(np.float32), (LAB(4, 6),), grad=False,
         out_dtype=np.float32, float64_only=True),
)

# softmax family
for _s, _ax in [((2, 3, 4), -1), ((2, 3, 4), 0), ((2, 3, 4), 1), ((5,), 0), ((3, 1), -1),
                ((1, 4), 0)]:
    add_cases(
        Case(f"softmax_ax{_ax}", (lambda ax: lambda x: gc.softmax(x, axis=ax))(_ax),
             (lambda ax: lambda x: np_softmax(x, ax))(_ax), (W(*_s),)),
        Case(f"log_softmax_ax{_ax}", (lambda ax: lambda x: gc.log_softmax(x, axis=ax))(_ax),
             (lambda ax: lambda x: np_log_softmax(x, ax))(_ax), (W(*_s),)),
    )
add_cases(Case("softmax_default", gc.softmax, np_softmax, (N(3, 4),)),
          Case("log_softmax_default", gc.log_softmax, np_log_softmax, (N(3, 4),)))

# losses
for _red in ("mean", "sum", "none"):
    add_cases(
        Case(f"mse_loss_{_red}", (lambda r: lambda p, t: gc.mse_loss(p, t, reduction=r))(_red),
             (lambda r: lambda p, t: np_mse(p, t, r))(_red), (N(3, 4), N(3, 4))),
        Case(f"softmax_cross_entropy_{_red}",
             (lambda r: lambda x, y: gc.softmax_cross_entropy(x, y, reduction=r))(_red),
             (lambda r: lambda x, y: np_sce(x, y, r))(_red), (W(5, 4), LAB(4, 5))),
        Case(f"bce_logits_{_red}",
             (lambda r: lambda x, t: gc.binary_cross_entropy_with_logits(x, t, reduction=r))(
                 _red), (lambda r: lambda x, t: np_bce(x, t, r))(_red), (W(3, 4), U(3, 4))),
        Case(f"hinge_loss_{_red}",
             (lambda r: lambda x, y: gc.hinge_loss(x, y, reduction=r))(_red),
             (lambda r: lambda x, y: np_hinge(x, y, 1.0, r))(_red), (N(6, 4), LAB(4, 6))),
        Case(f"triplet_loss_{_red}",
             (lambda r: lambda a, p, n: gc.triplet_loss(a, p, n, reduction=r))(_red),
             (lambda r: lambda a, p, n: np_triplet(a, p, n, 1.0, r))(_red),
             (N(6, 3), N(6, 3), N(6, 3))),
    )
add_cases(
    Case("mse_loss_default", gc.mse_loss, np_mse, (N(5,), N(5,))),
    Case("mse_loss_bcast", gc.mse_loss, np_mse, (N(3, 4), N(4))),
    Case("mse_loss_scalar", lambda p, t: gc.mse_loss(p, t, reduction="sum"),
         lambda p, t: np_mse(p, t, "sum"), (N(), N())),
    Case("softmax_cross_entropy_1class", gc.softmax_cross_entropy, np_sce, (N(3, 1), LAB(1, 3))),
    Case("bce_logits_bcast", gc.binary_cross_entropy_with_logits, np_bce, (N(3, 4), U(4))),
    Case("bce_logits_np_targets",
         lambda x: gc.binary_cross_entropy_with_logits(x, np.array([0.0, 1.0, 1.0, 0.0])),
         lambda x: np_bce(x, np.array([0.0, 1.0, 1.0, 0.0])), (W(2, 4),)),
    Case("hinge_loss_margin0.5", lambda x, y: gc.hinge_loss(x, y, margin=0.5),
         lambda x, y: np_hinge(x, y, 0.5), (N(6, 3), LAB(3, 6))),
    Case("hinge_loss_margin3_sum", lambda x, y: gc.hinge_loss(x, y, margin=3.0, reduction="sum"),
         lambda x, y: np_hinge(x, y, 3.0, "sum"), (N(5, 4), LAB(4, 5))),
    Case("triplet_loss_margin0.3", lambda a, p, n: gc.triplet_loss(a, p, n, margin=0.3),
         lambda a, p, n: np_triplet(a, p, n, 0.3), (N(7, 2), N(7, 2), N(7, 2))),
    Case("triplet_loss_margin5_none",
         lambda a, p, n: gc.triplet_loss(a, p, n, margin=5.0, reduction="none"),
         lambda a, p, n: np_triplet(a, p, n, 5.0, "none"), (N(4, 3), N(4, 3), N(4, 3))),
    Case("triplet_loss_1d", lambda a, p, n: gc.triplet_loss(a, p, n, reduction="sum"),
         lambda a, p, n: np_triplet(a, p, n, 1.0, "sum"), (N(3), N(3), N(3))),
    Case("pairwise_distance", gc.pairwise_distance, np_pdist, (N(4, 3), N(4, 3))),
    Case("pairwise_distance_bcast", gc.pairwise_distance, np_pdist, (N(4, 3), N(3))),
)



# gather family: torch.gather, numpy.take_along_axis, integer-array indexing, nll_loss
def np_gather(x, axis, index):
    out = np.empty(index.shape)
    for pos in np.ndindex(index.shape):
        src = list(pos)
        src[axis] = index[pos]
        out[pos] = x[tuple(src)]
    return out


def np_nll(lp, t, reduction="mean"):
    return np_reduce(-lp[np.arange(len(t)), t], reduction)


add_cases(
    Case("gather_ax1", lambda x, i: gc.gather(x, 1, i), lambda x, i: np_gather(x, 1, i),
         (N(3, 4), LAB(4, 3, 6))),
    Case("gather_corner", lambda x, i: gc.gather(x, 0, i), lambda x, i: np_gather(x, 0, i),
         (N(4, 3), LAB(4, 2, 2))),
    Case("take_along_axis_bcast", lambda x, i: gc.take_along_axis(x, i, 2),
         lambda x, i: np_gather(np.broadcast_to(x, (2, 3, 4)), 2, np.broadcast_to(i, (2, 3, 2))),
         (N(2, 3, 4), LAB(4, 1, 3, 2))),
    Case("getitem_int_array", lambda x: x[np.array([2, 0, 2])],
         lambda x: np.stack([x[2], x[0], x[2]]), (N(4, 3),)),
    Case("getitem_arange_pairs", lambda x, t: x[gc.arange(5), t],
         lambda x, t: np.array([x[i, t[i]] for i in range(5)]), (N(5, 3), LAB(3, 5))),
)
for _red in ("mean", "sum", "none"):
    add_cases(Case(f"nll_loss_{_red}",
                   (lambda r: lambda x, t: gc.nll_loss(x, t, reduction=r))(_red),
                   (lambda r: lambda x, t: np_nll(x, t, r))(_red), (N(5, 4), LAB(4, 5))))


def _forward_params():
    out = []
    for c in CASES:
        for dt in ((np.float64,) if c.float64_only else FLOATS):
            out.append(pytest.param(c, dt, id=f"{c.id}-{np.dtype(dt).name}", marks=c.marks))
    return out


@pytest.mark.parametrize("case,dtype", _forward_params())
def test_forward(case, dtype):
    check_forward(case, dtype)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks)
                                  for c in CASES if c.grad])
def test_gradient(case):
    check_gradient(case)


def test_case_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)


# --- dtypes and calling conventions ------------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
def test_python_scalars_keep_the_float_dtype(dtype):
    with gc.Graph():
        x = gc.placeholder("x", (3,), dtype)
        outs = [x * 2.0, 2.0 * x, 1 - x, x - 1, 2 ** x, x ** 2, x / 3, 3 / x, x + 1.5,
                gc.maximum(x, 0.0), gc.where(x > 0, x, 0.0), gc.where(x > 0, 1.0, x),
                np.float64(2.0) * x]
        assert all(t.dtype == np.dtype(dtype) for t in outs), [t.dtype for t in outs]
        got = gc.compile(outs)(x=np.array([0.5, -1.0, 2.0], dtype))
        assert all(g.dtype == np.dtype(dtype) for g in got)


def test_promotion_between_tensors():
    with gc.Graph():
        f32 = gc.placeholder("f32", (2,), "float32")
        f64 = gc.placeholder("f64", (2,), "float64")
        i32 = gc.placeholder("i32", (2,), "int32")
        assert (f32 + f64).dtype == np.float64
        assert (f32 * i32).dtype == np.float32  # floats win over ints, as in torch
        assert (i32 / 2).dtype == np.float32  # true division of ints gives the default float
        assert gc.mean(i32).dtype == np.float32
        assert gc.concat([f32, f64]).dtype == np.float64
        # a Python float with an integer tensor gives the default float (float32), as in torch
        assert (i32 * 2.0).dtype == np.float32 and (1.5 - i32).dtype == np.float32
        assert gc.where(f32 > 0, 1.0, 0.0).dtype == np.float32
        assert (i32 * 2).dtype == np.int32 and (i32 + 1).dtype == np.int32
        assert (i32 > 1).dtype == np.bool_ and gc.one_hot(i32, 3).dtype == np.int64
        out = gc.compile([f32 + f64, i32 / 2, gc.mean(i32)])(
            f32=np.array([1.5, 2.0], np.float32), f64=np.array([0.25, 1.0]),
            i32=np.array([3, 4], np.int32))
        np.testing.assert_array_equal(out[0], [1.75, 3.0])
        np.testing.assert_array_equal(out[1], np.array([1.5, 2.0], np.float32))
        np.testing.assert_array_equal(out[2], np.float32(3.5))


def test_feed_by_name_and_by_placeholder_agree(rng):
    with gc.Graph():
        a = gc.placeholder("a", (2, 3), "float64")
        b = gc.placeholder("b", (3,), "float64")
        fn = gc.compile(gc.tanh(a) * b)
        av, bv = rng.normal(size=(2, 3)), rng.normal(size=3)
        np.testing.assert_array_equal(fn({a: av, b: bv}), fn(a=av, b=bv))
        np.testing.assert_allclose(fn(a=av, b=bv), np.tanh(av) * bv, rtol=1e-12)


# --- numerically stable forms (float32, inputs far outside exp's range) ------------------------
BIG = np.array([-1000.0, -100.0, -30.0, -1.0, 0.0, 1.0, 30.0, 100.0, 1000.0], np.float32)
BIG_T = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0], np.float32)


def _exact_softplus(x):
    """log(1 + e^x) without overflow, float64."""
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))


def _exact_sigmoid(x):
    return np.exp(-_exact_softplus(-x))


ROWS = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -1000.0], [1000.0, 1000.0, 999.0],
                 [0.0, 1.0, 2.0]], np.float32)


def _exact_log_softmax(x):
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


STABLE = [
    ("sigmoid", lambda x, t: gc.sigmoid(x), lambda x, t: _exact_sigmoid(x),
     lambda x, t: _exact_sigmoid(x) * _exact_sigmoid(-x), BIG),
    ("softplus", lambda x, t: gc.softplus(x), lambda x, t: np.where(x > 20, x, _exact_softplus(x)),
     lambda x, t: _exact_sigmoid(x), BIG),
    ("softplus_beta", lambda x, t: gc.softplus(x, beta=3.0, threshold=1e6),
     lambda x, t: _exact_softplus(3 * x) / 3, lambda x, t: _exact_sigmoid(3 * x), BIG),
    ("bce", lambda x, t: gc.binary_cross_entropy_with_logits(x, t, reduction="none"),
     lambda x, t: t * _exact_softplus(-x) + (1 - t) * _exact_softplus(x),
     lambda x, t: _exact_sigmoid(x) - t, BIG),
    ("bce_mean", lambda x, t: gc.binary_cross_entropy_with_logits(x, t),
     lambda x, t: np.mean(t * _exact_softplus(-x) + (1 - t) * _exact_softplus(x)),
     lambda x, t: (_exact_sigmoid(x) - t) / x.size, BIG),
    ("log_softmax", lambda x, t: gc.log_softmax(x), lambda x, t: _exact_log_softmax(x),
     None, ROWS),
    ("softmax", lambda x, t: gc.softmax(x, axis=1), lambda x, t: np.exp(_exact_log_softmax(x)),
     None, ROWS),
    ("logsumexp", lambda x, t: gc.logsumexp(x, axis=-1),
     lambda x, t: np.max(x, -1) - _exact_log_softmax(x)[np.arange(len(x)), np.argmax(x, -1)],
     lambda x, t: np.exp(_exact_log_softmax(x)), ROWS),
    ("logsumexp_all", lambda x, t: gc.logsumexp(x),
     lambda x, t: 1000.0 + np.log(np.sum(np.exp(x.astype(np.float64) - 1000.0))),
     lambda x, t: np.exp(x.astype(np.float64) - 1000.0)
     / np.sum(np.exp(x.astype(np.float64) - 1000.0)), ROWS),
    ("softmax_cross_entropy", lambda x, t: gc.softmax_cross_entropy(x, t, reduction="none"),
     lambda x, t: -_exact_log_softmax(x)[np.arange(len(x)), t],
     lambda x, t: np.exp(_exact_log_softmax(x)) - np.eye(3)[t], ROWS),
]


@pytest.mark.parametrize("name,build,ref,dref,xv", STABLE, ids=[s[0] for s in STABLE])
def test_stable_forms_float32(name, build, ref, dref, xv):
    tv = BIG_T if xv is BIG else np.array([1, 2, 0, 1], np.int64)
    with gc.Graph():
        x = gc.placeholder("x", xv.shape, "float32")
        t = gc.placeholder("t", tv.shape, tv.dtype)
        y = build(x, t)
        outs = [y] if dref is None else [y, gc.grad(y if y.shape == () else gc.sum(y), x)]
        got = gc.compile(outs)(x=xv, t=tv)
    x64 = xv.astype(np.float64)
    assert got[0].dtype == np.float32
    assert np.all(np.isfinite(got[0])), got[0]
    np.testing.assert_allclose(got[0], ref(x64, tv), rtol=1e-6, atol=1e-6)
    if dref is not None:
        assert got[1].dtype == np.float32
        assert np.all(np.isfinite(got[1])), got[1]
        # exp(x - logsumexp) near |x| = 1000: float32 spacing there is 6e-5, hence rtol 1e-4
        np.testing.assert_allclose(got[1], dref(x64, tv), rtol=1e-4, atol=1e-6)


# --- gradients at ties: split evenly (torch's rule for maximum/minimum and amax/amin) ---------
def test_maximum_minimum_tie_gradient():
    with gc.Graph():
        a = gc.placeholder("a", (4,), "float64")
        b = gc.placeholder("b", (4,), "float64")
        outs = gc.grad(gc.sum(gc.maximum(a, b) * 2.0), [a, b]) + \
            gc.grad(gc.sum(gc.minimum(a, b) * 2.0), [a, b])
        got = gc.compile(outs)(a=np.array([1.0, 2.0, 3.0, -1.0]), b=np.array([1.0, 3.0, 2.0, -1.0]))
    np.testing.assert_array_equal(got[0], [1.0, 0.0, 2.0, 1.0])
    np.testing.assert_array_equal(got[1], [1.0, 2.0, 0.0, 1.0])
    np.testing.assert_array_equal(got[2], [1.0, 2.0, 0.0, 1.0])
    np.testing.assert_array_equal(got[3], [1.0, 0.0, 2.0, 1.0])


@pytest.mark.parametrize("op", ["max", "min"])
def test_max_min_tie_gradient(op):
    xv = np.array([[1.0, 3.0, 3.0, -2.0], [-2.0, -2.0, -2.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    with gc.Graph():
        x = gc.placeholder("x", (3, 4), "float64")
        y = getattr(gc, op)(x, axis=1)
        g, g_all = gc.compile([gc.grad(gc.sum(y * np.array([1.0, 2.0, 3.0])), x),
                               gc.grad(getattr(gc, op)(x), x)])(x=xv)
    ext = np.max(xv, 1, keepdims=True) if op == "max" else np.min(xv, 1, keepdims=True)
    mask = (xv == ext).astype(float)
    np.testing.assert_allclose(g, mask / mask.sum(1, keepdims=True) * np.array([[1.], [2.], [3.]]))
    e_all = xv == (xv.max() if op == "max" else xv.min())
    np.testing.assert_allclose(g_all, e_all / e_all.sum())


# --- gradients of gradients ---------------------------------------------------------------
def _feeds(rng, *specs):
    return [sample(s, rng, np.float64) for s in specs]


SECOND_UNARY = [
    ("exp", gc.exp, "n"), ("log", gc.log, "p"), ("sqrt", gc.sqrt, "p"),
    ("sigmoid", gc.sigmoid, "w"), ("tanh", gc.tanh, "n"), ("square", gc.square, "n"),
    ("erf", gc.erf, "n"), ("gelu", gc.gelu, "w"),
    ("gelu_tanh", lambda x: gc.gelu(x, approximate="tanh"), "w"),
    ("elu", lambda x: gc.elu(x, alpha=0.7), "nz"), ("softplus", gc.softplus, "w"),
    ("softplus_b2", lambda x: gc.softplus(x, beta=2.0, threshold=5.0), "w"),
    ("leaky_relu", lambda x: gc.leaky_relu(x, 0.2), "nz"), ("relu", gc.relu, "nz"),
    ("abs", gc.abs, "nz"), ("neg", gc.neg, "n"), ("cube", lambda x: x ** 3, "n"),
    ("2**x", lambda x: 2 ** x, "n"), ("1/x", lambda x: 1 / x, "nz"),
    ("x**-0.5", lambda x: x ** -0.5, "p"),
]


@pytest.mark.parametrize("name,f,kind", SECOND_UNARY, ids=[s[0] for s in SECOND_UNARY])
def test_second_derivative_elementwise(name, f, kind, rng):
    (xv,) = _feeds(rng, In((3, 4), kind))
    with gc.Graph():
        x = gc.placeholder("x", (3, 4), "float32")
        g = gc.grad(gc.sum(f(x) * np.linspace(0.5, 1.5, 4)), x)
        check_grads(g, x, {x: xv}, **GRAD_TOL)  # f'' through the projected gradient
        check_grads(gc.sum(g * g), x, {x: xv}, **GRAD_TOL)


SECOND_BINARY = [
    ("mul", gc.mul, "n", "n"), ("div", gc.div, "n", "nz"), ("pow", gc.pow, "p", "n"),
    ("add", gc.add, "n", "n"), ("sub", gc.sub, "n", "n"),
    ("maximum", gc.maximum, "n", "n"), ("minimum", gc.minimum, "n", "n"),
    ("mul_tanh", lambda a, b: gc.tanh(a * b), "n", "n"),
    ("where", lambda a, b: gc.where(a > 0, a * b * b, gc.exp(b)), "nz", "n"),
]


@pytest.mark.parametrize("shapes", [((3, 4), (4,)), ((2, 1, 3), (1, 4, 1)), ((), (3,))],
                         ids=["(3,4)&(4,)", "(2,1,3)&(1,4,1)", "()&(3,)"])
@pytest.mark.parametrize("name,f,ka,kb", SECOND_BINARY, ids=[s[0] for s in SECOND_BINARY])
def test_second_derivative_binary(name, f, ka, kb, shapes, rng):
    av, bv = _feeds(rng, In(shapes[0], ka), In(shapes[1], kb))
    with gc.Graph():
        a = gc.placeholder("a", av.shape, "float32")
        b = gc.placeholder("b", bv.shape, "float32")
        y = gc.sum(f(a, b) * f(a, b) + f(a, b))
        ga, gb = gc.grad(y, [a, b])
        assert ga.shape == a.shape and gb.shape == b.shape
        check_grads(gc.sum(ga * ga) + gc.sum(gb * ga.sum()), [a, b], {a: av, b: bv}, **GRAD_TOL)
        check_grads(gb, [a, b], {a: av, b: bv}, **GRAD_TOL)


SECOND_REDUCE = [
    ("sum", lambda x: gc.sum(x, axis=1)), ("sum_all", gc.sum),
    ("mean", lambda x: gc.mean(x, axis=(0, 2), keepdims=True)),
    ("max", lambda x: gc.max(x, axis=-1)), ("min", lambda x: gc.min(x, axis=0, keepdims=True)),
    ("max_all", gc.max),
    ("logsumexp", lambda x: gc.logsumexp(x, axis=1)), ("logsumexp_all", gc.logsumexp),
    ("softmax", lambda x: gc.softmax(x, axis=1)), ("log_softmax", lambda x: gc.log_softmax(x)),
]


@pytest.mark.parametrize("name,f", SECOND_REDUCE, ids=[s[0] for s in SECOND_REDUCE])
def test_second_derivative_reductions(name, f, rng):
    (xv,) = _feeds(rng, N(2, 3, 4))
    with gc.Graph():
        x = gc.placeholder("x", (2, 3, 4), "float32")
        r = f(x)
        g = gc.grad(gc.sum(gc.tanh(r) * r), x)
        check_grads(g, x, {x: xv}, **GRAD_TOL)
        check_grads(gc.sum(g * g), x, {x: xv}, **GRAD_TOL)


@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((1, 3, 4), (2, 4, 5)),
                                   ((4,), (4, 5)), ((3, 4), (4,))])
def test_second_derivative_matmul(sa, sb, rng):
    av, bv = _feeds(rng, N(*sa), N(*sb))
    with gc.Graph():
        a = gc.placeholder("a", sa, "float32")
        b = gc.placeholder("b", sb, "float32")
        y = gc.sum(gc.tanh(a @ b))
        ga, gb = gc.grad(y, [a, b])
        check_grads(gc.sum(ga * ga) + gc.sum(gb * gb), [a, b], {a: av, b: bv}, **GRAD_TOL)
        check_grads(ga, b, {a: av, b: bv}, **GRAD_TOL)  # mixed second derivative


def test_second_derivative_shape_ops(rng):
    av, bv = _feeds(rng, N(2, 3), N(2, 2))
    with gc.Graph():
        a = gc.placeholder("a", (2, 3), "float32")
        b = gc.placeholder("b", (2, 2), "float32")
        c = gc.concat([a, b[:, ::-1]], axis=1)  # (2, 5)
        h = gc.broadcast_to(c.T.reshape(1, -1), (3, 10))[1:, None, 2:9:2]
        y = gc.sum(gc.exp(h) * gc.expand_dims(gc.mean(c, 1), 0)[..., :1, None])
        ga, gb = gc.grad(y, [a, b])
        check_grads(gc.sum(ga * ga) + gc.sum(gb * gb * gb), [a, b], {a: av, b: bv}, **GRAD_TOL)


LOSS2 = [
    ("softmax_cross_entropy", lambda x, t: gc.softmax_cross_entropy(x, t), "lab"),
    ("softmax_cross_entropy_sum", lambda x, t: gc.softmax_cross_entropy(x, t, reduction="sum"),
     "lab"),
    ("bce", lambda x, t: gc.binary_cross_entropy_with_logits(x, t), "u"),
    ("mse", lambda x, t: gc.mse_loss(gc.tanh(x), t), "n"),
    ("hinge", lambda x, t: gc.hinge_loss(x * x, t), "lab"),
    ("triplet", lambda x, t: gc.triplet_loss(x, t, x[::-1] * 0.5, margin=2.0), "n"),
    ("nll_loss", lambda x, t: gc.nll_loss(gc.log_softmax(x), t), "lab"),
    ("nll_loss_of_tanh", lambda x, t: gc.nll_loss(gc.tanh(x), t, reduction="sum"), "lab"),
]


@pytest.mark.parametrize("name,f,tk", LOSS2, ids=[s[0] for s in LOSS2])
def test_second_derivative_losses(name, f, tk, rng):
    (xv,) = _feeds(rng, N(5, 3))
    tv = sample(In((5,), "lab", 3) if tk == "lab" else In((5, 3), tk), rng, np.float64)
    with gc.Graph():
        x = gc.placeholder("x", (5, 3), "float32")
        t = gc.placeholder("t", tv.shape, tv.dtype if tk == "lab" else "float32")
        g = gc.grad(f(x, t), x)
        check_grads(g, x, {x: xv, t: tv}, **GRAD_TOL)
        check_grads(gc.sum(g * g), x, {x: xv, t: tv}, **GRAD_TOL)


def test_third_derivative_tanh(rng):
    xv = rng.normal(size=(4,))
    with gc.Graph():
        x = gc.placeholder("x", (4,), "float32")
        g1 = gc.grad(gc.sum(gc.tanh(x)), x)
        g2 = gc.grad(gc.sum(g1), x)
        check_grads(g2, x, {x: xv}, **GRAD_TOL)
        t = np.tanh(xv)
        got = gc.compile(gc.grad(gc.sum(g2), x))(x=xv.astype(np.float32))
        np.testing.assert_allclose(got, -2 * (1 - t ** 2) * (1 - 3 * t ** 2), rtol=1e-4, atol=1e-5)


# --- integer tensors ----------------------------------------------------------------------
def test_integer_ops():
    iv = np.array([[3, -1, 4], [-1, 5, -9]], np.int32)
    with gc.Graph():
        i = gc.placeholder("i", (2, 3), "int32")
        outs = [-i, gc.abs(i), i * 2, i + 1, i - i, gc.max(i, axis=1), gc.min(i), gc.sum(i, 0),
                gc.maximum(i, 0), i.T, i[:, ::-1], gc.reshape(i, (-1,)), i * 2.0, i / 2,
                gc.mean(i), gc.square(i)]
        got = gc.compile(outs)(i=iv)
    want = [-iv, np.abs(iv), iv * 2, iv + 1, iv * 0, iv.max(1), iv.min(), iv.sum(0),
            np.maximum(iv, 0), iv.T, iv[:, ::-1], iv.ravel(), (iv * 2.0).astype(np.float32),
            (iv / 2).astype(np.float32), np.float32(iv.mean()), iv * iv]
    for t, g, w in zip(outs, got, want):
        assert g.dtype == t.dtype
        np.testing.assert_array_equal(g, w)
    assert [t.dtype for t in outs[:6]] == [np.dtype(np.int32)] * 6
    assert outs[7].dtype == np.int64  # integer sums widen like NumPy's (and torch's)


# --- gradient conventions at kinks (torch's values) -------------------------------------------
def test_gradient_at_kinks():
    xv = np.array([-1.0, 0.0, 1.0])
    with gc.Graph():
        x = gc.placeholder("x", (3,), "float64")
        fs = [gc.relu, gc.abs, lambda v: gc.leaky_relu(v, 0.2), lambda v: gc.elu(v, alpha=0.7),
              lambda v: gc.maximum(v, 0.0), lambda v: gc.sqrt(v * v + 1.0)]
        got = gc.compile([gc.grad(gc.sum(f(x)), x) for f in fs])(x=xv)
    np.testing.assert_allclose(got[0], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(got[1], [-1.0, 0.0, 1.0])
    np.testing.assert_allclose(got[2], [0.2, 0.2, 1.0])
    np.testing.assert_allclose(got[3], [0.7 * np.exp(-1.0), 0.7, 1.0], rtol=1e-12)
    np.testing.assert_allclose(got[4], [0.0, 0.5, 1.0])
    np.testing.assert_allclose(got[5], xv / np.sqrt(xv * xv + 1), rtol=1e-12)


# --- unbound (None) dimensions: sizes bound per call, gradients by the run-time shapes -----------
_a, _b, _c = (np.random.default_rng(7).normal(size=s) for s in [(3, 4), (1, 4), (3, 1)])
DYNAMIC = [
    ("add_bcast_rows", lambda x, y: x + y, [(None, 4), (None, 4)], [_a, _b], lambda x, y: x + y),
    ("mul_bcast_both", lambda x, y: x * y, [(None, None), (None, None)], [_c, _b],
     lambda x, y: x * y),
    ("mean_axis0", lambda x: gc.mean(x, 0), [(None, 4)], [_a], lambda x: x.mean(0)),
    ("mean_all", gc.mean, [(None, None)], [_a], lambda x: x.mean()),
    ("max_axis1", lambda x: gc.max(x, 1), [(None, None)], [_a], lambda x: x.max(1)),
    ("logsumexp_axis0", lambda x: gc.logsumexp(x, 0), [(None, 4)], [_a],
     lambda x: np_logsumexp(x, 0)),
    ("softmax", gc.softmax, [(None, 4)], [_a], np_softmax),
    ("reshape", lambda x: gc.reshape(x, (-1, 2)), [(None, 4)], [_a], lambda x: x.reshape(-1, 2)),
    ("getitem", lambda x: x[1:, ::-1], [(None, 4)], [_a], lambda x: x[1:, ::-1]),
    ("transpose", lambda x: x.T, [(None, 4)], [_a], lambda x: x.T),
    ("matmul", gc.matmul, [(None, 4), (4, None)], [_a, _a.T], np_matmul),
    ("broadcast_to", lambda x: gc.broadcast_to(x, (2, 3, 4)), [(None, 4)], [_b],
     lambda x: x + np.zeros((2, 3, 4))),
    ("concat_axis1", lambda x, y: gc.concat([x, y], 1), [(None, 4), (None, 2)],
     [_a, _a[:, :2]], lambda x, y: np.hstack([x, y])),
    ("mse_loss", gc.mse_loss, [(None, 4), (None, 4)], [_a, 0.5 * _a[::-1]], np_mse),
    ("bce", lambda x: gc.binary_cross_entropy_with_logits(x, gc.sigmoid(x * 0.3)), [(None, 4)],
     [_a], lambda x: np_bce(x, np_sigmoid(0.3 * x))),
]


@pytest.mark.parametrize("name,build,shapes,feeds,ref", DYNAMIC, ids=[d[0] for d in DYNAMIC])
def test_unbound_dimensions(name, build, shapes, feeds, ref):
    with gc.Graph():
        phs = [gc.placeholder(f"x{i}", s, "float64") for i, s in enumerate(shapes)]
        y = build(*phs)
        feed = dict(zip(phs, feeds))
        np.testing.assert_allclose(gc.compile(y)(feed), ref(*feeds), rtol=1e-12, atol=1e-12)
        check_grads(y, phs, feed, **GRAD_TOL)
