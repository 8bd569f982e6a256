"""The bind driver (schedule stage): a symbolic plan and concrete feed shapes become a
BoundPlan, through no-op aliasing, constant folding, fusion, recompute, GEMM-update fusion
and memory planning, in that order, each tuned by the backend's Capabilities."""
from __future__ import annotations

import dataclasses

import numpy as np

from ..plan import Plan, Step
from .bound import BoundPlan
from .capabilities import CPU_DEFAULT, Capabilities
from .collectives import schedule_collectives
from .fusion import group
from .gemm_update import fuse_gemm_updates
from .memory_plan import plan_memory
from .recompute import recompute_cheap_values


def bind(plan: Plan, feed_shapes: dict, caps: Capabilities = CPU_DEFAULT,
         fuse: bool = True) -> BoundPlan:
    """Specialize a plan to concrete feed shapes for a backend with capabilities `caps`:
    no-op removal, constant folding, fusion, recompute, the buckets' allreduces (data
    parallel), GEMM-update fusion, memory plan.
    `fuse=False` (compile(optimize=False)) keeps one kernel per op."""
    fuse = fuse and caps.fuse
    shapes = plan.bind(feed_shapes)
    aliased = {st.slot: st.inputs[0] for st in plan.steps
               if st.op.noop_if_same_shape and tuple(shapes[st.inputs[0]]) == tuple(shapes[st.slot])}

    def canon(s):
        while s in aliased:
            s = aliased[s]
        return s
    # Readers of a no-op's result read its source directly; the no-op stays only as an
    # alias, for outputs and updates that name it.
    steps = [Step(st.slot, st.node, tuple(canon(s) for s in st.inputs)) for st in plan.steps]
    plan = dataclasses.replace(plan, steps=steps)
    folded = _fold_constants(plan, shapes, aliased, caps.fold_limit)
    kernels = group(plan, shapes, aliased, folded, fuse=fuse, pairs=caps.pairs)
    if fuse and caps.recompute:
        kernels = recompute_cheap_values(kernels, plan, shapes, caps)
    if plan.buckets:  # before GEMM-update fusion, which reads the final kernel order
        kernels = schedule_collectives(kernels, plan)
    if fuse and caps.gemm_update:
        kernels = fuse_gemm_updates(kernels, plan, shapes)
    memory = plan_memory(kernels, plan, shapes, align=caps.alignment,
                         strided_outputs=caps.strided_outputs)
    return BoundPlan(plan, shapes, kernels, memory, aliased, folded)


def _fold_constants(plan: Plan, shapes: list, aliased: dict, limit: int) -> dict:
    """Values computable at bind time (from constants and bound shapes alone), up to
    `limit` elements each."""
    values = {s: c.value for c, s in plan.consts}
    folded = {}
    for st in plan.steps:
        op = st.op
        if st.slot in aliased:
            if aliased[st.slot] in values:
                values[st.slot] = values[aliased[st.slot]]
            continue
        data = [s for i, s in enumerate(st.inputs) if i not in op.shape_only]
        if getattr(op, "collective", None) is not None:
            continue  # every rank runs every collective, whatever its shapes fold
        if op.reference is None or not all(s in values for s in data) or \
                int(np.prod(shapes[st.slot], dtype=np.int64)) > limit:
            continue
        args = [tuple(shapes[s]) if i in op.shape_only else values[s]
                for i, s in enumerate(st.inputs)]
        with np.errstate(all="ignore"):
            value = np.array(op.reference(*args, **st.node.attrs), dtype=st.node.dtype)
        values[st.slot] = folded[st.slot] = value
    return folded
