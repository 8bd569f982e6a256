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
