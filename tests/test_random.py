"""Counter-based random numbers and dropout."""
import numpy as np
import pytest

import graphc as gc


def test_uniform_stream_is_uniform_fresh_each_step_and_reproducible():
    x = gc.placeholder("x", (None, 4096))
    u = gc.random_uniform(x)
    fn = gc.compile(u)
    a = fn(x=np.zeros((8, 4096), np.float32)).copy()
    b = fn(x=np.zeros((8, 4096), np.float32))
    assert a.dtype == np.float32 and 0.0 <= a.min() and a.max() < 1.0
    assert abs(a.mean() - 0.5) < 0.01 and abs(a.var() - 1 / 12) < 0.005
    assert np.mean(a == b) < 0.001  # a new draw per step
    counter = gc.get_default_graph().get("rng/counter")
    assert int(counter.value) == 2
    counter.value = 0
    np.testing.assert_array_equal(fn(x=np.zeros((8, 4096), np.float32)), a)


def test_dropout_zeroes_a_share_p_scales_the_rest_and_differentiates():
    x = gc.placeholder("x", (None, 1000))
    y = gc.dropout(x, p=0.3)
    z = gc.dropout(x, p=0.3)
    fn = gc.compile([y, z, gc.grad(gc.sum(y * 3.0), x)])
    xv = np.full((20, 1000), 2.0, np.float32)
    a, b, g = fn(x=xv)
    assert abs((a == 0).mean() - 0.3) < 0.01
    np.testing.assert_allclose(a[a != 0], 2.0 / 0.7, rtol=1e-6)
    np.testing.assert_allclose(g, 3.0 * a / 2.0, rtol=1e-6)
    assert abs((a == b).mean() - (0.7 ** 2 + 0.3 ** 2)) < 0.02  # independent masks


def test_dropout_outside_training_is_identity_and_checks_p():
    x = gc.placeholder("x", (3,))
    assert gc.dropout(x, 0.5, training=False) is x
    with pytest.raises(gc.GraphError, match=r"\[0, 1\]"):
        gc.dropout(x, 1.5)


def test_functions_without_randomness_do_not_advance_the_counter():
    x = gc.placeholder("x", (None, 4))
    gc.compile(gc.dropout(x, 0.5))  # creates the counter
    fn = gc.compile(x * 2.0)
    fn(x=np.ones((2, 4)))
    assert int(gc.get_default_graph().get("rng/counter").value) == 0


def test_categorical_samples_follow_the_softmax():
    logits = gc.placeholder("logits", (None, 3))
    draw = gc.compile(gc.ops.sample_categorical(logits))
    lv = np.tile(np.log(np.array([0.2, 0.5, 0.3], np.float32)), (40000, 1))
    counts = np.bincount(draw(logits=lv), minlength=3) / 40000
    np.testing.assert_allclose(counts, [0.2, 0.5, 0.3], atol=0.01)
