"""python -m benchmarks: graphc against NumPy, PyTorch and JAX on the hardware present.

Runs every workload on every available system and device, each system in its own worker
process, checks that the systems agree on the step before timing them, prints a table (ms per
step, ratio to graphc), runs the
scaling sweeps, and writes JSON, a PNG of the sweeps and (after a full run) RESULTS.md."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from . import machine, report, sweeps
from .suite import Timing, run_workload, set_floors
from .systems import all_systems
from .worker import WorkerDied, WorkerPool
from .workloads import QUICK, WORKLOADS

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (< 2 min)")
    p.add_argument("--workload", action="append", help="run only these (repeatable)")
    p.add_argument("--system", action="append", help="run only these systems (repeatable)")
    p.add_argument("--device", choices=["cpu", "gpu"], action="append",
                   help="devices to run on (default: every device present)")
    p.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    p.add_argument("--plot", metavar="PATH", help="write the sweeps as a PNG (matplotlib)")
    p.add_argument("--no-sweeps", action="store_true", help="skip the scaling sweeps")
    p.add_argument("--results", metavar="PATH", default=os.path.join(HERE, "RESULTS.md"),
                   help="RESULTS.md to update after a full run (default: benchmarks/RESULTS.md)")
    p.add_argument("--no-results", action="store_true", help="never write RESULTS.md")
    return p.parse_args(argv)


def _reference(w, pool):
    """The step's fingerprint from hand-written float32 NumPy (the trusted reference),
    computed in numpy-naive's worker process; None when it cannot run it."""
    from .suite import AGREE_STEPS
    from .systems.numpy_sys import NumpyNaive
    worker = pool.get(NumpyNaive())
    try:
        got = worker.call("build", w, AGREE_STEPS)
        worker.call("release")
    except (RuntimeError, WorkerDied):
        return None  # then the first system that runs is the reference
    return np.array(got["fingerprint"]) if got["status"] == "ok" else None


def main(argv=None) -> int:
    args = parse(argv)
    with WorkerPool() as pool:
        return _run(args, pool)


def _run(args, pool) -> int:
    table = QUICK if args.quick else WORKLOADS
    names = args.workload or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"unknown workload(s) {unknown}; known: {list(table)}", file=sys.stderr)
        return 2
    devices = args.device or (["cpu", "gpu"] if machine.gpu_available() else ["cpu"])
    if "gpu" in devices and not machine.gpu_available():
        print("no GPU is visible here: skipping --device gpu")
        devices = [d for d in devices if d != "gpu"]
    quick_timing = Timing(min_samples=3, max_samples=10, budget_s=0.5)
    timing = quick_timing if args.quick else Timing()
    systems = all_systems()
    if args.system:
        systems = [s for s in systems if s.name in args.system]
    info = machine.describe()
    print(f"graphc benchmarks on {info['cpu']} ({info['cores']} cores)"
          + (f" + {info['gpu']}" if info["gpu"] else "") + (" [quick]" if args.quick else "")
          + f"; NumPy's BLAS: {info['blas']}")
    rep = {"machine": info, "quick": args.quick, "ceilings": {}, "results": [], "sweeps": {}}
    for device in devices:
        ceil = machine.ceilings(device, args.quick)
        rep["ceilings"][device] = ceil
        print(f"\n[{device}] matmul {ceil['matmul_flops'] / 1e12:.2f} TFLOP/s, "
              f"copy {ceil['copy_bytes_per_s'] / 1e9:.1f} GB/s")
        dev_systems = [s for s in systems if s.device == device]
        for name in names:
            w = table[name]
            if device not in w.devices:
                continue
            print(f"  {name}: {w.description}")
            ref = _reference(w, pool)
            rep["results"] += run_workload(w, device, dev_systems, ceil, timing, ref,
                                           pool=pool)
        _remeasure(device, args.quick, ceil, [r for r in rep["results"] if r.device == device],
                   table)
        print()
        print(report.main_table(rep["results"], device))
        if not args.no_sweeps:
            print(f"\n[{device}] scaling sweeps")
            graphc_like = [s for s in dev_systems if s.name.startswith("graphc")]
            peer = next((s for pref in ("jax-jit", "numpy-expert", "cupy-graph", "cupy")
                         for s in dev_systems if s.name == pref), None)
            sweep_systems = graphc_like + ([peer] if peer else [])
            rep["sweeps"][device] = {
                "batch": sweeps.batch_sweep(device, sweep_systems, ceil, args.quick,
                                            pool=pool),
                "depth": sweeps.depth_sweep(device, sweep_systems, ceil, args.quick,
                                            pool=pool),
                "compile": sweeps.compile_sweep(args.quick,
                                                "numpy" if device == "cpu" else "cupy"),
            }
    if args.json:
        report.to_json(rep, args.json)
        print(f"\nwrote {args.json}")
    if args.plot:
        if report.plot(rep, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("matplotlib is not installed (pip install graphc[bench]): no plot")
    full = not (args.quick or args.workload or args.system or args.no_sweeps)
    if full and not args.no_results:
        report.write_results(rep, args.results, devices)
        print(f"updated {args.results}")
    return 0


def _remeasure(device: str, quick: bool, ceil: dict, results: list, table: dict) -> None:
    """The ceilings measured again after the workloads, the higher of each pair kept (noise
    on a shared machine only ever lowers a ceiling; a ceiling measured during a busy
    moment, 0.22 instead of 0.43 TFLOP/s in one run here, would halve every floor), and the
    floor ratios taken at the kept ones."""
    again = machine.ceilings(device, quick)
    keys = ("matmul_flops", "copy_bytes_per_s")
    if not any(again[k] > ceil[k] for k in keys):
        return
    for k in keys:
        ceil[k] = max(ceil[k], again[k])
    for r in results:
        if r.workload in table:
            set_floors(r, table[r.workload], ceil)
    print(f"[{device}] ceilings measured again after the workloads, the higher kept: "
          f"matmul {ceil['matmul_flops'] / 1e12:.2f} TFLOP/s, "
          f"copy {ceil['copy_bytes_per_s'] / 1e9:.1f} GB/s")


if __name__ == "__main__":
    sys.exit(main())
