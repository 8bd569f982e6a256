"""Memory planning: one arena, buffers reused, nothing allocated in steady state."""
import tracemalloc

import numpy as np
import pytest

import graphc as gc
from graphc.testing import check_grads


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


# --- concats stacked in place (memory_plan._stacked_pieces) --------------------------------
def _unstacked(monkeypatch):
    """Plans made from here on stack no concat (the reference they must equal)."""
    from graphc.schedule import memory_plan
    monkeypatch.setattr(memory_plan, "_stacked_pieces", lambda *a, **k: ({}, {}, {}))


def _lstm_grads(seed=0, T=6, B=4, I=3, H=8, dtype="float32"):
    """An LSTM's loss and gradients (backprop through time stacks the per-step gate
    gradients and hidden states with concat): the compiled function and its results."""
    rng = np.random.default_rng(seed)
    with gc.Graph("lstm"):
        lstm = gc.nn.LSTM(I, H)
        x = gc.placeholder("x", (T, None, I), dtype=dtype)
        _, (h, _) = lstm.run(x)
        loss = gc.sum(gc.square(h))
        fn = gc.compile([loss, *gc.grad(loss, [x] + lstm.parameters())])
        return fn, fn(x=rng.normal(size=(T, B, I)).astype(dtype))


def _concat_kernels(bp):
    return [i for i, k in enumerate(bp.kernels) if k.kind == "op" and k.ops == ["concat"]]


def test_backprop_through_time_concats_are_stacked_in_place(monkeypatch):
    fn, got = _lstm_grads()
    bp, mem = fn.plan, fn.plan.memory
    concats = _concat_kernels(bp)
    # the gradient of the stacked input projection: one scatter of every step's gate
    # gradients at its row, stacked like a concat of them
    rows = [i for i, k in enumerate(bp.kernels) if k.kind == "op"
            and k.ops == ["scatter_slices"] and len(bp.shapes[k.outputs[0]]) == 3]
    assert len(concats) == 2 and len(rows) == 1
    assert mem.stacked == {bp.kernels[i].outputs[0] for i in concats + rows}
    source = next(iter(fn._compiled.values()))[1].source  # the generated step
    assert not any(f"K{i}(" in source for i in concats + rows)  # no concat or scatter runs
    scatter = bp.kernels[rows[0]]
    pieces = [s for s in scatter.inputs if bp.shapes[s] == bp.shapes[scatter.outputs[0]][1:]]
    step = _piece_bytes(bp, pieces[0])
    assert sorted(mem.offsets[p] - mem.offsets[scatter.outputs[0]] for p in pieces) == \
        [j * step for j in range(6)]
    viewed = {k.outputs[0]: k.inputs[0] for k in bp.kernels if k.kind == "view"}
    for i in concats:  # every piece lies at its position in the concat's buffer
        out, ins = bp.kernels[i].outputs[0], bp.kernels[i].inputs
        pieces = [viewed[v] for v in ins]  # the concat reads expand_dims views of them
        # the recurrent weight's stack of steps 1..5 is rows 1..5 of the scatter's buffer
        assert all(mem.in_stack[p] == mem.within.get(out, out) for p in pieces)
        step = _piece_bytes(bp, pieces[0])
        assert [mem.offsets[p] - mem.offsets[out] for p in pieces] == \
            [j * step for j in range(len(pieces))]
    assert list(mem.within.values()) == [scatter.outputs[0]]
    (sub, _), = mem.within.items()
    assert mem.offsets[sub] - mem.offsets[scatter.outputs[0]] == _piece_bytes(bp, sub) // 5
    text = str(fn.plan)
    assert text.count("concat (in place)") == 2 and "2 concat(s) stacked in place" in text
    assert f"%{sub} in %{scatter.outputs[0]} at +" in text
    assert mem.lower_bound <= mem.arena_bytes < mem.naive_bytes
    _unstacked(monkeypatch)
    ref_fn, want = _lstm_grads()
    assert not ref_fn.plan.memory.stacked
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_stacking_makes_the_lstm_arena_smaller(monkeypatch):
    # the stacks' copies are gone from the peak; at a few hundred bytes a buffer (the
    # layout test's size) the arena's alignment decides the peak instead
    size = dict(T=8, B=16, I=8, H=32)
    fn, got = _lstm_grads(**size)
    assert fn.plan.memory.stacked
    _unstacked(monkeypatch)
    ref_fn, want = _lstm_grads(**size)
    assert fn.plan.memory.arena_bytes < ref_fn.plan.memory.arena_bytes
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _piece_bytes(bp, slot):
    return int(np.prod(bp.shapes[slot])) * bp.plan.nodes[slot].dtype.itemsize


@pytest.mark.parametrize("planner", ["_stacked_pieces", "_sliced_pieces"])
def test_backprop_through_time_in_place_matches_finite_differences(rng, monkeypatch,
                                                                    planner):
    """Concats stacked in place and scatters sliced in place: float64 gradients agree
    with finite differences, and the plan did place pieces."""
    from graphc.schedule import memory_plan
    made = []
    real = getattr(memory_plan, planner)

    def spy(*args, **kw):
        made.append(real(*args, **kw))
        return made[-1]
    monkeypatch.setattr(memory_plan, planner, spy)
    layer = gc.nn.LSTM(2, 8)
    x = gc.placeholder("x", (4, 2, 2))
    loss = gc.sum(gc.square(layer(x)[-1]))
    check_grads(loss, [x] + layer.parameters(), {x: rng.normal(size=(4, 2, 2))},
                rtol=1e-5, atol=1e-7)
    assert any(placed[0] for placed in made)


def _train_lstm(seed, T, B, I, H, classes, steps, layer="LSTM"):
    """A few SGD steps of an LSTM (or another gc.nn recurrent `layer`) + Dense + softmax
    cross-entropy: (losses, parameters, the compiled step)."""
    rng = np.random.default_rng(seed)
    with gc.Graph("train"):
        gc.nn.seed(seed)
        lstm, dense = getattr(gc.nn, layer)(I, H), gc.nn.Dense(H, classes)
        x = gc.placeholder("x", (T, None, I))
        y = gc.placeholder("y", (None,), dtype="int32")
        _, state = lstm.run(x)
        h = state[0] if isinstance(state, tuple) else state
        step = gc.compile(gc.softmax_cross_entropy(dense(h), y),
                          optimizer=gc.optim.SGD(lr=0.5))
        xb = rng.normal(size=(T, B, I)).astype(np.float32)
        yb = rng.integers(0, classes, size=B).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        return losses, [p.value for p in lstm.parameters() + dense.parameters()], step


def test_sgd_training_with_stacked_concats_follows_the_unstacked_trajectory(monkeypatch):
    def train():
        return _train_lstm(3, T=5, B=4, I=4, H=16, classes=3, steps=4)
    losses, params, step = train()
    # the hidden states' and the gate gradients' concats, and the projection's row scatter
    assert len(step.plan.memory.stacked) == 3 and len(step.plan.memory.within) == 1
    _unstacked(monkeypatch)
    ref_losses, ref_params, _ = train()
    np.testing.assert_array_equal(losses, ref_losses)
    for a, b in zip(params, ref_params):
        np.testing.assert_array_equal(a, b)
    assert losses[-1] < losses[0]


def _pieces_graph(case, xv, wv):
    """Three tanh pieces stacked by a concat; `case` adds a reader that keeps a piece from
    being stacked (or none). Returns the compiled function's results and its plan."""
    with gc.Graph(case):
        x = gc.placeholder("x", (None, xv.shape[1]))
        w = gc.constant(wv)
        ps = [gc.tanh(x * float(i + 1)) for i in range(3)]
        c = gc.concat([gc.expand_dims(p, 0) for p in ps], axis=0)
        outs = [gc.sum(c * c, axis=0)]
        if case == "donor":  # p0 * m, written over p0 in place, after the concat
            outs = [(ps[0] * (gc.sum(c, axis=(0, 1)) @ w)) @ w]
        elif case == "output":
            outs.append(ps[1])
        fn = gc.compile(outs)
        return fn(x=xv), fn.plan


def test_pieces_written_over_in_place_or_returned_are_not_stacked(rng):
    xv = rng.normal(size=(4, 16)).astype(np.float32)
    wv = rng.normal(size=(16, 16)).astype(np.float32)
    p = [np.tanh(xv.astype(np.float64) * (i + 1)) for i in range(3)]
    stack = np.stack(p)
    got, bp = _pieces_graph("plain", xv, wv)
    assert len(bp.memory.stacked) == 1 and "concat (in place)" in str(bp)
    np.testing.assert_allclose(got[0], (stack * stack).sum(0), rtol=1e-5)

    got, bp = _pieces_graph("donor", xv, wv)
    piece = bp.kernels[_concat_kernels(bp)[0]].inputs[0]
    assert not bp.memory.stacked and not bp.memory.in_stack
    assert bp.plan.nodes[piece].op.name == "expand_dims"
    assert len(bp.memory.inplace) == 1  # the later kernel still writes over its piece
    np.testing.assert_allclose(got[0], (p[0] * (stack.sum((0, 1)) @ wv)) @ wv,
                               rtol=1e-4, atol=1e-4)

    got, bp = _pieces_graph("output", xv, wv)
    assert not bp.memory.stacked and "concat (in place)" not in str(bp)
    np.testing.assert_allclose(got[0], (stack * stack).sum(0), rtol=1e-5)
    np.testing.assert_allclose(got[1], p[1], rtol=1e-5)

    odd = rng.normal(size=(3, 5)).astype(np.float32)  # 60-byte pieces: offsets unaligned
    got, bp = _pieces_graph("plain", odd, wv)
    assert not bp.memory.stacked
    q = np.stack([np.tanh(odd.astype(np.float64) * (i + 1)) for i in range(3)])
    np.testing.assert_allclose(got[0], (q * q).sum(0), rtol=1e-5)


# --- scatters sliced in place (memory_plan._sliced_pieces) ---------------------------------
def _unsliced(monkeypatch):
    """Plans made from here on slice no scatter (the reference they must equal)."""
    from graphc.schedule import memory_plan
    monkeypatch.setattr(memory_plan, "_sliced_pieces", lambda *a, **k: ({}, {}))


def _scatters(bp):
    return [i for i, k in enumerate(bp.kernels) if k.kind == "op" and k.ops == ["scatter_slices"]]


def _step_source(fn):
    run = next(iter(fn._compiled.values()))[1]
    return run.source, run.__globals__


def _check_sliced(fn):
    """Every sliced scatter runs no kernel; each of its pieces is a view of its output."""
    bp, mem = fn.plan, fn.plan.memory
    source, ns = _step_source(fn)
    sliced = [i for i in _scatters(bp) if bp.kernels[i].outputs[0] in mem.sliced]
    assert sliced and not any(f"K{i}(" in source for i in sliced)
    for p, (out, index) in mem.placed.items():
        assert out in mem.sliced and p not in mem.offsets and p not in mem.inplace
        assert p not in mem.inplace.values()
    # a scatter of whole rows (the stacked projection's gradient) is stacked, not sliced
    rows = [i for i in _scatters(bp) if bp.kernels[i].outputs[0] in mem.stacked]
    assert not any(f"K{i}(" in source for i in rows)
    text = str(bp)
    assert text.count("scatter_slices (in place)") == len(sliced) + len(rows)
    assert f"{len(sliced) + len(rows)} scatter(s) sliced in place" in text
    return sliced, ns


def test_lstm_gate_gradient_scatters_are_sliced_in_place(monkeypatch):
    # (64, 256) gate pieces: Numba kernels, writing rows of the gate gradient (windows)
    fn, got = _lstm_grads(T=4, B=64, I=8, H=256)
    bp, mem = fn.plan, fn.plan.memory
    sliced, ns = _check_sliced(fn)
    # every step but the first (no forget-gate gradient there: three slices, a gap)
    assert len(sliced) == 3
    assert any(out in mem.in_stack for out in mem.sliced)  # nested: inside the concat's stack
    windowed = [f for f in ns.values() if "ro1 = o1[" in getattr(f, "source", "")]
    assert windowed  # Numba kernels writing contiguous rows of the gate gradient
    _unsliced(monkeypatch)
    ref_fn, want = _lstm_grads(T=4, B=64, I=8, H=256)
    assert not ref_fn.plan.memory.sliced and not ref_fn.plan.memory.placed
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_small_lstm_scatters_are_sliced_in_place_bit_for_bit(monkeypatch):
    fn, got = _lstm_grads()  # NumPy-printed pieces: ufuncs with out= strided views
    sliced, _ = _check_sliced(fn)
    assert len(sliced) == 5
    _unsliced(monkeypatch)
    _, want = _lstm_grads()
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def _scatter_graph(case, xv):
    """Two pieces (cheap arithmetic on slices of x) scattered into an array shaped like x:
    tiling it ("tile"), overlapping ("overlap"), leaving a gap ("gap"), or one piece read
    by another kernel too ("reader"). Returns the results, the NumPy answers and the plan."""
    from graphc.ops.shape_ops import _encode_index, scatter_slices
    n = xv.shape[1] // 2 if case != "gap" else xv.shape[1] // 3
    at = {"tile": (0, n), "reader": (0, n), "overlap": (0, n // 2), "gap": (0, 2 * n)}[case]
    with gc.Graph(case):
        x = gc.placeholder("x", (None, xv.shape[1]))
        ps = [x[:, 0:n] * 3.0 + 1.0, x[:, n:2 * n] * x[:, n:2 * n] - 2.0]
        idx = [_encode_index((slice(None), slice(a, a + n)), 2) for a in at]
        s = scatter_slices(x, ps, idx)
        outs = [s * 1.5]
        if case == "reader":  # a matmul reads the piece (no recompute there)
            outs.append(ps[0] @ gc.constant(np.ones((n, 3), np.float32)))
        fn = gc.compile(outs)
        got = fn(x=xv)
    x64 = xv.astype(np.float64)
    p = [x64[:, 0:n] * 3 + 1, x64[:, n:2 * n] ** 2 - 2]
    want = np.zeros_like(x64)
    for a, q in zip(at, p):
        want[:, a:a + n] += q
    wants = [want * 1.5] + ([p[0] @ np.ones((n, 3))] if case == "reader" else [])
    return (got if isinstance(got, (list, tuple)) else [got]), wants, fn


def test_scatters_that_do_not_tile_or_share_a_piece_are_not_sliced(rng):
    for shape in ((4, 24), (64, 1536)):  # NumPy-printed pieces, then Numba ones
        xv = rng.normal(size=shape).astype(np.float32)
        for case in ("tile", "reader", "overlap", "gap"):
            got, want, fn = _scatter_graph(case, xv)
            mem = fn.plan.memory
            source, ns = _step_source(fn)
            scatter, = _scatters(fn.plan)
            if case == "tile":
                assert len(mem.sliced) == 1 and len(mem.placed) == 2
                assert f"K{scatter}(" not in source and "(in place)" in str(fn.plan)
                windowed = any("ro0 = o0[" in getattr(f, "source", "") for f in ns.values())
                assert windowed == (shape[0] == 64)  # Numba: rows of the output
            else:
                assert not mem.sliced and not mem.placed and f"K{scatter}(" in source
            for g, w in zip(got, want):
                np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_backends_without_strided_outputs_slice_no_scatter():
    from graphc.schedule import Capabilities, bind
    fn, _ = _lstm_grads()
    plan = fn.plan.plan
    shapes = {ph: (6, 4, 3) for ph, _ in plan.feeds}
    assert not bind(plan, shapes, Capabilities()).memory.sliced
    assert bind(plan, shapes, Capabilities(strided_outputs=True)).memory.sliced


def test_sliced_pieces_at_a_fixed_index_write_rows_of_their_output(rng):
    from graphc.ops.shape_ops import _encode_index, scatter_slices
    xv = rng.normal(size=(64, 2, 512)).astype(np.float32)
    with gc.Graph("rows"):
        x = gc.placeholder("x", (None, 2, 512))
        ps = [x[:, 0, :] * 3.0 + 1.0, x[:, 1, :] * x[:, 1, :] - 2.0]
        idx = [_encode_index((slice(None), j), 3) for j in (1, 0)]  # swapped
        fn = gc.compile(scatter_slices(x, ps, idx) * 1.5)
        got = fn(x=xv)
    assert len(fn.plan.memory.sliced) == 1 and len(fn.plan.memory.placed) == 2
    _, ns = _step_source(fn)
    assert any("ro0 = o0[j0 + w0_0, w0_1, w0_2:" in getattr(f, "source", "")
               for f in ns.values())
    x64 = xv.astype(np.float64)
    want = np.stack([x64[:, 1] ** 2 - 2, x64[:, 0] * 3 + 1], axis=1) * 1.5
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


# --- scatters of whole rows stacked, concats of a run of their pieces inside them ----------
def _rows_graph(xv):
    """Four tanh pieces scattered as the rows of a (4, N, D) tensor, and a concat of pieces
    1..3 (the shape backprop through time gives the projection's gradient and the recurrent
    weight's stack); both read by sums. Returns the results and the plan."""
    from graphc.ops.shape_ops import _encode_index, scatter_slices
    with gc.Graph("rows"):
        x = gc.placeholder("x", (None, xv.shape[1]))
        ps = [gc.tanh(x * float(i + 1)) for i in range(4)]
        like = gc.concat([gc.expand_dims(x, 0)] * 4, axis=0)
        rows = scatter_slices(like, ps[::-1], [_encode_index((3 - i,), 3) for i in range(4)])
        run = gc.concat([gc.expand_dims(p, 0) for p in ps[1:]], axis=0)
        fn = gc.compile([gc.sum(rows * rows, axis=0), gc.sum(run, axis=(1, 2))])
        return fn(x=xv), fn.plan


def test_row_scatter_is_a_stack_and_a_run_of_its_pieces_lies_inside_it(rng, monkeypatch):
    xv = rng.normal(size=(4, 16)).astype(np.float32)
    got, bp = _rows_graph(xv)
    mem = bp.memory
    scatter = next(k.outputs[0] for k in bp.kernels if k.ops == ["scatter_slices"])
    concat = next(k.outputs[0] for k in bp.kernels if k.ops == ["concat"]
                  and bp.shapes[k.outputs[0]] == (3, 4, 16))
    assert {scatter, concat} <= mem.stacked and mem.within == {concat: scatter}
    row = 4 * 16 * 4
    assert mem.offsets[concat] == mem.offsets[scatter] + row  # rows 1..3 of the scatter
    text = str(bp)
    assert "scatter_slices (in place)" in text and f"%{concat} in %{scatter} at +{row}" in text
    p = np.stack([np.tanh(xv.astype(np.float64) * (i + 1)) for i in range(4)])
    np.testing.assert_allclose(got[0], (p * p).sum(0), rtol=1e-5)
    np.testing.assert_allclose(got[1], p[1:].sum((1, 2)), rtol=1e-5)
    _unstacked(monkeypatch)
    want, ref = _rows_graph(xv)
    assert not ref.memory.stacked and not ref.memory.within
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_a_stack_takes_the_place_of_a_big_buffer_dead_before_it(monkeypatch):
    """An RNN's stack of step gradients, allocated when its first piece is made, would find
    the projection's freed range nibbled by small buffers; allocated right after that
    death, the arena is smaller (35 against 48 KiB here; 17 against 25 MB for the suite's
    sizes)."""
    from graphc.schedule import memory_plan

    def arena():
        losses, params, step = _train_lstm(5, T=8, B=16, I=8, H=32, classes=10, steps=3,
                                           layer="RNN")
        return step.plan.memory, losses + params
    mem, got = arena()
    monkeypatch.setattr(memory_plan, "_early_stacks", lambda stacked, *a: dict(stacked))
    late, want = arena()
    assert mem.arena_bytes < late.arena_bytes and mem.lower_bound <= mem.arena_bytes
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
