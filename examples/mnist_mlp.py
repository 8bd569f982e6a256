"""MNIST with a 784-800-10 MLP (the classic entry of LeCun's table), softmax cross-entropy.
Run: python examples/mnist_mlp.py [--epochs 20] [--backend numpy] [--data DIR]
On 2 ranks: mpiexec -n 2 python -m mpi4py examples/mnist_mlp.py --data-parallel"""
from _common import Timer, parser, plot_history

import graphc as gc


def main():
    p = parser(__doc__.splitlines()[0], epochs=20)
    p.add_argument("--data-parallel", action="store_true",
                   help="train on every MPI rank (launch with mpiexec -n N python -m mpi4py); "
                        "each rank takes its share of every batch of 128")
    args = p.parse_args()
    comm = gc.distributed.mpi() if args.data_parallel else None
    main_rank = comm is None or comm.rank == 0  # the rank that prints and plots
    ds = gc.data.mnist(args.data)
    (x, y), (xt, yt) = ds["train"], ds["test"]
    x, xt = x.reshape(len(x), -1)[:args.limit], xt.reshape(len(xt), -1)
    y = y[:args.limit]
    model = gc.nn.Sequential(gc.nn.Dense(784, 800, activation="relu"), gc.nn.Dropout(0.2),
                             gc.nn.Dense(800, 10))
    opt = gc.optim.Adam(lr=1e-3)
    sched = gc.optim.CosineAnnealingLR(opt, T_max=args.epochs)
    with Timer() as t:
        # batch_size is the global batch: on N ranks each trains on 128 / N rows of it
        history = gc.fit(model, (x, y), epochs=args.epochs, batch_size=128, optimizer=opt,
                         schedule=sched, validation=(xt, yt), backend=args.backend,
                         progress=not args.no_progress, data_parallel=comm)
    if main_rank:
        acc = history.history["val_accuracy"][-1]
        where = f" on {comm.size} ranks" if comm is not None else ""
        print(f"test accuracy {acc:.4f} after {len(history.epochs)} epochs, {t.seconds:.1f} s"
              f"{where}")
        plot_history(history, args.plot or "mnist_mlp.png", "MNIST 784-800-10")


if __name__ == "__main__":
    main()
