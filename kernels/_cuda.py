"""Launch plumbing shared by the hand-written Numba CUDA kernels (backend stage): the
simulator switch, default launch shapes, streams, device-array views and the fallback to an
op's NumPy reference for dtypes the kernels do not cover.

Kernels are flat `cuda.jit` functions (no device-function calls) compiled lazily from plain
Python functions, so `cuda.compile_ptx` can compile each one without a driver."""
from __future__ import annotations

import sys
import warnings
import weakref
from typing import Callable

import numpy as np
from numba import config, cuda

# Shared arrays are sized for the largest block, so any power-of-two block size works.
MAX_THREADS = 1024
DEVICE_THREADS = 256
MAX_BLOCKS = 65535  # kernels loop grid-stride beyond this
# The simulator costs about 120 microseconds per thread: tiny grids, grid-stride loops.
SIM_THREADS = 32
SIM_BLOCKS = 2

Launch = Callable[[int], tuple]
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
INTS = (np.dtype(np.int32), np.dtype(np.int64))


def simulator() -> bool:
    """Whether numba.cuda runs kernels in Numba's CUDA simulator in this process."""
    return bool(config.ENABLE_CUDASIM)


def default_launch(n: int) -> tuple[int, int]:
    """(blocks, threads) for n work items: one thread each on a device (capped, the kernels
    loop grid-stride), two blocks of 32 threads in the simulator."""
    if simulator():
        return max(1, min(SIM_BLOCKS, -(-n // SIM_THREADS))), SIM_THREADS
    return max(1, min(MAX_BLOCKS, -(-n // DEVICE_THREADS))), DEVICE_THREADS


def grid(launch: Launch | None, n: int) -> tuple[int, int]:
    """The launch shape for n work items, checked: threads a power of two up to 1024."""
    blocks, threads = (launch or default_launch)(max(int(n), 1))
    blocks, threads = int(blocks), int(threads)
    if blocks < 1 or not 1 <= threads <= MAX_THREADS or threads & (threads - 1):
        raise ValueError(f"bad launch shape ({blocks}, {threads}): need blocks >= 1 and a "
                         f"power-of-two thread count up to {MAX_THREADS}")
    return blocks, threads


def pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def group_grid(launch: Launch | None, n_groups: int, group_len: int,
               lanes: int | None = None) -> tuple[int, int, int]:
    """(blocks, threads, lanes) for kernels where `lanes` threads (a power of two dividing
    the block) cooperate on each group of `group_len` elements: by default as many lanes as
    the group needs, up to the block. `launch` gets the number of groups."""
    if launch is None:
        threads = SIM_THREADS if simulator() else DEVICE_THREADS
        lanes = min(threads, pow2_at_least(group_len)) if lanes is None else min(lanes, threads)
        cap = SIM_BLOCKS if simulator() else MAX_BLOCKS
        blocks = max(1, min(cap, -(-n_groups * lanes // threads)))
        return blocks, threads, lanes
    blocks, threads = grid(launch, n_groups)
    lanes = min(threads, pow2_at_least(group_len)) if lanes is None else min(lanes, threads)
    return blocks, threads, lanes


def xp_of(a):
    """The array module of `a`: CuPy for CuPy arrays, NumPy otherwise."""
    return sys.modules["cupy"] if type(a).__module__.startswith("cupy") else np


def c_contiguous(a) -> bool:
    flags = getattr(a, "flags", None)
    if flags is not None:
        return bool(flags["C_CONTIGUOUS"] if isinstance(flags, dict) else flags.c_contiguous)
    return bool(a.is_c_contiguous())


def writable_view(out, shape: tuple):
    """`out` (C-contiguous, as the executor's buffers are) reshaped without a copy."""
    if not c_contiguous(out):
        raise ValueError("the kernels write into C-contiguous outputs only")
    return out.reshape(tuple(int(d) for d in shape))


def restride(a, shape: tuple, strides: tuple):
    """A read-only view of `a`'s memory with other shape and byte strides (no copy)."""
    shape, strides = tuple(int(d) for d in shape), tuple(int(s) for s in strides)
    if isinstance(a, np.ndarray):
        return np.lib.stride_tricks.as_strided(a, shape, strides, writeable=False)
    xp = xp_of(a)
    if xp is not np:
        return xp.lib.stride_tricks.as_strided(a, shape, strides)
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    d = device_array(a)
    return DeviceNDArray(shape, strides, d.dtype, gpu_data=d.gpu_data)


def device_array(a):
    """A Numba view of a device array that never synchronises on the producer's stream
    (stream capture forbids it); host arrays in the simulator pass through."""
    if simulator() or hasattr(a, "gpu_data") or not hasattr(a, "__cuda_array_interface__"):
        return a
    return cuda.as_cuda_array(a, sync=False)


def resolve_stream(stream):
    """A Numba stream: the given one (a Numba stream, or anything with a `.ptr`, such as a
    CuPy stream), else CuPy's current stream when CuPy is loaded, else the default."""
    if stream is None:
        cupy = sys.modules.get("cupy")
        if cupy is None:
            return 0
        stream = cupy.cuda.get_current_stream()
    if hasattr(stream, "handle") or isinstance(stream, int):
        return stream
    ptr = int(stream.ptr)
    return cuda.external_stream(ptr) if ptr else 0


def run(kernel, blocks: int, threads: int, stream, *args) -> None:
    """Launch `kernel` over (blocks, threads) on `stream`."""
    if simulator():
        # the simulator copies every array argument back after the launch and refuses
        # strided buffers: read-only inputs (broadcast views) and strided ones (outputs are
        # C-contiguous, so these are inputs) go in as copies
        args = [a.copy() if isinstance(a, np.ndarray) and not (
            a.flags.writeable and (a.flags.c_contiguous or a.flags.f_contiguous)) else a
            for a in args]
        with warnings.catch_warnings():
            # uint64 wrap-around is the point of the hashes; NumPy scalars warn about it
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel[blocks, threads](*args)
        return
    args = [device_array(a) for a in args]
    kernel[blocks, threads, resolve_stream(stream)](*args)


_JITTED: dict = {}


def jit(fn):
    """The lazily compiled kernel of a plain Python function (one dispatcher per function)."""
    k = _JITTED.get(fn)
    if k is None:
        k = _JITTED[fn] = cuda.jit(fn)
    return k


def reference_into(op: str, *arrays, out, **attrs) -> None:
    """The op's NumPy reference on the runtime's arrays (CuPy dispatches NumPy functions),
    copied into `out`: for dtypes and layouts no kernel here covers."""
    from graphc.ops.registry import get_op
    xp = xp_of(out)
    with np.errstate(all="ignore"):
        value = get_op(op).reference(*arrays, **attrs)
    xp.copyto(out, xp.asarray(value), casting="unsafe")


# --- GEMMs and scratch for launchers that need the runtime (conv2d) ---------------------------
# A launcher with a `prepare` attribute takes `runtime=`: an object with `matmul(a, b, out)`
# (the runtime's cuBLAS call on its stream on a device, its emulation of that call or NumPy
# in the simulator) and `empty(shape, dtype)` (counted allocations). The executor calls
# `prepare(*inputs, out=..., runtime=..., **attrs)` once at bind time, so scratch exists
# before any step is captured and a steady-state step allocates nothing. Called directly (runtime=None), GEMMs run through
# the array module of `out` on `stream` and scratch comes from that module.
_SCRATCH: dict = {}  # (runtime id or module name, tag, shape, dtype) -> array


def scratch(runtime, tag: str, shape: tuple, dtype, like):
    """A scratch array kept per runtime (or per array module) and per (tag, shape, dtype).
    Launches on one runtime run one after another on its stream, so every launcher may
    reuse its scratch from call to call."""
    shape = tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    owner = id(runtime) if runtime is not None else xp_of(like).__name__
    key = (owner, tag, shape, dtype.str)
    a = _SCRATCH.get(key)
    if a is None:
        a = runtime.empty(shape, dtype) if runtime is not None else \
            xp_of(like).empty(shape, dtype)
        if runtime is not None:
            # the entry lives as long as the runtime: forget it when the runtime goes
            weakref.finalize(runtime, _SCRATCH.pop, key, None)
        _SCRATCH[key] = a
    return a


def _cupy_stream(stream):
    """`stream` as a CuPy stream context (None: CuPy's current stream)."""
    import contextlib
    cupy = sys.modules["cupy"]
    if stream is None:
        return contextlib.nullcontext()
    if isinstance(stream, cupy.cuda.BaseStream):
        return stream
    handle = getattr(stream, "handle", None)  # a Numba stream
    ptr = int(getattr(handle, "value", handle) or 0) if handle is not None else \
        int(getattr(stream, "ptr", stream) or 0)
    return cupy.cuda.ExternalStream(ptr) if ptr else cupy.cuda.Stream.null


def gemm(a, b, out, runtime=None, stream=None) -> None:
    """out = a @ b (2-D, or 3-D batched; transposed operands as views): the runtime's
    GEMM when given, else NumPy or CuPy (cuBLAS) by the type of `out`, on `stream`."""
    if runtime is not None:
        runtime.matmul(a, b, out)
        return
    xp = xp_of(out)
    if xp is np:
        np.matmul(a, b, out=out)
        return
    with _cupy_stream(stream):
        xp.matmul(a, b, out=out)


def copy_into(src, dst, runtime=None, stream=None) -> None:
    """dst[...] = src on the device (the runtime's copy when given)."""
    if runtime is not None:
        runtime.copy_into(src, dst)
        return
    xp = xp_of(dst)
    if xp is np:
        np.copyto(dst, src)
        return
    with _cupy_stream(stream):
        xp.copyto(dst, src)
