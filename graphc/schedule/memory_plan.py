"""Memory planning over a kernel schedule (schedule stage): liveness, one arena, in-place
reuse.

Every value a kernel writes gets a byte range in one arena, allocated once per bound shape.
A range is reused once the last reader of its value has run; an elementwise kernel may write
its output over an input that dies there; a parameter update that reads the parameter last
writes straight into the parameter. Offsets are multiples of the backend's alignment."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .kernel import view_bases

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
                align: int = DEFAULT_ALIGN) -> MemoryPlan:
    """Offsets for every materialized kernel output (multiples of `align` bytes); see the
    module docstring."""
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
        if k.kind in ("view", "alias", "const", "allreduce_start", "allreduce_wait"):
            continue
        for out in k.outputs:
            if out in param_writes or out in leaves or out in external:
                continue
            if out in resident:  # a gradient computed straight into its bucket
                b, off = resident[out]
                offsets[out] = buckets[b.index] + off * b.dtype.itemsize
                continue
            born[out] = i
            donor = None
            if k.kind == "fused" and (inplace_ok is None or inplace_ok(k)):
                donor = None if out in k.epilogue else next((s for s in k.inputs if s in alive and base[s] == s
                              and last.get(s) == i and size[s] == size[out]
                              and not any(base[v] == s and v != s for v in k.inputs)
                              # the epilogue runs after the main loop has written `out`
                              and not any(s in st.inputs for st in k.steps
                                          if st.slot in k.epilogue)
                              and dtypes[s] == dtypes[out] and tuple(shapes[s]) == k.shape
                              and tuple(shapes[out]) == k.shape), None)
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
    lower = _liveness_bound(born, last, size, len(kernels), inplace)
    naive = sum(size[st.slot] for st in plan.steps)
    return MemoryPlan(offsets, arena.top, lower, naive, inplace, param_writes, external,
                      buckets, {g: b.index for g, (b, _) in resident.items()})


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


