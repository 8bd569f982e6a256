"""Adds sunk into the slices that read them (passes stage).

An RNN layer adds its bias to the input projection of every step at once, (T*N, G) + (G,),
each step adds its recurrent product to its rows of that, (N, G) + (N, G), and the gates
then read column slices of the sum. Each add is a whole pass whose result is read once, in
slices; sunk into the slices, every gate's kernel adds its own columns of the projection,
the bias and the product inside the elementwise chain it runs anyway, and the passes
disappear (two per step of an LSTM). Rewritten only when every reader of the add is a
basic slice (through reshapes that keep a broadcast operand's dims) and no two slices
overlap, so nothing is computed more often than before. The pass repeats until nothing
changes: a sunk add can leave another add read only in slices."""
from __future__ import annotations

from .. import ops
from ..graph import Tensor, source_scope
from ..ops.shape_ops import _decode_index
from .program import Program, rebuild

_MAX_ROUNDS = 8


def _span(a: Tensor, b: Tensor, out: Tensor) -> int:
    """How many trailing dims of `out` operand b spans (a is full-size): all of them when b
    is full-size too, else b's own (a trailing-dimension broadcast), 0 when b is neither."""
    if a.shape != out.shape or b.ndim == 0:
        return 0
    if b.shape == out.shape:
        return out.ndim
    if b.ndim < out.ndim and None not in b.shape and tuple(out.shape[-b.ndim:]) == b.shape:
        return b.ndim
    return 0


def _keeps(node: Tensor, k: int) -> bool:
    """Whether a reshape leaves the last k dims of its input as they are (so a broadcast
    operand still lines up), or a getitem is a basic slice (ints and slices, every dim)."""
    src = node.inputs[0]
    if node.op.name == "reshape":
        return node.ndim >= k and tuple(node.shape[-k:]) == tuple(src.shape[-k:])
    if node.op.name == "getitem":
        code = node.attrs["index"]
        return all(c[0] in ("i", "s") for c in code) and len(code) == src.ndim
    return False


def _sinkable(program: Program) -> dict:
    """{id(add): (operand a, operand b)} for the adds every reader of which is a chain of
    reshapes ending in a basic slice, no two slices overlapping."""
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
        k = _span(a, b, n)
        if not k:
            a, b = b, a
            k = _span(a, b, n)
        if not k or a.dtype != n.dtype:
            continue
        slices = _slices(n, k, readers, roots)
        if slices and _disjoint(slices):
            found[id(n)] = (a, b)
    return found


def _slices(node: Tensor, k: int, readers: dict, roots: set) -> list | None:
    """The slices (getitem nodes) that read `node` through reshapes, or None when another
    kind of reader reads its values (or nothing does)."""
    out = []
    for u in readers.get(id(node), []):
        if _shape_only_reader(u, node):
            continue  # reshape_like(g, add) and kin read its shape, which `a` has too
        if id(u) in roots or not _keeps(u, k):
            return None
        inner = _slices(u, k, readers, roots) if u.op.name == "reshape" else [u]
        if inner is None:
            return None
        out += inner
    return out or None


def _disjoint(slices: list) -> bool:
    """Whether no element is read by two of the slices (all over one shape: the same chain
    of reshapes), so the sunk adds compute each element at most once, as the add did."""
    shapes = {tuple(s.inputs[0].shape) for s in slices}
    if len(shapes) != 1:
        return False
    shape = shapes.pop()
    codes = [s.attrs["index"] for s in slices]
    for d, size in enumerate(shape):  # the steps of a recurrence: one distinct int each
        ints = [c[d][1] % size for c in codes if c[d][0] == "i"] if size is not None else []
        if len(ints) == len(codes) and len(set(ints)) == len(ints):
            return True
    ranges = [[_dim_range(c, d) for c, d in zip(code, shape)] for code in codes]
    for i in range(len(ranges)):
        for j in range(i + 1, len(ranges)):
            if not any(r is not None and q is not None and not (r & q)
                       for r, q in zip(ranges[i], ranges[j])):
                return False
    return True


def _dim_range(code, dim):
    """The indices one dim's index code takes (a set), None where the dim is unknown."""
    if dim is None:
        return None
    if code[0] == "i":
        return {code[1] % dim}
    return set(range(*slice(code[1], code[2], code[3]).indices(dim)))


def _shape_only_reader(user: Tensor, node: Tensor) -> bool:
    return all(i in user.op.shape_only for i, x in enumerate(user.inputs) if x is node)


def run(program: Program) -> Program:
    """Replace slice(reshape*(a + b)) by slice(reshape*(a)) + (b, sliced alike where it
    spans the sliced dims) wherever every reader of the add is such a slice."""
    for _ in range(_MAX_ROUNDS):
        found = _sinkable(program)
        if not found:
            break
        program = _sink(program, found)
    return program


def _sink(program: Program, found: dict) -> Program:
    """One bottom-up rebuild. Matched over the original nodes (a rebuilt add is a new node,
    which a rule over rebuilt nodes would no longer recognize), built over the new ones."""
    done: dict[int, Tensor] = {}

    def pieces(x: Tensor) -> tuple[Tensor, Tensor, bool]:
        """(a, b, b is full-size) of the add under reshapes, rebuilt, the reshapes applied to
        a (and to b where it is full-size: a broadcast b lines up with the kept dims)."""
        if id(x) in found:
            a, b = (done[id(t)] for t in found[id(x)])
            return a, b, b.shape == a.shape
        a, b, full = pieces(x.inputs[0])
        shape = x.attrs["shape"]
        return ops.reshape(a, shape), (ops.reshape(b, shape) if full else b), full

    def over_add(x: Tensor) -> bool:
        while x.op.name == "reshape":
            x = x.inputs[0]
        return id(x) in found

    def sunk(node: Tensor) -> Tensor | None:
        if node.op.shape_only and any(over_add(x) for x in node.inputs):
            return rebuild(node, [pieces(x)[0] if i in node.op.shape_only and over_add(x)
                                  else done[id(x)] for i, x in enumerate(node.inputs)])
        if node.op.name != "getitem" or not over_add(node.inputs[0]):
            return None
        code = node.attrs["index"]
        a, b, full = pieces(node.inputs[0])
        part = ops.getitem(a, _decode_index(code))
        b_code = code if full else code[len(code) - b.ndim:]
        if not full and all(c == ("s", None, None, None) for c in b_code):
            return part + b
        return part + ops.getitem(b, _decode_index(b_code))

    for n in program.nodes():
        with source_scope(n.source):
            new = sunk(n)
        done[id(n)] = new if new is not None else rebuild(n, [done[id(x)] for x in n.inputs])
    return Program(tuple(done[id(t)] for t in program.outputs),
                   tuple((p, done[id(v)]) for p, v in program.updates))
