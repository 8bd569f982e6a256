"""Neural-network functions (graph stage: registry ops): softmax family, one_hot and the
losses (torch semantics)."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..errors import FeedError, GraphError
from ..graph import Tensor
from .common import lift
from .elementwise import _float, cast, exp, relu, sqrt, square
from .registry import apply, fail, register
from .reductions import mean, sum as _sum
from .shape_ops import expand_dims


def _infer_axis(shapes, dts, axis):
    if not _dt.is_float(dts[0]):
        fail(f"needs a floating-point input, got {dts[0]}")
    if not -len(shapes[0]) <= axis < max(len(shapes[0]), 1):
        fail(f"axis {axis} is out of range for rank {len(shapes[0])}")
    return shapes[0], dts[0]


def _softmax(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


register("softmax", _infer_axis, _softmax,
         (lambda g, y, x: y * (g - _sum(g * y, y.attrs["axis"], keepdims=True)),))
register("log_softmax", _infer_axis, _log_softmax,
         (lambda g, y, x: g - exp(y) * _sum(g, y.attrs["axis"], keepdims=True),))


def softmax(x, axis: int = -1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    return apply("softmax", (_float(x),), axis=int(axis))


def log_softmax(x, axis: int = -1) -> Tensor:
    """x - logsumexp(x) along `axis`."""
    return apply("log_softmax", (_float(x),), axis=int(axis))


# --- one_hot -------------------------------------------------------------------------------
def _infer_one_hot(shapes, dts, num_classes, dtype):
    if dts[0].kind not in "iu":
        fail(f"labels must be integers, got {dts[0]}")
    return shapes[0] + (num_classes,), np.dtype(dtype)


def _check_labels(labels, num_classes, op):
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)].flat[0]
        raise FeedError(f"{op}: label {bad} is out of range for {num_classes} classes")


def _one_hot(labels, num_classes, dtype):
    _check_labels(labels, num_classes, "one_hot")
    return (labels[..., None] == np.arange(num_classes)).astype(dtype)


register("one_hot", _infer_one_hot, _one_hot, (None,),
         indices=(0, lambda shapes, attrs: attrs["num_classes"], "classes"))


def one_hot(labels, num_classes: int, dtype="int64") -> Tensor:
    """Integer labels to one-hot rows (torch.nn.functional.one_hot, int64 by default);
    num_classes is required because shapes are static."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
        raise GraphError(f"one_hot: num_classes must be a positive int, got {num_classes!r}")
    return apply("one_hot", (lift(labels),), num_classes=int(num_classes),
                 dtype=np.dtype(dtype).name)


# --- losses --------------------------------------------------------------------------------
def _reduce(per_item: Tensor, reduction: str, op: str) -> Tensor:
    if reduction == "mean":
        return mean(per_item)
    if reduction == "sum":
        return _sum(per_item)
    if reduction == "none":
        return per_item
    raise GraphError(f"{op}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _infer_sce(shapes, dts, **_):
    (logits, labels), (ldt, tdt) = shapes, dts
    if not _dt.is_float(ldt):
        fail(f"logits must be floating point, got {ldt}")
    if tdt.kind not in "iu":
        fail(f"labels must be integer class indices, got {tdt}")
    if len(logits) != 2 or len(labels) != 1:
        fail("expects logits of shape (N, C) and labels of shape (N,)")
    if None not in (logits[0], labels[0]) and logits[0] != labels[0]:
        fail(f"batch sizes differ: {logits[0]} logits rows, {labels[0]} labels")
    return (logits[0] if logits[0] is not None else labels[0],), ldt


def _sce(logits, labels):
    _check_labels(labels, logits.shape[1], "softmax_cross_entropy")
    z = logits - np.max(logits, axis=1, keepdims=True)
    lse = np.log(np.sum(np.exp(z), axis=1))
    return lse - z[np.arange(len(labels)), labels]


def _sce_backward(g, logits, labels):
    _check_labels(labels, logits.shape[1], "softmax_cross_entropy")
    z = logits - np.max(logits, axis=1, keepdims=True)
    p = np.exp(z)
    p /= np.sum(p, axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return p * g[:, None]


def _infer_sce_backward(shapes, dts, **_):
    return shapes[1], dts[1]


def _sce_backward_dg(gg, y, g, logits, labels):
    diff = softmax(logits, 1) - one_hot(labels, logits.shape[1], logits.dtype)
    return _sum(gg * diff, axis=1)


def _sce_backward_dlogits(gg, y, g, logits, labels):
    probs = softmax(logits, 1)
    u = gg * expand_dims(g, 1)
    return probs * (u - _sum(u * probs, axis=1, keepdims=True))


register("softmax_cross_entropy", _infer_sce, _sce,
         (lambda g, y, logits, labels: apply("softmax_cross_entropy_backward",
                                             (g, logits, labels)), None),
         indices=(1, lambda shapes, attrs: shapes[0][1], "classes"))
# The analytic gradient g * (softmax(x) - onehot) as one op: one pass over the logits.
register("softmax_cross_entropy_backward", _infer_sce_backward, _sce_backward,
         (_sce_backward_dg, _sce_backward_dlogits, None),
         indices=(2, lambda shapes, attrs: shapes[1][1], "classes"))


def softmax_cross_entropy(logits, labels, reduction: str = "mean") -> Tensor:
    """torch.nn.functional.cross_entropy with integer class labels: logits (N, C), labels (N,)."""
    per = apply("softmax_cross_entropy", (_float(logits), lift(labels)))
    return _reduce(per, reduction, "softmax_cross_entropy")


def binary_cross_entropy_with_logits(logits, targets, reduction: str = "mean") -> Tensor:
    """torch.nn.functional.binary_cross_entropy_with_logits, in the stable form."""
    logits = _float(logits)
    targets = cast(lift(targets, like=logits), logits.dtype)
    per = apply("binary_cross_entropy_with_logits", (logits, targets))
    return _reduce(per, reduction, "binary_cross_entropy_with_logits")


def mse_loss(pred, target, reduction: str = "mean") -> Tensor:
    """torch.nn.functional.mse_loss: mean (or sum) of squared differences."""
    pred = _float(pred)
    return _reduce(square(pred - target), reduction, "mse_loss")


def hinge_loss(scores, labels, margin: float = 1.0, reduction: str = "mean") -> Tensor:
    """Multi-class hinge loss, torch.nn.functional.multi_margin_loss with p=1:
    per sample sum_{i != y} max(0, margin - x[y] + x[i]) / C."""
    scores = _float(scores)
    labels = lift(labels)
    if scores.ndim != 2 or labels.ndim != 1:
        from ..errors import ShapeError
        raise ShapeError(f"hinge_loss: expects scores (N, C) and labels (N,), got {scores.shape}"
                         f" and {labels.shape}")
    n_classes = scores.shape[1]
    target = one_hot(labels, n_classes, scores.dtype)
    correct = _sum(scores * target, axis=1, keepdims=True)
    margins = relu(margin - correct + scores) * (1.0 - target)
    return _reduce(_sum(margins, axis=1) / float(n_classes), reduction, "hinge_loss")


def pairwise_distance(x1, x2, eps: float = 1e-6) -> Tensor:
    """torch.nn.functional.pairwise_distance with p=2: ||x1 - x2 + eps|| over the last axis."""
    return sqrt(_sum(square(x1 - x2 + eps), axis=-1))


def triplet_loss(anchor, positive, negative, margin: float = 1.0,
                 reduction: str = "mean") -> Tensor:
    """torch.nn.functional.triplet_margin_loss (p=2, eps=1e-6)."""
    anchor = _float(anchor)
    d_pos = pairwise_distance(anchor, positive)
    d_neg = pairwise_distance(anchor, negative)
    return _reduce(relu(d_pos - d_neg + margin), reduction, "triplet_loss")
