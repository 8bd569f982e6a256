import numpy as np
import pytest

import graphc as gc


def test_default_graph_and_with_block():
    x = gc.placeholder("x", (None, 3))
    assert x.graph is gc.get_default_graph()
    with gc.Graph() as g:
        y = gc.placeholder("x", (2,))  # same name is fine in another graph
        assert y.graph is g and gc.get_default_graph() is g
    assert gc.get_default_graph() is x.graph


def test_duplicate_names_raise():
    gc.placeholder("x", (3,))
    with pytest.raises(gc.GraphError, match="'x' is already used"):
        gc.placeholder("x", (3,))
    gc.parameter("w", shape=(2,))
    with pytest.raises(gc.GraphError, match="'w' is already used"):
        gc.parameter("w", shape=(2,))
    with pytest.raises(gc.GraphError, match="'x' is already used"):
        gc.parameter("x", shape=(2,))


def test_tensor_attributes():
    x = gc.placeholder("x", (None, 4, 5), dtype="float64")
    assert x.shape == (None, 4, 5) and x.ndim == 3 and x.dtype == np.float64 and x.name == "x"
    assert x.T.shape == (5, 4, None)
    assert x.reshape(-1, 20).shape == (None, 20)
    assert x.sum(axis=1).shape == (None, 5)
    assert x.mean(axis=(1, 2), keepdims=True).shape == (None, 1, 1)
    assert x[1:3, :, None].shape == (None, 4, 1, 5)
    assert x[:, 1:3].shape == (None, 2, 5)
    assert x[0].shape == (4, 5)
    assert x[..., 0].shape == (None, 4)


def test_source_line_recorded():
    x = gc.placeholder("x", (3,))
    y = gc.exp(x)
    assert y.source.file == "test_graph.py"
    assert "test_graph.py" in y.describe()


@pytest.mark.parametrize("init", ["zeros", "ones", "normal", "uniform", "glorot_uniform",
                                  "glorot_normal", "he_normal", "he_uniform"])
def test_parameter_initializers(init):
    p = gc.parameter("w", shape=(64, 32), init=init, seed=0)
    v = p.value
    assert v.shape == (64, 32) and v.dtype == np.float32
    if init == "zeros":
        assert not v.any()
    elif init == "ones":
        assert (v == 1).all()
    elif init == "glorot_uniform":
        limit = np.sqrt(6 / (64 + 32))
        assert np.abs(v).max() <= limit and np.abs(v).max() > 0.9 * limit
    elif init == "he_normal":
        assert abs(v.std() - np.sqrt(2 / 64)) < 0.02
    q = gc.parameter("w2", shape=(64, 32), init=init, seed=0)
    np.testing.assert_array_equal(q.value, v)  # seeded: reproducible


def test_parameter_value_roundtrip_and_checks():
    p = gc.parameter("w", value=np.arange(6.0).reshape(2, 3))
    assert p.dtype == np.float32
    np.testing.assert_array_equal(p.value, np.arange(6.0).reshape(2, 3))
    v = p.value
    v[0, 0] = 100  # a copy: the parameter is unchanged
    assert p.value[0, 0] == 0
    p.value = np.ones((2, 3))
    assert (p.value == 1).all() and p.value.dtype == np.float32
    with pytest.raises(gc.GraphError, match=r"shape \(2, 3\).*shape \(3, 2\)"):
        p.value = np.ones((3, 2))
    with pytest.raises(gc.GraphError, match="unknown initializer 'bogus'"):
        gc.parameter("z", shape=(2,), init="bogus")
    with pytest.raises(gc.GraphError, match="needs either value= or shape="):
        gc.parameter("z2")


def test_parameters_listing():
    a = gc.parameter("a", shape=(2,))
    b = gc.parameter("b", shape=(2,), trainable=False)
    g = gc.get_default_graph()
    assert g.parameters() == [a, b]
    assert g.parameters(trainable=True) == [a]


def test_constants_and_scalars_mix():
    x = gc.placeholder("x", (3,))
    c = gc.constant([1.0, 2.0, 3.0])
    assert c.dtype == np.float32
    y = 1 - x * 2.0 + c
    assert y.dtype == np.float32
    out = gc.compile(y)(x=np.array([1, 2, 3], np.float32))
    np.testing.assert_allclose(out, 1 - 2 * np.array([1, 2, 3]) + [1, 2, 3])
    z = np.ones(3, np.float32) * x  # ndarray on the left defers to the tensor
    assert isinstance(z, gc.Tensor)


def test_tensor_misuse_errors():
    x = gc.placeholder("x", (3,))
    with pytest.raises(gc.GraphError, match="truth value"):
        bool(x > 0)
    with pytest.raises(gc.GraphError, match="only basic indexing"):
        x[1.5]
    assert x[np.array([0, 1])].shape == (2,)  # integer arrays index as numpy.take (issue 17)
    with gc.Graph():
        y = gc.placeholder("y", (3,))
    with pytest.raises(gc.GraphError, match="different graphs"):
        x + y
