"""Running the suite: build every system's step in its own worker process, check they agree
across processes, time them in interleaved rounds."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from . import machine
from .systems import TRAINING_KINDS, System
from .worker import WorkerDied, WorkerPool, _fingerprints, _sample  # noqa: F401 (re-exported)
from .workloads import Workload

AGREE_STEPS = 3


@dataclass
class Result:
    """Every figure for one (workload, system, device)."""

    workload: str
    system: str
    device: str
    status: str = "ok"  # ok | skipped | disagrees | failed
    reason: str = ""
    median_ms: float | None = None
    min_ms: float | None = None
    max_ms: float | None = None
    samples: int = 0
    samples_per_s: float | None = None
    tflops: float | None = None
    flop_floor_ratio: float | None = None  # median / (matmul FLOPs at the measured peak)
    bytes_floor_ratio: float | None = None  # median / (bytes at the measured copy bandwidth)
    peak_memory_bytes: int | None = None
    memory_kind: str = ""
    compile_s: float | None = None
    fingerprint: list = field(default_factory=list)
    tf32: bool = False
    round_ms: list = field(default_factory=list)  # one sample per interleaved round
    spread: float | None = None  # (max - min) / median over the rounds


def fingerprint_width(w: Workload) -> int:
    """Figures per step in a fingerprint (see systems.Runner.fingerprint)."""
    return 1 if w.kind in TRAINING_KINDS + ("adam",) else 3


def agrees(ref: np.ndarray, got: np.ndarray, tf32: bool, width: int = 1) -> bool:
    """Same steps? `width` figures per step: [loss] (1) or [loss, sum(grad), sum(grad**2)]
    (3). Losses within 1e-3 relative (2e-2 with TF32); gradient sums within 1e-3 of the
    gradient's norm; sums of squares within 1e-3 relative."""
    if ref.shape != got.shape or not np.all(np.isfinite(got)):
        return False
    rtol = 2e-2 if tf32 else 1e-3
    for r, g in zip(ref.reshape(-1, width), got.reshape(-1, width)):
        if abs(g[0] - r[0]) > rtol * max(abs(r[0]), 1e-6):
            return False
        if width == 3:
            norm = np.sqrt(r[2])
            if abs(g[1] - r[1]) > rtol * (abs(r[1]) + norm) or abs(g[2] - r[2]) > rtol * r[2]:
                return False
    return True


@dataclass
class Timing:
    # At least 9 rounds even past the budget: on the shared 2-core VM one round in four or
    # five lands in a slow spell (lstm samples 194-234 ms), and a median of 5 moved with it.
    min_samples: int = 9
    max_samples: int = 50
    budget_s: float = 2.0  # per system and workload
    sample_s: float = 0.002  # a sample spans at least this long (many steps when tiny)
    # A pause before each sample: the previous worker's BLAS/OpenMP threads spin for up to
    # ~0.1 s after its last step and would steal a core from the next worker.
    settle_s: float = 0.2
    # Untimed steps after the pause, before each sample: a training loop runs its steps back
    # to back, and the first step after the pause and another system's sample pays for the
    # caches that sample evicted and the thread pools that went to sleep (2-core machine,
    # LeNet: torch eager's first step 19.0 ms, its next 15.1 ms; graphc's 14.7 ms both).
    warmup: int = 1


def run_workload(w: Workload, device: str, systems: list[System], ceilings: dict,
                 timing: Timing, reference: np.ndarray | None, log=print,
                 pool: WorkerPool | None = None) -> list[Result]:
    """Build, agree-check and time every system on one workload, each in its own worker
    process (from `pool`, or a pool of its own), in interleaved rounds."""
    if pool is None:
        with WorkerPool() as own:
            return run_workload(w, device, systems, ceilings, timing, reference, log, own)
    results, group, samples, inner = [], [], {}, {}
    size = group_size(w, device, len(systems))
    for s in systems:
        r = Result(w.name, s.name, device, tf32=s.tf32)
        results.append(r)
        worker = _build(r, s, w, pool)
        if worker is None:
            continue
        if s.floor:
            pass
        elif reference is None:
            reference = np.array(r.fingerprint)
        elif not agrees(reference, np.array(r.fingerprint), s.tf32, fingerprint_width(w)):
            r.status = "disagrees"
            r.reason = (f"fingerprint {np.round(r.fingerprint, 6).tolist()} vs "
                        f"{np.round(reference, 6).tolist()}")
            _release(worker)
            continue
        group.append((r, worker))
        if len(group) == size:
            group = _time_group(group, w, timing, samples, inner, keep_anchor=size > 1)
    if any(id(r) not in samples for r, _ in group):  # a last group, short of `size`
        group = _time_group(group, w, timing, samples, inner, keep_anchor=False)
    for r, worker in group:
        _release(worker)
    for r in results:
        if r.status == "ok" and samples.get(id(r)):
            _summarize(r, samples[id(r)], w, ceilings)
        elif r.status == "ok":
            r.status, r.reason = "failed", "no sample taken"
        if r.status != "ok" and log:
            log(f"    {w.name:<14} {r.system:<18} {r.status}: {r.reason}")
    return results


def group_size(w: Workload, device: str, n_systems: int) -> int:
    """How many systems are built and timed together. All of them, except for big CPU steps
    whose buffers would not all fit in half the memory available: then groups of as many as
    fit, each holding the first system again (the anchor every peer is interleaved with),
    or one system at a time where two do not fit."""
    if device != "cpu" or w.bytes_moved() * n_systems <= 0.5 * machine.available_bytes():
        return n_systems
    return max(1, int(0.5 * machine.available_bytes() // max(w.bytes_moved(), 1.0)))


def _build(r: Result, s: System, w: Workload, pool: WorkerPool):
    """Build `s` on `w` in its worker, filling `r`; the worker, or None when not timed."""
    try:
        worker = pool.get(s)
        got = worker.call("build", w, AGREE_STEPS)
    except (RuntimeError, WorkerDied) as e:  # a broken peer must not stop the suite
        r.status, r.reason = "failed", str(e)[:300]
        return None
    if got["status"] != "ok":
        r.status, r.reason = got["status"], got["reason"]
        return None
    r.compile_s, r.fingerprint = got["compile_s"], got["fingerprint"]
    r.peak_memory_bytes, r.memory_kind = got["peak_memory_bytes"], got["memory_kind"]
    return worker


def _release(worker) -> None:
    try:
        worker.call("release")
    except (RuntimeError, WorkerDied):
        pass


def _time_group(group, w: Workload, timing: Timing, samples: dict, inner: dict,
                keep_anchor: bool) -> list:
    """Time one group in interleaved rounds, then release its workers, the first one
    excepted when `keep_anchor` (it is timed again with the next group); what stays live."""
    _time_interleaved(group, w, timing, samples, inner)
    keep = group[:1] if keep_anchor and group[0][0].status == "ok" else []
    for r, worker in group[len(keep):]:
        _release(worker)
    return keep


def _time_interleaved(live, w: Workload, timing: Timing, samples: dict, inner: dict) -> None:
    """Rounds of one sample per system, one system at a time, the order rotating each
    round so drift hits every system alike; each sample (seconds per step) is appended to
    samples[id(result)]."""
    live = list(live)
    for r, worker in live[:]:
        if id(r) in inner:
            continue
        try:
            one = worker.call("sample", 1)
        except (RuntimeError, WorkerDied) as e:
            r.status, r.reason = "failed", str(e)[:300]
            live.remove((r, worker))
            continue
        inner[id(r)] = max(1, min(1000, int(timing.sample_s / max(one, 1e-7))))
        samples[id(r)] = []
    if not live:
        return
    deadline = time.perf_counter() + timing.budget_s * len(live)
    rounds = 0
    while rounds < timing.max_samples:
        k = rounds % len(live)
        for r, worker in live[k:] + live[:k]:
            if r.status != "ok":
                continue
            if len(live) > 1:
                time.sleep(timing.settle_s)
            try:
                samples[id(r)].append(worker.call("sample", inner[id(r)], timing.warmup))
            except (RuntimeError, WorkerDied) as e:
                r.status, r.reason = "failed", str(e)[:300]
        rounds += 1
        if rounds >= timing.min_samples and time.perf_counter() > deadline:
            break
    for r, worker in live:
        if r.status == "ok" and r.memory_kind == "device pool":
            r.peak_memory_bytes = worker.call("device_bytes")


def _summarize(r: Result, xs: list, w: Workload, ceilings: dict) -> None:
    """r's figures from its samples (seconds per step)."""
    med = statistics.median(xs)
    r.round_ms = [x * 1e3 for x in xs]
    r.median_ms, r.min_ms, r.max_ms = med * 1e3, min(xs) * 1e3, max(xs) * 1e3
    r.spread = (max(xs) - min(xs)) / med
    r.samples = len(xs)
    r.samples_per_s = w.samples() / med
    if w.flops():
        r.tflops = w.flops() / med / 1e12
    set_floors(r, w, ceilings)


def set_floors(r: Result, w: Workload, ceilings: dict) -> None:
    """r's ratios to its FLOP floor and bytes floor at these ceilings."""
    if r.median_ms is None:
        return
    med = r.median_ms / 1e3
    if w.flops():
        r.flop_floor_ratio = med / (w.flops() / ceilings["matmul_flops"])
    if w.bytes_moved():
        r.bytes_floor_ratio = med / (w.bytes_moved() / ceilings["copy_bytes_per_s"])
