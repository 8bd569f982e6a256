"""Elementwise fusion (schedule stage), on a plan bound to concrete shapes.

Maximal groups of elementwise steps with the same iteration shape become one kernel; their
inputs may broadcast. A reduction over a member's value (a bias gradient, a loss total)
joins the group as a trailing reduction. Values used only inside a group are never
materialized. Groups never create a cycle: a step joins only if none of its outside inputs
depends on the group. The result is a list of kernels in an order that respects every
dependency. Which ops are views, reductions or elementwise is read from the registry."""
from __future__ import annotations

import numpy as np

from .kernel import Kernel, data_inputs, reduction_axes


def group(plan, shapes: list, aliased: dict, folded=(), fuse: bool = True,
          pairs=()) -> list[Kernel]:
    """Partition the plan's steps into kernels (see module docstring). `pairs` names
    (first op, second op) that the backend computes together in one kernel when the second
    reads the first's inputs (softmax cross-entropy and its gradient)."""
    producer: dict[int, int] = {}  # slot -> index of its step
    for i, step in enumerate(plan.steps):
        producer[step.slot] = i
    ancestors: dict[int, int] = {}  # slot -> bitset of step indices it depends on

    def anc(slot):
        return ancestors.get(slot, 0)

    for i, step in enumerate(plan.steps):
        bits = 0
        for s in data_inputs(step):
            bits |= anc(s) | (1 << producer[s] if s in producer else 0)
        ancestors[step.slot] = bits

    owner: dict[int, Kernel] = {}  # step index -> kernel
    members: dict[int, int] = {}  # id(kernel) -> bitset of member step indices
    kernels: list[Kernel] = []
    # Kernel-level dependence, for pruning the legality search: hi[id(k)] is the highest
    # step index in k or in any kernel k depends on (as whole kernels). Steps arrive in
    # order, so a kernel that gains step i, and everything downstream of it, gets hi = i.
    hi: dict[int, int] = {}
    users: dict[int, set] = {}  # id(kernel) -> ids of kernels reading its outputs
    by_id: dict[int, Kernel] = {}
    merged: dict[int, tuple] = {}  # id(absorbed kernel) -> (it, the kernel it joined)
    absorbed: list = []  # kernels merged into another by the current step

    def resolve(kid: int) -> Kernel:
        while kid in merged:
            kid = id(merged[kid][1])
        return by_id[kid]

    def source_kernel(slot):
        j = producer.get(slot)
        while j is not None and j not in owner:  # an alias nobody materializes: its source
            j = producer.get(plan.steps[j].inputs[0])
        return None if j is None else owner[j]

    def touch(i: int) -> None:
        k = owner[i]
        by_id[id(k)] = k
        for other in absorbed:
            merged[id(other)] = (other, k)
            users.setdefault(id(k), set()).update(users.pop(id(other), ()))
        absorbed.clear()
        for s in data_inputs(plan.steps[i]):
            src = source_kernel(s)
            if src is not None and src is not k:
                users.setdefault(id(src), set()).add(id(k))
        hi[id(k)] = i
        stack = [k]
        while stack:
            for uid in list(users.get(id(stack.pop()), ())):
                u = resolve(uid)
                if hi.get(id(u), -1) < i:
                    hi[id(u)] = i
                    stack.append(u)

    def legal(kernel_bits: int, new_inputs) -> bool:
        """Joining is legal if no outside input depends on the group. Dependence is judged
        between whole kernels: a kernel's outputs exist only after all of it has run."""
        lowest = (kernel_bits & -kernel_bits).bit_length() - 1
        seen: set[int] = set()
        # an explicit stack: chains of kernels can be thousands deep
        stack = [s for s in new_inputs
                 if not (s in producer and kernel_bits >> producer[s] & 1)]
        while stack:
            slot = stack.pop()
            j = producer.get(slot)
            if j is None:
                continue
            if kernel_bits >> j & 1:  # reached from outside: the outside kernel needs the group
                return False
            if anc(slot) & kernel_bits:
                return False
            k = source_kernel(slot)
            if k is None or id(k) in seen:
                continue
            seen.add(id(k))
            if members[id(k)] & kernel_bits:
                return False
            if hi[id(k)] < lowest:  # k and all it depends on precede the group
                continue
            stack.extend(s for st in k.steps for s in data_inputs(st))
        return True

    roots = set(plan.outputs) | {s for _, s in plan.updates}
    for i, step in enumerate(plan.steps):
        name = step.op.name
        if step.slot in aliased and step.slot not in roots:
            continue  # every reader reads the source directly (see plan.bind)
        if step.slot in folded:
            k = Kernel("const", [step], [], [step.slot])
        elif step.slot in aliased:
            k = Kernel("alias", [step], [step.inputs[0]], [step.slot])
        elif step.op.view:
            k = Kernel("view", [step], [step.inputs[0]], [step.slot])
        elif step.op.elementwise and not fuse:
            k = Kernel("fused", [step], shape=tuple(shapes[step.slot]))
        elif step.op.elementwise:
            k = _join_elementwise(i, step, shapes, producer, owner, members, legal, kernels,
                                  absorbed)
        elif fuse and step.op.reduction and _attach_reduction(
                i, step, shapes, producer, owner, members, legal, kernels):
            k = None
        elif fuse and _attach_pair(i, step, producer, owner, members, legal, pairs):
            k = None
        else:
            k = Kernel("op", [step], data_inputs(step), [step.slot])
        if k is not None:
            kernels.append(k)
            owner[i] = k
            members[id(k)] = 1 << i
        touch(i)
    readers: dict[int, set] = {}
    for j, st in enumerate(plan.steps):
        if j not in owner:
            continue
        for s in data_inputs(st):
            readers.setdefault(s, set()).add(id(owner[j]))
    for k in kernels:
        if k.kind == "fused":
            k.steps.sort(key=lambda st: producer[st.slot])  # merged groups: back in order
            _finish(k, shapes, readers, roots)
    return _order(kernels, producer, owner)


def _join_epilogue(i, step, shape, producer, owner, members, legal) -> bool:
    """Join the epilogue of a group whose reduction (or epilogue) results `step` reads."""
    for s in step.inputs:
        k = owner.get(producer.get(s, -1))
        if k is None or k.kind != "fused" or s not in k.late():
            continue
        mine = [x for x in step.inputs if owner.get(producer.get(x, -1)) is k]
        if any(x not in k.late() for x in mine) or k.epilogue_shape not in (None, shape):
            return False
        bits = members[id(k)] | 1 << i
        if not legal(bits, step.inputs):
            return False
        k.steps.append(step)
        k.epilogue.append(step.slot)
        k.epilogue_shape = shape
        members[id(k)] = bits
        owner[i] = k
        return True
    return False


def _join_elementwise(i, step, shapes, producer, owner, members, legal, kernels, absorbed):
    shape = tuple(shapes[step.slot])
    if _join_epilogue(i, step, shape, producer, owner, members, legal):
        return None
    candidates = []
    for s in step.inputs:
        k = owner.get(producer.get(s, -1))
        if k is not None and k.kind == "fused" and k.shape == shape and k not in candidates \
                and not any(x in k.late() for x in step.inputs):
            candidates.append(k)
    merged_bits = 1 << i
    chosen = []
    for k in candidates:
        bits = members[id(k)] | merged_bits
        if chosen:  # merging groups: each one's inputs must not depend on the others
            if _reads_reduction_of(chosen, k) or _reads_reduction_of([k], *chosen):
                continue  # a reduction's result exists only after its whole group has run
            if k.epilogue and any(c.epilogue for c in chosen):
                continue  # one epilogue per group
            inputs = _outside_inputs(bits, step, chosen + [k], producer)
        else:  # joining one group: only the new step's inputs are new
            inputs = list(step.inputs)
        if legal(bits, inputs):
            chosen.append(k)
            merged_bits = bits
    if not chosen:
        k = Kernel("fused", [step], shape=shape)
        return k
    target = next((c for c in chosen if c.epilogue), chosen[0])
    for other in chosen:
        if other is target:
            continue
        target.steps.extend(other.steps)
        target.reductions.update(other.reductions)
        for j in _indices(members[id(other)]):
            owner[j] = target
        kernels.remove(other)
        del members[id(other)]
        absorbed.append(other)
    target.steps.append(step)
    members[id(target)] = merged_bits
    owner[i] = target
    return None


def _reads_reduction_of(readers: list, *groups) -> bool:
    reduced = {s for g in groups for s in g.late()}
    return any(s in reduced for k in readers for st in k.steps for s in st.inputs)


def _outside_inputs(bits, step, ks, producer):
    ins = list(step.inputs)
    for k in ks:
        for st in k.steps:
            ins.extend(st.inputs)
    return ins


def _attach_reduction(i, step, shapes, producer, owner, members, legal, kernels) -> bool:
    src = step.inputs[0]
    k = owner.get(producer.get(src, -1))
    if k is not None and k.kind == "op" and step.op.reduction == "sum" and \
            np.dtype(step.node.dtype).kind == "f":
        # a sum over an op's result (the last layer's bias gradient): a group of its own,
        # so that elementwise work on the sum (the bias update) can join it
        k = Kernel("fused", [], shape=tuple(shapes[src]))
        k.reductions[step.slot] = (src, reduction_axes(step, shapes), step.op.reduction)
        k.steps.append(step)
        kernels.append(k)
        members[id(k)] = 1 << i
        owner[i] = k
        return True
    if k is None or k.kind != "fused" or tuple(shapes[src]) != k.shape or k.epilogue \
            or src in k.late():
        return False
    if any(len(shapes[step.inputs[j]]) > len(k.shape) for j in step.op.shape_only):
        return False  # a target of higher rank than the loop (sum_to_like): not a plain sum
    bits = members[id(k)] | 1 << i
    if not legal(bits, [src]):
        return False
    k.steps.append(step)
    k.reductions[step.slot] = (src, reduction_axes(step, shapes), step.op.reduction)
    members[id(k)] = bits
    owner[i] = k
    return True


def _attach_pair(i, step, producer, owner, members, legal, pairs) -> bool:
    """Join `step` to the single-op kernel of an earlier step it pairs with."""
    for first_op, second_op in pairs:
        if step.op.name != second_op:
            continue
        for k in {id(o): o for o in owner.values()}.values():
            if k.kind != "op" or len(k.steps) != 1 or k.steps[0].op.name != first_op:
                continue
            first = k.steps[0]
            if not set(data_inputs(first)) <= set(step.inputs):
                continue
            bits = members[id(k)] | 1 << i
            if legal(bits, data_inputs(step)):
                k.steps.append(step)
                k.inputs = list(dict.fromkeys(k.inputs + data_inputs(step)))
                k.outputs.append(step.slot)
                members[id(k)] = bits
                owner[i] = k
                return True
    return False


def _indices(bits: int):
    i = 0
    while bits:
        if bits & 1:
            yield i
        bits >>= 1
        i += 1


def _finish(k: Kernel, shapes, readers, roots) -> None:
    """Inputs (read from outside), outputs (read outside or plan roots), reductions."""
    member_slots = {st.slot for st in k.steps}
    k.inputs = list(dict.fromkeys(s for st in k.steps for s in data_inputs(st)
                                  if s not in member_slots))
    k.outputs = [st.slot for st in k.steps if st.slot in k.reductions or st.slot in roots
                 or readers.get(st.slot, set()) - {id(k)}]


def _order(kernels, producer, owner) -> list[Kernel]:
    """Topological order of kernels, stable with respect to the original step order."""
    import heapq
    pos: dict[int, int] = {}
    for plan_index, o in sorted(owner.items()):
        pos.setdefault(id(o), plan_index)
    deps: dict[int, set] = {id(k): set() for k in kernels}
    users: dict[int, set] = {id(k): set() for k in kernels}
    by_id = {id(k): k for k in kernels}
    for k in kernels:
        for s in k.inputs:
            if s in producer:
                src = owner.get(producer[s])
                if src is not None and src is not k:
                    deps[id(k)].add(id(src))
                    users[id(src)].add(id(k))
    ready = [(pos[i], i) for i, d in deps.items() if not d]
    heapq.heapify(ready)
    out = []
    while ready:
        _, i = heapq.heappop(ready)
        out.append(by_id[i])
        for u in users[i]:
            deps[u].discard(i)
            if not deps[u]:
                heapq.heappush(ready, (pos[u], u))
    assert len(out) == len(kernels), "fusion created a cycle"
    return out
