"""A triplet-loss embedding of Fashion-MNIST (the seeds' face-recognition recipe on
clothing): an MLP maps images to 32-d vectors so that an anchor lies closer to a positive
(same class) than to a negative (another class) by a margin. Reports nearest-neighbour
accuracy of test images against embedded training images.
Run: python examples/triplet_embedding.py [--epochs 5] [--backend numpy] [--data DIR]"""
import numpy as np
from _common import Timer, parser, plot_history

import graphc as gc
from graphc import nn


def triplets(labels: np.ndarray, rng: np.random.Generator):
    """For every example as anchor: a random positive of its class, a negative of another."""
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    pos = np.array([rng.choice(by_class[c]) for c in labels])
    other = (labels + rng.integers(1, 10, size=len(labels))) % 10
    neg = np.array([rng.choice(by_class[c]) for c in other])
    return pos, neg


def main():
    p = parser(__doc__.splitlines()[0], epochs=5)
    args = p.parse_args()
    ds = gc.data.fashion_mnist(args.data)
    (x, y), (xt, yt) = ds["train"], ds["test"]
    x, xt = x.reshape(len(x), -1)[:args.limit], xt.reshape(len(xt), -1)
    y = y[:args.limit]
    net = nn.Sequential(nn.Dense(784, 256, activation="relu"), nn.Dense(256, 32))
    a, pos, neg = (gc.placeholder(n, (None, 784)) for n in ("anchor", "positive", "negative"))
    loss = gc.triplet_loss(net(a, training=True), net(pos, training=True),
                           net(neg, training=True), margin=1.0)
    step = gc.compile({"loss": loss}, optimizer=gc.optim.Adam(lr=1e-3), backend=args.backend)
    embed = gc.compile(net(a), backend=args.backend)
    rng = np.random.default_rng(0)
    history = gc.train.History()
    with Timer() as t:
        for epoch in range(args.epochs):
            pi, ni = triplets(y, rng)
            h = gc.fit(step, {"anchor": x, "positive": x[pi], "negative": x[ni]}, epochs=1,
                       batch_size=128, seed=epoch, progress=not args.no_progress)
            history.log(epoch, {"loss": h.history["loss"][0]})
            print(f"epoch {epoch + 1}: triplet loss {h.history['loss'][0]:.4f}")
    reference = np.concatenate([embed(anchor=x[i:i + 4096]) for i in range(0, len(x), 4096)])
    queries = np.concatenate([embed(anchor=xt[i:i + 4096]) for i in range(0, len(xt), 4096)])
    correct = 0
    ref_sq = (reference ** 2).sum(1)
    for i in range(0, len(queries), 1000):
        q = queries[i:i + 1000]
        d = ref_sq[None, :] - 2 * q @ reference.T  # + |q|^2, the same for every candidate
        correct += int((y[d.argmin(1)] == yt[i:i + 1000]).sum())
    print(f"nearest-neighbour test accuracy {correct / len(yt):.4f} "
          f"({args.epochs} epochs, {t.seconds:.1f} s)")
    plot_history(history, args.plot or "triplet_embedding.png", "Fashion-MNIST triplet loss")


if __name__ == "__main__":
    main()
