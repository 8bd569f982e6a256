"""python -m benchmarks.profile WORKLOAD [--steps N] [--top K] [--quick]: graphc's step for a suite
workload timed kernel by kernel in place (CPU backend), the slowest first.

Each computing kernel of the bound plan is timed between the executor's watch hooks, so the
figures are the kernels' own, in the order and memory layout the plan runs them; the hook
costs about a microsecond per kernel, so the sum is a little above the step's wall time."""
from __future__ import annotations

import argparse
import time

import numpy as np

from .systems.graphc_sys import build_step
from .workloads import QUICK, WORKLOADS, make_data


class _Timer:
    """Executor watch (see backends.cpu.executor.compile_bound) that times every kernel."""

    def __init__(self, n: int):
        self.total = np.zeros(n)
        self._t0 = 0.0

    def before(self, i, arrays):
        self._t0 = time.perf_counter()

    def after(self, i, arrays):
        self.total[i] += time.perf_counter() - self._t0


def _label(kernel, shapes) -> str:
    ops = kernel.ops
    text = " -> ".join(ops) if len(ops) <= 6 else \
        " -> ".join(ops[:3]) + f" ... ({len(ops)} ops) ... " + " -> ".join(ops[-2:])
    shape = kernel.shape or (shapes[kernel.outputs[0]] if kernel.outputs else ())
    return f"{kernel.kind:5s} {text} {tuple(shape)}"


def profile(name: str, steps: int = 10, top: int = 25, quick: bool = False) -> dict:
    """Print the workload's slowest kernels (mean ms per step) and the step's wall time;
    returns {kernel index: mean ms} (quick: the suite's small variant of the workload)."""
    from graphc.backends.cpu import executor

    workload = (QUICK if quick else WORKLOADS)[name]
    fn, feeds = build_step(workload, make_data(workload))
    fn(**feeds)  # bind and compile
    entry = next(iter(fn._compiled.values()))
    bound = entry[0]
    timer = _Timer(len(bound.kernels))
    run = executor.compile_bound(bound, watch=timer)
    args = [feeds[ph.name] for ph in fn._feeds.placeholders]
    run(*args)
    timer.total[:] = 0
    for _ in range(3):
        fn(**feeds)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn(**feeds)
    wall = (time.perf_counter() - t0) / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        run(*args)
    timed = (time.perf_counter() - t0) / steps
    per = timer.total / steps * 1e3
    order = np.argsort(-per)
    print(f"{name}: step {wall * 1e3:.2f} ms ({timed * 1e3:.2f} ms timed), kernels sum "
          f"{per.sum():.2f} ms over {len(bound.kernels)} kernels")
    groups: dict = {}
    for i, k in enumerate(bound.kernels):
        key = f"{k.kind} {k.ops[0] if len(k.ops) == 1 else '+'.join(sorted(set(k.ops)))}"
        t, c = groups.get(key, (0.0, 0))
        groups[key] = (t + per[i], c + 1)
    print("  by kind:")
    for key, (t, c) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {t:8.3f} ms  {c:4d} x  {key}")
    print("  slowest:")
    for i in order[:top]:
        if per[i] <= 0:
            break
        print(f"  {per[i]:8.3f} ms  k{i:<4d} {_label(bound.kernels[i], bound.shapes)}")
    return {i: float(per[i]) for i in range(len(per))}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__)
    ap.add_argument("workload", choices=sorted(WORKLOADS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--quick", action="store_true", help="the --quick suite's small sizes")
    a = ap.parse_args(argv)
    profile(a.workload, a.steps, a.top, a.quick)


if __name__ == "__main__":
    main()
