"""The CUDA backend on a real device (the `gpu` marker; skipped without one): the CuPy
runtime, cuBLAS GEMM updates, the stream, pinned staging buffers, CUDA graphs, device
feeds from CuPy and torch (DLPack / __cuda_array_interface__), and training trajectories at
realistic sizes against the CPU backend. `make gpu-check` runs these on the H200."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc

from cuda_env import on_device

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not on_device, reason="needs a CUDA device (not the simulator)")]


def _mlp_step(backend, sizes=(784, 1024, 1024, 10), batch=512, steps=3, dtype="float32",
              optimizer=None):
    rng = np.random.default_rng(0)
    with gc.Graph():
        x = gc.placeholder("x", (None, sizes[0]), dtype=dtype)
        y = gc.placeholder("y", (None,), dtype="int32")
        h = x
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = gc.parameter(f"w{i}", value=rng.normal(size=(a, b)) / np.sqrt(a), dtype=dtype)
            bias = gc.parameter(f"b{i}", value=np.zeros(b), dtype=dtype)
            h = h @ w + bias
            if i < len(sizes) - 2:
                h = gc.relu(h)
        loss = gc.softmax_cross_entropy(h, y)
        step = gc.compile(loss, optimizer=(optimizer or (lambda: gc.optim.SGD(lr=0.05)))(),
                          backend=backend)
        xb = rng.normal(size=(batch, sizes[0])).astype(dtype)
        yb = rng.integers(0, sizes[-1], size=batch).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        return losses, [p.value for p in gc.get_default_graph().parameters()], step


@pytest.mark.parametrize("optimizer", [lambda: gc.optim.SGD(lr=0.05),
                                       lambda: gc.optim.Adam(lr=1e-3)], ids=["sgd", "adam"])
def test_mlp_m_trajectory_on_the_device_matches_the_cpu(optimizer):
    losses, params, step = _mlp_step("cuda", optimizer=optimizer)
    cpu_losses, cpu_params, _ = _mlp_step("numpy", optimizer=optimizer)
    assert not gc.backends.get("cuda").runtime.simulated
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-4)
    for p, q in zip(params, cpu_params):
        np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-5)


def test_sgd_updates_ride_in_cublas_gemms():
    _, _, step = _mlp_step("cuda", steps=1)
    assert sum(k.kind == "gemm" for k in step.plan.kernels) == 3


def test_the_step_is_one_cuda_graph_and_replays_like_eager(monkeypatch):
    losses, _, step = _mlp_step("cuda")
    (_, run), = step._compiled.values()
    assert run.captured and run.captured[0][1] is not None
    monkeypatch.setattr(type(gc.backends.get("cuda")), "cuda_graph", False)
    eager, _, _ = _mlp_step("cuda")
    np.testing.assert_allclose(losses, eager, rtol=1e-6)


def test_no_device_allocation_in_steady_state():
    import cupy
    _, _, step = _mlp_step("cuda", steps=2)
    rt = gc.backends.get("cuda").runtime
    pool = cupy.get_default_memory_pool()
    rng = np.random.default_rng(1)
    xb = rng.normal(size=(512, 784)).astype(np.float32)
    yb = rng.integers(0, 10, size=512).astype(np.int32)
    step(x=xb, y=yb)
    before, used = rt.allocations, pool.used_bytes()
    for _ in range(5):
        step(x=xb, y=yb)
    rt.synchronize()
    assert rt.allocations == before and pool.used_bytes() <= used


def test_feeds_from_cupy_and_torch_cuda_tensors():
    import cupy
    with gc.Graph():
        x = gc.placeholder("x", (None, 4))
        fn = gc.compile(gc.sum(x * 2.0), backend="cuda")
        host = np.arange(8, dtype=np.float32).reshape(2, 4)
        assert float(fn(x=cupy.asarray(host))) == pytest.approx(56.0)
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            assert float(fn(x=torch.from_numpy(host).cuda())) == pytest.approx(56.0)


def test_results_are_cupy_arrays_unless_to_numpy():
    import cupy
    with gc.Graph():
        x = gc.placeholder("x", (None, 3))
        fn = gc.compile(x + 1.0, backend="cuda")
        out = fn(x=np.zeros((2, 3), np.float32))
        assert isinstance(out, cupy.ndarray)
        assert isinstance(fn(x=np.zeros((2, 3), np.float32), to_numpy=True), np.ndarray)


def test_parameters_live_in_device_memory():
    import cupy
    _, _, step = _mlp_step("cuda", steps=1)
    for p, _ in step.symbolic_plan.params:
        assert isinstance(p.storage.array, cupy.ndarray)


def test_adam_updates_are_one_multi_tensor_launch_on_the_device():
    """mlp-m with Adam: its six parameters and their moments updated by one launch per
    step (in the captured graph), matching the CPU."""
    from graphc.backends.cuda.multi_tensor import MultiTensorLaunch
    adam = lambda: gc.optim.Adam(lr=1e-3)  # noqa: E731
    _, params, step = _mlp_step("cuda", optimizer=adam)
    _, cpu_params, _ = _mlp_step("numpy", optimizer=adam)
    (_, run), = step._compiled.values()
    multi = [fn for _, fn, _ in run.launches if isinstance(fn, MultiTensorLaunch)]
    assert len(multi) == 1 and len(multi[0].names) == 18
    for p, q in zip(params, cpu_params):
        np.testing.assert_allclose(p, q, rtol=1e-3, atol=1e-5)


def test_a_plan_larger_than_the_device_is_a_resource_error():
    """An arena larger than the whole device: ResourceError naming what was asked for and
    what to do, the parameters untouched, and the device still usable afterwards."""
    import cupy
    _, total = cupy.cuda.runtime.memGetInfo()
    width = 1 << 20
    batch = total // (4 * width) + 1024  # x @ w: more float32 bytes than the device has
    with gc.Graph():
        x = gc.placeholder("x", (None, 1))
        w = gc.parameter("w", value=np.full((1, width), 0.5))
        step = gc.compile(gc.mean(x @ w), optimizer=gc.optim.Adam(lr=0.1), backend="cuda")
        assert float(step(x=np.ones((2, 1), np.float32))) == pytest.approx(0.5)
        before = w.value
        with pytest.raises(gc.ResourceError, match="smaller batch size") as e:
            step(x=np.ones((batch, 1), np.float32))
        assert "could not allocate" in str(e.value.__cause__)
        assert "free device memory" in str(e.value.__cause__)
        np.testing.assert_array_equal(w.value, before)
        step(x=np.ones((2, 1), np.float32))  # the device recovers: the small plan runs
        assert not np.array_equal(w.value, before)
