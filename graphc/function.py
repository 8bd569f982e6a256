"""compile(): outputs, updates and an optimizer become one Plan; a Function runs it."""
from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from . import backends as _backends
from . import dtypes as _dt
from . import memory as _memory
from .errors import CompileError, FeedError, ResourceError
from .graph import (Parameter, Placeholder, Tensor, flatten_structure, format_shape,
                    same_graph)
from .numerics import NumericsWatch
from .ops.common import lift
from .ops.elementwise import cast
from .plan import Plan, lower


def _loss_of(outputs: Any, flat: list) -> Tensor:
    """The output an optimizer minimizes: the tensor, the first of a list, or dict['loss']."""
    if isinstance(outputs, dict) and "loss" in outputs:
        return outputs["loss"]
    if not flat:
        raise CompileError("compile: an optimizer needs a scalar loss among the outputs")
    return flat[0]


def _check_updates(updates: dict, graph) -> list:
    pairs = []
    for p, value in updates.items():
        if not isinstance(p, Parameter):
            what = p.describe() if isinstance(p, Tensor) else repr(p)
            raise CompileError(f"compile: updates keys must be parameters, got {what}")
        value = lift(value, like=p)
        if value.graph is not p.graph:
            raise CompileError(f"compile: the update of '{p.name}' comes from another graph")
        if len(value.shape) != len(p.shape) or any(
                v is not None and v != s for v, s in zip(value.shape, p.shape)):
            raise CompileError(f"compile: the update of parameter '{p.name}' has shape "
                               f"{format_shape(value.shape)} but the parameter has shape "
                               f"{format_shape(p.shape)} (update made at {value.source})")
        if value.dtype != p.dtype:
            value = cast(value, p.dtype)
        pairs.append((p, value))
    return pairs


def _advance_random_streams(flat: list, updates: dict) -> None:
    """A step that draws random numbers advances its graph's counter by one per call."""
    from .graph import topo_order
    values = [v for v in updates.values() if isinstance(v, Tensor)]
    for node in topo_order(flat + values):
        if node.op.name == "random_uniform":
            counter = node.inputs[0]
            if counter not in updates:
                updates[counter] = counter + 1
            return


def compile(outputs, updates: dict | None = None, optimizer=None, backend: str = "numpy",
            optimize: bool = True, passes=None, check_numerics: bool = False,
            memory_limit=None) -> "Function":  # noqa: A001
    """Compile outputs (tensor, list or dict), parameter updates and an optimizer's step into
    one plan; returns a callable Function. `optimize=False` skips the compiler passes;
    `passes=[...]` (names from graphc.passes.PASSES or callables, and "fuse" for kernel
    fusion) replaces the default list. `check_numerics=True` checks every kernel's results
    and raises NumericsError at the first NaN or Inf, leaving the parameters as they were.
    `memory_limit` (bytes, or "512M"; default $GRAPHC_MEMORY_LIMIT) caps what a bound plan
    may allocate: a plan that needs more raises ResourceError."""
    from .passes import DEFAULT_PASSES, Program, run_passes
    from .passes import simplify as _simplify
    backend = _backends.resolve(backend)
    if memory_limit is not None:
        memory_limit = _memory.parse_bytes(memory_limit)
    pipeline = tuple(passes) if passes is not None else (DEFAULT_PASSES if optimize else ())
    flat, rebuild = flatten_structure(outputs, "compile: outputs", CompileError)
    for t in flat:
        if not isinstance(t, Tensor):
            raise CompileError(f"compile: outputs must be tensors, got {t!r}")
    updates = dict(updates or {})
    all_tensors = flat + [k for k in updates if isinstance(k, Tensor)]
    if not all_tensors and optimizer is None:
        raise CompileError("compile: nothing to compute (no outputs and no updates)")
    if all_tensors:
        same_graph(all_tensors, "compile")
    if optimizer is not None:
        loss = _loss_of(outputs, flat)
        if "simplify" in pipeline:  # differentiate the stable form, not the one as written
            loss = _simplify.run(Program((loss,))).outputs[0]
        for p, v in optimizer.updates(loss).items():
            if p in updates:
                raise CompileError(f"compile: parameter '{p.name}' is updated both by "
                                   f"`updates` and by the optimizer")
            updates[p] = v
    _advance_random_streams(flat, updates)
    pairs = _check_updates(updates, flat[0].graph if flat else None)
    graph_passes = [p for p in pipeline if p != "fuse"]  # fusion happens when shapes bind
    program = run_passes(Program(tuple(flat), tuple(pairs)), graph_passes)
    plan = lower(list(program.outputs), list(program.updates))
    _backends.check_supported(backend, plan.steps)
    fn = Function(plan, rebuild, backend, fuse=optimize and passes is None
                  or "fuse" in pipeline, check_numerics=check_numerics,
                  memory_limit=memory_limit)
    if optimizer is not None and hasattr(optimizer, "auxiliary"):
        aux_updates, aux_outputs, period = optimizer.auxiliary()
        fn._aux = (compile(aux_outputs, updates=aux_updates, backend=backend,
                           optimize=optimize, passes=passes, check_numerics=check_numerics,
                           memory_limit=memory_limit), period, optimizer)
    return fn


_GRAPH_LOCKS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_GRAPH_LOCKS_GUARD = threading.Lock()


def _graph_lock(graph) -> threading.RLock:
    """One lock per graph, shared by all its Functions: they share parameters, so a step
    and an evaluation from two threads must not interleave (reentrant: Sophia's step calls
    its auxiliary Function)."""
    if graph is None:
        return threading.RLock()
    with _GRAPH_LOCKS_GUARD:
        lock = _GRAPH_LOCKS.get(graph)
        if lock is None:
            lock = _GRAPH_LOCKS[graph] = threading.RLock()
        return lock


_VALUE_PRESERVING = {"reshape", "reshape_like", "transpose", "expand_dims", "cast"}


def _index_checks(plan: Plan) -> list:
    """[(feed position, step, count(shapes, attrs), noun)] for every op reading integer
    indices (OpDef.indices) that come straight from a placeholder (through reshapes and
    integer casts), so a call can check their range before anything runs."""
    position = {ph: i for i, (ph, _) in enumerate(plan.feeds)}
    checks, seen = [], set()
    for step in plan.steps:
        if step.op.indices is None:
            continue
        k, count, noun = step.op.indices
        src = step.node.inputs[k]
        while src.op.name in _VALUE_PRESERVING and src.inputs and src.dtype.kind in "iu" \
                and src.inputs[0].dtype.kind in "iu":
            src = src.inputs[0]
        if src in position and (src, step.op.name) not in seen:
            seen.add((src, step.op.name))
            checks.append((position[src], step, count, noun))
    return checks


class Function:
    """A compiled step. Call with a dict {placeholder or name: array} or keywords.

    Calls are serialized by a lock shared by every Function of the graph: a Function owns
    one set of buffers and Functions of one graph share its parameters, so concurrent calls
    from several threads run one after another, each on consistent parameters."""

    def __init__(self, plan: Plan, rebuild, backend: str, fuse: bool = True,
                 check_numerics: bool = False, memory_limit: int | None = None):
        self.symbolic_plan = plan
        self.backend = backend
        self._fuse = fuse
        self.check_numerics = check_numerics
        self._memory_limit = memory_limit
        self._rebuild = rebuild
        self._feeds = [ph for ph, _ in plan.feeds]
        self._by_name = {ph.name: ph for ph in self._feeds}
        self.graph = plan.nodes[0].graph if plan.nodes else None
        self._graph_names = self.graph._names if self.graph is not None else {}
        self._dynamic = [i for i, ph in enumerate(self._feeds) if None in ph.shape]
        self._compiled: dict = {}  # bound None sizes -> (bound plan, step function)
        self._watches: dict = {}  # id(step function) -> its NumericsWatch (check_numerics)
        self._last = None
        self._lock = _graph_lock(self.graph)
        self._index_checks = _index_checks(plan)
        self._updated = list(dict.fromkeys(p for p, _ in plan.updates))
        self._aux = None  # (Function, period, optimizer): see Sophia
        self.aux_outputs = None

    @property
    def plan(self):
        """The plan of the latest call (fused kernels, buffers, memory), or before any call
        the symbolic plan (one step per graph node, None dimensions unbound)."""
        return self._last[0] if self._last is not None else self.symbolic_plan

    def bound_plan(self, **feed_shapes):
        """The bound plan for the given placeholder shapes (by name), built if needed."""
        arrays = [np.empty(feed_shapes[ph.name], ph.dtype) for ph in self._feeds]
        return self._compiled_for(arrays)[0]
    # --- feeds ---------------------------------------------------------------------------
    def _collect(self, feeds, kwargs) -> dict:
        given: dict = {}
        items = list((feeds or {}).items()) + list(kwargs.items())
        for key, value in items:
            ph = self._lookup(key)
            if ph is None:
                continue  # a placeholder of the graph this step does not need
            if ph in given:
                raise FeedError(f"placeholder '{ph.name}' is fed twice")
            given[ph] = value
        missing = [ph.name for ph in self._feeds if ph not in given]
        if missing:
            raise FeedError(f"missing feed for placeholder(s) {', '.join(map(repr, missing))}; "
                            f"this function needs {[ph.name for ph in self._feeds]}")
        return given

    def _lookup(self, key):
        if isinstance(key, Tensor):
            if not isinstance(key, Placeholder):
                raise FeedError(f"only placeholders can be fed, got {key.describe()}")
            if key in self._feeds:
                return key
            if key.name in self._graph_names and self._graph_names[key.name] is key:
                return None
            raise FeedError(f"placeholder '{key.name}' belongs to another graph")
        if isinstance(key, str):
            if key in self._by_name:
                return self._by_name[key]
            if isinstance(self._graph_names.get(key), Placeholder):
                return None
            raise FeedError(f"unknown placeholder {key!r}; this function takes "
                            f"{sorted(self._by_name)}")
        raise FeedError(f"feed keys must be placeholders or their names, got {key!r}")

    @staticmethod
    def _convert(ph: Placeholder, value) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype != ph.dtype:
            if not _dt.can_feed(arr.dtype, ph.dtype):
                raise FeedError(f"placeholder '{ph.name}' is {ph.dtype}; cannot convert fed "
                                f"dtype {arr.dtype} safely (cast it explicitly)")
            if ph.dtype.kind in "iu" and arr.dtype.kind in "iu" and arr.size:
                info = np.iinfo(ph.dtype)
                if arr.min() < info.min or arr.max() > info.max:
                    raise FeedError(f"placeholder '{ph.name}' is {ph.dtype}; fed values "
                                    f"[{arr.min()}, {arr.max()}] do not fit")
            arr = arr.astype(ph.dtype)
        if arr.ndim != len(ph.shape) or any(
                d is not None and d != a for d, a in zip(ph.shape, arr.shape)):
            raise FeedError(f"placeholder '{ph.name}' expects shape {format_shape(ph.shape)}, "
                            f"got {format_shape(arr.shape)}")
        return arr

    # --- running -------------------------------------------------------------------------
    def _check_indices(self, arrays: list, bound) -> None:
        """FeedError before anything runs if fed labels or indices are out of range."""
        for pos, step, count, noun in self._index_checks:
            n = count([bound.shapes[s] for s in step.inputs], step.node.attrs)
            ids = arrays[pos]
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                bad = ids[(ids < 0) | (ids >= n)]
                where = f" made at {step.node.source}" if step.node.source else ""
                word = "label" if noun == "classes" else "index"
                raise FeedError(f"placeholder '{self._feeds[pos].name}': {word} {bad.flat[0]} is "
                                f"out of range for {n} {noun} ({bad.size} value(s) outside "
                                f"[0, {n}); fed range [{ids.min()}, {ids.max()}]), read by "
                                f"{step.op.name}{where}")

    def _compiled_for(self, arrays: list):
        key = tuple(arrays[i].shape for i in self._dynamic)
        entry = self._compiled.get(key)
        if entry is None:
            from .backends import numpy as backend
            from .plan import bind
            shapes = {ph: a.shape for ph, a in zip(self._feeds, arrays)}
            bound = bind(self.symbolic_plan, shapes, fuse=self._fuse, pairs=backend.PAIRS,
                         gemm_update=backend.gemm_update())
            _memory.check_fits(bound, _memory.memory_limit(self._memory_limit), shapes)
            watch = NumericsWatch(bound) if self.check_numerics else None
            try:
                run = backend.compile_bound(bound, watch=watch)
            except MemoryError as e:
                raise _memory.resource_error(bound, shapes, f"the machine could not "
                                             f"allocate it ({type(e).__name__})") from e
            entry = (bound, run)
            self._compiled[key] = entry
            if watch is not None:
                self._watches[id(run)] = watch
        return entry

    def _run(self, entry, arrays: list):
        bound, run = entry
        watch = self._watches.get(id(run))
        try:
            with np.errstate(all="ignore"):
                if watch is None:
                    return run(*arrays)
                return self._run_checked(run, watch, arrays)
        except ResourceError:
            raise
        except MemoryError as e:
            raise _memory.resource_error(
                bound, {ph: a.shape for ph, a in zip(self._feeds, arrays)},
                f"an allocation failed while it ran ({type(e).__name__}); parameters may be "
                f"partly updated") from e

    def _run_checked(self, run, watch, arrays: list):
        """check_numerics: finite feeds and parameters in, every kernel checked, and the
        updated parameters restored if any check (or anything else) fails mid-step."""
        watch.check_inputs(self._feeds, arrays, [p for p, _ in self.symbolic_plan.params])
        saved = [(p._value, p._value.copy()) for p in self._updated]
        try:
            return run(*arrays)
        except BaseException:
            for target, value in saved:
                np.copyto(target, value)
            raise

    def __call__(self, feeds: dict | None = None, /, **kwargs):
        given = self._collect(feeds, kwargs)
        arrays = [self._convert(ph, given[ph]) for ph in self._feeds]
        with self._lock:
            entry = self._compiled_for(arrays)
            self._check_indices(arrays, entry[0])
            self._last = entry
            outs = self._run(entry, arrays)
            if self._aux is not None:  # an optimizer's periodic extra step (Sophia's Hessian)
                aux, period, opt = self._aux
                if opt.step_count % period == 0:
                    self.aux_outputs = aux({ph: a for ph, a in zip(self._feeds, arrays)})
        return self._rebuild(list(outs))

    def __repr__(self) -> str:
        return (f"<graphc.Function backend={self.backend} "
                f"steps={len(self.symbolic_plan.steps)} "
                f"feeds={[ph.name for ph in self._feeds]}>")
