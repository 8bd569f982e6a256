"""The gather-like kernels of kernels/indexing.py (gather, scatter_add, one_hot, sum_to_like,
zeros_like) against the ops' NumPy references in Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, its own pytest process) or on a device, a CUDA-backend graph of
gather, nll_loss and one_hot that runs on them, and their PTX. The PTX of every kernel of
the module is also compiled by tests/test_cuda_kernels.py, which iterates ptx_sources()."""
from __future__ import annotations

import os

import numpy as np
import pytest

import graphc as gc
from graphc.ops.registry import get_op

from cuda_env import needs_cuda, needs_ptx

FLOATS = (np.float32, np.float64)
INDEX = (np.int32, np.int64)
TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}
# one lane per block and grid-stride loops, one wide block, the default
LAUNCHES = {"default": None, "one-lane": lambda n: (3, 1), "wide": lambda n: (1, 64)}


def reference(name, *args, **attrs):
    with np.errstate(all="ignore"):
        return np.asarray(get_op(name).reference(*args, **attrs))


@pytest.fixture(scope="module")
def kernels():
    import graphc.kernels
    return graphc.kernels.cuda_kernels()[0]


@pytest.fixture(scope="module")
def indexing():
    from graphc.kernels import indexing
    return indexing


@pytest.fixture
def no_fallback(monkeypatch):
    """The kernels must run: a call of the reference fallback fails the test."""
    def refuse(op, *arrays, out, **attrs):
        raise AssertionError(f"{op} fell back to its reference")
    monkeypatch.setattr("graphc.kernels._cuda.reference_into", refuse)


@pytest.fixture
def clean_flag(indexing):
    """The host index error flag is clear before and after the test."""
    indexing.take_index_error(like=np.zeros(1))
    yield
    assert indexing.take_index_error(like=np.zeros(1)) is None


def _garbage(shape, dtype):
    return np.full(shape, 7, dtype)  # what the kernel must overwrite


# --- gather --------------------------------------------------------------------------------
# (x shape, index shape, axis, broadcast): torch.gather with the index smaller than the input
# off the axis (the corner is read) and larger along it, take_along_axis broadcasting either
# operand off the axis, 1-D, the first, middle and last axis, an axis of size 1, and a rank
# above six whose unit axes drop out
GATHERS = [((3, 5), (3, 4), 1, False),
           ((4, 3, 5), (2, 3, 2), 0, False),
           ((2, 3, 5), (2, 2, 7), 2, False),
           ((5,), (7,), 0, False),
           ((3, 1), (3, 1), 1, False),
           ((1, 4, 5), (3, 2, 1), 1, True),
           ((2, 3, 4), (1, 3, 2), 2, True),
           ((3, 1), (2, 4), 0, True),
           ((2, 3, 4), (2, 3, 4), 1, True),
           ((2, 1, 3, 1, 2, 1, 3), (2, 1, 2, 1, 2, 1, 3), 2, False)]


def _gather_case(case, dtype, index_dtype, rng, repeats=False):
    x_shape, i_shape, axis, broadcast = GATHERS[case]
    x = (rng.normal(size=x_shape) * 10).astype(dtype)
    hi = 1 if repeats else x_shape[axis]
    index = rng.integers(0, hi, size=i_shape).astype(index_dtype)
    return x, index, dict(axis=axis, broadcast=broadcast)


@needs_cuda
@pytest.mark.parametrize("case", range(len(GATHERS)))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("index_dtype", INDEX)
def test_gather(no_fallback, clean_flag, kernels, case, dtype, index_dtype):
    x, index, attrs = _gather_case(case, dtype, index_dtype, np.random.default_rng(case))
    want = reference("gather", x, index, **attrs)
    out = _garbage(want.shape, dtype)
    kernels["gather"](x, index, out=out, **attrs)
    np.testing.assert_array_equal(out, want)
    assert out.dtype == want.dtype


@needs_cuda
@pytest.mark.parametrize("launch", list(LAUNCHES))
@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_])
def test_gather_of_integers_and_booleans_and_launch_shapes(no_fallback, clean_flag, kernels,
                                                           launch, dtype):
    rng = np.random.default_rng(1)
    x = rng.integers(-5, 5, size=(4, 6)).astype(dtype)
    for index, axis, broadcast in ((rng.integers(0, 6, size=(4, 9)), 1, False),
                                   (rng.integers(0, 4, size=(3, 1)), 0, True)):
        want = reference("gather", x, index, axis=axis, broadcast=broadcast)
        out = np.zeros(want.shape, dtype)
        kernels["gather"](x, index, out=out, axis=axis, broadcast=broadcast,
                          launch=LAUNCHES[launch])
        np.testing.assert_array_equal(out, want)


@needs_cuda
def test_gather_of_strided_views(no_fallback, clean_flag, kernels):
    """A transposed input and a reversed, sliced index are read through their strides."""
    rng = np.random.default_rng(2)
    base = rng.normal(size=(6, 4))
    x = base.T  # (4, 6), Fortran order
    index = rng.integers(0, 6, size=(4, 10))[:, ::-2]  # (4, 5), negative strides
    for axis in (0, 1):
        idx = index if axis == 1 else index % 4
        want = reference("gather", x, idx, axis=axis, broadcast=False)
        out = _garbage(want.shape, x.dtype)
        kernels["gather"](x, idx, out=out, axis=axis, broadcast=False)
        np.testing.assert_array_equal(out, want)
    want = reference("gather", x[:1], index[:, :2], axis=1, broadcast=True)  # (4, 2)
    out = _garbage(want.shape, x.dtype)
    kernels["gather"](x[:1], index[:, :2], out=out, axis=1, broadcast=True)
    np.testing.assert_array_equal(out, want)


@needs_cuda
def test_gather_falls_back_where_more_than_six_axes_remain(kernels, indexing, monkeypatch):
    """Eight axes that no stride pattern merges: the reference runs, and is right."""
    calls = []
    real = indexing._cuda.reference_into
    monkeypatch.setattr(indexing._cuda, "reference_into",
                        lambda op, *a, **k: (calls.append(op), real(op, *a, **k)))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1, 2, 1, 2, 1, 2, 1))
    index = rng.integers(0, 2, size=(1, 2, 1, 2, 1, 2, 1, 2))
    want = reference("gather", x, index, axis=0, broadcast=True)
    out = _garbage(want.shape, x.dtype)
    kernels["gather"](x, index, out=out, axis=0, broadcast=True)
    np.testing.assert_array_equal(out, want)
    assert calls == ["gather"]


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS)
def test_gather_of_a_bad_index_is_nan_and_sets_the_flag(no_fallback, kernels, indexing,
                                                        dtype):
    """Out-of-range indices (5 and -1 on an axis of 5) are never read (the simulator would
    raise IndexError): NaN there, the rest gathered, the flag holds a bad index."""
    x = np.arange(15, dtype=dtype).reshape(3, 5)
    index = np.array([[0, 5], [4, 4], [-1, 2]])
    out = _garbage((3, 2), dtype)
    kernels["gather"](x, index, out=out, axis=1, broadcast=False)
    np.testing.assert_array_equal(out, [[0, np.nan], [9, 9], [np.nan, 12]])
    assert indexing.take_index_error(like=out) in (5, -1)
    assert indexing.take_index_error(like=out) is None  # taking it clears it
    ints = np.zeros((3, 2), np.int64)
    kernels["gather"](x.astype(np.int64), index, out=ints, axis=1, broadcast=False)
    np.testing.assert_array_equal(ints, [[0, 0], [9, 9], [0, 12]])
    assert indexing.take_index_error(like=ints) in (5, -1)


# --- scatter_add ---------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("case", range(len(GATHERS)))
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("index_dtype", INDEX)
@pytest.mark.parametrize("repeats", [False, True], ids=["random", "all-zero"])
def test_scatter_add(no_fallback, clean_flag, kernels, case, dtype, index_dtype, repeats):
    """gather's gradient: repeated indices accumulate (atomics: any order, so within the
    dtype's tolerance), broadcast axes are summed, the corner torch never read is zero."""
    rng = np.random.default_rng(10 + case)
    x, index, attrs = _gather_case(case, dtype, index_dtype, rng, repeats)
    g = rng.normal(size=reference("gather", x, index, **attrs).shape).astype(dtype)
    want = reference("scatter_add", g, index, x.shape, **attrs)
    out = _garbage(x.shape, dtype)
    kernels["scatter_add"](g, index, out=out, **attrs)
    assert out.dtype == want.dtype and out.shape == want.shape
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * (np.abs(g).sum() + 1))
    np.testing.assert_array_equal(out == 0, want == 0)  # untouched positions are zeroed


@needs_cuda
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_scatter_add_launch_shapes_strided_and_empty_gradients(no_fallback, clean_flag,
                                                               kernels, launch):
    rng = np.random.default_rng(4)
    index = rng.integers(0, 3, size=(8, 5))[::2]  # (4, 5), strided rows
    g = rng.normal(size=(5, 4)).T  # (4, 5), Fortran order
    want = reference("scatter_add", g, index, (4, 3), axis=1, broadcast=False)
    out = _garbage((4, 3), g.dtype)
    kernels["scatter_add"](g, index, out=out, axis=1, broadcast=False, launch=LAUNCHES[launch])
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    out = _garbage((4, 3), g.dtype)  # no gradient: zeros
    kernels["scatter_add"](g[:, :0], index[:, :0], out=out, axis=1, broadcast=False,
                           launch=LAUNCHES[launch])
    np.testing.assert_array_equal(out, 0)


@needs_cuda
def test_scatter_add_skips_a_bad_index_and_sets_the_flag(no_fallback, kernels, indexing):
    g = np.ones((2, 3), np.float32)
    index = np.array([[0, 0, 4], [-2, 1, 1]])
    out = _garbage((2, 4), np.float32)
    kernels["scatter_add"](g, index, out=out, axis=1, broadcast=False)
    np.testing.assert_array_equal(out, [[2, 0, 0, 0], [0, 2, 0, 0]])
    assert indexing.take_index_error(like=out) in (4, -2)


@needs_cuda
def test_scatter_add_falls_back_for_other_dtypes(kernels):
    g = np.ones((2, 3), np.float16)
    index = np.array([[0, 0, 1], [1, 1, 1]])
    out = _garbage((2, 2), np.float16)
    kernels["scatter_add"](g, index, out=out, axis=1, broadcast=False)
    np.testing.assert_array_equal(out, [[2, 1], [0, 3]])


# --- one_hot -------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("dtype", ["int64", "float32", "float64", "int32", "bool"])
@pytest.mark.parametrize("label_dtype", INDEX)
def test_one_hot(no_fallback, clean_flag, kernels, dtype, label_dtype):
    rng = np.random.default_rng(5)
    for labels, classes in ((rng.integers(0, 7, size=9), 7), (rng.integers(0, 3, (2, 3)), 3),
                            (np.array(2), 5), (np.zeros(4, int), 1),
                            (rng.integers(0, 4, (3, 8))[:, ::3].T, 4)):  # a strided view
        labels = labels.astype(label_dtype)
        want = reference("one_hot", labels, classes, dtype)
        out = _garbage(want.shape, want.dtype)
        kernels["one_hot"](labels, out=out, num_classes=classes, dtype=dtype)
        np.testing.assert_array_equal(out, want)
        assert out.dtype == want.dtype


@needs_cuda
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_one_hot_of_a_bad_label_is_a_zero_row_and_sets_the_flag(no_fallback, kernels,
                                                                indexing, launch):
    labels = np.array([1, 3, -1, 0, 2])
    out = _garbage((5, 3), np.float32)
    kernels["one_hot"](labels, out=out, num_classes=3, dtype="float32",
                       launch=LAUNCHES[launch])
    np.testing.assert_array_equal(out, [[0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 0, 0],
                                        [0, 0, 1]])
    assert indexing.take_index_error(like=out) in (3, -1)


# --- sum_to_like and zeros_like --------------------------------------------------------------
# (gradient shape, like's shape): leading axes, broadcast axes (first, middle, last, several),
# both together, to a scalar, and an empty gradient (zeros)
SUMS = [((2, 3, 4), (3, 1)), ((4, 3), (1, 3)), ((2, 5, 3), (2, 1, 3)), ((3, 4, 5), (1, 4, 1)),
        ((3, 7), ()), ((2, 1, 3), (3,)), ((0, 3), (3,)), ((5, 2, 70), (2, 1))]


@needs_cuda
@pytest.mark.parametrize("dtype", FLOATS + (np.int32, np.int64))
@pytest.mark.parametrize("launch", list(LAUNCHES))
def test_sum_to_like(no_fallback, kernels, dtype, launch):
    rng = np.random.default_rng(6)
    for g_shape, like in SUMS:
        g = (rng.normal(size=g_shape) * 10).astype(dtype)
        want = reference("sum_to_like", g, like).astype(dtype)
        out = _garbage(like, dtype)
        kernels["sum_to_like"](g, out=out, launch=LAUNCHES[launch])
        assert out.shape == want.shape
        if np.dtype(dtype).kind == "f":
            tol = TOL[np.dtype(dtype)]
            np.testing.assert_allclose(out, want, rtol=tol, atol=tol * (np.abs(g).sum() + 1))
        else:
            np.testing.assert_array_equal(out, want)


@needs_cuda
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.bool_,
                                   np.float16, np.complex128, np.int8])
def test_zeros_like_fills_every_dtype(no_fallback, kernels, dtype):
    for shape in ((3, 5), (), (0, 2), (70,)):
        out = np.ones(shape, dtype)
        kernels["zeros_like"](out=out, dtype=np.dtype(dtype).name)
        np.testing.assert_array_equal(out, reference("zeros_like", shape, np.dtype(dtype).name))


# --- the CUDA backend on these kernels --------------------------------------------------------
_OURS = {"gather", "scatter_add", "one_hot"}


def _graph(dtype, backend, optimize=True):
    """A loss of nll_loss on mixed log-probabilities (not folded into softmax cross-entropy:
    its gather stays), a torch.gather of the logits' leading columns, a take_along_axis
    broadcasting a parameter's one row, and one_hot; the loss and its gradients."""
    with gc.Graph():
        x = gc.placeholder("x", (None, 6), dtype=dtype)
        y = gc.placeholder("y", (None,), dtype="int32")
        k = gc.placeholder("k", (None, 2), dtype="int64")
        w = gc.parameter("w", value=np.random.default_rng(1).normal(size=(6, 5)) * 0.5,
                         dtype=dtype)
        v = gc.parameter("v", value=np.random.default_rng(2).normal(size=(1, 5)), dtype=dtype)
        z = x @ w
        lp = gc.log_softmax(z) * 0.5 + gc.log_softmax(z * 2.0) * 0.5
        picked = gc.gather(z, 1, k)  # (N, 2) of (N, 5)
        row = gc.take_along_axis(v, k, 1)  # v's row broadcast over the batch
        loss = (gc.nll_loss(lp, y) + 0.1 * gc.sum(picked * picked)
                + 0.1 * gc.sum(row * gc.sum(z, axis=1, keepdims=True))
                - 0.05 * gc.sum(gc.one_hot(y, 5, dtype=dtype) * z))
        fn = gc.compile([loss, *gc.grad(loss, [w, v])], backend=backend, optimize=optimize)
        data = np.random.default_rng(7)
        feeds = dict(x=data.normal(size=(4, 6)).astype(dtype), y=np.array([0, 4, 2, 2], np.int32),
                     k=np.array([[1, 1], [4, 0], [3, 3], [0, 2]]))
        results = [np.asarray(r) for r in fn(**feeds)]
        results += [np.asarray(r) for r in fn(**feeds)]  # again: the captured step replayed
        plan = fn.plan
    return results, plan


def _spy(monkeypatch, names):
    """Record which of `names` launch their graphc.kernels kernel, and which ops of the
    kernel table the executor sends down its generic (reference) path."""
    import graphc.kernels
    from graphc.backends.cuda import executor
    table = graphc.kernels.cuda_kernels()[0]
    launched, generic = set(), set()
    for name in names:
        def spy(*args, _launcher=table[name], _name=name, **kw):
            launched.add(_name)
            return _launcher(*args, **kw)
        if hasattr(table[name], "prepare"):
            spy.prepare = table[name].prepare
        monkeypatch.setitem(table, name, spy)
    real_generic = executor._generic

    def generic_spy(step, shapes, rt):
        generic.add(step.op.name)
        return real_generic(step, shapes, rt)
    monkeypatch.setattr(executor, "_generic", generic_spy)
    return table, launched, generic


@needs_cuda
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_gather_nll_loss_and_one_hot_on_the_cuda_backend(monkeypatch, clean_flag, dtype,
                                                         rtol):
    """Forward and gradients equal the numpy backend's; gather, scatter_add and one_hot
    launch their kernels and no op of the kernel table takes the generic path."""
    table, launched, generic = _spy(monkeypatch, _OURS)
    got, plan = _graph(dtype, "cuda")
    ops = {st.op.name for kk in plan.kernels if kk.kind == "op" for st in kk.steps}
    assert _OURS <= ops and launched == _OURS
    assert not generic & set(table), f"ops with kernels ran their reference: {generic}"
    monkeypatch.undo()
    want, _ = _graph(dtype, "numpy")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


@needs_cuda
def test_unfused_graph_runs_sum_to_like_on_its_kernel(monkeypatch, clean_flag):
    """optimize=False keeps sum_to_like an op of its own (fused, it is a trailing
    reduction of a generated kernel): it launches the reduce5 kernel through indexing."""
    table, launched, generic = _spy(monkeypatch, _OURS | {"sum_to_like"})
    got, plan = _graph("float64", "cuda", optimize=False)
    assert launched == _OURS | {"sum_to_like"}
    assert not generic & set(table), f"ops with kernels ran their reference: {generic}"
    monkeypatch.undo()
    want, _ = _graph("float64", "numpy", optimize=False)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@needs_cuda
def test_count_and_small_zeros_like_are_folded_at_bind_time():
    """count depends on bound shapes only: the scheduler folds it to a constant (no kernel,
    no launch), as it does zeros_like up to the fold limit (here the gradient of a
    placeholder the loss does not read, its shape known only when bound)."""
    with gc.Graph():
        x = gc.placeholder("x", (None, 3))
        s = gc.placeholder("s", (None, 4))
        w = gc.parameter("w", value=np.ones(3))
        loss = gc.mean(x * w)
        fn = gc.compile([loss, *gc.grad(loss, [w, s])], backend="cuda")
        plan = fn.bound_plan(x=(5, 3), s=(2, 4))
    kinds = {st.op.name: kk.kind for kk in plan.kernels for st in kk.steps}
    assert kinds.get("count") == "const" and kinds.get("zeros_like") == "const"
    _, gw, gs = fn(x=np.ones((5, 3), np.float32), s=np.ones((2, 4), np.float32))
    np.testing.assert_allclose(gw, np.full(3, 1 / 3), rtol=1e-6)
    np.testing.assert_array_equal(gs, np.zeros((2, 4)))


# --- index ranges ----------------------------------------------------------------------------
@needs_cuda
def test_fed_indices_are_checked_before_the_step_runs():
    """An index or label straight from a placeholder: FeedError before anything runs
    (feeds.py check_indices), on this backend as on the CPU; parameters untouched."""
    with gc.Graph():
        x = gc.placeholder("x", (None, 5))
        i = gc.placeholder("i", (None, 1), "int64")
        y = gc.placeholder("y", (None,), "int32")
        w = gc.parameter("w", value=np.ones(5, np.float32))
        loss = gc.sum(gc.gather(x * w, 1, i)) + gc.sum(gc.one_hot(y, 5, dtype="float32"))
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=1.0), backend="cuda")
        with pytest.raises(gc.FeedError, match=r"placeholder 'i': index 5 is out of range"):
            step(x=np.ones((2, 5)), i=np.array([[0], [5]]), y=np.zeros(2, np.int32))
        with pytest.raises(gc.FeedError, match=r"placeholder 'y': label 9 is out of range"):
            step(x=np.ones((2, 5)), i=np.zeros((2, 1), int), y=np.array([9, 0], np.int32))
        np.testing.assert_array_equal(w.value, np.ones(5))


@needs_cuda
def test_a_computed_index_out_of_range_is_never_read_and_sets_the_flag(indexing):
    """An index computed in the graph (here 2 * y) escapes the pre-run feed check. The
    CPU's reference raises FeedError while the step runs; the device kernel never reads out
    of bounds: it sets the runtime's index error flag, which the executor turns into the
    same FeedError after the step, with the parameters restored."""
    with gc.Graph() as g:
        x = gc.placeholder("x", (None, 3))
        y = gc.placeholder("y", (None, 1), "int32")
        w = gc.parameter("w", value=np.ones(3))
        loss = gc.sum(gc.gather(x * w, 1, y * 2))
        feeds = dict(x=np.ones((2, 3), np.float32), y=np.array([[0], [2]], np.int32))
        with pytest.raises(gc.FeedError, match="index 4 is out of range"):
            gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5), backend="numpy")(**feeds)
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5), backend="cuda")
        rt = gc.backends.get("cuda").runtime
        indexing.take_index_error(rt)
        for _ in range(2):  # the first call captures the step, the second replays it
            with pytest.raises(gc.FeedError, match=r"index 4 is out of range .*gather.*"
                                                   r"parameters are unchanged"):
                step(**feeds)
            np.testing.assert_array_equal(w.value, np.ones(3))
            assert indexing.take_index_error(rt) is None  # read and cleared
        good = dict(x=feeds["x"], y=np.array([[0], [1]], np.int32))
        step(**good)
        np.testing.assert_allclose(w.value, [0.5, 1.0, 0.5])  # indices 0 and 2, lr 0.5
        del g


@needs_cuda
def test_the_error_flag_is_made_at_bind_time_and_no_step_allocates(indexing):
    with gc.Graph():
        x = gc.placeholder("x", (None, 4))
        k = gc.placeholder("k", (None, 2), "int64")
        w = gc.parameter("w", value=np.ones((4, 4)))
        step = gc.compile(gc.sum(gc.gather(x @ w, 1, k) ** 2), optimizer=gc.optim.SGD(lr=0.1),
                          backend="cuda")
        feeds = dict(x=np.ones((3, 4), np.float32), k=np.array([[0, 1], [3, 3], [2, 0]]))
        step(**feeds)
        rt = gc.backends.get("cuda").runtime
        before = rt.allocations
        for _ in range(2):
            step(**feeds)
        assert rt.allocations == before
        assert indexing.take_index_error(rt) is None


# --- the tables and PTX ------------------------------------------------------------------------
@needs_cuda
def test_the_table_has_the_indexing_kernels(kernels):
    from graphc.ops.registry import all_ops
    names = {"gather", "scatter_add", "one_hot", "sum_to_like", "zeros_like"}
    assert names <= set(kernels) and names <= set(all_ops())
    assert "count" not in kernels  # folded at bind time: see test_count_and_small_...
    assert all(hasattr(kernels[n], "prepare") for n in _OURS)


def _ptx_cases():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return [None]
    try:
        import graphc.kernels
        return sorted(k for k in graphc.kernels.ptx_sources() if k.startswith("indexing."))
    except Exception:  # noqa: BLE001 - numba.cuda absent: the test skips
        return [None]


@needs_ptx
def test_the_package_lists_the_indexing_kernels_for_ptx():
    """tests/test_cuda_kernels.py compiles every entry of graphc.kernels.ptx_sources()."""
    assert {"indexing.gather6[float]", "indexing.gather6[int]", "indexing.scatter_add6",
            "indexing.one_hot6", "indexing.zero_words", "indexing.sum_to_like[int32]"} <= \
        set(_ptx_cases())


@needs_ptx
@pytest.mark.parametrize("name", _ptx_cases())
@pytest.mark.parametrize("cc", [(9, 0), (8, 0)])
def test_indexing_kernel_compiles_to_ptx(name, cc):
    from numba import cuda

    import graphc.kernels
    fn, sigs = graphc.kernels.PTX_SOURCES[name]
    for sig in sigs:
        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)
        assert f".target sm_{cc[0]}{cc[1]}" in ptx and ".entry" in ptx
