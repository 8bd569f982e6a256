"""The gradient allreduce in the graph (distributed stage): `reduce_gradients` rewrites an
optimizer's update expressions so that every parameter's gradient is read through an
`allreduce_mean` node. The op is not in the registry (it exists only in data-parallel
steps); lowering makes it a plan step, the plan packs those steps into buckets
(graphc.plan.make_buckets) and the scheduler turns each bucket into a non-blocking start and
a wait (graphc.schedule.collectives). Its reference is the identity: the mean over one
process."""
from __future__ import annotations

from ..autodiff import grad
from ..errors import CompileError
from ..graph import Constant, Tensor, topo_order
from ..ops.registry import OpDef
from ..passes.program import rebuild

MAX_CONST_ELEMENTS = 4096  # constants compared by value up to this size, else by identity


def _infer(shapes, dtypes, of=""):
    return shapes[0], dtypes[0]


def _reference(x, of=""):
    return x


ALLREDUCE = OpDef("allreduce_mean", _infer, _reference, grads=None,
                  doc="the mean over ranks of a gradient (data-parallel training)")
ALLREDUCE.collective = "allreduce_mean"  # what the scheduler reads (see schedule.collectives)


def is_collective(op) -> bool:
    """Whether a plan step's op is a collective the scheduler must place."""
    return getattr(op, "collective", None) is not None


def reduce_gradients(loss: Tensor, params: list, updates: dict) -> dict:
    """`updates` ({parameter: new value}, an optimizer's step) with every occurrence of a
    parameter's gradient of `loss` replaced by its mean over ranks. The gradients are
    found by structure: grad() is deterministic, so the optimizer's own gradient nodes
    compute what `grad(loss, params)` computes here, over the same inputs."""
    if not params:
        return updates
    mine = grad(loss, list(params))
    ids = _Structural()
    wanted: dict[int, list] = {}
    for p, g in zip(params, mine):
        wanted.setdefault(ids.of(g), []).append(p.name)
    values = list(updates.values())
    for n in topo_order(values):
        ids.of(n)
    found: set[int] = set()
    new: dict[int, Tensor] = {}
    reduced: dict[int, Tensor] = {}  # structural id -> its allreduce node
    for n in topo_order(values):
        key = ids.of(n)
        if key in wanted:
            found.add(key)
            if key not in reduced:
                reduced[key] = Tensor(n.graph, ALLREDUCE, (n,), {"of": ", ".join(wanted[key])},
                                      n.shape, n.dtype, None, n.source)
            new[id(n)] = reduced[key]
        else:
            new[id(n)] = rebuild(n, [new[id(x)] for x in n.inputs]) if n.inputs else n
    missing = [name for key, names in wanted.items() if key not in found for name in names]
    if missing:
        raise CompileError(f"compile(data_parallel=...): the optimizer's update does not read "
                           f"the gradient of {', '.join(repr(m) for m in missing)} as grad() "
                           f"computes it, so it cannot be averaged over ranks")
    return {p: new[id(v)] for p, v in updates.items()}


class _Structural:
    """Hash-consing: equal ids for nodes computing the same op over equal inputs."""

    def __init__(self):
        self.table: dict = {}
        self.memo: dict[int, int] = {}

    def of(self, node: Tensor) -> int:
        got = self.memo.get(id(node))
        if got is not None:
            return got
        for n in topo_order([node]):
            if id(n) not in self.memo:
                self.memo[id(n)] = self._intern(self._key(n))
        return self.memo[id(node)]

    def _intern(self, key) -> int:
        return self.table.setdefault(key, len(self.table))

    def _key(self, n: Tensor):
        if isinstance(n, Constant):
            v = n.value
            if v.size <= MAX_CONST_ELEMENTS:
                return ("constant", v.dtype.str, v.shape, v.tobytes())
            return ("node", id(n))
        if not n.inputs:
            return ("node", id(n))  # placeholders and parameters: unique by construction
        try:
            attrs = tuple(sorted(n.attrs.items()))
            hash(attrs)
        except TypeError:
            return ("node", id(n))
        return (n.op.name, tuple(self.memo[id(x)] for x in n.inputs), attrs)
