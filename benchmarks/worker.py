"""One worker process per system, driven over a pipe.

In one process the thread pools of torch, JAX and OpenBLAS compete for the same cores and
each system's timing depends on which others were imported before it. Each system runs in
its own process instead (started once, kept for the whole run); the suite sends it a
workload to build, asks for its fingerprints (compared in the suite's process) and for
timed samples one system at a time."""
from __future__ import annotations

import gc as _pygc
import importlib
import multiprocessing as mp
import time
import traceback

import numpy as np

from . import machine


class WorkerDied(Exception):
    """The worker process exited or broke the pipe (crash, out of memory)."""


def _fingerprints(runner, steps: int) -> np.ndarray:
    out = []
    for _ in range(steps):
        runner.step()
        out.append(runner.fingerprint())
    return np.concatenate(out)


def _sample(runner, inner: int, warmup: int = 0) -> float:
    """Seconds per step over `inner` steps, synchronized at both ends, after `warmup`
    untimed ones."""
    for _ in range(warmup):
        runner.step()
    runner.sync()
    t0 = time.perf_counter()
    for _ in range(inner):
        runner.step()
    runner.sync()
    return (time.perf_counter() - t0) / inner


class _Server:
    """The worker side: holds one system and at most one built runner."""

    def __init__(self, module: str, cls: str):
        self.system = getattr(importlib.import_module(module), cls)()
        self.runner = None

    def build(self, w, steps: int) -> dict:
        """Check, build, run `steps` steps for the fingerprint; the figures of the build."""
        from .systems import Unavailable
        from .workloads import make_data
        self.release()
        try:
            self.system.check()
            if not self.system.supports(w):
                raise Unavailable(f"does not implement {w.kind}")
        except Unavailable as e:
            return {"status": "skipped", "reason": str(e)}
        rss0 = machine.reset_peak_rss()
        t0 = time.perf_counter()
        runner = self.system.build(w, make_data(w))
        runner.step()
        runner.sync()
        compile_s = time.perf_counter() - t0
        fp = np.concatenate([runner.fingerprint(), _fingerprints(runner, steps - 1)])
        dev = runner.device_bytes()
        self.runner = runner
        if dev is not None:
            mem, kind = dev, "device pool"
        else:  # this process holds nothing else: the peak of build + the agreement steps
            mem, kind = max(0, machine.peak_rss() - rss0), "host RSS"
        return {"status": "ok", "compile_s": compile_s, "fingerprint": [float(v) for v in fp],
                "peak_memory_bytes": mem, "memory_kind": kind}

    def sample(self, inner: int, warmup: int = 0) -> float:
        return _sample(self.runner, inner, warmup)

    def device_bytes(self):
        return self.runner.device_bytes()

    def release(self) -> None:
        self.runner = None
        _pygc.collect()


def _serve(conn, module: str, cls: str) -> None:
    server = _Server(module, cls)
    while True:
        try:
            cmd, args = conn.recv()
        except EOFError:
            return
        if cmd == "exit":
            return
        try:
            conn.send(("ok", getattr(server, cmd)(*args)))
        except Exception as e:  # a broken peer reports, the suite goes on
            server.release()
            conn.send(("error", f"{type(e).__name__}: {e}",
                       traceback.format_exc(limit=3)))


class Worker:
    """The suite's handle on one system's process."""

    def __init__(self, system):
        ctx = mp.get_context("spawn")  # a fresh interpreter: nothing imported but the system
        self.conn, child = ctx.Pipe()
        cls = type(system)
        self.proc = ctx.Process(target=_serve, args=(child, cls.__module__, cls.__name__),
                                daemon=True, name=f"bench-{system.name}")
        self.proc.start()
        child.close()

    def call(self, cmd: str, *args):
        """Run `cmd` in the worker and return its result; RuntimeError for its exceptions."""
        try:
            self.conn.send((cmd, args))
            reply = self.conn.recv()
        except (EOFError, BrokenPipeError, ConnectionResetError) as e:
            raise WorkerDied(f"worker exited (code {self.proc.exitcode})") from e
        if reply[0] == "error":
            raise RuntimeError(reply[1])
        return reply[1]

    @property
    def alive(self) -> bool:
        return self.proc.is_alive()

    def close(self) -> None:
        try:
            self.conn.send(("exit", ()))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


class WorkerPool:
    """One worker per system name, started on first use and kept until close()."""

    def __init__(self):
        self.workers: dict[str, Worker] = {}

    def get(self, system) -> Worker:
        w = self.workers.get(system.name)
        if w is None or not w.alive:
            w = self.workers[system.name] = Worker(system)
        return w

    def close(self) -> None:
        for w in self.workers.values():
            w.close()
        self.workers.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
