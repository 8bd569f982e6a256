"""Layers: parameter layout and initialisation as torch's, train/eval modes."""
import numpy as np
import pytest

import graphc as gc


def test_dense_is_torch_linear(rng):
    layer = gc.nn.Dense(5, 3)
    assert layer.weight.shape == (3, 5) and layer.bias.shape == (3,)
    bound = 1 / np.sqrt(5)
    assert np.abs(layer.weight.value).max() <= bound and layer.weight.value.std() > 0.1 * bound
    x = gc.placeholder("x", (None, 5))
    xv = rng.normal(size=(4, 5)).astype(np.float32)
    want = xv @ layer.weight.value.T + layer.bias.value
    np.testing.assert_allclose(gc.compile(layer(x))(x=xv), want, rtol=1e-5, atol=1e-6)
    assert [p.name for p in layer.parameters()] == ["dense_0/weight", "dense_0/bias"]


def test_module_names_are_unique_and_seeding_is_reproducible():
    def build():
        with gc.Graph():
            gc.nn.seed(7)
            return gc.nn.Sequential(gc.nn.Dense(3, 4), gc.nn.Dense(4, 2))
    a, b = build(), build()
    assert [p.name for p in a.parameters()] == ["dense_0/weight", "dense_0/bias",
                                                "dense_1/weight", "dense_1/bias"]
    for p, q in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(p.value, q.value)


def test_sequential_train_and_eval_modes(rng):
    model = gc.nn.Sequential(gc.nn.Flatten(), gc.nn.Dense(6, 50, activation="relu"),
                             gc.nn.Dropout(0.5), gc.nn.Dense(50, 2))
    x = gc.placeholder("x", (None, 2, 3))
    xv = rng.normal(size=(64, 2, 3)).astype(np.float32)
    train, evaluate = gc.compile(model(x, training=True)), gc.compile(model(x))
    e1, e2 = evaluate(x=xv).copy(), evaluate(x=xv)
    np.testing.assert_array_equal(e1, e2)
    t1 = train(x=xv).copy()
    assert not np.allclose(t1, e1)
    assert not np.allclose(train(x=xv), t1)


def test_errors_name_the_layer():
    layer = gc.nn.Dense(5, 3)
    with pytest.raises(gc.GraphError, match="dense_0: expects 5 input features"):
        layer(gc.placeholder("x", (None, 4)))
    with pytest.raises(gc.GraphError, match="unknown activation"):
        gc.nn.Dense(2, 2, activation="swishy")


def test_conv_layers_match_the_functional_ops(rng):
    conv = gc.nn.Conv2D(2, 4, 3, padding=1)
    assert conv.weight.shape == (4, 2, 3, 3) and conv.bias.shape == (4,)
    assert np.abs(conv.weight.value).max() <= 1 / np.sqrt(18)
    model = gc.nn.Sequential(gc.nn.Reshape(2, 6, 6), conv, gc.nn.MaxPool2D(2),
                             gc.nn.AvgPool2D(3), gc.nn.Flatten())
    x = gc.placeholder("x", (None, 72))
    y = model(x)
    assert y.shape == (None, 4)
    xv = rng.normal(size=(3, 72)).astype(np.float32)
    ref = gc.avg_pool2d(gc.max_pool2d(gc.conv2d(gc.reshape(x, (-1, 2, 6, 6)), conv.weight,
                                                conv.bias, padding=1), 2), 3)
    fn = gc.compile([y, ref])
    got, want = fn(x=xv)
    np.testing.assert_allclose(got, want.reshape(3, 4), rtol=1e-6)
    with pytest.raises(gc.GraphError, match="conv2d_0: expects NCHW input with 2 channels"):
        conv(gc.placeholder("z", (None, 3, 6, 6)))


def test_softmax_layers_and_plain_functions_in_sequential(rng):
    """The torch MNIST example's head: functions between layers, LogSoftmax at the end;
    state_dict keys keep torch's positions (a function takes one, as nn.ReLU() does)."""
    model = gc.nn.Sequential(gc.nn.Dense(4, 6), gc.relu, lambda t: t * 2.0,
                             gc.nn.Dense(6, 3), gc.nn.LogSoftmax(dim=1))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "3.weight", "3.bias"]
    x = gc.placeholder("x", (None, 4))
    xv = rng.normal(size=(5, 4)).astype(np.float32)
    d0, d3 = model[0], model[3]
    h = np.maximum(xv @ d0.weight.value.T + d0.bias.value, 0) * 2.0
    z = h @ d3.weight.value.T + d3.bias.value
    want = z - np.log(np.exp(z).sum(1, keepdims=True))
    got, probs = gc.compile([model(x), gc.nn.Softmax(1)(model(x, training=True))])(x=xv)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(probs, np.exp(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(gc.GraphError, match=r"Sequential: layer 1 is a int, not a gc\.nn "
                                            r"module or a function"):
        gc.nn.Sequential(gc.nn.Dense(2, 2), 3)


def test_torch_mnist_example_ports(rng):
    """The PyTorch MNIST CNN (two convs, dropout, log_softmax + nll_loss), its weights
    loaded from torch, gives torch's outputs and loss."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    net = tnn.Sequential(tnn.Conv2d(1, 4, 3), tnn.ReLU(), tnn.Conv2d(4, 8, 3), tnn.ReLU(),
                         tnn.MaxPool2d(2), tnn.Dropout(0.25), tnn.Flatten(), tnn.Linear(72, 16),
                         tnn.ReLU(), tnn.Dropout(0.5), tnn.Linear(16, 10), tnn.LogSoftmax(1))
    nn = gc.nn
    model = nn.Sequential(nn.Conv2D(1, 4, 3), gc.relu, nn.Conv2D(4, 8, 3), gc.relu,
                          nn.MaxPool2D(2), nn.Dropout(0.25), nn.Flatten(), nn.Dense(72, 16),
                          gc.relu, nn.Dropout(0.5), nn.Dense(16, 10), nn.LogSoftmax(dim=1))
    model.load_state_dict({k: v.detach().numpy() for k, v in net.state_dict().items()})
    xv = rng.normal(size=(3, 1, 10, 10)).astype(np.float32)
    yv = np.array([3, 0, 9])
    x = gc.placeholder("x", (None, 1, 10, 10))
    y = gc.placeholder("y", (None,), "int64")
    out = model(x)
    got, loss = gc.compile([out, gc.nll_loss(out, y)])(x=xv, y=yv)
    net.eval()
    want = net(torch.tensor(xv))
    np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss, torch.nn.functional.nll_loss(want, torch.tensor(yv))
                               .item(), rtol=1e-5)
