"""Lowering (plan stage): a Graph becomes a Plan, a topologically ordered list of steps over
numbered buffer slots, built once per compile. `Plan.bind` gives every slot a concrete
shape for a set of feed shapes; the scheduler (graphc.schedule) then makes the bound plan
that backends compile."""
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
