"""The CUDA backend's two runtimes (backend stage). Nothing above them can tell them apart.

- DeviceRuntime: CuPy arrays from CuPy's memory pool, one CuPy stream, cuBLAS through
  CuPy, pinned staging buffers for feeds, CUDA graphs through stream capture.
- SimRuntime, under NUMBA_ENABLE_CUDASIM=1: the same Numba CUDA kernels run in Numba's
  simulator on host arrays, GEMMs through NumPy, and "graph capture" records the launch
  sequence and replays it, so the capture and replay logic is tested without a GPU.

Every buffer the executor uses comes from `empty`, which counts allocations: a steady
state step allocates nothing (tested). An allocation the device cannot satisfy (CuPy's
OutOfMemoryError) raises graphc's ResourceError saying how much was asked for, how much is
free, and what to change. Parameters live in parameter pools: `pack` moves the parameters
of a plan into one flat allocation (each DeviceStorage a view into it), which is what lets
a multi-tensor update address them all by offsets (multi_tensor.py).

Test hooks of the simulator's runtime: `memory_limit` (bytes of live simulated device
memory; an allocation beyond it fails as a device's would) and `trace` (a list: every
launch, eager or replayed, appends the callable it ran)."""
from __future__ import annotations

import os
import weakref

import numpy as np

from ...errors import ResourceError
from ..base import Runtime

POOL_ALIGN = 256  # bytes between arrays of a parameter pool: cudaMalloc's own alignment


def simulator_requested() -> bool:
    """Whether Numba runs CUDA kernels in its simulator in this process."""
    try:
        from numba import config
        return bool(config.ENABLE_CUDASIM)
    except ImportError:
        return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


class DeviceStorage:
    """A parameter's value in one runtime's memory. Host writes (assign, checkpoint load)
    keep a host copy of 0-d values, so reading a learning rate for a GEMM's alpha needs no
    device round trip."""

    __slots__ = ("runtime", "array", "version", "_host_scalar", "pool")

    def __init__(self, runtime, array):
        self.runtime = runtime
        self.array = array
        self.version = 0
        self._host_scalar = None
        self.pool = None  # the flat allocation `array` is a view of (runtime.pack), if any

    @property
    def device(self) -> str:
        return self.runtime.device

    def read(self) -> np.ndarray:
        return np.array(self.runtime.to_host(self.array), copy=True)

    def host(self) -> np.ndarray:
        return self.read()

    def write(self, value: np.ndarray) -> None:
        self.runtime.copy_from_host(np.asarray(value, self.array.dtype), self.array)
        self.version += 1
        self._host_scalar = float(value) if self.array.ndim == 0 else None

    def snapshot(self):
        return self.runtime.copy(self.array)

    def restore(self, snapshot) -> None:
        self.runtime.copy_into(snapshot, self.array)
        self.version += 1
        self._host_scalar = None

    def host_scalar(self) -> float:
        """The value of a 0-d parameter, from the host copy when the host wrote it last."""
        if self._host_scalar is None:
            self._host_scalar = float(self.runtime.to_host(self.array))
        return self._host_scalar

    def device_wrote(self) -> None:
        """The plan updated the value on the device: the host copy is stale."""
        self._host_scalar = None


class _CudaRuntime(Runtime):
    """What both runtimes share: storage, allocation counting, launches and capture."""

    xp = np
    simulated = True

    trace = None  # a list: every launch (eager or replayed) appends its callable

    def __init__(self):
        self.allocations = 0  # buffers `empty` made: constant in steady state
        self._recording = None  # a list while a step is being captured

    # --- memory ----------------------------------------------------------------------
    def adopt(self, param):
        storage = param.storage
        if not (isinstance(storage, DeviceStorage) and storage.runtime is self):
            value = storage.read()
            array = self.empty(value.shape, value.dtype, what=f"parameter '{param.name}'")
            self.copy_from_host(value, array)
            param.storage = DeviceStorage(self, array)
            if value.ndim == 0:
                param.storage._host_scalar = float(value)
            param.graph._storage_epoch += 1
        return param.storage.array

    def pack(self, params) -> None:
        """Move the parameters held here in arrays of their own into one new flat
        allocation (a parameter pool; each DeviceStorage becomes a view into it, aligned to
        POOL_ALIGN bytes). Values are unchanged; if the allocation fails nothing moves.
        A parameter already in a pool stays where it is: Functions bound to it keep it."""
        loose = list(dict.fromkeys(
            p for p in params if isinstance(p.storage, DeviceStorage)
            and p.storage.runtime is self and p.storage.pool is None))
        if not loose:
            return
        offsets, total = [], 0
        for p in loose:
            offsets.append(total)
            total += -(-max(int(p.storage.array.nbytes), 1) // POOL_ALIGN) * POOL_ALIGN
        flat = self.empty((total,), np.uint8,
                          what=f"the parameter pool ({len(loose)} parameters)")
        for p, off in zip(loose, offsets):
            old = p.storage.array
            view = flat[off:off + old.nbytes].view(old.dtype).reshape(old.shape)
            self.copy_into(old, view)
            p.storage.array = view
            p.storage.pool = flat

    def empty(self, shape, dtype, what: str = "a buffer"):
        """An uninitialised array of this runtime; ResourceError if memory runs out."""
        nbytes = _nbytes(shape, dtype)
        try:
            array = self._allocate(shape, dtype, nbytes)
        except ResourceError:
            raise
        except Exception as e:  # noqa: BLE001 - CuPy's OutOfMemoryError is a MemoryError
            if not _out_of_memory(e):
                raise
            raise self.out_of_memory(nbytes, what, e) from e
        self.allocations += 1
        return array

    def _allocate(self, shape, dtype, nbytes: int):
        return self.xp.empty(shape, dtype)

    def memory_info(self) -> tuple | None:
        """(free, total) bytes of device memory, or None where unknown."""
        return None

    def out_of_memory(self, nbytes: int, what: str, error=None, where: str = "device"):
        """The ResourceError for an allocation of `nbytes` for `what` that failed."""
        from ...memory import format_bytes
        info = self.memory_info() if where == "device" else None
        free = (f"; {format_bytes(info[0])} of {format_bytes(info[1])} are free"
                if info is not None else "")
        cause = f" [{type(error).__name__}: {error}]" if error is not None else ""
        freeing = ("other processes on the device, device arrays still held (results of "
                   "earlier calls, other compiled Functions), cached blocks of CuPy's memory "
                   "pool (cupy.get_default_memory_pool().free_all_blocks())"
                   if where == "device" else "other programs' memory, host arrays still held")
        return ResourceError(
            f"the CUDA backend ({self.device}) could not allocate {format_bytes(nbytes)} "
            f"of {where} memory for {what}{free}{cause}. Hint: use a smaller batch size "
            f"(most buffers grow with it) or a smaller model, or free {where} memory: "
            f"{freeing}")

    def address(self, array) -> int:
        """The address of an array's first element (for offsets into a flat allocation)."""
        return int(array.__array_interface__["data"][0])

    def from_host(self, array: np.ndarray, what: str = "a constant"):
        out = self.empty(np.shape(array), np.asarray(array).dtype, what=what)
        self.copy_from_host(np.asarray(array), out)
        return out

    def copy(self, array):
        out = self.empty(array.shape, array.dtype, what="a copy of a parameter")
        self.copy_into(array, out)
        return out

    # --- launches and capture --------------------------------------------------------
    def launch(self, fn, *args) -> None:
        """Run fn(*args) on the stream, or record it while a step is being captured."""
        if self._recording is not None:
            self._recording.append((fn, args))
        else:
            if self.trace is not None:
                self.trace.append(fn)
            fn(*args)


class SimRuntime(_CudaRuntime):
    """Numba's CUDA simulator: device arrays are host arrays; kernels run on the CPU."""

    device = "cuda-sim"
    memory_limit = None  # test hook: bytes of simulated device memory (None: unlimited)

    def __init__(self):
        super().__init__()
        self.live_bytes = 0  # bytes of the simulated device memory still referenced

    def _allocate(self, shape, dtype, nbytes: int):
        if self.memory_limit is not None and self.live_bytes + nbytes > self.memory_limit:
            raise MemoryError(f"simulated device memory exhausted: {nbytes} bytes asked, "
                              f"{self.live_bytes} of {self.memory_limit} in use")
        array = np.empty(shape, dtype)
        self.live_bytes += nbytes
        weakref.finalize(array, self._release, nbytes)
        return array

    def _release(self, nbytes: int) -> None:
        self.live_bytes -= nbytes

    def memory_info(self) -> tuple | None:
        if self.memory_limit is None:
            return None
        return max(self.memory_limit - self.live_bytes, 0), self.memory_limit

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def copy_from_host(self, host, device_array) -> None:
        np.copyto(device_array, host, casting="unsafe")

    def copy_into(self, src, dst) -> None:
        np.copyto(dst, src)

    kernel_stream = None  # the stream kernels launch on (the simulator has none)

    def staging(self, shape, dtype):
        """A host buffer feeds are copied into before their host-to-device copy."""
        try:
            array = np.empty(shape, dtype)
        except MemoryError as e:
            raise self.out_of_memory(_nbytes(shape, dtype),
                                     "a feed's staging buffer", e, where="host") from e
        self.allocations += 1
        return array

    def feed(self, host, staging, device_array) -> None:
        """Copy a fed host array into its fixed device buffer, through `staging`."""
        np.copyto(staging, host)
        np.copyto(device_array, staging)

    def matmul(self, a, b, out) -> None:
        """out = a @ b as the device's cuBLAS call would compute it (cublas.emulate), or
        NumPy's matmul where the device would use CuPy's."""
        if not self._gemm(a, b, out, 1.0, 0.0):
            np.matmul(a, b, out=out)

    def gemm_update(self, a, b, alpha: float, w, out) -> None:
        """out = w + alpha * (a @ b) (out may be w)."""
        if out is not w:
            np.copyto(out, w)
        if not self._gemm(a, b, out, alpha, 1.0):
            out += np.asarray(alpha, out.dtype) * np.matmul(a, b)

    @staticmethod
    def _gemm(a, b, out, alpha, beta) -> bool:
        from .cublas import emulate, gemm_call
        call = gemm_call(a, b, out)
        if call is None:
            return False
        emulate(call, a, b, out, alpha, beta)
        return True

    def capture(self, step):
        """Run `step()` recording every launch instead of running it; the recording
        replays them in order (what a CUDA graph does with a captured stream)."""
        self._recording = []
        try:
            step()
            return _Replay(self._recording, self)
        finally:
            self._recording = None

    def synchronize(self) -> None:
        pass


class _Replay:
    """A captured launch sequence: replay() runs it again over the same buffers."""

    def __init__(self, launches: list, runtime=None):
        self.launches = launches
        self.runtime = runtime

    def replay(self) -> None:
        trace = getattr(self.runtime, "trace", None)
        for fn, args in self.launches:
            if trace is not None:
                trace.append(fn)
            fn(*args)


class DeviceRuntime(_CudaRuntime):
    """A CUDA device through CuPy: its memory pool, one stream, cuBLAS, CUDA graphs."""

    device = "cuda"
    simulated = False

    def __init__(self):
        super().__init__()
        import cupy
        self.xp = cupy
        self.cupy = cupy
        # one stream for everything: CuPy work, Numba kernels (given it explicitly) and the
        # captured graph; a non-default stream, since the legacy one cannot be captured
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.kernel_stream = self.stream
        self._feed_done: dict = {}  # id(staging buffer) -> event of its last copy
        self._blas = None

    def to_host(self, array) -> np.ndarray:
        return self.cupy.asnumpy(array, stream=self.stream) if hasattr(array, "device") \
            else np.asarray(array)

    def copy_from_host(self, host, device_array) -> None:
        with self.stream:
            device_array.set(np.ascontiguousarray(host, device_array.dtype), stream=self.stream)

    def copy_into(self, src, dst) -> None:
        with self.stream:  # src may be any __cuda_array_interface__ array (torch, Numba)
            self.cupy.copyto(dst, self.cupy.asarray(src))

    def staging(self, shape, dtype):
        """A pinned host buffer: its host-to-device copy is asynchronous."""
        import cupyx
        try:
            array = cupyx.empty_pinned(shape, dtype)
        except Exception as e:  # noqa: BLE001 - pinned allocation fails as a CUDA error
            if not _out_of_memory(e):
                raise
            raise self.out_of_memory(_nbytes(shape, dtype),
                                     "a feed's pinned staging buffer", e, where="host") from e
        self.allocations += 1
        return array

    def memory_info(self) -> tuple | None:
        """(free, total): the driver's free bytes plus the blocks CuPy's pool caches."""
        try:
            free, total = self.cupy.cuda.runtime.memGetInfo()
            return free + self.cupy.get_default_memory_pool().free_bytes(), total
        except Exception:  # noqa: BLE001 - only for the message
            return None

    def address(self, array) -> int:
        return int(array.data.ptr)

    def feed(self, host, staging, device_array) -> None:
        """Copy a fed host array into its fixed device buffer through its pinned staging
        buffer, asynchronously; the staging buffer is rewritten only once the device has
        read the previous call's feed from it."""
        done = self._feed_done.get(id(staging))
        if done is not None:
            done.synchronize()
        np.copyto(staging, host)
        device_array.set(staging, stream=self.stream)
        event = self._feed_done[id(staging)] = done or self.cupy.cuda.Event(
            block=False, disable_timing=True)
        event.record(self.stream)

    @property
    def blas(self):
        """Our own cuBLAS handle on the stream, with its workspace (made on first use)."""
        if self._blas is None:
            from ... import config
            from .cublas import CapturableBlas
            self._blas = CapturableBlas(self.cupy, self.stream,
                                        allow_tf32=bool(getattr(config, "allow_tf32", False)))
        return self._blas

    def matmul(self, a, b, out) -> None:
        """out = a @ b: one cuBLAS call on our handle (capturable), or CuPy's matmul for
        dtypes and layouts cuBLAS cannot read in place (not capturable)."""
        if not self.blas.gemm(a, b, out):
            with self.stream:
                self.cupy.matmul(a, b, out=out)

    def gemm_update(self, a, b, alpha: float, w, out) -> None:
        """out = w + alpha * (a @ b) (out may be w), one GEMM with beta = 1."""
        with self.stream:
            if out is not w:
                self.cupy.copyto(out, w)
            if not self.blas.gemm(a, b, out, alpha, 1.0):
                out += alpha * self.cupy.matmul(a, b)

    def capture(self, step):
        """Capture `step()` on the stream into a CUDA graph (cupy.cuda.Graph)."""
        self.blas  # noqa: B018 - its handle and workspace must exist before capture begins
        self.synchronize()
        self.stream.begin_capture()
        try:
            step()
        finally:
            graph = self.stream.end_capture()
        return _DeviceGraph(graph, self.stream)

    def non_finite(self, array) -> str | None:
        cp = self.cupy
        if array.dtype.kind not in "fc":
            return None
        with self.stream:
            if bool(cp.isfinite(array).all()):
                return None
            return "NaN" if bool(cp.isnan(array).any()) else "Inf"

    def synchronize(self) -> None:
        self.stream.synchronize()


class _DeviceGraph:
    def __init__(self, graph, stream):
        self.graph, self.stream = graph, stream

    def replay(self) -> None:
        self.graph.launch(stream=self.stream)


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def _out_of_memory(error) -> bool:
    """Whether an exception is an allocation running out of memory: MemoryError (CuPy's
    OutOfMemoryError is one) or a CUDA error saying so (pinned memory)."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return "cudaErrorMemoryAllocation" in text or "CUDA_ERROR_OUT_OF_MEMORY" in text


def make_runtime():
    """The simulator's runtime under NUMBA_ENABLE_CUDASIM=1, else the device's."""
    return SimRuntime() if simulator_requested() else DeviceRuntime()
