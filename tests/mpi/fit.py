"""gc.fit(..., data_parallel=comm) under mpiexec (run by tests/test_distributed.py):

    mpiexec -n 2 python -m mpi4py tests/mpi/fit.py --mode fit --out DIR

Every rank writes DIR/rank<r>.json: what it trained to (a digest of every parameter of the
graph, optimizer state and counters included), its History, how many checkpoint files it
wrote and read, or the error it ended with. Modes:

- fit: a small float64 MLP (Adam, cosine schedule, validation) trained with data_parallel
  on every rank, and the same fit in one process (no communicator) on the same data and
  seed, for the largest relative difference of the parameters and of the figures;
- ckpt-write: the uninterrupted data-parallel run, then the same run with a
  ModelCheckpoint (every --every-steps batches) interrupted mid-epoch on every rank;
- ckpt-resume: fresh processes (each rank built from other initial values) resume from the
  checkpoint and finish the run;
- ckpt-fail: a ModelCheckpoint that rank 0 cannot write;
- dict: a model taking a dict of two inputs, data parallel and in one process;
- mismatch: rank 1 trains on one row fewer;
- step: fit over a step compiled with data_parallel (batches split evenly, or refused)."""
import argparse
import hashlib
import sys

import numpy as np

import graphc as gc
from result import write_result  # tests/mpi is this script's sys.path[0]

IN, HIDDEN, OUT = 5, 12, 3


def data(n: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    # float32-representable: fit feeds float inputs as float32
    x = rng.normal(size=(n, IN)).astype(np.float32).astype(np.float64)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x, y


def model(dropout: float = 0.0):
    layers = [gc.nn.Dense(IN, HIDDEN, activation="tanh", dtype="float64")]
    if dropout:
        layers.append(gc.nn.Dropout(dropout))
    layers.append(gc.nn.Dense(HIDDEN, OUT, dtype="float64"))
    return gc.nn.Sequential(*layers)


def digest(graph) -> tuple[str, dict]:
    values = {p.name: np.asarray(p.value) for p in graph.parameters()}
    h = hashlib.sha256()
    for name in sorted(values):
        h.update(name.encode())
        h.update(values[name].tobytes())
    return h.hexdigest(), values


class Counting:
    """Counts this rank's checkpoint writes and reads (graphc.io.save / graphc.io.load)."""

    def __init__(self):
        self.saves = self.loads = 0
        self._save, self._load = gc.io.save, gc.io.load

        def save(*a, **k):
            self.saves += 1
            return self._save(*a, **k)

        def load(*a, **k):
            self.loads += 1
            return self._load(*a, **k)
        gc.io.save, gc.io.load = save, load


class Interrupt(gc.train.Callback):
    """Raise at batch `batch` of epoch `epoch` (on every rank: the same place)."""

    def __init__(self, epoch: int, batch: int):
        self.at = (epoch, batch)

    def on_batch_end(self, batch, logs, trainer):
        if (trainer.position["epoch"], batch) == self.at:
            raise KeyboardInterrupt


def run_fit(args, comm, init_seed: int = 0, dropout: float = 0.0, **kw):
    """A fresh graph and model (initialised from init_seed), fit; (History, graph). The
    progress shows with --progress, for a data-parallel fit only."""
    x, y = data(args.n)
    xv, yv = data(args.n_val, seed=8)
    with gc.Graph() as g:
        gc.nn.seed(init_seed)
        m = model(dropout)
        opt = gc.optim.Adam(lr=0.02)
        sched = gc.optim.CosineAnnealingLR(opt, T_max=args.epochs)
        h = gc.fit(m, (x, y), epochs=args.epochs, batch_size=args.batch_size, optimizer=opt,
                   schedule=sched, validation=(xv, yv), seed=3, data_parallel=comm,
                   progress=args.progress and comm is not None, **kw)
    return h, g


def history_of(h) -> dict:
    return {"history": h.history, "epochs": h.epochs, "stopped_early": h.stopped_early,
            "times": h.times}


def mode_fit(args, comm, result):
    h, g = run_fit(args, comm, init_seed=comm.rank)  # rank 1 starts elsewhere: broadcast
    result["digest"], mine = digest(g)
    result.update(history_of(h))
    ref, rg = run_fit(args, None, init_seed=0)
    _, want = digest(rg)
    result["rel_err"] = max(float(np.max(np.abs(mine[n] - want[n])) /
                                  max(np.max(np.abs(want[n])), 1e-300)) for n in want
                            if want[n].dtype.kind == "f")
    result["same_names"] = sorted(mine) == sorted(want)
    result["history_rel_err"] = max(
        abs(a - b) / max(abs(b), 1e-12) for k in ref.history
        for a, b in zip(h.history[k], ref.history[k]))
    result["same_keys"] = sorted(h.history) == sorted(ref.history)


def mode_ckpt_write(args, comm, result):
    counting = Counting()
    full, g = run_fit(args, comm, dropout=0.2)
    result["full_digest"], _ = digest(g)
    result["full"] = history_of(full)
    try:
        run_fit(args, comm, dropout=0.2, callbacks=[
            gc.train.ModelCheckpoint(args.ckpt, every_steps=args.every_steps),
            Interrupt(args.stop_epoch, args.stop_batch)])
        result["interrupted"] = False
    except KeyboardInterrupt:
        result["interrupted"] = True
    result["saves"], result["loads"] = counting.saves, counting.loads


def mode_ckpt_resume(args, comm, result):
    counting = Counting()
    h, g = run_fit(args, comm, init_seed=10 + comm.rank, dropout=0.2, resume_from=args.ckpt)
    result["digest"], values = digest(g)
    result["counter"] = int(values["rng/counter"]) if "rng/counter" in values else None
    result.update(history_of(h))
    result["saves"], result["loads"] = counting.saves, counting.loads


def mode_ckpt_fail(args, comm, result):
    run_fit(args, comm, callbacks=[gc.train.ModelCheckpoint(args.ckpt)])


class TwoInputs(gc.nn.Module):
    """A model whose call takes a dict of two inputs."""

    def __init__(self):
        super().__init__()
        self.image = gc.nn.Dense(4, OUT, dtype="float64")
        self.meta = gc.nn.Dense(2, OUT, dtype="float64")

    def children(self):
        return [self.image, self.meta]

    def forward(self, x, training):
        return self.image(x["image"].reshape(-1, 4), training) + self.meta(x["meta"], training)


def mode_dict(args, comm, result):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(args.n, 2, 2)).astype(np.float32).astype(np.float64)
    meta = rng.normal(size=(args.n, 2)).astype(np.float32).astype(np.float64)
    labels = (image.reshape(-1, 4).sum(1) + meta[:, 0] > 0).astype(np.int32)
    data = ({"image": image, "meta": meta}, labels)
    finals = []
    for dp in (comm, None):
        with gc.Graph() as g:
            h = gc.fit(TwoInputs(), data, epochs=2, batch_size=args.batch_size,
                       optimizer=gc.optim.Adam(lr=0.05), validation=data, progress=False,
                       data_parallel=dp)
            finals.append((h, digest(g)))
    (h, (result["digest"], mine)), (ref, (_, want)) = finals
    result.update(history_of(h))
    result["rel_err"] = max(float(np.max(np.abs(mine[n] - want[n])) / np.max(np.abs(want[n])))
                            for n in want if want[n].dtype.kind == "f" and want[n].any())
    result["history_rel_err"] = max(abs(a - b) / max(abs(b), 1e-12) for k in ref.history
                                    for a, b in zip(h.history[k], ref.history[k]))


def mode_mismatch(args, comm, result):
    x, y = data(args.n - comm.rank)
    with gc.Graph():
        m = model()
        gc.fit(m, (x, y), epochs=1, batch_size=args.batch_size, data_parallel=comm,
               progress=False)


def mode_step(args, comm, result):
    x, y = data(args.n)
    with gc.Graph() as g:
        xp = gc.placeholder("x", (None, IN), dtype="float64")
        yp = gc.placeholder("y", (None,), dtype="int32")
        m = model()
        loss = gc.softmax_cross_entropy(m(xp), yp)
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1, momentum=0.9),
                          data_parallel=comm)
        h = gc.fit(step, {"x": x, "y": y}, epochs=2, batch_size=args.batch_size, seed=3,
                   progress=False)
        result["digest"], mine = digest(g)
        result.update(history_of(h))
    with gc.Graph() as g:  # one process, the whole batches
        xp = gc.placeholder("x", (None, IN), dtype="float64")
        yp = gc.placeholder("y", (None,), dtype="int32")
        m = model()
        loss = gc.softmax_cross_entropy(m(xp), yp)
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
        gc.fit(step, {"x": x, "y": y}, epochs=2, batch_size=args.batch_size, seed=3,
               progress=False)
        _, want = digest(g)
    result["rel_err"] = max(float(np.max(np.abs(mine[n] - want[n])) / np.max(np.abs(want[n])))
                            for n in want if want[n].dtype.kind == "f" and want[n].any())


MODES = {"fit": mode_fit, "ckpt-write": mode_ckpt_write, "ckpt-resume": mode_ckpt_resume,
         "ckpt-fail": mode_ckpt_fail, "dict": mode_dict, "mismatch": mode_mismatch,
         "step": mode_step}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=sorted(MODES), default="fit")
    ap.add_argument("--n", type=int, default=101)
    ap.add_argument("--n-val", type=int, default=31)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--ckpt", default=None)
    ap.add_argument("--every-steps", type=int, default=2)
    ap.add_argument("--stop-epoch", type=int, default=1)
    ap.add_argument("--stop-batch", type=int, default=4)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    comm = gc.distributed.mpi(timeout=60.0)
    result = {"rank": comm.rank, "size": comm.size}
    try:
        MODES[args.mode](args, comm, result)
    except Exception as e:  # reported: the test checks which rank raised what
        result.update(error=type(e).__name__, message=str(e))
    write_result(args.out, result)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
