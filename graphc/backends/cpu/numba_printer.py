"""Fused kernels printed as Numba loops (CPU backend): one pass over the iteration space,
every input read once, reductions accumulated in float64, each op printed from its
registry scalar form (OpDef.scalar). Used for groups of cheap arithmetic (OpDef.cost below
COST_TRANSCENDENTAL) and for float32 groups whose transcendental functions are exp, tanh and
sigmoid, which print as vmath's branch-free, vectorizable functions (VMATH); groups with any
other transcendental function run as tiled NumPy instead (NumPy's SIMD exp/tanh are 10-80x
faster per element than Numba's scalar libm calls on the machines we measured).

Sources are cached on disk as graphc.backends.kernel_cache describes (user-only directory,
keyed by the source hash, verified before use, rebuilt once when damaged)."""
from __future__ import annotations

import functools
import os
import re

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


# float32 exp, tanh and sigmoid print as vmath's functions, so a float32 group holding them
# (and no other transcendental function) runs as a Numba loop nest too. A chain of such
# functions depending on one another leaves one loop waiting on latency (each function is
# some 20 dependent steps, and out-of-order execution overlaps only so many iterations),
# where NumPy's one pass per op over a tile is bound by throughput; so such a group's
# innermost loop runs in blocks of STAGE_BLOCK elements, one loop per stage of the chain
# (see _stages and one_loop). Measured in one process, over 1M floats (64 x 512), time
# against NumPy's: the elementwise workload's chain prefixes of 1 to 7 functions 0.57 to
# 0.71 (0.52 to 0.80) in stages (in one loop: 0.57 (0.80) at one function, 1.02 (1.21) at
# three), with their gradients 0.35 to 0.55 (0.43 to 0.55); the LSTM's gate kernel (five
# functions, two deep) 0.55 in one loop, 0.61 in stages.
VMATH = True
STAGE_BLOCK = 2048


def suits(expr: FusedExpr) -> bool:
    """Numba pays for big groups of cheap arithmetic, and of float32 arithmetic with exp,
    tanh and sigmoid (see the module docstring)."""
    size = int(np.prod(expr.shape, dtype=np.int64))
    if size < MIN_ELEMENTS or not available():
        return False
    live = sorted(_live(expr))
    instrs = [expr.instrs[j] for j in live]
    if all(prints(i) for i in instrs):
        return True
    return VMATH and all(prints(i) or vector_math(i) for i in instrs)


def one_loop(expr: FusedExpr, live) -> bool:
    """Whether a group with vmath functions runs as one loop (else in stages, see
    _stages): where at most one of them lies on any chain of dependent instructions, or
    there are at least two per link of the longest chain (independent work enough to
    overlap the chain's latency)."""
    levels = _levels(expr, live)
    depth = max(levels.values(), default=0)
    count = sum(1 for j in live if vector_math(expr.instrs[j]))
    return depth <= 1 or count >= 2 * depth


def _levels(expr: FusedExpr, live) -> dict:
    """Instruction -> the most vmath functions on a chain of instructions ending at it."""
    depth: dict[int, int] = {}
    for j in sorted(live):
        ins = expr.instrs[j]
        d = max((depth.get(i, 0) for kind, i in ins.args if kind == "v"), default=0)
        depth[j] = d + (1 if vector_math(ins) else 0)
    return depth


def prints(ins) -> bool:
    """Whether an instruction is cheap arithmetic with a scalar form (see the docstring)."""
    op = ins.opdef
    return (op is not None and op.cost < COST_TRANSCENDENTAL
            and op.scalar_form(ins.attrs) is not None)


def vector_math(ins) -> bool:
    """Whether an instruction prints as one of vmath's float32 functions."""
    from . import vmath
    return ins.op in vmath.FUNCTIONS and np.dtype(ins.dtype) == np.float32 and \
        ins.opdef is not None


def _live(expr: FusedExpr) -> set:
    """The instructions an output or a reduction needs (see numpy_printer._live)."""
    from .numpy_printer import _live as live
    return live(expr)


def print_numba(expr: FusedExpr, shared=None, parallel: bool = False,
                windows=None, strided=None) -> tuple[str, dict]:
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
    rows apart), so then each output's row goes to scratch, copied into place after it.

    `strided` does the same for inputs that are strided views (column slices of a bigger
    array, broadcasts with zero strides): {input: (group, inner stride 0 or 1)}. The kernel
    takes, in place of those inputs and after everything above, one flat C-contiguous
    array g{group} per group (the memory the group's inputs span) and each input's offset
    u{k} and element strides d{k}_{d} along the outer iteration axes; it reads contiguous
    rows of the flat array (or, for an inner stride 0, one element per row)."""
    from . import vmath
    shared = shared or {}
    windows = windows or {}
    strided = strided or {}
    shape = expr.shape
    loop_vars = [f"j{d}" for d in range(len(shape))]
    consts: dict = {}
    live = _live(expr)
    use_vmath = VMATH and any(vector_math(expr.instrs[j]) for j in live)
    n_in, n_out, n_red = len(expr.inputs), len(expr.outputs), len(expr.reductions)
    params = [f"i{k}" for k in range(n_in) if k not in strided] + \
        [f"o{k}" for k in range(n_out) if k not in shared] + \
        [f"a{k}" for k in range(n_red)] + [f"n{d}" for d in range(len(shape))]
    scratch = len(windows) > 1
    for k, dims in sorted(windows.items()):
        params += [f"w{k}_{p}" for p in range(len(dims))] + ([f"q{k}"] if scratch else [])
    inner = len(shape) - 1
    params += [f"g{g}" for g in sorted({g for g, _ in strided.values()})]
    for k in sorted(strided):
        params += [f"u{k}"] + [f"d{k}_{d}" for d in range(inner)]
    body = []
    # Without reductions, each input is loaded in the outermost loop where its index is
    # fixed (a learning rate before the loops): left in the inner loop, such a load may
    # alias the stores and LLVM keeps the loop scalar (measured: 0.69 -> 0.53 ms for an SGD
    # update of 1M floats). With a reduction the hoisted form measured 5x slower, so there
    # every load stays innermost.
    loads: dict[int, list] = {}
    pre: dict[int, list] = {}
    post: dict[int, list] = {}
    for k, (_, in_shape) in enumerate(expr.inputs):
        if k in strided:
            # the offset of the input's row, summed loop by loop; its row (or element) is
            # taken before the innermost loop
            g, step = strided[k]
            base = f"u{k}"
            for d in range(inner):
                loads.setdefault(d, []).append(f"b{k}_{d} = {base} + j{d} * d{k}_{d}")
                base = f"b{k}_{d}"
            if step == 1:
                pre.setdefault(inner, []).append(f"r{k} = g{g}[{base}:{base} + n{inner}]")
                loads.setdefault(inner, []).append(f"x{k} = r{k}[j{inner}]")
            elif expr.reductions:
                loads.setdefault(inner, []).append(f"x{k} = g{g}[{base}]")
            else:
                pre.setdefault(inner, []).append(f"x{k} = g{g}[{base}]")
            continue
        index = _index(in_shape, shape, loop_vars)
        depth = inner if expr.reductions else max(_varying_dims(in_shape, shape), default=-1)
        loads.setdefault(depth, []).append(f"x{k} = i{k}{index}")
    for j, ins in enumerate(expr.instrs):
        if j not in live:
            continue
        args = [f"x{i}" if kind == "in" else f"t{i}" for kind, i in ins.args]
        if use_vmath and vector_math(ins):
            body.append((j, f"t{j} = {vmath.FUNCTIONS[ins.op]}({args[0]})"))
            continue
        body.append((j, f"t{j} = {scalar_code(ins, j, args, consts)}"))
    idx = "[" + ", ".join(loop_vars) + "]" if shape else "[()]"
    late: set = set()  # stores over an input: in stages, after every stage has read it
    for k, (_, j) in enumerate(expr.outputs):
        if k in windows:
            dims = windows[k]
            at = [f"w{k}_{p}" if d == "i" else f"j{d} + w{k}_{p}" for p, d in enumerate(dims)]
            at[-1] = f"w{k}_{len(dims) - 1}:w{k}_{len(dims) - 1} + n{inner}"
            row = f"ro{k} = o{k}[{', '.join(at)}]"
            if scratch:
                body.append((j, f"q{k}[j{inner}] = t{j}"))
                post.setdefault(inner, []).extend(
                    [row, f"for jq in range(n{inner}):", f"    ro{k}[jq] = q{k}[jq]"])
            else:
                pre.setdefault(inner, []).append(row)
                body.append((j, f"ro{k}[j{inner}] = t{j}"))
            continue
        body.append((j, f"{f'i{shared[k]}' if k in shared else f'o{k}'}{idx} = t{j}"))
        if k in shared:
            late.add(body[-1][1])
    # A reduction over the innermost axes sums into a local float64 (a register) across
    # that run of loops and adds the sum to its accumulator once after them: summed in
    # memory, every element's add waits for the previous store (3.9 -> 0.9 ms for a ReLU
    # backward with its bias gradient over 1.2M elements). In a kernel with vmath's
    # functions the local sums with vmath.sum_add, an add LLVM may reassociate: the loop
    # then vectorizes (partial sums in lanes); with a plain add it stays scalar (83 vs
    # 9 ns per element for the elementwise workload's kernel).
    for k, (_, j, axes, _, _) in enumerate(expr.reductions):
        r_idx = [("0" if d in axes else v) for d, v in enumerate(loop_vars)]
        target = f"a{k}[{', '.join(r_idx)}]" if r_idx else f"a{k}[()]"
        start = len(shape)
        while start > 0 and (start - 1) in axes:
            start -= 1
        if start == len(shape):
            body.append((j, f"{target} += t{j}"))
            continue
        pre.setdefault(start, []).append(f"s{k} = 0.0")
        body.append((j, f"s{k} = sum_add(s{k}, t{j})" if use_vmath else f"s{k} += t{j}"))
        post.setdefault(start, []).append(f"{target} += s{k}")
    # constants are module globals, which Numba freezes into the machine code (and the
    # source hash, hence the cache key, covers their values)
    lines = ["import math", "import numpy as np", "import numba", ""]
    if use_vmath:  # VERSION: vmath's source hash (Numba's cache does not track inlining)
        lines += [f"from graphc.backends.cpu.vmath import {', '.join(sorted(vmath.NAMES))}"
                  f"  # vmath {vmath.VERSION}", ""]
    lines += constant_lines(consts)
    flags = ", parallel=True" if parallel else ""
    lines += ["", f"@numba.njit(cache=True, nogil=True, error_model='numpy'{flags})",
              f"def kernel({', '.join(params)}):"]
    lines += ["    " + b for b in loads.get(-1, [])]

    stages = _stages(expr, live, body, late) if use_vmath and shape and not parallel and \
        not one_loop(expr, live) else None
    if stages:
        for j in sorted({j for _, _, kept in stages for j in kept}):
            lines.append(f"    bt{j} = np.empty({STAGE_BLOCK}, "
                         f"np.{np.dtype(expr.instrs[j].dtype).name})")

    def nest(d: int, indent: str) -> None:
        if d == len(shape):
            lines.extend(indent + b for _, b in body)
            return
        lines.extend(indent + b for b in pre.get(d, []))
        if d == inner and stages:
            # see _stages: each stage one loop over the block, its values for later stages
            # kept in rows bt{j} of the block
            # Every array indexed along the innermost axis is read and written through its
            # row of the block, indexed by the stage loop's own counter: indexed by
            # jb + jl, which LLVM cannot prove non-negative, it gets Python's wraparound
            # and the loop runs 9x slower.
            views: dict[str, str] = {}
            pattern = re.compile(rf"\b(\w+)\[((?:[^\]]*, )?)j{d}\]")

            def rows(line: str) -> str:
                def sub(m):
                    name = f"{m.group(1)}_b"
                    views.setdefault(name, f"{name} = {m.group(1)}[{m.group(2)}jb:je]")
                    return f"{name}[jl]"
                return pattern.sub(sub, line)
            staged = []
            for reads, stage_body, kept in stages:
                part = [b for b in loads.get(d, []) if int(b.split(" ", 1)[0][1:]) in reads[0]]
                part += [f"t{i} = bt{i}[jl]" for i in sorted(reads[1])]
                part += stage_body + [f"bt{j}[jl] = t{j}" for j in sorted(kept)]
                staged.append([rows(b) for b in part])
            lines.extend([f"{indent}for jb in range(0, n{d}, {STAGE_BLOCK}):",
                          f"{indent}    je = min(jb + {STAGE_BLOCK}, n{d})"])
            lines.extend(f"{indent}    {b}" for b in views.values())
            for part in staged:
                lines.append(f"{indent}    for jl in range(je - jb):")
                lines.extend(f"{indent}        {b}" for b in part)
            lines.extend(indent + b for b in post.get(d, []))
            return
        loop = "numba.prange" if parallel and d == 0 else "range"
        lines.append(f"{indent}for {loop_vars[d]} in {loop}(n{d}):")
        lines.extend(indent + "    " + b for b in loads.get(d, []))
        nest(d + 1, indent + "    ")
        lines.extend(indent + b for b in post.get(d, []))

    nest(0, "    ")
    return "\n".join(lines) + "\n", consts


def _stages(expr: FusedExpr, live, body, late=()) -> list:
    """The innermost loop's body split where one vmath function waits for another: stage
    s holds the instructions with s vmath functions on their longest chain (those before
    any in stage 0), with their stores; the sums into locals come last, in a stage of
    their own (measured a little faster than in their value's stage), and so do the
    `late` lines (stores over an input, which a later stage may still read). Each stage
    becomes its own loop over a block of STAGE_BLOCK elements, so no loop has a chain of
    dependent functions whose latency would leave it waiting (see VMATH); values later
    stages read go through rows bt{j} of the block. [(inputs it reads, values of earlier stages it
    reads), its lines, its values later stages read] per stage."""
    level = _levels(expr, live)
    n = max(level.values(), default=0) + 2  # the last: the sums
    lines: list = [[] for _ in range(n)]
    ins_read: list = [set() for _ in range(n)]
    vals_read: list = [set() for _ in range(n)]
    kept: list = [set() for _ in range(n)]
    for j, line in body:
        if "sum_add(" in line or line in late:  # in a last stage of their own
            lines[-1].append(line)
            vals_read[-1].add(j)
            kept[level[j]].add(j)
        else:
            lines[level[j]].append(line)
    for j in sorted(live):
        s = level[j]
        for kind, i in expr.instrs[j].args:
            if kind == "in":
                ins_read[s].add(i)
            elif level[i] != s:
                vals_read[s].add(i)
                kept[level[i]].add(i)
    return [((ins_read[s], vals_read[s]), lines[s], kept[s]) for s in range(n) if lines[s]]


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
    size = _state_update_size(expr, shared)
    if size < PARALLEL_MIN_ELEMENTS or threads() < 2:
        return None
    rows = max(1, CHUNK_ELEMENTS // max(size // shape[0], 1))
    n_chunks = -(-shape[0] // rows)
    if n_chunks < 2:
        return None
    return rows, n_chunks, _cut(expr, n_kept)


def _cut(expr: FusedExpr, n_kept: int) -> list:
    """The argument positions a chunk of rows slices: the inputs that vary along the first
    iteration axis (broadcast ones are passed whole) and the outputs."""
    n_in, shape = len(expr.inputs), expr.shape
    cut = [k for k, (_, in_shape) in enumerate(expr.inputs)
           if len(in_shape) == len(shape) and 0 in _varying_dims(in_shape, shape)]
    return cut + [n_in + k for k in range(n_kept)]


def _row_range(args, cut, extent: int, lo: int, hi: int) -> list:
    """A kernel's arguments for rows lo:hi of its first axis: the cut arguments sliced,
    the first extent (at position `extent`) set to the range's length."""
    part = list(args)
    for k in cut:
        part[k] = args[k][lo:hi]
    part[extent] = hi - lo
    return part


def _state_update_size(expr: FusedExpr, shared: dict) -> int:
    """The element count of a state update (every output written over its input, no
    reduction, rows to split), else 0."""
    shape = expr.shape
    if expr.reductions or not shape or shape[0] < 2:
        return 0
    if len(expr.outputs) < 2 or len(shared) != len(expr.outputs):
        return 0
    return int(np.prod(shape, dtype=np.int64))


def compile_numba(expr: FusedExpr, shared=None, windows=None, inputs=None):
    """A callable kernel(*inputs, *outputs, *reductions) running one Numba loop nest;
    `shared`: see print_numba (the caller promises those outputs are those inputs).
    `windows`: {output: (dims, offsets)} (see print_numba and window()): the caller passes
    those outputs' parent arrays. `inputs`: the arrays the caller passes as inputs on every
    call, where it knows them when it compiles (else None): those that are strided views
    are read through flat arrays of the memory they span (see print_numba's `strided` and
    strided_inputs()). Big state updates run on several threads (see
    PARALLEL_MIN_ELEMENTS)."""
    shared = shared or {}
    windows = windows or {}
    if not expr.outputs and not expr.reductions:
        def nothing(*arrays):  # every value recomputed by its readers: nothing to write
            return None
        nothing.source = ""
        return nothing
    n_in, n_out = len(expr.inputs), len(expr.outputs)
    kept = [k for k in range(n_out) if k not in shared]
    chunking = None if windows else _chunking(expr, shared, len(kept))
    strided, groups, places = ({}, [], []) if chunking is not None or inputs is None else \
        strided_inputs(expr, inputs, shared)
    source, _ = print_numba(expr, shared, windows={k: d for k, (d, _) in windows.items()},
                            strided=strided)
    jit = _load(source)
    shape = expr.shape
    extra: list = []  # after the extents: each window's offsets (and its scratch row)
    for k, (_, offsets) in sorted(windows.items()):
        extra += list(offsets)
        if len(windows) > 1:
            extra.append(np.empty(shape[-1], expr.instrs[expr.outputs[k][1]].dtype))
    extra += groups + places
    plain = [k for k in range(n_in) if k not in strided]
    reds = []
    for _, _, axes, kind, _ in expr.reductions:
        kd = tuple(1 if a in axes else d for a, d in enumerate(shape))
        count = int(np.prod([shape[a] for a in axes], dtype=np.int64)) if kind == "mean" else 1
        reds.append((np.zeros(kd, np.float64), kd, count))

    loaded = False  # whether the dispatcher has run once (and so loaded from disk or built)
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
                jit(*_row_range(args, cut, extent, lo, min(lo + rows, n0)))
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
        ins = arrays[:n_in] if not strided else [arrays[k] for k in plain]
        args = (*ins, *[arrays[n_in + k] for k in kept], *accs, *shape, *extra)
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

    update_size = _state_update_size(expr, shared) if not (windows or strided) else 0
    update_cut = _cut(expr, 0) if update_size else []

    def tasks(*arrays, max_elements: int) -> list:
        """The kernel's work as serial calls over row ranges of at most about
        max_elements elements each (see executor's batches); after the first call."""
        args = (*arrays[:n_in], *shape)
        n0, row = shape[0], update_size // shape[0]
        rows = max(1, max_elements // max(row, 1))
        if rows >= n0:
            return [functools.partial(jit, *args)]
        return [functools.partial(jit, *_row_range(args, update_cut, n_in, lo,
                                                   min(lo + rows, n0)))
                for lo in range(0, n0, rows)]

    kernel.source = source
    kernel.update_size = update_size  # a state update's elements (batchable), else 0
    kernel.tasks = tasks
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


# Inputs that are strided views known when the kernel is compiled are read through flat
# arrays (see print_numba's `strided`): a loop over an 'A' array does not vectorize.
STRIDED_INPUTS = True


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def strided_inputs(expr: FusedExpr, arrays, shared=None):
    """print_numba's `strided` for the inputs among `arrays` (None where unknown) that are
    strided views whose innermost iteration step is 0 or 1 element, with the kernel's extra
    arguments: the groups' flat arrays (one per base array: the memory from the group's
    first element to its last, a C-contiguous 1-D view) and each input's offset in its
    group and element strides along the outer iteration axes. An input some output
    overwrites stays as it is (({}, [], []) when none qualifies)."""
    shape = expr.shape
    if not STRIDED_INPUTS or not shape:
        return {}, [], []
    written = set((shared or {}).values())
    found: dict = {}  # root id -> [(input, array, element strides)]
    for k, ((_, in_shape), a) in enumerate(zip(expr.inputs, arrays)):
        if k in written or not isinstance(a, np.ndarray) or a.flags.c_contiguous or \
                tuple(a.shape) != tuple(in_shape) or a.dtype.hasobject:
            continue
        size = a.itemsize
        if any(st < 0 or st % size for st in a.strides):
            continue
        steps = [0] * len(shape)  # 0 along broadcast and missing axes
        lead = len(shape) - len(in_shape)
        for i, (n, st) in enumerate(zip(in_shape, a.strides)):
            steps[lead + i] = st // size if n != 1 else 0
        root = _root(a)
        if steps[-1] not in (0, 1) or not (root.flags.c_contiguous or root.flags.f_contiguous):
            continue
        found.setdefault((id(root), a.dtype.str), []).append((k, a, steps))
    strided, groups, places = {}, [], []
    for members in found.values():
        root = _root(members[0][1])
        size = members[0][1].itemsize
        start = root.__array_interface__["data"][0]
        first = [m[1].__array_interface__["data"][0] for m in members]
        last = [p + sum((n - 1) * st for n, st in zip(a.shape, a.strides))
                for p, (_, a, _) in zip(first, members)]
        lo, hi = min(first), max(last) + size
        if any((p - lo) % size for p in first):
            continue
        flat = (root if root.flags.c_contiguous else root.T).reshape(-1).view(np.uint8)
        flat = flat[lo - start:hi - start].view(members[0][1].dtype)
        g = len(groups)
        groups.append(flat)
        for (k, a, steps), p in zip(members, first):
            strided[k] = (g, steps[-1])
            places.append((k, [(p - lo) // size] + steps[:-1]))
    flat_places = [v for _, vs in sorted(places) for v in vs]
    return strided, groups, flat_places
