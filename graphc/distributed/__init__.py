"""Data-parallel training over MPI (distributed stage).

`gc.distributed.mpi()` returns a Communicator over MPI.COMM_WORLD (or the mpi4py
communicator given); `gc.compile(loss, optimizer=..., data_parallel=comm)` makes a step
whose plan averages the gradients over ranks between backward and the updates, in buckets
whose non-blocking allreduces overlap the rest of backward. Launch with
`mpiexec -n N python -m mpi4py script.py`. mpi4py is imported only by `mpi()`."""
from __future__ import annotations

from ..errors import DistributedError

__all__ = ["Communicator", "DistributedError", "mpi"]


def mpi(comm=None, timeout: float = 120.0, abort: bool = True,
        abort_grace: float | None = 10.0) -> "Communicator":
    """A Communicator over `comm` (an mpi4py communicator; default MPI.COMM_WORLD).

    Every collective waits at most `timeout` seconds, then raises DistributedError naming
    it and the ranks that did not arrive. With `abort` (the default) the job is then ended
    with MPI_Abort when this process exits, or `abort_grace` seconds later, so no rank
    hangs. Needs mpi4py and an MPI library: `pip install "graphc[distributed]"`."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # mpi4py missing, or present without an MPI library
        raise DistributedError(
            f"gc.distributed.mpi needs mpi4py and an MPI library ({e}); install them with "
            f"`pip install mpich mpi4py` (or `pip install \"graphc[distributed]\"`)") from e
    from .comm import Communicator
    return Communicator(MPI.COMM_WORLD if comm is None else comm, timeout, abort, abort_grace)


def __getattr__(name):
    if name == "Communicator":
        from .comm import Communicator
        return Communicator
    raise AttributeError(f"module 'graphc.distributed' has no attribute {name!r}")
