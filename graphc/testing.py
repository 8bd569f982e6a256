"""Test helpers (over every stage): float64 finite-difference checks of symbolic gradients."""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .autodiff import grad
from .errors import GraphcError
from .graph import (Constant, Graph, Parameter, Placeholder, Tensor, get_default_graph,
                    topo_order)
from .ops import apply, sum as _sum


class GradientCheckError(GraphcError, AssertionError):
    """Symbolic and finite-difference gradients disagree."""


def _f64(dtype):
    return np.dtype("float64") if _dt.is_float(dtype) else np.dtype(dtype)


def to_float64(roots: list) -> dict:
    """Rebuild the graph under `roots` in the current graph with every float as float64.
    Returns {id(old node): new node}."""
    new: dict[int, Tensor] = {}
    for n in topo_order(roots):
        if isinstance(n, Placeholder):
            from .graph import placeholder
            m = placeholder(n.name, n.shape, _f64(n.dtype))
        elif isinstance(n, Parameter):
            from .graph import parameter
            m = parameter(n.name, value=n.value, dtype=_f64(n.dtype), trainable=n.trainable)
        elif isinstance(n, Constant):
            m = Constant(get_default_graph(), n.value.astype(_f64(n.dtype)))
        else:
            attrs = dict(n.attrs)
            if "dtype" in attrs:
                attrs["dtype"] = _f64(attrs["dtype"]).name
            m = apply(n.op.name, [new[id(x)] for x in n.inputs], name=n.name, **attrs)
        new[id(n)] = m
    return new


def check_grads(y: Tensor, wrt, feed: dict, eps: float = 1e-6, rtol: float = 1e-5,
                atol: float = 1e-8, seed: int = 0) -> None:
    """Compare gc.grad(y, wrt) with central finite differences, all in float64.

    `wrt` holds placeholders or parameters; a non-scalar y is checked through a fixed random
    projection sum(y * w). Raises GradientCheckError naming the worst element."""
    from .function import compile as gc_compile
    wrt = [wrt] if isinstance(wrt, Tensor) else list(wrt)
    for x in wrt:
        if not isinstance(x, (Placeholder, Parameter)):
            raise GraphcError(f"check_grads: wrt must be placeholders or parameters, got "
                              f"{x.describe()}")
    named = {(k.name if isinstance(k, Tensor) else k): np.asarray(v) for k, v in feed.items()}
    with Graph("check_grads"):
        new = to_float64([y, *wrt])
        y64 = new[id(y)]
        feeds = {ph.name: named[ph.name].astype(_f64(named[ph.name].dtype))
                 for ph in topo_order([y64]) if isinstance(ph, Placeholder)}
        if y64.shape != ():
            concrete = np.shape(gc_compile(y64)(feeds))
            w = np.random.default_rng(seed).normal(size=concrete)
            y64 = _sum(y64 * w)
        xs64 = [new[id(x)] for x in wrt]
        grads = grad(y64, xs64)
        fn = gc_compile([y64, *grads])

    def value_of(x):
        return feeds[x.name] if isinstance(x, Placeholder) else x.value

    def put(x, value):  # a placeholder's feed is `value` itself; a parameter takes a copy
        if isinstance(x, Parameter):
            x.assign(value)

    def loss():
        return float(fn(feeds)[0])

    analytic = fn(feeds)[1:]
    worst = None
    for x, a in zip(xs64, analytic):
        base = value_of(x)
        numeric = np.zeros(base.shape)
        for j in np.ndindex(base.shape):
            orig = base[j]
            base[j] = orig + eps
            put(x, base)
            up = loss()
            base[j] = orig - eps
            put(x, base)
            down = loss()
            base[j] = orig
            put(x, base)
            numeric[j] = (up - down) / (2 * eps)
        a = np.broadcast_to(np.asarray(a, dtype=np.float64), base.shape)
        excess = np.abs(a - numeric) - (atol + rtol * np.abs(numeric))
        if excess.size:
            j = np.unravel_index(np.argmax(excess), excess.shape)
            if excess[j] > 0 and (worst is None or excess[j] > worst[0]):
                worst = (excess[j], x.name, j, a[j], numeric[j])
    if worst is not None:
        _, name, j, a, n = worst
        raise GradientCheckError(f"gradient of '{name}' at index {tuple(int(i) for i in j)}: "
                                 f"symbolic {a:.10g}, finite difference {n:.10g} "
                                 f"(rtol={rtol}, atol={atol})")


def check_grads_against(y: Tensor, wrt, feed: dict, backend: str, reference: str = "numpy",
                        rtol: float = 1e-9, atol: float = 1e-12, seed: int = 0,
                        **_fd_options) -> None:
    """Compare gc.grad(y, wrt) computed on `backend` with the same gradients on `reference`,
    all in float64: one call of each compiled plan, where check_grads calls its plan twice
    per element (the reference's gradients are themselves checked by finite differences).
    A non-scalar y is checked through the fixed random projection check_grads uses. Raises
    GradientCheckError naming the worst element. Finite-difference options (eps) are
    accepted and ignored, so this can stand in for check_grads."""
    from .function import compile as gc_compile
    wrt = [wrt] if isinstance(wrt, Tensor) else list(wrt)
    named = {(k.name if isinstance(k, Tensor) else k): np.asarray(v) for k, v in feed.items()}
    with Graph("check_grads_against"):
        new = to_float64([y, *wrt])
        y64 = new[id(y)]
        feeds = {ph.name: named[ph.name].astype(_f64(named[ph.name].dtype))
                 for ph in topo_order([y64]) if isinstance(ph, Placeholder)}
        if y64.shape != ():
            concrete = np.shape(gc_compile(y64, backend=reference)(feeds))
            y64 = _sum(y64 * np.random.default_rng(seed).normal(size=concrete))
        outputs = [y64, *grad(y64, [new[id(x)] for x in wrt])]
        want = gc_compile(outputs, backend=reference)(feeds)
        got = gc_compile(outputs, backend=backend)(feeds, to_numpy=True)
    names = ["the output"] + [f"the gradient of '{x.name}'" for x in wrt]
    for name, g, w in zip(names, got, want):
        g = np.asarray(g, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        if g.shape != w.shape:
            raise GradientCheckError(f"{name}: shape {g.shape} on {backend}, {w.shape} on "
                                     f"{reference}")
        excess = np.abs(g - w) - (atol + rtol * np.abs(w))
        excess = np.where(np.isnan(g) != np.isnan(w), np.inf, np.nan_to_num(excess, nan=0.0))
        if excess.size and excess.max() > 0:
            j = np.unravel_index(np.argmax(excess), excess.shape)
            raise GradientCheckError(f"{name} at index {tuple(int(i) for i in j)}: {g[j]:.12g} "
                                     f"on {backend}, {w[j]:.12g} on {reference} "
                                     f"(rtol={rtol}, atol={atol})")


def evaluate(outputs, feeds: dict, cache: dict | None = None) -> list:
    """Evaluate `outputs` (a tensor or a list) op by op with each op's NumPy reference: no
    passes, no fusion, no memory plan. The oracle compiled plans are tested against.

    `feeds` maps placeholders or their names to arrays (converted to the placeholder's
    dtype); parameters read their current value. `cache` ({id(node): value}) may be shared
    between calls on the same graph and feeds, so growing a graph re-evaluates only new
    nodes; an entry put there beforehand pins that node's value (a perturbed input)."""
    single = isinstance(outputs, Tensor)
    outputs = [outputs] if single else list(outputs)
    named = {(k.name if isinstance(k, Tensor) else k): v for k, v in feeds.items()}
    values = {} if cache is None else cache
    for n in topo_order(outputs):
        if id(n) in values:
            continue
        if isinstance(n, Placeholder):
            if n.name not in named:
                raise GraphcError(f"evaluate: no feed for placeholder '{n.name}'")
            v = np.asarray(named[n.name]).astype(n.dtype, copy=False)
        elif isinstance(n, Parameter):
            v = n.storage.host()
        elif isinstance(n, Constant):
            v = n.value
        else:
            args = [values[id(x)].shape if i in n.op.shape_only else values[id(x)]
                    for i, x in enumerate(n.inputs)]
            with np.errstate(all="ignore"):
                v = np.asarray(n.op.reference(*args, **n.attrs)).astype(n.dtype, copy=False)
        values[id(n)] = v
    result = [values[id(n)] for n in outputs]
    return result[0] if single else result
