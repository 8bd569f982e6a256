"""Normalisation written in graph ops (torch.nn.functional semantics): the fuser groups the
elementwise parts and the reductions like any other, and gradients come from the ops'
rules."""
from __future__ import annotations

from ..graph import Tensor
from .common import lift
from .elementwise import sqrt
from .reductions import mean


def layer_norm(x, normalized_ndim: int = 1, weight=None, bias=None, eps: float = 1e-5) -> Tensor:
    """Normalise over the last `normalized_ndim` dimensions (biased variance), then scale
    and shift."""
    x = lift(x)
    mu, var = moments(x, tuple(range(x.ndim - normalized_ndim, x.ndim)))
    y = (x - mu) / sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def moments(x, axes) -> tuple[Tensor, Tensor]:
    """Mean and biased variance over `axes`, keepdims."""
    mu = mean(x, axes, keepdims=True)
    centered = x - mu
    return mu, mean(centered * centered, axes, keepdims=True)
