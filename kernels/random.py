"""Counter-based random numbers as a Numba CUDA kernel (backend stage): `random_uniform`,
bit for bit the numbers of graphc/ops/random.py (`uniform_bits`): element i of a draw is
splitmix64(i * golden + key) >> 40, times 2**-24, with key = splitmix64(seed ^
splitmix64(counter)). The counter is read from device memory (the graph's rng/counter
parameter), so a captured step draws fresh numbers on every replay.

All hash arithmetic is uint64 with uint64 operands only (Numba promotes a mix of int64 and
uint64 to float64); multiplication wraps around as in NumPy."""
from __future__ import annotations

import numpy as np
from numba import cuda, float64, uint64

from . import _cuda
from ._cuda import FLOATS

_GOLDEN = uint64(0x9E3779B97F4A7C15)
_M1 = uint64(0xBF58476D1CE4E5B9)
_M2 = uint64(0x94D049BB133111EB)
_S27, _S30, _S31, _S40 = uint64(27), uint64(30), uint64(31), uint64(40)
_SCALE = 2.0 ** -24
_MASK = 2**64 - 1


def random_uniform_kernel(seed, counter, out):
    """out[i] = 24 random bits of (seed, counter[0], i) as a float in [0, 1)."""
    z = uint64(counter[0])
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z = seed ^ (z ^ (z >> _S31))
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    key = z ^ (z >> _S31)
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        z = uint64(i) * _GOLDEN + key
        z = (z ^ (z >> _S30)) * _M1
        z = (z ^ (z >> _S27)) * _M2
        z = z ^ (z >> _S31)
        out[i] = float64(z >> _S40) * _SCALE


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    sigs = [f"void(uint64, {c}[:], {t}[::1])" for t in ("float32", "float64")
            for c in ("int64", "int32")]
    return {"random_uniform": (random_uniform_kernel, sigs)}


def random_uniform(counter, *, out, seed: int, dtype=None, stream=None, launch=None) -> None:
    """Uniform [0, 1) numbers for (seed, counter) into `out` (any shape, C-contiguous):
    the CPU backend's numbers exactly. `counter` is a 0-d or 1-element integer array on
    the device (or a Python int)."""
    if out.dtype not in FLOATS:
        _cuda.reference_into("random_uniform", counter, tuple(out.shape), out=out, seed=seed,
                             dtype=out.dtype.name)
        return
    if out.size == 0:
        return
    if isinstance(counter, (int, np.integer)):
        counter = np.array([int(counter)], np.int64)
        if not _cuda.simulator():
            counter = cuda.to_device(counter)
    flat = _cuda.writable_view(out, (out.size,))
    blocks, threads = _cuda.grid(launch, out.size)
    _cuda.run(_cuda.jit(random_uniform_kernel), blocks, threads, stream,
              np.uint64(int(seed) & _MASK), counter.reshape(1), flat)


KERNELS = {"random_uniform": random_uniform}
