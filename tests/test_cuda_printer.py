"""The CUDA backend's fused-kernel printer: every fused group the scheduler makes, printed as
Numba CUDA kernels, computes what the CPU printers compute. Kernel tests run in Numba's
simulator (NUMBA_ENABLE_CUDASIM=1) or on a device; PTX tests compile every kernel these
tests generate for sm_90 and sm_80 in the normal process, without a device."""
import functools
import hashlib
import os
import re
import stat
import sys

import numpy as np
import pytest

import graphc as gc
from cuda_env import SIMULATOR, needs_cuda, needs_ptx
from graphc.backends.cpu.numpy_printer import compile_numpy
from graphc.backends.cuda.printer import compile_fused, default_launch, print_cuda, printable
from graphc.ops.registry import InferError, all_ops, get_op
from graphc.schedule.expr import FusedExpr, Instr, build_expr

TOL = {np.dtype(np.float32): 1e-6, np.dtype(np.float64): 1e-12}


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    """Kernel modules go to a cache of this module's own."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GRAPHC_CACHE_DIR", str(tmp_path_factory.mktemp("cuda-cache")))
    yield
    mp.undo()


# --- data and the reference ---------------------------------------------------------------
def _data(rng, shape, dtype, positive, known=None):
    dt = np.dtype(dtype)
    if known is not None:  # a parameter's or constant's own value
        return np.array(np.broadcast_to(known, shape), dt)
    if dt.kind == "b":
        return rng.random(shape) > 0.5
    if dt.kind in "iu":
        return (rng.integers(1, 4, shape) if positive else rng.integers(-5, 6, shape)).astype(dt)
    return (rng.uniform(0.1, 0.9, shape) if positive else rng.uniform(-2, 2, shape)).astype(dt)


def _reference(expr, ins, red_dtypes):
    """Full-shape outputs from the CPU NumPy printer, reductions summed in float64 over the
    sources that printer computes (as the CUDA kernels accumulate)."""
    n_out = len(expr.outputs)
    probe = FusedExpr(expr.shape, expr.inputs, expr.instrs,
                      expr.outputs + [(None, r[1]) for r in expr.reductions])
    full = [np.empty(expr.shape, expr.instrs[j].dtype) for _, j in probe.outputs]
    with np.errstate(all="ignore"):
        compile_numpy(probe)(*[a.copy() for a in ins], *full)
    reds = []
    for (_, _, axes, kind, out_shape), src, dt in zip(expr.reductions, full[n_out:], red_dtypes):
        value = np.sum(src, axis=tuple(axes), dtype=np.float64)
        if kind == "mean":
            value = value / np.prod([expr.shape[a] for a in axes])
        reds.append(np.asarray(value).reshape(out_shape).astype(dt))
    return full[:n_out], reds


def _assert_close(got, want):
    dt = np.dtype(want.dtype)
    assert got.dtype == dt and got.shape == want.shape
    if dt.kind == "f":
        np.testing.assert_allclose(got, want, rtol=TOL[dt], atol=TOL[dt])
    else:
        np.testing.assert_array_equal(got, want)


def _check(expr, dtypes, shared=None, positive=False, known=None, launch=None, seed=0,
           prepare=False, **call):
    """Run the CUDA kernels and the reference on the same inputs (random, but the values of
    parameters and constants in `known`); compare every result."""
    rng = np.random.default_rng(seed)
    shared, known = shared or {}, known or {}
    ins = [_data(rng, s, dtypes[slot], positive, known.get(slot)) for slot, s in expr.inputs]
    red_dtypes = [np.dtype(dtypes[r[0]]) for r in expr.reductions]
    want_out, want_red = _reference(expr, ins, red_dtypes)
    got_in = [a.copy() for a in ins]
    got_out = [np.zeros(expr.shape, expr.instrs[j].dtype) for _, j in expr.outputs]
    got_red = [np.zeros(r[4], dt) for r, dt in zip(expr.reductions, red_dtypes)]
    args = [*got_in, *got_out, *got_red]
    epi = expr.epilogue
    if epi is not None:
        values = {r[0]: (g, w) for r, g, w in zip(expr.reductions, got_red, want_red)}
        for slot, s in epi.inputs:
            if slot not in values:
                a = _data(rng, s, dtypes[slot], positive, known.get(slot))
                values[slot] = (a.copy(), a)
        epi_in = [values[slot] for slot, _ in epi.inputs]
        want_epi = [np.empty(epi.shape, epi.instrs[j].dtype) for _, j in epi.outputs]
        with np.errstate(all="ignore"):
            compile_numpy(epi)(*[w.copy() for _, w in epi_in], *want_epi)
        got_epi = [np.zeros(epi.shape, epi.instrs[j].dtype) for _, j in epi.outputs]
        args += [g for g, _ in epi_in] + got_epi
    kernel = compile_fused(expr, shared, launch)
    if prepare:  # the first call's one-time work ahead of it (as before a graph capture)
        kernel.prepare(*args)
    with np.errstate(all="ignore"):
        kernel(*args, **call)
    for k, want in enumerate(want_out):
        if k in shared:  # stored through the input; the output passed is left alone
            _assert_close(got_in[shared[k]], want)
            assert not got_out[k].any()
        else:
            _assert_close(got_out[k], want)
    for got, want in zip(got_red, want_red):
        _assert_close(got, want)
    if epi is not None:
        for got, want in zip(got_epi, want_epi):
            _assert_close(got, want)
    return kernel


def _ptx_arrays(expr, dtypes):
    """Arrays of the types a call takes (for PTX: only their dtypes and ranks matter)."""
    arrays = [np.zeros(s, dtypes[slot]) for slot, s in expr.inputs]
    arrays += [np.zeros(expr.shape, expr.instrs[j].dtype) for _, j in expr.outputs]
    arrays += [np.zeros(r[4], dtypes[r[0]]) for r in expr.reductions]
    if expr.epilogue is not None:
        epi = expr.epilogue
        arrays += [np.zeros(s, dtypes[slot]) for slot, s in epi.inputs]
        arrays += [np.zeros(epi.shape, epi.instrs[j].dtype) for _, j in epi.outputs]
    return arrays


# --- one op at a time ---------------------------------------------------------------------
ATTRS = {"leaky_relu": {"negative_slope": 0.2}, "cast": {"dtype": "float64"}}
POSITIVE = {"log", "sqrt", "pow"}
OP_SHAPE = (3, 7)


def _arity(op, attrs) -> int:
    return 1 + max(int(i) for i in re.findall(r"\{(\d+)\}", op.scalar_form(attrs)))


def _op_cases():
    """(op, input dtype) for every op with a scalar form, in float32 and float64, and in
    int32 and bool where the op takes them."""
    cases = []
    for name in sorted(n for n, op in all_ops().items() if op.scalar is not None):
        op = get_op(name)
        attrs = ATTRS.get(name, {})
        arity = _arity(op, attrs)
        for dt in ("float32", "float64", "int32", "bool"):
            dts = [np.dtype(dt)] * arity
            if name == "where":
                dts[0] = np.dtype(bool)
            try:
                op.infer([OP_SHAPE] * arity, dts, **attrs)
                with np.errstate(all="ignore"):
                    op.reference(*[np.ones(OP_SHAPE, d) for d in dts], **attrs)
            except (InferError, TypeError, ValueError):
                continue
            if dt in ("int32", "bool") and np.dtype(op.infer(
                    [OP_SHAPE] * arity, dts, **attrs)[1]).kind == "f" and name != "cast":
                continue  # float results of integer inputs: the float cases cover them
            cases.append((name, dt))
    return cases


def _op_expr(name, dtype):
    """A one-instruction FusedExpr for the op, with its inputs and the expected result."""
    op = get_op(name)
    attrs = ATTRS.get(name, {})
    arity = _arity(op, attrs)
    rng = np.random.default_rng(0)
    positive = name in POSITIVE or (name == "div" and np.dtype(dtype).kind != "f")
    args = [_data(rng, OP_SHAPE, dtype, positive) for _ in range(arity)]
    if np.dtype(dtype).kind == "f" and name not in POSITIVE:
        args = [rng.normal(size=OP_SHAPE).astype(dtype) for _ in range(arity)]
        args[-1].flat[:3] = [0.0, -0.0, 1.0]
    if name == "where":
        args[0] = args[0] > 0 if args[0].dtype.kind != "b" else args[0]
    out_dtype = op.infer([OP_SHAPE] * arity, [a.dtype for a in args], **attrs)[1]
    with np.errstate(all="ignore"):
        expected = np.asarray(op.reference(*args, **attrs)).astype(out_dtype)
    instr = Instr(name, attrs, [("in", k) for k in range(arity)], np.dtype(out_dtype),
                  op.reference, op)
    expr = FusedExpr(OP_SHAPE, [(k, OP_SHAPE) for k in range(arity)], [instr], [(arity, 0)])
    return expr, args, expected


@needs_cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # x / 0 in the simulator's threads
@pytest.mark.parametrize("name,dtype", _op_cases())
def test_every_scalar_form_matches_the_numpy_reference(name, dtype):
    expr, args, expected = _op_expr(name, dtype)
    out = np.empty(OP_SHAPE, expected.dtype)
    with np.errstate(all="ignore"):
        compile_fused(expr)(*args, out)
    _assert_close(out, expected)


@needs_ptx
@pytest.mark.parametrize("cc", [(9, 0), (8, 0)])
def test_every_scalar_form_compiles_to_ptx(cc):
    for name, dtype in _op_cases():
        expr, args, expected = _op_expr(name, dtype)
        ptx = compile_fused(expr).ptx(*args, np.empty(OP_SHAPE, expected.dtype), cc=cc)
        assert set(ptx) == {"kernel"}
        assert f".target sm_{cc[0]}{cc[1]}" in ptx["kernel"] and ".entry" in ptx["kernel"]


# --- the scheduler's groups ---------------------------------------------------------------
class Case:
    """The fused groups of one compiled graph, as the scheduler makes them."""

    def __init__(self, fn, positive=False):
        bp = fn.plan
        self.dtypes = [n.dtype for n in bp.plan.nodes]
        self.known = {s: np.asarray(c.value) for c, s in bp.plan.consts}
        self.known.update({s: p.value for p, s in bp.plan.params})
        self.exprs, self.shared = [], []
        for k in bp.kernels:
            if k.kind == "fused":
                expr = build_expr(k, bp.plan, bp.shapes)
                self.exprs.append(expr)
                self.shared.append(bp.written_over(expr))
        self.positive = positive


def _mlp(optimizer):
    rng = np.random.default_rng(0)
    with gc.Graph():
        x = gc.placeholder("x", (None, 6))
        y = gc.placeholder("y", (None,), dtype="int32")
        h = gc.relu(x @ gc.parameter("W1", shape=(6, 8), seed=1)
                    + gc.parameter("b1", shape=(8,), init="normal", seed=3))
        logits = h @ gc.parameter("W2", shape=(8, 3), seed=2) + \
            gc.parameter("b2", shape=(3,), init="normal", seed=4)
        loss = gc.softmax_cross_entropy(logits, y)
        fn = gc.compile([loss], optimizer=optimizer, backend="numpy")
        fn(x=rng.normal(size=(5, 6)).astype(np.float32), y=rng.integers(0, 3, 5).astype(np.int32))
    return fn


def _broadcasting(dtype):
    with gc.Graph():
        x = gc.placeholder("x", (None, 6), dtype=dtype)
        w = gc.parameter("w", shape=(6,), seed=1, dtype=dtype)  # lower rank
        c = gc.parameter("c", shape=(4, 1), seed=2, dtype=dtype)  # size-1 dims
        d = gc.parameter("d", shape=(1, 6), seed=3, dtype=dtype)
        lr = gc.parameter("lr", value=np.asarray(0.5, dtype), dtype=dtype)  # 0-d
        y = gc.relu(x * w + c) * lr - gc.tanh(x * d) / (1 + gc.exp(-x)) + \
            gc.sigmoid(gc.sqrt(x * x + 1.0)) + gc.leaky_relu(x, 0.1) * gc.erf(x)
        fn = gc.compile([y, gc.maximum(x, d) - gc.minimum(c, x) + gc.abs(x) ** 2.0],
                        backend="numpy")
        fn(x=np.ones((4, 6), dtype))
    return fn


def _reductions(axes, keepdims=False):
    with gc.Graph():
        x = gc.placeholder("x", (2, 3, 4))
        w = gc.parameter("w", shape=(4,), seed=1)
        y = x * w + 0.5
        fn = gc.compile([(y * y).sum(axis=axes, keepdims=keepdims), y.mean(axis=axes),
                         gc.relu(y)], backend="numpy")
        fn(x=np.ones((2, 3, 4), np.float32))
    return fn


def _mixed_axes():
    with gc.Graph():
        x = gc.placeholder("x", (3, 4))
        w = gc.parameter("w", shape=(4,), seed=1)
        y = x * w
        fn = gc.compile([y.sum(), y.sum(axis=0), y.sum(axis=1), (y * y).mean(axis=1),
                         gc.relu(y)], backend="numpy")
        fn(x=np.ones((3, 4), np.float32))
    return fn


def _integers():
    with gc.Graph():
        a = gc.placeholder("a", (4, 5), dtype="int32")
        b = gc.placeholder("b", (4, 5), dtype="int32")
        m = a > b
        outs = [gc.maximum(a, b) * 2 - gc.abs(b), gc.where(m, a, -b), m, gc.equal(a, b),
                gc.minimum(a, b).sum(axis=0), m.astype("float32") * 1.5,
                gc.where(m, gc.equal(a, 0), m)]
        fn = gc.compile(outs, backend="numpy")
        fn(a=np.ones((4, 5), np.int32), b=np.zeros((4, 5), np.int32))
    with gc.Graph():
        a = gc.placeholder("a", (4, 5), dtype="int64")
        x = gc.placeholder("x", (4, 5))
        outs = [(x > 0).astype("int64").sum(), (a * a + 1).sum(axis=1), gc.square(a) - gc.sign(a)]
        fn2 = gc.compile(outs, backend="numpy")
        fn2(a=np.ones((4, 5), np.int64), x=np.ones((4, 5), np.float32))
    return fn, fn2


@functools.lru_cache(maxsize=None)
def _cases() -> dict:
    cases = {
        "broadcast-float32": [Case(_broadcasting("float32"))],
        "broadcast-float64": [Case(_broadcasting("float64"))],
        "mixed-axes": [Case(_mixed_axes())],
        "integers": [Case(f) for f in _integers()],
        "mlp-sgd": [Case(_mlp(gc.optim.SGD(lr=0.1)))],
        "mlp-sgd-momentum": [Case(_mlp(gc.optim.SGD(lr=0.1, momentum=0.9)), positive=True)],
        "mlp-adam": [Case(_mlp(gc.optim.Adam(lr=0.01)), positive=True)],
    }
    for axes in [(0,), (0, 1), None, (2,), (1,), (1, 2)]:
        cases[f"reduce-{axes}"] = [Case(_reductions(axes))]
    cases["reduce-(1,)-keepdims"] = [Case(_reductions((1,), keepdims=True))]
    return cases


def _case_exprs(name):
    return [(c, e, s) for c in _cases()[name] for e, s in zip(c.exprs, c.shared)]


CASES = ["broadcast-float32", "broadcast-float64", "mixed-axes", "integers", "mlp-sgd",
         "mlp-sgd-momentum", "mlp-adam", "reduce-(0,)", "reduce-(0, 1)", "reduce-None",
         "reduce-(2,)", "reduce-(1,)", "reduce-(1, 2)", "reduce-(1,)-keepdims"]


@needs_cuda
@pytest.mark.parametrize("name", CASES)
def test_fused_groups_match_the_cpu_printer(name):
    exprs = _case_exprs(name)
    assert exprs
    for case, expr, shared in exprs:
        _check(expr, case.dtypes, shared, case.positive, case.known)


@needs_ptx
@pytest.mark.parametrize("cc", [(9, 0), (8, 0)])
def test_every_fused_group_compiles_to_ptx(cc):
    for name in CASES:
        for case, expr, shared in _case_exprs(name):
            kernel = compile_fused(expr, shared)
            ptx = kernel.ptx(*_ptx_arrays(expr, case.dtypes), cc=cc)
            assert set(ptx) == set(re.findall(r"^def (\w+)\(", kernel.source, re.M))
            for text in ptx.values():
                assert f".target sm_{cc[0]}{cc[1]}" in text and ".entry" in text
    ptx = compile_fused(_hand_shared_expr(), {0: 0}).ptx(
        *_ptx_arrays(_hand_shared_expr(), [np.float32] * 4), cc=cc)
    assert f".target sm_{cc[0]}{cc[1]}" in ptx["kernel"]


def _one(name, pred):
    return next((c, e, s) for c, e, s in _case_exprs(name) if pred(e))


def test_broadcast_inputs_are_read_with_their_broadcast_dims_dropped():
    _, expr, _ = _one("broadcast-float32", lambda e: len(e.inputs) > 4)
    shapes = {s for _, s in expr.inputs}
    assert {(6,), (4, 1), (1, 6), ()} <= shapes  # lower rank, size-1 dims, 0-d
    source = print_cuda(expr)
    for k, (_, s) in enumerate(expr.inputs):
        want = {(6,): f"i{k}[j1]", (4, 1): f"i{k}[j0, 0]", (1, 6): f"i{k}[0, j1]",
                (): f"i{k}[()]", (4, 6): f"i{k}[j0, j1]"}[s]
        assert f"x{k} = {want}" in source


def test_reductions_over_one_set_of_axes_are_one_block_reduction_kernel():
    for name in CASES:
        if not name.startswith("reduce-"):
            continue
        _, expr, _ = _one(name, lambda e: e.reductions)
        source = print_cuda(expr)
        assert re.findall(r"^def (\w+)\(", source, re.M) == ["kernel"]
        assert "cuda.shared.array" in source and "cuda.syncthreads()" in source
        assert "atomic" not in source


def test_reductions_over_different_axes_reduce_in_a_second_kernel():
    _, expr, _ = _one("mixed-axes", lambda e: e.reductions)
    assert len({r[2] for r in expr.reductions}) == 3
    source = print_cuda(expr)
    # the most common axes in the first kernel, each other set in a kernel of its own
    assert re.findall(r"^def (\w+)\(", source, re.M) == ["kernel", "reduce1", "reduce2"]
    assert "atomic" not in source


def test_an_epilogue_is_a_kernel_after_the_reduction():
    _, expr, _ = _one("mlp-sgd", lambda e: e.epilogue is not None)
    assert [i.op for i in expr.epilogue.instrs] == ["mul", "sub"]  # b - lr * db
    assert re.findall(r"^def (\w+)\(", print_cuda(expr), re.M) == ["kernel", "epilogue"]


def test_shared_outputs_are_stored_through_their_input():
    _, expr, shared = _one("mlp-adam", lambda e: len(e.shape) == 2 and not e.reductions
                           and len(e.instrs) > 5)
    assert shared  # the weight and both moments are updated in place
    source = print_cuda(expr, shared)
    params = re.search(r"^def kernel\((.*)\):", source, re.M).group(1).split(", ")
    assert not [p for p in params if p[0] == "o" and int(p[1:]) in shared]
    for k, i in shared.items():
        assert re.search(rf"^\s+i{i}\[j0, j1\] = t{expr.outputs[k][1]}$", source, re.M)


def _hand_shared_expr():
    """out0 = in0 * in1 + in0 over (4, 5), written in place of in0; out1 = its square."""
    mul, add, sq = get_op("mul"), get_op("add"), get_op("square")
    f32 = np.dtype(np.float32)
    instrs = [Instr("mul", {}, [("in", 0), ("in", 1)], f32, mul.reference, mul),
              Instr("add", {}, [("v", 0), ("in", 0)], f32, add.reference, add),
              Instr("square", {}, [("v", 1)], f32, sq.reference, sq)]
    return FusedExpr((4, 5), [(0, (4, 5)), (1, (5,))], instrs, [(2, 1), (3, 2)])


@needs_cuda
def test_in_place_outputs_overwrite_their_input():
    _check(_hand_shared_expr(), [np.float32] * 4, shared={0: 0})


@needs_cuda
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_out_of_domain_values_give_nan_and_infinity_as_on_a_device():
    log, sqrt, exp = get_op("log"), get_op("sqrt"), get_op("exp")
    f32 = np.dtype(np.float32)
    instrs = [Instr("log", {}, [("in", 0)], f32, log.reference, log),
              Instr("sqrt", {}, [("in", 0)], f32, sqrt.reference, sqrt),
              Instr("exp", {}, [("in", 0)], f32, exp.reference, exp)]
    expr = FusedExpr((4,), [(0, (4,))], instrs, [(1, 0), (2, 1), (3, 2)])
    x = np.array([-1.0, 0.0, 1000.0, 1.0], np.float32)
    outs = [np.zeros(4, np.float32) for _ in range(3)]
    compile_fused(expr)(x, *outs)
    with np.errstate(all="ignore"):
        for out, ref in zip(outs, (np.log(x), np.sqrt(x), np.exp(x))):
            np.testing.assert_array_equal(out, ref)


@needs_cuda
def test_views_and_one_buffer_passed_twice():
    """Strided views are read and written where they are; an output passed as the very
    array of an input (not through `shared`) is updated in place all the same."""
    expr = _hand_shared_expr()
    rng = np.random.default_rng(0)
    big = rng.normal(size=(4, 10)).astype(np.float32)
    x, w = big[:, ::2], rng.normal(size=(10,)).astype(np.float32)[1::2]
    want = x * w + x
    square = np.zeros((5, 4), np.float32).T  # a transposed output
    x_before, neighbours = x.copy(), big[:, 1::2].copy()
    compile_fused(expr)(x, w, x, square)
    np.testing.assert_allclose(x, want, rtol=1e-6)
    np.testing.assert_allclose(square, np.square(x_before * w + x_before), rtol=1e-6)
    np.testing.assert_array_equal(big[:, 1::2], neighbours)  # written where x lies only


@needs_cuda
@pytest.mark.parametrize("launch", [(1, 1), (3, 7), (2, 33)], ids=str)
def test_any_launch_configuration_gives_the_same_results(launch):
    _, expr, _ = _one("reduce-(0,)", lambda e: e.reductions)
    case = _cases()["reduce-(0,)"][0]
    _check(expr, case.dtypes, known=case.known, launch=lambda n: launch)
    _, expr, _ = _one("mixed-axes", lambda e: e.reductions)
    case = _cases()["mixed-axes"][0]
    _check(expr, case.dtypes, known=case.known, launch=lambda n: launch, prepare=True)


@needs_cuda
def test_the_default_launch_is_tiny_in_the_simulator():
    blocks, threads = default_launch(1 << 20)
    if SIMULATOR:
        assert blocks <= 2 and threads == 32
    else:
        assert threads == 256 and blocks >= 1
    assert default_launch(1) == (1, threads)


@needs_cuda
def test_a_stream_may_be_given():
    from numba import cuda
    _check(_hand_shared_expr(), [np.float32] * 4, stream=cuda.default_stream())


def test_hostile_names_never_reach_the_source(tmp_path):
    hostile = f'x"); __import__("os").system("echo owned > {tmp_path}/m"); ("\n\u00e9'
    with gc.Graph():
        x = gc.placeholder(hostile, (None, 6))
        w = gc.parameter(hostile + " w", shape=(6,), seed=1)
        b = gc.parameter(hostile + " b", shape=(6,), seed=2)
        loss = (gc.relu(x * w + b) ** 2.0).sum()
        fn = gc.compile([loss], optimizer=gc.optim.Adam(lr=0.01), backend="numpy")
        fn({x: np.ones((3, 6), np.float32)})
    case = Case(fn)
    assert case.exprs
    for expr, shared in zip(case.exprs, case.shared):
        source = print_cuda(expr, shared)
        assert source.isascii()
        for fragment in ("__import__", "owned", "system", "\u00e9"):
            assert fragment not in source
    assert not (tmp_path / "m").exists()


def test_an_op_without_a_scalar_form_is_refused():
    import dataclasses
    op = dataclasses.replace(get_op("gelu"), name="formless", scalar=None)
    f32 = np.dtype(np.float32)
    expr = FusedExpr((4,), [(0, (4,))], [Instr("formless", {"approximate": "none"},
                                               [("in", 0)], f32, op.reference, op)], [(1, 0)])
    assert not printable(expr)
    assert all(printable(e) for _, e, _ in _case_exprs("mlp-adam"))
    with pytest.raises(ValueError, match="formless"):
        print_cuda(expr)


# --- the disk cache -----------------------------------------------------------------------
def _forget_loaded_kernels():
    for name in [n for n in sys.modules if n.startswith("graphc_kernel_")]:
        del sys.modules[name]


def test_kernels_are_cached_by_source_hash_in_a_user_only_directory(tmp_path, monkeypatch):
    pytest.importorskip("numba.cuda")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    _forget_loaded_kernels()
    expr = _hand_shared_expr()
    kernel = compile_fused(expr)
    directory = tmp_path / "numba"
    digest = hashlib.sha256(kernel.source.encode()).hexdigest()[:24]
    entry = directory / f"k_{digest}.py"
    assert entry.read_text() == kernel.source
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.getuid()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    # compiled once: a second kernel for the same source shares the first one's module
    assert compile_fused(expr)._module is kernel._module
    # an entry whose text is not the source printed is rewritten before anything runs
    entry.write_text(kernel.source.replace("def kernel", "raise SystemExit(3)\ndef kernel"))
    _forget_loaded_kernels()
    again = compile_fused(expr)
    assert entry.read_text() == kernel.source and again.source == kernel.source
