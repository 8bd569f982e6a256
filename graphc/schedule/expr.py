"""Expression programs (schedule stage): a fused kernel becomes a FusedExpr, straight-line
instructions over an iteration shape, which every backend's printers turn into source for
one kernel (tiled NumPy and Numba loops on the CPU; Numba CUDA on the GPU). Instructions
carry their OpDef, so printers read its declared properties (scalar form, cost) instead of
matching op names. Generated source names only inputs, outputs and temporaries by
position: no user string ever enters it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..ops.registry import get_op

@dataclass
class Instr:
    op: str
    attrs: dict
    args: list  # ("in", k) external input k, ("v", j) result of instruction j
    dtype: np.dtype
    reference: object = None  # the op's NumPy reference, for the generic emitter
    opdef: object = None  # the op's OpDef (scalar form, cost)


@dataclass
class FusedExpr:
    """One fused group: straight-line elementwise instructions over an iteration shape,
    full-shape outputs and trailing sum/mean reductions."""

    shape: tuple
    inputs: list  # [(slot, shape)]
    instrs: list  # [Instr]
    outputs: list  # [(slot, instr index)]
    reductions: list = field(default_factory=list)  # [(slot, instr, axes, kind, out shape)]
    epilogue: "FusedExpr | None" = None  # runs after the loop over the reductions' results

    def describe(self) -> str:
        names = " -> ".join(i.op for i in self.instrs)
        reds = "".join(f" + {r[3]}{r[2]}" for r in self.reductions)
        epi = f" ; then {self.epilogue.describe()}" if self.epilogue else ""
        return names + reds + epi


def build_expr(kernel, plan, shapes) -> FusedExpr:
    """The expression program of a fused kernel (see schedule.fusion)."""
    late = set(kernel.epilogue)
    index_of: dict[int, int] = {}
    main_inputs = list(dict.fromkeys(
        s for st in kernel.steps if st.slot not in late for s in st.inputs
        if s in kernel.inputs))
    in_pos = {s: k for k, s in enumerate(main_inputs)}
    instrs, reductions = [], []
    for st in kernel.steps:
        if st.slot in late:
            continue
        if st.slot in kernel.reductions:
            src, axes, kind = kernel.reductions[st.slot]
            if src not in index_of:  # a sum straight over an input: read it through a copy
                index_of[src] = len(instrs)
                dtype = st.node.inputs[0].dtype
                instrs.append(Instr("cast", {"dtype": np.dtype(dtype).name},
                                    [("in", in_pos[src])], dtype, None, get_op("cast")))
            reductions.append((st.slot, index_of[src], tuple(axes), kind, tuple(shapes[st.slot])))
            continue
        args = [("v", index_of[s]) if s in index_of else ("in", in_pos[s]) for s in st.inputs]
        index_of[st.slot] = len(instrs)
        instrs.append(Instr(st.op.name, dict(st.node.attrs), args, st.node.dtype,
                            st.op.reference, st.op))
    red_slots = {r[0] for r in reductions}
    outputs = [(s, index_of[s]) for s in kernel.outputs if s not in red_slots | late]
    expr = FusedExpr(tuple(kernel.shape), [(s, tuple(shapes[s])) for s in main_inputs],
                     instrs, outputs, reductions)
    if late:
        expr.epilogue = _epilogue_expr(kernel, shapes, late)
    return expr


def _epilogue_expr(kernel, shapes, late) -> FusedExpr:
    """The epilogue as its own program: its inputs are slots (kernel inputs or reduction
    results), so it can run as a second, small kernel after the main loop."""
    steps = [st for st in kernel.steps if st.slot in late]
    index_of: dict[int, int] = {}
    inputs = list(dict.fromkeys(s for st in steps for s in st.inputs if s not in late))
    in_pos = {s: k for k, s in enumerate(inputs)}
    instrs = []
    for st in steps:
        args = [("v", index_of[s]) if s in index_of else ("in", in_pos[s]) for s in st.inputs]
        index_of[st.slot] = len(instrs)
        instrs.append(Instr(st.op.name, dict(st.node.attrs), args, st.node.dtype,
                            st.op.reference, st.op))
    outputs = [(s, index_of[s]) for s in kernel.outputs if s in late]
    return FusedExpr(tuple(kernel.epilogue_shape), [(s, tuple(shapes[s])) for s in inputs],
                     instrs, outputs)
