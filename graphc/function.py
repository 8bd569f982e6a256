"""compile(): outputs, updates and an optimizer become one Plan; a Function runs it."""
from __future__ import annotations

from typing import Any

import numpy as np

from . import dtypes as _dt
from .errors import CompileError, FeedError
from .graph import Parameter, Placeholder, Tensor, format_shape, same_graph
from .ops.common import lift
from .ops.elementwise import cast
from .plan import Plan, lower

BACKENDS = ("numpy",)


def _flatten_outputs(outputs: Any):
    if isinstance(outputs, Tensor):
        return [outputs], lambda vs: vs[0]
    if isinstance(outputs, dict):
        keys = list(outputs)
        return [outputs[k] for k in keys], lambda vs: dict(zip(keys, vs))
    if isinstance(outputs, (list, tuple)):
        kind = type(outputs)
        return list(outputs), lambda vs: kind(vs)
    raise CompileError(f"compile: outputs must be a tensor, list, tuple or dict of tensors, "
                       f"got {type(outputs).__name__}")


def _loss_of(outputs: Any, flat: list) -> Tensor:
    """The output an optimizer minimizes: the tensor, the first of a list, or dict['loss']."""
    if isinstance(outputs, dict) and "loss" in outputs:
        return outputs["loss"]
    if not flat:
        raise CompileError("compile: an optimizer needs a scalar loss among the outputs")
    return flat[0]


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        return "numpy"
    if backend not in BACKENDS:
        raise CompileError(f"compile: unknown backend {backend!r}; available: "
                           f"{', '.join(BACKENDS)} (or 'auto')")
    return backend


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


def compile(outputs, updates: dict | None = None, optimizer=None, backend: str = "numpy"
            ) -> "Function":  # noqa: A001 - the public name the API asks for
    """Compile outputs (tensor, list or dict), parameter updates and an optimizer's step into
    one plan; returns a callable Function."""
    flat, rebuild = _flatten_outputs(outputs)
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
        for p, v in optimizer.updates(loss).items():
            if p in updates:
                raise CompileError(f"compile: parameter '{p.name}' is updated both by "
                                   f"`updates` and by the optimizer")
            updates[p] = v
    pairs = _check_updates(updates, flat[0].graph if flat else None)
    plan = lower(flat, pairs)
    return Function(plan, rebuild, _resolve_backend(backend))


class Function:
    """A compiled step. Call with a dict {placeholder or name: array} or keywords."""

    def __init__(self, plan: Plan, rebuild, backend: str):
        self.plan = plan
        self.backend = backend
        self._rebuild = rebuild
        self._feeds = [ph for ph, _ in plan.feeds]
        self._by_name = {ph.name: ph for ph in self._feeds}
        self._graph_names = plan.nodes[0].graph._names if plan.nodes else {}
        self._params = [p for p, _ in plan.params]
        self._consts = [c.value for c, _ in plan.consts]
        self._dynamic = [i for i, ph in enumerate(self._feeds) if None in ph.shape]
        self._compiled: dict = {}  # bound None sizes -> compiled step
        # Values that may alias a feed, a parameter or each other are copied before they
        # are handed out or stored; everything else a step computes is fresh.
        leaves = {s for s, n in enumerate(plan.nodes) if not n.inputs}
        shared = set(plan.outputs) & {s for _, s in plan.updates}
        self._copy_output = [s in leaves or s in shared for s in plan.outputs]
        self._copy_update = [s in leaves or s in shared for _, s in plan.updates]

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
    def _compiled_for(self, arrays: list):
        key = tuple(arrays[i].shape for i in self._dynamic)
        run = self._compiled.get(key)
        if run is None:
            shapes = self.plan.bind({ph: a.shape for ph, a in zip(self._feeds, arrays)})
            from .backends import numpy as backend
            run = backend.compile_plan(self.plan, shapes)
            self._compiled[key] = run
        return run

    def __call__(self, feeds: dict | None = None, /, **kwargs):
        given = self._collect(feeds, kwargs)
        arrays = [self._convert(ph, given[ph]) for ph in self._feeds]
        run = self._compiled_for(arrays)
        params = [p._value for p in self._params]
        with np.errstate(all="ignore"):
            outs, new_values = run(arrays, params, self._consts)
        inputs = {id(a) for a in arrays} | {id(a) for a in params}
        for (p, _), v, copy in zip(self.plan.updates, new_values, self._copy_update):
            p._value = _owned(v, copy or id(v) in inputs)
        results = [_owned(v, copy or id(v) in inputs)
                   for v, copy in zip(outs, self._copy_output)]
        return self._rebuild(results)

    def __repr__(self) -> str:
        return (f"<graphc.Function backend={self.backend} steps={len(self.plan.steps)} "
                f"feeds={[ph.name for ph in self._feeds]}>")


def _owned(value, copy: bool) -> np.ndarray:
    """A writable array that aliases no feed, parameter or other result. Kernels return the
    dtype inference promised (tests check it), so nothing is cast here."""
    if copy or getattr(value, "base", None) is not None:
        return np.array(value, copy=True)
    return np.asarray(value)
