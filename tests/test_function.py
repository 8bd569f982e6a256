import numpy as np
import pytest

import graphc as gc


def test_output_structures(rng):
    x = gc.placeholder("x", (2, 2))
    a, b = x * 2.0, x + 1.0
    xv = rng.normal(size=(2, 2)).astype(np.float32)
    assert isinstance(gc.compile(a)(x=xv), np.ndarray)
    out = gc.compile([a, b])(x=xv)
    assert isinstance(out, list) and len(out) == 2
    assert isinstance(gc.compile((a, b))(x=xv), tuple)
    d = gc.compile({"double": a, "inc": b})({x: xv})
    np.testing.assert_allclose(d["double"], 2 * xv)
    np.testing.assert_allclose(d["inc"], xv + 1)


def test_feeds_by_tensor_name_or_keyword():
    x = gc.placeholder("x", (3,))
    fn = gc.compile(x * 3.0)
    for call in (lambda: fn({x: [1, 2, 3]}), lambda: fn({"x": [1, 2, 3]}),
                 lambda: fn(x=[1, 2, 3])):
        np.testing.assert_allclose(call(), [3, 6, 9])


def test_updates_use_old_values_theano_semantics():
    a = gc.parameter("a", value=[1.0, 2.0])
    b = gc.parameter("b", value=[10.0, 20.0])
    fn = gc.compile(a + b, updates={a: b, b: a + b})
    out = fn()
    np.testing.assert_allclose(out, [11, 22])  # outputs computed before the updates
    np.testing.assert_allclose(a.value, [10, 20])  # the old b
    np.testing.assert_allclose(b.value, [11, 22])  # old a + old b
    fn()
    np.testing.assert_allclose(a.value, [11, 22])
    np.testing.assert_allclose(b.value, [21, 42])


def test_updates_do_not_alias_feeds_or_outputs():
    w = gc.parameter("w", value=np.zeros(3))
    x = gc.placeholder("x", (3,))
    fn = gc.compile(w, updates={w: x})
    xv = np.array([1.0, 2.0, 3.0], np.float32)
    fn(x=xv)
    xv[:] = 0  # the caller reuses its buffer
    np.testing.assert_allclose(w.value, [1, 2, 3])
    out = fn(x=np.array([4.0, 5.0, 6.0]))
    out[:] = -1  # the caller scribbles on an output
    np.testing.assert_allclose(w.value, [4, 5, 6])


def test_sgd_optimizer_and_lr_change_without_recompiling():
    w = gc.parameter("w", value=[1.0, -2.0])
    loss = gc.sum(gc.square(w))
    opt = gc.optim.SGD(lr=0.25)
    fn = gc.compile(loss, optimizer=opt)
    out = fn()
    np.testing.assert_allclose(out, 5.0)
    np.testing.assert_allclose(w.value, [1 - 0.25 * 2, -2 + 0.25 * 4])
    opt.lr = 0.5
    assert opt.lr == 0.5
    fn()
    np.testing.assert_allclose(w.value, [0.0, 0.0])


def test_optimizer_skips_frozen_and_unrelated_parameters():
    w = gc.parameter("w", value=[1.0])
    frozen = gc.parameter("frozen", value=[3.0], trainable=False)
    unrelated = gc.parameter("unrelated", value=[7.0])
    fn = gc.compile(gc.sum(w * frozen), optimizer=gc.optim.SGD(lr=0.1))
    fn()
    np.testing.assert_allclose(w.value, [1 - 0.1 * 3])
    np.testing.assert_allclose(frozen.value, [3.0])
    np.testing.assert_allclose(unrelated.value, [7.0])


def test_dict_outputs_with_optimizer_use_the_loss_key():
    w = gc.parameter("w", value=[2.0])
    fn = gc.compile({"w": w * 1.0, "loss": gc.sum(w * w)}, optimizer=gc.optim.SGD(lr=0.1))
    out = fn()
    assert set(out) == {"w", "loss"}
    np.testing.assert_allclose(w.value, [2 - 0.1 * 4])


def test_shared_forward_computed_once():
    x = gc.placeholder("x", (None, 3))
    w = gc.parameter("w", shape=(3, 2), seed=0)
    loss = gc.mean(gc.tanh(x @ w))
    fn = gc.compile([loss, *gc.grad(loss, [w])])
    ops = [s.op.name for s in fn.plan.steps]
    assert ops.count("tanh") == 1
    assert ops.count("matmul") == 2  # forward, and w's gradient (no gradient for x)


def test_plan_is_built_once_and_replanned_per_batch_size(rng):
    x = gc.placeholder("x", (None, 3))
    fn = gc.compile(gc.sum(x, axis=1))
    for n in (4, 4, 7, 4, 7):
        assert fn(x=np.ones((n, 3))).shape == (n,)
    assert len(fn._compiled) == 2


def test_plan_summary_is_readable():
    x = gc.placeholder("x", (None, 784))
    w = gc.parameter("W1", shape=(784, 10), seed=0)
    fn = gc.compile(gc.relu(x @ w))
    text = str(fn.plan)
    assert text == fn.plan.summary()
    assert "feed      x" in text and "parameter W1" in text
    assert "matmul(%0, %1)" in text and "(None, 10) float32" in text
    assert "test_function.py:" in text
    assert "outputs: %" in text


def test_float64_end_to_end(rng):
    x = gc.placeholder("x", (None, 3), dtype="float64")
    w = gc.parameter("w", shape=(3, 2), dtype="float64", seed=0)
    loss = gc.mean(gc.softplus(x @ w))
    g = gc.grad(loss, w)
    assert g.dtype == np.float64
    xv = rng.normal(size=(5, 3))
    value, grad_w = gc.compile([loss, g])(x=xv)
    assert value.dtype == np.float64 and grad_w.dtype == np.float64
    z = xv @ w.value
    np.testing.assert_allclose(value, np.mean(np.log1p(np.exp(z))), rtol=1e-14)


def test_float64_feed_into_float32_placeholder_is_converted():
    x = gc.placeholder("x", (2,))
    out = gc.compile(x * 1.0)(x=np.array([1.5, 2.5]))
    assert out.dtype == np.float32


def test_backend_auto_is_numpy_without_gpu():
    x = gc.placeholder("x", (2,))
    assert gc.compile(x * 2.0, backend="auto").backend == "numpy"


def test_scalar_outputs_are_arrays():
    x = gc.placeholder("x", ())
    out = gc.compile(x * 2.0)(x=3.0)
    assert isinstance(out, np.ndarray) and out.shape == () and out == 6.0


def test_calls_from_eight_threads_are_serialized_and_correct(rng):
    from concurrent.futures import ThreadPoolExecutor
    x = gc.placeholder("x", (None, 16))
    w = gc.parameter("w", shape=(16, 16), seed=0)
    fn = gc.compile(gc.tanh(x @ w) * 2.0 + 1.0)
    inputs = [rng.normal(size=(32, 16)).astype(np.float32) for _ in range(64)]
    want = [np.tanh(a @ w.value) * 2 + 1 for a in inputs]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda a: fn(x=a), inputs))
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def _embedding_classifier():
    ids = gc.placeholder("ids", (None,), dtype="int32")
    x = gc.placeholder("x", (None, 4))
    t = gc.placeholder("t", (None,), dtype="int32")
    table = gc.parameter("table", shape=(10, 4), seed=0)
    w = gc.parameter("w", shape=(8, 3), seed=1)
    h = gc.concat([gc.embedding(ids, table), x], axis=1)
    loss = gc.softmax_cross_entropy(gc.tanh(h @ w), t)
    opt = gc.optim.Adam(lr=0.1)
    return gc.compile(loss, optimizer=opt), opt


@pytest.mark.parametrize("change, error", [
    ({"x": np.zeros((6, 5), np.float32)}, r"'x' expects shape \(None, 4\), got \(6, 5\)"),
    ({"t": np.zeros(6)}, r"'t' is int32; cannot convert fed dtype float64"),
    ({"t": None}, r"missing feed for placeholder\(s\) 't'"),
    ({"t": np.array([0, 1, 2, 3, 0, 1])},
     r"placeholder 't': label 3 is out of range for 3 classes"),
    ({"t": np.array([0, 1, -1, 2, 0, 1])}, r"placeholder 't': label -1 is out of range"),
    ({"ids": np.array([0, 1, 2, 10, 4, 5])},
     r"placeholder 'ids': index 10 is out of range for 10 embeddings .*read by embedding"),
    ({"x": np.zeros((5, 4), np.float32)}, r"the fed shapes do not fit concat"),
])
def test_a_bad_feed_leaves_parameters_and_optimizer_state_bitwise_unchanged(rng, change, error):
    step, opt = _embedding_classifier()
    feeds = {"ids": rng.integers(0, 10, 6), "x": rng.normal(size=(6, 4)).astype(np.float32),
             "t": rng.integers(0, 3, 6)}
    for _ in range(2):
        step(feeds)
    params = gc.get_default_graph().parameters()
    assert any(p.name.startswith("adam/exp_avg") for p in params)
    before = {p.name: p.value for p in params}
    bad = {k: v for k, v in {**feeds, **change}.items() if v is not None}
    with pytest.raises(gc.FeedError, match=error):
        step(bad)
    for p in params:
        np.testing.assert_array_equal(p.value, before[p.name], err_msg=p.name)
    assert opt.step_count == 2
    step(feeds)  # still usable
    assert opt.step_count == 3


def test_outputs_may_be_any_nesting_of_dicts_lists_and_tuples():
    import collections
    x = gc.placeholder("x", (None, 3))
    w = gc.parameter("w", shape=(3, 2), seed=0)
    loss = ((x @ w) ** 2).mean()
    grads = gc.grad(loss, [w, x])
    Pair = collections.namedtuple("Pair", "first second")
    fn = gc.compile({"loss": loss, "grads": grads, "more": (Pair(loss, [x]), {"z": x * 2.0})})
    xs = np.ones((4, 3), np.float32)
    out = fn(x=xs)
    assert list(out) == ["loss", "grads", "more"]
    assert isinstance(out["grads"], list) and len(out["grads"]) == 2
    assert isinstance(out["more"], tuple) and isinstance(out["more"][0], Pair)
    np.testing.assert_array_equal(out["more"][0].second[0], xs)
    np.testing.assert_array_equal(out["more"][1]["z"], xs * 2)
    flat = gc.compile([loss, *grads])(x=xs)
    np.testing.assert_allclose(out["loss"], flat[0])
    np.testing.assert_allclose(out["grads"][0], flat[1])
    np.testing.assert_allclose(out["grads"][1], flat[2])


def test_a_non_tensor_in_nested_outputs_is_named_by_its_path():
    x = gc.placeholder("x", (3,))
    with pytest.raises(gc.CompileError, match=r"outputs must be tensors, got 3 at "
                                              r"outputs\['grads'\]\[2\]"):
        gc.compile({"loss": x.sum(), "grads": [x, (x,), 3]})
    nested = [x]
    nested.append(nested)
    with pytest.raises(gc.CompileError, match=r"outputs contains itself at outputs\[1\]"):
        gc.compile(nested)
