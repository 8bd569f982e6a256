"""Train a small MLP classifier on synthetic data (three Gaussian blobs in 2-D).

Runs on gc.config.backend: GRAPHC_BACKEND=cuda python examples/train_classifier.py for the GPU."""
import numpy as np

import graphc as gc

rng = np.random.default_rng(0)
centers = np.array([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])
labels = rng.integers(0, 3, size=600)
points = (centers[labels] + rng.normal(scale=1.2, size=(600, 2))).astype(np.float32)

x = gc.placeholder("x", (None, 2))
y = gc.placeholder("y", (None,), dtype="int32")
h = gc.relu(x @ gc.parameter("W1", shape=(2, 32), seed=1) + gc.parameter("b1", shape=(32,), init="zeros"))
logits = h @ gc.parameter("W2", shape=(32, 3), seed=2) + gc.parameter("b2", shape=(3,), init="zeros")
loss = gc.softmax_cross_entropy(logits, y)

step = gc.compile([loss], optimizer=gc.optim.SGD(lr=0.1))
evaluate = gc.compile({"loss": loss, "logits": logits})
for epoch in range(20):
    out = evaluate(x=points, y=labels, to_numpy=True)  # host arrays on every backend
    acc = np.mean(out["logits"].argmax(axis=1) == labels)
    print(f"epoch {epoch:2d}  loss {float(out['loss']):.4f}  accuracy {acc:.3f}")
    order = rng.permutation(600)
    for i in range(0, 600, 50):
        batch = order[i:i + 50]
        step(x=points[batch], y=labels[batch])
