"""graphc itself, on each backend available here."""
from __future__ import annotations

import numpy as np

import graphc as gc

from ..workloads import apply_chain
from . import Runner, System, gradient_fingerprint

ACTIVATIONS = {"relu": gc.relu, "tanh": gc.tanh}


def build_step(workload, data: dict, backend: str = "numpy"):
    """The workload's step as a compiled graphc Function and its feeds."""
    with gc.Graph(workload.name):
        if workload.kind == "mlp":
            x = gc.placeholder("x", (None, workload.layers[0]))
            labels = gc.placeholder("labels", (None,), dtype="int32")
            h = x
            values = data["params"]
            n_layers = len(values) // 2
            for i in range(n_layers):
                w = gc.parameter(f"w{i}", value=values[2 * i])
                b = gc.parameter(f"b{i}", value=values[2 * i + 1])
                h = h @ w + b
                if i < n_layers - 1:
                    h = ACTIVATIONS[workload.activation](h)
            loss = gc.softmax_cross_entropy(h, labels)
            fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=workload.lr), backend=backend)
            return fn, {"x": data["x"], "labels": data["labels"]}
        if workload.kind == "elementwise":
            x = gc.placeholder("x", (None,))
            loss = gc.sum(apply_chain(x, gc.tanh, gc.sigmoid))
            return gc.compile([loss, gc.grad(loss, x)], backend=backend), {"x": data["x"]}
        if workload.kind == "softmax_xent":
            logits = gc.placeholder("logits", (None, workload.classes))
            labels = gc.placeholder("labels", (None,), dtype="int32")
            loss = gc.softmax_cross_entropy(logits, labels)
            fn = gc.compile([loss, gc.grad(loss, logits)], backend=backend)
            return fn, {"logits": data["x"], "labels": data["labels"]}
    raise ValueError(workload.kind)


class GraphcRunner(Runner):
    def __init__(self, workload, data, backend):
        self.kind = workload.kind
        self.fn, self.feeds = build_step(workload, data, backend)
        self.out = None

    def step(self):
        self.out = self.fn(self.feeds)

    def fingerprint(self):
        if self.kind == "mlp":
            return np.array([float(self.out)])
        loss, grad = self.out
        return gradient_fingerprint(loss, grad)


class GraphcNumpy(System):
    name = "graphc-numpy"
    device = "cpu"

    def build(self, workload, data):
        return GraphcRunner(workload, data, "numpy")


SYSTEMS = [GraphcNumpy]
