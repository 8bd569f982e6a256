"""Scaling sweeps: step time against batch size and depth, compile time against graph size.
Each fits the exponent of a power law (log-log least squares): near 1 means linear."""
from __future__ import annotations

import time

import numpy as np

from .suite import Timing, run_workload
from .workloads import WORKLOADS

BATCHES = [32, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
DEPTHS = [2, 4, 8, 16, 32, 64]
GRAPH_SIZES = [100, 300, 1000, 3000, 10000, 20000]
QUICK_BATCHES = [32, 128, 512]
QUICK_DEPTHS = [2, 8, 32]
QUICK_GRAPH_SIZES = [100, 1000, 5000]


def fit_exponent(xs, ys) -> float | None:
    """Slope of log(y) against log(x); None with fewer than two positive points."""
    pts = [(x, y) for x, y in zip(xs, ys) if x and y and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def _step_sweep(base, variants, device, systems, ceilings, log, pool) -> dict:
    timing = Timing(min_samples=3, max_samples=15, budget_s=0.4)
    series: dict[str, list] = {s.name: [] for s in systems}
    for x, w in variants:
        for r in run_workload(w, device, systems, ceilings, timing, None, log=None,
                              pool=pool):
            series[r.system].append((x, r.median_ms))
    out = {}
    for name, pts in series.items():
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        half = len(xs) // 2
        out[name] = {"x": xs, "ms": ys, "exponent": fit_exponent(xs, ys),
                     "exponent_upper_half": fit_exponent(xs[half:], ys[half:])}
        if log and xs:
            e, eu = out[name]["exponent"], out[name]["exponent_upper_half"]
            log(f"    {base:<6} {name:<18} exponent {_f(e)} (upper half {_f(eu)})")
    return out


def _f(v):
    return "n/a" if v is None else f"{v:.2f}"


def batch_sweep(device, systems, ceilings, quick, log=print, pool=None) -> dict:
    base = WORKLOADS["mlp-m"]
    batches = QUICK_BATCHES if quick else BATCHES
    return _step_sweep("batch", [(b, base.with_batch(b)) for b in batches], device, systems,
                       ceilings, log, pool)


def depth_sweep(device, systems, ceilings, quick, log=print, pool=None) -> dict:
    base = WORKLOADS["deep-narrow"]
    depths = QUICK_DEPTHS if quick else DEPTHS
    return _step_sweep("depth", [(d, base.with_depth(d)) for d in depths], device, systems,
                       ceilings, log, pool)


def compile_sweep(quick, backend="numpy", log=print) -> dict:
    """graphc compile time (grad + compile + first call) against plan size."""
    import graphc as gc
    sizes = QUICK_GRAPH_SIZES if quick else GRAPH_SIZES
    steps, secs = [], []
    for n in sizes:
        with gc.Graph():
            x = gc.placeholder("x", (None, 8))
            w = gc.parameter("w", shape=(8,), seed=0)
            y = x * w
            ops = [gc.tanh, lambda t: t * 1.01, gc.sigmoid, lambda t: t + 0.1]
            for i in range(max(1, n // 4)):  # forward ~ n/4 nodes; gradient adds ~3x more
                y = ops[i % 4](y)
            t0 = time.perf_counter()
            fn = gc.compile(gc.mean(y), optimizer=gc.optim.SGD(0.1), backend=backend)
            fn(x=np.ones((4, 8), np.float32))
            secs.append(time.perf_counter() - t0)
            steps.append(len(fn.symbolic_plan.steps))
    e = fit_exponent(steps, secs)
    if log:
        log(f"    compile graphc-{backend}: {steps[0]}..{steps[-1]} steps, "
            f"{secs[0] * 1e3:.1f}..{secs[-1] * 1e3:.1f} ms, exponent {_f(e)}")
    return {"steps": steps, "seconds": secs, "exponent": e}
