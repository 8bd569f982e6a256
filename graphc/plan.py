"""Lowering (plan stage): a Graph becomes a Plan, a topologically ordered list of steps over
numbered buffer slots, built once per compile. `Plan.bind` gives every slot a concrete
shape for a set of feed shapes; the scheduler (graphc.schedule) then makes the bound plan
that backends compile."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import CompileError, FeedError
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
    # data-parallel steps: the gradient allreduces packed into buckets (make_buckets), and
    # the communicator they run over
    buckets: list = field(default_factory=list)  # [Bucket]
    comm: Any = None

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
        lines += [f"  {b.describe()}" for b in self.buckets]
        return "\n".join(lines)

    def fingerprint(self) -> list:
        """What must agree across the ranks of a data-parallel step, one line per item:
        feeds, parameters (names, shapes, dtypes), steps (ops, inputs, shapes, dtypes,
        simple attributes), outputs, updates and buckets."""
        lines = [f"feed {ph.name} {_fmt(ph)}" for ph, _ in self.feeds]
        lines += [f"parameter {p.name} {_fmt(p)}" for p, _ in self.params]
        lines += [f"constant {_fmt(c)}" for c, _ in self.consts]
        for st in self.steps:
            attrs = ", ".join(f"{k}={v!r}" for k, v in sorted(st.node.attrs.items())
                              if isinstance(v, (int, float, str, bool, tuple, type(None))))
            ins = ", ".join(f"%{s}" for s in st.inputs)
            lines.append(f"%{st.slot} = {st.op.name}({ins}) [{attrs}] {_fmt(st.node)}")
        lines.append("outputs " + ", ".join(f"%{s}" for s in self.outputs))
        lines.append("updates " + ", ".join(f"{p.name} <- %{s}" for p, s in self.updates))
        lines += [b.describe() for b in self.buckets]
        return lines

    __str__ = summary


@dataclass(frozen=True)
class Bucket:
    """Gradients averaged over ranks by one allreduce of one flat buffer: `grads` are the
    gradients' slots, `reduced` the slots of their means (the allreduce steps), `offsets`
    and `sizes` their places in the flat buffer (in elements), in packing order."""

    index: int
    dtype: Any
    grads: tuple
    reduced: tuple
    names: tuple  # the parameters whose gradients these are
    offsets: tuple
    sizes: tuple

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def describe(self) -> str:
        from .memory import format_bytes
        members = ", ".join(f"%{g} ({n})" for g, n in zip(self.grads, self.names))
        return (f"bucket {self.index}: {len(self.grads)} gradient(s), {self.numel} "
                f"{self.dtype} ({format_bytes(self.nbytes)}): {members}")


def make_buckets(plan: Plan, bucket_bytes: int | float) -> list:
    """Pack the plan's allreduce steps into buckets of about `bucket_bytes` each, per
    dtype, in the order the plan produces the gradients (DDP uses the reverse parameter
    order as its guess of that order): a bucket is closed when the next gradient would take
    it past `bucket_bytes`, so a gradient larger than that gets a bucket of its own.
    Buckets are numbered by when their last gradient is ready, the order their allreduces
    start in on every rank."""
    import numpy as np
    if not isinstance(bucket_bytes, (int, float, np.integer, np.floating)) \
            or isinstance(bucket_bytes, bool) or not bucket_bytes >= 1:
        raise CompileError(f"compile: bucket_bytes must be a positive number of bytes "
                           f"(such as 25 * 2**20), got {bucket_bytes!r}")
    bucket_bytes = int(bucket_bytes)
    position = {st.slot: i for i, st in enumerate(plan.steps)}
    steps = [st for st in plan.steps if getattr(st.op, "collective", None) is not None]
    steps.sort(key=lambda st: position.get(st.inputs[0], -1))
    open_: dict = {}  # dtype -> [steps, bytes]
    closed = []  # full buckets: lists of steps
    for st in steps:
        dtype = np.dtype(st.node.dtype)
        if dtype.name not in ("float32", "float64"):
            raise CompileError(f"compile(data_parallel=...): gradients must be float32 or "
                               f"float64 to be averaged over ranks, got {dtype} for "
                               f"{st.node.attrs.get('of', '?')}")
        size = int(np.prod(st.node.shape, dtype=np.int64)) * dtype.itemsize
        cur = open_.get(dtype)
        if cur is not None and cur[0] and cur[1] + size > bucket_bytes:
            closed.append(cur[0])
            cur = None
        if cur is None:
            cur = open_[dtype] = [[], 0]
        cur[0].append(st)
        cur[1] += size
    closed += [cur[0] for cur in open_.values() if cur[0]]
    closed.sort(key=lambda group: max(position.get(st.inputs[0], -1) for st in group))
    buckets = []
    for index, group in enumerate(closed):
        sizes = [int(np.prod(st.node.shape, dtype=np.int64)) for st in group]
        offsets = [int(x) for x in np.cumsum([0] + sizes[:-1])]
        buckets.append(Bucket(index, np.dtype(group[0].node.dtype),
                              tuple(st.inputs[0] for st in group),
                              tuple(st.slot for st in group),
                              tuple(st.node.attrs.get("of", "?") for st in group),
                              tuple(offsets), tuple(sizes)))
    return buckets


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
