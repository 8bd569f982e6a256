"""Environment report (tooling): versions, BLAS, kernel cache and backends, for bug reports.
Every probe is wrapped: a failing one prints its reason instead of failing the report."""
from __future__ import annotations

import os
import platform
import sys


def info() -> str:
    """A plain-text report of graphc's environment to paste into a bug report."""
    lines = [f"graphc {_probe(_graphc_version)}",
             f"Python {sys.version.split()[0]} ({platform.platform()})",
             f"NumPy {_probe(lambda: __import__('numpy').__version__)}",
             f"Numba {_probe(lambda: __import__('numba').__version__)}",
             f"BLAS: {_probe(_blas)}",
             f"kernel cache: {_probe(_cache)}",
             "backends:"]
    lines += [f"  {line}" for line in _probe_lines(_backends)]
    lines.append(f"GPU: {_probe(_gpu)}")
    return "\n".join(lines)


def _probe(fn) -> str:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the report must never fail
        return f"unknown ({type(e).__name__}: {e})"


def _probe_lines(fn) -> list[str]:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return [f"unknown ({type(e).__name__}: {e})"]


def _graphc_version() -> str:
    import graphc
    return f"{graphc.__version__} at {os.path.dirname(os.path.abspath(graphc.__file__))}"


def _blas() -> str:
    from threadpoolctl import threadpool_info
    import numpy  # noqa: F401 - load NumPy's BLAS before asking for it
    pools = [p for p in threadpool_info() if p.get("user_api") == "blas"]
    if not pools:
        return "none found by threadpoolctl"
    return "; ".join(f"{p.get('internal_api')} {p.get('version')} "
                     f"({p.get('num_threads')} threads, {p.get('filepath')})" for p in pools)


def _cache_dir() -> str:
    try:
        from .backends.kernel_cache import cache_dir
    except ImportError:
        from .backends.cpu.numba_printer import cache_dir
    return cache_dir()


def _cache() -> str:
    path = _cache_dir()
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            try:
                total += os.path.getsize(os.path.join(root, name))
                files += 1
            except OSError:
                continue  # removed while we walked
    return f"{path} ({files} files, {total / 2**20:.1f} MiB)"


def _backends() -> list[str]:
    from . import backends, config
    out = []
    for name in backends.registered():
        reason = backends.availability(name)
        state = "available" if reason is None else "unavailable: " + reason
        if reason is None and name == "cuda" and _simulated():
            state = "available in simulator mode (NUMBA_ENABLE_CUDASIM): kernels run on the CPU"
        out.append(f"{name}: {state}")
    out.append(f"default (gc.config.backend): {config.backend}")
    return out


def _simulated() -> bool:
    from .backends.cuda.runtime import simulator_requested
    return simulator_requested()


def _gpu() -> str:
    try:
        import cupy
    except Exception as e:  # noqa: BLE001
        return f"none (CuPy does not import: {type(e).__name__})"
    count = cupy.cuda.runtime.getDeviceCount()
    if count == 0:
        return "none (no CUDA device is visible)"
    gpus = []
    for i in range(count):
        props = cupy.cuda.runtime.getDeviceProperties(i)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        gpus.append(f"{i}: {name}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
    return "; ".join(gpus)
