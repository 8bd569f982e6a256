"""The backend registry and interface (graphc.backends): names, aliases, availability,
"auto", completeness over the op registry, and the ops' scalar forms that loop printers
(Numba on the CPU, Numba CUDA) print."""
from __future__ import annotations

import re

import numpy as np
import pytest

import graphc as gc
from graphc import backends
from graphc.backends.base import Backend, Capabilities
from graphc.ops.registry import all_ops, get_op
from graphc.schedule.expr import FusedExpr, Instr


@pytest.mark.parametrize("name", backends.registered())
def test_every_op_is_supported_or_declared_unsupported(name):
    """Every op that can be a plan step runs on every backend, or the backend says why not."""
    impl = backends.get(name)
    for op_name, op in all_ops().items():
        if op.infer is None:  # placeholder, parameter, constant: leaves, never steps
            continue
        if not impl.supports(op):
            why = impl.unsupported.get(op_name, "")
            assert why.strip(), f"the {name} backend neither runs {op_name} nor says why"


def test_cpu_is_an_alias_of_numpy_and_auto_picks_an_available_backend():
    assert backends.resolve("cpu") == "numpy"
    assert backends.get("cpu") is backends.get("numpy")
    x = gc.placeholder("x", (2,))
    assert gc.compile(x * 2.0, backend="cpu").backend == "numpy"
    assert backends.resolve("auto") in backends.available()


class _Nowhere(Backend):
    name = "nowhere"


def test_a_registered_backend_that_cannot_run_here_says_why():
    backends.register("nowhere", _Nowhere, probe=lambda: "it needs hardware this machine lacks",
                      priority=100)
    try:
        assert "nowhere" in backends.registered() and "nowhere" not in backends.available()
        assert backends.availability("nowhere") == "it needs hardware this machine lacks"
        assert backends.resolve("auto") == "numpy"  # never an unavailable one
        x = gc.placeholder("x", (2,))
        with pytest.raises(gc.CompileError, match="the nowhere backend cannot run here: it "
                                                  "needs hardware"):
            gc.compile(x * 2.0, backend="nowhere")
        with pytest.raises(ValueError, match="already registered"):
            backends.register("nowhere", _Nowhere)
    finally:
        backends.unregister("nowhere")
    assert "nowhere" not in backends.registered()


def test_auto_prefers_the_available_backend_of_highest_priority():
    class Better(Backend):
        name = "better"
    backends.register("better", Better, priority=10)
    try:
        assert backends.resolve("auto") == "better"
        assert backends.available()[0] == "better"
    finally:
        backends.unregister("better")


def test_config_backend_is_the_default(monkeypatch):
    x = gc.placeholder("x", (2,))
    monkeypatch.setattr(gc.config, "backend", "cpu")
    assert gc.compile(x + 1.0).backend == "numpy"
    monkeypatch.setattr(gc.config, "backend", "tpu")
    with pytest.raises(gc.CompileError, match="unknown backend 'tpu'"):
        gc.compile(x + 1.0)


def test_capabilities_shape_the_schedule():
    """The scheduler reads the backend's capabilities: alignment and fusion."""
    from graphc.schedule import bind
    x = gc.placeholder("x", (None, 5))
    fn = gc.compile(gc.tanh(x * 2.0 + 1.0) * 3.0)
    plan = fn.symbolic_plan
    shapes = {plan.feeds[0][0]: (3, 5)}
    fused = bind(plan, shapes, Capabilities(alignment=256))
    assert [k.ops for k in fused.kernels if k.kind == "fused"] == [["mul", "add", "tanh", "mul"]]
    unfused = bind(plan, shapes, Capabilities(fuse=False, alignment=256))
    assert len([k for k in unfused.kernels if k.kind == "fused"]) == 4
    assert all(off % 256 == 0 for off in unfused.memory.offsets.values())
    # one 60-byte buffer (each op in place of the last): rounded up to the alignment
    assert unfused.memory.arena_bytes == 256
    assert bind(plan, shapes, Capabilities(fuse=False)).memory.arena_bytes == 64


# --- scalar forms ---------------------------------------------------------------------------
ATTRS = {"leaky_relu": {"negative_slope": 0.2}, "cast": {"dtype": "float64"},
         "elu": {"alpha": 1.5}, "softplus": {"beta": 2.0, "threshold": 3.0},
         "gelu": {"approximate": "none"}}
POSITIVE = {"log", "sqrt", "pow"}


def _scalar_ops():
    return sorted(name for name, op in all_ops().items() if op.scalar is not None)


def test_every_elementwise_op_has_a_scalar_form():
    """Loop printers (Numba CUDA above all) print every elementwise op from its form."""
    missing = [name for name, op in all_ops().items() if op.elementwise and op.scalar is None]
    assert not missing, missing


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_tanh_scalar_form(dtype):
    _check_scalar_form("gelu", {"approximate": "tanh"}, dtype)


def test_cheap_elementwise_ops_all_have_scalar_forms():
    """A Numba loop prints an op only from its scalar form: every cheap elementwise op
    has one, so cheap groups never fall back to NumPy for want of it."""
    for name, op in all_ops().items():
        if op.elementwise and op.cost < 10:
            assert op.scalar is not None, name


@pytest.mark.parametrize("name", _scalar_ops())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scalar_form_matches_the_numpy_reference(name, dtype):
    """Each op's scalar form, printed as a Numba loop, equals its NumPy reference."""
    _check_scalar_form(name, ATTRS.get(name, {}), dtype)


def _check_scalar_form(name, attrs, dtype):
    from graphc.backends.cpu import numba_printer
    if not numba_printer.available():
        pytest.skip("Numba is not installed")
    op = get_op(name)
    template = op.scalar_form(attrs)
    arity = 1 + max(int(i) for i in re.findall(r"\{(\d+)\}", template))
    rng = np.random.default_rng(0)
    shape = (3, 7)
    args = [rng.uniform(0.5, 2.0, shape) if name in POSITIVE else rng.normal(size=shape)
            for _ in range(arity)]
    args = [a.astype(dtype) for a in args]
    if name == "where":
        args[0] = args[0] > 0
    args[-1].flat[:3] = [0.0, -0.0, 1.0] if name not in POSITIVE else [1.0, 1.0, 1.0]
    with np.errstate(all="ignore"):
        expected = np.asarray(op.reference(*args, **attrs))
    instr = Instr(name, attrs, [("in", k) for k in range(arity)], expected.dtype,
                  op.reference, op)
    expr = FusedExpr(shape, [(k, shape) for k in range(arity)], [instr], [(arity, 0)])
    out = np.empty(shape, expected.dtype)
    numba_printer.compile_numba(expr)(*args, out)
    tol = 1e-6 if np.dtype(dtype) == np.float32 else 1e-13
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
