"""Data-parallel training under mpiexec (run by tests/test_distributed.py):

    mpiexec -n 2 python -m mpi4py tests/mpi/train.py --optimizer adam

Each rank trains a small float64 MLP on its share of every global batch for --steps steps
and prints one line `RESULT {json}`: a digest of its final parameters and their largest
relative difference from one process trained on the whole batches (computed here too), or
the error it ended with. Flags make a rank misbehave: --mismatch (rank 1 builds another
graph), --die-at K (rank 1 leaves before step K's collectives: exits, or with --hang sleeps;
from step K on every rank's collectives time out after --timeout seconds)."""
import argparse
import hashlib
import json
import os
import sys
import time

import numpy as np

import graphc as gc
from result import write_result  # tests/mpi is this script's sys.path[0]

IN, HIDDEN, OUT, BATCH = 6, 16, 4, 32


def build(init_seed: int, hidden: int = HIDDEN):
    """The model's loss and parameters in the current graph, float64."""
    rng = np.random.default_rng(init_seed)
    x = gc.placeholder("x", (None, IN), dtype="float64")
    y = gc.placeholder("y", (None,), dtype="int32")
    w1 = gc.parameter("w1", value=rng.normal(scale=0.5, size=(IN, hidden)), dtype="float64")
    b1 = gc.parameter("b1", value=rng.normal(scale=0.1, size=(hidden,)), dtype="float64")
    w2 = gc.parameter("w2", value=rng.normal(scale=0.5, size=(hidden, OUT)), dtype="float64")
    b2 = gc.parameter("b2", value=rng.normal(scale=0.1, size=(OUT,)), dtype="float64")
    loss = gc.softmax_cross_entropy(gc.tanh(x @ w1 + b1) @ w2 + b2, y)
    return loss, [w1, b1, w2, b2]


def optimizer(name: str):
    if name == "sgd":
        return gc.optim.SGD(lr=0.1, momentum=0.9)
    if name == "adamw-clip":  # clipping by the global norm of the averaged gradients
        return gc.optim.AdamW(lr=0.01, clip_grad_norm=0.05)
    return gc.optim.Adam(lr=0.01)


def batches(steps: int):
    rng = np.random.default_rng(123)
    for _ in range(steps):
        yield rng.normal(size=(BATCH, IN)), rng.integers(0, OUT, size=BATCH).astype(np.int32)


def reference(args) -> dict:
    """One process, the whole batch per step, rank 0's initial values."""
    with gc.Graph():
        loss, params = build(0)
        step = gc.compile(loss, optimizer=optimizer(args.optimizer))
        for xb, yb in batches(args.steps):
            step(x=xb, y=yb)
        return {p.name: p.value for p in params}


def report(args, result: dict) -> None:
    text = json.dumps(result)
    if args.out:
        write_result(args.out, result)
    print("RESULT " + text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--optimizer", default="sgd", choices=("sgd", "adam", "adamw-clip"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--bucket-bytes", type=int, default=25 * 2**20)
    ap.add_argument("--different-init", action="store_true")
    ap.add_argument("--mismatch", action="store_true")
    ap.add_argument("--die-at", type=int, default=None)
    ap.add_argument("--hang", action="store_true")
    ap.add_argument("--timeout", type=float, default=2.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    # a long timeout while every rank is healthy (a loaded machine may be slow), the short
    # one (--timeout) from the step where rank 1 misbehaves on
    comm = gc.distributed.mpi(timeout=60.0)
    rank, size = comm.rank, comm.size
    result = {"rank": rank, "size": size}
    init = rank if args.different_init else 0
    hidden = HIDDEN + 1 if args.mismatch and rank == 1 else HIDDEN
    loss, params = build(init, hidden)
    step = gc.compile(loss, optimizer=optimizer(args.optimizer), data_parallel=comm,
                      bucket_bytes=args.bucket_bytes)
    result["buckets"] = [len(b.grads) for b in step.buckets]
    share = BATCH // size
    losses = []
    try:
        for i, (xb, yb) in enumerate(batches(args.steps)):
            if args.die_at == i:
                comm.timeout = args.timeout
            if args.die_at == i and rank == 1:
                if args.hang:
                    time.sleep(3600)
                report(args, dict(result, exited_at=i))
                sys.exit(0)
            part = slice(rank * share, (rank + 1) * share)
            losses.append(float(step(x=xb[part], y=yb[part])))
    except gc.DistributedError as e:
        report(args, dict(result, error=type(e).__name__, message=str(e)))
        return
    ref = reference(args)
    final = {p.name: p.value for p in params}
    data = b"".join(final[n].tobytes() for n in sorted(final))
    result["digest"] = hashlib.sha256(data).hexdigest()
    result["rel_err"] = max(float(np.max(np.abs(final[n] - ref[n])) / np.max(np.abs(ref[n])))
                            for n in final)
    result["losses"] = losses
    result["plan_has_buckets"] = "allreduce start bucket" in str(step.plan)
    report(args, result)


if __name__ == "__main__":
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    main()
