"""Fusion: how many kernels a step becomes, and that fused kernels compute the same thing."""
import re

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cpu import blas
from graphc.backends.cpu import numba_printer as numba_cpu


def _kernels(fn, kinds=("fused", "op", "gemm")):
    return [k for k in fn.plan.kernels if k.kind in kinds]


def _mlp(sizes, batch, rng, act=gc.relu):
    x = gc.placeholder("x", (None, sizes[0]))
    t = gc.placeholder("t", (None,), dtype="int32")
    h = x
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        h = h @ gc.parameter(f"w{i}", shape=(a, b), seed=i) + \
            gc.parameter(f"b{i}", shape=(b,), init="normal", seed=10 + i)
        if i < len(sizes) - 2:
            h = act(h)
    loss = gc.softmax_cross_entropy(h, t)
    feeds = {"x": rng.normal(size=(batch, sizes[0])), "t": rng.integers(0, sizes[-1], batch)}
    return loss, feeds


def test_elementwise_chain_and_gradient_are_one_kernel(rng):
    x = gc.placeholder("x", (None,))
    y = x
    for i in range(20):
        y = [gc.tanh, lambda t: t * 1.1, gc.sigmoid, lambda t: t + 0.2][i % 4](y)
    loss = gc.sum(y)
    fn = gc.compile([loss, gc.grad(loss, x)])
    fn(x=rng.normal(size=100_000))
    kernels = _kernels(fn)
    assert len(kernels) == 1 and kernels[0].kind == "fused"
    assert len(kernels[0].steps) > 40  # forward, backward and the loss's sum together
    ref = gc.compile([loss, gc.grad(loss, x)], optimize=False)
    xv = rng.normal(size=100_000)
    for a, b in zip(fn(x=xv), ref(x=xv)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)


def test_mlp_training_step_kernel_budget(rng):
    sizes = (20, 32, 32, 5)
    loss, feeds = _mlp(sizes, 16, rng)
    fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    fn(feeds)
    kernels = _kernels(fn)
    matmuls = sum(1 for k in kernels if k.ops[0] == "matmul")
    assert matmuls == 3 * 3 - 1  # forward, weight gradients, no gradient for the input x
    if blas.available():  # each weight update rides in its gradient's GEMM
        assert sum(1 for k in kernels if k.kind == "gemm") == 3, fn.plan
    loss_kernels = [k for k in kernels if k.ops[0] in ("softmax_cross_entropy", "mean")]
    per_layer = (len(kernels) - matmuls - len(loss_kernels)) / (len(sizes) - 1)
    assert per_layer <= 3, fn.plan
    # bias gradient sum and bias update fused with the activation's backward
    assert any({"where", "sum_to_like", "sub"} <= set(k.ops) for k in kernels)
    assert all(s in fn.plan.memory.param_writes for _, s in fn.plan.plan.updates)


def test_softmax_cross_entropy_and_gradient_share_a_kernel(rng):
    logits = gc.placeholder("logits", (None, 7))
    t = gc.placeholder("t", (None,), dtype="int32")
    loss = gc.softmax_cross_entropy(logits, t)
    fn = gc.compile([loss, gc.grad(loss, logits)])
    lv, tv = rng.normal(size=(9, 7)), rng.integers(0, 7, 9)
    got = fn(logits=lv, t=tv)
    pair = [k for k in _kernels(fn) if len(k.steps) == 2 and k.kind == "op"]
    assert [k.ops for k in pair] == [["softmax_cross_entropy", "softmax_cross_entropy_backward"]]
    want = gc.compile([loss, gc.grad(loss, logits)], optimize=False)(logits=lv, t=tv)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_fusion_never_creates_a_cycle(rng):
    """Regression: a group reading a value of another group that reads it back."""
    a = gc.placeholder("a", (3, 4))
    b = gc.placeholder("b", (4,))
    f = lambda u, v: gc.where(u > v, u, v * 0.5)  # noqa: E731
    y = gc.sum(f(a, b) * f(a, b) + f(a, b))
    ga, gb = gc.grad(y, [a, b])
    out = gc.sum(ga * ga) + gc.sum(gb * ga.sum())
    feeds = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=4)}
    np.testing.assert_allclose(gc.compile(out)(feeds), gc.compile(out, optimize=False)(feeds),
                               rtol=1e-5)


def test_plan_printout_shows_fused_ops_buffers_and_memory(rng):
    loss, feeds = _mlp((8, 16, 3), 4, rng)
    fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    before = str(fn.plan)
    assert before.startswith("Plan:")  # symbolic until the first call binds shapes
    fn(feeds)
    text = str(fn.plan)
    assert text.startswith("Bound plan:") and "fused[add -> relu" in text
    assert "into w0" in text and "(in place)" in text
    assert "memory: arena" in text and "liveness lower bound" in text
    dot = fn.plan.to_dot()
    assert dot.startswith("digraph graphc {") and "subgraph cluster_" in dot


def test_hostile_names_never_reach_generated_code(rng):
    name = 'x"); __import__("os").system("echo owned'
    x = gc.placeholder(name, (None, 3))
    w = gc.parameter(name + "w", shape=(3, 2), seed=0)
    fn = gc.compile(gc.mean(gc.tanh(x @ w) * 2.0), optimizer=gc.optim.SGD(0.1))
    fn({x: rng.normal(size=(4, 3))})
    bound, run = next(iter(fn._compiled.values()))
    assert "owned" not in run.source
    assert '\\"' in bound.to_dot() or "owned" not in bound.to_dot()


@pytest.mark.parametrize("numba", ["0", "1"])
def test_both_cpu_kernel_printers_agree(numba, monkeypatch, rng):
    monkeypatch.setenv("GRAPHC_NUMBA", numba)
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 0)  # Numba even for these tiny groups
    a = gc.placeholder("a", (None, 6))
    b = gc.placeholder("b", (6,))
    y = gc.where(a > b, a * b - 1.0, gc.maximum(a, -b)) / (gc.abs(b) + 1.0)
    g = gc.grad(gc.sum(y * y), [a, b])
    feeds = {"a": rng.normal(size=(5, 6)), "b": rng.normal(size=6)}
    for got, want in zip(gc.compile([y, *g])(feeds), gc.compile([y, *g], optimize=False)(feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba not installed")
def test_numba_kernels_serve_every_batch_size(monkeypatch, rng):
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 0)
    compiled = []
    original = numba_cpu.compile_numba
    monkeypatch.setattr(numba_cpu, "compile_numba",
                        lambda expr, shared=None: compiled.append(original(expr, shared)) or compiled[-1])
    x = gc.placeholder("x", (None, 7))
    fn = gc.compile(gc.relu(x * 3.0 - 1.0))
    for batch in (4, 9):
        xv = rng.normal(size=(batch, 7)).astype(np.float32)
        np.testing.assert_allclose(fn(x=xv), np.maximum(xv * 3.0 - 1.0, 0), rtol=1e-6)
    assert len(compiled) == 2 and compiled[0].source == compiled[1].source


needs_blas = pytest.mark.skipif(not blas.available(), reason="no BLAS that graphc can call")


@needs_blas
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sgd_update_fused_into_gemm_matches_unfused(rng, dtype):
    sizes = (12, 16, 4)

    def run(optimize):
        with gc.Graph():
            x = gc.placeholder("x", (None, sizes[0]), dtype=dtype)
            t = gc.placeholder("t", (None,), dtype="int32")
            w0 = gc.parameter("w0", shape=sizes[:2], dtype=dtype, seed=1)
            w1 = gc.parameter("w1", shape=sizes[1:], dtype=dtype, seed=2)
            loss = gc.softmax_cross_entropy(gc.tanh(x @ w0) @ w1.T.T, t)
            fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.3), optimize=optimize)
            data = np.random.default_rng(5)
            for _ in range(4):
                fn(x=data.normal(size=(8, sizes[0])), t=data.integers(0, 4, 8))
            return fn, w0.value, w1.value

    fused, *got = run(True)
    _, *want = run(False)
    assert [k.ops for k in fused.plan.kernels if k.kind == "gemm"] == \
        [["matmul", "mul", "sub"]] * 2, fused.plan
    assert "gemm[matmul -> mul -> sub]" in str(fused.plan)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@needs_blas
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_update_of_a_weight_used_transposed_rides_in_its_gemm(dtype):
    """x @ W.T (torch's Linear layout): W's gradient is (A @ B)^T; the update computes
    W -= lr * B^T @ A^T in one GEMM instead of an update pass over a transposed view."""
    def run(optimize):
        with gc.Graph():
            x = gc.placeholder("x", (None, 12), dtype=dtype)
            t = gc.placeholder("t", (None,), dtype="int32")
            w0 = gc.parameter("w0", shape=(16, 12), dtype=dtype, seed=1)
            w1 = gc.parameter("w1", shape=(4, 16), dtype=dtype, seed=2)
            loss = gc.softmax_cross_entropy(gc.tanh(x @ w0.T) @ w1.T, t)
            fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.3), optimize=optimize)
            data = np.random.default_rng(5)
            for _ in range(4):
                fn(x=data.normal(size=(8, 12)), t=data.integers(0, 4, 8))
            return fn, w0.value, w1.value

    fused, *got = run(True)
    _, *want = run(False)
    gemms = [k for k in fused.plan.kernels if k.kind == "gemm"]
    assert [k.ops for k in gemms] == [["matmul", "transpose", "mul", "sub"]] * 2, fused.plan
    assert all(k.transpose_operands for k in gemms)
    assert not any(k.ops == ["mul", "sub"] for k in fused.plan.kernels)
    assert "gemm[matmul -> transpose -> mul -> sub]" in str(fused.plan)
    tol = 1e-5 if dtype == "float32" else 1e-12
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba not installed")
def test_reduction_over_inner_axes_sums_in_a_register_and_matches_numpy(rng):
    """A ReLU backward with its bias gradient (sum over batch and pixels): the Numba kernel
    sums each (image, channel) plane in a local and adds it once, and the result agrees
    with a float64 sum."""
    x = gc.placeholder("x", (None, 6, 28, 28))
    b = gc.parameter("b", shape=(6, 1, 1), init="normal", seed=3)
    loss = gc.sum(gc.relu(x + b) * gc.constant(rng.normal(size=(6, 28, 28)).astype("f4")))
    fn = gc.compile([loss, gc.grad(loss, b)])
    xv = rng.normal(size=(16, 6, 28, 28)).astype(np.float32)
    _, gb = fn(x=xv)
    fused = [k for k in fn.plan.kernels if k.kind == "fused" and k.reductions]
    assert fused, fn.plan
    ref = gc.compile([loss, gc.grad(loss, b)], optimize=False)
    np.testing.assert_allclose(gb, ref(x=xv)[1], rtol=1e-5, atol=1e-4)
    from graphc.schedule.expr import build_expr
    bp = fn.plan
    sources = [numba_cpu.print_numba(build_expr(k, bp.plan, bp.shapes))[0] for k in fused]
    import re
    assert any(re.search(r"a\d+\[0, j1, 0, 0\] \+= s\d+", src) for src in sources), sources
    assert not any(re.search(r"a\d+\[[^]]*\] \+= t\d+", src) for src in sources), sources


@needs_blas
def test_no_gemm_update_when_the_weight_is_read_afterwards(rng):
    x = gc.placeholder("x", (None, 6))
    w = gc.parameter("w", shape=(6, 3), seed=0)
    loss = gc.sum(gc.square(x @ w))
    new_w = w - 0.1 * gc.grad(loss, w)
    fn = gc.compile([loss, w * 2.0], updates={w: new_w})  # w * 2 reads the old w
    old = w.value.copy()
    xv = rng.normal(size=(5, 6)).astype(np.float32)
    _, doubled = fn(x=xv)
    np.testing.assert_allclose(doubled, old * 2)
    np.testing.assert_allclose(w.value, old - 0.1 * 2 * xv.T @ (xv @ old), rtol=1e-5)


def test_without_a_callable_blas_the_update_is_a_separate_kernel(rng, monkeypatch):
    monkeypatch.setattr(blas, "available", lambda: False)
    loss, feeds = _mlp((10, 8, 3), 4, rng)
    fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    fn(feeds)
    assert not any(k.kind == "gemm" for k in fn.plan.kernels)
    assert any(k.ops == ["mul", "sub"] for k in fn.plan.kernels)


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba not installed")
def test_in_place_numba_update_stores_through_its_input(monkeypatch):
    """Adam's moments and parameter are written over their own buffers: the Numba kernel
    takes each once (fewer arrays, so LLVM can vectorize) and computes the same steps."""
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 0)
    sources = []
    original = numba_cpu.compile_numba

    def spy(expr, shared=None):
        kernel = original(expr, shared)
        sources.append((shared, kernel.source))
        return kernel
    monkeypatch.setattr(numba_cpu, "compile_numba", spy)
    grads = np.random.default_rng(3).normal(size=(64, 33))

    def run(optimize):
        with gc.Graph():
            p = gc.parameter("p", shape=(64, 33), dtype="float64", seed=4)
            loss = gc.sum(p * gc.constant(grads))
            fn = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.01), optimize=optimize)
            for _ in range(3):
                fn()
            return p.value.copy()
    got, want = run(True), run(False)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    update = [(sh, src) for sh, src in sources if sh and len(sh) == 3]
    assert update, sources  # exp_avg, exp_avg_sq and p written in place
    shared, src = update[0]
    for k, j in shared.items():
        assert f"o{k}" not in src and f"i{j}[j0, j1] = " in src


# --- big Numba kernels on several threads; the tiled NumPy printer's dead steps -----------
from graphc.backends.cpu import kernels as cpu_kernels  # noqa: E402
from graphc.backends.cpu import numpy_printer  # noqa: E402


@pytest.fixture(params=["busy", "idle"])
def two_threads(request, monkeypatch):
    """Big kernels on two threads with small chunks, whatever the machine has: on a busy
    machine through run_chunks (the list of chunk counts it was given), on an idle one
    through the Numba prange twin (the list of "prange" calls)."""
    busy = request.param == "busy"
    monkeypatch.setattr(cpu_kernels, "_THREADS", 2)
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(numba_cpu, "PARALLEL_MIN_ELEMENTS", 64)
    monkeypatch.setattr(numba_cpu, "CHUNK_ELEMENTS", 40)
    monkeypatch.setattr(cpu_kernels, "machine_busy", lambda: busy)
    calls = []
    original, threads = cpu_kernels.run_chunks, cpu_kernels.numba_threads

    def counted(fn, n):
        calls.append(n)
        return original(fn, n)
    monkeypatch.setattr(cpu_kernels, "run_chunks", counted)
    monkeypatch.setattr(cpu_kernels, "numba_threads", lambda: calls.append("prange") or threads())
    return calls


def test_run_chunks_runs_each_chunk_once_and_raises_the_first_error(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_THREADS", 3)
    seen = []
    cpu_kernels.run_chunks(seen.append, 57)
    assert sorted(seen) == list(range(57))

    def fails(c):
        if c == 5:
            raise ValueError("chunk 5")
    with pytest.raises(ValueError, match="chunk 5"):
        cpu_kernels.run_chunks(fails, 9)
    monkeypatch.setattr(cpu_kernels, "_THREADS", 1)
    seen.clear()
    cpu_kernels.run_chunks(seen.append, 4)
    assert seen == [0, 1, 2, 3]  # one thread: in order, on the caller


def test_threads_are_counted_once_per_process(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "_THREADS", None)
    n = cpu_kernels.threads()
    assert 1 <= n <= 8

    def no_more(*_):
        raise AssertionError("counted the cores again")
    monkeypatch.setattr(cpu_kernels.os, "cpu_count", no_more)
    monkeypatch.setattr(cpu_kernels.os, "sched_getaffinity", no_more, raising=False)
    assert cpu_kernels.threads() == n
    with pytest.raises(ValueError):
        cpu_kernels.set_threads(0)


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba not installed")
def test_chunked_numba_kernel_equals_the_serial_one_bit_for_bit(two_threads, monkeypatch, rng):
    """A state update (two parameters written in place) cut along the first axis, a bias
    and a column broadcast into it: the same values as one thread, to the bit."""
    feeds = {"b": rng.normal(size=9).astype(np.float32),
             "c": rng.normal(size=(37, 1)).astype(np.float32)}
    start = [rng.normal(size=(37, 9)).astype(np.float32) for _ in range(2)]

    def run(chunked):
        if not chunked:
            monkeypatch.setattr(numba_cpu, "PARALLEL_MIN_ELEMENTS", 1 << 60)
        with gc.Graph():
            p = gc.parameter("p", value=start[0])
            q = gc.parameter("q", value=start[1])
            b = gc.placeholder("b", (9,))
            c = gc.placeholder("c", (None, 1))
            new_q = q * 0.5 + b * c  # a moment and its parameter, as an optimizer's
            fn = gc.compile([], updates={q: new_q, p: p - gc.abs(new_q) * 0.1})
            for _ in range(3):  # the first call loads the kernel, on one thread
                fn(feeds)
            return p.value.copy(), q.value.copy()
    got = run(True)
    assert len(two_threads) == 2 and all(n == "prange" or n >= 2 for n in two_threads), \
        two_threads
    two_threads.clear()
    want = run(False)
    assert not two_threads
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    p, q = start
    for _ in range(3):
        q = q * np.float32(0.5) + feeds["b"] * feeds["c"]
        p = p - np.abs(q) * np.float32(0.1)
    np.testing.assert_allclose(got[0], p, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], q, rtol=1e-5, atol=1e-6)


def test_only_big_state_updates_are_cut(two_threads, monkeypatch, rng):
    """A kernel with one output (between GEMMs, say) stays serial however big."""
    x = gc.placeholder("x", (None, 9))
    fn = gc.compile(gc.relu(x * 3.0 - 1.0))
    for _ in range(3):
        fn(x=rng.normal(size=(40, 9)).astype(np.float32))
    assert two_threads == []


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba not installed")
def test_chunked_adam_update_tracks_the_serial_one(two_threads, monkeypatch):
    """Adam over parameters of several shapes (1-D, 2-D with few rows): parameters and
    moments written in place by chunked kernels, identical to the serial kernels'."""
    grads = [np.random.default_rng(i).normal(size=s).astype(np.float32)
             for i, s in enumerate([(300,), (50, 7), (3, 40)])]

    def run(chunked):
        monkeypatch.setattr(numba_cpu, "PARALLEL_MIN_ELEMENTS", 64 if chunked else 1 << 60)
        return _adam_steps(grads)[0]
    chunked = run(True)
    assert len(two_threads) == 3 * 2, two_threads  # 3 updates on each call after the first
    for got, want in zip(chunked, run(False)):
        np.testing.assert_array_equal(got, want)


def _adam_steps(grads, steps=3):
    """Three Adam steps on parameters whose gradients are `grads`: (their values, the
    step function's generated source)."""
    with gc.Graph() as g:
        ps = [gc.parameter(f"p{i}", shape=gr.shape, seed=i) for i, gr in enumerate(grads)]
        loss = sum(gc.sum(p * gc.constant(gr)) for p, gr in zip(ps, grads))
        fn = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.01))
        for _ in range(steps):
            fn()
        source = next(iter(fn._compiled.values()))[1].source
        return [p.value.copy() for p in g.parameters()], source


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba not installed")
def test_consecutive_state_updates_run_as_one_batch(two_threads, monkeypatch):
    """Adam over four tensors: their updates run as one batch on graphc's threads (one
    run_chunks call per step, a tensor bigger than its share of the batch split into row
    ranges), with the values of the unbatched serial kernels, to the bit."""
    from graphc.backends.cpu import executor
    grads = [np.random.default_rng(i).normal(size=s).astype(np.float32)
             for i, s in enumerate([(300,), (50, 7), (3, 40), (1000,)])]

    def run(batched):
        monkeypatch.setattr(executor, "BATCH_MIN_ELEMENTS", 64 if batched else 1 << 60)
        monkeypatch.setattr(numba_cpu, "PARALLEL_MIN_ELEMENTS", 1000 if batched else 1 << 60)
        return _adam_steps(grads)
    got, source = run(True)
    # the first call runs the kernels one by one (loading them); then one batch per call:
    # 1770 elements, a share of 442 each: the 1000 floats in three ranges, the rest whole
    assert two_threads == [6, 6], two_threads
    assert len(re.findall(r"^    B\d+\(\)$", source, re.M)) == 1, source
    two_threads.clear()
    want, plain = run(False)
    assert not two_threads and not re.search(r"^    B\d+\(\)$", plain, re.M)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_a_batch_takes_no_update_that_reads_or_writes_what_it_writes():
    from graphc.backends.cpu.executor import _Batch, _span
    a = np.zeros(100, np.float32)
    batch = _Batch()
    batch.add(0, None, [a[:50]], [1], [_span(a[:50])], [_span(a[:50])], 50)
    assert not batch.independent([_span(a[40:60])], [])  # reads what the batch writes
    assert not batch.independent([], [_span(a[49:51])])  # writes over it
    assert batch.independent([_span(a[50:])], [_span(a[50:])])
    b = np.zeros(10, np.float32)
    batch.add(1, None, [b], [2], [_span(a[60:])], [_span(b)], 10)  # reads a[60:], writes b
    assert not batch.independent([], [_span(a[90:])])  # writes what the batch reads
    assert batch.touches([2]) and not batch.touches([3])


def test_tiled_numpy_kernel_prints_no_dead_step_and_writes_in_place(rng):
    """deep-narrow's forward kernel: 1 - h^2 is recomputed by the backward kernel, so the
    forward prints add and tanh only, tanh straight into its in-place output."""
    with gc.Graph():
        x = gc.placeholder("x", (None, 32))
        t = gc.placeholder("t", (None,), dtype="int32")
        h = x
        for i in range(3):
            h = gc.tanh(h @ gc.parameter(f"w{i}", shape=(32, 32), seed=i)
                        + gc.parameter(f"b{i}", shape=(32,), seed=9 + i))
        loss = gc.softmax_cross_entropy(h @ gc.parameter("w", shape=(32, 4), seed=7), t)
        feeds = {"x": rng.normal(size=(16, 32)).astype(np.float32),
                 "t": rng.integers(0, 4, 16)}
        fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
        ref = gc.compile(loss, optimize=False)
        want = float(ref(feeds))
        got = float(fn(feeds))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    _, run = next(iter(fn._compiled.values()))
    forward = [v.source for v in run.__globals__.values()
               if "np.tanh" in getattr(v, "source", "")]
    assert forward
    for src in forward:
        assert "np.square" not in src and "np.subtract" not in src, src
        assert "np.copyto" not in src, src


def test_numpy_printer_drops_dead_steps_and_keeps_aliased_outputs_safe():
    """An output over an input's buffer is written directly only once every input has been
    read; the dead instruction is not printed; the in-place result is right."""
    from graphc.ops.registry import get_op
    from graphc.schedule.expr import FusedExpr, Instr

    def ins(op, *args):
        o = get_op(op)
        return Instr(op, {}, list(args), np.dtype("float64"), o.reference, o)
    expr = FusedExpr((70000,), [(0, (70000,)), (1, (70000,))],
                     [ins("mul", ("in", 0), ("in", 1)),   # 0: output 0 (over input 0)
                      ins("square", ("v", 0)),            # 1: dead
                      ins("add", ("v", 0), ("in", 0)),    # 2: reads input 0 after 0
                      ins("neg", ("v", 2))],              # 3: output 1 (over input 1)
                     [(10, 0), (11, 3)])
    source, _, _ = numpy_printer.print_numpy(expr, aliased_outputs={0, 1})
    assert "np.square" not in source
    assert "np.multiply(i0[r0:r1], i1[r0:r1], out=s" in source  # input 0 is read later
    assert "np.negative(s" in source and "out=o1[r0:r1])" in source
    kernel = numpy_printer.compile_numpy(expr, aliased_outputs={0, 1})
    a, b = np.linspace(-1, 1, 70000), np.linspace(2, 3, 70000)
    want0, want1 = a * b, -(a * b + a)
    kernel(a, b, a, b)  # both outputs over their inputs' buffers
    np.testing.assert_array_equal(a, want0)
    np.testing.assert_array_equal(b, want1)


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8"])
@pytest.mark.parametrize("bad", [-1, 3, -4, 100])
def test_labels_out_of_range_behind_a_slice_raise_in_the_loss_kernels(dtype, bad):
    """Labels the feed check cannot trace (behind a slice) are checked by the kernels' own
    gather: negative ones do not wrap to the last class."""
    if dtype == "uint8" and bad < 0:
        pytest.skip("no negative uint8")
    t = gc.placeholder("t", (None, 2), dtype=dtype)
    x = gc.placeholder("x", (None, 3))
    loss = gc.softmax_cross_entropy(x, t[:, 0])
    labels = np.array([[0, 0], [bad, 0], [2, 1]], dtype)
    for outputs in (loss, [loss, gc.grad(loss, x)], gc.grad(loss, x)):
        fn = gc.compile(outputs)
        with pytest.raises(gc.FeedError, match=f"label {bad} is out of range for 3 classes"):
            fn(x=np.zeros((3, 3)), t=labels)
        fn(x=np.zeros((3, 3)), t=np.array([[0, 0], [1, 0], [2, 1]], dtype))  # good ones run


def test_loss_kernels_make_no_range_pass_of_their_own(monkeypatch, rng):
    """Valid labels are checked by the feed and by the kernel's gather, never by a separate
    pass in the kernel (nor is the core count read at every call)."""
    from graphc.ops import nn
    x = gc.placeholder("x", (None, 5))
    t = gc.placeholder("t", (None,), dtype="int32")
    loss = gc.softmax_cross_entropy(x @ gc.parameter("w", shape=(5, 5), seed=0), t)
    fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
    feeds = {"x": rng.normal(size=(8, 5)), "t": rng.integers(0, 5, 8).astype(np.int32)}
    fn(feeds)
    calls = []
    monkeypatch.setattr(nn, "_check_labels", lambda *a: calls.append(a))
    monkeypatch.setattr(cpu_kernels.os, "cpu_count", lambda: calls.append("cpu_count"))
    fn(feeds)
    assert calls == []


def _scatter_reference(shape, grads, codes):
    from graphc.ops.shape_ops import _scatter_slices as ref
    return ref(shape, *grads, indices=tuple(codes))


@pytest.mark.parametrize("shape,indices", [
    ((6, 3, 4), [(i,) for i in range(6)]),  # an RNN's steps: tiles, copied into place
    ((2, 8), [(slice(None), slice(k, k + 2)) for k in range(0, 8, 2)]),  # gates
    ((5, 4), [(slice(0, 3),), (slice(2, 5),), (1, slice(None, None, 2))]),  # overlaps
    ((4, 3), [(slice(0, 2),)]),  # leaves zeros
    ((2, 2), [(0, 0), (0, 1), (1, 0), (1, 1)]),  # 0-d slices
    ((3, 4), [(None, slice(0, 3), slice(None))]),  # a new axis
])
def test_scatter_slices_kernel_equals_the_reference(shape, indices, rng):
    from graphc.ops.shape_ops import _encode_index
    codes = [_encode_index(i, len(shape)) for i in indices]
    like = np.zeros(shape)
    grads = [rng.normal(size=like[i].shape) for i in indices]
    out = np.full(shape, np.nan)  # whatever the buffer held before
    cpu_kernels.INTO["scatter_slices"](*grads, out=out, indices=tuple(codes))
    np.testing.assert_array_equal(out, _scatter_reference(shape, grads, codes))


@needs_blas
def test_steps_with_threaded_conv_kernels_run_their_products_on_one_blas_thread():
    """A step with convolutions (kernels on graphc's threads) runs inside blas.one_thread;
    an MLP step keeps the BLAS's threads; the count is restored, nesting and concurrent
    uses included."""
    import threading
    api = blas._thread_api()
    if api is None:
        pytest.skip("not OpenBLAS")
    set_fn, get_fn = api
    before = get_fn()
    set_fn(2)
    try:
        seen = []
        with blas.one_thread():
            seen.append(get_fn())
            with blas.one_thread():  # nested
                seen.append(get_fn())
        assert seen == [1, 1] and get_fn() == 2

        def many():
            for _ in range(200):
                with blas.one_thread():
                    pass
        workers = [threading.Thread(target=many) for _ in range(4)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        assert get_fn() == 2

        def step(conv):
            with gc.Graph():
                x = gc.placeholder("x", (None, 1, 6, 6))
                w = gc.parameter("w", shape=(2, 1, 3, 3), seed=0)
                h = gc.conv2d(x, w) if conv else gc.reshape(x, (-1, 1, 6, 6))
                v = gc.parameter("v", shape=(2 * 16 if conv else 36, 3), seed=1)
                loss = gc.sum(gc.square(gc.reshape(h, (-1, v.shape[0])) @ v))
                fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.01))
                fn(x=np.ones((4, 1, 6, 6), np.float32))
                return next(iter(fn._compiled.values()))[1].source
        assert "ONE_BLAS_THREAD(), BOUND_THREADS()" in step(conv=True)
        assert "ONE_BLAS_THREAD" not in step(conv=False)
        assert "BOUND_THREADS" not in step(conv=False)
        assert get_fn() == 2
    finally:
        set_fn(before)


def _cores_of(tid: int) -> set:
    import os
    return os.sched_getaffinity(tid)


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity")
                    or len(__import__("os").sched_getaffinity(0)) < 2,
                    reason="needs sched_setaffinity and two cores")
def test_bound_threads_keeps_the_caller_on_its_core_and_each_helper_on_another():
    """Inside bound_threads the calling thread may run on one core only, each of graphc's
    helpers on one other core; the caller's own mask comes back at the exit, nested uses
    bind once, and with binding off nothing is touched."""
    import os
    import threading
    from graphc.backends.cpu import kernels as cpu_kernels
    old_threads = cpu_kernels.threads()
    cpu_kernels.set_threads(2)
    mine = os.sched_getaffinity(0)
    try:
        cpu_kernels.run_chunks(lambda c: None, 4)  # starts the helper
        assert cpu_kernels._HELPER_IDS
        with cpu_kernels.bound_threads():
            here = os.sched_getaffinity(0)
            with cpu_kernels.bound_threads():  # nested: still bound, not re-saved
                assert os.sched_getaffinity(0) == here
            assert len(here) == 1 and here <= mine
            for tid in cpu_kernels._HELPER_IDS:
                cores = _cores_of(tid)
                assert len(cores) == 1 and cores <= mine and cores != here
            done = []
            cpu_kernels.run_chunks(lambda c: done.append(c), 8)  # the bound helpers work
            assert sorted(done) == list(range(8))
        assert os.sched_getaffinity(0) == mine
        cpu_kernels.set_thread_binding(False)
        with cpu_kernels.bound_threads():
            assert os.sched_getaffinity(0) == mine
        assert threading.get_native_id() not in cpu_kernels._HELPER_IDS
    finally:
        cpu_kernels.set_thread_binding(True)
        cpu_kernels.set_threads(old_threads)
        os.sched_setaffinity(0, mine)
