"""check_numerics (Function stage): find the first kernel of a step that produced NaN or
Inf, and inside a fused kernel the original op, by re-running its members with their NumPy
references on host copies. Finiteness is checked by the backend's runtime, where the
values live."""
from __future__ import annotations

import numpy as np

from .errors import NumericsError
from .graph import Constant, Tensor


def _label(node: Tensor, slot: int | None = None) -> str:
    """op 'name' (or op %slot) made at file:line."""
    name = f"'{node.name}'" if node.name else (f"%{slot}" if slot is not None else "")
    where = f" made at {node.source}" if node.source else ""
    return f"{node.op.name} {name}{where}".replace("  ", " ")


def _non_finite(arr) -> str | None:
    """'NaN' or 'Inf' if a floating-point array holds one, else None."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fc" or np.isfinite(arr).all():
        return None
    return "NaN" if np.isnan(arr).any() else "Inf"


class NumericsWatch:
    """check_numerics: called by the backend around every kernel of one bound plan. Keeps
    copies of a multi-op kernel's inputs (the kernel may overwrite them in place) so the
    op that first went non-finite can be found by re-running its members one by one."""

    def __init__(self, bound, runtime):
        self.bound = bound
        self.runtime = runtime
        self.saved: list = []

    def before(self, i: int, inputs: tuple) -> None:
        k = self.bound.kernels[i]
        to_host = self.runtime.to_host
        self.saved = [np.array(to_host(a), copy=True) for a in inputs] \
            if len(k.steps) > 1 else []

    def after(self, i: int, outputs: tuple) -> None:
        for slot, arr in zip(self.bound.kernels[i].outputs, outputs):
            bad = self.runtime.non_finite(arr)
            if bad is not None:
                raise NumericsError(self._explain(i, slot, bad))

    def check_inputs(self, feeds: list, arrays: list, params: list) -> None:
        """Before the step: feeds, parameters and constants folded at bind time (kernels
        too, and they come first) must be finite."""
        for ph, a in zip(feeds, arrays):
            bad = _non_finite(a)
            if bad is not None:
                at = tuple(map(int, np.argwhere(~np.isfinite(a))[0]))
                raise NumericsError(f"check_numerics: placeholder '{ph.name}' is fed {bad} "
                                    f"(at index {at})")
        for p in params:
            bad = self.runtime.non_finite(p.storage.array)
            if bad is not None:
                where = f" (made at {p.source})" if p.source else ""
                raise NumericsError(f"check_numerics: parameter '{p.name}'{where} already "
                                    f"holds {bad} before this call (assigned, loaded, or left "
                                    f"by a call without check_numerics)")
        for i, k in enumerate(self.bound.kernels):
            if k.kind == "const":
                bad = _non_finite(self.bound.folded[k.outputs[0]])
                if bad is not None:
                    raise NumericsError(self._explain(i, k.outputs[0], bad))

    def _explain(self, i: int, slot: int, bad: str) -> str:
        bp = self.bound
        k = bp.kernels[i]
        value = f"value %{slot} {tuple(bp.shapes[slot])} {bp.plan.nodes[slot].dtype}"
        if k.kind == "const":
            head = f"check_numerics: {bad} in {value}, a constant folded when the plan was bound"
        else:
            running = [x for x in bp.kernels if x.kind in ("fused", "op", "gemm")]
            n = next(j for j, x in enumerate(running) if x is k)
            head = (f"check_numerics: {bad} in {value}, written by kernel {n + 1} of "
                    f"{len(running)} (print(fn.plan) lists them)")
        tail = "; the parameters and optimizer state are left as they were before this call"
        if len(k.steps) == 1:
            st = k.steps[0]
            return f"{head}: {_label(st.node, st.slot)}, {self._from(st)}{tail}"
        ops = " -> ".join(k.ops)
        culprit = self._first_non_finite(k)
        if culprit is None:
            made = sorted({str(st.node.source) for st in k.steps if st.node.source})
            return (f"{head}, the fused kernel [{ops}] (ops made at {', '.join(made)}); its "
                    f"ops re-run one by one with their NumPy references stay finite, so the "
                    f"fused arithmetic itself overflowed{tail}")
        step, what, args = culprit
        return (f"{head}, the fused kernel [{ops}]; the first of its ops to produce {what} is "
                f"{_label(step.node, step.slot)}, {self._from(step, args)}{tail}")

    def _from(self, step, args=None) -> str:
        """Where a step's NaN/Inf came from: its own arithmetic, or an input holding one. Only
        constants can be such an input: feeds, parameters and kernel results are checked."""
        bp = self.bound
        for j, s in enumerate(step.inputs):
            if j in step.op.shape_only:
                continue
            node = bp.plan.nodes[s]
            value = args[j] if args is not None else bp.folded.get(
                s, node.value if isinstance(node, Constant) else None)
            bad = None if value is None else _non_finite(value)
            if bad is not None:
                return f"from its input {_label(node, s)}, which holds {bad}"
        return "from finite inputs"

    def _first_non_finite(self, k):
        """(step, 'NaN' or 'Inf', its arguments) of the first member op whose NumPy reference,
        fed the kernel's saved inputs and the members before it, gives a non-finite value."""
        bp = self.bound
        values = dict(zip(k.inputs, self.saved))
        for st in k.steps:
            op = st.op
            if op.reference is None or any(s not in values for j, s in enumerate(st.inputs)
                                           if j not in op.shape_only):
                return None
            args = [tuple(bp.shapes[s]) if j in op.shape_only else values[s]
                    for j, s in enumerate(st.inputs)]
            with np.errstate(all="ignore"):
                values[st.slot] = np.asarray(op.reference(*args, **st.node.attrs))
            bad = _non_finite(values[st.slot])
            if bad is not None:
                return st, bad, args
        return None
