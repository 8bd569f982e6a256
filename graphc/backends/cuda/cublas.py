"""cuBLAS GEMMs that can be captured into a CUDA graph (CUDA backend runtime).

CuPy refuses cuBLAS calls while its stream is capturing (its own handle would allocate a
workspace inside the capture). cuBLAS itself supports capture when the handle is bound to
the capturing stream and given a workspace allocated beforehand: `CapturableBlas` is such a
handle, driven through CuPy's low-level cuBLAS bindings, with `cublasSetWorkspace_v2` (which
those bindings do not wrap) called through ctypes on the library CuPy loaded.

A row-major product C = A @ B is the column-major product C^T = B^T @ A^T, so one GEMM
reads every operand in place: a C-contiguous operand is its own transpose to cuBLAS, a
transposed view (F-contiguous) is passed with the transpose flag. `plan_gemm` works out the
flags, leading dimensions and batch strides from shapes and strides alone; `emulate` runs
exactly that call in NumPy, which is what the simulator's runtime does, so every simulated
GEMM proves the arguments the device receives."""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

OP_N, OP_T = 0, 1  # cublasOperation_t
_DEFAULT_MATH, _TF32_MATH = 0, 3  # cublasMath_t
_POINTER_MODE_HOST = 0
WORKSPACE_BYTES = 32 << 20  # cuBLAS asks for up to 32 MiB on Hopper


@dataclass(frozen=True)
class GemmCall:
    """One (strided batched) column-major GEMM: C^T = op(B^T) @ op(A^T), all in elements.
    `a` and `b` name the row-major operands (A @ B); the call passes b first."""

    trans_b: int
    trans_a: int
    m: int  # rows of the column-major result (= columns n of C)
    n: int  # columns of the column-major result (= rows m of C)
    k: int
    ldb: int
    lda: int
    ldc: int
    batch: int = 1
    stride_b: int = 0
    stride_a: int = 0
    stride_c: int = 0


def _operand(rows: int, cols: int, s0: int, s1: int):
    """(op, ld) for a row-major rows x cols matrix with element strides (s0, s1), read by
    cuBLAS in place as the transpose it needs; None if it must be copied first."""
    if cols == 1:
        s1 = 1
    if rows == 1:
        s0 = max(cols, 1)
    if s1 == 1 and s0 >= max(cols, 1):
        return OP_N, s0
    if s0 == 1 and s1 >= max(rows, 1):
        return OP_T, s1
    return None


def _batch_stride(shape, strides, batch_shape):
    """The one element stride that walks the operand's batch dimensions in the row-major
    order of `batch_shape` (0 where it is broadcast), or None if they do not collapse."""
    lead = len(shape) - 2
    pad = len(batch_shape) - lead
    dims = [(size, 0 if j < pad or shape[j - pad] == 1 else strides[j - pad])
            for j, size in enumerate(batch_shape) if size != 1]
    if not dims:
        return 0
    expect = inner = dims[-1][1]
    for size, stride in reversed(dims):
        if stride != expect:
            return None
        expect = stride * size
    return inner if inner >= 0 else None


def plan_gemm(a_shape, a_strides, b_shape, b_strides, itemsize: int) -> GemmCall | None:
    """The cuBLAS call computing the C-contiguous product of A (..., m, k) and B (..., k, n)
    (batch dimensions broadcast), strides in bytes; None if an operand must be copied."""
    if min(list(a_strides[-2:]) + list(b_strides[-2:]) + [0]) < 0:
        return None
    a_el = [s // itemsize for s in a_strides]
    b_el = [s // itemsize for s in b_strides]
    if any(s * itemsize != t for s, t in zip(a_el + b_el, list(a_strides) + list(b_strides))):
        return None
    m, k = a_shape[-2:]
    n = b_shape[-1]
    oa = _operand(m, k, a_el[-2], a_el[-1])
    ob = _operand(k, n, b_el[-2], b_el[-1])
    if oa is None or ob is None:
        return None
    batch_shape = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(b_shape[:-2]))
    batch = int(np.prod(batch_shape, dtype=np.int64))
    sa = _batch_stride(a_shape, a_el, batch_shape)
    sb = _batch_stride(b_shape, b_el, batch_shape)
    if sa is None or sb is None:
        return None
    return GemmCall(trans_b=ob[0], trans_a=oa[0], m=n, n=m, k=k, ldb=ob[1], lda=oa[1],
                    ldc=max(n, 1), batch=batch, stride_b=sb, stride_a=sa, stride_c=m * n)


def gemm_call(a, b, out) -> GemmCall | None:
    """The cuBLAS call computing out = a @ b in place, or None where cuBLAS cannot: a dtype
    other than float32/float64 (or mixed), a strided output, or an operand to be copied."""
    if out.dtype.name not in ("float32", "float64") or a.dtype != out.dtype or \
            b.dtype != out.dtype or not out.flags.c_contiguous:
        return None
    return plan_gemm(a.shape, a.strides, b.shape, b.strides, out.itemsize)


def _stored(flat: np.ndarray, offset: int, rows: int, cols: int, ld: int) -> np.ndarray:
    """The column-major rows x cols matrix with leading dimension `ld` at element `offset`
    of `flat`, as cuBLAS reads it."""
    item = flat.itemsize
    return np.lib.stride_tricks.as_strided(flat[offset:], shape=(rows, cols),
                                           strides=(item, ld * item), writeable=False)


def _operand_matrix(flat, offset, rows, cols, ld, op) -> np.ndarray:
    """op(X) of shape rows x cols, X stored column-major (cols x rows when op is T)."""
    if op == OP_N:
        return _stored(flat, offset, rows, cols, ld)
    return _stored(flat, offset, cols, rows, ld).T


def _flat(array: np.ndarray) -> np.ndarray:
    """The array's memory from array[0, ..., 0] (its lowest address: plan_gemm accepts no
    negative stride) to its last element, as a 1-D element array."""
    if array.size == 0:
        return array.reshape(-1)
    high = sum(s * (d - 1) for s, d in zip(array.strides, array.shape))
    start = array[(slice(0, 1),) * array.ndim]
    return np.lib.stride_tricks.as_strided(start, shape=(high // array.itemsize + 1,),
                                           strides=(array.itemsize,), writeable=False)


def emulate(call: GemmCall, a: np.ndarray, b: np.ndarray, out: np.ndarray, alpha: float,
            beta: float) -> None:
    """Run `call` in NumPy with cuBLAS's column-major semantics on the operands' own
    memory: out = alpha * a @ b + beta * out, as the device would compute it."""
    fa, fb, fc = _flat(a), _flat(b), out.reshape(-1)
    al, be = np.asarray(alpha, out.dtype), np.asarray(beta, out.dtype)
    for i in range(call.batch):
        # column-major: C^T (m x n, ld ldc) = op(B^T) (m x k) @ op(A^T) (k x n)
        bt = _operand_matrix(fb, i * call.stride_b, call.m, call.k, call.ldb, call.trans_b)
        at = _operand_matrix(fa, i * call.stride_a, call.k, call.n, call.lda, call.trans_a)
        ct = np.lib.stride_tricks.as_strided(fc[i * call.stride_c:], shape=(call.m, call.n),
                                             strides=(out.itemsize, call.ldc * out.itemsize))
        product = (bt @ at).astype(out.dtype, copy=False)
        ct[...] = al * product if beta == 0 else al * product + be * ct


def _set_workspace_function():
    """cublasSetWorkspace_v2 from the libcublas CuPy loaded (found in the process's maps),
    or None when it cannot be found."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libcublas.so" in line}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            fn = ctypes.CDLL(path).cublasSetWorkspace_v2
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        return fn
    return None


class CapturableBlas:
    """A cuBLAS handle of our own on `stream`, with a workspace allocated before any
    capture; `capturable` says whether the workspace could be set (otherwise GEMMs still
    run, but a step containing one cannot be captured)."""

    def __init__(self, cupy, stream, allow_tf32: bool = False):
        from cupy_backends.cuda.libs import cublas
        self.cupy, self.lib = cupy, cublas
        self.handle = cublas.create()
        cublas.setStream(self.handle, stream.ptr)
        cublas.setPointerMode(self.handle, _POINTER_MODE_HOST)
        cublas.setMathMode(self.handle, _TF32_MATH if allow_tf32 else _DEFAULT_MATH)
        self.workspace = cupy.empty((WORKSPACE_BYTES,), np.uint8)
        set_workspace = _set_workspace_function()
        self.capturable = set_workspace is not None and set_workspace(
            self.handle, self.workspace.data.ptr, WORKSPACE_BYTES) == 0

    def gemm(self, a, b, out, alpha: float = 1.0, beta: float = 0.0) -> bool:
        """out = alpha * a @ b + beta * out through cuBLAS; False (nothing done) when the
        dtypes or layouts need CuPy's general matmul instead."""
        call = gemm_call(a, b, out)
        if call is None:
            return False
        lib, double = self.lib, out.dtype.name == "float64"
        # host pointer mode: cuBLAS reads alpha and beta before the call returns (a
        # capture records their values), so arrays alive for the call suffice
        scalars = np.array([alpha, beta], out.dtype)
        al, be = scalars.ctypes.data, scalars.ctypes.data + out.itemsize
        if call.batch == 1:
            fn = lib.dgemm if double else lib.sgemm
            fn(self.handle, call.trans_b, call.trans_a, call.m, call.n, call.k, al,
               b.data.ptr, call.ldb, a.data.ptr, call.lda, be, out.data.ptr, call.ldc)
        else:
            fn = lib.dgemmStridedBatched if double else lib.sgemmStridedBatched
            fn(self.handle, call.trans_b, call.trans_a, call.m, call.n, call.k, al,
               b.data.ptr, call.ldb, call.stride_b, a.data.ptr, call.lda, call.stride_a, be,
               out.data.ptr, call.ldc, call.stride_c, call.batch)
        return True
