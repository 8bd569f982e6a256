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
import os
import threading

import numpy as np

ROW_MAJOR, NO_TRANS, TRANS = 101, 111, 112


def _numpy_dirs() -> tuple:
    """Where NumPy's own BLAS lives: its package folder, or the folder its wheel vendors
    libraries into (numpy.libs on Linux, numpy/.dylibs on macOS)."""
    pkg = os.path.dirname(os.path.realpath(np.__file__))
    return pkg + os.sep, os.path.join(os.path.dirname(pkg), "numpy.libs") + os.sep


@functools.lru_cache(maxsize=None)
def _find_library():
    """(ctypes handle, threadpoolctl info) of the BLAS NumPy itself runs, or None.

    Other BLAS copies may be loaded beside it (SciPy's wheel vendors its own OpenBLAS); the
    one inside NumPy's folders is NumPy's. Failing that (a NumPy linked to a system BLAS),
    the first one found, which is also the one SciPy links in such an install."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    found = [info for info in threadpoolctl.threadpool_info()
             if info.get("user_api") == "blas"
             and info.get("internal_api") in ("openblas", "mkl")]
    dirs = _numpy_dirs()
    found.sort(key=lambda info: not os.path.realpath(info["filepath"]).startswith(dirs))
    for info in found:
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


class _Omatcopy:
    """B = A^T for float32 through the BLAS extension somatcopy (OpenBLAS, MKL)."""

    def __init__(self, fn, int_type):
        self.fn, self.int = fn, int_type
        fn.restype = None

    def __call__(self, a: np.ndarray, out: np.ndarray) -> None:
        rows, cols = a.shape
        i = self.int
        self.fn(ROW_MAJOR, TRANS, i(rows), i(cols), ctypes.c_float(1.0),
                ctypes.c_void_p(a.ctypes.data), i(max(a.strides[0] // a.itemsize, 1)),
                ctypes.c_void_p(out.ctypes.data), i(max(out.strides[0] // out.itemsize, 1)))


@functools.lru_cache(maxsize=None)
def _somatcopy() -> _Omatcopy | None:
    """The BLAS's float32 transposed copy, checked once, or None."""
    found = _find_library()
    sym = _symbol(*found, "cblas_somatcopy") if found is not None else None
    if sym is None:
        return None
    copy = _Omatcopy(*sym)
    a = np.arange(7 * 19, dtype=np.float32).reshape(19, 7)[2:13, 1:6]  # a strided window
    out = np.zeros((5, 11), np.float32)
    try:
        copy(a, out)
    except Exception:  # noqa: BLE001 - any failure means: NumPy's copy
        return None
    return copy if np.array_equal(out, a.T) else None


# np.copyto(out, a.T) walks one of the two arrays across its rows: 3.1 ms for a (2048, 512)
# float32 matrix on this project's 2-core machine, 80 us for (2048, 64). OpenBLAS's blocked
# somatcopy (SkylakeX kernels) takes 0.27 ms and 27 us, but a call costs 4-5 us, more than
# NumPy needs below about 16K elements; its float64 twin has no such kernel and is slower
# than NumPy, so float64 stays with NumPy.
TRANSPOSE_MIN_ELEMENTS = 1 << 14


def transpose_into(a: np.ndarray, out: np.ndarray) -> None:
    """out[...] = a.T for 2-D arrays; float32 ones with contiguous rows, of
    TRANSPOSE_MIN_ELEMENTS or more, by the BLAS's somatcopy where it has one."""
    if (a.ndim == 2 and a.dtype == out.dtype == np.float32 and out.shape == a.shape[::-1]
            and a.size >= TRANSPOSE_MIN_ELEMENTS
            and a.strides[1] == a.itemsize and out.strides[1] == out.itemsize
            and a.strides[0] % a.itemsize == 0 and out.strides[0] % out.itemsize == 0):
        copy = _somatcopy()
        if copy is not None:
            copy(a, out)
            return
    np.copyto(out, a.T)


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


# OpenBLAS picks its kernels for the CPU once, as it loads (DYNAMIC_ARCH builds, as NumPy's).
# A CPU it does not know gets older kernels: Zen 5 (family 0x1A) with OpenBLAS 0.3.31 is not
# in its table (OpenMathLib/OpenBLAS#6029, fixed in #6033), and machine images pin
# OPENBLAS_CORETYPE=Haswell against that (this project's 2-core Zen 5 VM does). The AVX2
# kernels run single-precision GEMM at half speed there: 0.21 against 0.40 TFLOP/s with the
# AVX-512 ones, an LSTM step's (64, 512) @ (512, 2048) in 0.81 against 0.56 ms.
# select_kernels() moves the library up to the AVX-512 kernels OpenBLAS's own feature-based
# fallback picks (Cooperlake with AVX512-BF16, else SkylakeX) on a CPU that reports every
# instruction set they use, checks their products against float64 ones and otherwise goes
# back; it never moves down. GRAPHC_BLAS_CORE=keep leaves the library as it loaded.
AVX512_CORES = ("SkylakeX", "Cooperlake", "SapphireRapids")
_AVX512_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})


def cpu_flags() -> frozenset:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo), or none."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def avx512_core(core: str, flags: frozenset) -> str | None:
    """The OpenBLAS core type an AVX-512 CPU should run instead of `core`, or None when
    `core` is already an AVX-512 one or the CPU lacks what those kernels use."""
    if core in AVX512_CORES or not _AVX512_FLAGS <= flags:
        return None
    return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"


def _core_api():
    """(corename(), dynamic_quit, dynamic_init) of NumPy's OpenBLAS, or None."""
    found = _find_library()
    if found is None or found[1].get("internal_api") != "openblas":
        return None
    lib = found[0]
    quit_fn = getattr(lib, "gotoblas_dynamic_quit", None)
    init_fn = getattr(lib, "gotoblas_dynamic_init", None)
    for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                 "openblas_get_corename"):
        name_fn = getattr(lib, name, None)
        if name_fn is not None:
            break
    if quit_fn is None or init_fn is None or name_fn is None:
        return None
    name_fn.restype = ctypes.c_char_p

    def corename() -> str:
        return (name_fn() or b"").decode(errors="replace").strip()
    return corename, quit_fn, init_fn


def kernel_core() -> str | None:
    """The kernels NumPy's OpenBLAS runs now ("Haswell", "SkylakeX", ...), or None."""
    api = _core_api()
    return api[0]() if api is not None else None


def _switch(api, core: str) -> None:
    corename, quit_fn, init_fn = api
    saved = os.environ.get("OPENBLAS_CORETYPE")
    os.environ["OPENBLAS_CORETYPE"] = core
    try:
        quit_fn()
        init_fn()
    finally:
        if saved is None:
            del os.environ["OPENBLAS_CORETYPE"]
        else:
            os.environ["OPENBLAS_CORETYPE"] = saved


def _products_agree() -> bool:
    rng = np.random.default_rng(0)
    for dtype, tol in ((np.float32, 1e-4), (np.float64, 1e-10)):
        a, b = rng.standard_normal((67, 45)).astype(dtype), rng.standard_normal((45, 83)).astype(dtype)
        want = a.astype(np.float64) @ b.astype(np.float64)
        if not np.allclose(a @ b, want, rtol=tol, atol=tol):
            return False
    return True


@functools.lru_cache(maxsize=None)
def select_kernels() -> tuple | None:
    """Once per process: switch NumPy's OpenBLAS to its AVX-512 kernels where it runs older
    ones on an AVX-512 CPU (see above); (core before, core after), or None when nothing
    changed. Call it while no other thread is inside a BLAS call (the CPU backend does, as
    it is imported)."""
    if os.environ.get("GRAPHC_BLAS_CORE", "").lower() in ("keep", "0", "off"):
        return None
    flags = cpu_flags()
    if not _AVX512_FLAGS <= flags:  # most machines: decided without looking for the BLAS
        return None
    api = _core_api()
    if api is None:
        return None
    before = api[0]()
    target = avx512_core(before, flags)
    if target is None:
        return None
    _switch(api, target)
    if api[0]() in AVX512_CORES and _products_agree():
        return before, api[0]()
    _switch(api, before)  # not taken, or wrong products: back to what it loaded with
    return None
