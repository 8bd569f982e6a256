"""A minimal backend, registered by tests from outside graphc/: every op runs its NumPy
reference, one kernel per step, no fusion, parameters in host memory. It proves the seam
(graphc.backends.base): a backend is a Backend subclass and one `register` call."""
from __future__ import annotations

import numpy as np

from graphc.backends.base import Backend, Capabilities, Runtime
from graphc.schedule.kernel import COMPUTING


class ReferenceBackend(Backend):
    """Walks the bound plan's kernels and runs each step's NumPy reference."""

    name = "reference"
    caps = Capabilities(fuse=False, recompute=False, gemm_update=False)
    runtime = Runtime()
    unsupported: dict = {}

    def supports(self, op) -> bool:
        return op.reference is not None

    def compile_bound(self, bound, watch=None):
        plan = bound.plan
        shapes = bound.shapes

        def step(st, values):
            op = st.op
            args = [tuple(shapes[s]) if j in op.shape_only else values[s]
                    for j, s in enumerate(st.inputs)]
            out = np.asarray(op.reference(*args, **st.node.attrs))
            return out if out.dtype == st.node.dtype else out.astype(st.node.dtype)

        def run(*feeds):
            values = {s: a for (_, s), a in zip(plan.feeds, feeds)}
            values.update({s: p.storage.array for p, s in plan.params})
            values.update({s: c.value for c, s in plan.consts})
            with np.errstate(all="ignore"):
                for i, k in enumerate(bound.kernels):
                    if k.kind == "const":
                        values[k.outputs[0]] = bound.folded[k.outputs[0]]
                        continue
                    if k.kind == "alias":
                        values[k.outputs[0]] = values[k.inputs[0]]
                        continue
                    watched = watch is not None and k.kind in COMPUTING
                    if watched:
                        watch.before(i, tuple(values[s] for s in k.inputs))
                    for st in k.steps:
                        values[st.slot] = step(st, values)
                    if watched:
                        watch.after(i, tuple(values[s] for s in k.outputs))
            outs = tuple(np.array(values[s], copy=True) for s in plan.outputs)
            # every right-hand side is computed from the old values: copy, then write
            new = [(p, np.array(values[s], copy=True)) for p, s in plan.updates]
            for p, v in new:
                np.copyto(p.storage.array, v, casting="unsafe")
            return outs

        return run
