"""A compiled Function called from 8 threads at once: calls are serialized by one lock per
graph, so every call runs on consistent parameters and the result equals a serial run."""
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import graphc as gc

THREADS = 8
CALLS_PER_THREAD = 5


@pytest.fixture(autouse=True)
def frequent_thread_switches():
    """Switch threads every microsecond, so unsynchronized calls would interleave."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(previous)


def _model(seed: int):
    g = gc.Graph()
    with g:
        x = gc.placeholder("x", (None, 64))
        t = gc.placeholder("t", (None,), dtype="int32")
        w1 = gc.parameter("w1", shape=(64, 128), seed=seed)
        b1 = gc.parameter("b1", shape=(128,), init="zeros")
        w2 = gc.parameter("w2", shape=(128, 3), seed=seed + 1)
        logits = gc.tanh(x @ w1 + b1) @ w2
        loss = gc.softmax_cross_entropy(logits, t)
        opt = gc.optim.Adam(lr=0.05)
        step = gc.compile({"loss": loss}, optimizer=opt)
        evaluate = gc.compile(loss)
    return g, step, evaluate, opt


def _feeds():
    rng = np.random.default_rng(7)
    return {"x": rng.normal(size=(256, 64)).astype(np.float32),
            "t": rng.integers(0, 3, 256).astype(np.int32)}


def _state(g):
    return {p.name: p.value for p in g.parameters()}


def test_training_step_from_eight_threads_matches_a_serial_run():
    feeds = _feeds()
    n = THREADS * CALLS_PER_THREAD
    g_serial, step_serial, _, opt_serial = _model(0)
    serial_losses = [float(step_serial(feeds)["loss"]) for _ in range(n)]

    g, step, _, opt = _model(0)

    def worker(_):
        return [float(step(feeds)["loss"]) for _ in range(CALLS_PER_THREAD)]

    with ThreadPoolExecutor(THREADS) as pool:
        losses = [v for chunk in pool.map(worker, range(THREADS)) for v in chunk]
    # each call saw the parameters after a distinct number of whole steps
    assert sorted(losses) == sorted(serial_losses)
    assert opt.step_count == opt_serial.step_count == n
    want, got = _state(g_serial), _state(g)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_evaluation_concurrent_with_training_sees_whole_steps_only():
    feeds = _feeds()
    n = THREADS * CALLS_PER_THREAD
    _, step_serial, eval_serial, _ = _model(3)
    # the evaluation loss after k = 0..n whole steps
    possible = {float(eval_serial(feeds))}
    for _ in range(n):
        step_serial(feeds)
        possible.add(float(eval_serial(feeds)))

    g, step, evaluate, _ = _model(3)

    def worker(i):
        if i % 2:
            return [float(evaluate(feeds)) for _ in range(2 * CALLS_PER_THREAD)]
        for _ in range(2 * CALLS_PER_THREAD):
            step(feeds)
        return []

    with ThreadPoolExecutor(THREADS) as pool:
        seen = [v for chunk in pool.map(worker, range(THREADS)) for v in chunk]
    assert len(seen) == THREADS // 2 * 2 * CALLS_PER_THREAD
    assert set(seen) <= possible  # never a half-updated set of parameters
