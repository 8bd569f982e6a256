"""Algebraic simplification: identities, double transposes, reshape chains, broadcast then
sum, a canonical place for negation and scalar scaling (out of products, through sums and
means), and the numerically stable fused forms of log(softmax), softmax cross-entropy (from
one_hot * log_softmax or from a gather of log_softmax) and log(sigmoid) as written by hand."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from .. import ops
from ..graph import Constant, Tensor, source_scope
from ..ops.registry import apply
from .program import Program, rewrite


def _const_equal(x: Tensor, value: float) -> bool:
    return isinstance(x, Constant) and x.value.size > 0 and bool(np.all(x.value == value))


def _static(shape) -> bool:
    return None not in shape


def _same(node: Tensor, x: Tensor) -> bool:
    """Replacing node by x changes neither shape nor dtype."""
    return node.shape == x.shape and node.dtype == x.dtype and _static(x.shape)


def _identity(node: Tensor):
    name, ins = node.op.name, node.inputs
    if name in ("add", "sub") and _const_equal(ins[1], 0) and _same(node, ins[0]):
        return ins[0]
    if name == "add" and _const_equal(ins[0], 0) and _same(node, ins[1]):
        return ins[1]
    if name in ("mul", "div") and _const_equal(ins[1], 1) and _same(node, ins[0]):
        return ins[0]
    if name == "mul" and _const_equal(ins[0], 1) and _same(node, ins[1]):
        return ins[1]
    if name == "neg" and ins[0].op.name == "neg":
        return ins[0].inputs[0]
    if name in ("sum_to_like", "broadcast_like", "reshape_like", "reshape", "broadcast_to") \
            and _same(node, ins[0]):
        return ins[0]
    return None


def _chains(node: Tensor):
    name, x = node.op.name, node.inputs[0] if node.inputs else None
    if name == "transpose" and x.op.name == "transpose":
        inner, outer = x.attrs["axes"], node.attrs["axes"]
        axes = tuple(inner[a] for a in outer)
        src = x.inputs[0]
        return src if axes == tuple(range(len(axes))) else ops.transpose(src, axes)
    if name in ("reshape", "reshape_like") and x.op.name in ("reshape", "reshape_like",
                                                             "expand_dims"):
        return _retarget(node, x.inputs[0])
    if name == "getitem" and x.op.name == "expand_dims" \
            and _squeezes(node.attrs["index"], x.attrs["axes"]):
        return x.inputs[0]
    if name == "sum_to_like" and x.op.name == "broadcast_like":
        a, target = x.inputs[0], node.inputs[1]
        if a.shape == target.shape and _static(a.shape):
            # summing a broadcast copy: each element of a was repeated size(L)/size(a) times
            n_a = int(np.prod(a.shape, dtype=np.int64))
            like = x.inputs[1]
            total = ops.shape_ops.count(like, tuple(range(like.ndim)), a.dtype)
            return a * (total / float(max(n_a, 1)))
    return None


def _squeezes(code: tuple, axes: tuple) -> bool:
    """The getitem takes element 0 of exactly the axes expand_dims added, the rest whole."""
    whole = ("s", None, None, None)
    return all((c in (("i", 0), ("i", -1))) if p in axes else c == whole
               for p, c in enumerate(code))


def _retarget(node: Tensor, src: Tensor):
    """reshape(reshape(src)) is one reshape of src to the outer target."""
    if node.op.name == "reshape":
        return ops.reshape(src, node.attrs["shape"])
    return ops.reshape_like(src, node.inputs[1])


def _one_hot_labels(t: Tensor):
    if t.op.name == "cast":
        t = t.inputs[0]
    if t.op.name == "one_hot":
        return t.inputs[0]
    return None


def _stable_forms(node: Tensor):
    name, ins = node.op.name, node.inputs
    if name == "log":
        inner = ins[0]
        if inner.op.name == "softmax":
            return ops.log_softmax(inner.inputs[0], inner.attrs["axis"])
        if inner.op.name == "sigmoid":  # log(sigmoid(x)) = -softplus(-x)
            return -ops.softplus(-inner.inputs[0])
        if inner.op.name == "sub" and _const_equal(inner.inputs[0], 1) \
                and inner.inputs[1].op.name == "sigmoid":  # log(1 - sigmoid(x)) = -softplus(x)
            return -ops.softplus(inner.inputs[1].inputs[0])
    if name == "sum":
        return _cross_entropy(node)
    if name == "gather":
        return _picked_log_softmax(node)
    return None


def _cross_entropy(total: Tensor):
    """sum(one_hot(labels) * log_softmax(x), axis=1) is -softmax_cross_entropy(x, labels),
    and its sum over both axes -sum(softmax_cross_entropy(x, labels))."""
    axes = total.attrs["axes"]
    if total.attrs["keepdims"] or total.inputs[0].op.name != "mul" or axes not in ((1,), (0, 1)):
        return None
    prod = total.inputs[0]
    for a, b in (prod.inputs, prod.inputs[::-1]):
        labels = _one_hot_labels(a)
        if labels is None or b.op.name != "log_softmax" or b.ndim != 2:
            continue
        if b.attrs["axis"] % 2 == 1 and a.shape == b.shape:
            per = ops.softmax_cross_entropy(b.inputs[0], labels, reduction="none")
            return -(per if axes == (1,) else ops.sum(per))
    return None


def _picked_log_softmax(node: Tensor):
    """take_along_axis(log_softmax(x, 1), labels[:, None], 1), nll_loss's pick, is
    -softmax_cross_entropy(x, labels)[:, None]. torch.gather may read fewer rows than x
    has, so an unbound row count is trusted only under NumPy's (broadcasting) rule."""
    lp, index = node.inputs
    if node.attrs["axis"] != 1 or lp.op.name != "log_softmax" or lp.ndim != 2 \
            or lp.attrs["axis"] % 2 != 1 or index.shape[1] != 1:
        return None
    rows = index.shape[0]
    if rows != lp.shape[0] or (rows is None and not node.attrs["broadcast"]):
        return None
    per = ops.softmax_cross_entropy(lp.inputs[0], ops.reshape(index, (-1,)), reduction="none")
    return ops.expand_dims(-per, 1)


def _scalar(t: Tensor) -> bool:
    return isinstance(t, Constant) and t.shape == ()


def _reduced_like(node: Tensor, x: Tensor) -> Tensor:
    """node's reduction (sum or mean, same axes) applied to x instead."""
    return apply(node.op.name, (x,), **node.attrs)


def _signs(node: Tensor):
    """Negation leaves products (-a * b is -(a * b)) and passes out through sums and means,
    as does scaling by a scalar constant; `x * -1` is -x. Every spelling of a negated,
    scaled total then reaches one form, the one the fused rules above recognise."""
    name, ins = node.op.name, node.inputs
    if not _dt.is_float(node.dtype):
        return None
    if name == "mul":
        for a, c in (ins, ins[::-1]):
            if _scalar(c) and _const_equal(c, -1) and a.shape == node.shape \
                    and a.dtype == node.dtype:
                return ops.neg(a)
    if name in ("mul", "div") and ins[0].op.name == "neg":
        return ops.neg(apply(name, (ins[0].inputs[0], ins[1])))
    if name in ("mul", "div") and ins[1].op.name == "neg":
        return ops.neg(apply(name, (ins[0], ins[1].inputs[0])))
    if name == "cast" and ins[0].op.name == "neg" and ins[0].dtype.kind in "if":
        return ops.neg(ops.cast(ins[0].inputs[0], node.dtype))
    if name in ("sum", "mean"):
        return _reduction_signs(node, ins[0])
    return None


def _reduction_signs(node: Tensor, x: Tensor):
    if x.op.name == "neg":
        return ops.neg(_reduced_like(node, x.inputs[0]))
    if x.op.name in ("mul", "div") and _scalar(x.inputs[1]):
        return apply(x.op.name, (_reduced_like(node, x.inputs[0]), x.inputs[1]))
    if x.op.name == "mul" and _scalar(x.inputs[0]):
        return apply("mul", (x.inputs[0], _reduced_like(node, x.inputs[1])))
    return None


RULES = (_identity, _chains, _stable_forms, _signs)


def simplify_node(node: Tensor):
    """The first rule that rewrites `node`, or None."""
    if not node.inputs:
        return None
    with source_scope(node.source):
        for rule in RULES:
            new = rule(node)
            if new is not None:
                return new
    return None


def run(program: Program) -> Program:
    """Apply the rules bottom-up until none matches."""
    return rewrite(program, simplify_node)
