"""The CPU backend (backend stage), registered as "numpy" (alias "cpu"): a bound plan
becomes one generated straight-line Python function (executor.py) whose fused kernels are
Numba loops (numba_printer.py) or tiled NumPy chains (numpy_printer.py), whose other ops are
NumPy `out=` kernels (kernels.py), and whose SGD weight updates ride in a BLAS GEMM
(blas.py). Parameters stay in host memory."""
from __future__ import annotations

from ..base import Backend, Capabilities, Runtime
from . import blas
from .kernels import INTO, PAIRS

blas.select_kernels()  # once, before any plan runs: NumPy's OpenBLAS on this CPU's best kernels


class CPUBackend(Backend):
    """NumPy, Numba and the BLAS NumPy loaded, on the host."""

    name = "numpy"
    runtime = Runtime()
    unsupported: dict = {}
    # Recompute a value in its reader when its ops cost at most this many adds per element:
    # a few flops are cheaper than one write and one read of the value through memory.
    max_recompute_cost = 8

    @property
    def caps(self) -> Capabilities:
        # gemm_update is read at every bind: whether a callable BLAS exists is found lazily
        # strided_outputs: Numba kernels store o[j0, j1], NumPy-printed ones use out=
        return Capabilities(pairs=tuple(PAIRS), gemm_update=blas.available(),
                            max_recompute_cost=self.max_recompute_cost, strided_outputs=True)

    def supports(self, op) -> bool:
        # every op runs its NumPy reference unless a dedicated out= kernel exists
        return op.name not in self.unsupported and (op.reference is not None or
                                                    op.name in INTO)

    def compile_bound(self, bound, watch=None):
        from .executor import compile_bound
        return compile_bound(bound, watch=watch)
