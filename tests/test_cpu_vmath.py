"""The CPU backend's float32 exp / tanh / sigmoid for Numba loops (backends/cpu/vmath.py)
and the printing that uses them: accuracy over the whole float32 range against float64
NumPy, special values, and fused kernels (one loop, in stages, strided inputs, sums) that
agree with the NumPy printer."""
from __future__ import annotations

import numpy as np
import pytest

from graphc.backends.cpu import numba_printer

pytestmark = pytest.mark.skipif(not numba_printer.available(), reason="needs Numba")

F32 = np.float32
TINY = float(np.finfo(np.float32).tiny)
DENORMAL_STEP = 2.0 ** -149


@pytest.fixture(scope="module")
def vm():
    import numba

    from graphc.backends.cpu import vmath

    @numba.njit(error_model="numpy")
    def vexp(x, o):
        for i in range(x.size):
            o[i] = vmath.exp32(x[i])

    @numba.njit(error_model="numpy")
    def vtanh(x, o):
        for i in range(x.size):
            o[i] = vmath.tanh32(x[i])

    @numba.njit(error_model="numpy")
    def vsig(x, o):
        for i in range(x.size):
            o[i] = vmath.sigmoid32(x[i])

    def wrap(f):
        def call(x):
            x = np.ascontiguousarray(x, F32)
            o = np.empty_like(x)
            f(x, o)
            return o
        return call
    return {"exp": wrap(vexp), "tanh": wrap(vtanh), "sigmoid": wrap(vsig)}


def _sigmoid64(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


REFERENCE = {"exp": np.exp, "tanh": np.tanh, "sigmoid": _sigmoid64}
# max error in ulps (float32 spacing at the float64 result) where the result is a normal
# float
MAX_ULP = {"exp": 1.5, "tanh": 6.5, "sigmoid": 3.0}  # tanh: 5.3 measured with FMA, 6.2 without


def _samples() -> np.ndarray:
    """Every 997th float32 bit pattern (both signs: tiny, denormal, huge, +-inf, NaN) and a
    dense sweep of the ranges where the functions bend or saturate."""
    bits = np.arange(0, 2 ** 32, 997, dtype=np.uint64).astype(np.uint32)
    x = bits.view(F32)
    dense = np.concatenate([np.linspace(-110, 110, 400_001), np.linspace(-10, 10, 400_001),
                            np.linspace(-1, 1, 200_001), np.linspace(86, 89, 30_001),
                            np.linspace(-105, -86, 30_001)]).astype(F32)
    return np.concatenate([x, dense])


@pytest.mark.parametrize("name", ["exp", "tanh", "sigmoid"])
def test_error_over_the_whole_float32_range(vm, name):
    x = _samples()
    got = vm[name](x)
    with np.errstate(all="ignore"):
        ref = REFERENCE[name](x.astype(np.float64))
    nan = np.isnan(x)
    assert np.isnan(got[nan]).all()
    x, got, ref = x[~nan], got[~nan].astype(np.float64), ref[~nan]
    big = np.abs(ref) > float(np.finfo(F32).max)  # overflows float32: must be inf
    assert np.isposinf(got[big]).all()
    normal = ~big & (np.abs(ref) >= TINY)
    spacing = np.spacing(np.abs(ref[normal]).astype(F32)).astype(np.float64)
    ulps = np.abs(got[normal] - ref[normal]) / spacing
    assert ulps.max() <= MAX_ULP[name], (name, ulps.max(), x[normal][np.argmax(ulps)])
    denormal = ~big & ~normal  # results below the normal range: a few denormal steps
    if denormal.any():
        steps = np.abs(got[denormal] - ref[denormal]) / DENORMAL_STEP
        assert steps.max() <= 2.0, (name, steps.max())
    if name == "tanh":
        assert (np.abs(got) <= 1.0).all()


def test_special_values(vm):
    x = np.array([np.inf, -np.inf, 0.0, -0.0, 88.72, 88.73, 200.0, -103.9, -104.0, -1e3,
                  1e-30, -1e-40, 9.02, 30.0], F32)
    e, t, s = vm["exp"](x), vm["tanh"](x), vm["sigmoid"](x)
    assert e[0] == np.inf and e[1] == 0.0 and e[2] == 1.0 and e[3] == 1.0
    assert np.isfinite(e[4]) and e[5] == np.inf and e[6] == np.inf
    assert 0 < e[7] < TINY and e[8] == 0.0 and e[9] == 0.0
    assert t[0] == 1.0 and t[1] == -1.0 and t[2] == 0.0 and np.signbit(t[3])
    assert t[10] == F32(1e-30) and t[11] == F32(-1e-40)  # tiny x: tanh(x) = x, denormals too
    assert t[12] == 1.0 and t[13] == 1.0
    assert s[0] == 1.0 and s[1] == 0.0 and s[2] == 0.5 and s[9] == 0.0
    assert 0 < s[7] < TINY  # sigmoid(-103.9): a denormal, not 0
    nan = np.array([np.nan, -np.nan], F32)
    for f in vm.values():
        assert np.isnan(f(nan)).all()


def test_the_coefficients_are_the_fits_the_module_describes():
    from graphc.backends.cpu import vmath
    fits = vmath.fit_coefficients()
    for names, key in ((("E0", "E1", "E2", "E3", "E4"), "exp"),
                       (("P0", "P1", "P2", "P3", "P4"), "tanh_p"),
                       (("Q0", "Q1", "Q2", "Q3", "Q4"), "tanh_q")):
        assert [getattr(vmath, n) for n in names] == [F32(v) for v in fits[key]]


def _compile_pair(outputs, monkeypatch, feeds):
    """The same graph compiled with and without vmath (the NumPy printer for the groups
    with transcendental functions), and the kernels' sources of the first."""
    import graphc as gc
    monkeypatch.setattr(numba_printer, "MIN_ELEMENTS", 0)
    with_vmath = gc.compile(outputs)
    got = with_vmath(feeds)
    bound, run = next(iter(with_vmath._compiled.values()))[:2]
    sources = [v.source for k, v in run.__globals__.items()
               if k.startswith("F") and hasattr(v, "source")]
    monkeypatch.setattr(numba_printer, "VMATH", False)
    want = gc.compile(outputs)(feeds)
    monkeypatch.setattr(numba_printer, "VMATH", True)
    return got, want, sources


def test_float32_groups_print_vmath_and_agree_with_numpy(monkeypatch, rng):
    import graphc as gc
    x = gc.placeholder("x", (None, 300))
    b = gc.parameter("b", shape=(300,), init="normal", seed=1)
    y = gc.tanh(x + b) * gc.sigmoid(x) + gc.exp(x * 0.1)  # one function deep: one loop
    loss = gc.sum(y * y)
    feeds = {"x": rng.normal(size=(70, 300)).astype(np.float32)}
    got, want, sources = _compile_pair([y, loss, gc.grad(loss, x)], monkeypatch, feeds)
    assert any("tanh32(" in s and "bt" not in s for s in sources), sources
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-5)


def test_deep_chains_run_in_stages_and_agree_with_numpy(monkeypatch, rng):
    """A chain of dependent functions (and its gradient, with a sum) over a row length that
    is not a multiple of the block: each stage's loop covers the partial last block."""
    import graphc as gc
    monkeypatch.setattr(numba_printer, "STAGE_BLOCK", 64)
    x = gc.placeholder("x", (None, 150))
    y = gc.sigmoid(gc.tanh(gc.sigmoid(gc.tanh(x * 1.5) * 2.0 - 0.3) * 3.0) + 0.1)
    loss = gc.sum(y)
    feeds = {"x": rng.normal(size=(9, 150)).astype(np.float32)}
    got, want, sources = _compile_pair([y, loss, gc.grad(loss, x)], monkeypatch, feeds)
    assert any("for jb in range(0, n1, 64):" in s for s in sources), sources
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6)


def test_float64_and_other_transcendental_groups_keep_numpy(monkeypatch, rng):
    import graphc as gc
    x = gc.placeholder("x", (None, 40), dtype="float64")
    z = gc.placeholder("z", (None, 40))
    outs = [gc.tanh(x) * 2.0, gc.log(gc.sigmoid(z) + 1.0)]
    feeds = {"x": rng.normal(size=(8, 40)), "z": rng.normal(size=(8, 40)).astype(np.float32)}
    got, want, sources = _compile_pair(outs, monkeypatch, feeds)
    assert not any("vmath" in s for s in sources), sources
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6)


def test_nan_and_inf_pass_through_a_compiled_vmath_kernel(monkeypatch):
    import graphc as gc
    monkeypatch.setattr(numba_printer, "MIN_ELEMENTS", 0)
    x = gc.placeholder("x", (None, 5))
    fn = gc.compile([gc.tanh(x) + 0.0, gc.sigmoid(x) * 1.0, gc.exp(x) * 1.0])
    xv = np.array([[np.nan, np.inf, -np.inf, 0.0, 1.0]], np.float32)
    t, s, e = fn(x=xv)
    np.testing.assert_array_equal(t[0, 1:4], [1.0, -1.0, 0.0])
    np.testing.assert_array_equal(s[0, 1:3], [1.0, 0.0])
    np.testing.assert_array_equal(e[0, 1:4], [np.inf, 0.0, 1.0])
    assert np.isnan(t[0, 0]) and np.isnan(s[0, 0]) and np.isnan(e[0, 0])


def test_strided_inputs_read_through_flat_arrays(rng):
    """Column slices of a C-contiguous array and a zero-stride broadcast, read through flat
    views of the memory they span: the same values as the views themselves."""
    from graphc.ops.registry import get_op
    from graphc.schedule.expr import FusedExpr, Instr
    parent = rng.normal(size=(6, 40)).astype(np.float32)
    a, b = parent[:, 0:10], parent[:, 25:35]  # strided views of one parent
    c = np.broadcast_to(np.float32(0.5), (6, 10))  # all strides 0
    shape = (6, 10)
    ops = [("mul", [("in", 0), ("in", 1)]), ("add", [("v", 0), ("in", 2)]),
           ("tanh", [("v", 1)])]
    instrs = [Instr(op, {}, args, np.dtype(np.float32), get_op(op).reference, get_op(op))
              for op, args in ops]
    expr = FusedExpr(shape, [(0, shape), (1, shape), (2, shape)], instrs, [(3, 2)])
    strided, groups, places = numba_printer.strided_inputs(expr, [a, b, c])
    assert set(strided) == {0, 1, 2} and len(groups) == 2
    assert all(g.flags.c_contiguous and g.ndim == 1 for g in groups)
    kernel = numba_printer.compile_numba(expr, inputs=[a, b, c])
    assert "g0[" in kernel.source and "i0" not in kernel.source.split("def kernel")[1]
    out = np.empty(shape, np.float32)
    kernel(a, b, c, out)
    np.testing.assert_allclose(out, np.tanh(a * b + 0.5), rtol=1e-6, atol=1e-6)


def test_a_staged_update_written_over_its_input_reads_the_old_values(monkeypatch, rng):
    """An update written in place over the parameter it reads in several stages: the
    store comes after every stage has read the old value."""
    import graphc as gc
    monkeypatch.setattr(numba_printer, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(numba_printer, "STAGE_BLOCK", 128)
    start = rng.normal(size=(5, 300)).astype(np.float32)
    results = []
    for vmath in (True, False):
        monkeypatch.setattr(numba_printer, "VMATH", vmath)
        w = gc.parameter(f"w{int(vmath)}", value=start.copy())
        step = gc.sigmoid(gc.tanh(gc.sigmoid(gc.tanh(w * 2.0) + w) * 1.5) - w)
        fn = gc.compile([gc.sum(w * 1.0)], updates={w: w - 0.1 * step + w * w})
        for _ in range(3):
            fn()
        results.append(w.value.copy())
        if vmath:
            bound, run = next(iter(fn._compiled.values()))[:2]
            sources = [v.source for k, v in run.__globals__.items()
                       if k.startswith("F") and hasattr(v, "source")]
            assert any("for jb in range(0, n1, 128):" in s for s in sources), sources
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
