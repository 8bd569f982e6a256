"""Kernels (schedule stage): the units a bound plan executes, and the slot helpers every
scheduling step shares."""
from __future__ import annotations

from dataclasses import dataclass, field

# "fused": elementwise steps over one iteration shape, with trailing reductions and an
# epilogue; "op": one non-elementwise step (or a pair the backend runs together); "gemm": a
# matmul with the SGD update in its epilogue; "view": a view of another buffer; "alias": a
# no-op (reshape to the same shape); "const": a value folded at bind time; "allreduce_start"
# and "allreduce_wait" (data-parallel steps): a bucket of gradients packed into its flat
# buffer and its non-blocking allreduce started, then waited for, its means read as views.
KINDS = ("fused", "op", "gemm", "view", "alias", "const", "allreduce_start", "allreduce_wait")
COMPUTING = ("fused", "op", "gemm")


@dataclass
class Kernel:
    """One unit of execution: a fused group, a single op, a view, or an alias."""

    kind: str  # one of KINDS
    steps: list  # plan steps it computes, in order
    inputs: list = field(default_factory=list)  # slots read
    outputs: list = field(default_factory=list)  # slots written (materialized)
    shape: tuple = ()  # iteration shape of a fused group
    reductions: dict = field(default_factory=dict)  # out slot -> (member slot, axes, kind)
    # Elementwise steps over the reductions' results (a bias update after its gradient's
    # sum), run once the main loop is done, over epilogue_shape.
    epilogue: list = field(default_factory=list)  # slots
    epilogue_shape: tuple | None = None
    bucket: object = None  # the plan's Bucket, for allreduce_start and allreduce_wait
    # a "gemm" kernel over inputs (A, B, lr, W) computing W += -lr * B^T @ A^T, i.e. the
    # update reads (A @ B) transposed (schedule.gemm_update)
    transpose_operands: bool = False

    def late(self) -> set:
        """Slots that exist only after the main loop: reductions and the epilogue."""
        return set(self.reductions) | set(self.epilogue)

    @property
    def ops(self) -> list:
        return [s.op.name for s in self.steps]


def reduction_axes(step, shapes) -> tuple:
    """Axes a reduction step (OpDef.reduction) reduces over, given concrete shapes."""
    return tuple(step.op.reduce_axes([tuple(shapes[s]) for s in step.inputs], step.node.attrs))


def data_inputs(step) -> list:
    """Input slots whose values a step reads (shape-only inputs are bound, never read)."""
    skip = step.op.shape_only
    return [s for i, s in enumerate(step.inputs) if i not in skip]


def view_bases(kernels: list[Kernel], n_slots: int) -> list[int]:
    """For every slot, the slot whose buffer it is (itself, or the source of its views)."""
    base = list(range(n_slots))
    for k in kernels:
        if k.kind in ("view", "alias"):
            base[k.outputs[0]] = base[k.inputs[0]]
    return base
