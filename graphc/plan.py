"""Lowering: a Graph becomes a Plan, a topologically ordered list of steps over numbered
buffer slots, built once per compile. Binding a plan to concrete feed shapes (once per new
set of None sizes) gives every slot a concrete shape, which backends compile against."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import FeedError
from .graph import Constant, Parameter, Placeholder, Tensor, format_shape, topo_order
from .ops.registry import InferError


@dataclass
class Step:
    """One kernel launch: op applied to input slots, writing one output slot."""

    slot: int  # output slot
    node: Tensor
    inputs: tuple  # input slots (shape-only inputs included; see op.shape_only)

    @property
    def op(self):
        return self.node.op


@dataclass
class Plan:
    """A schedule of steps over slots: leaves (feeds, parameters, constants) first."""

    nodes: list  # slot -> node
    feeds: list  # [(placeholder, slot)]
    params: list  # [(parameter, slot)]
    consts: list  # [(constant, slot)]
    steps: list  # [Step]
    outputs: list  # output slots, in the user's (flattened) order
    updates: list  # [(parameter, slot of its new value)]

    def bind(self, feed_shapes: dict) -> list:
        """Concrete shape of every slot for these feed shapes (placeholder -> shape)."""
        shapes: list = [None] * len(self.nodes)
        for ph, slot in self.feeds:
            shapes[slot] = feed_shapes[ph]
        for p, slot in self.params:
            shapes[slot] = p.shape
        for c, slot in self.consts:
            shapes[slot] = c.shape
        for step in self.steps:
            node = step.node
            in_shapes = [shapes[s] for s in step.inputs]
            try:
                shape, _ = node.op.infer(in_shapes, [x.dtype for x in node.inputs], **node.attrs)
            except InferError as e:
                operands = ", ".join(format_shape(s) for s in in_shapes)
                where = f" (node made at {node.source})" if node.source else ""
                raise FeedError(f"the fed shapes do not fit {node.op.name}: {e}; operand shapes "
                                f"at this call: {operands}{where}") from None
            shapes[step.slot] = shape
        return shapes

    def summary(self) -> str:
        """A readable listing: one line per step with op, inputs, shape, dtype and source."""
        lines = [f"Plan: {len(self.steps)} steps, {len(self.feeds)} feeds, "
                 f"{len(self.params)} parameters, {len(self.consts)} constants"]
        for ph, slot in self.feeds:
            lines.append(f"  %{slot:<4} feed      {ph.name:<24} {_fmt(ph)}")
        for p, slot in self.params:
            lines.append(f"  %{slot:<4} parameter {p.name:<24} {_fmt(p)}")
        for c, slot in self.consts:
            lines.append(f"  %{slot:<4} constant  {_const_label(c):<24} {_fmt(c)}")
        for step in self.steps:
            node = step.node
            args = ", ".join(f"%{s}" for s in step.inputs)
            attrs = ", ".join(f"{k}={v}" for k, v in node.attrs.items())
            call = f"{node.op.name}({args}{', ' if args and attrs else ''}{attrs})"
            where = f"  @ {node.source}" if node.source else ""
            lines.append(f"  %{step.slot:<4} = {call:<48} {_fmt(node)}{where}")
        outs = ", ".join(f"%{s}" for s in self.outputs)
        lines.append(f"  outputs: {outs or '-'}")
        if self.updates:
            ups = ", ".join(f"{p.name} <- %{s}" for p, s in self.updates)
            lines.append(f"  updates: {ups}")
        return "\n".join(lines)

    __str__ = summary


def _fmt(node: Tensor) -> str:
    return f"{format_shape(node.shape)} {node.dtype}"


def _const_label(c: Constant) -> str:
    if c.value.size == 1:
        return repr(c.value.reshape(()).item())
    return f"<array {c.value.shape}>"


def lower(outputs: list, updates: list) -> Plan:
    """Schedule every node the outputs and update values need, in topological order."""
    roots = list(outputs) + [v for _, v in updates]
    order = topo_order(roots)
    slot_of: dict[int, int] = {}
    nodes: list = []

    def new_slot(node):
        slot_of[id(node)] = len(nodes)
        nodes.append(node)

    leaves = [n for n in order if not n.inputs]
    feeds = [n for n in leaves if isinstance(n, Placeholder)]
    params = [n for n in leaves if isinstance(n, Parameter)]
    consts = [n for n in leaves if isinstance(n, Constant)]
    for n in feeds + params + consts:
        new_slot(n)
    steps = []
    for n in order:
        if n.inputs:
            new_slot(n)
            steps.append(Step(slot_of[id(n)], n, tuple(slot_of[id(x)] for x in n.inputs)))
    return Plan(nodes, [(n, slot_of[id(n)]) for n in feeds], [(n, slot_of[id(n)]) for n in params],
                [(n, slot_of[id(n)]) for n in consts], steps,
                [slot_of[id(n)] for n in outputs], [(p, slot_of[id(v)]) for p, v in updates])



@dataclass
class BoundPlan:
    """A plan specialized to concrete shapes: kernels (fused groups, ops, views) in order,
    and the memory plan that places every value they write."""

    plan: Plan
    shapes: list
    kernels: list
    memory: object  # memory.MemoryPlan
    aliased: dict  # slot -> slot it is a no-op of (reshape to the same shape, ...)
    folded: dict  # slot -> value computed at bind time

    def summary(self) -> str:
        """Each kernel with the ops fused into it, its buffers, and the memory figures."""
        from .backends.codegen import build_expr
        from .memory import format_bytes
        mem = self.memory
        n_fused = sum(1 for k in self.kernels if k.kind in ("fused", "gemm"))
        n_ops = sum(1 for k in self.kernels if k.kind == "op")
        lines = [f"Bound plan: {n_fused + n_ops} kernels ({n_fused} fused, {n_ops} other), "
                 f"{sum(1 for k in self.kernels if k.kind == 'view')} views; "
                 f"{len(self.plan.steps)} graph steps"]
        for ph, slot in self.plan.feeds:
            lines.append(f"  %{slot:<4} feed      {ph.name:<20} {_shape_str(self, slot)}")
        for p, slot in self.plan.params:
            lines.append(f"  %{slot:<4} parameter {p.name:<20} {_shape_str(self, slot)}")
        for k in self.kernels:
            if k.kind in ("alias", "const"):
                continue
            outs = ", ".join(f"%{s}" for s in k.outputs)
            ins = ", ".join(f"%{s}" for s in k.inputs)
            where = self._buffers(k)
            if k.kind == "fused":
                expr = build_expr(k, self.plan, self.shapes)
                lines.append(f"  {outs:<12} = fused[{expr.describe()}]({ins})  over "
                             f"{_fmt_shape(k.shape)}{where}")
            else:
                node = k.steps[0].node
                src = f"  @ {node.source}" if node.source else ""
                name = {"view": f"view {node.op.name}",
                        "gemm": f"gemm[{' -> '.join(k.ops)}]"}.get(k.kind, node.op.name)
                lines.append(f"  {outs:<12} = {name}({ins})  {_shape_str(self, k.outputs[0])}"
                             f"{where}{src}")
        lines.append(f"  outputs: {', '.join(f'%{s}' for s in self.plan.outputs) or '-'}")
        if self.plan.updates:
            ups = ", ".join(f"{p.name} <- %{s}" + (" (in place)" if s in mem.param_writes
                                                    else "") for p, s in self.plan.updates)
            lines.append(f"  updates: {ups}")
        lines.append(f"  memory: arena {format_bytes(mem.arena_bytes)} (liveness lower bound "
                     f"{format_bytes(mem.lower_bound)}; one buffer per node: "
                     f"{format_bytes(mem.naive_bytes)})")
        return "\n".join(lines)

    __str__ = summary

    def to_dot(self) -> str:
        """Graphviz DOT of the graph: one node per step, fused groups drawn as clusters."""
        lines = ["digraph graphc {", "  rankdir=TB;", "  node [shape=box, fontsize=10];"]
        label = {}  # slot -> label text, already escaped for a DOT string
        for ph, s in self.plan.feeds:
            label[s] = f"feed {_dot_escape(ph.name)}"
        for p, s in self.plan.params:
            label[s] = f"param {_dot_escape(p.name)}"
        for c, s in self.plan.consts:
            label[s] = "const"
        for st in self.plan.steps:
            label[st.slot] = (f"%{st.slot} {_dot_escape(st.op.name)}\\n"
                              f"{_dot_escape(_shape_str(self, st.slot))}")
        drawn: set = set()  # a recomputed step sits in two kernels; draw it in the first
        for i, k in enumerate(self.kernels):
            if k.kind in ("fused", "gemm"):
                lines.append(f"  subgraph cluster_{i} {{ label=\"kernel {i}\"; style=filled; "
                             "color=lightgrey;")
                lines += [f"    n{st.slot};" for st in k.steps if st.slot not in drawn]
                drawn.update(st.slot for st in k.steps)
                lines.append("  }")
        for s, text in label.items():
            lines.append(f"  n{s} [label=\"{text}\"];")
        for st in self.plan.steps:
            for x in st.inputs:
                lines.append(f"  n{x} -> n{st.slot};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _buffers(self, k) -> str:
        mem = self.memory
        spots = []
        for s in k.outputs:
            if s in mem.param_writes:
                spots.append(f"%{s} into {mem.param_writes[s].name}")
            elif s in mem.inplace:
                spots.append(f"%{s} in place of %{mem.inplace[s]}")
            elif s in mem.offsets:
                spots.append(f"%{s} @{mem.offsets[s]}")
        return f"  [{'; '.join(spots)}]" if spots and k.kind != "view" else ""


def _dot_escape(text: str) -> str:
    """User text inside a DOT string: backslashes and quotes escaped, newlines as \\n."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt_shape(shape) -> str:
    return format_shape(tuple(shape))


def _shape_str(bp: BoundPlan, slot: int) -> str:
    return f"{_fmt_shape(bp.shapes[slot])} {bp.plan.nodes[slot].dtype}"


def bind(plan: Plan, feed_shapes: dict, fuse: bool = True, pairs=(),
         gemm_update: bool = False) -> BoundPlan:
    """Specialize a plan to concrete feed shapes: no-op removal, fusion, memory plan."""
    from .memory import plan_memory
    from .passes.fuse import group
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
    plan = Plan(plan.nodes, plan.feeds, plan.params, plan.consts, steps, plan.outputs,
                plan.updates)
    folded = _fold_constants(plan, shapes, aliased)
    kernels = group(plan, shapes, aliased, folded, fuse=fuse, pairs=pairs,
                    gemm_update=gemm_update)
    memory = plan_memory(kernels, plan, shapes)
    return BoundPlan(plan, shapes, kernels, memory, aliased, folded)


FOLD_LIMIT = 1 << 16  # elements: larger constant results are computed at run time


def _fold_constants(plan: Plan, shapes: list, aliased: dict) -> dict:
    """Values computable at bind time (from constants and bound shapes alone)."""
    import numpy as np
    values = {s: c.value for c, s in plan.consts}
    folded = {}
    for st in plan.steps:
        op = st.op
        if st.slot in aliased:
            if aliased[st.slot] in values:
                values[st.slot] = values[aliased[st.slot]]
            continue
        data = [s for i, s in enumerate(st.inputs) if i not in op.shape_only]
        if op.reference is None or not all(s in values for s in data) or \
                int(np.prod(shapes[st.slot], dtype=np.int64)) > FOLD_LIMIT:
            continue
        args = [tuple(shapes[s]) if i in op.shape_only else values[s]
                for i, s in enumerate(st.inputs)]
        with np.errstate(all="ignore"):
            value = np.array(op.reference(*args, **st.node.attrs), dtype=st.node.dtype)
        values[st.slot] = folded[st.slot] = value
    return folded
