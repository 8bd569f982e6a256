"""NumPy kernels (CPU backend) that write into a preallocated output (`out=`), for the ops
that are not elementwise (elementwise ops go through the fused-kernel code generator). An op
missing here runs its reference and copies the result into place."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import blas
from . import conv_kernels as _conv_kernels

TILE_ROWS_ELEMENTS = 1 << 16


# A product of few rows with a transposed weight, x @ W.T as torch-layout layers and an RNN's
# recurrent step h @ W_hh.T compute it, takes a slow path in OpenBLAS: it runs 1.1-2.5x
# faster as (W @ x.T).T, the product of the contiguous W, and a transposed copy of its
# (N, M) result into place by OpenBLAS's somatcopy (blas.transpose_into). Measured on this
# project's 2-core machine, OpenBLAS 0.3.31, SkylakeX kernels: (64, 512) @ (512, 2048).T-view
# 0.60 -> 0.44 ms, (16, 512) @ (512, 2048) 0.38 -> 0.17 ms, (128, 512) @ (512, 2048) 0.98 ->
# 0.82 ms. With more rows, or a short inner dimension, the copy costs more than it saves.
def _transposed_is_faster(m: int, n: int, k: int) -> bool:
    return _runs_openblas() and n >= 256 and (
        m <= 32 or (m <= 64 and k >= 512) or (m <= 128 and k >= 512 and n >= 512))


@functools.lru_cache(maxsize=None)
def _runs_openblas() -> bool:
    """Whether NumPy's BLAS is OpenBLAS, the library the rule above was measured on."""
    return blas.kernel_core() is not None


def _matmul(a, b, out):
    if (a.ndim == 2 and b.ndim == 2 and b.T.flags.c_contiguous and out.flags.c_contiguous
            and a.dtype == b.dtype == out.dtype and out.dtype.kind == "f"
            and _transposed_is_faster(a.shape[0], b.shape[1], a.shape[1])):
        tmp = _conv_kernels._buffer("matmul_transposed", (b.shape[1], a.shape[0]), out.dtype)
        np.matmul(b.T, a.T, out=tmp)
        blas.transpose_into(tmp, out)
        return
    np.matmul(a, b, out=out)


def _reduce(fn):
    def kernel(x, out, axes, keepdims):
        fn(x, axis=axes, keepdims=keepdims, out=out)
    return kernel


def _rows(n_rows: int, row_len: int, elements: int = TILE_ROWS_ELEMENTS):
    """Row tiles of about `elements` elements."""
    step = max(1, elements // max(row_len, 1))
    for r0 in range(0, n_rows, step):
        yield r0, min(r0 + step, n_rows)


def _softmax_rows(x, out, log: bool):
    """Softmax (or log-softmax) of each row of a 2-D array, tile by tile."""
    for r0, r1 in _rows(x.shape[0], x.shape[1]):
        t, o = x[r0:r1], out[r0:r1]
        m = np.max(t, axis=1, keepdims=True)
        np.subtract(t, m, out=o)
        if log:
            e = np.exp(o)
            np.subtract(o, np.log(np.sum(e, axis=1, keepdims=True)), out=o)
        else:
            np.exp(o, out=o)
            np.divide(o, np.sum(o, axis=1, keepdims=True), out=o)


def _softmax_family(log: bool):
    def kernel(x, out, axis):
        if x.ndim == 2 and axis % 2 == 1:
            _softmax_rows(x, out, log)
            return
        from ...ops.nn import _log_softmax, _softmax
        np.copyto(out, (_log_softmax if log else _softmax)(x, axis))
    return kernel


def _check_labels(labels, n_classes):
    from ...ops.nn import _check_labels as check
    check(labels, n_classes, "softmax_cross_entropy")


def _gather_index(labels):
    """The labels as an index array whose row gather itself range-checks them: numpy raises
    IndexError for an index at or past the class count, and signed labels narrower than 64
    bits are read as their unsigned twins, so a negative one becomes one past the end
    instead of wrapping to the last class. The feed check (graphc.feeds) has already
    checked labels fed straight from a placeholder; this catches the others (labels behind
    a slice, a computed value) at no extra pass. 64-bit signed labels pay one min()."""
    dt = labels.dtype
    if dt.kind == "i":
        if dt.itemsize < 8:
            return labels.view(dt.str.replace("i", "u"))  # same width and byte order
        if labels.size and labels.min() < 0:
            raise IndexError("negative label")
    return labels


def _labels_checked(kernel, logits_at: int):
    """The kernel, its out-of-range labels (the argument after the logits) raising the
    FeedError of graphc.ops.nn: the IndexError of its gather (see _gather_index) becomes
    that error, whose message names the first bad label."""
    def checked(*args, **kwargs):
        try:
            return kernel(*args, **kwargs)
        except IndexError:
            _check_labels(args[logits_at + 1], args[logits_at].shape[1])
            raise
    checked.__doc__, checked.__name__ = kernel.__doc__, kernel.__name__
    return checked


def _sce_kernel(logits, labels, out):
    """Per-row loss logsumexp(x) - x[label], one tile of rows at a time."""
    index = _gather_index(labels)
    for r0, r1 in _rows(*logits.shape):
        z = logits[r0:r1] - np.max(logits[r0:r1], axis=1, keepdims=True)
        lse = np.log(np.sum(np.exp(z), axis=1))  # relative to the row maximum: no cancellation
        np.subtract(lse, z[np.arange(r1 - r0), index[r0:r1]], out=out[r0:r1])


def _sce_backward_kernel(g, logits, labels, out):
    """g[:, None] * (softmax(logits) - one_hot(labels)), one tile of rows at a time."""
    index = _gather_index(labels)
    for r0, r1 in _rows(*logits.shape):
        t, o = logits[r0:r1], out[r0:r1]
        np.subtract(t, np.max(t, axis=1, keepdims=True), out=o)
        np.exp(o, out=o)
        np.divide(o, np.sum(o, axis=1, keepdims=True), out=o)
        o[np.arange(r1 - r0), index[r0:r1]] -= 1
        np.multiply(o, g[r0:r1, None], out=o)


_sce = _labels_checked(_sce_kernel, 0)
_sce_backward = _labels_checked(_sce_backward_kernel, 1)


# --- threads -----------------------------------------------------------------------------
_THREADS: int | None = None
_POOL = None
_POOL_LOCK = threading.Lock()


def threads() -> int:
    """How many threads graphc's CPU kernels run on: the cores this process may use (its
    affinity mask, else the machine's count), at most 8. Read once per process; assign
    `graphc.backends.cpu.kernels.set_threads(n)` to change it (1: every kernel serial)."""
    global _THREADS
    if _THREADS is None:
        try:
            n = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            n = os.cpu_count() or 1
        _THREADS = max(1, min(n, 8))
    return _THREADS


def set_threads(n: int) -> None:
    """Run the CPU kernels on `n` threads (the calling one included) from now on."""
    global _THREADS, _POOL
    if int(n) < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    with _POOL_LOCK:
        _THREADS = int(n)
        old, _POOL = _POOL, None
    if old is not None:
        old.shutdown(wait=False)


_BUSY = [0.0, False]  # (when last read, whether busy)


def machine_busy() -> bool:
    """Whether the machine's cores are all taken (the one-minute load average above the
    core count), read at most every half second. Then a kernel that needs every thread
    to arrive at a barrier (Numba's parallel loops, as torch's) waits for threads the OS
    has not scheduled, and graphc's chunked kernels take the work-sharing path
    (run_chunks) instead, which waits for no one."""
    now = time.monotonic()
    if now - _BUSY[0] > 0.5:
        try:
            _BUSY[1] = os.getloadavg()[0] > (os.cpu_count() or 1) + 0.5
        except (AttributeError, OSError):
            _BUSY[1] = False
        _BUSY[0] = now
    return _BUSY[1]


def numba_threads() -> None:
    """Numba's parallel loops on the calling thread run on threads() threads."""
    import numba
    n = min(threads(), numba.config.NUMBA_NUM_THREADS)
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)


_HELPER_IDS: list[int] = []  # the kernel threads of the helpers started so far (native ids)


def _note_helper() -> None:
    _HELPER_IDS.append(threading.get_native_id())


def _pool():
    global _POOL
    if _POOL is None:
        with _POOL_LOCK:
            if _POOL is None:
                _HELPER_IDS.clear()
                _POOL = ThreadPoolExecutor(max(threads() - 1, 1), thread_name_prefix="graphc",
                                           initializer=_note_helper)
    return _POOL


# A step whose kernels run over chunks on graphc's threads hands work back and forth between
# the calling thread and the helpers dozens of times; between two hand-offs each of them
# sleeps. After the process has been idle (a pause between steps), some kernels' schedulers
# (that of the 2-core VM this was measured on) keep such threads on one core, where they
# take turns: LeNet's first steps after a 0.2 s pause took 26-30 ms instead of 17-19 (12-28
# involuntary context switches per step instead of none). bound_threads() keeps the calling
# thread on the core it is on and each helper on another core for the step: 17 ms after a
# pause too. A helper bound to a core that something else holds takes fewer chunks
# (run_chunks waits for no one), so binding costs nothing on a busy machine either; two such
# processes on 2 cores measured the same bound or not. GRAPHC_BIND_THREADS=0 turns it off.
_BINDING = {"on": os.environ.get("GRAPHC_BIND_THREADS", "1") != "0" and
            hasattr(os, "sched_setaffinity"), "placed": None}
_BOUND = threading.local()


@functools.lru_cache(maxsize=None)
def _getcpu():
    """libc's sched_getcpu, or None."""
    try:
        fn = ctypes.CDLL(None).sched_getcpu
    except (AttributeError, OSError):
        return None
    fn.restype, fn.argtypes = ctypes.c_int, []
    return fn


def set_thread_binding(on: bool) -> None:
    """Whether steps on graphc's threads bind them to cores (see bound_threads)."""
    _BINDING["on"] = bool(on) and hasattr(os, "sched_setaffinity")
    _BINDING["placed"] = None


@contextlib.contextmanager
def bound_threads():
    """Inside: the calling thread stays on the core it runs on, graphc's helper threads each
    on another of the cores it may use; its own affinity is restored at the exit. Nested uses
    bind once. Without sched_setaffinity or sched_getcpu, or with one core: nothing."""
    depth = getattr(_BOUND, "depth", 0)
    getcpu = _getcpu() if _BINDING["on"] and depth == 0 else None
    saved = None
    if getcpu is not None and _HELPER_IDS:
        try:
            saved = os.sched_getaffinity(0)
            here = getcpu()
            others = sorted(saved - {here})
            if here >= 0 and others:
                helpers = tuple(_HELPER_IDS)
                if _BINDING["placed"] != (here, others, helpers):
                    for k, tid in enumerate(helpers):
                        os.sched_setaffinity(tid, {others[k % len(others)]})
                    _BINDING["placed"] = (here, others, helpers)
                os.sched_setaffinity(0, {here})
            else:
                saved = None
        except OSError:  # a core gone, a sandbox that forbids it: run unbound from now on
            _BINDING["on"], saved = False, None
    _BOUND.depth = depth + 1
    try:
        yield
    finally:
        _BOUND.depth = depth
        if saved is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, saved)


def run_chunks(fn, n_chunks: int) -> None:
    """fn(c) for every c in range(n_chunks), on the calling thread and threads() - 1
    helpers, each taking the next chunk nobody has taken yet (a range iterator, atomic
    under the GIL; fn must release it, as NumPy's loops and graphc's nogil Numba kernels
    do). The caller works too and waits only for chunks a helper has started: on a busy
    machine a helper that is not scheduled in time takes no chunk, so the call never runs
    slower than one thread would by more than one chunk. The first exception is raised."""
    helpers = min(threads(), n_chunks) - 1
    if helpers <= 0:
        for c in range(n_chunks):
            fn(c)
        return
    chunks = iter(range(n_chunks))
    lock = threading.Lock()
    done = [0]
    errors: list = []
    finished = threading.Event()

    def work():
        for c in chunks:
            try:
                fn(c)
            except BaseException as e:  # noqa: BLE001 - raised by the caller below
                errors.append(e)
            with lock:
                done[0] += 1
                if done[0] == n_chunks:
                    finished.set()

    pool = _pool()
    for _ in range(helpers):
        pool.submit(work)
    work()
    finished.wait()
    if errors:
        raise errors[0]


def _parallel(fn, tiles) -> None:
    """Run fn(r0, r1) over row tiles on threads() threads (NumPy releases the GIL inside
    its loops); serially when the work is small or the machine has one core."""
    tiles = list(tiles)
    if len(tiles) < 4 or threads() < 2:
        for r0, r1 in tiles:
            fn(r0, r1)
        return
    run_chunks(lambda c: fn(*tiles[c]), len(tiles))


def _sce_with_backward_kernel(logits, labels, g, loss_out, grad_out):
    """Loss and gradient of softmax cross-entropy in one pass over the logits: each tile of
    rows is read once from memory, its exponentials computed once."""
    index = _gather_index(labels)
    g = np.broadcast_to(g, loss_out.shape)

    def tile(r0, r1):
        t, o, rows = logits[r0:r1], grad_out[r0:r1], np.arange(r1 - r0)
        np.subtract(t, np.max(t, axis=1, keepdims=True), out=o)
        picked = o[rows, index[r0:r1]]
        np.exp(o, out=o)
        total = np.sum(o, axis=1)
        np.subtract(np.log(total), picked, out=loss_out[r0:r1])
        np.multiply(o, (g[r0:r1] / total)[:, None], out=o)
        o[rows, index[r0:r1]] -= g[r0:r1]

    big = logits.size >= 1 << 22
    _parallel(tile, _rows(logits.shape[0], logits.shape[1], 1 << 20) if big
              else [(0, logits.shape[0])])


_sce_with_backward = _labels_checked(_sce_with_backward_kernel, 0)


# Kernels that compute two graph steps at once: (first op, second op) -> f(*inputs, *outs).
PAIRS = {("softmax_cross_entropy", "softmax_cross_entropy_backward"): _sce_with_backward}


def _scatter_slices(*grads, out, indices):
    """zeros with each gradient added at its slice, written into out: where the slices tile
    out exactly once (an RNN's steps, an LSTM's gates), each is copied into place, with no
    zero fill and no read of out; otherwise zeros, then the sums in the reference's order."""
    from ...ops.shape_ops import _decode_index, slices_tile
    places = [_decode_index(code) + (Ellipsis,) for code in indices]  # views, even 0-d
    if slices_tile(tuple(out.shape), tuple(indices)):  # the memory plan asks it too
        for g, where in zip(grads, places):
            np.copyto(out[where], g, casting="unsafe")
        return
    out[...] = 0
    for g, where in zip(grads, places):
        out[where] += g


INTO = {
    "matmul": _matmul,
    "scatter_slices": _scatter_slices,
    "sum": _reduce(np.sum),
    "mean": _reduce(np.mean),
    "max": _reduce(np.max),
    "min": _reduce(np.min),
    "softmax": _softmax_family(log=False),
    "log_softmax": _softmax_family(log=True),
    "softmax_cross_entropy": _sce,
    "softmax_cross_entropy_backward": _sce_backward,
}
INTO.update(_conv_kernels.INTO)
