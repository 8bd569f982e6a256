"""What a backend tells the scheduler (schedule stage): which fusions it can run, what
recomputing costs, how its buffers align. Backends declare one `Capabilities` each."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Capabilities:
    """A backend's answers to the scheduler's questions; the defaults are the CPU's."""

    fuse: bool = True  # elementwise fusion at all (False: one kernel per op)
    # (first op, second op) pairs the backend computes in one kernel when the second reads
    # the first's inputs (softmax cross-entropy and its gradient share one pass).
    pairs: tuple = ()
    gemm_update: bool = False  # W - lr * (A @ B) as one GEMM into W (alpha = -lr, beta = 1)
    recompute: bool = True  # recompute cheap values in their readers instead of storing them
    max_recompute_cost: int = 8  # per element, in adds (see OpDef.cost)
    costs: dict = field(default_factory=dict)  # op name -> per-element cost overriding OpDef.cost
    alignment: int = 64  # bytes: every arena offset is a multiple
    fold_limit: int = 1 << 16  # elements: larger constant results are computed at run time
    # fused kernels write through output arrays of any strides (a piece of a scatter_slices
    # can then be a view of its output: schedule.memory_plan._sliced_pieces)
    strided_outputs: bool = False

    def op_cost(self, op) -> int:
        """Per-element cost of recomputing `op` (an OpDef) on this backend."""
        return self.costs.get(op.name, op.cost)


CPU_DEFAULT = Capabilities()
