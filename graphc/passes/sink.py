"""Broadcast adds sunk into the slices that read them (passes stage).

An RNN layer adds its bias to the input projection of every step at once, (T*N, G) + (G,),
and each step then reads its own rows. The add is a whole pass over the stacked projection
(32 MB for the suite's LSTM) whose result every step reads once; sunk into the steps, each
step's slice gets its bias inside the elementwise kernel that adds its recurrent product
anyway, so the pass disappears. Rewritten only when every reader of the add is such a
slice (a slice's add costs what the whole add cost for its rows, and nothing is computed
twice), and only for a broadcast operand that lives in dimensions the slices keep whole."""
from __future__ import annotations

from .. import ops
from ..graph import Tensor, source_scope
from ..ops.shape_ops import _decode_index
from .program import Program, rebuild, rewrite

WHOLE = ("s", None, None, None)


def _trailing(a: Tensor, b: Tensor, out: Tensor) -> int:
    """How many trailing dims of `out` the broadcast operand b spans (a is full-size), or 0
    when b is not a trailing-dimension broadcast (or is full-size itself)."""
    if a.shape != out.shape or b.ndim == 0 or b.ndim >= out.ndim or None in b.shape:
        return 0
    return b.ndim if tuple(out.shape[-b.ndim:]) == tuple(b.shape) else 0


def _keeps(node: Tensor, k: int) -> bool:
    """Whether a reshape or getitem leaves the last k dims of its input as they are."""
    src = node.inputs[0]
    if node.op.name == "reshape":
        return node.ndim >= k and tuple(node.shape[-k:]) == tuple(src.shape[-k:])
    if node.op.name == "getitem":
        code = node.attrs["index"]
        return all(c[0] in ("i", "s") for c in code) and len(code) == src.ndim \
            and all(c == WHOLE for c in code[-k:])
    return False


def _sinkable(program: Program) -> dict:
    """{id(add): (full operand, broadcast operand)} for the adds every reader of which is a
    chain of reshapes ending in a getitem, all keeping the broadcast dims whole."""
    readers: dict[int, list] = {}
    nodes = program.nodes()
    for n in nodes:
        for x in n.inputs:
            readers.setdefault(id(x), []).append(n)
    roots = {id(r) for r in program.roots()}
    found = {}
    for n in nodes:
        if n.op.name != "add" or id(n) in roots or n.shape is None:
            continue
        a, b = n.inputs
        k = _trailing(a, b, n)
        if not k:
            a, b = b, a
            k = _trailing(a, b, n)
        if not k or a.dtype != n.dtype:
            continue
        if _only_slices(n, k, readers, roots):
            found[id(n)] = (a, b)
    return found


def _only_slices(node: Tensor, k: int, readers: dict, roots: set) -> bool:
    users = readers.get(id(node), [])
    if not users:
        return False
    for u in users:
        if _shape_only_reader(u, node):
            continue  # reshape_like(g, add) and kin read its shape, which `a` has too
        if id(u) in roots or not _keeps(u, k):
            return False
        if u.op.name == "reshape" and not _only_slices(u, k, readers, roots):
            return False
    return True


def _shape_only_reader(user: Tensor, node: Tensor) -> bool:
    return all(i in user.op.shape_only for i, x in enumerate(user.inputs) if x is node)


def run(program: Program) -> Program:
    """Replace slice(reshape*(a + b)) by slice(reshape*(a)) + b where every reader of the add
    is such a slice."""
    found = _sinkable(program)
    if not found:
        return program

    def plain(x: Tensor) -> Tensor:
        """The add (or a reshape of it) without the broadcast operand: same shape."""
        if id(x) in found:
            return found[id(x)][0]
        return ops.reshape(plain(x.inputs[0]), x.attrs["shape"])

    def over_add(x: Tensor) -> bool:
        while x.op.name == "reshape":
            x = x.inputs[0]
        return id(x) in found

    def rule(node: Tensor):
        if node.op.shape_only and any(over_add(x) for x in node.inputs):
            with source_scope(node.source):
                return rebuild(node, [plain(x) if i in node.op.shape_only and over_add(x)
                                      else x for i, x in enumerate(node.inputs)])
        if node.op.name != "getitem":
            return None
        chain, x = [], node.inputs[0]
        while x.op.name == "reshape":
            chain.append(x)
            x = x.inputs[0]
        pair = found.get(id(x))
        if pair is None:
            return None
        a, b = pair
        with source_scope(node.source):
            for r in reversed(chain):
                a = ops.reshape(a, r.attrs["shape"])
            return ops.getitem(a, _decode_index(node.attrs["index"])) + b

    return rewrite(program, rule)
