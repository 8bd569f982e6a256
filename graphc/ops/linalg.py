"""Matrix multiplication (graph stage: a registry op) with numpy.matmul semantics (2-D and
broadcast batches)."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..graph import Tensor
from .common import broadcast_shapes, lift_pair
from .registry import apply, fail, register
from .shape_ops import reshape, transpose


def _infer_matmul(shapes, dts, **_):
    a, b = shapes
    if len(a) < 2 or len(b) < 2:
        fail("operands must have at least 2 dimensions")
    if a[-1] is not None and b[-2] is not None and a[-1] != b[-2]:
        fail(f"inner dimensions do not match: {a[-1]} != {b[-2]}")
    batch = broadcast_shapes(a[:-2], b[:-2])
    return batch + (a[-2], b[-1]), _dt.promote(*dts)


def _swap_last(x: Tensor) -> Tensor:
    axes = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return transpose(x, axes)


register("matmul", _infer_matmul, np.matmul,
         (lambda g, y, a, b: matmul(g, _swap_last(b)),
          lambda g, y, a, b: matmul(_swap_last(a), g)))


def matmul(a, b) -> Tensor:
    """a @ b as numpy.matmul: 2-D or batched (>= 2-D, broadcast batch); 1-D operands are
    promoted to matrices and the added dimension removed afterwards."""
    a, b = lift_pair(a, b)
    if a.ndim == 1 and b.ndim >= 2:
        out = apply("matmul", (reshape(a, (1, -1)), b))
        return out[..., 0, :]
    if b.ndim == 1 and a.ndim >= 2:
        out = apply("matmul", (a, reshape(b, (-1, 1))))
        return out[..., 0]
    if a.ndim == 1 and b.ndim == 1:
        from .reductions import sum as _sum
        return _sum(a * b)
    return apply("matmul", (a, b))
