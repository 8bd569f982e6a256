"""Fused kernels printed as Numba loops (CPU backend): one pass over the iteration space,
every input read once, reductions accumulated in float64, each op printed from its
registry scalar form (OpDef.scalar). Used for groups of cheap arithmetic (OpDef.cost below
COST_TRANSCENDENTAL); groups with transcendental functions run as tiled NumPy instead
(NumPy's SIMD exp/tanh are 10-80x faster per element than Numba's scalar libm calls on the
machines we measured).

Sources are cached on disk as graphc.backends.kernel_cache describes (user-only directory,
keyed by the source hash, verified before use, rebuilt once when damaged)."""
from __future__ import annotations

import os

import numpy as np

from ...ops.registry import COST_TRANSCENDENTAL
from ...schedule.expr import FusedExpr
# the cache's names stay importable from here, where they used to live
from ..kernel_cache import KernelCacheWarning, _bypassed, cache_dir  # noqa: F401
from ..kernel_cache import _entry, _load, _purge, _rebuild, _remove_entry  # noqa: F401
from ..scalar import constant_lines, scalar_code  # noqa: F401 - scalar_code: re-exported
from ..scalar import index_code as _index
from ..scalar import varying_dims as _varying_dims


def available() -> bool:
    if os.environ.get("GRAPHC_NUMBA", "1") == "0":
        return False
    try:
        import numba  # noqa: F401
        return True
    except ImportError:
        return False


# Below this many elements a NumPy ufunc chain costs a few microseconds, less than the
# 0.1-0.2 s Numba takes to compile one more kernel on a cold cache.
MIN_ELEMENTS = 1 << 14


def suits(expr: FusedExpr) -> bool:
    """Numba pays for big groups of cheap arithmetic only (see the module docstring)."""
    size = int(np.prod(expr.shape, dtype=np.int64))
    return size >= MIN_ELEMENTS and all(prints(i) for i in expr.instrs) and available()


def prints(ins) -> bool:
    """Whether an instruction is cheap arithmetic with a scalar form (see the docstring)."""
    op = ins.opdef
    return (op is not None and op.cost < COST_TRANSCENDENTAL
            and op.scalar_form(ins.attrs) is not None)


def print_numba(expr: FusedExpr, shared=None, parallel: bool = False,
                windows=None) -> tuple[str, dict]:
    """Source of `kernel(*inputs, *outputs, *accumulators, *extents)` (accumulators: float64,
    the reductions' keepdims shapes; extents: the iteration shape) and the constants it
    names. Extents are arguments, not literals, so one compiled kernel serves every shape
    with the same broadcasting pattern (a new batch size compiles nothing).

    `shared` maps an output to the input whose buffer it overwrites (in place): the kernel
    then stores through the input and takes no separate output. Fewer distinct arrays means
    fewer runtime alias checks, and LLVM gives up vectorizing a loop that needs more than 8
    (an Adam update over 7 arrays ran scalar, 3.5x slower).

    `windows` maps an output to its window in a C-contiguous parent array (the memory plan's
    strided piece of a scatter_slices): one entry per parent dimension, "i" (a fixed index)
    or the iteration axis it follows, the last the innermost. The kernel then takes the
    parent and, after the extents, each window's offsets w{k}_{d} (and a row of scratch
    q{k} when several outputs have windows). A strided view itself would be an 'A' array,
    whose loop LLVM leaves scalar (4x slower); row slices of the parent are contiguous.
    Stores to several rows of one parent in one loop stay scalar too (LLVM cannot tell the
    rows apart), so then each output's row goes to scratch, copied into place after it."""
    shared = shared or {}
    windows = windows or {}
    shape = expr.shape
    loop_vars = [f"j{d}" for d in range(len(shape))]
    consts: dict = {}
    n_in, n_out, n_red = len(expr.inputs), len(expr.outputs), len(expr.reductions)
    params = [f"i{k}" for k in range(n_in)] + [f"o{k}" for k in range(n_out)
                                               if k not in shared] + \
        [f"a{k}" for k in range(n_red)] + [f"n{d}" for d in range(len(shape))]
    scratch = len(windows) > 1
    for k, dims in sorted(windows.items()):
        params += [f"w{k}_{p}" for p in range(len(dims))] + ([f"q{k}"] if scratch else [])
    body = []
    # Without reductions, each input is loaded in the outermost loop where its index is
    # fixed (a learning rate before the loops): left in the inner loop, such a load may
    # alias the stores and LLVM keeps the loop scalar (measured: 0.69 -> 0.53 ms for an SGD
    # update of 1M floats). With a reduction the hoisted form measured 5x slower, so there
    # every load stays innermost.
    loads: dict[int, list] = {}
    innermost = len(shape) - 1
    for k, (_, in_shape) in enumerate(expr.inputs):
        index = _index(in_shape, shape, loop_vars)
        depth = innermost if expr.reductions else max(_varying_dims(in_shape, shape),
                                                      default=-1)
        loads.setdefault(depth, []).append(f"x{k} = i{k}{index}")
    for j, ins in enumerate(expr.instrs):
        args = [f"x{i}" if kind == "in" else f"t{i}" for kind, i in ins.args]
        body.append(f"t{j} = {scalar_code(ins, j, args, consts)}")
    idx = "[" + ", ".join(loop_vars) + "]" if shape else "[()]"
    pre: dict[int, list] = {}
    post: dict[int, list] = {}
    inner = len(shape) - 1
    for k, (_, j) in enumerate(expr.outputs):
        if k in windows:
            dims = windows[k]
            at = [f"w{k}_{p}" if d == "i" else f"j{d} + w{k}_{p}" for p, d in enumerate(dims)]
            at[-1] = f"w{k}_{len(dims) - 1}:w{k}_{len(dims) - 1} + n{inner}"
            row = f"ro{k} = o{k}[{', '.join(at)}]"
            if scratch:
                body.append(f"q{k}[j{inner}] = t{j}")
                post.setdefault(inner, []).extend(
                    [row, f"for jq in range(n{inner}):", f"    ro{k}[jq] = q{k}[jq]"])
            else:
                pre.setdefault(inner, []).append(row)
                body.append(f"ro{k}[j{inner}] = t{j}")
            continue
        body.append(f"{f'i{shared[k]}' if k in shared else f'o{k}'}{idx} = t{j}")
    # A reduction over the innermost axes sums into a local float64 (a register) across
    # that run of loops and adds the sum to its accumulator once after them: summed in
    # memory, every element's add waits for the previous store (3.9 -> 0.9 ms for a ReLU
    # backward with its bias gradient over 1.2M elements).
    for k, (_, j, axes, _, _) in enumerate(expr.reductions):
        r_idx = [("0" if d in axes else v) for d, v in enumerate(loop_vars)]
        target = f"a{k}[{', '.join(r_idx)}]" if r_idx else f"a{k}[()]"
        start = len(shape)
        while start > 0 and (start - 1) in axes:
            start -= 1
        if start == len(shape):
            body.append(f"{target} += t{j}")
            continue
        pre.setdefault(start, []).append(f"s{k} = 0.0")
        body.append(f"s{k} += t{j}")
        post.setdefault(start, []).append(f"{target} += s{k}")
    # constants are module globals, which Numba freezes into the machine code (and the
    # source hash, hence the cache key, covers their values)
    lines = ["import math", "import numpy as np", "import numba", ""] + constant_lines(consts)
    flags = ", parallel=True" if parallel else ""
    lines += ["", f"@numba.njit(cache=True, nogil=True, error_model='numpy'{flags})",
              f"def kernel({', '.join(params)}):"]
    lines += ["    " + b for b in loads.get(-1, [])]

    def nest(d: int, indent: str) -> None:
        if d == len(shape):
            lines.extend(indent + b for b in body)
            return
        lines.extend(indent + b for b in pre.get(d, []))
        loop = "numba.prange" if parallel and d == 0 else "range"
        lines.append(f"{indent}for {loop_vars[d]} in {loop}(n{d}):")
        lines.extend(indent + "    " + b for b in loads.get(d, []))
        nest(d + 1, indent + "    ")
        lines.extend(indent + b for b in post.get(d, []))

    nest(0, "    ")
    return "\n".join(lines) + "\n", consts


# A state update (several outputs, every one written over its input: an optimizer's
# parameter and moments) over at least this many elements runs on threads(): on an idle
# machine as Numba's prange twin of the kernel, on a busy one (kernels.machine_busy) as
# chunks of about CHUNK_ELEMENTS rows' worth that the calling thread and the helpers take in
# turn (kernels.run_chunks). Every other kernel stays serial: between two GEMMs the BLAS's
# threads are still spinning on the cores, and a parallel kernel there, on either path,
# slowed mlp-m (41 -> 46-49 ms on 2 cores); a smaller update is not worth a hand-off.
PARALLEL_MIN_ELEMENTS = 1 << 19
CHUNK_ELEMENTS = 1 << 18


def _chunking(expr: FusedExpr, shared: dict, n_kept: int):
    """(rows per chunk, chunk count, argument positions cut along the first axis) when the
    kernel runs on several threads, else None. The positions: the inputs that vary along
    the first iteration axis (broadcast ones are passed whole) and the outputs."""
    from .kernels import threads
    shape = expr.shape
    if expr.reductions or not shape or shape[0] < 2 or threads() < 2:
        return None
    if len(expr.outputs) < 2 or len(shared) != len(expr.outputs):
        return None
    size = int(np.prod(shape, dtype=np.int64))
    if size < PARALLEL_MIN_ELEMENTS:
        return None
    rows = max(1, CHUNK_ELEMENTS // max(size // shape[0], 1))
    n_chunks = -(-shape[0] // rows)
    if n_chunks < 2:
        return None
    n_in = len(expr.inputs)
    cut = [k for k, (_, in_shape) in enumerate(expr.inputs)
           if len(in_shape) == len(shape) and 0 in _varying_dims(in_shape, shape)]
    cut += [n_in + k for k in range(n_kept)]
    return rows, n_chunks, cut


def compile_numba(expr: FusedExpr, shared=None, windows=None):
    """A callable kernel(*inputs, *outputs, *reductions) running one Numba loop nest;
    `shared`: see print_numba (the caller promises those outputs are those inputs).
    `windows`: {output: (dims, offsets)} (see print_numba and window()): the caller passes
    those outputs' parent arrays. Big state updates run on several threads (see
    PARALLEL_MIN_ELEMENTS)."""
    shared = shared or {}
    windows = windows or {}
    if not expr.outputs and not expr.reductions:
        def nothing(*arrays):  # every value recomputed by its readers: nothing to write
            return None
        nothing.source = ""
        return nothing
    source, _ = print_numba(expr, shared, windows={k: d for k, (d, _) in windows.items()})
    jit = _load(source)
    shape = expr.shape
    extra: list = []  # after the extents: each window's offsets (and its scratch row)
    for k, (_, offsets) in sorted(windows.items()):
        extra += list(offsets)
        if len(windows) > 1:
            extra.append(np.empty(shape[-1], expr.instrs[expr.outputs[k][1]].dtype))
    reds = []
    for _, _, axes, kind, _ in expr.reductions:
        kd = tuple(1 if a in axes else d for a, d in enumerate(shape))
        count = int(np.prod([shape[a] for a in axes], dtype=np.int64)) if kind == "mean" else 1
        reds.append((np.zeros(kd, np.float64), kd, count))
    n_in, n_out = len(expr.inputs), len(expr.outputs)
    kept = [k for k in range(n_out) if k not in shared]

    loaded = False  # whether the dispatcher has run once (and so loaded from disk or built)
    chunking = None if windows else _chunking(expr, shared, len(kept))
    if chunking is not None:
        from .kernels import machine_busy, numba_threads, run_chunks
        rows, n_chunks, cut = chunking
        par_source, _ = print_numba(expr, shared, parallel=True)
        par_jit = None  # the prange twin, compiled (or loaded) at the first call
        extent = n_in + len(kept)  # the position of the first axis's extent
        n0 = shape[0]

        def split(args):
            # Idle cores: Numba's parallel loop, whose thread pool starts in a few us. All
            # cores taken: its barrier would wait for threads the OS has not scheduled (as
            # torch's does), so the chunks go to run_chunks, which waits for no one.
            if par_jit is not None and not machine_busy():
                numba_threads()
                par_jit(*args)
                return

            def chunk(c):
                lo = c * rows
                hi = min(lo + rows, n0)
                part = list(args)
                for k in cut:
                    part[k] = args[k][lo:hi]
                part[extent] = hi - lo
                jit(*part)
            run_chunks(chunk, n_chunks)

    def load_parallel():
        """The prange twin for the signature the first call typed (not run: that call has
        written its outputs already); without it, the chunks take run_chunks."""
        nonlocal par_jit
        try:
            twin = _load(par_source)
            twin.compile(jit.signatures[-1])
            par_jit = twin
        except Exception as e:  # noqa: BLE001 - the serial kernel and run_chunks still work
            import warnings
            warnings.warn(f"graphc: the parallel twin of a fused kernel failed to build "
                          f"({type(e).__name__}: {e}); it runs on graphc's own threads",
                          KernelCacheWarning, stacklevel=3)

    def kernel(*arrays):
        nonlocal jit, loaded
        accs = []
        for acc, _, _ in reds:
            acc[...] = 0.0
            accs.append(acc)
        args = (*arrays[:n_in], *[arrays[n_in + k] for k in kept], *accs, *shape, *extra)
        if loaded:
            if chunking is None:
                jit(*args)
            else:
                split(args)
        else:
            # the first call loads Numba's cached machine code: a damaged index or data file
            # fails here, before any element is written
            from numba.core.errors import TypingError
            try:
                jit(*args)
            except TypingError:
                raise  # a kernel Numba cannot type is a bug in graphc, not a damaged cache
            except Exception as e:  # noqa: BLE001 - retried once, then raised
                jit = _rebuild(source, jit, e)
                jit(*args)
            loaded = True
            if chunking is not None:
                load_parallel()
        for (acc, kd, count), out in zip(reds, arrays[n_in + n_out:]):
            if count != 1:
                acc /= count
            np.copyto(out.reshape(kd), acc, casting="unsafe")

    kernel.source = source
    return kernel


def window(view: np.ndarray, parent: np.ndarray, index: tuple, shape: tuple):
    """(dims, offsets) for print_numba's `windows` when `view` = parent[index] (basic
    slices of step 1 and integers) is a strided view that contiguous rows of the
    C-contiguous parent cover, over iteration shape `shape`; else None (pass the view:
    right, if slower)."""
    if view.flags.c_contiguous or not parent.flags.c_contiguous or not shape or \
            tuple(view.shape) != tuple(shape):
        return None
    index = tuple(i for i in index if i is not Ellipsis)
    if len(index) > parent.ndim:
        return None
    index += (slice(None),) * (parent.ndim - len(index))
    dims, offsets, axis = [], [], 0
    for i, n in zip(index, parent.shape):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                return None
            dims.append(axis)
            offsets.append(start)
            axis += 1
        elif isinstance(i, (int, np.integer)):
            dims.append("i")
            offsets.append(int(i) % n)
        else:
            return None
    if axis != len(shape) or dims[-1] != len(shape) - 1:
        return None
    return tuple(dims), tuple(offsets)
