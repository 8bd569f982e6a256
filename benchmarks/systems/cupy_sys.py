"""CuPy by hand on the GPU: the naive step launched op by op, and the expert step in a CUDA graph.

Both run the step functions of numpy_sys with `xp = cupy`, so they compute the same float32
maths as the NumPy rows (cuBLAS for the matmuls, CuPy's kernels for the rest; TF32 off).

- "cupy": the naive step, every temporary allocated from CuPy's memory pool; step() only
  enqueues work on the current stream.
- "cupy-graph": the expert step (every buffer preallocated, `out=` everywhere) captured once
  into a CUDA graph with `Stream.begin_capture()` / `end_capture()` and replayed with
  `Graph.launch()`. CuPy refuses any cuBLAS call while a stream captures (its cuBLAS stream
  binding raises NotImplementedError), so the workloads with matmuls (mlp) are reported
  unavailable; the parameter-free kinds (elementwise, softmax_xent) are captured whole.

cupy is imported lazily, in check() and build(), so this module imports without it.
"""
from __future__ import annotations

import os

import numpy as np

from . import System, Unavailable, gradient_fingerprint
from .numpy_sys import KINDS, ExpertRunner, NaiveRunner

CAPTURE_REFUSED = "CuPy refuses cuBLAS during stream capture"


def _cupy():
    """The cupy module, or Unavailable when it or a CUDA device is missing."""
    try:
        import cupy
    except Exception as e:  # ImportError, or a CUDA library that fails to load
        raise Unavailable(f"cupy is not importable ({type(e).__name__}: {e})") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:  # CUDARuntimeError: no driver, no device
        raise Unavailable(f"no CUDA device visible ({type(e).__name__}: {e})") from None
    if count == 0:
        raise Unavailable("no CUDA device visible")
    if os.environ.get("CUPY_TF32", "0") not in ("", "0"):
        raise Unavailable("CUPY_TF32 is set: CuPy's matmuls would not be float32")
    return cupy


class CupyRunner(NaiveRunner):
    """The naive step on CuPy arrays; data and parameters live on the device."""

    def __init__(self, cp, workload, data):
        self.cp = self.xp = cp
        super().__init__(workload, data)

    def sync(self):
        self.cp.cuda.get_current_stream().synchronize()

    def fingerprint(self):
        self.sync()
        loss = float(self.cp.asnumpy(self.loss))
        if self.kind == "mlp":
            return np.array([loss])
        return gradient_fingerprint(loss, self.cp.asnumpy(self.grad))

    def device_bytes(self):
        return int(self.cp.get_default_memory_pool().total_bytes())


def capture(cp, fn, stream, pool):
    """Run `fn` once to compile its kernels, then capture it on `stream` into a CUDA graph.

    `fn` must be stateless: the warm-up really runs it (the captured run only records).
    Anything `fn` allocates comes from `pool`, a pool private to this graph: memory a
    captured kernel uses must never be handed to another array between replays."""
    with cp.cuda.using_allocator(pool.malloc), stream:
        fn()  # warm-up: every kernel compiled and loaded before capture begins
        stream.synchronize()
        stream.begin_capture()
        try:
            fn()
        except BaseException:
            try:  # leave the stream usable; the capture is invalid anyway
                stream.end_capture()
            except Exception:
                pass
            raise
        return stream.end_capture()


class CupyGraphRunner(ExpertRunner):
    """The expert step (preallocated buffers, out=) captured once and replayed."""

    def __init__(self, cp, workload, data):
        if workload.kind == "mlp":
            raise Unavailable(CAPTURE_REFUSED)
        self.cp = self.xp = cp
        super().__init__(workload, data)
        # The buffers were filled on the legacy default stream, which a non-blocking
        # stream does not wait for.
        cp.cuda.Device().synchronize()
        self.stream = cp.cuda.Stream(non_blocking=True)
        self.pool = cp.cuda.MemoryPool()
        self.graph = capture(cp, self.impl.step, self.stream, self.pool)
        self.step = self._launch

    def _launch(self):
        self.graph.launch(self.stream)

    def sync(self):
        self.stream.synchronize()

    def fingerprint(self):
        self.sync()
        loss = float(self.cp.asnumpy(self.impl.loss))
        return gradient_fingerprint(loss, self.cp.asnumpy(self.impl.grad))

    def device_bytes(self):
        return int(self.cp.get_default_memory_pool().total_bytes() + self.pool.total_bytes())


class Cupy(System):
    name = "cupy"
    device = "gpu"

    def check(self):
        _cupy()

    def supports(self, workload):
        return workload.kind in KINDS

    def build(self, workload, data):
        return CupyRunner(_cupy(), workload, data)


class CupyGraph(Cupy):
    name = "cupy-graph"

    def build(self, workload, data):
        return CupyGraphRunner(_cupy(), workload, data)


SYSTEMS = [Cupy, CupyGraph]
