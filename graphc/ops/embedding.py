"""Embedding lookup (graph stage: registry ops; torch.nn.functional.embedding) and its
gradient, a scatter-add."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..errors import FeedError
from ..graph import Tensor
from .common import lift
from .registry import apply, fail, register


def _infer(shapes, dts):
    w, ids = shapes
    if len(w) != 2:
        fail(f"the weight must be 2-D (num_embeddings, dim), got {w}")
    if dts[1].kind not in "iu":
        fail(f"indices must be integers, got {dts[1]}")
    if not _dt.is_float(dts[0]):
        fail(f"the weight must be floating point, got {dts[0]}")
    return ids + (w[1],), dts[0]


def _check(ids, n):
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        bad = ids[(ids < 0) | (ids >= n)].flat[0]
        raise FeedError(f"embedding: index {bad} is out of range for {n} embeddings")


def _embedding(w, ids):
    _check(ids, w.shape[0])
    return w[ids]


def _embedding_grad(g, ids, w_shape):
    out = np.zeros(w_shape, g.dtype)
    np.add.at(out, ids.reshape(-1), g.reshape(-1, w_shape[1]))
    return out


register("embedding", _infer, _embedding, (
    lambda g, y, w, ids: apply("embedding_grad", (g, ids, w)), None),
    indices=(1, lambda shapes, attrs: shapes[0][0], "embeddings"))
register("embedding_grad", lambda shapes, dts: (shapes[2], dts[0]), _embedding_grad, (
    lambda gg, y, g, ids, like: apply("embedding", (gg, ids)), None, None), shape_only=(2,),
    indices=(1, lambda shapes, attrs: shapes[2][0], "embeddings"))


def embedding(ids, weight) -> Tensor:
    """Rows of `weight` (num_embeddings, dim) picked by integer `ids`: shape ids.shape + (dim,)."""
    return apply("embedding", (lift(weight), lift(ids)))
