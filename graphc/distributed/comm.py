"""The MPI communicator (distributed stage): the few collectives data-parallel training
needs, over mpi4py, each bounded by a timeout.

Every collective is non-blocking underneath (Ibcast, Iallreduce, Iallgather, Ibarrier) and
waited for by polling `Test()`, so no call can hang: past `timeout` seconds the rank asks
the others where they are (point-to-point messages that every rank answers while it waits
in a collective), raises `DistributedError` naming the collective and the ranks that did not
arrive, and arranges for the job to be aborted (`MPI_Abort`) so that no other rank is left
waiting. mpi4py is imported only when a communicator is made."""
from __future__ import annotations

import atexit
import hashlib
import json
import sys
import threading
import time
from typing import Any

import numpy as np

from ..errors import DistributedError

_QUERY, _REPLY = 0x6A51, 0x6A52  # tags of the "where are you?" exchange


class Communicator:
    """A group of ranks running the same compiled step (see `graphc.distributed.mpi`).

    `rank` and `size` as in MPI. Collectives: `broadcast` (arrays, in place),
    `start_allreduce_mean` / `wait` (a flat bucket, non-blocking), `allreduce_mean`,
    `allgather_object` (small JSON values), `check_same` (the first difference of a list of
    lines across ranks) and `barrier`. Each is bounded by `timeout` seconds."""

    def __init__(self, comm, timeout: float = 120.0, abort: bool = True,
                 abort_grace: float | None = 10.0):
        from mpi4py import MPI
        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise DistributedError(f"gc.distributed.mpi: timeout must be a positive number "
                                   f"of seconds, got {timeout!r}")
        self._MPI = MPI
        self.timeout = float(timeout)
        self.abort_on_error = abort
        self.abort_grace = abort_grace
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self._seq = 0  # collectives started so far (the same count on every rank)
        self._current: tuple[int, str] | None = None  # what this rank is waiting in
        self._inflight: list = []  # started, not yet waited allreduces
        self._sent: list = []  # pending sends of the where-are-you exchange
        self._failed = False
        # a private communicator: graphc's collectives never match the user's own traffic
        # (while it is made, a rank that times out asks the others over the parent)
        self.comm = comm
        dup, request = comm.Idup()
        self._wait_request(request, self._begin("communicator setup (MPI Idup)"))
        self.comm = dup

    def __repr__(self) -> str:
        return (f"<graphc.distributed.Communicator rank {self.rank} of {self.size}, "
                f"timeout {self.timeout:g} s>")

    # --- collectives ------------------------------------------------------------------
    def broadcast(self, array: np.ndarray, root: int = 0, what: str = "broadcast") -> np.ndarray:
        """Overwrite `array` (C-contiguous, host) with root's copy on every rank."""
        data = _bytes_of(array)
        if self.size > 1:
            tag = self._begin(what)
            self._wait_request(self.comm.Ibcast(data, root=root), tag)
        return array

    def start_allreduce_mean(self, flat: np.ndarray, what: str = "allreduce") -> Any:
        """Start averaging the contiguous float array `flat` over ranks, in place; returns
        the handle `wait` takes. Collectives start in the same order on every rank."""
        tag = self._begin(what)
        request = None
        if self.size > 1:
            request = self.comm.Iallreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)
        handle = _Pending(request, flat, tag)
        self._inflight.append(handle)
        return handle

    def wait(self, handle: "_Pending") -> np.ndarray:
        """Wait (bounded by the timeout) for a started allreduce; returns its array, now
        holding the mean over ranks."""
        if handle.request is not None:
            self._wait_request(handle.request, handle.tag)
            handle.request = None
            np.divide(handle.flat, self.size, out=handle.flat)
        self._inflight = [h for h in self._inflight if h is not handle]
        return handle.flat

    def poll(self) -> None:
        """Let started allreduces progress (MPI moves data only inside MPI calls): a
        non-blocking Test of each, called by the plan between kernels."""
        for handle in self._inflight:
            if handle.request is not None:
                handle.request.Test()

    def allreduce_mean(self, array, what: str = "allreduce") -> np.ndarray:
        """The mean over ranks of a float array (a new float64 array, blocking, bounded)."""
        flat = np.ascontiguousarray(array, dtype=np.float64).copy()
        return self.wait(self.start_allreduce_mean(flat.reshape(-1), what)).reshape(flat.shape)

    def allgather_object(self, value, what: str = "allgather") -> list:
        """[value of rank 0, value of rank 1, ...] on every rank, for small JSON values."""
        data = np.frombuffer(json.dumps(value).encode(), np.uint8)
        if self.size == 1:
            return [value]
        counts = np.zeros(self.size, np.int64)
        tag = self._begin(what + " (sizes)")
        self._wait_request(self.comm.Iallgather(np.array([data.size], np.int64), counts), tag)
        out = np.zeros(int(counts.sum()), np.uint8)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        tag = self._begin(what)
        self._wait_request(self.comm.Iallgatherv(
            data, [out, (counts, displs), self._MPI.BYTE]), tag)
        return [json.loads(out[d:d + c].tobytes().decode()) for d, c in zip(displs, counts)]

    def check_same(self, lines: list, what: str = "plan") -> None:
        """DistributedError on every rank unless every rank passes the same list of strings;
        the message names the ranks that differ from rank 0 and the first difference."""
        digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
        digests = self.allgather_object(digest, f"{what} fingerprint")
        if len(set(digests)) == 1:
            return
        every = self.allgather_object(list(lines), f"{what} fingerprint (full)")
        differ = [r for r in range(self.size) if digests[r] != digests[0]]
        first = differ[0]
        a, b = every[0], every[first]
        i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        show = lambda v: repr(v[i]) if i < len(v) else "nothing (it ends there)"  # noqa: E731
        raise DistributedError(
            f"the ranks compiled different {what}s: rank(s) {_ranks(differ)} differ from rank "
            f"0; the first difference (rank {first}, line {i + 1}): rank 0 has {show(a)}, rank "
            f"{first} has {show(b)}. Every rank must build the same graph (same layers, "
            f"shapes, dtypes, parameter names, optimizer and bucket_bytes)")

    def barrier(self, what: str = "barrier") -> None:
        """Wait until every rank has arrived (bounded by the timeout)."""
        if self.size > 1:
            self._wait_request(self.comm.Ibarrier(), self._begin(what))

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort on COMM_WORLD)."""
        sys.stdout.flush()
        sys.stderr.flush()
        # On COMM_WORLD the process manager kills every rank. MPICH aborts any other
        # communicator (our private dup included) by a message each rank only reads while it
        # is inside an MPI call: a rank stuck elsewhere (sleeping, in a long kernel) would
        # never see it, and the job would hang.
        self._MPI.COMM_WORLD.Abort(code)

    # --- bounded waiting and diagnosis ---------------------------------------------------
    def _begin(self, what: str) -> tuple[int, str]:
        self._seq += 1
        return (self._seq, what)

    def _wait_request(self, request, tag: tuple[int, str]) -> None:
        self._current = tag
        start = time.monotonic()
        deadline = start + self.timeout
        try:
            while not request.Test():
                self._serve()
                now = time.monotonic()
                # Poll without sleeping for the first millisecond: a small collective
                # completes within microseconds once every rank is there, and a sleep
                # would put the ranks out of step. Then back off: 50 us growing to 1 ms.
                waited = now - start
                if waited > 1e-3:
                    time.sleep(min(1e-3, 5e-5 + waited / 20))
                if now > deadline:
                    self._timed_out(tag)
        finally:
            self._current = None

    def _serve(self) -> None:
        """Answer "where are you?" queries from ranks that timed out."""
        MPI = self._MPI
        status = MPI.Status()
        while True:
            try:
                msg = self.comm.Improbe(MPI.ANY_SOURCE, _QUERY, status)
            except MPI.Exception:
                return
            if msg is None:
                return
            buf = bytearray(status.Get_count(MPI.BYTE))
            msg.Recv([buf, MPI.BYTE])
            self._send(status.Get_source(), _REPLY, self._current)

    def _send(self, dest: int, tag: int, what) -> None:
        payload = json.dumps({"rank": self.rank, "at": list(what) if what else None}).encode()
        buf = bytearray(payload)
        self._sent = [(r, b) for r, b in self._sent if not r.Test()]
        try:
            self._sent.append((self.comm.Isend([buf, self._MPI.BYTE], dest=dest, tag=tag), buf))
        except self._MPI.Exception:
            pass

    def _timed_out(self, tag: tuple[int, str]) -> None:
        MPI = self._MPI
        seq, what = tag
        for r in range(self.size):
            if r != self.rank:
                self._send(r, _QUERY, tag)
        where: dict[int, tuple | None] = {}
        end = time.monotonic() + min(5.0, max(1.0, self.timeout / 2))  # for the answers
        status = MPI.Status()
        while time.monotonic() < end and len(where) < self.size - 1:
            for t in (_REPLY, _QUERY):  # a rank asking us has timed out where it says
                try:
                    msg = self.comm.Improbe(MPI.ANY_SOURCE, t, status)
                except MPI.Exception:
                    msg = None
                if msg is None:
                    continue
                buf = bytearray(status.Get_count(MPI.BYTE))
                msg.Recv([buf, MPI.BYTE])
                info = json.loads(bytes(buf).decode())
                where[info["rank"]] = tuple(info["at"]) if info["at"] else None
                if t == _QUERY:
                    self._send(info["rank"], _REPLY, tag)
            time.sleep(1e-3)
        arrived = [r for r, at in where.items() if at == (seq, what)]
        elsewhere = {r: at for r, at in where.items() if at is not None and at != (seq, what)}
        missing = sorted(r for r in range(self.size) if r != self.rank and r not in arrived)
        if missing:
            detail = f"rank(s) {_ranks(missing)} did not arrive"
            for r, (s, w) in sorted(elsewhere.items()):
                detail += f"; rank {r} waits in collective #{s} ({w}) instead"
            hint = ("a rank crashed or exited early, is stuck or still busy, or ran a "
                    "different number of steps")
        else:
            detail = "every rank arrived but the collective did not complete"
            hint = "the network is slow or broken"
        self._fail(DistributedError(
            f"{what} (collective #{seq}) timed out after {self.timeout:g} s on rank "
            f"{self.rank} of {self.size}: {detail}. Likely {hint}; if ranks are only slow, "
            f"raise the timeout (gc.distributed.mpi(timeout=...)). "
            + ("The job is aborted so that no rank hangs." if self.abort_on_error else "")))

    def _fail(self, error: DistributedError) -> None:
        """Raise `error`; with abort on, the whole job ends (MPI_Abort) when this process
        exits or `abort_grace` seconds later, whichever comes first, so no rank hangs."""
        if self.abort_on_error and not self._failed:
            self._failed = True
            # said now, while the process manager still forwards this rank's output: the
            # abort kills every process, and a line written just before it can be lost
            print(f"graphc rank {self.rank}: DistributedError: {error}", file=sys.stderr,
                  flush=True)

            def end():
                print(f"graphc rank {self.rank}: aborting the job (MPI_Abort)",
                      file=sys.stderr, flush=True)
                time.sleep(0.2)  # time for mpiexec to forward the lines above
                self.abort(1)
            atexit.register(end)  # runs before mpi4py's MPI_Finalize (atexit is LIFO)
            if self.abort_grace is not None:
                timer = threading.Timer(self.abort_grace, end)
                timer.daemon = True
                timer.start()
        raise error


class _Pending:
    """A started allreduce: its MPI request (None once complete or on one rank)."""

    __slots__ = ("request", "flat", "tag")

    def __init__(self, request, flat, tag):
        self.request, self.flat, self.tag = request, flat, tag


def _bytes_of(array: np.ndarray):
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
        raise DistributedError(f"broadcast: expected a C-contiguous NumPy array (the values "
                               f"are written into it), got {type(array).__name__}; pass "
                               f"np.ascontiguousarray(a) and read the result from it")
    return array.reshape(-1).view(np.uint8)


def _ranks(ranks) -> str:
    return ", ".join(str(r) for r in ranks)
