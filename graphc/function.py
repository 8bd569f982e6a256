"""compile() and Function (Function stage): outputs, updates and an optimizer's step go
through the compiler passes and lowering into one Plan; a Function binds it per set of feed
shapes through the scheduler and runs what its backend compiled."""
from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np

from . import backends as _backends
from . import memory as _memory
from .errors import CompileError, ResourceError
from .feeds import Feeds
from .graph import Parameter, Tensor, flatten_structure, format_shape, same_graph
from .numerics import NumericsWatch
from .ops.common import lift
from .ops.elementwise import cast
from .ops.random import advance_counters
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


DEFAULT_BUCKET_BYTES = 25 * 2**20  # as torch DDP's bucket_cap_mb=25


def compile(outputs, updates: dict | None = None, optimizer=None, backend: str | None = None,
            optimize: bool = True, passes=None, check_numerics: bool = False,
            memory_limit=None, data_parallel=None,
            bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> "Function":  # noqa: A001
    """Compile outputs (tensor, list or dict), parameter updates and an optimizer's step into
    one plan; returns a callable Function. `optimize=False` skips the compiler passes;
    `passes=[...]` (names from graphc.passes.PASSES or callables, and "fuse" for kernel
    fusion) replaces the default list. `check_numerics=True` checks every kernel's results
    and raises NumericsError at the first NaN or Inf, leaving the parameters as they were.
    `memory_limit` (bytes, or "512M"; default $GRAPHC_MEMORY_LIMIT) caps what a bound plan
    may allocate: a plan that needs more raises ResourceError. `backend`: a registered
    name ("numpy", alias "cpu"), "auto", or None for gc.config.backend.

    `data_parallel=comm` (a gc.distributed communicator) averages the optimizer's gradients
    over the ranks inside the plan, between backward and the updates, in buckets of about
    `bucket_bytes` whose non-blocking allreduces start as soon as their last gradient is
    computed; the first call copies rank 0's parameters and optimizer state to every rank
    and checks that every rank compiled the same plan. Each rank gets its own loss back."""
    from . import config
    from .passes import DEFAULT_PASSES, Program, run_passes
    from .passes import simplify as _simplify
    requested = config.backend if backend is None else backend
    if data_parallel is not None:  # before resolving: the message is the same on any machine
        _check_backend(requested)
    backend = _backends.resolve(requested)
    if memory_limit is not None:
        memory_limit = _memory.parse_bytes(memory_limit)
    pipeline = tuple(passes) if passes is not None else (DEFAULT_PASSES if optimize else ())
    flat, rebuild = flatten_structure(outputs, "compile: outputs", CompileError)
    updates = dict(updates or {})
    all_tensors = flat + [k for k in updates if isinstance(k, Tensor)]
    if not all_tensors and optimizer is None:
        raise CompileError("compile: nothing to compute (no outputs and no updates)")
    if all_tensors:
        same_graph(all_tensors, "compile")
    if data_parallel is not None:
        _check_data_parallel(data_parallel, optimizer, backend)
    if optimizer is not None:
        loss = _loss_of(outputs, flat)
        if "simplify" in pipeline:  # differentiate the stable form, not the one as written
            loss = _simplify.run(Program((loss,))).outputs[0]
        stepped = optimizer.updates(loss)
        if data_parallel is not None:
            from .distributed.gradients import reduce_gradients
            stepped = reduce_gradients(loss, optimizer.params, stepped)
        for p, v in stepped.items():
            if p in updates:
                raise CompileError(f"compile: parameter '{p.name}' is updated both by "
                                   f"`updates` and by the optimizer")
            updates[p] = v
    advance_counters(flat, updates)
    pairs = _check_updates(updates, flat[0].graph if flat else None)
    # "fuse" names a scheduler option, not a graph pass: fusion happens when shapes bind
    graph_passes = [p for p in pipeline if p != "fuse"]
    program = run_passes(Program(tuple(flat), tuple(pairs)), graph_passes)
    plan = lower(list(program.outputs), list(program.updates))
    if data_parallel is not None:
        from .plan import make_buckets
        plan.buckets = make_buckets(plan, bucket_bytes)
        plan.comm = data_parallel
    _backends.check_supported(backend, plan.steps)
    fn = Function(plan, rebuild, backend, fuse=optimize and passes is None
                  or "fuse" in pipeline, check_numerics=check_numerics,
                  memory_limit=memory_limit, optimizer=optimizer)
    if optimizer is not None:
        optimizer.attach(fn, lambda outs, updates=None: compile(
            outs, updates=updates, backend=backend, optimize=optimize, passes=passes,
            check_numerics=check_numerics, memory_limit=memory_limit))
    return fn


def _check_data_parallel(comm, optimizer, backend: str) -> None:
    """CompileError unless data_parallel can run as asked."""
    from .distributed import Communicator
    if not isinstance(comm, Communicator):
        raise CompileError(f"compile: data_parallel must be a communicator from "
                           f"gc.distributed.mpi(), got {comm!r}")
    if optimizer is None:
        raise CompileError("compile: data_parallel averages an optimizer's gradients over "
                           "the ranks; pass optimizer= (for example gc.optim.SGD(lr=0.1))")
    from .optim import Optimizer
    if type(optimizer).attach is not Optimizer.attach:
        raise CompileError(f"compile: data_parallel does not support "
                           f"{type(optimizer).__name__} yet: it compiles steps of its own "
                           f"(a Hessian estimate) whose results are not averaged over ranks; "
                           f"use SGD, Adam, AdamW, RMSprop, Adagrad or Adadelta")
    _check_backend(backend)


def _check_backend(name: str) -> None:
    if name not in ("numpy", "cpu", "auto"):
        raise CompileError(f"compile: data_parallel runs on the CPU backend (\"numpy\") "
                           f"for now, not backend={name!r}: the GPU backend's allreduce "
                           f"(NCCL) is later work; compile with backend=\"numpy\"")


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


class Function:
    """A compiled step. Call with a dict {placeholder or name: array} or keywords.

    Calls are serialized by a lock shared by every Function of the graph: a Function owns
    one set of buffers and Functions of one graph share its parameters, so concurrent calls
    from several threads run one after another, each on consistent parameters."""

    def __init__(self, plan: Plan, rebuild, backend: str, fuse: bool = True,
                 check_numerics: bool = False, memory_limit: int | None = None,
                 optimizer=None):
        self.symbolic_plan = plan
        self.backend = backend
        self._backend = _backends.get(backend)
        self._fuse = fuse
        self.check_numerics = check_numerics
        self._memory_limit = memory_limit
        self._rebuild = rebuild
        self.graph = plan.nodes[0].graph if plan.nodes else None
        self._feeds = Feeds(plan, self.graph, self._backend.runtime.device)
        placeholders = self._feeds.placeholders
        self._dynamic = [i for i, ph in enumerate(placeholders) if None in ph.shape]
        self._compiled: dict = {}  # bound None sizes -> (bound plan, step function)
        self._watches: dict = {}  # id(step function) -> its NumericsWatch (check_numerics)
        self._last = None
        self._lock = _graph_lock(self.graph)
        self._updated = list(dict.fromkeys(p for p, _ in plan.updates))
        self._optimizer = optimizer
        self.aux_outputs = None  # what an optimizer's extra step returned (Sophia)
        self._epoch = None  # the graph's storage epoch the compiled entries were bound at
        self._synchronized = False

    @property
    def communicator(self):
        """The data-parallel communicator (compile(data_parallel=...)), or None."""
        return self.symbolic_plan.comm

    @property
    def buckets(self) -> list:
        """The gradient buckets of a data-parallel step (graphc.plan.Bucket), in the order
        their allreduces start; empty otherwise."""
        return list(self.symbolic_plan.buckets)

    def synchronize(self, root: int = 0) -> None:
        """Data parallel: check that every rank compiled the same plan (DistributedError on
        every rank naming the ranks and the first difference), then copy `root`'s
        parameters and optimizer state (everything the plan reads) to every rank. The first
        call does this; call it again after changing parameters on one rank only (such as a
        checkpoint loaded by rank 0). Every rank must call it."""
        comm = self.communicator
        if comm is None:
            raise CompileError("synchronize: this Function was not compiled with "
                               "data_parallel=")
        with self._lock:
            comm.check_same(self.symbolic_plan.fingerprint(), "plan")
            params = [p for p, _ in self.symbolic_plan.params]
            for p in params:
                self._backend.runtime.adopt(p)
            host = [np.ascontiguousarray(p.storage.host()) for p in params]
            sizes = [a.nbytes for a in host]
            flat = np.empty(sum(sizes), np.uint8)
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            if comm.rank == root:
                for a, o, n in zip(host, offsets, sizes):
                    flat[o:o + n] = a.reshape(-1).view(np.uint8)
            comm.broadcast(flat, root=root, what=f"broadcast of the parameters from rank {root}")
            if comm.rank != root:
                for p, a, o, n in zip(params, host, offsets, sizes):
                    p.storage.write(flat[o:o + n].view(a.dtype).reshape(a.shape))
            self._synchronized = True

    @property
    def plan(self):
        """The plan of the latest call (fused kernels, buffers, memory), or before any call
        the symbolic plan (one step per graph node, None dimensions unbound)."""
        return self._last[0] if self._last is not None else self.symbolic_plan

    def bound_plan(self, **feed_shapes):
        """The bound plan for the given placeholder shapes (by name), built if needed."""
        shapes = [tuple(feed_shapes[ph.name]) for ph in self._feeds.placeholders]
        return self._compiled_for(shapes)[0]

    # --- running -------------------------------------------------------------------------
    def _compiled_for(self, shapes: list):
        epoch = self.graph._storage_epoch if self.graph is not None else 0
        if epoch != self._epoch:  # a parameter moved to another runtime: bind again
            self._compiled.clear()
            self._watches.clear()
        key = tuple(shapes[i] for i in self._dynamic)
        entry = self._compiled.get(key)
        if entry is None:
            from .schedule import bind
            backend = self._backend
            feed_shapes = dict(zip(self._feeds.placeholders, shapes))
            bound = bind(self.symbolic_plan, feed_shapes, backend.caps, fuse=self._fuse)
            _memory.check_fits(bound, _memory.memory_limit(self._memory_limit), feed_shapes)
            watch = NumericsWatch(bound, backend.runtime) if self.check_numerics else None
            for p, _ in self.symbolic_plan.params:
                backend.runtime.adopt(p)
            try:
                run = backend.compile_bound(bound, watch=watch)
            except ResourceError:  # the backend's own: it says what was asked and is free
                raise
            except MemoryError as e:
                raise _memory.resource_error(bound, feed_shapes, f"the machine could not "
                                             f"allocate it ({type(e).__name__})") from e
            entry = (bound, run)
            self._compiled[key] = entry
            if watch is not None:
                self._watches[id(run)] = watch
            self._epoch = self.graph._storage_epoch if self.graph is not None else 0
        return entry

    def _run(self, entry, arrays: list):
        bound, run = entry
        watch = self._watches.get(id(run))
        try:
            if watch is None:
                return run(*arrays)
            return self._run_checked(run, watch, arrays)
        except ResourceError:
            raise
        except MemoryError as e:
            raise _memory.resource_error(
                bound, {ph: a.shape for ph, a in zip(self._feeds.placeholders, arrays)},
                f"an allocation failed while it ran ({type(e).__name__}); parameters may be "
                f"partly updated") from e

    def _run_checked(self, run, watch, arrays: list):
        """check_numerics: finite feeds and parameters in, every kernel checked, and the
        updated parameters restored if any check (or anything else) fails mid-step."""
        watch.check_inputs(self._feeds.placeholders, arrays,
                           [p for p, _ in self.symbolic_plan.params])
        saved = [(p.storage, p.storage.snapshot()) for p in self._updated]
        try:
            return run(*arrays)
        except BaseException:
            for storage, snapshot in saved:
                storage.restore(snapshot)
            raise

    def __call__(self, feeds: dict | None = None, /, *, to_numpy: bool = False, **kwargs):
        """Run one step. Results stay where the backend computed them (NumPy arrays on the
        CPU, device arrays on a GPU) unless `to_numpy=True`."""
        given = self._feeds.collect(feeds, kwargs)
        arrays = self._feeds.arrays(given)
        with self._lock:
            if not self._synchronized and self.symbolic_plan.comm is not None:
                self.synchronize()  # before binding: it may adopt parameters' storage
            entry = self._compiled_for([a.shape for a in arrays])
            self._feeds.check_indices(arrays, entry[0])
            self._last = entry
            outs = self._run(entry, arrays)
            if self._optimizer is not None:
                self._optimizer.after_step(self, dict(zip(self._feeds.placeholders, arrays)))
        if to_numpy:
            to_host = self._backend.runtime.to_host
            outs = [np.array(to_host(o), copy=False) for o in outs]
        return self._rebuild(list(outs))

    def __repr__(self) -> str:
        return (f"<graphc.Function backend={self.backend} "
                f"steps={len(self.symbolic_plan.steps)} "
                f"feeds={[ph.name for ph in self._feeds.placeholders]}>")
