"""The hand-written Numba CUDA kernels of graphc.kernels against the registry ops' NumPy
references: kernel tests run in Numba's simulator (NUMBA_ENABLE_CUDASIM=1) or on a device,
on tiny shapes in float32 and float64 with the edge cases each op has (ties, -inf, NaN,
large logits, labels at both ends); PTX tests compile every kernel for sm_90 and sm_80
without a device."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from graphc.ops.random import _random_uniform
from graphc.ops.registry import all_ops, get_op

from cuda_env import needs_cuda, needs_ptx

FLOATS = (np.float32, np.float64)
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
# launch shapes that exercise one lane per row, several rows per block and grid-stride loops
LAUNCHES = {"default": None, "one-lane": lambda n: (3, 1), "wide": lambda n: (1, 64)}


def reference(name, *args, **attrs):
    with np.errstate(all="ignore"):
        return np.asarray(get_op(name).reference(*args, **attrs))


def assert_close(got, want, dtype, scale=1.0):
    """Within the dtype's relative tolerance (absolute: tolerance * scale); NaN matches NaN."""
    tol = TOL[np.dtype(dtype)]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, equal_nan=True)


@pytest.fixture(scope="module")
def kernels():
    import graphc.kernels
    return graphc.kernels.cuda_kernels()[0]


@pytest.fixture(scope="module")
def pairs():
    import graphc.kernels
    return graphc.kernels.cuda_kernels()[1]


def run_op(kernels, name, *args, out_like=None, launch=None, **attrs):
    """Run the op's kernel into a fresh output shaped and typed like the reference."""
    want = reference(name, *args, **attrs) if out_like is None else out_like
    out = np.full(want.shape, 7, want.dtype)  # garbage the kernel must overwrite
    data = [a for a in args if not isinstance(a, tuple)]
    kernels[name](*data, out=out, launch=launch, **attrs)
    return out, want


# --- the package ---------------------------------------------------------------------------
def test_importing_the_package_does_not_import_numba_cuda():
    code = "import sys, graphc, graphc.kernels; sys.exit('numba.cuda' in sys.modules)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


@needs_cuda
def test_tables_name_registered_ops(kernels, pairs):
    ops = all_ops()
    assert {"softmax_cross_entropy", "softmax", "sum", "argmax", "random_uniform",
            "embedding_grad", "max_pool2d_grad"} <= set(kernels)
    assert set(kernels) <= set(ops)
    assert all(a in ops and b in ops for a, b in pairs)
    import graphc.kernels
    assert graphc.kernels.CUDA_KERNELS is kernels and graphc.kernels.CUDA_PAIRS is pairs


@needs_cuda
@pytest.mark.parametrize("shape", [(1, 0), (1, 3), (0, 32), (1, 1024), (1, 48)])
def test_bad_launch_shapes_are_refused(kernels, shape):
    x = np.zeros((2, 3))
    if shape == (1, 1024):
        out = np.empty(2)
        kernels["sum"](x, out=out, axes=(1,), launch=lambda n: shape)
        np.testing.assert_array_equal(out, 0.0)
        return
    with pytest.raises(ValueError, match="launch shape"):
        kernels["sum"](x, out=np.empty(2), axes=(1,), launch=lambda n: shape)


# --- softmax cross-entropy -----------------------------------------------------------------
def _sce_cases(dtype):
    """(logits, labels) pairs: random, all-equal rows, large logits, -inf, labels at 0 and
    C-1, one class, more classes than lanes."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(6, 5)).astype(dtype) * 3
    x[1] = 2.5  # all equal
    x[2] = [1e4, 0.0, -1e4, 1e4 - 1, 5.0]  # large logits
    x[3, [0, 2]] = -np.inf  # -inf away from the label
    x[4, 4] = -np.inf  # -inf at the label: loss +inf
    yield x, np.array([0, 4, 3, 4, 4, 1], np.int64)
    yield rng.normal(size=(9, 70)).astype(dtype), rng.integers(0, 70, 9).astype(np.int32)
    yield rng.normal(size=(4, 1)).astype(dtype), np.zeros(4, np.int64)
    big = rng.normal(size=(3, 3)).astype(dtype) * 50
    yield big, np.array([2, 0, 2], np.int64)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_softmax_cross_entropy_forward(kernels, dtype, launch):
    for x, labels in _sce_cases(dtype):
        got, want = run_op(kernels, "softmax_cross_entropy", x, labels,
                           launch=LAUNCHES[launch])
        assert_close(got, want, dtype, scale=np.log(x.shape[1]) + 1)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_softmax_cross_entropy_backward(kernels, dtype, launch):
    rng = np.random.default_rng(6)
    for x, labels in _sce_cases(dtype):
        g = rng.normal(size=x.shape[0]).astype(dtype)
        got, want = run_op(kernels, "softmax_cross_entropy_backward", g, x, labels,
                           launch=LAUNCHES[launch])
        assert_close(got, want, dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_softmax_cross_entropy_pair_equals_both_references(pairs, dtype):
    pair = pairs["softmax_cross_entropy", "softmax_cross_entropy_backward"]
    rng = np.random.default_rng(7)
    for x, labels in _sce_cases(dtype):
        g = rng.normal(size=x.shape[0]).astype(dtype)
        loss = np.full(x.shape[0], 7, dtype)
        grad = np.full(x.shape, 7, dtype)
        pair(x, labels, g, loss, grad)
        assert_close(loss, reference("softmax_cross_entropy", x, labels), dtype,
                     scale=np.log(x.shape[1]) + 1)
        assert_close(grad, reference("softmax_cross_entropy_backward", g, x, labels), dtype)


@needs_cuda
def test_softmax_cross_entropy_broadcast_gradient_and_strided_logits(pairs, kernels):
    """A scalar or stride-0 upstream gradient (reduction="mean"), and transposed logits."""
    rng = np.random.default_rng(8)
    x = np.ascontiguousarray(rng.normal(size=(5, 4))).T  # (4, 5), not C-contiguous
    labels = np.array([0, 4, 2, 1])
    for g in (np.array(0.25), np.broadcast_to(np.array(0.25), (4,))):
        loss, grad = np.empty(4), np.empty((4, 5))
        pairs["softmax_cross_entropy", "softmax_cross_entropy_backward"](x, labels, g, loss,
                                                                           grad)
        full = np.full(4, 0.25)
        assert_close(grad, reference("softmax_cross_entropy_backward", full, x, labels),
                     np.float64)
        assert_close(loss, reference("softmax_cross_entropy", x, labels), np.float64)
        out = np.empty((4, 5))
        kernels["softmax_cross_entropy_backward"](g, x, labels, out=out)
        assert_close(out, grad, np.float64)


@needs_cuda
def test_softmax_cross_entropy_non_finite_rows_are_nan(kernels):
    x = np.array([[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0], [-np.inf] * 3, [0.0, 1.0, 2.0]])
    labels = np.array([1, 2, 0, 2])
    got, want = run_op(kernels, "softmax_cross_entropy", x, labels)
    assert np.isnan(got[:3]).all() and np.isfinite(got[3])
    assert_close(got, want, np.float64)
    g = np.ones(4)
    got, want = run_op(kernels, "softmax_cross_entropy_backward", g, x, labels)
    assert np.isnan(got[:3]).all() and np.isfinite(got[3]).all()
    assert_close(got, want, np.float64)


# --- softmax, log_softmax ------------------------------------------------------------------
def _softmax_inputs(dtype):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(3, 4, 5)).astype(dtype) * 4
    x[0, 1] = 1e4  # an all-equal, large row along the last axis
    x[1, :, 2] = -np.inf  # a row of -inf along axis 1 (NaN) and -inf entries elsewhere
    x[2, 0, 0] = -np.inf
    return x


@needs_cuda
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_family_along_an_axis(kernels, name, dtype, axis):
    x = _softmax_inputs(dtype)
    got, want = run_op(kernels, name, x, axis=axis)
    assert_close(got, want, dtype, scale=10)


@needs_cuda
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_softmax_family_rows_and_launch_shapes(kernels, name, launch):
    rng = np.random.default_rng(10)
    for x in (rng.normal(size=(7, 45)), rng.normal(size=(6,)), np.zeros((2, 1))):
        got, want = run_op(kernels, name, x, axis=-1, launch=LAUNCHES[launch])
        assert_close(got, want, np.float64, scale=10)


@needs_cuda
def test_softmax_falls_back_to_the_reference_for_other_dtypes(kernels):
    x = np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)
    got, want = run_op(kernels, "softmax", x, axis=1)
    np.testing.assert_array_equal(got, want)


# --- reductions ----------------------------------------------------------------------------
AXES = [(0,), (1,), (2,), (0, 2), (1, 2), (0, 1, 2)]


def _reduction_input(dtype, rng):
    if np.dtype(dtype).kind == "f":
        x = rng.normal(size=(3, 4, 5)).astype(dtype)
        x[0, 0, 0] = np.inf
        x[2, 1] = -np.inf
        return x
    if dtype is bool:
        return rng.integers(0, 2, size=(3, 4, 5)).astype(bool)
    return rng.integers(-9, 9, size=(3, 4, 5)).astype(dtype)


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, bool])
@pytest.mark.parametrize("name", ["sum", "mean", "max", "min"])
def test_reductions_over_axes(kernels, dtype, name):
    if name == "mean" and np.dtype(dtype).kind != "f":
        pytest.skip("the graph casts mean's integer inputs to float first")
    rng = np.random.default_rng(11)
    x = _reduction_input(dtype, rng)
    for axes in AXES:
        for keepdims in (False, True):
            got, want = run_op(kernels, name, x, axes=axes, keepdims=keepdims)
            if np.dtype(dtype).kind == "f":
                finite = np.where(np.isfinite(x), x, 0)
                assert_close(got, want, dtype, scale=np.abs(finite).sum())
            else:
                np.testing.assert_array_equal(got, want)
                assert got.dtype == want.dtype


@needs_cuda
@pytest.mark.parametrize("name", ["max", "min"])
def test_max_min_propagate_nan(kernels, name):
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    x[1, 3] = np.nan
    for axes in [(0,), (1,), (0, 1)]:
        got, want = run_op(kernels, name, x, axes=axes, keepdims=False)
        np.testing.assert_array_equal(got, want)


@needs_cuda
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_reductions_of_views_and_many_axis_runs(kernels, launch):
    """A transposed view (strides that do not merge), four axes in two reduced runs, and
    three separate reduced runs (the contiguous-copy path)."""
    rng = np.random.default_rng(12)
    cases = [(rng.normal(size=(4, 3, 5)).transpose(2, 0, 1), (0, 2)),
             (rng.normal(size=(2, 3, 4, 5)), (0, 2, 3)),
             (rng.normal(size=(2, 3, 2, 3, 2)), (0, 2, 4)),
             (np.broadcast_to(rng.normal(size=(1, 5)), (4, 5)), (0,)),
             (np.array(2.5), ())]
    for x, axes in cases:
        for name in ("sum", "max", "logsumexp"):
            got, want = run_op(kernels, name, x, axes=axes, keepdims=False,
                               launch=LAUNCHES[launch])
            assert_close(got, want, np.float64, scale=np.abs(x).sum() + 1)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_logsumexp_over_axes(kernels, dtype):
    rng = np.random.default_rng(13)
    x = rng.normal(size=(3, 4, 5)).astype(dtype) * 3
    x[0, 0] = 1e4
    x[1, :, 1] = -np.inf  # a row of -inf along axis 1: -inf
    x[2, 2, 2] = -np.inf
    for axes in AXES:
        for keepdims in (False, True):
            got, want = run_op(kernels, "logsumexp", x, axes=axes, keepdims=keepdims)
            assert_close(got, want, dtype, scale=10)


@needs_cuda
def test_logsumexp_of_non_finite_rows(kernels):
    x = np.array([[np.inf, 1.0], [-np.inf, -np.inf], [np.nan, 1.0], [np.inf, -np.inf],
                  [-np.inf, 3.0]])
    got, want = run_op(kernels, "logsumexp", x, axes=(1,), keepdims=False)
    np.testing.assert_array_equal(got, want)


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_argmax_first_maximum(kernels, dtype):
    rng = np.random.default_rng(14)
    x = rng.integers(0, 3, size=(3, 12, 4)).astype(dtype)  # many ties
    x[1] = 2  # all equal
    if np.dtype(dtype).kind == "f":
        x[0, 7:, 1] = -np.inf
        x[2, 3, 3] = x[2, 9, 3] = np.nan  # the first NaN wins
        x[2, 10, 0] = np.nan
    cases = [(axis, None) for axis in (0, 2, -1)] + [(1, launch) for launch in LAUNCHES.values()]
    for axis, launch in cases:
        got, want = run_op(kernels, "argmax", x, axis=axis, launch=launch)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int64


# --- random_uniform ------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_random_uniform_is_bit_equal_to_the_cpu(kernels, dtype):
    seeds = [0, 1, 0x632BE59BD9B4E019, 2**63 - 1, 3 * 0x632BE59BD9B4E019 & (2**63 - 1)]
    counters = [0, 1, 12345, 2**40 + 7]
    shapes = [(), (1,), (7,), (3, 5), (2, 3, 4)]
    for k, seed in enumerate(seeds):
        for j, counter in enumerate(counters):
            shape = shapes[(k + j) % len(shapes)]
            want = _random_uniform(np.int64(counter), shape, seed, np.dtype(dtype).name)
            forms = [np.array(counter, np.int64), counter]  # a device scalar, a Python int
            if counter < 2**31:
                forms.append(np.array([counter], np.int32))
            for c in forms:
                out = np.full(shape, 7, dtype)
                kernels["random_uniform"](c, out=out, seed=seed, dtype=np.dtype(dtype).name)
                np.testing.assert_array_equal(out, want)
            assert ((out >= 0) & (out < 1)).all()


@needs_cuda
def test_random_uniform_grid_stride_and_fresh_counters(kernels):
    out = np.empty(300, np.float32)
    kernels["random_uniform"](np.array(4), out=out, seed=99, launch=lambda n: (1, 8))
    np.testing.assert_array_equal(out, _random_uniform(4, (300,), 99, "float32"))
    again = np.empty(300, np.float32)
    kernels["random_uniform"](np.array(5), out=again, seed=99)
    assert not np.array_equal(out, again)


# --- embedding -----------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("id_dtype", [np.int32, np.int64])
def test_embedding_gathers_rows(kernels, dtype, id_dtype):
    rng = np.random.default_rng(15)
    w = rng.normal(size=(6, 5)).astype(dtype)
    for ids in (np.array([0, 5, 2, 2]), np.array([[1, 0, 5], [5, 5, 3]]), np.array(4)):
        got, want = run_op(kernels, "embedding", w, ids.astype(id_dtype))
        np.testing.assert_array_equal(got, want)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_embedding_grad_scatter_adds(kernels, dtype, launch):
    """Repeated indices sum (atomics: any order, so within the dtype's tolerance)."""
    rng = np.random.default_rng(16)
    ids = np.array([[1, 0, 5], [5, 5, 3], [1, 1, 1]])
    g = rng.normal(size=ids.shape + (4,)).astype(dtype)
    want = reference("embedding_grad", g, ids, (7, 4))
    out = np.full((7, 4), 7, dtype)  # row 2, 4 and 6 get no gradient: zeroed
    kernels["embedding_grad"](g, ids, out=out, launch=LAUNCHES[launch])
    assert_close(out, want, dtype, scale=np.abs(g).sum())
    np.testing.assert_array_equal(out[[2, 4, 6]], 0)


# --- pooling -------------------------------------------------------------------------------
POOLS = [dict(kernel=(2, 2), stride=(2, 2), padding=(0, 0)),
         dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1)),
         dict(kernel=(3, 2), stride=(2, 1), padding=(1, 0))]


def _pool_input(dtype, ties: bool):
    rng = np.random.default_rng(17)
    if ties:  # few distinct values: ties in almost every window
        return rng.integers(0, 3, size=(2, 2, 5, 6)).astype(dtype)
    x = rng.normal(size=(2, 2, 5, 6)).astype(dtype)
    x[0, 1, 2, 3] = np.nan
    x[1, 0, 0] = -np.inf
    return x


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool2d_and_its_gradients(kernels, dtype, ties):
    x = _pool_input(dtype, ties)
    rng = np.random.default_rng(18)
    for attrs in POOLS:
        got, want = run_op(kernels, "max_pool2d", x, **attrs)
        np.testing.assert_array_equal(got, want)
        gy = rng.normal(size=want.shape).astype(dtype)
        got, want = run_op(kernels, "max_pool2d_grad", gy, x, **attrs)
        assert_close(got, want, dtype, scale=np.abs(gy).sum())  # first-maximum tie rule
        gx = rng.normal(size=x.shape).astype(dtype)
        got, want = run_op(kernels, "max_pool2d_gather", gx, x, **attrs)
        np.testing.assert_array_equal(got, want)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_avg_pool2d_and_its_gradient(kernels, dtype):
    x = _pool_input(dtype, ties=False)
    x = np.where(np.isfinite(x), x, 0.5).astype(dtype)
    rng = np.random.default_rng(19)
    for attrs in POOLS:
        got, want = run_op(kernels, "avg_pool2d", x, **attrs)
        assert_close(got, want, dtype)
        gy = rng.normal(size=want.shape).astype(dtype)
        got, want = run_op(kernels, "avg_pool2d_grad", gy, x.shape, **attrs)
        assert_close(got, want, dtype)


# --- PTX -----------------------------------------------------------------------------------
def _ptx_cases():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return [None]
    try:
        import graphc.kernels
        return sorted(graphc.kernels.ptx_sources())
    except Exception:  # noqa: BLE001 - numba.cuda absent: the test skips
        return [None]


@needs_ptx
def test_every_kernel_has_ptx_sources():
    import graphc.kernels
    sources = graphc.kernels.PTX_SOURCES
    assert len(sources) >= 20 and all(callable(fn) and sigs for fn, sigs in sources.values())


@needs_ptx
@pytest.mark.parametrize("name", _ptx_cases())
@pytest.mark.parametrize("cc", [(9, 0), (8, 0)])
def test_kernel_compiles_to_ptx(name, cc):
    from numba import cuda

    import graphc.kernels
    fn, sigs = graphc.kernels.PTX_SOURCES[name]
    for sig in sigs:
        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx


# --- conv2d: im2col / col2im around GEMMs --------------------------------------------------
@pytest.fixture
def no_fallback(monkeypatch):
    """The kernels must run: a call of the reference fallback fails the test."""
    def refuse(op, *arrays, out, **attrs):
        raise AssertionError(f"{op} fell back to its reference")
    monkeypatch.setattr("graphc.kernels._cuda.reference_into", refuse)


# (x shape, w shape, attributes): every attribute alone and together, N = 1 (the GEMM writes
# the output directly), groups 2 and depthwise, a 1x1 kernel, a kernel as large as the input
CONVS = [((2, 3, 5, 6), (4, 3, 3, 3), dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                                           groups=1)),
         ((1, 4, 7, 5), (6, 2, 3, 2), dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2),
                                           groups=2)),
         ((3, 4, 6, 6), (4, 1, 2, 3), dict(stride=(1, 2), padding=(0, 1), dilation=(2, 1),
                                           groups=4)),
         ((2, 2, 4, 5), (3, 2, 1, 1), dict(stride=(2, 2), padding=(0, 0), dilation=(1, 1),
                                           groups=1)),
         ((2, 3, 5, 5), (2, 3, 5, 5), dict(stride=(3, 3), padding=(1, 1), dilation=(1, 1),
                                           groups=1))]


def _conv_scale(name, a, b, *shape, **attrs):
    """The largest output of the op on |a|, |b|: what rounding is relative to."""
    return float(reference(name, np.abs(a), np.abs(b), *shape, **attrs).max()) + 1.0


def _conv_case(dtype, case, rng):
    x_shape, w_shape, attrs = CONVS[case]
    x = rng.normal(size=x_shape).astype(dtype)
    w = rng.normal(size=w_shape).astype(dtype)
    gy = rng.normal(size=reference("conv2d", x, w, **attrs).shape).astype(dtype)
    return x, w, gy, attrs


def _check_conv(kernels, x, w, gy, attrs, dtype, launch=None, **kw):
    got, want = run_op(kernels, "conv2d", x, w, launch=launch, **attrs, **kw)
    assert_close(got, want, dtype, scale=_conv_scale("conv2d", x, w, **attrs))
    got, want = run_op(kernels, "conv2d_input_grad", gy, w, tuple(x.shape), launch=launch,
                       **attrs, **kw)
    assert_close(got, want, dtype,
                 scale=_conv_scale("conv2d_input_grad", gy, w, tuple(x.shape), **attrs))
    got, want = run_op(kernels, "conv2d_weight_grad", x, gy, tuple(w.shape), launch=launch,
                       **attrs, **kw)
    assert_close(got, want, dtype,
                 scale=_conv_scale("conv2d_weight_grad", x, gy, tuple(w.shape), **attrs))


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("case", range(len(CONVS)))
def test_conv2d_and_its_gradients(no_fallback, kernels, dtype, case):
    x, w, gy, attrs = _conv_case(dtype, case, np.random.default_rng(20 + case))
    _check_conv(kernels, x, w, gy, attrs, dtype)


@needs_cuda
@pytest.mark.parametrize("launch", ["one-lane", "wide"])
def test_conv2d_launch_shapes(no_fallback, kernels, launch):
    x, w, gy, attrs = _conv_case(np.float64, 1, np.random.default_rng(21))
    _check_conv(kernels, x, w, gy, attrs, np.float64, launch=LAUNCHES[launch])


@needs_cuda
@pytest.mark.parametrize("n", [1, 2])
def test_conv2d_of_strided_views(no_fallback, kernels, n):
    """A transposed input, a non-contiguous weight (copied to scratch) and a transposed
    upstream gradient (swapped from its view; for N = 1 too)."""
    rng = np.random.default_rng(22)
    attrs = dict(stride=(1, 2), padding=(1, 0), dilation=(1, 1), groups=1)
    x = rng.normal(size=(n, 3, 6, 5))[..., ::-1]  # reversed columns
    w = rng.normal(size=(2, 3, 3, 3)).transpose(0, 1, 3, 2)
    gy = np.asfortranarray(rng.normal(size=reference("conv2d", x, w, **attrs).shape))
    assert not (x.flags.c_contiguous or w.flags.c_contiguous or gy.flags.c_contiguous)
    _check_conv(kernels, x, w, gy, attrs, np.float64)


@needs_cuda
def test_conv2d_gemms_and_scratch_go_through_the_runtime(no_fallback, kernels):
    """With runtime=, every GEMM is the runtime's and the scratch is allocated by
    `prepare` through runtime.empty: calls after it allocate nothing."""
    from graphc.backends.cuda.runtime import SimRuntime
    rt = SimRuntime()
    gemms = []
    real = rt.matmul
    rt.matmul = lambda a, b, out: (gemms.append(a.ndim), real(a, b, out))
    rng = np.random.default_rng(23)
    allocated = 0
    for case in (0, 1):  # groups=1: 2-D GEMMs; groups=2: batched 3-D
        x, w, gy, attrs = _conv_case(np.float32, case, rng)
        calls = [("conv2d", (x, w), ()), ("conv2d_input_grad", (gy, w), (x.shape,)),
                 ("conv2d_weight_grad", (x, gy), (w.shape,))]
        for name, ins, shape in calls:
            want = reference(name, *ins, *shape, **attrs)
            out = np.empty_like(want)
            kernels[name].prepare(*ins, out=out, runtime=rt, **attrs)
            if name == "conv2d":  # new shapes, new scratch (the gradients reuse some of it)
                assert rt.allocations > allocated
            allocated, n_gemms = rt.allocations, len(gemms)
            for _ in range(2):
                out[...] = 7
                kernels[name](*ins, out=out, runtime=rt, **attrs)
                assert_close(out, want, np.float32,
                             scale=_conv_scale(name, *ins, *shape, **attrs))
            assert rt.allocations == allocated, name
            assert gemms[n_gemms:] == [2 if attrs["groups"] == 1 else 3] * 2, name


@needs_cuda
def test_conv2d_falls_back_to_the_reference_for_other_dtypes(kernels):
    rng = np.random.default_rng(24)
    x = rng.normal(size=(2, 2, 4, 4)).astype(np.float16)
    w = rng.normal(size=(3, 2, 3, 3)).astype(np.float16)
    attrs = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    got, want = run_op(kernels, "conv2d", x, w, **attrs)
    np.testing.assert_array_equal(got, want)


# --- layer_norm, batch_norm ----------------------------------------------------------------
AFFINE = [(False, False), (True, False), (False, True), (True, True)]


def _norm_vectors(shape, dtype, has_weight, has_bias, rng):
    return [rng.normal(size=shape).astype(dtype) for flag in (has_weight, has_bias) if flag]


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("affine", AFFINE, ids=["plain", "weight", "bias", "both"])
def test_layer_norm(no_fallback, kernels, dtype, affine):
    """Over one, two and all axes, a 1-D input, rows longer than the lanes, an offset
    far from zero, a constant row (variance 0: eps alone), odd shapes."""
    rng = np.random.default_rng(25)
    has_weight, has_bias = affine
    x3 = (rng.normal(size=(3, 4, 5)) * 3 + 100).astype(dtype)
    x3[1, 2] = 4.0  # a constant row along the last axis
    cases = [(x3, (5,), 1e-5), (x3, (4, 5), 1e-5), (x3, (3, 4, 5), 1e-3),
             (rng.normal(size=(7,)).astype(dtype), (7,), 1e-5),
             (rng.normal(size=(2, 70)).astype(dtype), (70,), 0.1)]
    for x, shape, eps in cases:
        attrs = dict(normalized_shape=shape, eps=eps, has_weight=has_weight,
                     has_bias=has_bias)
        vecs = _norm_vectors(shape, dtype, has_weight, has_bias, rng)
        for launch in LAUNCHES.values():
            got, want = run_op(kernels, "layer_norm", x, *vecs, launch=launch, **attrs)
            assert_close(got, want, dtype, scale=10)


@needs_cuda
def test_layer_norm_of_a_strided_view(no_fallback, kernels):
    rng = np.random.default_rng(26)
    x = rng.normal(size=(4, 3, 6)).transpose(1, 0, 2)  # leading axes that do not merge
    w, b = rng.normal(size=6), rng.normal(size=6)
    attrs = dict(normalized_shape=(6,), eps=1e-5, has_weight=True, has_bias=True)
    got, want = run_op(kernels, "layer_norm", x, w, b, **attrs)
    assert_close(got, want, np.float64, scale=10)
    x = rng.normal(size=(3, 5, 4)).transpose(0, 2, 1)  # normalised axes transposed
    w, b = rng.normal(size=(4, 5)), rng.normal(size=(4, 5))
    attrs["normalized_shape"] = (4, 5)
    got, want = run_op(kernels, "layer_norm", x, w, b, **attrs)
    assert_close(got, want, np.float64, scale=10)


def _bn_inputs(shape, dtype, training, has_weight, has_bias, rng):
    x = (rng.normal(size=shape) * 2 + 5).astype(dtype)
    c = shape[1]
    stats = [] if training else [rng.normal(size=c).astype(dtype),
                                 rng.uniform(0.2, 3.0, size=c).astype(dtype)]
    return [x] + stats + _norm_vectors((c,), dtype, has_weight, has_bias, rng)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
@pytest.mark.parametrize("affine", AFFINE, ids=["plain", "weight", "bias", "both"])
def test_batch_norm(no_fallback, kernels, dtype, training, affine):
    """(N, C), NCHW, N = 1, one value per channel across H*W only, C = 1, a channel with a
    constant value (variance 0)."""
    rng = np.random.default_rng(27)
    has_weight, has_bias = affine
    attrs = dict(training=training, eps=1e-5, has_weight=has_weight, has_bias=has_bias)
    for shape in [(5, 3), (2, 3, 4, 5), (1, 4, 7), (4, 3, 1, 1), (3, 1, 2, 3)]:
        arrays = _bn_inputs(shape, dtype, training, has_weight, has_bias, rng)
        arrays[0][:, 0] = 1.5
        for launch in LAUNCHES.values():
            got, want = run_op(kernels, "batch_norm", *arrays, launch=launch, **attrs)
            assert_close(got, want, dtype, scale=10)


@needs_cuda
@pytest.mark.parametrize("training", [True, False], ids=["training", "eval"])
def test_batch_norm_of_a_channels_last_view(no_fallback, kernels, training):
    rng = np.random.default_rng(28)
    arrays = _bn_inputs((2, 3, 4, 5), np.float64, training, True, True, rng)
    arrays[0] = np.ascontiguousarray(arrays[0].transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    attrs = dict(training=training, eps=1e-5, has_weight=True, has_bias=True)
    got, want = run_op(kernels, "batch_norm", *arrays, **attrs)
    assert_close(got, want, np.float64, scale=10)


@needs_cuda
def test_norms_fall_back_to_the_reference_for_other_dtypes(kernels):
    x = np.linspace(-2, 2, 12, dtype=np.float16).reshape(3, 4)
    attrs = dict(normalized_shape=(4,), eps=1e-5, has_weight=False, has_bias=False)
    got, want = run_op(kernels, "layer_norm", x, **attrs)
    np.testing.assert_array_equal(got, want)
    attrs = dict(training=True, eps=1e-5, has_weight=False, has_bias=False)
    got, want = run_op(kernels, "batch_norm", x, **attrs)
    np.testing.assert_array_equal(got, want)


# --- concat, getitem, getitem_grad, scatter_slices -----------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, bool])
def test_concat_along_every_axis(no_fallback, kernels, dtype):
    """Odd sizes, an empty operand, a transposed operand, 1-D and 3-D."""
    rng = np.random.default_rng(29)

    def arr(*shape):
        return (rng.normal(size=shape) * 4).astype(dtype)
    cases = [([arr(2, 3, 4), arr(1, 3, 4), arr(3, 3, 4)], 0),
             ([arr(2, 1, 4), arr(2, 0, 4), arr(2, 5, 4)], 1),
             ([arr(2, 3, 1), arr(2, 2, 3).transpose(1, 2, 0), arr(2, 3, 3)], -1),
             ([arr(3), arr(5)], 0)]
    for xs, axis in cases:
        for launch in LAUNCHES.values():
            got, want = run_op(kernels, "concat", *xs, launch=launch, axis=axis)
            np.testing.assert_array_equal(got, want)


def _index_cases():
    from graphc.ops.shape_ops import _encode_index
    indexes = [(slice(1, None, 2),), (slice(None), 2), (slice(None, None, -1), None, 1),
               (Ellipsis, slice(4, 0, -2)), (1, 2, 3), (None, slice(1, 3), Ellipsis, None),
               (slice(-2, None), slice(0, 0))]
    return [_encode_index(i, 3) for i in indexes]


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_getitem_and_its_gradient(no_fallback, kernels, dtype):
    """Steps, negative steps, ints (a 0-d result), None, Ellipsis and an empty slice."""
    rng = np.random.default_rng(30)
    x = rng.normal(size=(3, 4, 5)).astype(dtype)
    for index in _index_cases():
        got, want = run_op(kernels, "getitem", x, index=index)
        np.testing.assert_array_equal(got, want)
        g = rng.normal(size=want.shape).astype(dtype)
        got, want = run_op(kernels, "getitem_grad", g, x.shape, index=index)
        np.testing.assert_array_equal(got, want)


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_scatter_slices(no_fallback, kernels, dtype, launch):
    """Overlapping slices add in order (exactly the reference's sums); disjoint ones that
    cover the output (an LSTM's gates); a float32 gradient into a float64 sum."""
    from graphc.ops.shape_ops import _encode_index
    rng = np.random.default_rng(31)
    indices = _index_cases()
    shapes = [reference("getitem", np.empty((3, 4, 5)), index=i).shape for i in indices]
    gs = [rng.normal(size=s).astype(dtype) for s in shapes]
    got, want = run_op(kernels, "scatter_slices", (3, 4, 5), *gs, indices=tuple(indices),
                       launch=LAUNCHES[launch])
    np.testing.assert_array_equal(got, want)
    gates = tuple(_encode_index((slice(None), slice(2 * k, 2 * k + 2)), 2) for k in range(4))
    gs = [rng.normal(size=(3, 2)).astype(dtype) for _ in gates]
    got, want = run_op(kernels, "scatter_slices", (3, 8), *gs, indices=gates,
                       launch=LAUNCHES[launch])
    np.testing.assert_array_equal(got, want)
    mixed = [gs[0].astype(np.float32), gs[1].astype(np.float64)]
    got, want = run_op(kernels, "scatter_slices", (3, 8), *mixed, indices=gates[:2],
                       launch=LAUNCHES[launch])
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, want)


@needs_cuda
def test_slicing_falls_back_above_six_dimensions(kernels):
    rng = np.random.default_rng(32)
    xs = [rng.normal(size=(1, 2, 1, 2, 1, 2, n)) for n in (1, 2)]
    got, want = run_op(kernels, "concat", *xs, axis=6)
    np.testing.assert_array_equal(got, want)


@needs_cuda
def test_tables_have_the_conv_norm_and_slicing_kernels(kernels):
    assert {"conv2d", "conv2d_input_grad", "conv2d_weight_grad", "layer_norm", "batch_norm",
            "concat", "getitem", "getitem_grad", "scatter_slices"} <= set(kernels)
    assert all(hasattr(kernels[n], "prepare")
               for n in ("conv2d", "conv2d_input_grad", "conv2d_weight_grad"))
