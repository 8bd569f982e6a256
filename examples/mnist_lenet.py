"""MNIST with a LeNet-5-style CNN: conv 6@5x5 (padding 2), max-pool, conv 16@5x5, max-pool,
dense 120-84-10, ReLU; softmax cross-entropy, Adam.
Run: python examples/mnist_lenet.py [--epochs 12] [--backend numpy] [--data DIR]"""
from _common import Timer, parser, plot_history

import graphc as gc
from graphc import nn


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Reshape(1, 28, 28),
        nn.Conv2D(1, 6, 5, padding=2, activation="relu"), nn.MaxPool2D(2),
        nn.Conv2D(6, 16, 5, activation="relu"), nn.MaxPool2D(2),
        nn.Flatten(),
        nn.Dense(16 * 5 * 5, 120, activation="relu"),
        nn.Dense(120, 84, activation="relu"),
        nn.Dense(84, 10))


def main():
    p = parser(__doc__.splitlines()[0], epochs=12)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    ds = gc.data.mnist(args.data)
    (x, y), (xt, yt) = ds["train"], ds["test"]
    x, y = x[:args.limit], y[:args.limit]
    opt = gc.optim.Adam(lr=2e-3)
    sched = gc.optim.CosineAnnealingLR(opt, T_max=args.epochs)
    with Timer() as t:
        history = gc.fit(lenet(), (x, y), epochs=args.epochs, batch_size=args.batch_size,
                         optimizer=opt, schedule=sched, validation=(xt, yt),
                         backend=args.backend, progress=not args.no_progress)
    acc = history.history["val_accuracy"][-1]
    print(f"test accuracy {acc:.4f} after {len(history.epochs)} epochs, {t.seconds:.1f} s")
    plot_history(history, args.plot or "mnist_lenet.png", "MNIST LeNet-5")


if __name__ == "__main__":
    main()
