"""Multi-tensor optimizer updates (CUDA backend): every parameter updated by the same rule
(the same update expression, e.g. Adam's m, v and p) is updated by ONE kernel launch that
walks a table of chunks, instead of one launch per parameter.

Planning (`regroup`, on a bound plan, before its buffers exist):

- An update kernel is a fused elementwise kernel (no reductions) whose outputs are all new
  values of parameters that no kernel reads. The elementwise update that rides in a
  reduction's epilogue (a bias's, after its gradient's sum) is split off as a kernel of
  its own; elementwise kernels over the parameter's shape whose results only that update
  reads (a bias's `beta1 * m`, computed before its gradient exists) join it. Every input
  must span the update's shape or be one element (a device scalar: a learning rate, a
  bias correction); none is baked into the code, so schedules and step counts stay right
  when a captured CUDA graph is replayed.
- Update kernels with the same structure (`signature`: instructions, attributes, dtypes,
  which inputs are scalars) form a group. Groups of two or more move to the end of the
  kernel order, and the memory plan is made again for that order with the groups' inputs
  kept alive to the end (so no member's arena output can land on another member's input
  while they run at once). A GEMM that writes a weight in place (alpha/beta SGD) stays
  where it is, and an update that reads that weight is not moved past it.

Launching (`MultiTensorLaunch`): all buffers a group touches lie in a few flat device
allocations: the executor's arena, its constant pool and the runtime's parameter pools (a
parameter's DeviceStorage is a view into one). Each member's arrays become (allocation,
element offset) pairs; each member is cut into chunks (`chunk`), one table row per
chunk: [n, (allocation, offset) per input, (allocation, offset) per output]. The printed
kernel (one flat `cuda.jit` function, compiled to PTX on its own) gives each block rows of
the table (grid-stride over rows); its threads stride over the row's elements. A member
whose arrays cannot be addressed so (not contiguous, outside those allocations), or whose
outputs overlap another member's arrays, runs as its own fused kernel or in a later
launch, in order: the result is the same either way."""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from ...schedule.expr import FusedExpr, build_expr
from ...schedule.kernel import Kernel, data_inputs, view_bases
from ...schedule.memory_plan import plan_memory
from .. import kernel_cache
from ..scalar import constant_lines, has_scalar_form, scalar_code

# elements per table row on a device: enough rows for every resident block of the device
# (8 per SM), each row at least 4 elements per thread of a 256-thread block, at most 256
MIN_CHUNK, MAX_CHUNK = 1 << 10, 1 << 16
SIM_CHUNK = 64  # in the simulator: small, so that tiny test shapes span several rows


# --- planning ----------------------------------------------------------------------------
def _copy(k: Kernel) -> Kernel:
    return dataclasses.replace(k, steps=list(k.steps), inputs=list(k.inputs),
                               outputs=list(k.outputs), reductions=dict(k.reductions),
                               epilogue=list(k.epilogue))


def _inputs_of(steps) -> list:
    mine = {st.slot for st in steps}
    return list(dict.fromkeys(s for st in steps for s in data_inputs(st) if s not in mine))


def signature(expr: FusedExpr) -> tuple:
    """What decides the printed multi-tensor kernel: the instructions (op, attributes,
    arguments, dtype), each input's dtype and whether it is a scalar, the outputs."""
    n = math.prod(expr.shape)
    instrs = tuple((i.op, repr(sorted(i.attrs.items())), tuple(i.args), np.dtype(i.dtype).str)
                   for i in expr.instrs)
    inputs = tuple((_dtype_of(expr, k), math.prod(shape) == 1 and n != 1)
                   for k, (_, shape) in enumerate(expr.inputs))
    return instrs, inputs, tuple(j for _, j in expr.outputs)


def _dtype_of(expr: FusedExpr, k: int) -> str:
    """The dtype of input k, as the instruction reading it sees it."""
    return np.dtype(expr.input_dtypes[k]).str


def _expr(k: Kernel, plan, shapes) -> FusedExpr:
    expr = build_expr(k, plan, shapes)
    expr.input_dtypes = [plan.nodes[s].dtype for s, _ in expr.inputs]
    return expr


def _transform(kernels: list, plan, shapes, only=None) -> tuple[list, list]:
    """(the kernels that stay, in order; [(root, update kernel)] for each candidate), where
    root is the position of the kernel the candidate grew from. With `only` (a set of
    roots), just those candidates are split off and grown; the others stay as they were."""
    n_slots = len(plan.nodes)
    base = view_bases(kernels, n_slots)
    updated = {s for _, s in plan.updates}
    roots = {base[s] for s in plan.outputs}
    feeds = {s for _, s in plan.feeds}
    step_index = {st.slot: i for i, st in enumerate(plan.steps)}
    readers: dict = {}  # base slot -> ids of kernels reading it
    for k in kernels:
        for s in k.inputs:
            readers.setdefault(base[s], set()).add(id(k))
    producer = {s: k for k in kernels if k.kind != "view" for s in k.outputs}
    position = {id(k): i for i, k in enumerate(kernels)}
    gemm_writes = [(i, base[k.inputs[3]]) for i, k in enumerate(kernels) if k.kind == "gemm"]

    def unread_updates(slots) -> bool:
        return bool(slots) and all(s in updated and base[s] == s and s not in roots
                                   and not readers.get(s) for s in slots)

    stay, candidates = [], []
    absorbed: set = set()
    for i, k in enumerate(kernels):
        if k.kind != "fused" or (only is not None and i not in only):
            stay.append(k)
            continue
        late = set(k.epilogue)
        if not k.reductions and not late and unread_updates(k.outputs):
            cand, main = _copy(k), None
        elif late and unread_updates([s for s in k.outputs if s in late]):
            main_steps = [st for st in k.steps if st.slot not in late]
            epi_steps = [st for st in k.steps if st.slot in late]
            if any(s in late for st in main_steps for s in st.inputs):
                stay.append(k)
                continue
            main = Kernel("fused", main_steps, _inputs_of(main_steps),
                          [s for s in k.outputs if s not in late], shape=k.shape,
                          reductions=dict(k.reductions))
            cand = Kernel("fused", epi_steps, _inputs_of(epi_steps),
                          [s for s in k.outputs if s in late], shape=tuple(k.epilogue_shape))
        else:
            stay.append(k)
            continue
        _grow(cand, k, main, producer, readers, base, roots, updated, step_index, absorbed)
        first = min([i] + [position[id(p)] for p in cand._absorbed])
        if not _eligible(cand, plan, shapes, base, feeds, roots) or any(
                j > first and w in {base[s] for s in cand.inputs} for j, w in gemm_writes):
            stay.append(k)  # e.g. it reads a weight that a later GEMM writes in place
            absorbed.difference_update(id(p) for p in cand._absorbed)
            continue
        if main is not None:
            stay.append(main)
        candidates.append((i, cand))
    stay = [k for k in stay if id(k) not in absorbed]
    return stay, candidates


def _grow(cand, origin, main, producer, readers, base, roots, updated, step_index,
          absorbed) -> None:
    """Absorb into `cand` the elementwise kernels over its shape whose every result only
    `cand` reads (repeatedly: what they read may qualify next)."""
    cand._absorbed = []
    main_reads = {s for st in (main.steps if main is not None else []) for s in st.inputs}
    changed = True
    while changed:
        changed = False
        for s in list(cand.inputs):
            p = producer.get(s)
            if p is None or p is origin or p.kind != "fused" or p.reductions or p.epilogue \
                    or tuple(p.shape) != tuple(cand.shape) or id(p) in absorbed:
                continue
            inside = {id(origin)} | {id(q) for q in cand._absorbed}
            if any(o in roots or o in updated or base[o] != o or o in main_reads
                   or readers.get(o, set()) - inside for o in p.outputs):
                continue
            absorbed.add(id(p))
            cand._absorbed.append(p)
            steps = {id(st): st for st in cand.steps + p.steps}
            cand.steps = sorted(steps.values(), key=lambda st: step_index[st.slot])
            cand.inputs = _inputs_of(cand.steps)
            changed = True
            break


def _eligible(k: Kernel, plan, shapes, base, feeds, roots) -> bool:
    """Every input spans the kernel's shape or is one element, lives in a flat allocation
    (not a feed, not a returned output), and every instruction prints."""
    shape = tuple(k.shape)
    n = math.prod(shape)
    if n == 0 or not k.steps:
        return False
    for s in k.inputs:
        m = math.prod(shapes[s])
        if base[s] in feeds or base[s] in roots or (tuple(shapes[s]) != shape and m != 1):
            return False
    for s in k.outputs:
        if tuple(shapes[s]) != shape:
            return False
    try:
        expr = build_expr(k, plan, shapes)
    except Exception:  # noqa: BLE001 - a kernel build_expr cannot take stays as it is
        return False
    return not expr.reductions and expr.epilogue is None and all(
        has_scalar_form(ins) for ins in expr.instrs)


def regroup(bp, align: int, min_members: int = 2) -> list[list]:
    """Gather the plan's update kernels into groups of one rule (see the module docstring):
    the groups' members move to the end of `bp.kernels` and `bp.memory` is planned again
    for that order. Returns the groups (lists of member kernels, in launch order); empty,
    with the plan untouched, when no rule updates two parameters."""
    kernels, plan, shapes = bp.kernels, bp.plan, bp.shapes
    if not any(k.kind == "fused" and len(k.steps) > 1 for k in kernels):
        return []  # an unfused plan (compile(optimize=False)): one kernel per op, as asked
    _, candidates = _transform(kernels, plan, shapes)
    by_sig: dict = {}
    for root, cand in candidates:
        by_sig.setdefault(signature(_expr(cand, plan, shapes)), []).append(root)
    keep = {r for roots in by_sig.values() if len(roots) >= min_members for r in roots}
    if not keep:
        return []
    stay, candidates = _transform(kernels, plan, shapes, only=keep)
    groups: dict = {}
    for root, cand in candidates:
        groups.setdefault(signature(_expr(cand, plan, shapes)), []).append(cand)
    groups = [g for g in groups.values() if len(g) >= min_members]
    stay += [cand for _, cand in candidates if not any(cand in g for g in groups)]
    moved = [k for g in groups for k in g]
    order = stay + moved
    params = {s for _, s in plan.params}
    base = view_bases(order, len(plan.nodes))
    # a stand-in last reader of every group input outside the parameters: the memory plan
    # then keeps them where they are until the launches at the end have read them
    sink = Kernel("op", [], list(dict.fromkeys(
        s for k in moved for s in k.inputs if base[s] not in params)), [])
    memory = plan_memory(order + [sink], plan, shapes, align=align)
    bp.kernels[:] = order
    bp.memory = memory
    return groups


# --- the printed kernel ------------------------------------------------------------------
def print_multi_tensor(expr: FusedExpr, scalar: list, out_dtypes: list, counts: dict) -> str:
    """Source of a module defining `update(tab, nrows, <buffers>)`: buffers are 1-D arrays,
    `counts[dtype]` of each dtype (in the order of `counts`); table row c is
    [n, (buffer, offset) of each input, (buffer, offset) of each output] (see the module
    docstring). Scalar inputs (scalar[k]) are read once per row at their offset."""
    consts: dict = {}
    dts = list(counts)
    n_in = len(expr.inputs)

    def buffer_of(col: int, dt: str, var: str) -> list[str]:
        names = [f"d{dts.index(dt)}_{m}" for m in range(counts[dt])]
        if len(names) == 1:
            return [f"{var} = {names[0]}"]
        choice = names[-1]
        for m in range(len(names) - 2, -1, -1):
            choice = f"({names[m]} if b == {m} else {choice})"
        return [f"b = tab[c, {1 + 2 * col}]", f"{var} = {choice}"]

    head, inner = [], []
    in_dts = [np.dtype(d).str for d in expr.input_dtypes]
    for k in range(n_in):
        head += buffer_of(k, in_dts[k], f"i{k}") + [f"f{k} = tab[c, {2 + 2 * k}]"]
        if scalar[k]:
            head.append(f"x{k} = i{k}[f{k}]")
        else:
            inner.append(f"x{k} = i{k}[f{k} + e]")
    for m, dt in enumerate(out_dtypes):
        col = n_in + m
        head += buffer_of(col, np.dtype(dt).str, f"o{m}") + [f"g{m} = tab[c, {2 + 2 * col}]"]
    for j, ins in enumerate(expr.instrs):
        args = [f"x{i}" if kind == "in" else f"t{i}" for kind, i in ins.args]
        inner.append(f"t{j} = {scalar_code(ins, j, args, consts)}")
    inner += [f"o{m}[g{m} + e] = t{j}" for m, (_, j) in enumerate(expr.outputs)]
    buffers = [f"d{a}_{m}" for a, dt in enumerate(dts) for m in range(counts[dt])]
    lines = ["import math", "import numpy as np", "from numba import cuda", ""]
    lines += constant_lines(consts)
    params = ", ".join(["tab", "nrows"] + buffers)
    lines += ["", "", "@cuda.jit(cache=True)", f"def update({params}):",
              "    for c in range(cuda.blockIdx.x, nrows, cuda.gridDim.x):",
              "        n = tab[c, 0]"]
    lines += ["        " + h for h in head]
    lines += ["        for e in range(cuda.threadIdx.x, n, cuda.blockDim.x):"]
    lines += ["            " + b for b in inner]
    return "\n".join(lines) + "\n"


def _type_name(dt) -> str:
    dt = np.dtype(dt)
    return "boolean" if dt.kind == "b" else dt.name


class MultiTensorKernel:
    """The compiled kernel of one rule for given buffer counts per dtype: call it as
    kernel(table, *buffers, stream=None). `.source`; `.ptx(cc)` compiles it to PTX."""

    def __init__(self, expr: FusedExpr, counts: dict):
        from .printer import _simulated
        n = math.prod(expr.shape)
        self.scalar = [math.prod(shape) == 1 and n != 1 for _, shape in expr.inputs]
        self.out_dtypes = [expr.instrs[j].dtype for _, j in expr.outputs]
        self.counts = dict(counts)
        self.source = print_multi_tensor(expr, self.scalar, self.out_dtypes, self.counts)
        self._module = _simulated(kernel_cache.load_module(self.source))
        self._compiled = False

    def signature(self) -> str:
        """The Numba signature of `update`: (int64 table, int64 rows, 1-D buffers)."""
        bufs = [f"{_type_name(dt)}[::1]" for dt, c in self.counts.items() for _ in range(c)]
        return f"void({', '.join(['int64[:, ::1]', 'int64'] + bufs)})"

    def ptx(self, cc: tuple = (9, 0)) -> str:
        from numba import cuda
        ptx, _ = cuda.compile_ptx(self._module.update.py_func, self.signature(), cc=cc)
        return ptx

    def prepare(self, table, buffers) -> None:
        """Compile (or load from the disk cache) for these arguments now: never inside a
        graph capture. A damaged cache entry is rebuilt once, as for fused kernels."""
        from .printer import _simulated, simulator
        if simulator() or self._compiled:
            return
        fn = self._module.update
        types = tuple(fn.typeof_pyval(a) for a in [table, len(table)] + list(buffers))
        try:
            fn.compile(types)
        except kernel_cache.typing_errors():
            raise  # a kernel Numba cannot type is a bug in graphc, not a damaged cache
        except Exception as e:  # noqa: BLE001 - retried once, then raised
            self._module = _simulated(kernel_cache.rebuild_module(self.source, fn, e,
                                                                   stacklevel=4))
            self._module.update.compile(types)
        self._compiled = True

    def launch(self, table, buffers, blocks: int, threads: int, stream=None) -> None:
        config = (blocks, threads) if stream is None else (blocks, threads, stream)
        self._module.update[config](table, len(table), *buffers)


_kernels: dict = {}  # (signature, counts) -> MultiTensorKernel


def kernel_for(expr: FusedExpr, counts: dict) -> MultiTensorKernel:
    key = (signature(expr), tuple(counts.items()))
    if key not in _kernels:
        _kernels[key] = MultiTensorKernel(expr, counts)
    return _kernels[key]


class MultiTensorLaunch:
    """One launch updating every member of a group: `names` are the parameters it writes.
    Called with no arguments (its table and buffers are fixed for the plan's life)."""

    multi_tensor = True

    def __init__(self, kernel: MultiTensorKernel, table, buffers, rows: int, names: list,
                 stream=None):
        from .printer import _in_place, default_launch, simulator, SIM_BLOCKS, SIM_THREADS
        self.kernel, self.names, self.rows = kernel, list(names), rows
        self.arrays = (table, list(buffers))  # owned here: Numba's views do not keep them
        self.sim = simulator()
        if self.sim:
            self.table = _in_place(table)
            self.buffers = [_in_place(b) for b in buffers]
            self.blocks, self.threads = min(rows, SIM_BLOCKS), SIM_THREADS
        else:
            from numba import cuda

            from .printer import _numba_stream
            self.table = cuda.as_cuda_array(table, sync=False)
            self.buffers = [cuda.as_cuda_array(b, sync=False) for b in buffers]
            blocks, self.threads = default_launch(1 << 62)
            self.blocks = max(1, min(rows, blocks))
            self.stream = _numba_stream(stream)
            kernel.prepare(self.table, self.buffers)

    def __call__(self) -> None:
        self.kernel.launch(self.table, self.buffers, self.blocks, self.threads,
                           None if self.sim else self.stream)

    def __repr__(self) -> str:
        return f"<multi-tensor update of {len(self.names)} arrays in {self.rows} rows>"


def chunk(total: int) -> int:
    """Elements per table row for a launch over `total` elements (see MIN_CHUNK)."""
    from .printer import DEVICE_THREADS, default_launch, simulator
    if simulator():
        return SIM_CHUNK
    blocks, _ = default_launch(1 << 62)  # every resident block of the device
    per = -(-max(total, 1) // blocks)
    per = -(-per // DEVICE_THREADS) * DEVICE_THREADS
    return max(MIN_CHUNK, min(MAX_CHUNK, per))


# --- addressing a group's arrays ---------------------------------------------------------
def _locate(arr, flats: list, rt):
    """(flat allocation index, byte offset) of a contiguous array inside one of `flats`
    ([(allocation, address, bytes)]), else None."""
    flags = getattr(arr, "flags", None)
    if flags is None or not flags.c_contiguous:
        return None
    addr, n = rt.address(arr), int(arr.nbytes)
    for idx, (_, start, size) in enumerate(flats):
        if start <= addr and addr + n <= start + size:
            return idx, addr - start
    return None


def group_launches(group: list, bp, buf: dict, flats: list, rt, stream=None) -> list:
    """The launches of one group, in order: ("multi", MultiTensorLaunch) for each run of
    members addressed in `flats` whose outputs overlap no other member's arrays, and
    ("single", kernel) for a member that cannot be addressed so (or whose outputs overlap
    its own inputs other than element for element)."""
    plan, shapes = bp.plan, bp.shapes
    param_of = {s: p for p, s in plan.updates}
    items, run = [], []

    def flush():
        if run:
            items.append(("multi", _launch(run, flats, rt, param_of, stream)))
            run.clear()

    for k in group:
        expr = _expr(k, plan, shapes)
        cols = []  # (flat index, byte offset, bytes, dtype, is scalar, is output)
        n = math.prod(expr.shape)
        for (s, shape), dt in zip(expr.inputs, expr.input_dtypes):
            cols.append((s, dt, math.prod(shape) == 1 and n != 1, False))
        for s, j in expr.outputs:
            cols.append((s, expr.instrs[j].dtype, False, True))
        placed = []
        for s, dt, scalar, out in cols:
            arr = buf[s]
            loc = _locate(arr, flats, rt)
            if loc is None or np.dtype(arr.dtype) != np.dtype(dt) or \
                    loc[1] % np.dtype(dt).itemsize:
                placed = None
                break
            placed.append((loc[0], loc[1], int(arr.nbytes), np.dtype(dt), scalar, out))
        if placed is None or _self_overlap(placed):
            flush()
            items.append(("single", k))
            continue
        if any(_overlaps(placed, other) for _, _, other in run):
            flush()  # in order: what the member overlaps is done with first
        run.append((k, expr, placed))
    flush()
    return items


def _ranges(placed, outputs: bool):
    return [(f, o, o + b) for f, o, b, _, _, out in placed if out == outputs]


def _overlaps(a, b) -> bool:
    """Whether a's outputs touch any of b's arrays or b's outputs any of a's."""
    def hit(xs, ys):
        return any(f == g and s < e2 and s2 < e for f, s, e in xs for g, s2, e2 in ys)
    every_a = _ranges(a, True) + _ranges(a, False)
    every_b = _ranges(b, True) + _ranges(b, False)
    return hit(_ranges(a, True), every_b) or hit(_ranges(b, True), every_a)


def _self_overlap(placed) -> bool:
    """An output touching an input of its own member other than exactly (element by
    element, as an in-place update), or another output."""
    outs = [(f, o, o + b) for f, o, b, _, _, out in placed if out]
    for i, (f, s, e) in enumerate(outs):
        for j, (g, s2, e2) in enumerate(outs):
            if i != j and f == g and s < e2 and s2 < e:
                return True
        for g, o, b, _, scalar, out in placed:
            if out or g != f or not (s < o + b and o < e):
                continue
            if scalar or (o, o + b) != (s, e):
                return True
    return False


def _launch(run: list, flats: list, rt, param_of: dict, stream) -> MultiTensorLaunch:
    """One MultiTensorLaunch for a run of members: its buffers, its table."""
    counts: dict = {}  # dtype str -> [flat indices], in order of first use
    for _, _, placed in run:
        for f, _, _, dt, _, _ in placed:
            used = counts.setdefault(dt.str, [])
            if f not in used:
                used.append(f)
    step = chunk(sum(math.prod(expr.shape) for _, expr, _ in run))
    rows = []
    for _, expr, placed in run:
        n = math.prod(expr.shape)
        for start in range(0, n, step):
            row = [min(step, n - start)]
            for f, off, _, dt, scalar, _ in placed:
                row += [counts[dt.str].index(f), off // dt.itemsize + (0 if scalar else start)]
            rows.append(row)
    table = np.ascontiguousarray(np.array(rows, np.int64))
    table = rt.from_host(table) if not rt.simulated else table
    buffers = []
    for dt, used in counts.items():
        dtype = np.dtype(dt)
        for f in used:
            flat, _, size = flats[f]
            buffers.append(flat[:size - size % dtype.itemsize].view(dtype))
    kernel = kernel_for(run[0][1], {dt: len(used) for dt, used in counts.items()})
    names = [param_of[s].name for _, expr, _ in run for s, _ in expr.outputs]
    return MultiTensorLaunch(kernel, table, buffers, len(rows), names, stream)
