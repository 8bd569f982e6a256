"""The CUDA backend (graphc.backends.cuda) against the CPU backend, in Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1, its own pytest process: `make test` runs it) or on a
device: training trajectories, random streams, graph capture and replay, parameters held by
the device runtime, no steady-state allocation, feed errors and check_numerics."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn

from cuda_env import SIMULATOR, needs_cuda

pytestmark = needs_cuda


def _cuda():
    return gc.backends.get("cuda")


def _mlp(dtype, backend, steps=4, dropout=0.25, optimizer=None, seed=0):
    """An MLP with dropout trained for a few steps: its losses and final parameters."""
    rng = np.random.default_rng(seed)
    with gc.Graph():
        x = gc.placeholder("x", (None, 12), dtype=dtype)
        y = gc.placeholder("y", (None,), dtype="int32")
        w1 = gc.parameter("w1", value=rng.normal(size=(12, 16)) * 0.3, dtype=dtype)
        b1 = gc.parameter("b1", value=np.zeros(16), dtype=dtype)
        w2 = gc.parameter("w2", value=rng.normal(size=(16, 5)) * 0.3, dtype=dtype)
        b2 = gc.parameter("b2", value=np.zeros(5), dtype=dtype)
        h = gc.dropout(gc.tanh(x @ w1 + b1), dropout)
        loss = gc.softmax_cross_entropy(h @ w2 + b2, y)
        opt = optimizer() if optimizer else gc.optim.Adam(lr=1e-2)
        step = gc.compile(loss, optimizer=opt, backend=backend)
        data = np.random.default_rng(1)
        xb = data.normal(size=(8, 12)).astype(dtype)
        yb = data.integers(0, 5, size=8).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        params = {p.name: p.value for p in gc.get_default_graph().parameters()}
    return losses, params, step


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_mlp_with_adam_and_dropout_follows_the_cpu_trajectory(dtype, rtol):
    losses, params, step = _mlp(dtype, "cuda")
    cpu_losses, cpu_params, _ = _mlp(dtype, "numpy")
    assert step.backend == "cuda"
    np.testing.assert_allclose(losses, cpu_losses, rtol=rtol)
    assert params.keys() == cpu_params.keys()
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=rtol, atol=rtol,
                                   err_msg=name)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", [lambda: gc.optim.SGD(lr=0.1),
                                       lambda: gc.optim.SGD(lr=0.1, momentum=0.9),
                                       lambda: gc.optim.RMSprop(lr=1e-2)])
def test_other_optimizers_follow_the_cpu_trajectory(optimizer):
    losses, params, _ = _mlp("float64", "cuda", optimizer=optimizer, dropout=0.0)
    cpu_losses, cpu_params, _ = _mlp("float64", "numpy", optimizer=optimizer, dropout=0.0)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-10)
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=1e-10, atol=1e-12)


def _trajectory(build, backend, steps, shapes, classes, seed):
    """Losses and final parameters of `build(x) -> logits` trained with Adam and dropout."""
    rng = np.random.default_rng(seed)
    with gc.Graph():
        nn.seed(seed)
        x = gc.placeholder("x", shapes)
        y = gc.placeholder("y", (None,), dtype="int32")
        loss = gc.softmax_cross_entropy(build(x), y)
        step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), backend=backend)
        concrete = tuple(2 if d is None else d for d in shapes)
        xb = rng.normal(size=concrete).astype(np.float32)
        yb = rng.integers(0, classes, size=2).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        return losses, [p.value for p in gc.get_default_graph().parameters()]


def _cnn(x):
    model = nn.Sequential(nn.Conv2D(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
                          nn.Flatten(), nn.Dropout(0.2), nn.Dense(48, 4))
    return model(x, training=True)


def _lstm(x):
    _, (h, _) = nn.LSTM(4, 6).run(x)
    return nn.Dense(6, 3)(gc.dropout(h, 0.1))


@pytest.mark.parametrize("build,shapes,classes", [(_cnn, (None, 1, 8, 8), 4),
                                                  (_lstm, (3, None, 4), 3)],
                         ids=["cnn", "lstm"])
def test_cnn_and_lstm_follow_the_cpu_trajectory(build, shapes, classes):
    losses, params = _trajectory(build, "cuda", 3, shapes, classes, seed=4)
    cpu_losses, cpu_params = _trajectory(build, "numpy", 3, shapes, classes, seed=4)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-5)
    for p, q in zip(params, cpu_params):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_random_streams_equal_the_cpu_bit_for_bit():
    def masks(backend):
        with gc.Graph():
            x = gc.placeholder("x", (None, 33))
            fn = gc.compile([gc.random_uniform(x), gc.dropout(x, 0.5)], backend=backend)
            ones = np.ones((5, 33), np.float32)
            return [fn(x=ones, to_numpy=True) for _ in range(3)]
    for got, want in zip(masks("cuda"), masks("numpy")):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_graph_replay_equals_eager_launches(monkeypatch):
    replayed, _, step = _mlp("float64", "cuda")
    assert step._compiled and all(run.captured for _, run in step._compiled.values())
    monkeypatch.setattr(type(_cuda()), "cuda_graph", False)
    eager, _, step = _mlp("float64", "cuda")
    assert all(not run.captured for _, run in step._compiled.values())
    assert replayed == eager


def test_parameters_live_on_the_device_and_read_and_write_through(tmp_path):
    from graphc.backends.cuda.runtime import DeviceStorage
    with gc.Graph() as g:
        x = gc.placeholder("x", (None, 3))
        w = gc.parameter("w", value=np.eye(3))
        opt = gc.optim.SGD(lr=0.5)
        step = gc.compile(gc.sum(x @ w), optimizer=opt, backend="cuda")
        step(x=np.ones((2, 3), np.float32))
        assert isinstance(w.storage, DeviceStorage) and w.storage.runtime is _cuda().runtime
        np.testing.assert_allclose(w.value, np.eye(3) - 0.5 * 2, rtol=1e-6)
        w.value = np.zeros((3, 3))  # writes through to the device
        step(x=np.ones((2, 3), np.float32))
        np.testing.assert_allclose(w.value, np.full((3, 3), -1.0))
        opt.lr = 0.25  # a hyper-parameter: a host write, seen by the next step
        step(x=np.ones((2, 3), np.float32))
        np.testing.assert_allclose(w.value, np.full((3, 3), -1.5))
        gc.save(tmp_path / "ck.npz", g)
        w.value = np.ones((3, 3))
        gc.load(tmp_path / "ck.npz", g)
        np.testing.assert_allclose(w.value, np.full((3, 3), -1.5))
        # a CPU Function of the same graph takes the parameters back to the host
        fn = gc.compile(x @ w, backend="numpy")
        np.testing.assert_allclose(fn(x=np.ones((1, 3), np.float32)), [[-4.5] * 3])
        step(x=np.ones((2, 3), np.float32))  # and the CUDA step binds them again
        np.testing.assert_allclose(w.value, np.full((3, 3), -2.0))


def test_optimizer_step_count_is_kept_on_the_host():
    _, _, step = _mlp("float32", "cuda", steps=3)
    opt = step._optimizer
    assert opt.step_count == 3


def test_no_allocation_in_steady_state():
    losses, _, step = _mlp("float32", "cuda", steps=2)
    runtime = _cuda().runtime
    before = runtime.allocations
    (_, run), = step._compiled.values()
    xb = np.zeros((8, 12), np.float32)
    yb = np.zeros(8, np.int32)
    for _ in range(3):
        out = step(x=xb, y=yb)
        del out
    assert runtime.allocations == before


def test_results_stay_on_the_device_unless_asked():
    with gc.Graph():
        x = gc.placeholder("x", (None, 2))
        fn = gc.compile({"y": x * 2.0, "s": gc.sum(x)}, backend="cuda")
        out = fn(x=np.ones((3, 2), np.float32))
        assert float(out["s"]) == 6.0
        host = fn(x=np.ones((3, 2), np.float32), to_numpy=True)
        assert isinstance(host["y"], np.ndarray)
        np.testing.assert_array_equal(host["y"], np.full((3, 2), 2.0))


def test_feed_errors_are_the_cpu_errors():
    with gc.Graph():
        x = gc.placeholder("x", (None, 4))
        y = gc.placeholder("y", (None,), dtype="int32")
        fn = gc.compile(gc.softmax_cross_entropy(x, y), backend="cuda")
        with pytest.raises(gc.FeedError, match="expects shape"):
            fn(x=np.ones((2, 3), np.float32), y=np.zeros(2, np.int32))
        with pytest.raises(gc.FeedError, match="label 7 is out of range for 4 classes"):
            fn(x=np.ones((2, 4), np.float32), y=np.array([0, 7], np.int32))
        with pytest.raises(gc.FeedError, match="missing feed"):
            fn(x=np.ones((2, 4), np.float32))


def test_check_numerics_names_the_op_and_leaves_parameters_as_they_were():
    with gc.Graph():
        x = gc.placeholder("x", (None, 3))
        w = gc.parameter("w", value=np.ones((3, 3)))
        loss = gc.sum(gc.log(x @ w))
        step = gc.compile(loss, optimizer=gc.optim.Adam(), backend="cuda",
                          check_numerics=True)
        step(x=np.ones((2, 3), np.float32))
        before = w.value
        with pytest.raises(gc.NumericsError, match="log"):
            step(x=-np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(w.value, before)


@pytest.mark.skipif(not SIMULATOR, reason="the simulator's own rule")
def test_auto_never_picks_the_simulator():
    assert "cuda" in gc.backends.available()
    assert gc.backends.resolve("auto") == "numpy"
    assert _cuda().runtime.simulated
