"""The backend seam: a backend registered from tests/ (tests/reference_backend.py, every op
through its NumPy reference, no fusion) runs the whole op suite and trains like the CPU
backend, without a line of graphc/ knowing about it."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import backends

from reference_backend import ReferenceBackend
from test_ops import *  # noqa: F401,F403 - the op suite, collected again on this backend


@pytest.fixture(autouse=True, scope="module")
def reference_backend():
    """Register the backend and make it the default for this module's tests."""
    backends.register("reference", ReferenceBackend)
    saved = gc.config.backend
    gc.config.backend = "reference"
    yield
    gc.config.backend = saved
    backends.unregister("reference")


def test_the_default_backend_is_the_registered_one():
    x = gc.placeholder("x", (3,))
    fn = gc.compile(gc.exp(x) * 2.0)
    assert fn.backend == "reference"
    np.testing.assert_allclose(fn(x=np.arange(3.0, dtype=np.float32)),
                               2 * np.exp(np.arange(3.0)), rtol=1e-6)
    # one kernel per op: nothing was fused
    assert [k.ops for k in fn.plan.kernels if k.kind == "fused"] == [["exp"], ["mul"]]


def _train(backend: str, steps: int = 5):
    """A conv layer, max pooling and an MLP with dropout, trained with Adam in float64."""
    rng = np.random.default_rng(0)
    with gc.Graph():
        x = gc.placeholder("x", (None, 1, 8, 8), dtype="float64")
        y = gc.placeholder("y", (None,), dtype="int32")
        w = gc.parameter("conv_w", value=rng.normal(size=(4, 1, 3, 3)) * 0.3,
                         dtype="float64")
        h = gc.relu(gc.conv2d(x, w, padding=1))
        h = gc.max_pool2d(h, 2)
        h = gc.reshape(h, (-1, 4 * 4 * 4))
        w1 = gc.parameter("w1", value=rng.normal(size=(64, 16)) * 0.2, dtype="float64")
        b1 = gc.parameter("b1", value=np.zeros(16), dtype="float64")
        h = gc.dropout(gc.tanh(h @ w1 + b1), 0.25)
        w2 = gc.parameter("w2", value=rng.normal(size=(16, 3)) * 0.2, dtype="float64")
        loss = gc.softmax_cross_entropy(h @ w2, y)
        step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), backend=backend)
        data = np.random.default_rng(1)
        xb = data.normal(size=(6, 1, 8, 8))
        yb = data.integers(0, 3, size=6).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        params = [p.value for p in gc.get_default_graph().parameters()]
    return losses, params


def test_training_on_the_registered_backend_matches_the_cpu_backend():
    losses, params = _train("reference")
    cpu_losses, cpu_params = _train("numpy")
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-10)
    assert len(params) == len(cpu_params)
    for p, q in zip(params, cpu_params):
        np.testing.assert_allclose(p, q, rtol=1e-9, atol=1e-12)
    assert losses[-1] < losses[0]
