"""MNIST with a 784-800-10 MLP (the classic entry of LeCun's table), softmax cross-entropy.
Run: python examples/mnist_mlp.py [--epochs 20] [--backend numpy] [--data DIR]"""
from _common import Timer, parser, plot_history

import graphc as gc


def main():
    args = parser(__doc__.splitlines()[0], epochs=20).parse_args()
    ds = gc.data.mnist(args.data)
    (x, y), (xt, yt) = ds["train"], ds["test"]
    x, xt = x.reshape(len(x), -1)[:args.limit], xt.reshape(len(xt), -1)
    y = y[:args.limit]
    model = gc.nn.Sequential(gc.nn.Dense(784, 800, activation="relu"), gc.nn.Dropout(0.2),
                             gc.nn.Dense(800, 10))
    opt = gc.optim.Adam(lr=1e-3)
    sched = gc.optim.CosineAnnealingLR(opt, T_max=args.epochs)
    with Timer() as t:
        history = gc.fit(model, (x, y), epochs=args.epochs, batch_size=128, optimizer=opt,
                         schedule=sched, validation=(xt, yt), backend=args.backend,
                         progress=not args.no_progress)
    acc = history.history["val_accuracy"][-1]
    print(f"test accuracy {acc:.4f} after {len(history.epochs)} epochs, {t.seconds:.1f} s")
    plot_history(history, args.plot or "mnist_mlp.png", "MNIST 784-800-10")


if __name__ == "__main__":
    main()
