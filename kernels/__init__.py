"""Hand-written device kernels (backend stage), installed as graphc.kernels: Numba CUDA
kernels for the ops that are not elementwise. Importing this package imports nothing from
numba.cuda; the tables are built on first use:

- `cuda_kernels()` -> (CUDA_KERNELS, CUDA_PAIRS): op name -> launcher, and (first op,
  second op) -> pair launcher, with the calling conventions of the CPU backend's out=
  kernels (graphc/backends/cpu/kernels.py): `launcher(*data_inputs, out=..., **attrs,
  stream=None, launch=None)`, pair launchers `f(*inputs, *outputs, stream=None,
  launch=None)`.
- `ptx_sources()` -> PTX_SOURCES: kernel name -> (plain Python function, example signature
  strings), so every kernel can be compiled to PTX without a device.

`CUDA_KERNELS`, `CUDA_PAIRS` and `PTX_SOURCES` are also readable as module attributes
(built on first access). See README.md for the kernels and their launch shapes."""
from __future__ import annotations

import functools
import importlib

_MODULES = ("softmax", "reduce", "random", "embedding", "pool", "conv", "norm", "slicing",
            "indexing")


def _modules() -> list:
    return [importlib.import_module(f"{__name__}.{m}") for m in _MODULES]


@functools.lru_cache(maxsize=None)
def cuda_kernels() -> tuple[dict, dict]:
    """(op name -> launcher, (op, op) -> pair launcher); imports numba.cuda."""
    kernels, pairs = {}, {}
    for m in _modules():
        kernels.update(m.KERNELS)
        pairs.update(getattr(m, "PAIRS", {}))
    return kernels, pairs


@functools.lru_cache(maxsize=None)
def ptx_sources() -> dict:
    """Kernel name -> (Python function, list of example signature strings)."""
    out = {}
    for m in _modules():
        out.update({f"{m.__name__.rsplit('.', 1)[1]}.{k}": v
                    for k, v in m.ptx_sources().items()})
    return out


def __getattr__(name: str):
    if name == "CUDA_KERNELS":
        return cuda_kernels()[0]
    if name == "CUDA_PAIRS":
        return cuda_kernels()[1]
    if name == "PTX_SOURCES":
        return ptx_sources()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
