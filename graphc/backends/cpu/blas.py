"""A matmul with its epilogue in one BLAS call (CPU backend): C = alpha * A @ B + beta * C.

np.matmul cannot accumulate into its output, so an SGD step `W -= lr * X.T @ G` costs a
gradient buffer and an update pass over it. GEMM does it in one call with alpha = -lr,
beta = 1. We call the GEMM of the BLAS NumPy itself loaded (found with threadpoolctl), so it
shares NumPy's thread pool; where none is found (or it fails a check against np.matmul at
first use) `gemm(dtype)` is None and the plan keeps the matmul and the update apart."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import threading

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _find_library():
    try:
        import threadpoolctl
    except ImportError:
        return None
    for info in threadpoolctl.threadpool_info():
        if info.get("user_api") == "blas" and info.get("internal_api") in ("openblas", "mkl"):
            try:
                return ctypes.CDLL(info["filepath"]), info
            except OSError:
                continue
    return None


def _symbol(lib, info, name):
    """The cblas function `name` and the integer type of its sizes (ILP64 builds mangle
    their names, e.g. scipy_cblas_sgemm64_)."""
    for prefix in ("", "scipy_"):
        for suffix, int_type in (("64_", ctypes.c_int64), ("", None)):
            fn = getattr(lib, f"{prefix}{name}{suffix}", None)
            if fn is None:
                continue
            if int_type is None:  # unmangled: ask the library how wide its integers are
                int_type = ctypes.c_int64 if _is_ilp64(lib, info) else ctypes.c_int
            return fn, int_type
    return None


def _is_ilp64(lib, info) -> bool:
    if info.get("internal_api") == "openblas":
        for prefix in ("", "scipy_"):
            config = getattr(lib, f"{prefix}openblas_get_config", None)
            if config is not None:
                config.restype = ctypes.c_char_p
                return b"USE64BITINT" in config()
    return False


def _operand(a: np.ndarray, itemsize: int):
    """(transpose flag, leading dimension) for a 2-D operand BLAS reads as is, or None when
    it must be copied first."""
    s0, s1 = a.strides
    rows, cols = a.shape
    if s1 == itemsize and s0 % itemsize == 0 and s0 // itemsize >= max(cols, 1):
        return NO_TRANS, s0 // itemsize
    if s0 == itemsize and s1 % itemsize == 0 and s1 // itemsize >= max(rows, 1):
        return TRANS, s1 // itemsize
    return None


class _Gemm:
    def __init__(self, fn, int_type, scalar):
        self.fn, self.int, self.scalar = fn, int_type, scalar
        fn.restype = None

    def __call__(self, a, b, c, alpha: float, beta: float) -> None:
        itemsize = c.itemsize
        oa, ob = _operand(a, itemsize), _operand(b, itemsize)
        if oa is None:
            a, oa = np.ascontiguousarray(a), (NO_TRANS, a.shape[1])
        if ob is None:
            b, ob = np.ascontiguousarray(b), (NO_TRANS, b.shape[1])
        m, k = a.shape
        n = b.shape[1]
        i, s = self.int, self.scalar
        self.fn(ROW_MAJOR, oa[0], ob[0], i(m), i(n), i(k), s(alpha),
                ctypes.c_void_p(a.ctypes.data), i(oa[1]), ctypes.c_void_p(b.ctypes.data),
                i(ob[1]), s(beta), ctypes.c_void_p(c.ctypes.data), i(max(n, 1)))


@functools.lru_cache(maxsize=None)
def gemm(dtype) -> _Gemm | None:
    """GEMM for float32 or float64 C-contiguous outputs, checked once against np.matmul."""
    dtype = np.dtype(dtype)
    name = {"float32": ("cblas_sgemm", ctypes.c_float),
            "float64": ("cblas_dgemm", ctypes.c_double)}.get(dtype.name)
    found = _find_library() if name else None
    if found is None:
        return None
    sym = _symbol(*found, name[0])
    if sym is None:
        return None
    g = _Gemm(sym[0], sym[1], name[1])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 5)).astype(dtype)
    b = rng.standard_normal((3, 7)).astype(dtype)
    c = rng.standard_normal((5, 3)).astype(dtype)
    want = c - 0.5 * (a.T @ b.T)
    try:
        g(a.T, b.T, c, -0.5, 1.0)
    except Exception:  # noqa: BLE001 - any failure means: no direct BLAS here
        return None
    return g if np.allclose(c, want, rtol=1e-4, atol=1e-5) else None


def available() -> bool:
    return gemm(np.float32) is not None and gemm(np.float64) is not None


# OpenBLAS's worker threads spin on their cores for a long while after each threaded
# product. In a step whose other kernels run on graphc's own threads (convolution and
# pooling over chunks of the batch), a spinning BLAS thread takes a core from them: LeNet's
# step took 24.5 ms so, 15.7 ms with every product on one BLAS thread (conv and pool kernels
# 1.5-2x faster, the products themselves too). Such a step runs inside one_thread().
_serial_lock = threading.Lock()
_serial = {"depth": 0, "saved": 1}


@functools.lru_cache(maxsize=None)
def _thread_api():
    """(set, get) of OpenBLAS's thread count, or None (MKL, or no BLAS found)."""
    found = _find_library()
    if found is None or found[1].get("internal_api") != "openblas":
        return None
    lib = found[0]
    for name in ("openblas_{}_num_threads", "scipy_openblas_{}_num_threads64_",
                 "scipy_openblas_{}_num_threads", "openblas_{}_num_threads64_"):
        set_fn = getattr(lib, name.format("set"), None)
        get_fn = getattr(lib, name.format("get"), None)
        if set_fn is not None and get_fn is not None:
            set_fn.argtypes, set_fn.restype, get_fn.restype = [ctypes.c_int], None, ctypes.c_int
            return set_fn, get_fn
    return None


@contextlib.contextmanager
def one_thread():
    """The BLAS calls inside (from any thread) run on one BLAS thread; nested and concurrent
    uses restore the thread count once, at the last exit. Without OpenBLAS: nothing."""
    api = _thread_api()
    if api is None:
        yield
        return
    set_fn, get_fn = api
    with _serial_lock:
        if _serial["depth"] == 0:
            _serial["saved"] = get_fn()
            if _serial["saved"] > 1:
                set_fn(1)
        _serial["depth"] += 1
    try:
        yield
    finally:
        with _serial_lock:
            _serial["depth"] -= 1
            if _serial["depth"] == 0 and _serial["saved"] > 1:
                set_fn(_serial["saved"])
