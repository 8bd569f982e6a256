"""Compile time of a workload's training step, in the three situations a user meets.

- cold: a fresh process and an empty kernel cache (Numba compiles every kernel);
- disk cache: a fresh process, kernels cached on disk by an earlier process;
- in process: the same step compiled again in a process that has compiled it before.

Each figure is the time to build, compile and bind the step (kernels printed and loaded),
plus what its first call takes beyond the median step measured right after it (Numba
compiling or loading its kernels), so it is the cost a user waits for beyond the step
itself. Numba's own import and first-use initialisation are reported apart: a fresh
process pays them once, whatever it compiles.
Run: python -m benchmarks.compile_time [--workload mlp-m] [--repeats 3] [--backend numpy]"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import graphc
from graphc.backends.cpu import numba_printer as numba_cpu
numba_init = 0.0
if numba_cpu.available():
    t = time.perf_counter()
    import numba
    @numba.njit(cache=False)
    def _probe(a):
        return a + 1
    _probe(1)
    numba_init = time.perf_counter() - t
from benchmarks.workloads import WORKLOADS, make_data
from benchmarks.systems.graphc_sys import build_step
workload = WORKLOADS[sys.argv[1]]
backend = sys.argv[2]
data = make_data(workload)

def first_call():
    t = time.perf_counter()
    fn, feeds = build_step(workload, data, backend)
    fn.bound_plan(**{name: value.shape for name, value in feeds.items()})
    planned = time.perf_counter() - t  # graph, passes, plan, fusion, kernels printed/loaded
    t = time.perf_counter()
    fn(feeds)  # Numba compiles (or loads) a kernel on its first call
    first = time.perf_counter() - t
    steps = []
    for _ in range(3):
        t = time.perf_counter()
        fn(feeds)
        steps.append(time.perf_counter() - t)
    steps.sort()
    return planned + max(0.0, first - steps[1])

fresh = first_call()
again = first_call()
print(json.dumps({"numba_init": numba_init, "fresh": fresh, "in_process": again}))
"""


def _child(workload: str, cache: str, backend: str) -> dict:
    env = dict(os.environ, GRAPHC_CACHE_DIR=cache)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", _CHILD, workload, backend], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(workload: str = "mlp-m", repeats: int = 3, backend: str = "numpy") -> dict:
    """Median seconds over `repeats` for cold, disk-cache and in-process compiles."""
    cold, disk, again, init = [], [], [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            first = _child(workload, cache, backend)
            second = _child(workload, cache, backend)
        cold.append(first["fresh"])
        disk.append(second["fresh"])
        again += [first["in_process"], second["in_process"]]
        init.append(second["numba_init"])
    return {"workload": workload, "cold_s": float(np.median(cold)),
            "disk_cache_s": float(np.median(disk)), "in_process_s": float(np.median(again)),
            "numba_import_and_init_s": float(np.median(init))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mlp-m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backend", default="numpy")
    args = parser.parse_args(argv)
    t = time.perf_counter()
    r = measure(args.workload, args.repeats, args.backend)
    print(f"compile time of the {r['workload']} step on {args.backend} (median of {args.repeats}, "
          f"beyond one step):")
    print(f"  cold (fresh process, empty kernel cache): {r['cold_s'] * 1e3:8.1f} ms")
    print(f"  disk cache (fresh process):               {r['disk_cache_s'] * 1e3:8.1f} ms")
    print(f"  in process (compiled before):             {r['in_process_s'] * 1e3:8.1f} ms")
    print(f"  not included above: Numba import and first-use initialisation, "
          f"{r['numba_import_and_init_s'] * 1e3:.1f} ms per process")
    print(f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
