"""Memory planning: one arena, buffers reused, nothing allocated in steady state."""
import tracemalloc

import numpy as np

import graphc as gc


def _mlp_step(rng, batch=256):
    x = gc.placeholder("x", (None, 64))
    t = gc.placeholder("t", (None,), dtype="int32")
    h = gc.relu(x @ gc.parameter("w0", shape=(64, 256), seed=0)
                + gc.parameter("b0", shape=(256,), init="zeros"))
    h = gc.tanh(h @ gc.parameter("w1", shape=(256, 256), seed=1)
                + gc.parameter("b1", shape=(256,), init="zeros"))
    logits = h @ gc.parameter("w2", shape=(256, 10), seed=2)
    loss = gc.softmax_cross_entropy(logits, t)
    fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.05))
    feeds = {"x": rng.normal(size=(batch, 64)).astype(np.float32),
             "t": rng.integers(0, 10, batch).astype(np.int32)}
    return fn, feeds


def test_steady_state_step_allocates_no_array_data(rng):
    fn, feeds = _mlp_step(rng)
    for _ in range(3):
        fn(feeds)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn(feeds)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    arena = fn.plan.memory.arena_bytes
    assert arena > 500_000
    one_activation = 256 * 256 * 4  # the smallest (batch x width) buffer of this step
    # What remains: view objects and the loss kernel's per-row vectors (O(batch) bytes);
    # no buffer of the step's size is ever allocated again.
    assert peak < one_activation / 4, (peak, arena)


def test_arena_close_to_liveness_bound_and_far_below_naive(rng):
    fn, feeds = _mlp_step(rng)
    fn(feeds)
    mem = fn.plan.memory
    assert mem.arena_bytes <= 1.10 * mem.lower_bound
    assert mem.arena_bytes < 0.5 * mem.naive_bytes


def test_parameters_updated_in_their_own_storage(rng):
    fn, feeds = _mlp_step(rng)
    w = gc.get_default_graph().get("w1")
    storage = w.storage.array
    before = w.value
    fn(feeds)
    assert w.storage.array is storage and not np.array_equal(w.value, before)
    w.value = np.zeros((256, 256))
    assert w.storage.array is storage and not storage.any()


def test_plans_cached_per_batch_size(rng):
    fn, feeds = _mlp_step(rng)
    small = {"x": feeds["x"][:8], "t": feeds["t"][:8]}
    for f in (feeds, small, feeds, small):
        fn(f)
    assert len(fn._compiled) == 2
    assert fn.bound_plan(x=(8, 64), t=(8,)) is fn._compiled[((8, 64), (8,))][0]


def test_outputs_are_fresh_arrays_that_callers_may_keep(rng):
    x = gc.placeholder("x", (4,))
    fn = gc.compile([x * 2.0, gc.exp(x)])
    first = fn(x=np.ones(4))
    second = fn(x=np.zeros(4))
    np.testing.assert_allclose(first[0], 2.0)  # not overwritten by the second call
    np.testing.assert_allclose(second[0], 0.0)
    first[0][:] = 99  # scribbling on a result changes nothing inside
    np.testing.assert_allclose(fn(x=np.ones(4))[0], 2.0)


def test_in_place_reuse_never_takes_a_buffer_read_through_a_view(rng):
    """Regression: x[::-1] read in the same kernel that would overwrite x in place."""
    x = gc.placeholder("x", (5, 3), dtype="float64")
    t = gc.placeholder("t", (5, 3), dtype="float64")
    g = gc.grad(gc.triplet_loss(x, t, x[::-1] * 0.5, margin=2.0), x)
    gg = gc.grad(gc.sum(g * g), x)
    feeds = {"x": rng.normal(size=(5, 3)), "t": rng.normal(size=(5, 3))}
    for a, b in zip(gc.compile([g, gg])(feeds), gc.compile([g, gg], optimize=False)(feeds)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_theano_update_semantics_survive_in_place_writes():
    a = gc.parameter("a", value=[1.0, 2.0])
    b = gc.parameter("b", value=[10.0, 20.0])
    fn = gc.compile([], updates={a: b * 1.0, b: a * 1.0})
    fn()
    np.testing.assert_allclose(a.value, [10, 20])
    np.testing.assert_allclose(b.value, [1, 2])
