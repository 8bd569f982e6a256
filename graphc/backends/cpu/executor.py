"""The CPU backend's executor (backend stage): compiles a bound plan into one generated
straight-line function.

Every value a kernel writes lives in one preallocated arena (the memory plan); parameters
are updated in their own storage; views of fixed buffers are made once. A call walks no
graph, runs no loop over steps and, in steady state, allocates no array data (the outputs it
hands back are copies). Generated source names values only by slot number."""
from __future__ import annotations

import functools
import sys

import numpy as np

from ...schedule import BoundPlan
from ...schedule.expr import build_expr
from ...schedule.kernel import data_inputs
from . import blas, kernels, numba_printer, numpy_printer
from .conv_kernels import INTO as THREADED_OPS
from .kernels import INTO, PAIRS as _PAIR_KERNELS


def make_kernel(node, in_shapes: list):
    """The op's NumPy reference with attributes and bound shape-only inputs baked in: a
    callable over the data inputs that returns a new array (or a view)."""
    op = node.op
    ref = op.reference
    if op.shape_only:
        consts = {i: tuple(in_shapes[i]) for i in op.shape_only}
        n_in = len(node.inputs)
        attrs = node.attrs

        def kernel(*data):
            it = iter(data)
            args = [consts[i] if i in consts else next(it) for i in range(n_in)]
            return ref(*args, **attrs)
        return kernel
    if node.attrs:
        return functools.partial(ref, **node.attrs)
    return ref




def _into(step, shapes):
    """A callable f(*data_inputs, out=array) for a non-elementwise op."""
    node = step.node
    fast = INTO.get(node.op.name)
    if fast is not None:
        return functools.partial(fast, **node.attrs) if node.attrs else fast
    ref = make_kernel(node, [shapes[s] for s in step.inputs])

    def generic(*args, out):
        np.copyto(out, ref(*args), casting="unsafe")
    return generic


class _Builder:
    """Assembles the step function's source and namespace."""

    def __init__(self, bp: BoundPlan, watch=None):
        self.bp = bp
        self.watch = watch
        self.ns: dict = {"np": np}
        self.fixed: dict[int, np.ndarray] = {}  # slot -> array known at bind time
        self.lines: list[str] = []
        self.feed_slots = [s for _, s in bp.plan.feeds]

    def ref(self, slot: int) -> str:
        if slot in self.fixed:
            self.ns[f"b{slot}"] = self.fixed[slot]
            return f"b{slot}"
        return f"v{slot}"

    def build(self):
        bp, mem = self.bp, self.bp.memory
        arena = np.empty(max(mem.arena_bytes, 1), np.uint8)
        self.ns["ARENA"] = arena
        for p, s in bp.plan.params:
            self.fixed[s] = p.storage.array
        for c, s in bp.plan.consts:
            self.fixed[s] = c.value
        dtypes = [n.dtype for n in bp.plan.nodes]
        for s, off in mem.offsets.items():
            n = int(np.prod(bp.shapes[s], dtype=np.int64)) * dtypes[s].itemsize
            self.fixed[s] = arena[off:off + n].view(dtypes[s]).reshape(bp.shapes[s])
        for s, p in mem.param_writes.items():
            self.fixed[s] = p.storage.array
        for s, (out, index) in mem.placed.items():  # written through a strided view of
            self.fixed[s] = self.fixed[out][index]  # its scatter's output (sliced in place)
        args = ", ".join(f"v{s}" for s in self.feed_slots)
        self.lines.append(f"def run({args}):")
        # the plan's own kernels decide about NaN and Inf (check_numerics), not NumPy warnings
        if _runs_on_graphc_threads(bp):  # see blas.one_thread and kernels.bound_threads
            self.ns["ONE_BLAS_THREAD"] = blas.one_thread
            self.ns["BOUND_THREADS"] = kernels.bound_threads
            self.lines.append("  with np.errstate(all='ignore'), ONE_BLAS_THREAD(), "
                              "BOUND_THREADS():")
        else:
            self.lines.append("  with np.errstate(all='ignore'):")
        for s in sorted(mem.external):
            self.ns[f"OUT{s}"] = _recycler(bp.shapes[s], dtypes[s])
            self.lines.append(f"    v{s} = OUT{s}()")
        self.inflight: set[int] = set()  # buckets started and not yet waited for
        self.batch = _Batch()
        for i, k in enumerate(bp.kernels):
            if k.outputs and (k.outputs[0] in mem.stacked or k.outputs[0] in mem.sliced):
                continue  # its pieces were written in place
            if k.kind in ("view", "alias", "const"):
                if self.batch.touches(k.inputs):  # a view that copies reads the batch's output
                    self._flush()
                getattr(self, f"_{k.kind}")(i, k)
                continue
            if k.kind == "fused" and self.watch is None and not self.inflight:
                self._fused_batched(i, k)
                continue
            self._flush()
            computing = k.kind in ("fused", "op", "gemm")
            watched = self.watch is not None and computing
            if watched:
                self._watch("before", i, k.inputs)
            getattr(self, f"_{k.kind}")(i, k)
            if watched:
                self._watch("after", i, k.outputs)
            if computing and self.inflight:  # MPI moves a started bucket only inside MPI calls
                self.lines.append("    COMM.poll()")
        self._flush()
        self._updates()
        handed: set[int] = set()
        outs = ""
        for s in bp.plan.outputs:
            src = self._canonical(s)
            if src in mem.external and src not in handed:  # already the caller's own array
                handed.add(src)
                outs += f"{self.ref(src)}, "
            else:
                outs += f"{self.ref(s)}.copy(), "
        self.lines.append(f"    return ({outs})")
        source = "\n".join(self.lines) + "\n"
        exec(compile(source, "<graphc plan>", "exec"), self.ns)  # noqa: S102 - generated
        run = self.ns["run"]
        run.source = source
        run.arena = arena
        return run

    def _watch(self, when: str, i: int, slots) -> None:
        self.ns["WATCH"] = self.watch
        args = "".join(f"{self.ref(s)}, " for s in slots)
        self.lines.append(f"    WATCH.{when}({i}, ({args}))")

    def _canonical(self, slot):
        while slot in self.bp.aliased:
            slot = self.bp.aliased[slot]
        return slot

    def _const(self, i, k):
        self.fixed[k.outputs[0]] = self.bp.folded[k.outputs[0]]

    def _alias(self, i, k):
        src, out = k.inputs[0], k.outputs[0]
        if src in self.fixed:
            self.fixed[out] = self.fixed[src]
        else:
            self.lines.append(f"    v{out} = v{src}")

    def _view(self, i, k):
        step = k.steps[0]
        fn = make_kernel(step.node, [self.bp.shapes[s] for s in step.inputs])
        src, out = k.inputs[0], k.outputs[0]
        if src in self.fixed:
            view = fn(self.fixed[src])
            if np.shares_memory(view, self.fixed[src]):  # a true view: make it once
                self.fixed[out] = view
                return
        self.ns[f"V{out}"] = fn
        self.lines.append(f"    v{out} = V{out}({self.ref(src)})")

    def _op(self, i, k):
        if len(k.steps) == 2:  # a pair kernel (see schedule.fusion)
            self.ns[f"K{i}"] = _PAIR_KERNELS[tuple(st.op.name for st in k.steps)]
            args = [self.ref(s) for s in k.inputs] + [self.ref(s) for s in k.outputs]
            self.lines.append(f"    K{i}({', '.join(args)})")
            return
        step = k.steps[0]
        self.ns[f"K{i}"] = _into(step, self.bp.shapes)
        ins = "".join(f"{self.ref(s)}, " for s in data_inputs(step))
        self.lines.append(f"    K{i}({ins}out={self.ref(step.slot)})")

    def _fused(self, i, k):
        slots, epi_slots, _ = self._compile_fused(i, k)
        self._emit_fused(i, slots, epi_slots)

    def _compile_fused(self, i, k):
        """F{i} (and E{i}, its epilogue) in the namespace; (slots F{i} takes, E{i}'s or
        None, how many of F{i}'s slots are inputs)."""
        expr = build_expr(k, self.bp.plan, self.bp.shapes)
        mem = self.bp.memory
        aliased = {j for j, (s, _) in enumerate(expr.outputs)
                   if s in mem.inplace or s in mem.param_writes}
        outs = [s for s, _ in expr.outputs]
        if numba_printer.suits(expr):  # loads before stores per element: in-place is safe
            # pieces sliced in place: written through contiguous rows of their parent
            windows = {}
            for j, s in enumerate(outs):
                if s in mem.placed:
                    parent, index = mem.placed[s]
                    w = numba_printer.window(self.fixed[s], self.fixed[parent], index,
                                             expr.shape)
                    if w is not None:
                        windows[j] = w
                        outs[j] = parent
            extra = {"windows": windows} if windows else {}
            fixed = [self.fixed.get(s) for s, _ in expr.inputs]
            if any(isinstance(a, np.ndarray) and not a.flags.c_contiguous for a in fixed):
                extra["inputs"] = fixed  # strided views: read through flat arrays
            self.ns[f"F{i}"] = numba_printer.compile_numba(expr, self.bp.written_over(expr),
                                                           **extra)
        else:  # ufuncs with out= take strided views as they are
            self.ns[f"F{i}"] = numpy_printer.compile_numpy(expr, aliased)
        slots = [s for s, _ in expr.inputs] + outs + [r[0] for r in expr.reductions]
        epi = expr.epilogue
        if epi is None:
            return slots, None, len(expr.inputs)
        # elementwise work on the reductions' results, right after
        epi_aliased = {j for j, (s, _) in enumerate(epi.outputs) if s in mem.param_writes}
        self.ns[f"E{i}"] = numpy_printer.compile_numpy(epi, epi_aliased)
        return slots, [s for s, _ in epi.inputs] + [s for s, _ in epi.outputs], len(expr.inputs)

    def _emit_fused(self, i, slots, epi_slots) -> None:
        self.lines.append(f"    F{i}({', '.join(self.ref(s) for s in slots)})")
        if epi_slots is not None:
            self.lines.append(f"    E{i}({', '.join(self.ref(s) for s in epi_slots)})")

    def _fused_batched(self, i, k) -> None:
        """Compile fused kernel i; a state update over fixed arrays joins the batch of
        updates (see _Batch), any other kernel is emitted after the batch."""
        slots, epi_slots, n_in = self._compile_fused(i, k)
        fn = self.ns[f"F{i}"]
        size = getattr(fn, "update_size", 0)
        if (epi_slots is not None or size < BATCH_MIN_ELEMENTS
                or any(s not in self.fixed for s in slots)):
            self._flush()
            self._emit_fused(i, slots, epi_slots)
            return
        arrays = [self.fixed[s] for s in slots]
        spans = [_span(a) for a in arrays]
        reads, writes = spans[:n_in], spans[n_in:]  # its outputs: written over inputs
        if not self.batch.independent(reads, writes):
            self._flush()
        self.batch.add(i, fn, arrays, slots, reads, writes, size)

    def _flush(self) -> None:
        """Emit the pending batch: one kernel as itself, several as one call that runs
        them on graphc's threads."""
        batch, self.batch = self.batch, _Batch()
        if not batch.members:
            return
        if len(batch.members) == 1 or batch.elements < numba_printer.PARALLEL_MIN_ELEMENTS:
            for i, _, _, slots in batch.members:
                self._emit_fused(i, slots, None)
            return
        j = batch.members[0][0]
        self.ns[f"B{j}"] = batch.runner()
        self.lines.append(f"    B{j}()")

    def _gemm(self, i, k):
        """W = W - lr * (A @ B) as one GEMM with alpha = -lr, beta = 1 (see fuse_gemm_updates)."""
        a, b, lr, w = (self.ref(s) for s in k.inputs)
        if k.transpose_operands:  # W - lr * (A @ B)^T = W - lr * B^T @ A^T
            a, b = f"{b}.T", f"{a}.T"
        out = self.ref(k.outputs[0])
        self.ns[f"G{i}"] = _gemm_update(blas.gemm(self.bp.plan.nodes[k.outputs[0]].dtype))
        self.lines.append(f"    G{i}({a}, {b}, {lr}, {w}, {out})")

    def _allreduce_start(self, i, k):
        """Pack the bucket's gradients into its flat buffer (in the arena; those the memory
        plan computed there already stay), start its non-blocking allreduce."""
        b, arena = k.bucket, self.ns["ARENA"]
        off = self.bp.memory.buckets[b.index]
        flat = arena[off:off + b.nbytes].view(b.dtype)
        self.ns["COMM"] = self.bp.plan.comm
        self.ns[f"FLAT{b.index}"] = flat
        self.ns[f"WHAT{b.index}"] = (f"allreduce of bucket {b.index} "
                                     f"({len(b.grads)} gradient(s): {', '.join(b.names)})")
        grads = [st.inputs[0] for st in k.steps]  # bound (canonical) slots, in bucket order
        for j, (g, o, n) in enumerate(zip(grads, b.offsets, b.sizes)):
            if self.bp.memory.offsets.get(g) == off + o * b.dtype.itemsize:
                continue  # computed in its place in the flat buffer already
            self.ns[f"PK{b.index}_{j}"] = flat[o:o + n].reshape(self.bp.shapes[g])
            self.lines.append(f"    np.copyto(PK{b.index}_{j}, {self.ref(g)})")
        self.lines.append(f"    Q{b.index} = COMM.start_allreduce_mean(FLAT{b.index}, "
                          f"WHAT{b.index})")
        self.inflight.add(b.index)

    def _allreduce_wait(self, i, k):
        """Wait (bounded) for the bucket's allreduce: its means are views of the flat
        buffer, made once from the memory plan."""
        self.lines.append(f"    COMM.wait(Q{k.bucket.index})")
        self.inflight.discard(k.bucket.index)

    def _updates(self):
        """Updates not written in place: snapshot values that alias a parameter first (so
        every right-hand side is an old value), then copy into the parameters."""
        bp = self.bp
        params = {s for _, s in bp.plan.params}
        pending = [(p, s) for p, s in bp.plan.updates if s not in bp.memory.param_writes]
        for j, (p, s) in enumerate(pending):
            if s in params or self._is_param_view(s):
                self.ns[f"T{j}"] = np.empty(p.shape, p.dtype)
                self.lines.append(f"    np.copyto(T{j}, {self.ref(s)})")
        for j, (p, s) in enumerate(pending):
            self.ns[f"P{j}"] = p.storage.array
            src = f"T{j}" if f"T{j}" in self.ns else self.ref(s)
            self.lines.append(f"    np.copyto(P{j}, {src})")

    def _is_param_view(self, slot) -> bool:
        arr = self.fixed.get(slot)
        return arr is not None and any(np.shares_memory(arr, p.storage.array)
                                       for p, _ in self.bp.plan.params)


# Many state updates in a row (an optimizer's, one per parameter tensor) each ran as a
# parallel loop of its own: a hand-off and a barrier per tensor, and the two threads of the
# project's 2-core machine moved 51 GB/s through Adam's 100 updates of 1M floats. As one
# batch whose tensors the calling thread and the helpers take in turn (kernels.run_chunks;
# a tensor bigger than its share split into row ranges), the same updates move 56-60 GB/s,
# the machine's DRAM bandwidth; torch's fused Adam: 60. Updates of at least this many
# elements join a batch; a batch of fewer than numba_printer.PARALLEL_MIN_ELEMENTS stays
# serial.
BATCH_MIN_ELEMENTS = 1 << 15


class _Batch:
    """Consecutive state updates over fixed arrays, no one reading or writing what another
    writes (checked on the arrays' byte ranges)."""

    def __init__(self):
        self.members: list = []  # (kernel index, kernel, arrays, slots)
        self.elements = 0
        self._read: list = []  # (start, end) byte ranges
        self._written: list = []
        self._slots: set = set()

    def touches(self, slots) -> bool:
        """Whether a member reads or writes any of these slots."""
        return any(s in self._slots for s in slots)

    def independent(self, reads, writes) -> bool:
        """Whether an update reading and writing these byte ranges (see _span) may join."""
        return not (_overlaps(writes, self._read) or _overlaps(writes, self._written)
                    or _overlaps(reads, self._written))

    def add(self, i, fn, arrays, slots, reads, writes, size) -> None:
        """Kernel i, fn(*arrays) over `slots`, reading and writing these byte ranges."""
        self.members.append((i, fn, arrays, slots))
        self.elements += size
        self._read += reads
        self._written += writes
        self._slots.update(slots)

    def runner(self):
        """B(): the batch's updates; the first call runs them one by one (each kernel's own
        first call loads or builds it), later ones on graphc's threads."""
        calls = [(fn, arrays) for _, fn, arrays, _ in self.members]
        share = max(self.elements // (2 * kernels.threads()), 1)
        tasks: list = []

        def run():
            if not tasks:
                for fn, arrays in calls:
                    fn(*arrays)
                for fn, arrays in calls:
                    tasks.extend(fn.tasks(*arrays, max_elements=share))
                return
            kernels.run_chunks(lambda c: tasks[c](), len(tasks))
        return run


def _span(a: np.ndarray) -> tuple:
    """(first byte, one past the last) of the memory a spans."""
    bounds = np.lib.array_utils.byte_bounds if hasattr(np.lib, "array_utils") else \
        np.byte_bounds  # NumPy < 2
    return bounds(a)


def _overlaps(spans, others) -> bool:
    """Whether any span meets any of the others (one vectorized test per span)."""
    if not spans or not others:
        return False
    o = np.array(others, dtype=np.uint64)
    return any(bool(np.any((lo < o[:, 1]) & (o[:, 0] < hi))) for lo, hi in spans)


def _runs_on_graphc_threads(bp: BoundPlan) -> bool:
    """Whether the step has kernels that run over chunks on graphc's threads (convolution
    and pooling, conv_kernels): then its products run on one BLAS thread (blas.one_thread)."""
    return any(k.kind == "op" and any(st.op.name in THREADED_OPS for st in k.steps)
               for k in bp.kernels)


def _gemm_update(gemm):
    def kernel(a, b, lr, w, out):
        if out is not w:  # not granted the parameter's storage: start from a copy
            np.copyto(out, w)
        gemm(a, b, out, -float(lr), 1.0)
    return kernel


def _recycler(shape, dtype, keep: int = 3):
    """Output arrays for successive calls: an earlier one is reused once the caller has let
    go of it (a caching allocator: no fresh pages, hence no page faults, per call). Up to
    `keep` arrays are remembered, so a caller holding the last result still gets reuse."""
    pool: list = []

    def fetch():
        for arr in pool:
            # references: the pool, the loop variable, getrefcount's argument
            if sys.getrefcount(arr) <= 3:
                return arr
        arr = np.empty(shape, dtype)
        if len(pool) < keep:
            pool.append(arr)
        return arr
    return fetch


def compile_bound(bp: BoundPlan, watch=None):
    """run(*feeds) -> tuple of output copies; parameters are updated in their storage.
    `watch` (for check_numerics): an object whose before(i, inputs) and after(i, outputs)
    are called around every computing kernel i of bp.kernels with its input/output arrays."""
    return _Builder(bp, watch).build()
