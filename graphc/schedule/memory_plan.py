"""Memory planning over a kernel schedule (schedule stage): liveness, one arena, in-place
reuse.

Every value a kernel writes gets a byte range in one arena, allocated once per bound shape.
A range is reused once the last reader of its value has run; an elementwise kernel may write
its output over an input that dies there; a parameter update that reads the parameter last
writes straight into the parameter. The pieces of a concat along a leading axis (each one
contiguous block of its output: backprop through time's per-step gradients) are placed at
their positions in the concat's buffer, so their producers write them there and the concat
runs no kernel ("stacked in place"). On a backend whose kernels write through outputs of
any strides (Capabilities.strided_outputs), the pieces of a scatter_slices whose slices tile
its output exactly once are strided views of the output, written there by their producers,
and the scatter runs no kernel either ("sliced in place"). Offsets are multiples of the
backend's alignment."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .kernel import data_inputs, view_bases

DEFAULT_ALIGN = 64  # bytes: a cache line, and the widest SIMD load on the CPU


@dataclass
class MemoryPlan:
    offsets: dict  # slot -> byte offset in the arena
    arena_bytes: int
    lower_bound: int  # most bytes live at once (liveness, with the in-place writes)
    naive_bytes: int  # one buffer per node
    inplace: dict = field(default_factory=dict)  # out slot -> input slot whose range it takes
    param_writes: dict = field(default_factory=dict)  # update slot -> parameter written in place
    external: set = field(default_factory=set)  # outputs written straight into returned arrays
    # data parallel: bucket index -> byte offset of its flat buffer (its means are views),
    # and the gradients computed straight into a bucket -> its index
    buckets: dict = field(default_factory=dict)
    in_bucket: dict = field(default_factory=dict)
    # concat outputs whose pieces the plan placed at their positions in its buffer: the
    # executors run no kernel for them (see _stacked_pieces)
    stacked: set = field(default_factory=set)
    in_stack: dict = field(default_factory=dict)  # piece slot -> the concat output holding it
    # concats of a run of another stack's pieces, in its order: a range of that stack's
    # bytes (stacked too: no kernel runs); concat output -> the stack holding it
    within: dict = field(default_factory=dict)
    # scatter_slices outputs whose pieces are views of their buffer (no offset: strided),
    # written there by their producers: the executor runs no kernel for them
    # (see _sliced_pieces)
    sliced: set = field(default_factory=set)
    placed: dict = field(default_factory=dict)  # piece slot -> (scatter output, index tuple)


def nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class _Arena:
    """Best-fit allocator over byte offsets (free blocks kept sorted by offset)."""

    def __init__(self, align: int):
        self.free: list[tuple[int, int]] = []  # (offset, size)
        self.top = 0
        self.align = align

    def _round(self, n: int) -> int:
        return (max(n, 1) + self.align - 1) // self.align * self.align

    def alloc(self, size: int) -> int:
        size = self._round(size)
        best = None
        for i, (off, sz) in enumerate(self.free):
            if sz >= size and (best is None or sz < self.free[best][1]):
                best = i
        if best is None:
            if self.free and self.free[-1][0] + self.free[-1][1] == self.top:
                off, _ = self.free.pop()  # grow the trailing free block
                self.top = off + size
                return off
            off = self.top
            self.top += size
            return off
        off, sz = self.free.pop(best)
        if sz > size:
            bisect.insort(self.free, (off + size, sz - size))
        return off

    def release(self, off: int, size: int) -> None:
        size = self._round(size)
        bisect.insort(self.free, (off, size))
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def plan_memory(kernels, plan, shapes: list, inplace_ok=None,
                align: int = DEFAULT_ALIGN, strided_outputs: bool = False) -> MemoryPlan:
    """Offsets for every materialized kernel output (multiples of `align` bytes); see the
    module docstring. `strided_outputs`: whether the backend's fused kernels write through
    outputs of any strides (then scatter_slices pieces may be views: _sliced_pieces)."""
    dtypes = [n.dtype for n in plan.nodes]
    size = [nbytes(shapes[s], dtypes[s]) for s in range(len(plan.nodes))]
    leaves = {s for _, s in plan.feeds} | {s for _, s in plan.params} | {s for _, s in plan.consts}
    base = view_bases(kernels, len(plan.nodes))
    leaves |= {k.outputs[0] for k in kernels if k.kind == "const"}
    end = len(kernels)
    last: dict[int, int] = {}
    for i, k in enumerate(kernels):
        for s in k.inputs:
            last[base[s]] = max(last.get(base[s], -1), i)
    for s in list(plan.outputs) + [s for _, s in plan.updates]:
        last[base[s]] = end

    # Outputs computed by a kernel are written into arrays handed to the caller (recycled
    # once the caller drops them), not into the arena: no copy on the way out.
    produced = {s for k in kernels if k.kind in ("fused", "op", "gemm") for s in k.outputs}
    updated = {s for _, s in plan.updates}
    external = {base[s] for s in plan.outputs if base[s] in produced and base[s] not in updated}

    param_writes = {}
    for p, s in plan.updates:
        k_idx = next((i for i, k in enumerate(kernels) if s in k.outputs), None)
        if k_idx is None or base[s] != s:
            continue
        k = kernels[k_idx]
        ps = next(slot for pp, slot in plan.params if pp is p)
        reads_view = any(base[i] == ps and i != ps for i in k.inputs)
        out_shape = k.epilogue_shape if s in getattr(k, "epilogue", ()) else k.shape
        if (k.kind in ("fused", "gemm") and out_shape == tuple(p.shape) and last.get(ps, -1) <= k_idx
                and not reads_view and s not in plan.outputs):
            param_writes[s] = p

    resident, alloc_at = _bucket_residents(kernels, plan, base, leaves | external |
                                           set(param_writes))

    def may_donate(k, s, out) -> bool:
        """Whether fused kernel k may write `out` over its input s, were s to die there."""
        return (out not in k.epilogue and base[s] == s and size[s] == size[out]
                and not any(base[v] == s and v != s for v in k.inputs)
                # the epilogue runs after the main loop has written `out`
                and not any(s in st.inputs for st in k.steps if st.slot in k.epilogue)
                and dtypes[s] == dtypes[out] and tuple(shapes[s]) == k.shape
                and tuple(shapes[out]) == k.shape)

    placed = leaves | external | set(param_writes) | set(resident)  # not in the arena's lot

    def donor_later(s, after) -> bool:
        """Whether a fused kernel after `after` could write over s in place (its last
        reader, were nothing to keep s alive longer)."""
        j = last.get(s, -1)
        if j <= after or j >= end:
            return False
        k = kernels[j]
        return k.kind == "fused" and (inplace_ok is None or inplace_ok(k)) and \
            s in k.inputs and any(may_donate(k, s, o) for o in k.outputs if o not in placed)

    sliced_pieces, sliced_at = ({}, {}) if not strided_outputs else \
        _sliced_pieces(kernels, plan, shapes, base, dtypes, placed)
    for out, first in sliced_at.items():  # it lives from its first piece's producer on
        scatter = next(i for i, k in enumerate(kernels) if out in k.outputs)
        last[out] = max(last.get(out, scatter), scatter)
    pieces, stack_at, within = _stacked_pieces(kernels, plan, shapes, base, size, dtypes,
                                               align, placed | set(sliced_pieces), donor_later)
    stacked: dict[int, int] = {}  # concat output -> the kernel index where it is allocated
    for out, first in stack_at.items():
        # a piece that is itself a sliced scatter's output: its pieces come earlier
        first = min([first] + [sliced_at[p] for p, (o, _) in pieces.items()
                               if o == out and p in sliced_at])
        stacked[out] = first
        # the stack lives until the last reader of the concat's result and of every piece
        last[out] = max([last.get(out, first)] + [last.get(p, first) for p, (o, _) in
                                                  pieces.items() if o == out])
    for sub, (out, _) in within.items():  # the stack lives as long as its sub-stacks' readers
        last[out] = max(last[out], last.get(sub, stacked[out]))

    def allocate(stacked: dict):
        """The arena walk: offsets for every buffer, stacks allocated at `stacked`'s
        kernel indices."""
        arena = _Arena(align)
        offsets: dict[int, int] = {}
        inplace: dict[int, int] = {}
        alive: set[int] = set()
        born: dict[int, int] = {}
        buckets: dict[int, int] = {}
        bucket_end: dict[int, tuple] = {}  # bucket index -> (last reader of its means, bytes)
        for i, k in enumerate(kernels):
            for b in alloc_at.get(i, ()):  # the flat buffer lives until its means are read
                buckets[b.index] = arena.alloc(b.nbytes)
                bucket_end[b.index] = (max([i] + [last.get(r, i) for r in b.reduced]), b.nbytes)
            if k.kind == "allreduce_wait":
                b = k.bucket
                for r, off in zip(b.reduced, b.offsets):
                    offsets[r] = buckets[b.index] + off * b.dtype.itemsize
            for j, (end_at, nb) in list(bucket_end.items()):
                if end_at < i:
                    arena.release(buckets[j], nb)
                    del bucket_end[j]
            for s in [s for s, at in stacked.items() if at == i]:
                offsets[s] = arena.alloc(size[s])  # the whole stack, at its first piece's producer
                born[s] = i
                alive.add(s)
                for sub, (o, off) in within.items():
                    if o == s:
                        offsets[sub] = offsets[s] + off
            for s in [s for s, first in sliced_at.items() if first == i and s not in pieces]:
                offsets[s] = arena.alloc(size[s])  # a sliced scatter's output, at its first
                born[s] = i                        # piece's producer (a stacked one: its stack)
                alive.add(s)
            if k.kind in ("view", "alias", "const", "allreduce_start", "allreduce_wait"):
                continue
            for out in k.outputs:
                if out in param_writes or out in leaves or out in external or out in stacked \
                        or out in within:
                    continue
                if out in sliced_pieces:  # a view of its scatter's output: no bytes of its own
                    continue
                if out in pieces:  # written straight into its place in the stacked concat
                    s, off = pieces[out]
                    offsets[out] = offsets[s] + off
                    continue
                if out in sliced_at:  # allocated at its first piece's producer already
                    continue
                if out in resident:  # a gradient computed straight into its bucket
                    b, off = resident[out]
                    offsets[out] = buckets[b.index] + off * b.dtype.itemsize
                    continue
                born[out] = i
                donor = None
                if k.kind == "fused" and (inplace_ok is None or inplace_ok(k)):
                    donor = next((s for s in k.inputs if s in alive and last.get(s) == i
                                  and s not in stacked  # the pieces' bytes lie in it
                                  and may_donate(k, s, out)), None)
                if donor is not None:
                    offsets[out] = offsets[donor]
                    inplace[out] = donor
                    alive.remove(donor)
                else:
                    offsets[out] = arena.alloc(size[out])
                alive.add(out)
            for s in [s for s in alive if last.get(s, i) <= i]:
                arena.release(offsets[s], size[s])
                alive.remove(s)
        return arena, offsets, inplace, born, buckets

    arena, offsets, inplace, born, buckets = allocate(stacked)
    early = _early_stacks(stacked, kernels, last, size, leaves | external | set(param_writes)
                          | set(stacked) | set(within) | set(pieces) | set(sliced_at)
                          | set(sliced_pieces) | set(resident))
    if early != stacked:
        # A stack allocated when its first piece is made finds the arena's holes already
        # taken by the small buffers made since the big one it could have reused died (an
        # RNN's stack of step gradients, after the forward's projection of the same size:
        # 17 against 25 MB for the suite's sizes): allocated right after that death
        # instead, if that plans a smaller arena.
        alt = allocate(early)
        if alt[0].top < arena.top:
            arena, offsets, inplace, born, buckets = alt
    lower = _liveness_bound(born, last, size, len(kernels), inplace)
    naive = sum(size[st.slot] for st in plan.steps)
    return MemoryPlan(offsets, arena.top, lower, naive, inplace, param_writes, external,
                      buckets, {g: b.index for g, (b, _) in resident.items()},
                      set(stacked) | set(within), {p: o for p, (o, _) in pieces.items()},
                      {sub: o for sub, (o, _) in within.items()}, set(sliced_at),
                      sliced_pieces)


def _early_stacks(stacked: dict, kernels, last: dict, size: list, unplain: set) -> dict:
    """For each stack, the kernel index right after the last death, before its first
    piece is made, of a plain buffer at least its size (else its own index)."""
    early = dict(stacked)
    for out, first in stacked.items():
        deaths = [last[s] for k in kernels for s in k.outputs
                  if s not in unplain and size[s] >= size[out] and last.get(s, first) < first]
        if deaths:
            early[out] = max(deaths) + 1
    return early


def _producers(kernels) -> tuple[dict, set]:
    """({slot: index of the (last) kernel writing it}, slots written by more than one)."""
    made: dict[int, int] = {}
    twice: set = set()
    for i, k in enumerate(kernels):
        for s in k.outputs:
            if s in made:
                twice.add(s)
            made[s] = i
    return made, twice


def _sliced_pieces(kernels, plan, shapes, base, dtypes, excluded: set) -> tuple[dict, dict]:
    """Scatters sliced in place: a scatter_slices whose slices tile its output exactly once
    (ops.shape_ops.slices_tile), whose output is a plain buffer of the arena (not an
    output, an update or `excluded`), each of whose gradients is a main output of a fused
    kernel (its iteration shape: not a reduction or the epilogue's), read by this scatter
    alone and once, not an output, an update or `excluded`, of the output's dtype and its
    slice's shape. Such a piece is a strided view of the output, which its producer writes
    through (the backend's kernels take outputs of any strides); no piece is then in place
    of any input, nor any input's donor (its only reader is the scatter). Returns ({piece
    slot: (scatter output, index tuple)}, {scatter output: kernel index of its first
    piece's producer, where the output is allocated})."""
    from ..ops.shape_ops import _decode_index, slices_tile
    made, twice = _producers(kernels)
    readers: dict[int, list] = {}
    for i, k in enumerate(kernels):
        for s in k.inputs:
            readers.setdefault(base[s], []).append(i)
    roots = set(plan.outputs) | {s for _, s in plan.updates}
    roots |= {base[s] for s in roots}
    placed: dict[int, tuple] = {}
    first_at: dict[int, int] = {}
    for i, k in enumerate(kernels):
        if k.kind != "op" or len(k.steps) != 1 or k.steps[0].op.name != "scatter_slices":
            continue
        out = k.outputs[0]
        shape = tuple(shapes[out])
        indices = tuple(k.steps[0].node.attrs["indices"])
        grads = data_inputs(k.steps[0])
        if out in excluded or out in roots or base[out] != out or out in twice or \
                len(grads) != len(indices) or not slices_tile(shape, indices):
            continue
        like = np.broadcast_to(np.empty((), np.uint8), shape)  # no data: slice shapes only
        mine = {}
        for g, code in zip(grads, indices):
            where = _decode_index(code) + (Ellipsis,)
            pk = kernels[made[g]] if g in made else None
            if not (pk is not None and pk.kind == "fused" and base[g] == g and made[g] < i
                    and g not in twice and g not in excluded and g not in roots
                    and g not in pk.late() and tuple(shapes[g]) == tuple(pk.shape)
                    and readers.get(g) == [i] and grads.count(g) == 1
                    and dtypes[g] == dtypes[out]
                    and tuple(shapes[g]) == like[where].shape):
                break
            mine[g] = (out, where)
        else:
            placed.update(mine)
            first_at[out] = min(made[g] for g in mine)
    return placed, first_at


# views that keep a buffer's bytes contiguous and in order (a new shape over the same bytes)
_RESHAPING = ("reshape", "reshape_like", "expand_dims")


def _stacked_pieces(kernels, plan, shapes, base, size, dtypes, align, excluded: set,
                    donor_later) -> tuple[dict, dict, dict]:
    """Concats stacked in place: a concat along an axis whose preceding dimensions are all 1
    (every input one contiguous block of the output), each of whose inputs is a reshaping
    view of (or is) a plain buffer computed by a fused or op kernel -- not an output, an
    update, a leaf, a bucket's resident or `excluded`, in no other concat and not read
    twice by this one, not one a later fused kernel could write over in place
    (`donor_later`) -- at an offset inside the output that is a multiple of `align`.
    A scatter_slices that puts one piece at each index of its first axis (each piece a
    whole row: backprop's gradient of an RNN's stacked input projection) is such a stack
    of its pieces in index order. A concat of a run of another stack's pieces, in its
    order, is a range of that stack's bytes (a sub-stack: backprop's stack of steps
    1..T-1 for the recurrent weight inside that projection's gradient).
    Returns ({piece slot: (stack output, byte offset in it)}, {stack output: kernel index
    of its first piece's producer, where the stack is allocated}, {sub-stack output:
    (stack output, byte offset in it)})."""
    made, twice = _producers(kernels)
    view_of = {k.outputs[0]: k for k in kernels if k.kind in ("view", "alias")}
    roots = set(plan.outputs) | {s for _, s in plan.updates}
    roots |= {base[s] for s in roots}
    candidates = []
    for i, k in enumerate(kernels):
        if k.kind != "op" or len(k.steps) != 1:
            continue
        name = k.steps[0].op.name
        out = k.outputs[0]
        shape = tuple(shapes[out])
        if name == "concat":
            axis = k.steps[0].node.attrs["axis"] % max(len(shape), 1)
            if any(d != 1 for d in shape[:axis]):
                continue
            ins = data_inputs(k.steps[0])
        elif name == "scatter_slices":
            ins = _rows_in_order(k.steps[0], shape, shapes)
            if ins is None:
                continue
        else:
            continue
        if out in excluded or out in roots or base[out] != out or out in twice:
            continue
        candidates.append((i, out, ins))

    def reshaped(s, p) -> bool:
        """Every view between the piece p and the stack's input s reshapes."""
        v = s
        while v != p:
            vk = view_of[v]
            if not (vk.kind == "alias" or vk.steps[0].op.name in _RESHAPING):
                return False
            v = vk.inputs[0]
        return True

    subs = _sub_stacks(candidates, base)
    seen: dict[int, int] = {}  # piece -> how many stacks (sub-stacks aside) it is in
    for _, out, ins in candidates:
        if out not in subs:
            for s in ins:
                seen[base[s]] = seen.get(base[s], 0) + 1
    pieces: dict[int, tuple] = {}
    stack_at: dict[int, int] = {}
    for i, out, ins in candidates:
        if out in subs:
            continue
        mine, off = {}, 0
        for s in ins:
            p = base[s]
            ok = (p in made and kernels[made[p]].kind in ("fused", "op") and made[p] < i
                  and p not in twice and p not in excluded and p not in roots
                  and seen.get(p) == 1 and dtypes[p] == dtypes[out] and size[s] == size[p]
                  and off % align == 0 and not donor_later(p, i) and reshaped(s, p))
            if not ok:
                break
            mine[p] = (out, off)
            off += size[p]
        else:
            if mine and off == size[out]:
                pieces.update(mine)
                stack_at[out] = min(made[p] for p in mine)
    within: dict[int, tuple] = {}
    for i, out, ins in candidates:
        big = subs.get(out)
        if big is None or big not in stack_at:
            continue
        first = pieces.get(base[ins[0]])
        if first is not None and first[0] == big and dtypes[out] == dtypes[big] and \
                all(base[s] in pieces and size[s] == size[base[s]] and reshaped(s, base[s])
                    for s in ins) and size[out] == sum(size[base[s]] for s in ins):
            within[out] = (big, first[1])
    return pieces, stack_at, within


def _rows_in_order(step, shape: tuple, shapes) -> list | None:
    """The pieces of a scatter_slices in the order of the first-axis index each fills
    whole, when every index 0..n-1 gets exactly one piece of the row's shape; else None."""
    indices = step.node.attrs["indices"]
    grads = data_inputs(step)
    if not shape or len(grads) != len(indices) or len(grads) != shape[0]:
        return None
    whole = ("s", None, None, None)
    at: dict[int, int] = {}
    for g, code in zip(grads, indices):
        if len(code) != len(shape) or code[0][0] != "i" or any(c != whole for c in code[1:]):
            return None
        k = code[0][1] % shape[0]
        if k in at or tuple(shapes[g]) != shape[1:]:
            return None
        at[k] = g
    return [at[k] for k in range(shape[0])]


def _sub_stacks(candidates: list, base: list) -> dict:
    """{stack output: bigger stack output} for each candidate whose pieces are a run of a
    bigger candidate's pieces, in its order (each piece once)."""
    runs = {out: [base[s] for s in ins] for _, out, ins in candidates}
    subs = {}
    for _, out, ins in candidates:
        mine = runs[out]
        if len(set(mine)) != len(mine):
            continue
        for _, big, _ in candidates:
            theirs = runs[big]
            if big == out or len(theirs) <= len(mine) or mine[0] not in theirs:
                continue
            at = theirs.index(mine[0])
            if theirs[at:at + len(mine)] == mine:
                subs[out] = big
                break
    return {out: big for out, big in subs.items() if big not in subs}


def _bucket_residents(kernels, plan, base, excluded: set) -> tuple[dict, dict]:
    """Data parallel, as DDP's gradient_as_bucket_view: the gradients a kernel can write
    straight into their place in the bucket's flat buffer (no copy at the allreduce's start)
    -- computed by a fused or op kernel, read by the start alone, not a view, an output or
    an update. Returns ({gradient slot: (bucket, element offset)}, {kernel index: buckets
    whose flat buffer is allocated there}): at the start, or at the first resident's
    producer."""
    resident: dict[int, tuple] = {}
    alloc_at: dict[int, list] = {}
    made = {s: i for i, k in enumerate(kernels) if k.kind in ("fused", "op") for s in k.outputs}
    readers: dict[int, set] = {}
    for i, k in enumerate(kernels):
        for s in k.inputs:
            readers.setdefault(base[s], set()).add(i)
    roots = set(plan.outputs) | {s for _, s in plan.updates}
    for i, k in enumerate(kernels):
        if k.kind != "allreduce_start":
            continue
        b, first = k.bucket, i
        for st, off in zip(k.steps, b.offsets):
            g = st.inputs[0]
            if g in made and base[g] == g and g not in resident and g not in roots \
                    and g not in excluded and readers.get(g) == {i} \
                    and plan.nodes[g].dtype == b.dtype:
                resident[g] = (b, off)
                first = min(first, made[g])
        alloc_at.setdefault(first, []).append(b)
    return resident, alloc_at


def _liveness_bound(born: dict, last: dict, size: list, n: int, inplace: dict) -> int:
    """Most bytes live at once if every value had its own range for exactly its lifetime
    (a value written in place of an input that dies there inherits the input's bytes)."""
    delta = [0] * (n + 2)
    handed = {donor: born[out] for out, donor in inplace.items()}
    for s, b in born.items():
        delta[b] += size[s]
        end = handed[s] - 1 if s in handed else max(last.get(s, b), b)
        delta[end + 1] -= size[s]
    peak = cur = 0
    for d in delta:
        cur += d
        peak = max(peak, cur)
    return peak


