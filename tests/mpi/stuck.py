"""One rank stuck, the others in a collective (run by tests/test_distributed.py):

    mpiexec -n 3 python -m mpi4py tests/mpi/stuck.py --out DIR

The last rank sleeps for an hour; rank 1 joins the allreduce late. A rank that times out
writes the error it raised to DIR/rank<r>.json: it must name only the stuck rank, since
the others answer while they wait."""
import argparse
import time

import numpy as np

import graphc as gc
from result import write_result  # tests/mpi is this script's sys.path[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--timeout", type=float, default=3.0)
    args = ap.parse_args()
    comm = gc.distributed.mpi(timeout=60.0)
    comm.timeout = args.timeout  # short, now that every rank has started
    if comm.rank == comm.size - 1:
        time.sleep(3600)
    if comm.rank == 1:
        time.sleep(0.2)
    try:
        comm.allreduce_mean(np.ones(3), what="metrics allreduce")
        result = {"rank": comm.rank, "error": None}
    except gc.DistributedError as e:
        result = {"rank": comm.rank, "error": type(e).__name__, "message": str(e)}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
