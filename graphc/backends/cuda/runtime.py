"""The CUDA backend's two runtimes (backend stage). Nothing above them can tell them apart.

- DeviceRuntime: CuPy arrays from CuPy's memory pool, one CuPy stream, cuBLAS through
  CuPy, pinned staging buffers for feeds, CUDA graphs through stream capture.
- SimRuntime, under NUMBA_ENABLE_CUDASIM=1: the same Numba CUDA kernels run in Numba's
  simulator on host arrays, GEMMs through NumPy, and "graph capture" records the launch
  sequence and replays it, so the capture and replay logic is tested without a GPU.

Every buffer the executor uses comes from `empty`, which counts allocations: a steady
state step allocates nothing (tested)."""
from __future__ import annotations

import os

import numpy as np

from ..base import Runtime


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

    __slots__ = ("runtime", "array", "version", "_host_scalar")

    def __init__(self, runtime, array):
        self.runtime = runtime
        self.array = array
        self.version = 0
        self._host_scalar = None

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

    def __init__(self):
        self.allocations = 0  # buffers `empty` made: constant in steady state
        self._recording = None  # a list while a step is being captured

    # --- memory ----------------------------------------------------------------------
    def adopt(self, param):
        storage = param.storage
        if not (isinstance(storage, DeviceStorage) and storage.runtime is self):
            value = storage.read()
            array = self.empty(value.shape, value.dtype)
            self.copy_from_host(value, array)
            param.storage = DeviceStorage(self, array)
            if value.ndim == 0:
                param.storage._host_scalar = float(value)
            param.graph._storage_epoch += 1
        return param.storage.array

    def empty(self, shape, dtype):
        self.allocations += 1
        return self.xp.empty(shape, dtype)

    def from_host(self, array: np.ndarray):
        out = self.empty(np.shape(array), np.asarray(array).dtype)
        self.copy_from_host(np.asarray(array), out)
        return out

    def copy(self, array):
        out = self.empty(array.shape, array.dtype)
        self.copy_into(array, out)
        return out

    # --- launches and capture --------------------------------------------------------
    def launch(self, fn, *args) -> None:
        """Run fn(*args) on the stream, or record it while a step is being captured."""
        if self._recording is not None:
            self._recording.append((fn, args))
        else:
            fn(*args)


class SimRuntime(_CudaRuntime):
    """Numba's CUDA simulator: device arrays are host arrays; kernels run on the CPU."""

    device = "cuda-sim"

    def to_host(self, array) -> np.ndarray:
        return np.asarray(array)

    def copy_from_host(self, host, device_array) -> None:
        np.copyto(device_array, host, casting="unsafe")

    def copy_into(self, src, dst) -> None:
        np.copyto(dst, src)

    kernel_stream = None  # the stream kernels launch on (the simulator has none)

    def staging(self, shape, dtype):
        """A host buffer feeds are copied into before their host-to-device copy."""
        self.allocations += 1
        return np.empty(shape, dtype)

    def feed(self, host, staging, device_array) -> None:
        """Copy a fed host array into its fixed device buffer, through `staging`."""
        np.copyto(staging, host)
        np.copyto(device_array, staging)

    def matmul(self, a, b, out) -> None:
        np.matmul(a, b, out=out)

    def gemm_update(self, a, b, alpha: float, w, out) -> None:
        """out = w + alpha * (a @ b) (out may be w)."""
        if out is not w:
            np.copyto(out, w)
        out += np.asarray(alpha, out.dtype) * np.matmul(a, b)

    def capture(self, step):
        """Run `step()` recording every launch instead of running it; the recording
        replays them in order (what a CUDA graph does with a captured stream)."""
        self._recording = []
        try:
            step()
            return _Replay(self._recording)
        finally:
            self._recording = None

    def synchronize(self) -> None:
        pass


class _Replay:
    """A captured launch sequence: replay() runs it again over the same buffers."""

    def __init__(self, launches: list):
        self.launches = launches

    def replay(self) -> None:
        for fn, args in self.launches:
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
        self.allocations += 1
        import cupyx
        return cupyx.empty_pinned(shape, dtype)

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

    def matmul(self, a, b, out) -> None:
        with self.stream:
            self.cupy.matmul(a, b, out=out)

    def gemm_update(self, a, b, alpha: float, w, out) -> None:
        from cupy import cublas
        with self.stream:
            if out is not w:
                self.cupy.copyto(out, w)
            cublas.gemm("N", "N", a, b, out=out, alpha=alpha, beta=1.0)

    def capture(self, step):
        """Capture `step()` on the stream into a CUDA graph (cupy.cuda.Graph)."""
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


def make_runtime():
    """The simulator's runtime under NUMBA_ENABLE_CUDASIM=1, else the device's."""
    return SimRuntime() if simulator_requested() else DeviceRuntime()
