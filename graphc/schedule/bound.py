"""The bound plan (schedule stage): a plan specialized to concrete shapes, its kernels in
order and its memory plan; what a backend compiles, and what `print(fn.plan)` shows."""
from __future__ import annotations

from dataclasses import dataclass

from ..graph import format_shape
from ..plan import Plan


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
        from ..memory import format_bytes
        from .expr import build_expr
        mem = self.memory
        n_fused = sum(1 for k in self.kernels if k.kind in ("fused", "gemm"))
        # a scatter whose pieces are whole rows is stacked like a concat: counted a scatter
        scatters = {k.outputs[0] for k in self.kernels
                    if k.kind == "op" and k.ops == ["scatter_slices"]}
        n_stacked = len(mem.stacked - scatters)
        n_sliced = len(mem.sliced) + len(mem.stacked & scatters)
        n_ops = sum(1 for k in self.kernels if k.kind == "op") - n_stacked - n_sliced
        stacked = f", {n_stacked} concat(s) stacked in place" if n_stacked else ""
        stacked += f", {n_sliced} scatter(s) sliced in place" if n_sliced else ""
        lines = [f"Bound plan: {n_fused + n_ops} kernels ({n_fused} fused, {n_ops} other), "
                 f"{sum(1 for k in self.kernels if k.kind == 'view')} views{stacked}; "
                 f"{len(self.plan.steps)} graph steps"]
        for ph, slot in self.plan.feeds:
            lines.append(f"  %{slot:<4} feed      {ph.name:<20} {_shape_str(self, slot)}")
        for p, slot in self.plan.params:
            lines.append(f"  %{slot:<4} parameter {p.name:<20} {_shape_str(self, slot)}")
        for k in self.kernels:
            if k.kind in ("alias", "const"):
                continue
            if k.kind in ("allreduce_start", "allreduce_wait"):
                lines.append(self._collective(k))
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
                if k.outputs[0] in mem.stacked or k.outputs[0] in mem.sliced:  # no kernel
                    name += " (in place)"
                lines.append(f"  {outs:<12} = {name}({ins})  {_shape_str(self, k.outputs[0])}"
                             f"{where}{src}")
        lines.append(f"  outputs: {', '.join(f'%{s}' for s in self.plan.outputs) or '-'}")
        if self.plan.updates:
            ups = ", ".join(f"{p.name} <- %{s}" + (" (in place)" if s in mem.param_writes
                                                    else "") for p, s in self.plan.updates)
            lines.append(f"  updates: {ups}")
        if self.plan.buckets:
            size = getattr(self.plan.comm, "size", "?")
            total = sum(b.nbytes for b in self.plan.buckets)
            lines.append(f"  data parallel: {len(self.plan.buckets)} bucket(s), "
                         f"{format_bytes(total)} of gradients averaged over {size} rank(s)")
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

    def written_over(self, expr) -> dict:
        """{output index: input index} for the outputs of a fused kernel's expression that
        the memory plan writes over one of its inputs' buffers (in place of an input that
        dies there, or a parameter updated in place), where that input spans the loop."""
        mem = self.memory
        param_slot = {id(p): s for p, s in self.plan.params}
        position = {s: j for j, (s, _) in enumerate(expr.inputs)}
        shared = {}
        for j, (s, _) in enumerate(expr.outputs):
            src = mem.inplace.get(s)
            if s in mem.param_writes:
                src = param_slot[id(mem.param_writes[s])]
            if src in position and tuple(expr.inputs[position[src]][1]) == tuple(expr.shape):
                shared[j] = position[src]
        return shared

    def _slice_of(self, piece) -> str:
        """The index (as Python writes it) of a sliced-in-place piece in its scatter."""
        from ..ops.shape_ops import index_str
        from .kernel import data_inputs
        out, _ = self.memory.placed[piece]
        k = next(k for k in self.kernels if k.kind == "op" and out in k.outputs)
        grads = data_inputs(k.steps[0])
        return index_str(k.steps[0].node.attrs["indices"][grads.index(piece)])

    def _collective(self, k) -> str:
        from ..memory import format_bytes
        b = k.bucket
        at = self.memory.buckets.get(b.index)
        where = f" @{at}" if at is not None else ""
        if k.kind == "allreduce_start":
            grads = ", ".join(f"%{s}" for s in k.inputs)
            return (f"  {'':<12}   allreduce start bucket {b.index}({grads})  "
                    f"{len(b.grads)} gradient(s), {b.numel} {b.dtype} "
                    f"({format_bytes(b.nbytes)}) [flat{where}]: {', '.join(b.names)}")
        outs = ", ".join(f"%{s}" for s in k.outputs)
        return (f"  {outs:<12} = allreduce wait bucket {b.index}  (mean over ranks) "
                f"[views of flat{where}]")

    def _buffers(self, k) -> str:
        mem = self.memory
        spots = []
        for s in k.outputs:
            if s in mem.param_writes:
                spots.append(f"%{s} into {mem.param_writes[s].name}")
            elif s in mem.in_bucket:
                spots.append(f"%{s} in bucket {mem.in_bucket[s]}")
            elif s in mem.inplace:
                spots.append(f"%{s} in place of %{mem.inplace[s]}")
            elif s in mem.placed:  # a strided view of its scatter's output
                out, _ = mem.placed[s]
                spots.append(f"%{s} in %{out}[{self._slice_of(s)}]")
            elif s in mem.in_stack or s in mem.within:  # a piece, or a run of a stack's
                stack = mem.in_stack.get(s, mem.within.get(s))  # pieces (a range of it)
                spots.append(f"%{s} in %{stack} at +{mem.offsets[s] - mem.offsets[stack]}")
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
