"""Plan-executor overhead on a graph of scalar-sized nodes.

Builds a chain of N elementwise ops on a 0-d tensor (so the kernels themselves cost almost
nothing) and reports the time per plan step of a whole call, compiled without fusion (one
kernel per op: the executor's own cost per step) and with it (the chain becomes one kernel).
Run: python -m benchmarks.overhead [--nodes 200]"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc


def build(n_nodes: int, optimize: bool):
    with gc.Graph():
        x = gc.placeholder("x", ())
        y = x
        ops = [lambda t: t * 1.0001, lambda t: t + 0.5, gc.tanh, lambda t: t - 0.25]
        for i in range(n_nodes):
            y = ops[i % len(ops)](y)
        return gc.compile(y, optimize=optimize)


def best_of(fn, repeats: int = 7, number: int = 500) -> float:
    """Best mean seconds per call over `repeats` runs of `number` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def measure(n_nodes: int = 200) -> dict:
    feed = {"x": np.float32(0.3)}
    out = {}
    for label, optimize in (("unfused", False), ("fused", True)):
        fn = build(n_nodes, optimize)
        fn(feed)
        bound, run = next(iter(fn._compiled.values()))
        arr = np.asarray(np.float32(0.3))
        kernels = sum(1 for k in bound.kernels if k.kind in ("fused", "op"))
        call = best_of(lambda: fn(feed))
        plan_only = best_of(lambda: run(arr))
        out[label] = {"steps": len(fn.symbolic_plan.steps), "kernels": kernels,
                      "call_us_per_step": call / n_nodes * 1e6,
                      "plan_us_per_kernel": plan_only / kernels * 1e6,
                      "per_call_fixed_us": (call - plan_only) * 1e6}
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    args = parser.parse_args(argv)
    r = measure(args.nodes)
    u, f = r["unfused"], r["fused"]
    print(f"chain of {args.nodes} scalar-sized elementwise ops")
    print(f"  without fusion: {u['kernels']} kernels, {u['plan_us_per_kernel']:.3f} us per "
          f"kernel in the generated plan function, {u['call_us_per_step']:.3f} us per step "
          f"for a whole call")
    print(f"  with fusion:    {f['kernels']} kernel(s), {f['call_us_per_step']:.3f} us per graph "
          f"step for a whole call")
    print(f"  fixed cost per call: {u['per_call_fixed_us']:.1f} us (feed checks, lock, outputs)")


if __name__ == "__main__":
    main()
