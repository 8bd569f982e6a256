"""graphc itself, on each backend available here."""
from __future__ import annotations

import numpy as np

import graphc as gc

from ..workloads import apply_chain
from . import (TRAINING_KINDS, Runner, System, Unavailable, adam_fingerprint,
               gradient_fingerprint)

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
        if workload.kind == "lenet":
            return _lenet(workload, data, backend)
        if workload.kind == "lstm":
            return _lstm(workload, data, backend)
        if workload.kind == "adam":
            params = [gc.parameter(f"p{i}", value=v) for i, v in enumerate(data["params"])]
            # d loss / d p_i = g_i: the step is the optimizer's update and nothing else
            terms = [gc.sum(p * gc.constant(g)) for p, g in zip(params, data["grads"])]
            loss = sum(terms[1:], terms[0])
            fn = gc.compile([], updates=gc.optim.Adam(lr=1e-3).updates(loss), backend=backend)
            fn.params = params
            return fn, {}
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


def _xent_step(logits, labels, workload, backend):
    loss = gc.softmax_cross_entropy(logits, labels)
    return gc.compile(loss, optimizer=gc.optim.SGD(lr=workload.lr), backend=backend)


def _lenet(workload, data, backend):
    v = data["params"]
    x = gc.placeholder("x", (None, 1, 28, 28))
    labels = gc.placeholder("labels", (None,), dtype="int32")
    p = [gc.parameter(f"p{i}", value=a) for i, a in enumerate(v)]
    h = gc.max_pool2d(gc.relu(gc.conv2d(x, p[0], p[1], padding=2)), 2)
    h = gc.max_pool2d(gc.relu(gc.conv2d(h, p[2], p[3])), 2)
    h = gc.reshape(h, (-1, 400))
    h = gc.relu(h @ p[4].T + p[5])
    h = gc.relu(h @ p[6].T + p[7])
    fn = _xent_step(h @ p[8].T + p[9], labels, workload, backend)
    return fn, {"x": data["x"], "labels": data["labels"]}


def _lstm(workload, data, backend):
    n_in, hidden, classes = workload.layers[0], workload.hidden, workload.layers[-1]
    x = gc.placeholder("x", (workload.steps, None, n_in))
    labels = gc.placeholder("labels", (None,), dtype="int32")
    lstm = gc.nn.LSTM(n_in, hidden)
    out = gc.nn.Dense(hidden, classes)
    values = data["params"]
    for param, value in zip([lstm.weight_ih, lstm.weight_hh, lstm.bias_ih, lstm.bias_hh,
                             out.weight, out.bias], values):
        param.value = value
    _, (h, _) = lstm.run(x)
    fn = _xent_step(out(h), labels, workload, backend)
    return fn, {"x": data["x"], "labels": data["labels"]}


class GraphcRunner(Runner):
    def __init__(self, workload, data, backend):
        self.kind = workload.kind
        self.fn, self.feeds = build_step(workload, data, backend)
        self.grads = data.get("grads")
        self.out = None

    def step(self):
        self.out = self.fn(self.feeds)

    def fingerprint(self):
        if self.kind == "adam":
            return adam_fingerprint([p.value for p in self.fn.params], self.grads)
        if self.kind in TRAINING_KINDS:
            return np.array([float(self.out)])
        loss, grad = self.out
        return gradient_fingerprint(loss, grad)


class GraphcNumpy(System):
    name = "graphc-numpy"
    device = "cpu"

    def build(self, workload, data):
        return GraphcRunner(workload, data, "numpy")


class GraphcCudaRunner(GraphcRunner):
    """The step on the CUDA backend, its feeds held on the device as the peers' are."""

    def __init__(self, workload, data, backend):
        import cupy
        super().__init__(workload, data, backend)
        self.feeds = {k: cupy.asarray(v) for k, v in self.feeds.items()}
        self.runtime = gc.backends.get("cuda").runtime

    def sync(self):
        self.runtime.synchronize()

    def fingerprint(self):
        self.sync()
        if self.kind == "adam":
            return adam_fingerprint([p.value for p in self.fn.params], self.grads)
        if self.kind in TRAINING_KINDS:
            return np.array([float(self.out)])
        loss, grad = (self.runtime.to_host(o) for o in self.out)
        return gradient_fingerprint(loss, grad)

    def device_bytes(self):
        import cupy
        return int(cupy.get_default_memory_pool().total_bytes())


class GraphcCuda(System):
    name = "graphc-cuda"
    device = "gpu"

    def check(self):
        why = gc.backends.availability("cuda")
        if why is not None:
            raise Unavailable(why)
        if gc.backends.get("cuda").runtime.simulated:
            raise Unavailable("the CUDA backend runs in Numba's simulator here: not timed")

    def build(self, workload, data):
        return GraphcCudaRunner(workload, data, "cuda")


SYSTEMS = [GraphcNumpy, GraphcCuda]
