import numpy as np

import graphc as gc


def _blobs(rng, n=300):
    centers = np.array([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])
    labels = rng.integers(0, 3, size=n)
    return (centers[labels] + rng.normal(scale=0.7, size=(n, 2))).astype(np.float32), labels


def test_small_mlp_trains_with_sgd(rng):
    points, labels = _blobs(rng)
    x = gc.placeholder("x", (None, 2))
    t = gc.placeholder("t", (None,), dtype="int32")
    h = gc.tanh(x @ gc.parameter("w1", shape=(2, 16), seed=1)
                + gc.parameter("b1", shape=(16,), init="zeros"))
    logits = h @ gc.parameter("w2", shape=(16, 3), seed=2) + gc.parameter("b2", shape=(3,),
                                                                           init="zeros")
    loss = gc.softmax_cross_entropy(logits, t)
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.2))
    evaluate = gc.compile([loss, logits])
    first, _ = evaluate(x=points, t=labels)
    losses = []
    for epoch in range(15):
        for i in range(0, len(points), 30):
            step(x=points[i:i + 30], t=labels[i:i + 30])
        losses.append(float(evaluate(x=points, t=labels)[0]))
    final, logits_v = evaluate(x=points, t=labels)
    assert final < 0.5 * first
    assert losses[-1] < losses[0]
    assert np.mean(logits_v.argmax(1) == labels) > 0.9


def test_training_step_matches_manual_numpy(rng):
    """One SGD step equals the same step written by hand in float64 NumPy."""
    xv = rng.normal(size=(6, 4))
    tv = rng.integers(0, 3, size=6)
    w0 = rng.normal(size=(4, 3))
    x = gc.placeholder("x", (None, 4), dtype="float64")
    t = gc.placeholder("t", (None,), dtype="int64")
    w = gc.parameter("w", value=w0, dtype="float64")
    loss = gc.softmax_cross_entropy(x @ w, t)
    gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5))(x=xv, t=tv)
    z = xv @ w0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(6), tv] -= 1
    np.testing.assert_allclose(w.value, w0 - 0.5 * xv.T @ p / 6, rtol=1e-12)
