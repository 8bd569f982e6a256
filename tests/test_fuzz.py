"""Property-based fuzzing of random well-typed graphs (graphs from tests/fuzz_graphs.py).

For every graph, in float32 and float64:
- each backend's plan, optimized and not, equals the op-by-op NumPy reference (in float64,
  and in the graph's own dtype);
- the symbolic gradients equal float64 central finite differences;
- gradients of a gradient-derived scalar (double backward) equal finite differences too.
A smaller set of graphs runs with Numba kernels forced on for every fused group.

The budget is fixed-seed (derandomized): GRAPHC_FUZZ_EXAMPLES graphs (500 by default;
`make fuzz` runs 5000)."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import graphc as gc
from graphc.backends import available
from graphc.backends.cpu import numba_printer as numba_cpu
from graphc.graph import Placeholder, topo_order
from graphc.ops import all_ops
from graphc.testing import evaluate, to_float64

import fuzz_graphs as fg

BACKENDS = tuple(available())

EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "500"))
NUMBA_EXAMPLES = max(EXAMPLES // 25, 12)

# float32 is compared with the float64 reference loosely: a few hundred roundings of 6e-8
# through ops whose condition number can reach 1e2 (exp, cancellations, 1/x). float64 gets
# the same allowance with its own unit roundoff (1.1e-16). Both scale with the largest
# intermediate magnitude, since absolute rounding errors do.
TOLERANCE = {np.dtype("float32"): 2e-3, np.dtype("float64"): 1e-9}
FD_STEP = 1e-6  # float64 central differences: truncation ~1e-12, roundoff ~1e-10 * |f|
FD_RTOL = 1e-4


def _settings(n):
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@st.composite
def cases(draw, families=None, dtypes=("float32", "float64")):
    return fg.hypothesis_case(draw, dtypes=dtypes, families=families)


def _float_feeds(feeds: dict) -> dict:
    return {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in feeds.items()}


def _tolerance(nodes) -> float:
    """The loosest tolerance of any float dtype computed in the graph."""
    return max(TOLERANCE.get(n.dtype, 0.0) for n in topo_order(nodes))


def _scale(values) -> float:
    finite = [np.abs(v[np.isfinite(v)]).max() for v in values
              if v.dtype.kind == "f" and v.size and np.isfinite(v).any()]
    return max([1.0] + finite)


def _compare(got, want, tol, scale, what):
    got = np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=what)
        return
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol * scale,
                               err_msg=what)


class Reference:
    """The float64 rebuild of a case, its op-by-op values, and finite differences of it."""

    def __init__(self, case: fg.Case, targets: list):
        self.case = case
        with gc.Graph("fuzz64") as self.graph:
            self.new = to_float64(targets + [case.loss] + case.wrt)
        names = self.graph._names
        self.feeds = {k: v for k, v in _float_feeds(case.feeds).items() if k in names}
        self.node = lambda t: self.new[id(t)]
        fg.reset_random_streams(self.graph)
        self.all_nodes = topo_order([self.node(t) for t in targets])
        cache: dict = {}
        self.values = evaluate([self.node(t) for t in targets], self.feeds, cache)
        self.scale = _scale([cache[id(n)] for n in self.all_nodes])

    def leaf_value(self, x64):
        return self.feeds[x64.name] if isinstance(x64, Placeholder) else x64.value

    def check_fd(self, scalar64, wrt64, grads, what):
        """Symbolic gradients `grads` of scalar64 against central differences."""
        checked = 0
        fg.reset_random_streams(self.graph)  # a compiled call advanced the counter
        for x, g in zip(wrt64, grads):
            def f(v, x=x):
                return float(evaluate(scalar64, self.feeds, {id(x): v}))
            numeric, smooth = fg.finite_difference(f, self.leaf_value(x), FD_STEP, FD_RTOL)
            g = np.broadcast_to(np.asarray(g, np.float64), numeric.shape)
            scale = 1.0 + np.abs(numeric[smooth]).max(initial=0.0)
            bad = smooth & (np.abs(g - numeric) > FD_RTOL * scale)
            assert not bad.any(), (
                f"{what} of '{x.name}' at {np.argwhere(bad)[0].tolist()}: symbolic "
                f"{g[bad][0]:.10g}, finite difference {numeric[bad][0]:.10g}")
            checked += int(smooth.sum())
        return checked


def check_case(case: fg.Case, backends=BACKENDS, double_backward: bool = True) -> None:
    """Every property the fuzzer checks, for one graph."""
    outputs = case.outputs
    with case.graph:
        grads = gc.grad(case.loss, case.wrt) if case.wrt else []
    targets = outputs + grads
    ref = Reference(case, targets)
    tol = _tolerance(targets)
    fg.reset_random_streams(case.graph)
    same_dtype = evaluate(targets, case.feeds)
    for t, want, own in zip(targets, ref.values, same_dtype):
        assert own.dtype == t.dtype
        _compare(own, want, tol, ref.scale, f"reference in {t.dtype} of {t.describe()}")
    for backend in backends:
        for optimize in (True, False):
            fn = gc.compile(targets, optimize=optimize, backend=backend)
            fg.reset_random_streams(case.graph)
            got = fn(case.feeds)
            for t, g, want in zip(targets, got, ref.values):
                assert np.asarray(g).dtype == t.dtype, f"dtype of {t.describe()}"
                _compare(g, want, tol, ref.scale,
                         f"{backend} optimize={optimize}: {t.describe()}\n{fn.plan}")
    if not case.wrt:
        return
    wrt64 = [ref.node(x) for x in case.wrt]
    loss64 = ref.node(case.loss)
    ref.check_fd(loss64, wrt64, ref.values[len(outputs):], "gradient")
    if not double_backward:
        return
    with ref.graph:
        g64 = [ref.node(g) for g in grads]
        rng = np.random.default_rng(0)
        s = None
        for g in g64:
            v = rng.normal(size=np.shape(ref.values[len(outputs) + g64.index(g)]))
            term = gc.sum(g * gc.constant(v, dtype=np.float64))
            s = term if s is None else s + term
        second = gc.grad(s, wrt64)
    fg.reset_random_streams(ref.graph)
    want = evaluate(second, ref.feeds)
    fn = gc.compile(second)
    fg.reset_random_streams(ref.graph)
    for h, got, w in zip(second, fn(ref.feeds), want):
        _compare(got, w, TOLERANCE[np.dtype("float64")], ref.scale, f"double backward {h}")
    ref.check_fd(s, wrt64, want, "double backward")


@_settings(EXAMPLES)
@given(case=cases())
def test_random_graphs(case):
    check_case(case)


NUMBA_FAMILIES = ("unary", "arithmetic", "div", "select", "cast", "broadcast", "reduction",
                  "transpose", "getitem")


@pytest.mark.skipif(not numba_cpu.available(), reason="Numba missing or GRAPHC_NUMBA=0")
@_settings(NUMBA_EXAMPLES)
@given(case=cases(families=NUMBA_FAMILIES))
def test_random_graphs_with_numba_kernels(case):
    """Numba for every fused group of cheap arithmetic, however small (normally only groups
    of 16K elements or more use it), so the small fuzz graphs reach the Numba path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(numba_cpu, "MIN_ELEMENTS", 1)
        check_case(case, double_backward=False)


def test_every_registered_op_is_fuzzed_or_excluded():
    """A new op cannot silently escape the fuzzer: every registered op appears in the graphs
    the families build (with their first and second gradients) or is listed in EXCLUDED."""
    seen: set = set()
    for name in sorted(fg.FAMILIES):
        for seed in range(40):
            src = fg.Source(np.random.default_rng(seed))
            case = fg.build_case(src, "float64", focus=name, max_extra=2)
            with case.graph:
                nodes = list(case.outputs)
                if case.wrt:
                    grads = gc.grad(case.loss, case.wrt)
                    s = sum(gc.sum(g * g) for g in grads)
                    nodes += grads + gc.grad(s, case.wrt)
            seen |= {n.op.name for n in topo_order(nodes)}
    missing = set(all_ops()) - seen - set(fg.EXCLUDED)
    assert not missing, f"ops no fuzz family builds (add a family or an EXCLUDED reason): " \
                        f"{sorted(missing)}"
    assert not set(fg.EXCLUDED) - set(all_ops()), "EXCLUDED names ops that no longer exist"
    for name, fn in fg.FAMILIES.items():
        assert set(fn.op_names) <= seen, name
