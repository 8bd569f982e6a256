"""float32 exp, tanh and sigmoid for the generated Numba loops (CPU backend): branch-free
scalar functions that LLVM inlines and vectorizes, so a fused group holding them runs as one
loop nest instead of a chain of NumPy passes (Numba's own math.exp / math.tanh are libm
calls, which keep a loop scalar).

Every function is `inline='always'` (Numba inlines it into the kernel before LLVM sees the
loop) and has no branch that LLVM could not turn into a select: both sides are computed and
one is kept. Errors against float64 NumPy (measured over every 61st float32 bit pattern,
both signs, with denormals, +-inf and NaN; tests/test_cpu_vmath.py checks every 997th and
dense sweeps): exp at most 1.0 ulp, tanh at most 5.3 ulp (mean 0.04; the two polynomials'
rounding, 3.4 ulp within [-1, 1]), sigmoid at most 2.7 ulp, wherever the result is a normal
float; results in the denormal range (exp and sigmoid below x = -87.3) within one denormal
step. NaN propagates; exp(+inf) = inf, exp(x > 88.72) = inf, exp(-inf) = 0,
tanh(+-inf) = +-1, |tanh| <= 1, sigmoid(+inf) = 1, sigmoid(-inf) = 0, tanh(-0.0) = -0.0.
In-cache speed on the machine they were written on (AVX-512, one core): exp 0.23 ns per
element (np.exp 0.53), tanh 0.19-0.29 (np.tanh 0.19-0.25), sigmoid 0.30 (NumPy's
tanh-based four passes 0.37-0.54).

- exp(x): n = round(x / ln 2) (by adding and subtracting 1.5 * 2^23: no integer
  conversion, so NaN flows through), r = x - n ln 2 in two parts (Cody-Waite: n * LN2_HI
  is exact), exp(r) = 1 + r + r^2 R(r) with R of degree 4, times 2^n built as two powers
  of two (each exponent field within the normal range), so exp(88.7) is finite, exp(89)
  is inf and results down to the denormals come out of two scalings.
- tanh(x): x P(x^2) / Q(x^2), P and Q of degree 4, on x clamped to [-CLAMP, CLAMP] (float32
  tanh is +-1 beyond 9.02); odd, so tanh(-0.0) = -0.0 and tiny x give x.
- sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|) (never overflows:
  results down into the denormals are right).
Polynomials are evaluated with LLVM's fmuladd (one rounding per step where the CPU has an
FMA).

The coefficients are our own fits (fit_coefficients() below recomputes them with NumPy's
Chebyshev tools and weighted least squares on the relative error). The kernel printer names
VERSION in every source that calls these, so a change here changes the kernels' cache keys
(Numba's cache does not know a kernel inlined them)."""
from __future__ import annotations

import hashlib

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

f32 = np.float32


def _bitcast(src, dst, doc: str):
    """An intrinsic reinterpreting a `src` scalar's bits as a `dst` (an LLVM bitcast: one
    register move)."""
    @intrinsic
    def cast(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(dst))
        return dst(src), codegen
    cast.__doc__ = doc
    return cast


_bits_to_float = _bitcast(types.int32, types.float32, "The float32 whose bit pattern is i.")
_float_to_bits = _bitcast(types.float32, types.int32, "The int32 bit pattern of x.")


@intrinsic
def _fma(typingctx, a, b, c):
    """a * b + c as LLVM's fmuladd: one fused multiply-add where the target has one (a
    single rounding), a multiply and an add elsewhere; vectorizes either way."""
    sig = types.float32(types.float32, types.float32, types.float32)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(types.float32)
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [ty],
                                              ir.FunctionType(ty, [ty, ty, ty]))
        return builder.call(fn, args)
    return sig, codegen


@intrinsic
def sum_add(typingctx, acc, x):
    """acc + x (acc float64, x a float converted to float64) as an add LLVM may reassociate:
    a loop summing into a local with it is a reduction LLVM vectorizes (lanes of partial
    sums, added up after the loop); a plain add keeps such a loop scalar, one add per
    element waiting for the previous one."""
    if not isinstance(x, types.Float):
        return None
    sig = types.float64(types.float64, x)

    def codegen(context, builder, signature, args):
        a, b = args
        if signature.args[1] != types.float64:
            b = builder.fpext(b, context.get_value_type(types.float64))
        add = builder.fadd(a, b)
        add.flags.append("reassoc")
        return add
    return sig, codegen


# exp: r in [-ln2/2, ln2/2]; exp(r) = 1 + r + r^2 (E0 + E1 r + ... + E4 r^4)
E0 = f32(0.49999993451668545)
E1 = f32(0.16666520689432385)
E2 = f32(0.04166838736847321)
E3 = f32(0.008368709867094145)
E4 = f32(0.001381461300284497)
LOG2E = f32(1.4426950408889634)
LN2_HI = f32(0.693359375)  # 9 significant bits: n * LN2_HI is exact for |n| < 2^15
LN2_LO = f32(-2.1219444005469057e-4)  # ln 2 - LN2_HI
EXP_HI = f32(89.0)  # exp(89) overflows float32: any x above gives inf through the scaling
EXP_LO = f32(-105.0)  # exp(-105) is below half the smallest denormal: 0
HALF = f32(0.5)
ONE = f32(1.0)
ZERO = f32(0.0)
BIAS = np.int32(127)
SHIFT = f32(12582912.0)  # 1.5 * 2^23: t = v + SHIFT rounds v to an integer in t's mantissa
SHIFT_BITS = np.int32(0x4B400000)  # SHIFT's bit pattern

# tanh(x) = x P(s) / Q(s), s = x^2, |x| <= TANH_CLAMP
P0 = f32(1.0)
P1 = f32(0.133744574135688)
P2 = f32(0.0034877896278918148)
P3 = f32(2.0480837658608896e-05)
P4 = f32(1.3177056099999468e-08)
Q0 = f32(1.0000000227689156)
Q1 = f32(0.4670777196356505)
Q2 = f32(0.025847307382307526)
Q3 = f32(0.00032728852175811237)
Q4 = f32(7.703851108632839e-07)
TANH_CLAMP = f32(9.1)


@numba.njit(inline='always', error_model='numpy')
def exp32(x):
    # NaN-propagating clamp; NaN then stays NaN through every step (no integer conversion:
    # n's bits come from the float t itself)
    c = EXP_HI if x > EXP_HI else x
    c = EXP_LO if c < EXP_LO else c
    t = _fma(c, LOG2E, SHIFT)  # rounds c / ln 2 to an integer n, held in t's low bits
    n = t - SHIFT
    r = _fma(n, -LN2_HI, c)  # exact
    r = _fma(n, -LN2_LO, r)
    p = E4
    p = _fma(p, r, E3)
    p = _fma(p, r, E2)
    p = _fma(p, r, E1)
    p = _fma(p, r, E0)
    y = _fma(r * r, p, r) + ONE
    k = _float_to_bits(t) - SHIFT_BITS  # n, in [-152, 129]
    h = k >> 1  # floor(n / 2): both halves' biased exponents stay in [51, 192]
    y = y * _bits_to_float((h + BIAS) << 23)
    return y * _bits_to_float((k - h + BIAS) << 23)


@numba.njit(inline='always', error_model='numpy')
def tanh32(x):
    # NaN-propagating clamp (a comparison with NaN is false: NaN stays)
    c = TANH_CLAMP if x > TANH_CLAMP else x
    c = -TANH_CLAMP if c < -TANH_CLAMP else c
    s = c * c
    p = P4
    p = _fma(p, s, P3)
    p = _fma(p, s, P2)
    p = _fma(p, s, P1)
    p = _fma(p, s, P0)
    q = Q4
    q = _fma(q, s, Q3)
    q = _fma(q, s, Q2)
    q = _fma(q, s, Q1)
    q = _fma(q, s, Q0)
    y = (c * p) / q
    y = ONE if y > ONE else y  # |tanh| <= 1 whatever the rounding near the clamp
    return -ONE if y < -ONE else y


@numba.njit(inline='always', error_model='numpy')
def sigmoid32(x):
    # e = exp(-|x|) never overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below, so results
    # down into the denormals (x to -103) come out right, and NaN stays NaN
    e = exp32(-abs(x))
    d = ONE / (ONE + e)
    return d if x >= ZERO else e * d


def _version() -> str:
    with open(__file__, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


VERSION = _version()

# the op -> the function name a kernel source imports for float32 groups
FUNCTIONS = {"exp": "exp32", "tanh": "tanh32", "sigmoid": "sigmoid32"}
# what such a source imports
NAMES = (*FUNCTIONS.values(), "sum_add")


def fit_coefficients() -> dict:
    """Recompute the polynomial and rational coefficients above (float64), minimizing the
    maximum relative error by iteratively reweighted least squares (Lawson) in a Chebyshev
    basis: {'exp': [E0..E4], 'tanh_p': [P0..P4], 'tanh_q': [Q0..Q4]}."""
    from numpy.polynomial import chebyshev as C
    from numpy.polynomial import polynomial as Pm

    def lawson(solve, iters=200):
        w, best = None, None
        for _ in range(iters):
            err, coefs = solve(w)
            if best is None or err.max() < best[0]:
                best = (err.max(), coefs)
            w = err / err.mean() if w is None else w * err / (w * err).mean()
        return best[1]

    # exp: (exp(r) - 1 - r) / r^2 on [-ln2/2, ln2/2]
    a = np.log(2) / 2
    r = np.cos(np.linspace(np.pi, 0, 20001)) * a
    r = r[np.abs(r) > 1e-5]
    vr = C.chebvander(r / a, 4)
    target = (np.exp(r) - 1 - r) / r ** 2

    def solve_exp(w):
        wt = (np.ones_like(r) if w is None else np.sqrt(w)) * r ** 2 / np.exp(r)
        c = np.linalg.lstsq(vr * wt[:, None], target * wt, rcond=None)[0]
        return np.abs((1 + r + r ** 2 * (vr @ c)) / np.exp(r) - 1), c
    e = C.cheb2poly(lawson(solve_exp)) / a ** np.arange(5)

    # tanh(x) / x = P(s) / Q(s), s = x^2 on [0, 9.1], in t = 2 s / 9.1^2 - 1
    b = float(TANH_CLAMP)
    x = np.unique(np.cos(np.linspace(np.pi, 0, 40000)) * b / 2 + b / 2)
    x = x[x > 1e-4]
    t = 2 * x * x / (b * b) - 1
    f = np.tanh(x) / x
    vt = C.chebvander(t, 4)
    state = {"q": np.ones_like(x)}

    def solve_tanh(w):
        wt = (np.ones_like(x) if w is None else np.sqrt(w)) / (f * np.abs(state["q"]))
        m = np.concatenate([vt, -(f[:, None] * vt[:, 1:])], axis=1)
        c = np.linalg.lstsq(m * wt[:, None], f * wt, rcond=None)[0]
        p, q = c[:5], np.concatenate([[1.0], c[5:]])
        state["q"] = vt @ q
        return np.abs((vt @ p) / state["q"] / f - 1), (p, q)
    p, q = lawson(solve_tanh)

    def in_s(cs):  # a polynomial in t = k s - 1 as one in s
        out = np.zeros(len(cs))
        for i, ci in enumerate(C.cheb2poly(cs)):
            out[:i + 1] += ci * Pm.polypow([-1, 2 / (b * b)], i)
        return out
    ps, qs = in_s(p), in_s(q)
    return {"exp": list(e), "tanh_p": list(ps / ps[0]), "tanh_q": list(qs / ps[0])}
