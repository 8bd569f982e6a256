"""The gradient allreduces of a data-parallel step (schedule stage, after fusion and
recompute, before GEMM-update fusion and the memory plan).

Each `allreduce_mean` step of the plan is a gradient's mean over ranks; the plan packs them
into buckets (graphc.plan.make_buckets). Here every bucket becomes two kernels: an
`allreduce_start`, right after the kernel that computes the bucket's last gradient (and
after the previous bucket's start: every rank starts the buckets in the same order,
whatever its batch shape made of the fusion), which packs the gradients into the bucket's
flat buffer and starts a non-blocking allreduce; and an `allreduce_wait`, as late as
possible, right before the first kernel that reads one of the bucket's means (views of the
flat buffer). The kernels that depend on a mean (the optimizer's updates) move after
everything else, so the rest of backward runs while the buckets are in flight. Since the
allreduce is an opaque op between a gradient and its readers, no update was fused with its
gradient's kernel or into its GEMM: the gradient is materialised, reduced, then applied."""
from __future__ import annotations

from .kernel import Kernel


def schedule_collectives(kernels: list[Kernel], plan) -> list[Kernel]:
    """The kernels with each bucket's allreduce placed as a start and a wait (see the
    module docstring)."""
    bucket_of = {r: b for b in plan.buckets for r in b.reduced}
    reducing: dict[int, Kernel] = {}  # reduced slot -> its op kernel
    for k in kernels:
        if k.kind == "op" and k.outputs and k.outputs[0] in bucket_of:
            if len(k.steps) != 1:
                raise AssertionError("an allreduce step was fused with another op")
            reducing[k.outputs[0]] = k
    missing = [r for r in bucket_of if r not in reducing]
    if missing:
        raise AssertionError(f"allreduce steps {missing} have no kernel")
    dropped = {id(k) for k in reducing.values()}
    normal = [k for k in kernels if id(k) not in dropped]
    tainted = set(bucket_of)  # the means and everything computed from them
    after: set[int] = set()
    for k in normal:
        if any(s in tainted for s in k.inputs):
            after.add(id(k))
            tainted.update(k.outputs)
    head = [k for k in normal if id(k) not in after]
    tail = [k for k in normal if id(k) in after]
    made_at = {s: i for i, k in enumerate(head) for s in k.outputs}
    starts: dict[int, list] = {}  # head position -> starts placed right after it
    ready = -1
    for b in plan.buckets:
        grads = [reducing[r].steps[0].inputs[0] for r in b.reduced]
        ready = max([ready] + [made_at.get(g, -1) for g in grads])
        start = Kernel("allreduce_start", [reducing[r].steps[0] for r in b.reduced],
                       list(dict.fromkeys(grads)), [], bucket=b)
        starts.setdefault(ready, []).append(start)
    out = list(starts.get(-1, []))
    for i, k in enumerate(head):
        out.append(k)
        out += starts.get(i, [])
    waited: set[int] = set()

    def wait(b):
        waited.add(b.index)
        out.append(Kernel("allreduce_wait", [reducing[r].steps[0] for r in b.reduced], [],
                          list(b.reduced), bucket=b))
    for k in tail:
        for b in sorted({bucket_of[s].index: bucket_of[s] for s in k.inputs
                         if s in bucket_of}.values(), key=lambda b: b.index):
            if b.index not in waited:
                wait(b)
        out.append(k)
    for b in plan.buckets:
        if b.index not in waited:
            wait(b)
    return out
