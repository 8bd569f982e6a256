"""Recompute instead of store, across fused kernels (schedule stage, after fusion).

A forward kernel often materializes an elementwise value only because a backward kernel
reads it (a dropout keep-mask, an activation's derivative). When that value is cheap to
derive from what the backward kernel can read anyway, the backward kernel recomputes it and
the value is never written: one array write and one read fewer, for a few flops.

The cost rule, per value v written by fused kernel K1 and read by fused kernels K2...:
- every reader outside K1 is a fused kernel over K1's iteration shape, reading v in its
  main loop (not in an epilogue);
- v's cone (the K1 steps it depends on, back to K1's inputs or its materialized outputs)
  costs at most the backend's `max_recompute_cost` per element (each op's OpDef.cost:
  arithmetic 1, division and square root 4, a transcendental function 10; a backend may
  override an op's cost);
- the cone's leaves that a reader does not read already add at most v's own bytes. Then
  the leaves' lifetimes grow by no more than v's disappears (peak memory does not grow)
  and the traffic saved, one write plus one read per reader, exceeds the traffic added;
- no reader runs after the update of a parameter among the leaves (the update writes the
  parameter in place, so it must stay the parameter's last reader)."""
from __future__ import annotations

import numpy as np

from .capabilities import CPU_DEFAULT, Capabilities
from .kernel import Kernel, data_inputs, view_bases


def recompute_cheap_values(kernels: list[Kernel], plan, shapes,
                           caps: Capabilities = CPU_DEFAULT) -> list[Kernel]:
    """Apply the module's cost rule to the ordered kernels, in place; returns them."""
    kept = set(plan.outputs) | {s for _, s in plan.updates}
    slot_of = {id(p): s for p, s in plan.params}
    base = view_bases(kernels, len(plan.nodes))
    order = {st.slot: i for i, st in enumerate(plan.steps)}
    position = {id(k): i for i, k in enumerate(kernels)}
    writer = {s: i for i, k in enumerate(kernels) for s in k.outputs}
    # parameter slot -> position of the kernel computing its new value
    update_at = {slot_of[id(p)]: writer.get(s, -1) for p, s in plan.updates}
    readers = _readers(kernels)
    changed = True
    while changed:  # a recomputed value can make another one cheap for the same reader
        changed = False
        for k1 in kernels:
            if k1.kind != "fused":
                continue
            for v in list(k1.outputs):
                if v in kept or v in k1.late():
                    continue
                found = _recompute_plan(k1, v, readers.get(v, []), plan, shapes, caps)
                if found is None:
                    continue
                cone, leaves, targets = found
                last = max(position[id(k)] for k in targets)
                if any(update_at.get(base[s], len(kernels)) <= last for s in leaves):
                    continue  # the parameter's update must stay its last reader
                for k2 in targets:
                    _insert(k2, cone, order)
                    for s in leaves:
                        if k2 not in readers.setdefault(s, []):
                            readers[s].append(k2)
                readers[v] = [k1]
                k1.outputs.remove(v)
                changed = True
    return kernels


def _readers(kernels) -> dict:
    readers: dict[int, list] = {}
    for k in kernels:
        for s in k.inputs:
            readers.setdefault(s, []).append(k)
    return readers


def _recompute_plan(k1: Kernel, v: int, readers: list, plan, shapes, caps: Capabilities):
    """(cone steps in order, their leaves, reader kernels) if the cost rule says recompute
    v, else None."""
    outside = [k for k in readers if k is not k1]
    if not outside or any(k.kind != "fused" or k.shape != k1.shape for k in outside):
        return None
    for k2 in outside:
        late = k2.late()
        if any(v in data_inputs(st) for st in k2.steps if st.slot in late):
            return None
    members = {st.slot: st for st in k1.steps}
    materialized = set(k1.outputs) - {v}
    cone, leaves, stack = {}, set(), [members[v]]
    while stack:
        st = stack.pop()
        if st.slot in cone:
            continue
        cone[st.slot] = st
        for s in data_inputs(st):
            if s in members and s not in materialized and s not in k1.late():
                stack.append(members[s])
            else:
                leaves.add(s)
    if sum(caps.op_cost(st.op) for st in cone.values()) > caps.max_recompute_cost:
        return None
    v_bytes = _nbytes(shapes[v], plan.nodes[v].dtype)
    for k2 in outside:
        have = set(k2.inputs) | {st.slot for st in k2.steps}
        added = sum(_nbytes(shapes[s], plan.nodes[s].dtype) for s in leaves - have
                    if len(shapes[s]) and int(np.prod(shapes[s])) > 1)
        if added > v_bytes:
            return None
    return [st for st in k1.steps if st.slot in cone], leaves, outside


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _insert(k2: Kernel, cone: list, order: dict) -> None:
    """Add the cone's steps to k2 (in plan order) and recompute k2's inputs."""
    have = {st.slot for st in k2.steps}
    k2.steps.extend(st for st in cone if st.slot not in have)
    k2.steps.sort(key=lambda st: order[st.slot])
    member_slots = {st.slot for st in k2.steps}
    k2.inputs = list(dict.fromkeys(s for st in k2.steps for s in data_inputs(st)
                                   if s not in member_slots))
