"""BatchNorm, LayerNorm and Embedding layers."""
from __future__ import annotations

import numpy as np

from .. import ops
from ..errors import GraphError
from .module import Module


class BatchNorm(Module):
    """torch.nn.BatchNorm1d/2d: over (N, C) or (N, C, ...) inputs, normalise each channel by
    the batch statistics in training-mode calls (and update the running mean and unbiased
    running variance with `momentum`), by the running statistics otherwise."""

    kind = "batchnorm"

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, dtype="float32", name: str | None = None):
        super().__init__(name)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = self._param("weight", np.ones(num_features, dtype)) if affine else None
        self.bias = self._param("bias", np.zeros(num_features, dtype)) if affine else None
        self.running_mean = self._param("running_mean", np.zeros(num_features, dtype), False)
        self.running_var = self._param("running_var", np.ones(num_features, dtype), False)

    def forward(self, x, training):
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise GraphError(f"{self.name}: expects (N, {self.num_features}, ...) input, got "
                             f"shape {x.shape}")
        return ops.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                              training=training, momentum=self.momentum, eps=self.eps,
                              updates=self._updates if training else None)


class LayerNorm(Module):
    """torch.nn.LayerNorm over the trailing `normalized_shape` dimensions."""

    kind = "layernorm"

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 dtype="float32", name: str | None = None):
        super().__init__(name)
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else \
            tuple(normalized_shape)
        self.shape, self.eps = shape, eps
        self.weight = self._param("weight", np.ones(shape, dtype)) if elementwise_affine \
            else None
        self.bias = self._param("bias", np.zeros(shape, dtype)) if elementwise_affine else None

    def forward(self, x, training):
        if tuple(x.shape[-len(self.shape):]) != self.shape:
            raise GraphError(f"{self.name}: expects trailing dimensions {self.shape}, got "
                             f"shape {x.shape}")
        return ops.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


class Embedding(Module):
    """torch.nn.Embedding: a (num_embeddings, dim) table initialised N(0, 1)."""

    kind = "embedding"

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype="float32",
                 name: str | None = None):
        super().__init__(name)
        self.weight = self._param("weight", self._normal((num_embeddings, embedding_dim), dtype))

    def forward(self, ids, training):
        return ops.embedding(ids, self.weight)
