"""Recompute instead of store across fused kernels (graphc.schedule.recompute)."""
import numpy as np
import pytest

import graphc as gc
from graphc import backends
from graphc.backends.cpu import CPUBackend
from graphc.ops.registry import get_op


def _mlp(activation, dropout: bool, batch=64, hidden=512):
    g = gc.Graph()
    with g:
        x = gc.placeholder("x", (None, 32))
        y = gc.placeholder("y", (None,), dtype="int64")
        w1 = gc.parameter("W1", shape=(32, hidden), seed=1)
        b1 = gc.parameter("b1", shape=(hidden,), init="zeros")
        w2 = gc.parameter("W2", shape=(hidden, 10), seed=2)
        h = getattr(gc.ops, activation)(x @ w1 + b1)
        if dropout:
            h = gc.ops.dropout(h, 0.5)
        loss = gc.softmax_cross_entropy(h @ w2, y)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(batch, 32)).astype(np.float32),
             "y": rng.integers(0, 10, batch)}
    return loss, [w1, b1, w2], feeds


def _train(activation, dropout, steps=3, **compile_kw):
    loss, params, feeds = _mlp(activation, dropout)
    fn = gc.compile([loss], optimizer=gc.optim.SGD(lr=0.1), **compile_kw)
    losses = [float(fn(feeds)[0]) for _ in range(steps)]
    return fn, losses, [p.value.copy() for p in params]


def _kernels_computing(fn, op):
    return [k for k in fn.plan.kernels if k.kind == "fused" and op in k.ops]


def _stored(fn) -> set:
    return {s for k in fn.plan.kernels for s in k.outputs}


def test_dropout_keep_mask_is_recomputed_in_the_backward_kernel():
    fn, losses, params = _train("relu", dropout=True)
    casts = _kernels_computing(fn, "cast")
    assert len(casts) == 2  # the forward kernel and the backward kernel both derive it
    keep = next(st.slot for st in casts[0].steps if st.op.name == "cast")
    assert keep not in _stored(fn)  # never written to memory
    _, ref_losses, ref_params = _train("relu", dropout=True, optimize=False)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for p, r in zip(params, ref_params):
        np.testing.assert_allclose(p, r, rtol=1e-5, atol=1e-7)


def test_recompute_saves_a_buffer_and_matches_the_stored_plan(monkeypatch):
    fn, losses, params = _train("relu", dropout=True)
    monkeypatch.setattr(CPUBackend, "max_recompute_cost", 0)  # rule off: every value is stored
    stored_fn, stored_losses, stored_params = _train("relu", dropout=True)
    assert len(_stored(fn)) == len(_stored(stored_fn)) - 1
    assert fn.plan.memory.arena_bytes <= stored_fn.plan.memory.arena_bytes
    assert losses == stored_losses  # the same ops on the same values: bitwise equal
    for p, r in zip(params, stored_params):
        np.testing.assert_array_equal(p, r)


def test_costly_cone_is_stored():
    """GELU's derivative needs erf and exp: recomputing costs more than the round trip."""
    fn, _, _ = _train("gelu", dropout=False)
    forward = _kernels_computing(fn, "erf")
    assert len(forward) == 1
    assert len([s for s in forward[0].outputs]) == 2  # the activation and its derivative


def test_narrow_mask_is_not_traded_for_a_wide_input():
    """ReLU's bool mask (1 byte) would be recomputed from a float32 input (4 bytes): the
    traffic added exceeds the traffic saved, so it stays stored."""
    fn, _, _ = _train("relu", dropout=False)
    masks = [k for k in _kernels_computing(fn, "greater")]
    assert len(masks) == 1
    mask = next(st.slot for st in masks[0].steps if st.op.name == "greater")
    assert mask in _stored(fn)


@pytest.mark.parametrize("numba_path", [False, True])
def test_recomputed_values_on_both_cpu_kernel_paths(monkeypatch, numba_path):
    from graphc.backends.cpu import numba_printer as numba_cpu
    if numba_path and not numba_cpu.available():
        pytest.skip("Numba is not installed")
    monkeypatch.setattr(numba_cpu, "MIN_ELEMENTS", 1 if numba_path else 1 << 62)
    fn, losses, params = _train("relu", dropout=True, steps=2)
    _, ref_losses, ref_params = _train("relu", dropout=True, steps=2, optimize=False)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-6)
    for p, r in zip(params, ref_params):
        np.testing.assert_allclose(p, r, rtol=1e-5, atol=1e-7)


def test_op_costs():
    caps = backends.get("numpy").caps
    assert caps.op_cost(get_op("mul")) == 1
    assert caps.op_cost(get_op("sqrt")) == 4
    assert caps.op_cost(get_op("tanh")) > caps.max_recompute_cost
