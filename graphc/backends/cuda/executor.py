"""The CUDA backend's executor (backend stage): a bound plan becomes a fixed list of
launches over buffers carved from one device allocation made at bind time.

Feeds are copied into fixed device buffers (host arrays through staging buffers, pinned on a
device), every kernel, GEMM and update is one launch through the runtime, and that sequence
is captured once and replayed (`cuda_graph=True`), so a steady-state step allocates nothing
and, on a device, costs the feed copies and one graph launch. Fused groups are Numba CUDA kernels printed from the scheduler's
FusedExpr (printer.py); other ops use the hand-written kernels of graphc.kernels where one
exists and otherwise the op's NumPy-compatible reference on the runtime's arrays."""
from __future__ import annotations

import dataclasses
import functools
import sys

import numpy as np

from ...schedule.expr import build_expr
from ...schedule.kernel import COMPUTING, data_inputs


@functools.lru_cache(maxsize=None)
def _hand_written() -> tuple[dict, dict]:
    """(op name -> launcher, (op, op) -> pair launcher) from graphc.kernels (empty where
    numba.cuda does not import); built once, read for every op at compile time."""
    from ... import kernels
    try:
        return kernels.cuda_kernels()
    except ImportError:
        return {}, {}


class _Builder:
    """Buffers and launches for one bound plan."""

    def __init__(self, bound, runtime, watch=None, cuda_graph: bool = True,
                 multi_tensor: bool = True, align: int = 256):
        self.bp = bound
        self.rt = runtime
        self.watch = watch
        self.cuda_graph = cuda_graph and watch is None
        # check_numerics checks every kernel of the plan as scheduled: no regrouping then
        self.multi_tensor = multi_tensor and watch is None
        self.align = align
        self.groups: list = []  # multi-tensor update groups (lists of member kernels)
        self.buf: dict[int, object] = {}  # slot -> device array, fixed for the plan's life
        self.launches: list = []  # (kernel index or None, fn, args)
        # host values a captured graph bakes in (GEMM alphas): a new value captures again
        self.capture_keys: list = []
        self.kernels, self.pairs = _hand_written()

    # --- buffers -----------------------------------------------------------------------
    def _allocate(self) -> None:
        bp, mem, rt = self.bp, self.bp.memory, self.rt
        dtypes = [n.dtype for n in bp.plan.nodes]
        # the plan's parameters in parameter pools (flat allocations a multi-tensor update
        # addresses by offset); nothing moves if the pool cannot be allocated
        rt.pack([p for p, _ in bp.plan.params])
        arena = rt.empty((max(mem.arena_bytes, 1),), np.uint8,  # the one allocation
                         what="the plan's arena")
        self.arena = arena
        for s, off in mem.offsets.items():
            n = int(np.prod(bp.shapes[s], dtype=np.int64)) * dtypes[s].itemsize
            self.buf[s] = arena[off:off + n].view(dtypes[s]).reshape(tuple(bp.shapes[s]))
        for p, s in bp.plan.params:
            self.buf[s] = p.storage.array
        for s, p in mem.param_writes.items():
            self.buf[s] = p.storage.array
        self.consts = self._constants()
        self.feeds = []  # (staging host buffer, device buffer)
        for ph, s in bp.plan.feeds:
            shape = tuple(bp.shapes[s])
            self.buf[s] = rt.empty(shape, ph.dtype, what=f"feed '{ph.name}'")
            self.feeds.append((rt.staging(shape, ph.dtype), self.buf[s]))
        for s in mem.external:  # outputs computed by a kernel: their own buffers
            self.buf[s] = rt.empty(tuple(bp.shapes[s]), dtypes[s], what="an output")
        pools = {id(p.storage.pool): p.storage.pool for p, _ in bp.plan.params
                 if getattr(p.storage, "pool", None) is not None}
        # the flat allocations a multi-tensor update may address: (array, address, bytes)
        self.flats = [(a, rt.address(a), int(a.nbytes))
                      for a in [arena, self.consts] + list(pools.values())]

    def _constants(self):
        """The plan's constants and the values folded at bind time, carved from one
        allocation (the constant pool); returns it."""
        bp, rt = self.bp, self.rt
        values = [(s, np.asarray(c.value)) for c, s in bp.plan.consts]
        values += [(k.outputs[0], np.asarray(bp.folded[k.outputs[0]], bp.plan.nodes[
            k.outputs[0]].dtype)) for k in bp.kernels if k.kind == "const"]
        offsets, total = [], 0
        for _, v in values:
            offsets.append(total)
            total += -(-max(v.nbytes, 1) // self.align) * self.align
        pool = rt.empty((max(total, 1),), np.uint8, what="the plan's constants")
        for (s, v), off in zip(values, offsets):
            view = pool[off:off + v.nbytes].view(v.dtype).reshape(v.shape)
            rt.copy_from_host(v, view)
            self.buf[s] = view
        return pool

    # --- launches ----------------------------------------------------------------------
    def _add(self, i, fn, *args) -> None:
        self.launches.append((i, fn, args))

    def build(self):
        if self.multi_tensor:
            from .multi_tensor import regroup
            self.groups = regroup(self.bp, self.align)
        grouped = {id(k) for g in self.groups for k in g}
        self._allocate()
        stacked = self.bp.memory.stacked  # concats whose pieces were written in place
        for i, k in enumerate(self.bp.kernels):
            if k.outputs and k.outputs[0] in stacked:
                continue
            if id(k) not in grouped:  # group members: one launch per group, after the rest
                getattr(self, f"_{k.kind}")(i, k)
        self._multi_tensor()
        self._updates()
        return self._step()

    def _const(self, i, k):
        if k.outputs[0] not in self.buf:  # the constant pool holds every folded value
            self.buf[k.outputs[0]] = self.rt.from_host(self.bp.folded[k.outputs[0]])

    def _alias(self, i, k):
        self.buf[k.outputs[0]] = self.buf[k.inputs[0]]

    def _view(self, i, k):
        step = k.steps[0]
        fn = _reference(step, self.bp.shapes)
        src = self.buf[k.inputs[0]]
        view = fn(src)
        if self.rt.xp.shares_memory(view, src):  # a true view of a fixed buffer: made once
            self.buf[k.outputs[0]] = view
            return
        # A reshape of a strided view copies: the copy made here would hold this moment's
        # values for ever, so every step copies the source into a contiguous buffer of its
        # own, of which the reshape is a true view.
        staged = self.rt.empty(src.shape, src.dtype)
        self._add(i, self.rt.copy_into, src, staged)
        self.buf[k.outputs[0]] = fn(staged)

    def _fused(self, i, k):
        expr = build_expr(k, self.bp.plan, self.bp.shapes)
        epilogue = expr.epilogue
        main = dataclasses.replace(expr, epilogue=None)
        slots = [s for s, _ in main.inputs] + [s for s, _ in main.outputs] + \
            [r[0] for r in main.reductions]
        self._add_fused(i, main, slots)
        if epilogue is not None:
            slots = [s for s, _ in epilogue.inputs] + [s for s, _ in epilogue.outputs]
            self._add_fused(None, epilogue, slots)

    def _add_fused(self, i, expr, slots) -> None:
        from .printer import compile_fused
        kernel = compile_fused(expr, self.bp.written_over(expr))
        args = [self.buf[s] for s in slots]
        kernel.prepare(*args)  # scratch and machine code now: never inside a capture
        self._add(i, self._on_stream(kernel), *args)

    def _on_stream(self, kernel):
        """The kernel launched on the runtime's stream (the simulator has none)."""
        stream = self.rt.kernel_stream
        return kernel if stream is None else functools.partial(kernel, stream=stream)

    def _op(self, i, k):
        names = tuple(st.op.name for st in k.steps)
        if len(k.steps) == 2 and names in self.pairs:
            args = [self.buf[s] for s in k.inputs] + [self.buf[s] for s in k.outputs]
            self._add(i, self._on_stream(self.pairs[names]), *args)
            return
        for st in k.steps:  # a pair without a pair kernel runs as its two ops
            ins = [self.buf[s] for s in data_inputs(st)]
            out = self.buf[st.slot]
            if st.op.name == "matmul" and all(len(self.bp.shapes[s]) >= 2 for s in st.inputs):
                self._add(i, self.rt.matmul, *ins, out)
            elif st.op.name in self.kernels:
                kernel = self.kernels[st.op.name]
                attrs = dict(st.node.attrs)
                if hasattr(kernel, "prepare"):  # GEMMs and scratch through the runtime,
                    attrs["runtime"] = self.rt  # the scratch allocated now, not in a step
                    kernel.prepare(*ins, out=out, **attrs)
                launcher = self._on_stream(kernel)
                fn = functools.partial(launcher, **attrs) if attrs else launcher
                self._add(i, _into(fn), tuple(ins), out)
            else:
                self._add(i, _generic(st, self.bp.shapes, self.rt), tuple(ins), out)

    def _gemm(self, i, k):
        """W = W - lr * (A @ B) as one GEMM with alpha = -lr, beta = 1."""
        a, b, lr, w = k.inputs
        lr_param = next((p for p, s in self.bp.plan.params if s == lr), None)
        lr_value = (lambda: -lr_param.storage.host_scalar()) if lr_param is not None and \
            hasattr(lr_param.storage, "host_scalar") else \
            (lambda: -float(self.rt.to_host(self.buf[lr])))
        out = self.buf[k.outputs[0]]
        gemm = self.rt.gemm_update
        self.capture_keys.append(lr_value)
        a_arr, b_arr = self.buf[a], self.buf[b]
        if k.transpose_operands:  # W - lr * (A @ B)^T = W - lr * B^T @ A^T
            a_arr, b_arr = b_arr.T, a_arr.T
        self._add(i, lambda a_, b_, w_, o_: gemm(a_, b_, lr_value(), w_, o_),
                  a_arr, b_arr, self.buf[w], out)

    def _multi_tensor(self) -> None:
        """One launch per group of updates of one rule (multi_tensor.py); a member whose
        arrays the table cannot address runs as its own fused kernel, in order."""
        from .multi_tensor import group_launches
        position = {id(k): i for i, k in enumerate(self.bp.kernels)}
        for group in self.groups:
            for kind, item in group_launches(group, self.bp, self.buf, self.flats, self.rt,
                                             self.rt.kernel_stream):
                if kind == "multi":
                    self._add(None, item)
                else:
                    self._fused(position[id(item)], item)

    def _updates(self) -> None:
        """Updates not written in place: snapshot values that alias a parameter first (every
        right-hand side is an old value), then copy into the parameters."""
        bp, rt = self.bp, self.rt
        params = {s for _, s in bp.plan.params}
        pending = [(p, s) for p, s in bp.plan.updates if s not in bp.memory.param_writes]
        temps = {}
        for p, s in pending:
            if s in params or _shares_param(self.buf[s], bp):
                temps[s] = rt.empty(tuple(p.shape), p.dtype, what=f"the new '{p.name}'")
                self._add(None, rt.copy_into, self.buf[s], temps[s])
        for p, s in pending:
            self._add(None, rt.copy_into, temps.get(s, self.buf[s]), p.storage.array)

    # --- the step ----------------------------------------------------------------------
    def _step(self):
        bp, rt, watch = self.bp, self.rt, self.watch
        launches = self.launches
        kernels = bp.kernels
        outputs = [_canonical(bp, s) for s in bp.plan.outputs]
        recyclers = {s: _Recycler(rt, tuple(bp.shapes[s]), bp.plan.nodes[s].dtype)
                     for s in dict.fromkeys(outputs)}
        # 0-d parameters the plan writes (a step count): their host copies go stale
        written = [p.storage for p, _ in bp.plan.updates if p.ndim == 0]
        feeds = self.feeds

        def eager():
            for i, fn, args in launches:
                if watch is not None and i is not None and kernels[i].kind in COMPUTING:
                    k = kernels[i]
                    watch.before(i, tuple(self.buf[s] for s in k.inputs))
                    rt.launch(fn, *args)
                    watch.after(i, tuple(self.buf[s] for s in k.outputs))
                else:
                    rt.launch(fn, *args)

        graph = []  # the captured step, made at the first call
        unchecked = _unchecked_indices(bp.plan)
        updated = [p.storage for p, _ in bp.plan.updates] if unchecked else []

        def checked_indices(step):
            """Run `step()`; if a kernel met an index out of range that no pre-run check
            could see (one computed in the graph), restore the parameters and raise."""
            from ...errors import FeedError
            from ...kernels.indexing import take_index_error
            saved = [(st, st.snapshot()) for st in updated]
            step()
            bad = take_index_error(rt)
            if bad is None:
                return
            for st, snap in saved:
                st.restore(snap)
            names = ", ".join(sorted({f"{n.op.name}" + (f" made at {n.source}" if n.source
                                                         else "") for n in unchecked}))
            raise FeedError(f"index {bad} is out of range for the op reading it ({names}); "
                            f"the index was computed in the graph, so it could not be checked "
                            f"before the step; parameters are unchanged")

        def run(*arrays):
            # the output arrays first: a call that cannot allocate them changes nothing
            outs = [recyclers[s]() for s in outputs]
            # feeds go into fixed buffers, in stream order before the step: a host array
            # through its staging buffer, a device array by a device-to-device copy
            for (staging, device), a in zip(feeds, arrays):
                if hasattr(a, "__cuda_array_interface__") and not rt.simulated:
                    rt.copy_into(a, device)
                else:
                    rt.feed(a, staging, device)
            def step():
                if self.cuda_graph:
                    key = tuple(f() for f in self.capture_keys)
                    if not graph or graph[0][0] != key:  # host values baked into the graph
                        graph[:] = [(key, self._capture(eager))]
                    replay = graph[0][1]
                    if replay is None:
                        eager()
                    else:
                        replay.replay()
                else:
                    eager()

            with np.errstate(all="ignore"):
                if unchecked:
                    checked_indices(step)
                else:
                    step()
            for storage in written:
                storage.device_wrote()
            for s, out in zip(outputs, outs):
                rt.copy_into(self.buf[s], out)
            return tuple(outs)

        run.launches = launches
        run.arena = self.arena
        run.captured = graph
        return run

    def _capture(self, eager):
        """The step captured as a graph, or None (and a warning) where this device's
        libraries refuse capture: then it runs launch by launch."""
        try:
            return self.rt.capture(eager)
        except Exception as e:  # noqa: BLE001 - e.g. a library call that cannot be captured
            import warnings
            warnings.warn(f"graphc: the step could not be captured as a CUDA graph "
                          f"({type(e).__name__}: {e}); it runs launch by launch",
                          RuntimeWarning, stacklevel=4)
            self.rt.synchronize()
            return None  # a capture runs nothing: the caller runs this call's work eagerly


# ops whose kernels flag an out-of-range index (kernels/indexing.py) instead of reading it
_FLAGGING = ("gather", "scatter_add", "one_hot")


def _unchecked_indices(plan) -> list:
    """Nodes of flagging ops whose indices no pre-run feed check covers (computed in the
    graph): after a step that runs them the executor reads the index error flag."""
    from ...feeds import _index_checks
    covered = {id(c[1].node) for c in _index_checks(plan)}
    return [st.node for st in plan.steps
            if st.op.name in _FLAGGING and id(st.node) not in covered]


def _canonical(bp, slot):
    while slot in bp.aliased:
        slot = bp.aliased[slot]
    return slot


def _shares_param(array, bp) -> bool:
    base = getattr(array, "base", None)
    for p, _ in bp.plan.params:
        own = p.storage.array
        pool = getattr(p.storage, "pool", None)  # a view into a parameter pool
        if array is own or base is own or (base is not None and base is pool) or \
                (base is not None and base is getattr(own, "base", None)):
            return True
    return False


def _reference(step, shapes):
    """The op's reference with attributes and bound shape-only inputs baked in."""
    op, node = step.op, step.node
    consts = {j: tuple(shapes[s]) for j, s in enumerate(step.inputs) if j in op.shape_only}
    n_in = len(step.inputs)

    def fn(*data):
        it = iter(data)
        args = [consts[j] if j in consts else next(it) for j in range(n_in)]
        return op.reference(*args, **node.attrs)
    return fn


def _into(launcher):
    def run(ins, out):
        launcher(*ins, out=out)
    return run


def _generic(step, shapes, rt):
    """An op without a dedicated kernel: its NumPy-compatible reference on the runtime's
    arrays (CuPy dispatches NumPy's functions to the device), copied into place."""
    ref = _reference(step, shapes)
    xp = rt.xp

    def run(ins, out):
        xp.copyto(out, xp.asarray(ref(*ins)), casting="unsafe")
    return run


class _Recycler:
    """Output arrays for successive calls: one the caller has dropped is reused, so a
    steady-state step allocates nothing (a caching allocator, as on the CPU)."""

    def __init__(self, rt, shape, dtype, keep: int = 3):
        self.rt, self.shape, self.dtype, self.keep = rt, shape, dtype, keep
        self.pool: list = []

    def __call__(self):
        for arr in self.pool:
            if sys.getrefcount(arr) <= 3:  # the pool, the loop variable, the argument
                return arr
        arr = self.rt.empty(self.shape, self.dtype, what="an output array")
        if len(self.pool) < self.keep:
            self.pool.append(arr)
        return arr


def compile_bound(bound, runtime, watch=None, cuda_graph: bool = True,
                  multi_tensor: bool = True, align: int = 256):
    """run(*feeds) -> tuple of output arrays on the device (host arrays in the
    simulator); parameters are updated in their device storage. `multi_tensor`: the
    updates of one rule in one launch (multi_tensor.py; the bound plan's kernel order and
    memory plan are redone for it, with buffers aligned to `align` bytes)."""
    return _Builder(bound, runtime, watch, cuda_graph, multi_tensor, align).build()
