"""Dense, Flatten, Dropout, activations, softmax layers and Sequential."""
from __future__ import annotations

import math

from .. import ops
from ..errors import GraphError
from ..graph import Tensor
from .module import Module


class Dense(Module):
    """torch.nn.Linear: y = x @ weight.T + bias, weight of shape (out, in), both initialised
    U(-1/sqrt(in), 1/sqrt(in)). An optional activation name ("relu", "tanh", ...) follows."""

    kind = "dense"

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 activation: str | None = None, dtype="float32", name: str | None = None):
        super().__init__(name)
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = self._param("weight", self._uniform((out_features, in_features), bound,
                                                          dtype))
        self.bias = self._param("bias", self._uniform((out_features,), bound, dtype)) \
            if bias else None
        self.activation = _activation(activation)

    def forward(self, x, training):
        if x.shape[-1] != self.in_features:
            raise GraphError(f"{self.name}: expects {self.in_features} input features, got "
                             f"a tensor of shape {x.shape}")
        y = x @ self.weight.T
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y) if self.activation else y


class Flatten(Module):
    """Keep the first (batch) dimension, flatten the rest."""

    kind = "flatten"

    def forward(self, x, training):
        rest = 1
        for d in x.shape[1:]:
            if d is None:
                raise GraphError(f"{self.name}: cannot flatten an unknown dimension: {x.shape}")
            rest *= d
        return ops.reshape(x, (-1, rest)) if x.ndim != 2 else x


class Dropout(Module):
    """torch.nn.Dropout: active in training-mode calls only."""

    kind = "dropout"

    def __init__(self, p: float = 0.5, name: str | None = None):
        super().__init__(name)
        self.p = p

    def forward(self, x, training):
        return ops.dropout(x, self.p, training)


_ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid, "gelu": ops.gelu,
                "elu": ops.elu, "leaky_relu": ops.leaky_relu, "softplus": ops.softplus}


def _activation(name):
    if name is None or callable(name):
        return name
    if name not in _ACTIVATIONS:
        raise GraphError(f"unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


class Activation(Module):
    """A function of the input as a layer: an activation name ("relu", "tanh", ...) or any
    callable tensor -> tensor (Sequential wraps plain functions in one)."""

    kind = "activation"

    def __init__(self, fn, name: str | None = None):
        super().__init__(name)
        self.fn = _activation(fn)

    def forward(self, x, training):
        return self.fn(x)


def ReLU() -> Activation:  # noqa: N802 - layer names as in torch.nn
    return Activation("relu")


def Tanh() -> Activation:  # noqa: N802
    return Activation("tanh")


def Sigmoid() -> Activation:  # noqa: N802
    return Activation("sigmoid")


def GELU() -> Activation:  # noqa: N802
    return Activation("gelu")


class Softmax(Module):
    """torch.nn.Softmax(dim): softmax along `dim`."""

    kind = "softmax"

    def __init__(self, dim: int = -1, name: str | None = None):
        super().__init__(name)
        self.dim = dim

    def forward(self, x, training):
        return ops.softmax(x, self.dim)


class LogSoftmax(Softmax):
    """torch.nn.LogSoftmax(dim): log_softmax along `dim` (for nll_loss)."""

    kind = "log_softmax"

    def forward(self, x, training):
        return ops.log_softmax(x, self.dim)


def _as_layer(layer, position: int) -> Module:
    if isinstance(layer, Module):
        return layer
    if callable(layer):
        return Activation(layer)
    raise GraphError(f"Sequential: layer {position} is a {type(layer).__name__}, not a gc.nn "
                     f"module or a function of a tensor")


class Sequential(Module):
    """Layers applied in order; a plain function (gc.relu, a lambda) counts as a layer."""

    kind = "sequential"

    def __init__(self, *layers, name: str | None = None):
        super().__init__(name)
        self.layers = [_as_layer(layer, i) for i, layer in enumerate(layers)]

    def children(self):
        return self.layers

    def forward(self, x: Tensor, training):
        for layer in self.layers:
            x = layer(x, training)
        return x

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)


class Conv2D(Module):
    """torch.nn.Conv2d over NCHW: weight (out, in/groups, kh, kw) and bias (out,), both
    initialised U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in/groups * kh * kw."""

    kind = "conv2d"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, activation=None,
                 dtype="float32", name: str | None = None):
        super().__init__(name)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if in_channels % groups or out_channels % groups:
            raise GraphError(f"{self.name}: channels ({in_channels} in, {out_channels} out) "
                             f"must be divisible by groups={groups}")
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self.in_channels = in_channels
        self.weight = self._param("weight", self._uniform(
            (out_channels, in_channels // groups, kh, kw), bound, dtype))
        self.bias = self._param("bias", self._uniform((out_channels,), bound, dtype)) \
            if bias else None
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.activation = _activation(activation)

    def forward(self, x, training):
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise GraphError(f"{self.name}: expects NCHW input with {self.in_channels} "
                             f"channels, got shape {x.shape}")
        y = ops.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                       self.groups)
        return self.activation(y) if self.activation else y


class _Pool2D(Module):
    pool = None  # the functional op

    def __init__(self, kernel_size, stride=None, padding=0, name: str | None = None):
        super().__init__(name)
        self.args = (kernel_size, stride, padding)

    def forward(self, x, training):
        return type(self).pool(x, *self.args)


class MaxPool2D(_Pool2D):
    """torch.nn.MaxPool2d (stride defaults to the kernel size)."""

    kind, pool = "maxpool2d", ops.max_pool2d


class AvgPool2D(_Pool2D):
    """torch.nn.AvgPool2d (count_include_pad=True)."""

    kind, pool = "avgpool2d", ops.avg_pool2d


class Reshape(Module):
    """Reshape each example (the batch dimension is kept): Reshape(1, 28, 28)."""

    kind = "reshape"

    def __init__(self, *shape: int, name: str | None = None):
        super().__init__(name)
        self.shape = shape

    def forward(self, x, training):
        return ops.reshape(x, (-1,) + tuple(self.shape))
