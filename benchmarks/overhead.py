"""Plan-executor overhead on a graph of scalar-sized nodes.

Builds a chain of N elementwise ops on 0-d tensors (so the kernels themselves cost almost
nothing) and reports, per plan step: the time of a whole call, the time of the same NumPy
kernels called directly from a tight Python loop, and the difference (graphc's overhead).
Run: python -m benchmarks.overhead [--nodes 200]"""
from __future__ import annotations

import argparse
import time

import numpy as np

import graphc as gc


def build(n_nodes: int):
    with gc.Graph():
        x = gc.placeholder("x", ())
        y = x
        ops = [lambda t: t * 1.0001, lambda t: t + 0.5, gc.tanh, lambda t: t - 0.25]
        for i in range(n_nodes):
            y = ops[i % len(ops)](y)
        return gc.compile(y), x


def best_of(fn, repeats: int = 7, number: int = 2000) -> float:
    """Best mean seconds per call over `repeats` runs of `number` calls."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def measure(n_nodes: int = 200) -> dict:
    fn, _ = build(n_nodes)
    feed = {"x": np.float32(0.3)}
    fn(feed)
    run = next(iter(fn._compiled.values()))
    steps = fn.plan.steps
    arrays = [np.asarray(np.float32(0.3))]
    params, consts = [], [c.value for c, _ in fn.plan.consts]
    from graphc.backends.numpy import make_kernel
    kernels = [(make_kernel(s.node, []), s.inputs, s.slot) for s in steps]
    slots = [None] * len(fn.plan.nodes)
    slots[0] = arrays[0]
    for (_, s), v in zip(fn.plan.consts, consts):
        slots[s] = v

    def direct():
        for k, ins, out in kernels:
            slots[out] = k(*[slots[i] for i in ins])

    call = best_of(lambda: fn(feed), number=500)
    plan_only = best_of(lambda: run(arrays, params, consts), number=500)
    kernels_only = best_of(direct, number=500)
    n = len(steps)
    return {"steps": n, "call_us_per_step": call / n * 1e6,
            "plan_us_per_step": plan_only / n * 1e6,
            "kernel_loop_us_per_step": kernels_only / n * 1e6,
            "overhead_us_per_step": (plan_only - kernels_only) / n * 1e6,
            "per_call_fixed_us": (call - plan_only) * 1e6}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    args = parser.parse_args(argv)
    r = measure(args.nodes)
    print(f"graph of {r['steps']} scalar-sized steps")
    print(f"  whole call                 {r['call_us_per_step']:.3f} us/step")
    print(f"  generated plan function    {r['plan_us_per_step']:.3f} us/step")
    print(f"  same kernels, direct loop  {r['kernel_loop_us_per_step']:.3f} us/step")
    print(f"  executor overhead          {r['overhead_us_per_step']:.3f} us/step "
          f"(negative: the straight-line plan beats a loop)")
    print(f"  fixed cost per call        {r['per_call_fixed_us']:.1f} us (feed checks, updates)")


if __name__ == "__main__":
    main()
