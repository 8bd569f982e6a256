"""RNN, LSTM, GRU against NumPy references written here from torch's documented equations;
backprop through time against finite differences; BatchNorm, LayerNorm, Embedding."""
import numpy as np
import pytest

import graphc as gc
from graphc.testing import check_grads


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _ref(kind, x, p, h0=None):
    """x (T, N, I); p: {local name: array}. Returns outputs (T, N, H)."""
    wih, whh, bih, bhh = p["weight_ih_l0"], p["weight_hh_l0"], p["bias_ih_l0"], p["bias_hh_l0"]
    H = whh.shape[1]
    h = np.zeros((x.shape[1], H)) if h0 is None else h0
    c = np.zeros_like(h)
    outs = []
    for xt in x:
        gi, gh = xt @ wih.T + bih, h @ whh.T + bhh
        if kind == "rnn":
            h = np.tanh(gi + gh)
        elif kind == "lstm":
            z = gi + gh
            i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
            c = _sig(f) * c + _sig(i) * np.tanh(g)
            h = _sig(o) * np.tanh(c)
        else:
            r = _sig(gi[:, :H] + gh[:, :H])
            zz = _sig(gi[:, H:2 * H] + gh[:, H:2 * H])
            n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
            h = (1 - zz) * n + zz * h
        outs.append(h)
    return np.stack(outs)


LAYERS = {"rnn": gc.nn.RNN, "lstm": gc.nn.LSTM, "gru": gc.nn.GRU}


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_forward_matches_torch_equations(kind, batch_first, rng):
    layer = LAYERS[kind](3, 4, batch_first=batch_first)
    gates = {"rnn": 1, "lstm": 4, "gru": 3}[kind]
    assert layer.weight_ih.shape == (gates * 4, 3) and layer.weight_hh.shape == (gates * 4, 4)
    assert np.abs(layer.weight_hh.value).max() <= 0.5  # U(-1/sqrt(H), 1/sqrt(H))
    xv = rng.normal(size=(5, 2, 3))  # (T, N, I)
    shape = (None, 5, 3) if batch_first else (5, None, 3)
    x = gc.placeholder("x", shape)
    y = layer(x)
    feed = xv.transpose(1, 0, 2) if batch_first else xv
    got = gc.compile(y)(x=feed.astype(np.float32))
    want = _ref(kind, xv, layer.state_dict())
    if batch_first:
        want = want.transpose(1, 0, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_backprop_through_time(kind, rng):
    layer = LAYERS[kind](2, 3)
    x = gc.placeholder("x", (4, 2, 2))
    loss = gc.sum(gc.square(layer(x)[-1]))  # depends on every step through the recurrence
    check_grads(loss, [x] + layer.parameters(), {x: rng.normal(size=(4, 2, 2))},
                rtol=1e-5, atol=1e-7)


def test_state_dict_round_trip_and_sequential_keys():
    model = gc.nn.Sequential(gc.nn.Dense(3, 4), gc.nn.ReLU(), gc.nn.Dense(4, 2))
    sd = model.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # torch's keys
    model.load_state_dict({k: np.zeros_like(v) for k, v in sd.items()})
    assert all((v == 0).all() for v in model.state_dict().values())
    with pytest.raises(gc.GraphError, match="missing.*0.bias"):
        model.load_state_dict({"0.weight": np.zeros((4, 3))})


def test_batchnorm_train_and_eval(rng):
    bn = gc.nn.BatchNorm(3, momentum=0.2)
    x = gc.placeholder("x", (None, 3, 2, 2))
    xv = rng.normal(loc=2.0, scale=3.0, size=(5, 3, 2, 2))
    train = gc.compile(bn(x, training=True), updates=bn.updates())
    y = train(x=xv.astype(np.float32))
    mu, var = xv.mean((0, 2, 3)), xv.var((0, 2, 3))
    want = (xv - mu[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bn.running_mean.value, 0.2 * mu, rtol=1e-5)
    np.testing.assert_allclose(bn.running_var.value, 0.8 + 0.2 * xv.var((0, 2, 3), ddof=1),
                               rtol=1e-5)
    ev = gc.compile(bn(x))(x=xv.astype(np.float32))
    rm, rv = bn.running_mean.value, bn.running_var.value
    np.testing.assert_allclose(ev, (xv - rm[:, None, None]) / np.sqrt(rv[:, None, None] + 1e-5),
                               rtol=1e-4, atol=1e-4)
    check_grads(gc.sum(gc.tanh(bn(x, training=True))), [x] + bn.parameters(trainable=True),
                {x: xv}, rtol=1e-5, atol=1e-7)


def test_layernorm_and_embedding(rng):
    ln = gc.nn.LayerNorm(4)
    x = gc.placeholder("x", (None, 4))
    xv = rng.normal(size=(3, 4))
    want = (xv - xv.mean(1, keepdims=True)) / np.sqrt(xv.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(gc.compile(ln(x))(x=xv), want, rtol=1e-5)
    emb = gc.nn.Embedding(7, 3)
    ids = gc.placeholder("ids", (None, 2), dtype="int32")
    iv = np.array([[1, 6], [1, 0]])
    np.testing.assert_array_equal(gc.compile(emb(ids))(ids=iv), emb.weight.value[iv])
    g = gc.compile(gc.grad(gc.sum(emb(ids)), emb.weight))(ids=iv)
    np.testing.assert_array_equal(g[:, 0], [1, 2, 0, 0, 0, 0, 1])
    with pytest.raises(gc.FeedError, match="index 9 is out of range for 7"):
        gc.compile(emb(ids))(ids=np.array([[9, 0]]))
