"""Gather-like ops and their helpers as Numba CUDA kernels (backend stage), with the
semantics of graphc/ops/indexing.py, nn.py and shape_ops.py:

- `gather` (torch.gather, broadcast=False: off the axis the index may be smaller than the
  input and reads its leading corner; numpy.take_along_axis, broadcast=True: off the axis
  input and index broadcast against each other): one thread per output element.
- `scatter_add`, gather's gradient: zero the output, then one thread per gradient element
  adds it at its gathered position with an atomic add (float32, float64), summing over the
  axes where the input was broadcast; positions torch's gather never read stay zero.
- `one_hot`: one thread per output element, a 1 where the label equals the column.
- `sum_to_like`: the sum over the leading and broadcast axes, through reduce.py's `reduce5`
  (float64 accumulation for floats, int64 for integers).
- `zeros_like`: a fill of the output's words (any dtype).

`count` needs no kernel: its value depends on bound shapes only, so the scheduler folds it
to a constant at bind time (schedule/bind.py `_fold_constants`; its result is 0-d), and
`zeros_like` too while its result has at most `fold_limit` (65536) elements.

The index operands are viewed, without copying, over the iteration space (the output, or
the gradient for scatter_add) with stride 0 where they broadcast; adjacent axes whose
strides nest merge, so any rank fits the kernels' six dimensions unless more than six
separate runs remain (then the op's reference runs, as for other dtypes).

Bad indices: fed indices are range-checked before a call runs (feeds.py `check_indices`),
but indices computed inside the graph (nll_loss's `where(label == ignore_index, 0, label)`)
are not. A kernel never reads or writes out of bounds: an index outside [0, n) (or a label
outside [0, num_classes)) gives NaN (0 for integer inputs) in `gather`, is skipped by
`scatter_add`, gives a row of zeros in `one_hot`, and sets the runtime's index error flag
(`error_flag(runtime)`: int64 [set, one bad value]), which `take_index_error(runtime)`
reads and clears after a step."""
from __future__ import annotations

import math
import weakref

import numpy as np
from numba import cuda

from . import _cuda, reduce
from ._cuda import FLOATS, INTS

RANK = 6
NAN = math.nan
# value dtypes gather covers (a copy: any of these); scatter_add adds floats only
VALUES = FLOATS + INTS + (np.dtype(bool),)
WORDS = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# --- kernels ---------------------------------------------------------------------------------
def _make_gather(fill):
    """out[c] = x[c with c[ax] = idx[c]] over 6-D views (x has nax entries on ax); an index
    outside [0, nax) writes `fill` and sets err."""
    def gather6(x, idx, out, ax, nax, err):
        n0, n1, n2, n3, n4, n5 = out.shape
        for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
            c5 = t % n5
            r = t // n5
            c4 = r % n4
            r //= n4
            c3 = r % n3
            r //= n3
            c2 = r % n2
            r //= n2
            c1 = r % n1
            c0 = r // n1
            i = idx[c0, c1, c2, c3, c4, c5]
            if i < 0 or i >= nax:
                out[c0, c1, c2, c3, c4, c5] = fill
                err[1] = i
                err[0] = 1
            elif ax == 0:
                out[c0, c1, c2, c3, c4, c5] = x[i, c1, c2, c3, c4, c5]
            elif ax == 1:
                out[c0, c1, c2, c3, c4, c5] = x[c0, i, c2, c3, c4, c5]
            elif ax == 2:
                out[c0, c1, c2, c3, c4, c5] = x[c0, c1, i, c3, c4, c5]
            elif ax == 3:
                out[c0, c1, c2, c3, c4, c5] = x[c0, c1, c2, i, c4, c5]
            elif ax == 4:
                out[c0, c1, c2, c3, c4, c5] = x[c0, c1, c2, c3, i, c5]
            else:
                out[c0, c1, c2, c3, c4, c5] = x[c0, c1, c2, c3, c4, i]
    return gather6


gather6_float = _make_gather(NAN)
gather6_int = _make_gather(0)


def scatter_add6_kernel(g, idx, out, s0, s1, s2, s3, s4, s5, sa, nax, err):
    """out[c . s + idx[c] * sa] += g[c] with atomics over the 6-D gradient view: out is the
    whole (flat, zeroed) output, s its element strides per gradient axis (0 on the gather
    axis and on the axes summed over), sa its stride on the gather axis. An index outside
    [0, nax) is skipped and sets err."""
    n0, n1, n2, n3, n4, n5 = g.shape
    for t in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        c5 = t % n5
        r = t // n5
        c4 = r % n4
        r //= n4
        c3 = r % n3
        r //= n3
        c2 = r % n2
        r //= n2
        c1 = r % n1
        c0 = r // n1
        i = idx[c0, c1, c2, c3, c4, c5]
        if i < 0 or i >= nax:
            err[1] = i
            err[0] = 1
        else:
            d = c0 * s0 + c1 * s1 + c2 * s2 + c3 * s3 + c4 * s4 + c5 * s5 + i * sa
            cuda.atomic.add(out, d, g[c0, c1, c2, c3, c4, c5])


def one_hot6_kernel(labels, out, classes, err):
    """out[k * classes + j] = (labels[k] == j) over the 6-D label view (k its C-order
    position); a label outside [0, classes) gives a row of zeros and sets err."""
    n0, n1, n2, n3, n4, n5 = labels.shape
    for t in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        k = t // classes
        j = t - k * classes
        c5 = k % n5
        r = k // n5
        c4 = r % n4
        r //= n4
        c3 = r % n3
        r //= n3
        c2 = r % n2
        r //= n2
        c1 = r % n1
        c0 = r // n1
        lab = labels[c0, c1, c2, c3, c4, c5]
        if lab == j:
            out[t] = 1
        else:
            out[t] = 0
        if j == 0 and (lab < 0 or lab >= classes):
            err[1] = lab
            err[0] = 1


def zero_words_kernel(out):
    """out[:] = 0 over a flat array of unsigned words (any dtype's bytes)."""
    for t in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[t] = 0


_D6 = ", ".join([":"] * RANK)


def ptx_sources() -> dict:
    """Kernel name -> (Python function, example signatures) for PTX compilation."""
    it = ("int64", "int32")
    ints = [("int32", "int32"), ("int64", "int64"), ("boolean", "boolean")]
    err = "int64[::1]"
    return {
        "gather6[float]": (gather6_float, [
            f"void({t}[{_D6}], {i}[{_D6}], {t}[{_D6[:-1]}::1], int64, int64, {err})"
            for t in ("float32", "float64") for i in it]),
        "gather6[int]": (gather6_int, [
            f"void({t}[{_D6}], {i}[{_D6}], {o}[{_D6[:-1]}::1], int64, int64, {err})"
            for t, o in ints for i in it]),
        "scatter_add6": (scatter_add6_kernel, [
            f"void({t}[{_D6}], {i}[{_D6}], {t}[::1]{', int64' * 8}, {err})"
            for t in ("float32", "float64") for i in it]),
        "one_hot6": (one_hot6_kernel, [
            f"void({i}[{_D6}], {o}[::1], int64, {err})"
            for i in it for o in ("int64", "float32", "float64", "int32", "boolean")]),
        "zero_words": (zero_words_kernel, [f"void({w}[::1])"
                                           for w in ("uint8", "uint16", "uint32", "uint64")]),
        # sum_to_like keeps the gradient's integer dtype: reduce5 into int32 (int64 sums)
        "sum_to_like[int32]": (reduce._FUNCS["reduce5", "sum", "int32"], [
            "void(int32[:, :, :, :, :], int32[:, :, ::1], int64)"]),
    }


# --- the index error flag --------------------------------------------------------------------
_FLAGS: dict = {}  # runtime id (or array module name) -> int64 [set, one bad value]


def error_flag(runtime=None, like=None):
    """The index error flag of `runtime` (or, without one, of the array module of `like`):
    an int64 array [0 or 1, the last bad index seen], zeroed when made. The kernels set it
    on a bad index; it is made once (at bind time through `prepare`), so no step allocates."""
    owner = id(runtime) if runtime is not None else _cuda.xp_of(like).__name__
    flag = _FLAGS.get(owner)
    if flag is None:
        if runtime is not None:
            flag = runtime.empty((2,), np.int64, what="the index error flag")
            runtime.copy_from_host(np.zeros(2, np.int64), flag)
            weakref.finalize(runtime, _FLAGS.pop, owner, None)
        else:
            flag = _cuda.xp_of(like).zeros(2, np.int64)
        _FLAGS[owner] = flag
    return flag


def take_index_error(runtime=None, like=None) -> int | None:
    """A bad index a kernel met since the last call (None if none), clearing the flag.
    Reads the flag to the host: call it after a step (or its graph replay), never inside a
    capture."""
    flag = error_flag(runtime, like)
    host = np.asarray(runtime.to_host(flag) if runtime is not None else
                      (flag.get() if hasattr(flag, "get") else flag)).copy()
    if not host[0]:
        return None
    zeros = np.zeros(2, np.int64)
    if runtime is not None:
        runtime.copy_from_host(zeros, flag)
    else:
        flag[...] = _cuda.xp_of(flag).asarray(zeros)
    return int(host[1])


def _prepare(*_, out, runtime, **__) -> None:
    """Bind time: the runtime's index error flag exists before any step is captured."""
    error_flag(runtime, out)


# --- views -----------------------------------------------------------------------------------
def _elems(a) -> tuple:
    return tuple(int(s) // a.itemsize for s in a.strides)


def _c_strides(shape: tuple) -> tuple:
    out, step = [], 1
    for n in reversed(shape):
        out.append(step)
        step *= int(n)
    return tuple(reversed(out))


def _merge(shape: tuple, strides: list, keep: int | None):
    """(shape, [element strides per array], position of `keep`) over at most RANK axes
    (padded with leading unit axes): unit axes dropped, adjacent axes merged where every
    array's strides nest, `keep` (the gather axis) left alone; None if more than RANK
    remain."""
    dims: list = []  # [size, strides, is keep]
    for d, n in enumerate(shape):
        sts = [int(s[d]) for s in strides]
        if d == keep:
            dims.append([int(n), sts, True])
        elif n == 1:
            continue
        elif dims and not dims[-1][2] and all(o == i * n for o, i in zip(dims[-1][1], sts)):
            dims[-1][0] *= int(n)
            dims[-1][1] = sts
        else:
            dims.append([int(n), sts, False])
    if len(dims) > RANK:
        return None
    dims = [[1, [0] * len(strides), False]] * (RANK - len(dims)) + dims
    pos = next((k for k, d in enumerate(dims) if d[2]), None)
    return (tuple(d[0] for d in dims),
            [tuple(d[1][j] for d in dims) for j in range(len(strides))], pos)


def _view(a, shape: tuple, elem_strides: tuple):
    return _cuda.restride(a, shape, tuple(s * a.itemsize for s in elem_strides))


def _zero(out, stream, launch) -> None:
    """out[...] = 0 through a view of its words (any dtype)."""
    if out.size == 0:
        return
    flat = _cuda.writable_view(out, (out.size,))
    word = WORDS.get(out.itemsize)
    words = flat.view(word) if word is not None else flat.view(np.uint8)
    blocks, threads = _cuda.grid(launch, words.shape[0])
    _cuda.run(_cuda.jit(zero_words_kernel), blocks, threads, stream, words)


def _is_int_index(index) -> bool:
    return index.dtype in INTS


# --- launchers -------------------------------------------------------------------------------
def gather(x, index, *, out, axis: int, broadcast: bool, stream=None, launch=None,
           runtime=None) -> None:
    """x gathered along `axis` at `index` into `out` (torch.gather / take_along_axis)."""
    axis = int(axis)
    fit = None
    if x.dtype in VALUES and _is_int_index(index) and x.dtype == out.dtype:
        shape = tuple(int(d) for d in out.shape)
        if 0 in shape:
            return
        xs, js = _elems(x), _elems(index)
        # off the axis: stride 0 where an operand of size 1 broadcasts (take_along_axis);
        # torch's gather reads the input's leading corner, its strides as they are
        x_st = tuple(0 if d != axis and x.shape[d] == 1 and shape[d] != 1 else xs[d]
                     for d in range(len(shape)))
        i_st = tuple(0 if index.shape[d] == 1 and shape[d] != 1 else js[d]
                     for d in range(len(shape)))
        fit = _merge(shape, [x_st, i_st, _c_strides(shape)], axis)
    if fit is None:
        _cuda.reference_into("gather", x, index, out=out, axis=axis, broadcast=broadcast)
        return
    shape6, (x6, i6, _), ax = fit
    nax = int(x.shape[axis])
    xshape = tuple(nax if k == ax else n for k, n in enumerate(shape6))
    fn = gather6_float if x.dtype in FLOATS else gather6_int
    blocks, threads = _cuda.grid(launch, out.size)
    _cuda.run(_cuda.jit(fn), blocks, threads, stream, _view(x, xshape, x6),
              _view(index, shape6, i6), _cuda.writable_view(out, shape6), ax, nax,
              error_flag(runtime, out))


def scatter_add(g, index, *, out, axis: int, broadcast: bool, stream=None, launch=None,
                runtime=None) -> None:
    """gather's gradient: zeros shaped like the input (`out`) with `g` added at the gathered
    positions (repeated indices accumulate, atomics in any order), summed over the axes
    where the input was broadcast."""
    axis = int(axis)
    fit = None
    if out.dtype in FLOATS and g.dtype == out.dtype and _is_int_index(index):
        it = tuple(int(d) for d in g.shape)
        shape = tuple(int(d) for d in out.shape)
        os_ = _c_strides(shape)
        js = _elems(index)
        i_st = tuple(0 if index.shape[d] == 1 and it[d] != 1 else js[d]
                     for d in range(len(it)))
        # the gather axis's coordinate comes from the index; axes where the input had size
        # 1 and the gradient more are summed over (stride 0)
        o_st = tuple(0 if d == axis or (shape[d] == 1 and it[d] != 1) else os_[d]
                     for d in range(len(it)))
        fit = _merge(it, [_elems(g), i_st, o_st], axis) if 0 not in it else ()
    if fit is None:
        _cuda.reference_into("scatter_add", g, index, tuple(out.shape), out=out, axis=axis,
                             broadcast=broadcast)
        return
    _zero(out, stream, launch)
    if not fit:  # an empty gradient: zeros
        return
    shape6, (g6, i6, o6), _ = fit
    nax = int(out.shape[axis])
    sa = _c_strides(tuple(out.shape))[axis]
    blocks, threads = _cuda.grid(launch, g.size)
    _cuda.run(_cuda.jit(scatter_add6_kernel), blocks, threads, stream, _view(g, shape6, g6),
              _view(index, shape6, i6), _cuda.writable_view(out, (out.size,)), *o6, sa, nax,
              error_flag(runtime, out))


def one_hot(labels, *, out, num_classes: int, dtype, stream=None, launch=None,
            runtime=None) -> None:
    """One-hot rows of `num_classes` entries (out's dtype) for integer `labels`."""
    fit = None
    if _is_int_index(labels) and out.dtype in VALUES:
        if out.size == 0:
            return
        fit = _merge(tuple(labels.shape), [_elems(labels)], None)
    if fit is None:
        _cuda.reference_into("one_hot", labels, out=out, num_classes=num_classes, dtype=dtype)
        return
    shape6, (l6,), _ = fit
    blocks, threads = _cuda.grid(launch, out.size)
    _cuda.run(_cuda.jit(one_hot6_kernel), blocks, threads, stream, _view(labels, shape6, l6),
              _cuda.writable_view(out, (out.size,)), int(num_classes),
              error_flag(runtime, out))


def sum_to_like(g, *, out, stream=None, launch=None) -> None:
    """g summed over its leading axes and those where `out` (like's shape) has size 1."""
    lead = g.ndim - out.ndim
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(out.shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    if g.dtype != out.dtype or g.dtype not in FLOATS + INTS:
        _cuda.reference_into("sum_to_like", g, tuple(out.shape), out=out)
        return
    if g.size == 0:
        _zero(out, stream, launch)
        return
    reduce.KERNELS["sum"](g, out=out, axes=axes, stream=stream, launch=launch)


def zeros_like(*, out, dtype, stream=None, launch=None) -> None:
    """Zeros of out's shape and dtype (zeros_like reads only its input's shape)."""
    _zero(out, stream, launch)


gather.prepare = _prepare
scatter_add.prepare = _prepare
one_hot.prepare = _prepare

KERNELS = {"gather": gather, "scatter_add": scatter_add, "one_hot": one_hot,
           "sum_to_like": sum_to_like, "zeros_like": zeros_like}
