"""The CUDA backend (graphc.backends.cuda) against the CPU backend, in Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1, its own pytest process: `make test` runs it) or on a
device: training trajectories, random streams, graph capture and replay, parameters held by
the device runtime, no steady-state allocation, feed errors and check_numerics."""
from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn

from cuda_env import SIMULATOR, needs_cuda

pytestmark = needs_cuda


def _cuda():
    return gc.backends.get("cuda")


def _mlp(dtype, backend, steps=4, dropout=0.25, optimizer=None, seed=0):
    """An MLP with dropout trained for a few steps: its losses and final parameters."""
    rng = np.random.default_rng(seed)
    with gc.Graph():
        x = gc.placeholder("x", (None, 12), dtype=dtype)
        y = gc.placeholder("y", (None,), dtype="int32")
        w1 = gc.parameter("w1", value=rng.normal(size=(12, 16)) * 0.3, dtype=dtype)
        b1 = gc.parameter("b1", value=np.zeros(16), dtype=dtype)
        w2 = gc.parameter("w2", value=rng.normal(size=(16, 5)) * 0.3, dtype=dtype)
        b2 = gc.parameter("b2", value=np.zeros(5), dtype=dtype)
        h = gc.dropout(gc.tanh(x @ w1 + b1), dropout)
        loss = gc.softmax_cross_entropy(h @ w2 + b2, y)
        opt = optimizer() if optimizer else gc.optim.Adam(lr=1e-2)
        step = gc.compile(loss, optimizer=opt, backend=backend)
        data = np.random.default_rng(1)
        xb = data.normal(size=(8, 12)).astype(dtype)
        yb = data.integers(0, 5, size=8).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        params = {p.name: p.value for p in gc.get_default_graph().parameters()}
    return losses, params, step


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_mlp_with_adam_and_dropout_follows_the_cpu_trajectory(dtype, rtol):
    losses, params, step = _mlp(dtype, "cuda")
    cpu_losses, cpu_params, _ = _mlp(dtype, "numpy")
    assert step.backend == "cuda"
    np.testing.assert_allclose(losses, cpu_losses, rtol=rtol)
    assert params.keys() == cpu_params.keys()
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=rtol, atol=rtol,
                                   err_msg=name)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("optimizer", [lambda: gc.optim.SGD(lr=0.1),
                                       lambda: gc.optim.SGD(lr=0.1, momentum=0.9),
                                       lambda: gc.optim.RMSprop(lr=1e-2)])
def test_other_optimizers_follow_the_cpu_trajectory(optimizer):
    losses, params, _ = _mlp("float64", "cuda", optimizer=optimizer, dropout=0.0)
    cpu_losses, cpu_params, _ = _mlp("float64", "numpy", optimizer=optimizer, dropout=0.0)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-10)
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=1e-10, atol=1e-12)


def _trajectory(build, backend, steps, shapes, classes, seed):
    """Losses and final parameters of `build(x) -> logits` trained with Adam and dropout."""
    rng = np.random.default_rng(seed)
    with gc.Graph():
        nn.seed(seed)
        x = gc.placeholder("x", shapes)
        y = gc.placeholder("y", (None,), dtype="int32")
        loss = gc.softmax_cross_entropy(build(x), y)
        step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), backend=backend)
        concrete = tuple(2 if d is None else d for d in shapes)
        xb = rng.normal(size=concrete).astype(np.float32)
        yb = rng.integers(0, classes, size=2).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        return losses, [p.value for p in gc.get_default_graph().parameters()]


def _cnn(x):
    model = nn.Sequential(nn.Conv2D(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2D(2),
                          nn.Flatten(), nn.Dropout(0.2), nn.Dense(48, 4))
    return model(x, training=True)


def _lstm(x):
    _, (h, _) = nn.LSTM(4, 6).run(x)
    return nn.Dense(6, 3)(gc.dropout(h, 0.1))


@pytest.mark.parametrize("build,shapes,classes", [(_cnn, (None, 1, 8, 8), 4),
                                                  (_lstm, (3, None, 4), 3)],
                         ids=["cnn", "lstm"])
def test_cnn_and_lstm_follow_the_cpu_trajectory(build, shapes, classes):
    losses, params = _trajectory(build, "cuda", 3, shapes, classes, seed=4)
    cpu_losses, cpu_params = _trajectory(build, "numpy", 3, shapes, classes, seed=4)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-5)
    for p, q in zip(params, cpu_params):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_stacked_backprop_through_time_concats_equal_the_cpu():
    """The per-step gate gradients and hidden states written straight into their concats'
    buffers (256-byte pieces: aligned for the device's arena), the concats not launched."""
    def train(backend):
        rng = np.random.default_rng(5)
        with gc.Graph():
            nn.seed(5)
            x = gc.placeholder("x", (3, None, 4))
            y = gc.placeholder("y", (None,), dtype="int32")
            _, (h, _) = nn.LSTM(4, 32).run(x)
            step = gc.compile(gc.softmax_cross_entropy(nn.Dense(32, 3)(h), y),
                              optimizer=gc.optim.SGD(lr=0.5), backend=backend)
            xb = rng.normal(size=(3, 2, 4)).astype(np.float32)
            yb = rng.integers(0, 3, size=2).astype(np.int32)
            losses = [float(step(x=xb, y=yb)) for _ in range(3)]
            return losses, [p.value for p in gc.get_default_graph().parameters()], step
    losses, params, step = train("cuda")
    cpu_losses, cpu_params, _ = train("numpy")
    (bound, run), = step._compiled.values()
    stacked = bound.memory.stacked
    # two concats, the projection gradient's row scatter (the recurrent weight's stack a
    # range of it)
    assert len(stacked) == 3 and len(bound.memory.within) == 1
    elided = {i for i, k in enumerate(bound.kernels) if k.outputs and k.outputs[0] in stacked}
    assert elided and not elided & {i for i, _, _ in run.launches}
    # no strided outputs on the device: its gate-gradient scatters still run as kernels
    assert not bound.memory.sliced and not bound.memory.placed
    assert any(k.ops == ["scatter_slices"] for k in bound.kernels)
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-5)
    for p, q in zip(params, cpu_params):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_random_streams_equal_the_cpu_bit_for_bit():
    def masks(backend):
        with gc.Graph():
            x = gc.placeholder("x", (None, 33))
            fn = gc.compile([gc.random_uniform(x), gc.dropout(x, 0.5)], backend=backend)
            ones = np.ones((5, 33), np.float32)
            return [fn(x=ones, to_numpy=True) for _ in range(3)]
    for got, want in zip(masks("cuda"), masks("numpy")):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)


def test_graph_replay_equals_eager_launches(monkeypatch):
    replayed, _, step = _mlp("float64", "cuda")
    assert step._compiled and all(run.captured for _, run in step._compiled.values())
    monkeypatch.setattr(type(_cuda()), "cuda_graph", False)
    eager, _, step = _mlp("float64", "cuda")
    assert all(not run.captured for _, run in step._compiled.values())
    assert replayed == eager


def test_parameters_live_on_the_device_and_read_and_write_through(tmp_path):
    from graphc.backends.cuda.runtime import DeviceStorage
    with gc.Graph() as g:
        x = gc.placeholder("x", (None, 3))
        w = gc.parameter("w", value=np.eye(3))
        opt = gc.optim.SGD(lr=0.5)
        step = gc.compile(gc.sum(x @ w), optimizer=opt, backend="cuda")
        step(x=np.ones((2, 3), np.float32))
        assert isinstance(w.storage, DeviceStorage) and w.storage.runtime is _cuda().runtime
        np.testing.assert_allclose(w.value, np.eye(3) - 0.5 * 2, rtol=1e-6)
        w.value = np.zeros((3, 3))  # writes through to the device
        step(x=np.ones((2, 3), np.float32))
        np.testing.assert_allclose(w.value, np.full((3, 3), -1.0))
        opt.lr = 0.25  # a hyper-parameter: a host write, seen by the next step
        step(x=np.ones((2, 3), np.float32))
        np.testing.assert_allclose(w.value, np.full((3, 3), -1.5))
        gc.save(tmp_path / "ck.npz", g)
        w.value = np.ones((3, 3))
        gc.load(tmp_path / "ck.npz", g)
        np.testing.assert_allclose(w.value, np.full((3, 3), -1.5))
        # a CPU Function of the same graph takes the parameters back to the host
        fn = gc.compile(x @ w, backend="numpy")
        np.testing.assert_allclose(fn(x=np.ones((1, 3), np.float32)), [[-4.5] * 3])
        step(x=np.ones((2, 3), np.float32))  # and the CUDA step binds them again
        np.testing.assert_allclose(w.value, np.full((3, 3), -2.0))


def test_optimizer_step_count_is_kept_on_the_host():
    _, _, step = _mlp("float32", "cuda", steps=3)
    opt = step._optimizer
    assert opt.step_count == 3


def test_no_allocation_in_steady_state():
    losses, _, step = _mlp("float32", "cuda", steps=2)
    runtime = _cuda().runtime
    before = runtime.allocations
    (_, run), = step._compiled.values()
    xb = np.zeros((8, 12), np.float32)
    yb = np.zeros(8, np.int32)
    for _ in range(3):
        out = step(x=xb, y=yb)
        del out
    assert runtime.allocations == before


def test_results_stay_on_the_device_unless_asked():
    with gc.Graph():
        x = gc.placeholder("x", (None, 2))
        fn = gc.compile({"y": x * 2.0, "s": gc.sum(x)}, backend="cuda")
        out = fn(x=np.ones((3, 2), np.float32))
        assert float(out["s"]) == 6.0
        host = fn(x=np.ones((3, 2), np.float32), to_numpy=True)
        assert isinstance(host["y"], np.ndarray)
        np.testing.assert_array_equal(host["y"], np.full((3, 2), 2.0))


def test_feed_errors_are_the_cpu_errors():
    with gc.Graph():
        x = gc.placeholder("x", (None, 4))
        y = gc.placeholder("y", (None,), dtype="int32")
        fn = gc.compile(gc.softmax_cross_entropy(x, y), backend="cuda")
        with pytest.raises(gc.FeedError, match="expects shape"):
            fn(x=np.ones((2, 3), np.float32), y=np.zeros(2, np.int32))
        with pytest.raises(gc.FeedError, match="label 7 is out of range for 4 classes"):
            fn(x=np.ones((2, 4), np.float32), y=np.array([0, 7], np.int32))
        with pytest.raises(gc.FeedError, match="missing feed"):
            fn(x=np.ones((2, 4), np.float32))


def test_check_numerics_names_the_op_and_leaves_parameters_as_they_were():
    with gc.Graph():
        x = gc.placeholder("x", (None, 3))
        w = gc.parameter("w", value=np.ones((3, 3)))
        loss = gc.sum(gc.log(x @ w))
        step = gc.compile(loss, optimizer=gc.optim.Adam(), backend="cuda",
                          check_numerics=True)
        step(x=np.ones((2, 3), np.float32))
        before = w.value
        with pytest.raises(gc.NumericsError, match="log"):
            step(x=-np.ones((2, 3), np.float32))
        np.testing.assert_array_equal(w.value, before)


@pytest.mark.skipif(not SIMULATOR, reason="the simulator's own rule")
def test_auto_never_picks_the_simulator():
    assert "cuda" in gc.backends.available()
    assert gc.backends.resolve("auto") == "numpy"
    assert _cuda().runtime.simulated


# --- a small conv net on the hand-written kernels --------------------------------------------
# the ops of _conv_net that graphc.kernels has kernels for: none may fall back to its reference
_CONV_NET_OPS = {"conv2d", "conv2d_input_grad", "conv2d_weight_grad", "max_pool2d",
                 "max_pool2d_grad", "layer_norm", "concat", "scatter_slices"}


def _conv_net(dtype, backend, steps=3):
    """conv2d + relu, a grouped, dilated conv2d + relu, max_pool2d, two slices (one
    layer-normalised) joined by concat, dense and softmax cross-entropy, trained with Adam:
    its losses and final parameters."""
    rng = np.random.default_rng(3)
    with gc.Graph():
        x = gc.placeholder("x", (None, 2, 8, 8), dtype=dtype)
        y = gc.placeholder("y", (None,), dtype="int32")

        def param(name, *shape):
            return gc.parameter(name, value=rng.normal(size=shape) * 0.3, dtype=dtype)
        w1, b1 = param("w1", 4, 2, 3, 3), param("b1", 4)
        w2 = param("w2", 4, 2, 3, 3)
        ln_w, ln_b = param("ln_w", 32), param("ln_b", 32)
        wd, bd = param("wd", 64, 5), param("bd", 5)
        h = gc.relu(gc.conv2d(x, w1, b1, padding=1))
        h = gc.relu(gc.conv2d(h, w2, stride=1, padding=2, dilation=2, groups=2))
        h = gc.reshape(gc.max_pool2d(h, 2), (-1, 64))
        h = gc.concat([gc.layer_norm(h[:, :32], 32, ln_w, ln_b), h[:, 32:] * 2.0], axis=1)
        loss = gc.softmax_cross_entropy(h @ wd + bd, y)
        step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-2), backend=backend)
        data = np.random.default_rng(4)
        xb = data.normal(size=(3, 2, 8, 8)).astype(dtype)
        yb = data.integers(0, 5, size=3).astype(np.int32)
        losses = [float(step(x=xb, y=yb)) for _ in range(steps)]
        params = {p.name: p.value for p in gc.get_default_graph().parameters()}
        if backend == "cuda":  # the conv kernels' scratch was allocated at bind time
            before = _cuda().runtime.allocations
            for _ in range(2):
                step(x=xb, y=yb)  # the results are dropped: their buffers are recycled
            assert _cuda().runtime.allocations == before
    return losses, params


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 1e-5)])
def test_conv_net_runs_on_the_hand_written_kernels(monkeypatch, dtype, rtol):
    """Every conv, pooling, layer_norm, concat and slice-gradient op of the net launches its
    graphc.kernels kernel (none runs the generic reference path), and the trajectory is
    the numpy backend's."""
    import graphc.kernels
    from graphc.backends.cuda import executor
    table = graphc.kernels.cuda_kernels()[0]
    assert _CONV_NET_OPS <= set(table)
    launched, generic = set(), set()
    for name in _CONV_NET_OPS:
        def spy(*args, _launcher=table[name], _name=name, **kw):
            launched.add(_name)
            return _launcher(*args, **kw)
        if hasattr(table[name], "prepare"):
            spy.prepare = table[name].prepare
        monkeypatch.setitem(table, name, spy)
    real_generic = executor._generic

    def generic_spy(step, shapes, rt):
        generic.add(step.op.name)
        return real_generic(step, shapes, rt)
    monkeypatch.setattr(executor, "_generic", generic_spy)
    losses, params = _conv_net(dtype, "cuda")
    assert launched == _CONV_NET_OPS
    assert not generic & set(table), f"ops with kernels ran their reference: {generic}"
    monkeypatch.undo()
    cpu_losses, cpu_params = _conv_net(dtype, "numpy")
    np.testing.assert_allclose(losses, cpu_losses, rtol=rtol)
    assert losses[-1] < losses[0]
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=rtol, atol=rtol,
                                   err_msg=name)


# --- optimizer updates: one multi-tensor launch per rule ------------------------------------
_RULES = {"adam": lambda: gc.optim.Adam(lr=1e-2),
          "sgd_momentum": lambda: gc.optim.SGD(lr=0.1, momentum=0.9),
          "adamw": lambda: gc.optim.AdamW(lr=1e-2, weight_decay=0.1)}


def _deep_mlp(dtype, backend, optimizer, steps=3, trace_step=None):
    """A three-layer MLP (six parameters) with dropout, trained with a learning rate that
    changes after every step (a schedule: a device scalar, never baked into a captured
    graph): losses, final parameters, the Function, and what the runtime's trace recorded
    during step `trace_step`."""
    rng = np.random.default_rng(7)
    traced = None
    with gc.Graph():
        x = gc.placeholder("x", (None, 6), dtype=dtype)
        y = gc.placeholder("y", (None,), dtype="int32")
        h = x
        for i, (a, b) in enumerate([(6, 8), (8, 7), (7, 3)]):
            w = gc.parameter(f"w{i}", value=rng.normal(size=(a, b)) * 0.4, dtype=dtype)
            bias = gc.parameter(f"b{i}", value=rng.normal(size=b) * 0.1, dtype=dtype)
            h = h @ w + bias
            if i < 2:
                h = gc.dropout(gc.tanh(h), 0.1)
        loss = gc.softmax_cross_entropy(h, y)
        opt = optimizer()
        step = gc.compile(loss, optimizer=opt, backend=backend)
        data = np.random.default_rng(8)
        xb = data.normal(size=(5, 6)).astype(dtype)
        yb = data.integers(0, 3, size=5).astype(np.int32)
        losses = []
        rt = _cuda().runtime
        for i in range(steps):
            if i == trace_step:
                rt.trace = []
            try:
                losses.append(float(step(x=xb, y=yb)))
            finally:
                if i == trace_step:
                    traced, rt.trace = rt.trace, None
            opt.lr = opt.lr * 0.7
        params = {p.name: p.value for p in gc.get_default_graph().parameters()}
    return losses, params, step, traced


def _tensor_update_slots(bound) -> set:
    return {s for p, s in bound.plan.updates if p.ndim > 0}


def _writes_a_tensor_update(fn, slots) -> bool:
    """Whether a launched callable is a fused kernel storing one of `slots`."""
    from graphc.backends.cuda.printer import FusedKernel
    kernel = getattr(fn, "func", fn)  # on a device: a partial that binds the stream
    if not isinstance(kernel, FusedKernel):
        return False
    exprs = [kernel.expr] + ([kernel.expr.epilogue] if kernel.expr.epilogue else [])
    return any(s in slots for e in exprs for s, _ in e.outputs)


@pytest.mark.parametrize("cuda_graph", [True, False], ids=["graph", "eager"])
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
@pytest.mark.parametrize("rule", sorted(_RULES))
def test_each_update_rule_is_one_multi_tensor_launch(monkeypatch, rule, dtype, rtol,
                                                      cuda_graph):
    """Adam, SGD with momentum and AdamW over six parameters: every weight, bias and
    optimizer state is updated by one launch per step (one rule), replayed or eager, and
    the trajectory (with a changing learning rate) is the numpy backend's."""
    from graphc.backends.cuda.multi_tensor import MultiTensorLaunch
    monkeypatch.setattr(type(_cuda()), "cuda_graph", cuda_graph)
    losses, params, step, traced = _deep_mlp(dtype, "cuda", _RULES[rule], trace_step=2)
    cpu_losses, cpu_params, _, _ = _deep_mlp(dtype, "numpy", _RULES[rule])
    np.testing.assert_allclose(losses, cpu_losses, rtol=rtol)
    assert params.keys() == cpu_params.keys()
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=rtol, atol=rtol,
                                   err_msg=name)
    (bound, run), = step._compiled.values()
    assert bool(run.captured) == cuda_graph
    assert len(traced) == len(run.launches)  # the trace saw one whole step
    multi = [fn for fn in traced if isinstance(fn, MultiTensorLaunch)]
    assert len(multi) == 1
    tensors = sorted(p.name for p, _ in bound.plan.updates if p.ndim > 0)
    assert len(tensors) >= 12 and sorted(multi[0].names) == tensors
    slots = _tensor_update_slots(bound)
    assert not [fn for fn in traced if _writes_a_tensor_update(fn, slots)]


def test_multi_tensor_updates_launch_fewer_kernels_for_the_same_numbers(monkeypatch):
    """Against one fused kernel per update (multi_tensor off): bit-equal results and, per
    step, 1 update launch instead of one per parameter (and its bias pre-kernels)."""
    monkeypatch.setattr(type(_cuda()), "cuda_graph", False)
    counts, results = {}, {}
    for on in (True, False):
        monkeypatch.setattr(type(_cuda()), "multi_tensor", on)
        losses, params, step, traced = _deep_mlp("float32", "cuda", _RULES["adam"],
                                                 trace_step=1)
        (bound, run), = step._compiled.values()
        slots = _tensor_update_slots(bound)
        counts[on] = (len(traced), sum(_writes_a_tensor_update(fn, slots) for fn in traced))
        results[on] = (losses, params)
    assert counts[True][1] == 0 and counts[False][1] == 6  # one per weight and bias
    assert counts[True][0] <= counts[False][0] - 6  # the biases' pre-kernels are gone too
    np.testing.assert_array_equal(results[True][0], results[False][0])
    for name, value in results[True][1].items():
        np.testing.assert_array_equal(value, results[False][1][name], err_msg=name)


def test_multi_tensor_parameters_read_and_write_through_and_migrate(tmp_path):
    """Parameters in a pool (views of one allocation): p.value, assignment, checkpoints,
    a CPU Function taking them to the host and the CUDA step taking them back."""
    from graphc.backends.cuda.runtime import DeviceStorage
    with gc.Graph() as g:
        x = gc.placeholder("x", (None, 3))
        w = gc.parameter("w", value=np.eye(3))
        b = gc.parameter("b", value=np.zeros(3))
        loss = gc.sum(gc.tanh(x @ w + b))
        opt = gc.optim.SGD(lr=0.5, momentum=0.5)
        step = gc.compile(loss, optimizer=opt, backend="cuda")
        ref = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5, momentum=0.5), backend="numpy")
        xb = np.linspace(-1, 1, 6).reshape(2, 3).astype(np.float32)
        step(x=xb)
        assert isinstance(w.storage, DeviceStorage) and w.storage.pool is not None
        assert w.storage.pool is b.storage.pool  # adopted together: one pool
        w.value = np.full((3, 3), 0.1)
        np.testing.assert_array_equal(w.value, np.full((3, 3), 0.1, np.float32))
        step(x=xb)
        gc.save(tmp_path / "ck.npz", g)
        saved = {p.name: p.value for p in g.parameters()}
        step(x=xb)
        gc.load(tmp_path / "ck.npz", g)
        for p in g.parameters():
            np.testing.assert_array_equal(p.value, saved[p.name], err_msg=p.name)
        # a CPU step (its own momentum buffers) moves w and b to the host and back
        ref(x=xb)
        host = {p.name: p.value for p in g.parameters()}
        assert w.storage.device == "host"
        step(x=xb)
        assert w.storage.pool is not None and w.storage.pool is b.storage.pool
        assert not np.array_equal(w.value, host["w"])


def test_multi_tensor_kernels_compile_to_ptx_for_sm_90(tmp_path):
    """The kernels printed for Adam, SGD with momentum and AdamW (float32 and float64)
    compile with numba.cuda.compile_ptx for sm_90 and sm_80, in a process of its own
    (PTX compilation is not available inside the simulator)."""
    import json
    import os
    import subprocess
    import sys
    from graphc.backends.cuda.multi_tensor import MultiTensorLaunch
    cases = {}
    for rule in sorted(_RULES):
        for dtype in ("float32", "float64"):
            _, _, step, _ = _deep_mlp(dtype, "cuda", _RULES[rule], steps=1)
            (_, run), = step._compiled.values()
            for _, fn, _ in run.launches:
                if isinstance(fn, MultiTensorLaunch):
                    cases[fn.kernel.source] = fn.kernel.signature()
    assert len(cases) == 6
    (tmp_path / "cases.json").write_text(json.dumps(sorted(cases.items())))
    script = (
        "import json, sys\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from cuda_env import NO_PTX\n"
        "if NO_PTX:\n"
        "    print('SKIP', NO_PTX); sys.exit(0)\n"
        "from numba import cuda\n"
        "from graphc.backends import kernel_cache\n"
        "for source, sig in json.load(open(sys.argv[1])):\n"
        "    fn = kernel_cache.load_module(source).update.py_func\n"
        "    for cc in ((9, 0), (8, 0)):\n"
        "        ptx, _ = cuda.compile_ptx(fn, sig, cc=cc)\n"
        "        assert f'.target sm_{cc[0]}{cc[1]}' in ptx and '.entry' in ptx, cc\n"
        "print('OK')\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "cases.json"),
                           os.path.dirname(__file__)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    if done.stdout.startswith("SKIP"):
        pytest.skip(done.stdout.strip())
    assert done.stdout.strip().endswith("OK")


# --- running out of device memory --------------------------------------------------------------
@pytest.mark.skipif(not SIMULATOR, reason="the simulator runtime's memory_limit hook")
def test_running_out_of_device_memory_is_a_resource_error(monkeypatch):
    """The simulator's device memory capped (SimRuntime.memory_limit): parameters, the
    arena of a larger batch and a call's output array that do not fit each raise
    ResourceError saying how much was asked for and what to do; parameters are untouched,
    and the step runs again once memory is there."""
    import re
    rt = _cuda().runtime
    with gc.Graph() as g:
        x = gc.placeholder("x", (None, 4))
        w = gc.parameter("w", value=np.arange(12.0).reshape(4, 3) / 10)
        b = gc.parameter("b", value=np.ones(3))
        step = gc.compile(gc.sum(gc.tanh(x @ w + b)), optimizer=gc.optim.Adam(lr=0.1),
                          backend="cuda")
        xb = np.ones((2, 4), np.float32)

        def values():
            return {p.name: p.value for p in g.parameters()}

        first = values()
        monkeypatch.setattr(rt, "memory_limit", rt.live_bytes)  # no room at all
        with pytest.raises(gc.ResourceError) as e:
            step(x=xb)
        text = str(e.value)
        assert re.search(r"could not allocate \d+ B of device memory for parameter '", text)
        assert "smaller batch size" in text and "free device memory" in text
        for name, v in values().items():
            np.testing.assert_array_equal(v, first[name], err_msg=name)

        monkeypatch.setattr(rt, "memory_limit", None)
        step(x=xb)
        one = values()
        monkeypatch.setattr(rt, "memory_limit", rt.live_bytes + 256)
        with pytest.raises(gc.ResourceError, match="smaller batch size") as e:
            step(x=np.ones((4096, 4), np.float32))  # its arena: 48 KiB and more
        # the runtime's own error reaches the caller: what was asked for, what is free
        assert re.search(r"could not allocate [\d.]+ KiB of device memory for the plan's "
                         r"arena; [\d.]+ B of [\d.]+ KiB are free", str(e.value)), str(e.value)
        for name, v in values().items():
            np.testing.assert_array_equal(v, one[name], err_msg=name)

        monkeypatch.setattr(rt, "memory_limit", None)
        held = [step(x=xb) for _ in range(3)]  # the caller keeps every output array
        three = values()
        monkeypatch.setattr(rt, "memory_limit", rt.live_bytes)
        with pytest.raises(gc.ResourceError, match="for an output array"):
            step(x=xb)
        for name, v in values().items():
            np.testing.assert_array_equal(v, three[name], err_msg=name)
        assert step._optimizer.step_count == 4
        del held
        step(x=xb)  # a recycled output: no allocation needed
        assert step._optimizer.step_count == 5


@pytest.mark.parametrize("fallback", ["unaddressable", "overlapping"])
def test_multi_tensor_members_that_cannot_share_a_launch_still_update(monkeypatch, fallback):
    """A member whose arrays the table cannot address (here: w1's, refused) runs as its own
    fused kernel in order; members whose arrays would overlap (here: all, as if) get a
    launch each. Either way the trajectory is the numpy backend's."""
    from graphc.backends.cuda import multi_tensor
    from graphc.backends.cuda.multi_tensor import MultiTensorLaunch
    monkeypatch.setattr(type(_cuda()), "cuda_graph", False)
    if fallback == "unaddressable":
        locate = multi_tensor._locate

        def refuse_w1(arr, flats, rt):
            names = {p.name for p in gc.get_default_graph().parameters()
                     if getattr(p.storage, "array", None) is arr}
            return None if "w1" in names else locate(arr, flats, rt)
        monkeypatch.setattr(multi_tensor, "_locate", refuse_w1)
    else:
        monkeypatch.setattr(multi_tensor, "_overlaps", lambda a, b: True)
    losses, params, step, traced = _deep_mlp("float64", "cuda", _RULES["adam"], trace_step=1)
    cpu_losses, cpu_params, _, _ = _deep_mlp("float64", "numpy", _RULES["adam"])
    np.testing.assert_allclose(losses, cpu_losses, rtol=1e-12)
    for name in params:
        np.testing.assert_allclose(params[name], cpu_params[name], rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    (bound, _), = step._compiled.values()
    multi = [fn for fn in traced if isinstance(fn, MultiTensorLaunch)]
    singles = [fn for fn in traced if _writes_a_tensor_update(fn, _tensor_update_slots(bound))]
    names = sorted(n for fn in multi for n in fn.names)
    tensors = sorted(p.name for p, _ in bound.plan.updates if p.ndim > 0)
    if fallback == "unaddressable":
        assert len(singles) == 1 and len(multi) == 2  # before w1 and after it, in order
        assert names == [n for n in tensors if n != "w1" and not n.endswith("/w1_0")]
    else:
        assert not singles and len(multi) == 6 and names == tensors
