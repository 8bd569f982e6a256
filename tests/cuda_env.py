"""What the CUDA tests may use here. Kernel tests run in Numba's CUDA simulator
(NUMBA_ENABLE_CUDASIM=1, set before numba is imported, so `make test` runs them in a pytest
process of their own) or on a real device; PTX tests compile for the real target without a
device (numba-cuda and the NVIDIA runtime, nvrtc and nvcc wheels) and so run in the main
process, never in the simulator."""
from __future__ import annotations

import os

import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _no_kernels() -> str | None:
    try:
        from numba import cuda
    except Exception as e:  # noqa: BLE001 - any import failure means no CUDA here
        return f"numba.cuda does not import ({type(e).__name__}: {e})"
    if SIMULATOR:
        return None
    try:
        if cuda.is_available():
            return None
    except Exception:  # noqa: BLE001
        pass
    return "no CUDA device; run under NUMBA_ENABLE_CUDASIM=1 for Numba's simulator"


def _no_ptx() -> str | None:
    if SIMULATOR:
        return "PTX compilation is not available inside the simulator"
    try:
        from numba import cuda

        def probe(x):
            x[0] = 1.0
        cuda.compile_ptx(probe, "void(float32[:])", cc=(9, 0))
    except Exception as e:  # noqa: BLE001
        return f"cannot compile PTX here ({type(e).__name__}: {e})"
    return None


NO_KERNELS = _no_kernels()
NO_PTX = _no_ptx()
# kernel tests: the simulator or a device
needs_cuda = pytest.mark.skipif(NO_KERNELS is not None, reason=str(NO_KERNELS))
# PTX tests: numba-cuda with the NVIDIA wheels, outside the simulator
needs_ptx = pytest.mark.skipif(NO_PTX is not None, reason=str(NO_PTX))
# tests that need a real device (CuPy runtime, cuBLAS, CUDA graphs): the `gpu` marker
on_device = not SIMULATOR and NO_KERNELS is None
