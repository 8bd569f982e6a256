"""Running the suite: build every system's step, check they agree, time them interleaved."""
from __future__ import annotations

import gc as _pygc
import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from . import machine
from .systems import TRAINING_KINDS, System, Unavailable
from .workloads import Workload, make_data

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


def _fingerprints(runner, steps: int) -> np.ndarray:
    out = []
    for _ in range(steps):
        runner.step()
        out.append(runner.fingerprint())
    return np.concatenate(out)


def _sample(runner, inner: int) -> float:
    """Seconds per step over `inner` steps, synchronized at both ends."""
    runner.sync()
    t0 = time.perf_counter()
    for _ in range(inner):
        runner.step()
    runner.sync()
    return (time.perf_counter() - t0) / inner


@dataclass
class Timing:
    min_samples: int = 5
    max_samples: int = 50
    budget_s: float = 2.0  # per system and workload
    sample_s: float = 0.002  # a sample spans at least this long (many steps when tiny)


def run_workload(w: Workload, device: str, systems: list[System], ceilings: dict,
                 timing: Timing, reference: np.ndarray | None, log=print) -> list[Result]:
    """Build, agree-check and time every system on one workload; interleaved rounds."""
    data = make_data(w)
    results, live = [], []
    # Big CPU steps are timed one system at a time so their buffers never coexist in RAM.
    sequential = device == "cpu" and w.bytes_moved() > 5e8
    for s in systems:
        r = Result(w.name, s.name, device, tf32=s.tf32)
        results.append(r)
        try:
            s.check()
            if not s.supports(w):
                raise Unavailable(f"does not implement {w.kind}")
            rss0 = machine.reset_peak_rss()
            t0 = time.perf_counter()
            runner = s.build(w, data)
            runner.step()
            runner.sync()
            r.compile_s = time.perf_counter() - t0
            fp = np.concatenate([runner.fingerprint(), _fingerprints(runner, AGREE_STEPS - 1)])
            r.fingerprint = [float(v) for v in fp]
            dev = runner.device_bytes()
            if dev is not None:
                r.peak_memory_bytes, r.memory_kind = dev, "device pool"
            else:  # measured now, before other systems run: the peak of build + 3 steps
                r.peak_memory_bytes, r.memory_kind = max(0, machine.peak_rss() - rss0), "host RSS"
        except Unavailable as e:
            r.status, r.reason = "skipped", str(e)
            continue
        except Exception as e:  # a broken peer must not stop the suite
            r.status, r.reason = "failed", f"{type(e).__name__}: {e}"[:300]
            continue
        if s.floor:
            pass
        elif reference is None:
            reference = fp
        elif not agrees(reference, fp, s.tf32, fingerprint_width(w)):
            r.status = "disagrees"
            r.reason = f"fingerprint {np.round(fp, 6).tolist()} vs {np.round(reference, 6).tolist()}"
            continue
        if sequential:
            _time_interleaved([(r, runner)], w, device, ceilings, timing)
            del runner
            _pygc.collect()
        else:
            live.append((r, runner))
    _time_interleaved(live, w, device, ceilings, timing)
    for r in results:
        if r.status != "ok" and log:
            log(f"    {w.name:<14} {r.system:<18} {r.status}: {r.reason}")
    del live
    _pygc.collect()
    return results


def _time_interleaved(live, w: Workload, device: str, ceilings: dict, timing: Timing) -> None:
    if not live:
        return
    inner = {}
    for r, runner in live:
        one = _sample(runner, 1)
        inner[id(r)] = max(1, min(1000, int(timing.sample_s / max(one, 1e-7))))
    samples = {id(r): [] for r, _ in live}
    deadline = time.perf_counter() + timing.budget_s * len(live)
    rounds = 0
    while rounds < timing.max_samples:
        for r, runner in live:
            samples[id(r)].append(_sample(runner, inner[id(r)]))
        rounds += 1
        if rounds >= timing.min_samples and time.perf_counter() > deadline:
            break
    for r, runner in live:
        xs = samples[id(r)]
        med = statistics.median(xs)
        r.median_ms, r.min_ms, r.max_ms = med * 1e3, min(xs) * 1e3, max(xs) * 1e3
        r.samples = len(xs)
        r.samples_per_s = w.samples() / med
        if w.flops():
            r.tflops = w.flops() / med / 1e12
            r.flop_floor_ratio = med / (w.flops() / ceilings["matmul_flops"])
        if w.bytes_moved():
            r.bytes_floor_ratio = med / (w.bytes_moved() / ceilings["copy_bytes_per_s"])
        if r.memory_kind == "device pool":
            r.peak_memory_bytes = runner.device_bytes()
