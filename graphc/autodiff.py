"""Reverse-mode differentiation as a graph transform (grad stage).

`grad` walks the graph once in reverse topological order, applies each op's gradient rule
(written in graph ops) and sums the contributions reaching every node. The result is more
graph: it can be optimized with the forward pass, compiled, and differentiated again.
"""
from __future__ import annotations


import numpy as np

from . import dtypes as _dt
from .errors import GradientError, GraphError
from .graph import Tensor, flatten_structure, same_graph, source_scope, topo_order
from .ops import cast, sum_to_like, zeros_like
from .ops.common import lift


def _rules(node: Tensor):
    grads = node.op.grads
    return grads(len(node.inputs)) if callable(grads) else grads


def grad(y: Tensor, xs, grad_output=None):
    """Symbolic gradients of scalar `y` with respect to `xs` (same structure back).

    A tensor `y` does not depend on gets zeros. Non-scalar `y` needs `grad_output`, the
    gradient flowing into y (vector-Jacobian product)."""
    if not isinstance(y, Tensor):
        raise GraphError(f"grad: y must be a tensor, got {y!r}")
    targets, rebuild = flatten_structure(xs, "grad: wrt")
    for x in targets:
        if not _dt.is_float(x.dtype):
            raise GradientError(f"cannot differentiate with respect to {x.describe()}: its "
                                f"dtype {x.dtype} is not floating point, so it has no gradient")
    if not _dt.is_float(y.dtype):
        raise GradientError(f"cannot differentiate {y.describe()}: its dtype {y.dtype} "
                            "is not floating point")
    same_graph([y, *targets], "grad")
    seed = _seed(y, grad_output)

    order = topo_order([y])
    needed = _on_path(order, {id(t) for t in targets})
    contributions: dict[int, list[Tensor]] = {id(y): [seed]}
    total: dict[int, Tensor] = {}
    for node in reversed(order):
        if id(node) not in needed or id(node) not in contributions:
            continue
        g = _sum(contributions.pop(id(node)))
        total[id(node)] = g
        if not node.inputs:
            continue
        rules = _rules(node)
        for i, x in enumerate(node.inputs):
            if id(x) not in needed or i in node.op.shape_only:
                continue
            rule = rules[i] if rules is not None and i < len(rules) else None
            if rule is None:
                raise GradientError(f"op '{node.op.name}' has no gradient with respect to its "
                                    f"input {i} ({x.describe()}); node {node.describe()}")
            with source_scope(node.source):
                contrib = rule(g, node, *node.inputs)
                contrib = sum_to_like(contrib, x)
                if contrib.dtype != x.dtype:
                    contrib = cast(contrib, x.dtype)
            contributions.setdefault(id(x), []).append(contrib)
    return rebuild([total.get(id(x)) if id(x) in total else zeros_like(x) for x in targets])


def _seed(y: Tensor, grad_output) -> Tensor:
    if grad_output is None:
        if y.shape != ():
            raise GradientError(f"grad: y must be a scalar, got {y.describe()}; pass "
                                "grad_output= with y's shape for a vector-Jacobian product")
        return lift(np.ones((), y.dtype), like=y)
    g = lift(grad_output, like=y)
    if len(g.shape) != len(y.shape) or any(
            a is not None and b is not None and a != b for a, b in zip(g.shape, y.shape)):
        raise GradientError(f"grad: grad_output has shape {g.shape} but y has shape {y.shape}")
    return cast(g, y.dtype)


def _on_path(order: list[Tensor], sources: set[int]) -> set[int]:
    """Float nodes that depend on a source: the only ones a gradient flows through."""
    needed: set[int] = set()
    for node in order:
        if id(node) in sources or (_dt.is_float(node.dtype) and any(
                id(x) in needed for i, x in enumerate(node.inputs)
                if i not in node.op.shape_only)):
            needed.add(id(node))
    return needed


def _sum(terms: list[Tensor]) -> Tensor:
    terms = _merge_matmul_terms(_merge_slice_gradients(terms))
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def _merge_matmul_terms(terms: list[Tensor]) -> list[Tensor]:
    """sum_t A_t @ B_t = [A_1 ... A_T] @ [B_1; ...; B_T]: the weight gradient of a layer
    applied T times (an unrolled RNN) becomes one GEMM over the stacked steps instead of T
    full-size products and their sum. A_t = X_t^T (the usual case) is stacked as X_t rows."""
    from .ops import concat, matmul, transpose

    def plain(t):
        return t.op.name == "matmul" and all(len(x.shape) == 2 for x in t.inputs)

    def is_t(x):
        return x.op.name == "transpose" and x.attrs["axes"] == (1, 0)

    products = [t for t in terms if plain(t)]
    wrapped = [t for t in terms if is_t(t) and plain(t.inputs[0])]
    for group, outer in ((products, False), (wrapped, True)):
        mms = [t.inputs[0] if outer else t for t in group]
        if len(mms) < 2 or len({(m.dtype, m.shape) for m in mms}) != 1:
            continue
        # in the order the forward pass made the steps (backprop meets them last first):
        # the stacked step gradients then lie as the steps' own scatter holds them, and the
        # stack can be a range of it (memory_plan._stacked_pieces) instead of a second copy
        mms.sort(key=lambda m: _forward_id(m.inputs[0]))
        lhs = [m.inputs[0] for m in mms]
        if all(is_t(a) for a in lhs):
            a = _stack_rows([a.inputs[0] for a in lhs])
            a = None if a is None else transpose(a)
        elif all(x.shape[1] is not None for x in lhs):
            a = concat(lhs, axis=1)
        else:
            a = None  # A_t untransposed over an unbound inner axis: left as a sum
        b = _stack_rows([m.inputs[1] for m in mms])
        if a is None or b is None:
            continue
        merged = matmul(a, b)
        kept = [t for t in terms if not any(t is g for g in group)]
        terms = kept + [transpose(merged) if outer else merged]
    return terms


def _forward_id(a: Tensor) -> int:
    """The creation index of a product's left operand, through the transpose backprop adds."""
    if a.op.name == "transpose" and a.attrs["axes"] == (1, 0):
        a = a.inputs[0]
    return a.id


def _stack_rows(xs: list[Tensor]) -> Tensor | None:
    """[x_1; ...; x_T] along axis 0, or None. Over an unbound axis (a batch of None rows)
    as a stack on a new static axis, reshaped, when every x has the same shape: concat
    along an unbound axis has no static slices for its gradient, the stack and the reshape
    do."""
    from .ops import concat, expand_dims, reshape
    if all(x.shape[0] is not None for x in xs):
        return concat(xs, axis=0)
    if len({tuple(x.shape) for x in xs}) != 1:
        return None
    stacked = concat([expand_dims(x, 0) for x in xs], axis=0)
    return reshape(stacked, (-1,) + tuple(xs[0].shape[1:]))


def _merge_slice_gradients(terms: list[Tensor]) -> list[Tensor]:
    """Gradients of several slices of one tensor become one scatter: O(size) work instead
    of one full-size buffer per slice (O(size x slices) for an unrolled RNN)."""
    from .ops.shape_ops import scatter_slices
    groups: dict[int, list[Tensor]] = {}
    for t in terms:
        if t.op.name == "getitem_grad":
            groups.setdefault(id(t.inputs[1]), []).append(t)
    if all(len(g) < 2 for g in groups.values()):
        return terms
    out, done = [], set()
    for t in terms:
        group = groups.get(id(t.inputs[1])) if t.op.name == "getitem_grad" else None
        if group is None or len(group) < 2:
            out.append(t)
        elif id(t.inputs[1]) not in done:
            done.add(id(t.inputs[1]))
            out.append(scatter_slices(t.inputs[1], [m.inputs[0] for m in group],
                                      [m.attrs["index"] for m in group]))
    return out
