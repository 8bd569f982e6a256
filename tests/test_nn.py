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
