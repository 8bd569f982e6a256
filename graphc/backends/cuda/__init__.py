"""The CUDA backend (backend stage), registered as "cuda": CuPy arrays and cuBLAS on a
device, fused kernels printed as Numba CUDA from the scheduler's FusedExpr (printer.py),
hand-written Numba CUDA kernels from graphc.kernels for what is not elementwise, the
updates of each optimizer rule in one multi-tensor launch (multi_tensor.py), and the
whole step captured once as a CUDA graph and replayed (executor.py). Under
NUMBA_ENABLE_CUDASIM=1 the same kernels run in Numba's simulator on host arrays
(runtime.py: SimRuntime), which is how CI proves the backend without a GPU; "auto" never
picks the simulator."""
from __future__ import annotations

from ..base import Backend, Capabilities


class CUDABackend(Backend):
    """One CUDA device (or Numba's simulator), through its runtime."""

    name = "cuda"
    unsupported: dict = {}
    cuda_graph = True  # capture the whole step once and replay it
    multi_tensor = True  # the updates of one optimizer rule in one launch (multi_tensor.py)

    _runtime = None

    @property
    def runtime(self):
        """The device's runtime, or the simulator's (made on first use: asking which ops
        the backend supports needs no device)."""
        if self._runtime is None:
            from .runtime import make_runtime
            self._runtime = make_runtime()
        return self._runtime

    @property
    def caps(self) -> Capabilities:
        from .executor import _hand_written
        pairs = tuple(_hand_written()[1])
        # A GPU is bound by memory traffic far more than by arithmetic: recomputing a value
        # in its reader pays for more flops than on the CPU. Buffers align to 256 bytes,
        # cudaMalloc's own alignment, so every view is aligned for vector loads.
        return Capabilities(pairs=pairs, gemm_update=True, max_recompute_cost=20,
                            alignment=256)

    def supports(self, op) -> bool:
        from .executor import _hand_written
        return op.name not in self.unsupported and (
            op.reference is not None or op.name in _hand_written()[0])

    def compile_bound(self, bound, watch=None):
        from .executor import compile_bound
        return compile_bound(bound, self.runtime, watch=watch, cuda_graph=self.cuda_graph,
                             multi_tensor=self.multi_tensor, align=self.caps.alignment)


def probe() -> str | None:
    """None if the backend can run here (a device, or the simulator), else why not."""
    from .runtime import simulator_requested
    try:
        from numba import cuda  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means no CUDA here
        return (f"numba.cuda does not import ({type(e).__name__}: {e}); install the gpu "
                f"extra: pip install 'graphc[gpu]'")
    if simulator_requested():
        return None
    try:
        import cupy
    except Exception as e:  # noqa: BLE001
        return f"CuPy does not import ({type(e).__name__}: {e}); pip install 'graphc[gpu]'"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # noqa: BLE001 - no driver, or a driver too old
        return f"no usable CUDA driver ({type(e).__name__}: {e})"
    return None if count > 0 else "no CUDA device is visible"


def on_device() -> bool:
    """Whether "auto" may pick this backend: a real device, never the simulator."""
    from .runtime import simulator_requested
    return not simulator_requested() and probe() is None
