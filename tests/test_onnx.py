"""gc.export_onnx: every exported model passes onnx.checker (with shape inference), and
onnxruntime's results equal graphc's compiled results within 1e-5 relative (float32): an MLP,
LeNet, recurrent layers over a fixed length with a symbolic batch, a layer-norm/GELU block at
several opsets, each mapped op on its own, batch norm, embedding and dropout in evaluation
mode; ops that cannot be exported raise CompileError naming the op and the user's line."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.onnx_export import supported_ops

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

RTOL = 1e-5
ATOL = 1e-6  # for results near zero, where a relative tolerance means nothing


def _session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def roundtrip(outputs: dict, feed: dict, tmp_path, opset=None, feeds=()):
    """Export `outputs`, check the file, and compare onnxruntime with gc.compile on `feed`
    (and on each extra feed in `feeds`, through the same session). Returns the model."""
    path = tmp_path / "model.onnx"
    model = gc.export_onnx(outputs, path, opset=opset)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    sess = _session(path)
    assert {i.name for i in sess.get_inputs()} == set(feed)
    assert [o.name for o in sess.get_outputs()] == list(outputs)
    fn = gc.compile(outputs)
    for f in (feed, *feeds):
        want = fn(**f)
        got = dict(zip(outputs, sess.run(None, f)))
        for name in outputs:
            assert got[name].dtype == want[name].dtype, name
            assert got[name].shape == want[name].shape, name
            np.testing.assert_allclose(got[name], want[name], rtol=RTOL, atol=ATOL,
                                       err_msg=name)
    return model


def op_types(model) -> set:
    return {n.op_type for n in model.graph.node}


def normal(rng, *shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


# --- whole models ----------------------------------------------------------------------------
def test_mlp(tmp_path, rng):
    x = gc.placeholder("x", (None, 20))
    model = nn.Sequential(nn.Dense(20, 32, activation="relu"), nn.Dense(32, 32, activation="tanh"),
                          nn.Dense(32, 10))
    logits = model(x)
    out = {"logits": logits, "probs": gc.softmax(logits), "logp": gc.log_softmax(logits)}
    m = roundtrip(out, {"x": normal(rng, 7, 20)}, tmp_path, feeds=[{"x": normal(rng, 1, 20)}])
    (inp,) = m.graph.input
    assert inp.name == "x"
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 20]
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    for p in model.parameters():
        np.testing.assert_array_equal(inits[p.name], p.value)


def test_lenet(tmp_path, rng):
    x = gc.placeholder("images", (None, 1, 28, 28))
    lenet = nn.Sequential(
        nn.Conv2D(1, 6, 5, padding=2, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(6, 16, 5, activation="relu"), nn.MaxPool2D(2), nn.Flatten(),
        nn.Dense(400, 120, activation="relu"), nn.Dense(120, 84, activation="relu"),
        nn.Dense(84, 10))
    m = roundtrip({"logits": lenet(x)}, {"images": rng.random((3, 1, 28, 28), np.float32)},
                  tmp_path)
    assert {"Conv", "MaxPool", "Relu", "MatMul"} <= op_types(m)


@pytest.mark.parametrize("layer", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_fixed_length(tmp_path, rng, layer):
    steps, features, hidden = 6, 8, 16
    x = gc.placeholder("seq", (steps, None, features))
    rnn = layer(features, hidden)
    outputs, state = rnn.run(x)
    last = state[0] if isinstance(state, tuple) else state
    head = nn.Dense(hidden, 4)
    out = {"outputs": outputs, "last": last, "logits": head(last)}
    if isinstance(state, tuple):
        out["cell"] = state[1]
    m = roundtrip(out, {"seq": normal(rng, steps, 3, features)}, tmp_path,
                  feeds=[{"seq": normal(rng, steps, 5, features)}])
    dims = m.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == steps and dims[1].dim_param and dims[2].dim_value == features


def test_lstm_batch_first(tmp_path, rng):
    x = gc.placeholder("seq", (None, 5, 3))
    lstm = nn.LSTM(3, 7, batch_first=True)
    roundtrip({"outputs": lstm(x)}, {"seq": normal(rng, 2, 5, 3)}, tmp_path)


@pytest.mark.parametrize("opset", [13, 17, 20])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_layer_norm_gelu_block(tmp_path, rng, approximate, opset):
    x = gc.placeholder("x", (None, 5, 32))
    ln = nn.LayerNorm(32)
    ln.weight.value = 1.0 + 0.1 * normal(rng, 32)
    ln.bias.value = 0.1 * normal(rng, 32)
    up, down = nn.Dense(32, 64), nn.Dense(64, 32)
    y = x + down(gc.gelu(up(ln(x)), approximate=approximate))
    m = roundtrip({"y": y}, {"x": normal(rng, 3, 5, 32)}, tmp_path, opset=opset)
    assert ("LayerNormalization" in op_types(m)) == (opset >= 17)
    assert ("Gelu" in op_types(m)) == (opset >= 20)
    assert m.opset_import[0].version == opset


@pytest.mark.parametrize("opset", [13, 17])
def test_layer_norm_without_affine_over_two_axes(tmp_path, rng, opset):
    x = gc.placeholder("x", (None, 4, 6))
    roundtrip({"y": gc.layer_norm(x, (4, 6), eps=1e-3)}, {"x": normal(rng, 2, 4, 6)}, tmp_path,
              opset=opset)


# --- each mapped op ----------------------------------------------------------------------------
def _f(*shape, kind="n", dtype=np.float32):
    """An input: a placeholder shape (None allowed) and how to sample a concrete array."""
    concrete = tuple(3 if d is None else d for d in shape)

    def sample(rng):
        if kind == "n":
            v = rng.standard_normal(concrete)
        elif kind == "w":
            v = 4.0 * rng.standard_normal(concrete)
        elif kind == "p":
            v = rng.uniform(0.5, 2.0, concrete)
        elif kind == "d":  # small integers as floats: ties for comparisons and max/min
            v = rng.integers(-2, 3, concrete)
        elif kind == "bool":
            v = rng.random(concrete) < 0.5
        elif kind.startswith("lab"):
            v = rng.integers(0, int(kind[3:]), concrete)
        return np.asarray(v, dtype=dtype)
    return shape, np.dtype(dtype), sample


def _lab(classes, *shape, dtype=np.int32):
    return _f(*shape, kind=f"lab{classes}", dtype=dtype)


B = None  # a symbolic (batch) dimension
OPS = {
    # elementwise and activations
    "neg": (gc.neg, [_f(B, 4)]),
    "exp": (gc.exp, [_f(B, 4)]),
    "log": (gc.log, [_f(B, 4, kind="p")]),
    "sqrt": (gc.sqrt, [_f(B, 4, kind="p")]),
    "abs": (gc.abs, [_f(B, 4)]),
    "sign": (gc.sign, [_f(B, 4, kind="d")]),
    "square": (gc.square, [_f(B, 4)]),
    "relu": (gc.relu, [_f(B, 4)]),
    "relu_int": (gc.relu, [_f(B, 4, kind="d", dtype=np.int32)]),
    "leaky_relu": (lambda x: gc.leaky_relu(x, 0.2), [_f(B, 4)]),
    "sigmoid": (gc.sigmoid, [_f(B, 4, kind="w")]),
    "tanh": (gc.tanh, [_f(B, 4)]),
    "erf": (gc.erf, [_f(B, 4)]),
    "elu": (lambda x: gc.elu(x, 0.7), [_f(B, 40)]),
    "softplus": (gc.softplus, [_f(B, 40, kind="w")]),
    "softplus_beta": (lambda x: gc.softplus(x, beta=2.0, threshold=3.0), [_f(B, 40, kind="w")]),
    "gelu": (gc.gelu, [_f(B, 40, kind="w")]),
    "gelu_tanh": (lambda x: gc.gelu(x, approximate="tanh"), [_f(B, 40, kind="w")]),
    "cast_int": (lambda x: gc.cast(x, "int32"), [_f(B, 4, kind="w")]),
    "cast_bool": (lambda x: gc.cast(x, "bool"), [_f(B, 4, kind="d")]),
    "cast_float64": (lambda x: gc.cast(x, "float64"), [_f(B, 4)]),
    "add_broadcast": (gc.add, [_f(B, 3), _f(3)]),
    "sub": (gc.sub, [_f(B, 3), _f(B, 3)]),
    "mul_scalar": (lambda x: x * 2.5, [_f(B, 3)]),
    "div": (gc.div, [_f(B, 3), _f(B, 3, kind="p")]),
    "rdiv_int": (lambda x: 1 / x, [_f(B, 3, kind="lab5", dtype=np.int32)]),
    "pow": (gc.pow, [_f(B, 3, kind="p"), _f(B, 3)]),
    "maximum": (gc.maximum, [_f(B, 3, kind="d"), _f(B, 3, kind="d")]),
    "minimum": (gc.minimum, [_f(B, 3, kind="d"), _f(3, kind="d")]),
    "greater": (gc.greater, [_f(B, 3, kind="d"), _f(B, 3, kind="d")]),
    "greater_equal": (gc.greater_equal, [_f(B, 3, kind="d"), _f(B, 3, kind="d")]),
    "less": (gc.less, [_f(B, 3, kind="d"), _f(B, 3, kind="d")]),
    "equal": (gc.equal, [_f(B, 3, kind="d"), _f(B, 3, kind="d")]),
    "where": (gc.where, [_f(B, 3, kind="bool", dtype=bool), _f(B, 3), _f(3)]),
    "float64_chain": (lambda x, y: gc.tanh(x * y) - gc.exp(-x), [_f(B, 3, dtype=np.float64),
                                                                _f(B, 3, dtype=np.float64)]),
    # matmul
    "matmul": (gc.matmul, [_f(B, 4), _f(4, 5)]),
    "matmul_batched": (gc.matmul, [_f(2, 1, 3, 4), _f(5, 4, 2)]),
    "matmul_vector": (gc.matmul, [_f(B, 4), _f(4)]),
    "matmul_int": (gc.matmul, [_f(B, 4, kind="d", dtype=np.int64), _f(4, 2, kind="d",
                                                                     dtype=np.int64)]),
    # reductions
    "sum_all": (lambda x: gc.sum(x), [_f(B, 3, 4)]),
    "sum_keepdims": (lambda x: gc.sum(x, 1, keepdims=True), [_f(B, 3, 4)]),
    "sum_int": (lambda x: gc.sum(x, 0), [_f(B, 3, kind="lab9", dtype=np.int32)]),
    "sum_bool": (lambda x: gc.sum(x, -1), [_f(B, 3, kind="bool", dtype=bool)]),
    "mean": (lambda x: gc.mean(x, (0, 2)), [_f(B, 3, 4)]),
    "max": (lambda x: gc.max(x, -1), [_f(B, 3, 4, kind="d")]),
    "min_keepdims": (lambda x: gc.min(x, 1, keepdims=True), [_f(B, 3, 4)]),
    "max_bool": (lambda x: gc.max(x, 1), [_f(B, 3, kind="bool", dtype=bool)]),
    "logsumexp": (lambda x: gc.logsumexp(x, 1), [_f(B, 5, kind="w")]),
    "logsumexp_keepdims": (lambda x: gc.logsumexp(x, (0, 1), keepdims=True), [_f(B, 5)]),
    "argmax": (lambda x: gc.argmax(x, 1), [_f(B, 5)]),
    "softmax_axis0": (lambda x: gc.softmax(x, 0), [_f(B, 5, kind="w")]),
    "log_softmax": (gc.log_softmax, [_f(B, 5, kind="w")]),
    "one_hot": (lambda y: gc.one_hot(y, 6), [_lab(6, B)]),
    "one_hot_float": (lambda y: gc.one_hot(y, 4, dtype="float32"), [_lab(4, B, 2)]),
    # losses and composites
    "softmax_cross_entropy": (lambda x, y: gc.softmax_cross_entropy(x, y, reduction="none"),
                              [_f(B, 5, kind="w"), _lab(5, B)]),
    "softmax_cross_entropy_mean": (gc.softmax_cross_entropy,
                                   [_f(B, 5), _lab(5, B, dtype=np.int64)]),
    "bce_with_logits": (gc.binary_cross_entropy_with_logits, [_f(B, 4, kind="w"),
                                                             _f(B, 4, kind="bool")]),
    "mse_loss": (gc.mse_loss, [_f(B, 4), _f(B, 4)]),
    "hinge_loss": (gc.hinge_loss, [_f(B, 5), _lab(5, B)]),
    "triplet_loss": (gc.triplet_loss, [_f(B, 4), _f(B, 4), _f(B, 4)]),
    # shapes
    "reshape": (lambda x: gc.reshape(x, (-1, 6)), [_f(B, 2, 3)]),
    "reshape_static": (lambda x: x.reshape(3, 2, 2), [_f(4, 3)]),
    "transpose": (lambda x: gc.transpose(x, (1, 0, 2)), [_f(B, 2, 3)]),
    "T": (lambda x: x.T, [_f(B, 4)]),
    "broadcast_to": (lambda x: gc.broadcast_to(x, (2, 3, 4)), [_f(3, 1)]),
    "expand_dims": (lambda x: gc.expand_dims(x, (0, 2)), [_f(B, 4)]),
    "concat": (lambda a, b: gc.concat([a, b, a], axis=1), [_f(B, 2), _f(B, 3)]),
    "getitem_slices": (lambda x: x[1:3, ::2], [_f(5, 6)]),
    "getitem_int_none": (lambda x: x[None, :, -1], [_f(B, 4)]),
    "getitem_ellipsis": (lambda x: x[..., 0], [_f(B, 3, 4)]),
    "getitem_reverse": (lambda x: x[:, ::-1], [_f(B, 5)]),
    "getitem_reverse_static": (lambda x: x[4:0:-2, -100::-1], [_f(6, 5)]),
    "getitem_reverse_symbolic": (lambda x: x[::-2], [_f(B, 2)]),
    "getitem_negative": (lambda x: x[-2, 1:-1], [_f(B, 5)]),
    "getitem_last_symbolic": (lambda x: x[-1], [_f(B, 5)]),
    "getitem_mixed": (lambda x: x[1, None, 1:, None, 2], [_f(3, 4, 5)]),
    "getitem_empty": (lambda x: x[:, 3:1], [_f(B, 5)]),
    "zeros_like": (lambda x: gc.ops.zeros_like(x, "int64"), [_f(B, 3)]),
    "broadcast_like": (lambda x, y: gc.ops.broadcast_like(x, y), [_f(1, 3), _f(B, 3)]),
    "reshape_like": (lambda x, y: gc.ops.reshape_like(x, y), [_f(B, 6), _f(B, 2, 3)]),
    "sum_to_like": (lambda x, y: gc.ops.sum_to_like(x, y), [_f(2, 4, 3), _f(4, 1)]),
    "count": (lambda x: gc.ops.shape_ops.count(x, (0, 1), "float32") * 1.0, [_f(B, 3)]),
    # convolution and pooling
    "conv2d": (lambda x, w: gc.conv2d(x, w, stride=2, padding=1, dilation=(2, 1), groups=2),
               [_f(B, 4, 9, 8), _f(6, 2, 3, 2)]),
    "max_pool2d_padded": (lambda x: gc.max_pool2d(x, 3, stride=2, padding=1), [_f(B, 2, 7, 6)]),
    "avg_pool2d_padded": (lambda x: gc.avg_pool2d(x, (3, 2), stride=(2, 1), padding=1),
                          [_f(B, 2, 7, 6)]),
}


@pytest.mark.parametrize("case", sorted(OPS))
def test_op(tmp_path, rng, case):
    build, specs = OPS[case]
    phs = [gc.placeholder(f"in{i}", shape, dtype) for i, (shape, dtype, _) in enumerate(specs)]
    feed = {f"in{i}": sample(rng) for i, (_, _, sample) in enumerate(specs)}
    roundtrip({"out": build(*phs)}, feed, tmp_path)


@pytest.mark.skipif(not hasattr(gc, "take_along_axis"), reason="no gather ops in this tree")
def test_gather_family(tmp_path, rng):
    x = gc.placeholder("x", (None, 5))
    labels = gc.placeholder("labels", (None,), "int32")
    corner = gc.placeholder("corner", (None, 2), "int64")
    row = gc.placeholder("row", (1, 2), "int64")
    logp = gc.log_softmax(x)
    out = {"gather": gc.gather(x, 1, corner), "take_along_axis": gc.take_along_axis(x, row, 1),
           "take": x[:, gc.constant(np.array([4, 0, 2]))],
           "nll": gc.nll_loss(logp, labels),
           "nll_weighted": gc.nll_loss(logp, labels, weight=gc.constant(np.arange(
               1, 6, dtype=np.float32)), reduction="none")}
    feed = {"x": normal(rng, 4, 5), "labels": np.array([0, 4, -100, 2], np.int32),
            "corner": rng.integers(0, 5, (3, 2)), "row": np.array([[1, 3]])}
    m = roundtrip(out, feed, tmp_path)
    assert "GatherElements" in op_types(m)


def test_elu_keeps_relative_precision_near_zero(tmp_path):
    # ONNX Elu computes exp(x) - 1, which loses the relative precision of expm1 there
    x = gc.placeholder("x", (None,))
    gc.export_onnx({"y": gc.elu(x)}, tmp_path / "m.onnx")
    xv = -np.geomspace(1e-7, 1e-2, 50).astype(np.float32)
    (got,) = _session(tmp_path / "m.onnx").run(None, {"x": xv})
    np.testing.assert_allclose(got, gc.compile(gc.elu(x))(x=xv), rtol=RTOL, atol=0)


def test_logsumexp_of_an_all_minus_inf_row(tmp_path):
    x = gc.placeholder("x", (None, 3))
    feed = {"x": np.array([[-np.inf] * 3, [0.0, 1.0, -np.inf]], np.float32)}
    roundtrip({"y": gc.logsumexp(x, 1)}, feed, tmp_path)


def test_every_forward_op_of_the_registry_is_exported():
    missing = sorted(op for op, status in supported_ops().items() if status == "no ONNX mapping")
    assert not missing, f"registry ops without an ONNX mapping: {missing}"
    assert supported_ops()["random_uniform"] != "exported"
    assert supported_ops()["conv2d_input_grad"] == "gradient op"


# --- layers in evaluation mode ------------------------------------------------------------------
def test_batch_norm_eval(tmp_path, rng):
    x4 = gc.placeholder("x4", (None, 3, 4, 4))
    x2 = gc.placeholder("x2", (None, 5))
    bn4, bn2 = nn.BatchNorm(3), nn.BatchNorm(5, eps=1e-3)
    for bn in (bn4, bn2):
        c = bn.num_features
        bn.running_mean.value = normal(rng, c)
        bn.running_var.value = rng.uniform(0.5, 2.0, c).astype(np.float32)
        bn.weight.value = normal(rng, c)
        bn.bias.value = normal(rng, c)
    plain = gc.batch_norm(x2, bn2.running_mean, bn2.running_var)  # no weight nor bias
    out = {"bn4": bn4(x4), "bn2": bn2(x2), "plain": plain}
    m = roundtrip(out, {"x4": normal(rng, 2, 3, 4, 4), "x2": normal(rng, 6, 5)}, tmp_path)
    assert [n.op_type for n in m.graph.node].count("BatchNormalization") == 3


def test_batch_norm_with_batch_statistics(tmp_path, rng):
    x = gc.placeholder("x", (None, 3, 4, 4))
    bn = nn.BatchNorm(3)
    bn.weight.value = normal(rng, 3)
    roundtrip({"y": bn(x, training=True)}, {"x": normal(rng, 4, 3, 4, 4)}, tmp_path)


@pytest.mark.parametrize("dtype", ["int32", "int64"])
def test_embedding(tmp_path, rng, dtype):
    ids = gc.placeholder("ids", (None, 3), dtype)
    emb = nn.Embedding(10, 4)
    vectors = emb(ids)
    out = {"vectors": vectors, "pooled": nn.Dense(4, 2)(gc.mean(vectors, 1))}
    m = roundtrip(out, {"ids": rng.integers(0, 10, (5, 3)).astype(dtype)}, tmp_path)
    assert "Gather" in op_types(m)


def test_dropout_in_eval_mode_is_identity(tmp_path, rng):
    x = gc.placeholder("x", (None, 6))
    model = nn.Sequential(nn.Dense(6, 8, activation="relu"), nn.Dropout(0.5), nn.Dense(8, 2))
    m = roundtrip({"y": model(x)}, {"x": normal(rng, 4, 6)}, tmp_path)
    assert op_types(m) == {"MatMul", "Transpose", "Add", "Relu", "Identity"}
    assert gc.dropout(x, 0.3, training=False) is x


def test_initializers_hold_current_parameter_values(tmp_path, rng):
    x = gc.placeholder("x", (None, 3))
    w = gc.parameter("w", shape=(3, 2), seed=0)
    w.value = np.full((3, 2), 0.25, np.float32)
    m = roundtrip({"y": x @ w}, {"x": normal(rng, 2, 3)}, tmp_path)
    (init,) = [i for i in m.graph.initializer if i.name == "w"]
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(init), w.value)


# --- output names and structures ------------------------------------------------------------------
def test_output_names(tmp_path, rng):
    x = gc.placeholder("x", (None, 2))
    y = gc.tanh(x)
    path = tmp_path / "m.onnx"
    assert [o.name for o in gc.export_onnx(y, path).graph.output] == ["output_0"]
    names = [o.name for o in gc.export_onnx([y, x, x], path).graph.output]
    assert names[:2] == ["output_0", "x"] and len(set(names)) == 3
    sess = _session(path)
    xv = normal(rng, 3, 2)
    got = sess.run(None, {"x": xv})
    np.testing.assert_allclose(got[0], np.tanh(xv), rtol=RTOL)
    np.testing.assert_array_equal(got[1], xv)
    np.testing.assert_array_equal(got[2], xv)


def test_output_name_clashing_with_an_input_is_refused(tmp_path):
    x = gc.placeholder("x", (None, 2))
    with pytest.raises(gc.CompileError, match="output name 'x'"):
        gc.export_onnx({"x": gc.tanh(x)}, tmp_path / "m.onnx")


def test_dict_key_naming_an_input_after_itself(tmp_path, rng):
    x = gc.placeholder("x", (None, 2))
    roundtrip({"x": x, "y": gc.exp(x)}, {"x": normal(rng, 2, 2)}, tmp_path)


def test_parameter_as_an_output(tmp_path):
    w = gc.parameter("w", value=np.arange(4, dtype=np.float32))
    gc.export_onnx({"weights": w}, tmp_path / "m.onnx")
    np.testing.assert_array_equal(_session(tmp_path / "m.onnx").run(None, {})[0], w.value)


# --- errors -----------------------------------------------------------------------------------
def test_random_op_cannot_be_exported(tmp_path):
    x = gc.placeholder("x", (None, 4))
    line = inspect.currentframe().f_lineno + 1
    y = gc.dropout(x, 0.5, training=True)
    with pytest.raises(gc.CompileError,
                       match=rf"'random_uniform' \(made at test_onnx.py:{line}\).*training=True"):
        gc.export_onnx(y, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_gradient_ops_cannot_be_exported(tmp_path, rng):
    x = gc.placeholder("x", (None, 1, 6, 6))
    w = gc.parameter("w", shape=(2, 1, 3, 3), seed=0)
    line = inspect.currentframe().f_lineno + 1
    loss = gc.sum(gc.conv2d(x, w))
    (gx,) = [gc.grad(loss, [x])[0]]
    with pytest.raises(gc.CompileError, match=rf"'conv2d_input_grad' \(made at "
                                              rf"test_onnx.py:{line}\).*gradient op"):
        gc.export_onnx(gx, tmp_path / "m.onnx")


@pytest.mark.parametrize("opset", [12, 10_000, "17", True])
def test_bad_opset(tmp_path, opset):
    x = gc.placeholder("x", (2,))
    with pytest.raises(gc.CompileError, match="opset must be an int from 13"):
        gc.export_onnx(gc.exp(x), tmp_path / "m.onnx", opset=opset)


def test_non_tensor_outputs(tmp_path):
    with pytest.raises(gc.CompileError, match="outputs must be tensors"):
        gc.export_onnx([np.zeros(2)], tmp_path / "m.onnx")
    with pytest.raises(gc.CompileError, match="must be a tensor, list, tuple or dict"):
        gc.export_onnx(3.0, tmp_path / "m.onnx")
