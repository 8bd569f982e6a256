"""Optimizers: each turns a loss into parameter updates written in graph ops, so the
update is part of the compiled plan. Hyper-parameters live in non-trainable parameters,
so changing them needs no recompilation."""
from __future__ import annotations

import numpy as np

from .autodiff import grad
from .errors import CompileError, GraphError
from .graph import Graph, Parameter, Tensor


class Optimizer:
    """Base class: subclasses implement `_update(param, gradient) -> new value`."""

    def __init__(self, **hyper):
        self._hyper_values = {k: float(v) for k, v in hyper.items()}
        self._hyper: dict[str, Parameter] = {}
        self._graph: Graph | None = None

    def __getattr__(self, name):
        hv = self.__dict__.get("_hyper_values", {})
        if name in hv:
            return hv[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        if "_hyper_values" in self.__dict__ and name in self._hyper_values:
            self._hyper_values[name] = float(value)
            if name in self._hyper:
                self._hyper[name].value = np.asarray(value, self._hyper[name].dtype)
            return
        super().__setattr__(name, value)

    def _h(self, name: str, like: Tensor) -> Parameter:
        """The hyper-parameter `name` as a scalar parameter of like's graph and dtype."""
        if name not in self._hyper:
            from .graph import Parameter as P
            g = like.graph
            pname = g.unique_name(f"{type(self).__name__.lower()}/{name}")
            g._claim_name(pname, "parameter")
            node = P(g, np.asarray(self._hyper_values[name], like.dtype), pname, False)
            g._register_name(node)
            self._hyper[name] = node
        return self._hyper[name]

    def updates(self, loss: Tensor, params=None) -> dict:
        """{parameter: new value} for one step minimizing `loss`; by default over every
        trainable parameter the loss depends on."""
        if loss.shape != ():
            raise CompileError(f"the optimizer needs a scalar loss, got {loss.describe()}; "
                               "reduce it with .mean() or .sum()")
        if self._graph is not None and self._graph is not loss.graph:
            raise GraphError(f"this {type(self).__name__} is already used with another graph")
        self._graph = loss.graph
        if params is None:
            from .graph import topo_order
            params = [n for n in topo_order([loss]) if isinstance(n, Parameter) and n.trainable]
        grads = grad(loss, list(params))
        return {p: self._update(p, g) for p, g in zip(params, grads)}

    def _update(self, p: Parameter, g: Tensor) -> Tensor:
        raise NotImplementedError


class SGD(Optimizer):
    """Plain stochastic gradient descent: p <- p - lr * grad."""

    def __init__(self, lr: float = 0.01):
        super().__init__(lr=lr)

    def _update(self, p, g):
        return p - self._h("lr", p) * g
