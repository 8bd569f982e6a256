"""The machine: description, measured ceilings (matmul peak, copy bandwidth), memory."""
from __future__ import annotations

import importlib
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np


def gpu_available() -> bool:
    """A CUDA device usable through CuPy or torch."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        pass
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


def _version(module: str) -> str | None:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_name() -> str | None:
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else name
    except Exception:
        pass
    try:
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:
        return None


def blas_kernels() -> str:
    """The kernels NumPy's OpenBLAS runs in this process, after graphc's choice (its CPU
    backend moves an AVX-512 CPU's OpenBLAS up to the AVX-512 kernels where it loaded older
    ones: backends/cpu/blas.select_kernels). Every process of the suite calls this first, so
    the measured ceiling and the NumPy peers run on the kernels graphc runs on."""
    from graphc.backends.cpu import blas
    moved = blas.select_kernels()
    core = blas.kernel_core()
    if core is None:
        return "not OpenBLAS"
    return f"OpenBLAS {core} kernels" + (f" (moved up from {moved[0]})" if moved else "")


BLAS_KERNELS = blas_kernels()


def describe() -> dict:
    """CPU model, cores, GPU name and library versions, for the JSON and RESULTS.md."""
    libs = {m: _version(m) for m in ("graphc", "numpy", "numba", "cupy", "torch", "jax")}
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "gpu": _gpu_name(),
        "python": platform.python_version(), "platform": platform.platform(),
        "libraries": {k: v for k, v in libs.items() if v is not None},
        "blas": BLAS_KERNELS,
        "command": " ".join(["python -m benchmarks"] + sys.argv[1:]),
    }


def _best_time(fn, sync, repeats: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def ceilings(device: str, quick: bool) -> dict:
    """Matmul FLOP/s (float32, no TF32) and copy bandwidth (bytes read + written per s),
    measured now on `device`."""
    if device == "cpu":
        n = 1024 if quick else 2048
        a = np.random.default_rng(0).normal(size=(n, n)).astype(np.float32)
        out = np.empty_like(a)
        t = _best_time(lambda: np.matmul(a, a, out=out), lambda: None, 3 if quick else 5)
        src = np.ones(2**24 if quick else 2**26, np.float32)
        dst = np.empty_like(src)
        tc = _best_time(lambda: np.copyto(dst, src), lambda: None, 5)
        return {"matmul_flops": 2.0 * n**3 / t, "matmul_size": n,
                "copy_bytes_per_s": 2.0 * src.nbytes / tc}
    import cupy
    n = 4096 if quick else 8192
    a = cupy.random.standard_normal((n, n), dtype=cupy.float32)
    out = cupy.empty_like(a)
    sync = cupy.cuda.get_current_stream().synchronize
    t = _best_time(lambda: cupy.matmul(a, a, out=out), sync, 5)
    src = cupy.ones(2**28, cupy.float32)
    dst = cupy.empty_like(src)
    tc = _best_time(lambda: dst.__setitem__(Ellipsis, src), sync, 10)
    return {"matmul_flops": 2.0 * n**3 / t, "matmul_size": n,
            "copy_bytes_per_s": 2.0 * src.nbytes / tc}


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS counter (Linux) and return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_bytes("VmRSS")


def peak_rss() -> int:
    """Peak RSS since the last reset_peak_rss(), in bytes (0 where unknown)."""
    return _status_bytes("VmHWM")


def _status_bytes(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def available_bytes() -> int:
    """Memory the system could still hand out (MemAvailable), in bytes (8 GiB where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30
