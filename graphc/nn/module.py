"""Modules: objects that own parameters and build graph nodes when called.

A module creates its parameters in the current graph when it is constructed, named
`<module>_<n>/<parameter>` (for example `dense_0/weight`), with torch's layouts and default
initialisation, so torch weights load across. Calling it on a tensor adds nodes to that graph:
`model(x, training=True)` for the training step (dropout on, batch statistics),
`model(x)` for evaluation. Both calls share the parameters. Running-statistic updates made
by a training-mode call are collected in `model.updates()` and compiled with the step."""
from __future__ import annotations

import numpy as np

from ..graph import Graph, Parameter, Tensor, get_default_graph, parameter


def _rng(graph: Graph) -> np.random.Generator:
    rng = getattr(graph, "_nn_rng", None)
    if rng is None:
        rng = graph._nn_rng = np.random.default_rng(0)
    return rng


def seed(value: int, graph: Graph | None = None) -> None:
    """Reseed the generator that initialises new modules' parameters in `graph` (default:
    the current graph). Graphs start from seed 0, so a script builds the same weights on
    every run."""
    (graph or get_default_graph())._nn_rng = np.random.default_rng(value)


class Module:
    """Base class. Subclasses create parameters in __init__ (through `_param`) and implement
    `forward(x, training)`."""

    kind = "module"

    def __init__(self, name: str | None = None):
        self.graph = get_default_graph()
        self.name = name or self.graph.unique_name(self.kind)
        self._params: list[Parameter] = []
        self._updates: dict = {}

    def _param(self, pname: str, value: np.ndarray, trainable: bool = True) -> Parameter:
        p = parameter(f"{self.name}/{pname}", value=value, dtype=value.dtype,
                      trainable=trainable)
        self._params.append(p)
        return p

    def _uniform(self, shape, bound: float, dtype="float32") -> np.ndarray:
        return _rng(self.graph).uniform(-bound, bound, size=shape).astype(dtype)

    def _normal(self, shape, dtype="float32") -> np.ndarray:
        return _rng(self.graph).normal(size=shape).astype(dtype)

    def children(self) -> list["Module"]:
        return []

    def parameters(self, trainable: bool | None = None) -> list[Parameter]:
        """This module's parameters and its children's, in creation order."""
        out = list(self._params)
        for c in self.children():
            out += c.parameters()
        seen, unique = set(), []
        for p in out:
            if id(p) not in seen and (trainable is None or p.trainable == trainable):
                seen.add(id(p))
                unique.append(p)
        return unique

    def named_parameters(self, prefix: str = "") -> list:
        """(local name, parameter) pairs with torch's state_dict keys: a module's own
        parameters by name, children by index in a Sequential ("0.weight")."""
        out = [(prefix + p.name.rsplit("/", 1)[-1], p) for p in self._params]
        for key, child in self._named_children():
            out += child.named_parameters(f"{prefix}{key}.")
        return out

    def _named_children(self) -> list:
        return [(str(i), c) for i, c in enumerate(self.children())]

    def state_dict(self) -> dict:
        """{torch-style key: NumPy copy} of every parameter (running statistics included)."""
        return {k: p.value for k, p in self.named_parameters()}

    def load_state_dict(self, state: dict) -> None:
        """Assign every parameter from {key: array} (e.g. a torch state_dict's tensors as
        NumPy); every key must match, shapes are checked."""
        from ..errors import GraphError
        mine = dict(self.named_parameters())
        missing, unknown = sorted(set(mine) - set(state)), sorted(set(state) - set(mine))
        if missing or unknown:
            raise GraphError(f"{self.name}.load_state_dict: missing {missing}, unknown "
                             f"{unknown}")
        for k, p in mine.items():
            p.value = np.asarray(state[k])

    def updates(self) -> dict:
        """{parameter: new value} recorded by training-mode calls (running statistics)."""
        out = dict(self._updates)
        for c in self.children():
            out.update(c.updates())
        return out

    def forward(self, x: Tensor, training: bool) -> Tensor:
        raise NotImplementedError

    def __call__(self, x, training: bool = False) -> Tensor:
        return self.forward(x, training)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.name}')"
