"""The NumPy backend: each step calls its op's NumPy reference; the whole plan becomes one
generated straight-line Python function, so a call walks no graph and runs no loop."""
from __future__ import annotations

import functools

from ..plan import Plan

name = "numpy"


def make_kernel(node, in_shapes: list):
    """A callable for one step: the op's reference with attributes and, for shape-only
    inputs, the bound shapes baked in. Data inputs stay positional."""
    op = node.op
    ref = op.reference
    if op.shape_only:
        consts = {i: tuple(in_shapes[i]) for i in op.shape_only}
        n_in = len(node.inputs)
        attrs = node.attrs

        def kernel(*data):
            it = iter(data)
            args = [consts[i] if i in consts else next(it) for i in range(n_in)]
            return ref(*args, **attrs)
        return kernel
    if node.attrs:
        return functools.partial(ref, **node.attrs)
    return ref


def data_inputs(step) -> list:
    """Input slots whose values a step reads (shape-only inputs excluded)."""
    skip = step.op.shape_only
    return [s for i, s in enumerate(step.inputs) if i not in skip]


def generate(plan: Plan, shapes: list) -> tuple[str, dict]:
    """Python source of the plan's step function and the namespace it runs in.

    Names in the source are only v<slot> and k<slot>: no user string ever enters the code."""
    ns: dict = {}
    keep = set(plan.outputs) | {s for _, s in plan.updates}
    leaves = {s for _, s in plan.feeds} | {s for _, s in plan.params} | {s for _, s in plan.consts}
    lines = ["def run(feeds, params, consts):"]
    for i, (_, s) in enumerate(plan.feeds):
        lines.append(f"    v{s} = feeds[{i}]")
    for i, (_, s) in enumerate(plan.params):
        lines.append(f"    v{s} = params[{i}]")
    for i, (_, s) in enumerate(plan.consts):
        lines.append(f"    v{s} = consts[{i}]")
    last_read: dict[int, int] = {}
    for i, step in enumerate(plan.steps):
        for s in data_inputs(step):
            last_read[s] = i
    for i, step in enumerate(plan.steps):
        if step.op.noop_if_same_shape and shapes[step.inputs[0]] == shapes[step.slot]:
            lines.append(f"    v{step.slot} = v{step.inputs[0]}")
        else:
            ns[f"k{step.slot}"] = make_kernel(step.node, [shapes[s] for s in step.inputs])
            args = ", ".join(f"v{s}" for s in data_inputs(step))
            lines.append(f"    v{step.slot} = k{step.slot}({args})")
        dead = sorted({s for s in data_inputs(step) if last_read.get(s) == i
                       and s not in keep and s not in leaves})
        if dead:  # free big temporaries as soon as their last reader ran
            lines.append("    del " + ", ".join(f"v{s}" for s in dead))
    outs = "".join(f"v{s}, " for s in plan.outputs)
    ups = "".join(f"v{s}, " for _, s in plan.updates)
    lines.append(f"    return ({outs}), ({ups})")
    return "\n".join(lines) + "\n", ns


def compile_plan(plan: Plan, shapes: list):
    """Compile a bound plan to run(feeds, params, consts) -> (outputs, update values)."""
    source, ns = generate(plan, shapes)
    code = compile(source, "<graphc plan>", "exec")
    exec(code, ns)  # noqa: S102 - source is generated from slot numbers only
    run = ns["run"]
    run.source = source
    return run
