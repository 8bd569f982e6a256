"""The benchmark workloads: what one step computes, its sizes, its floors, its data.

Every system implements the same step from the same initial weights and data (`make_data`),
in float32. A workload is a plain description; systems read it and build their own step.

Kinds:
- "mlp": Dense layers with `activation` between them (none after the last), softmax
  cross-entropy (mean) on integer labels, SGD with `lr`. One step = forward, backward
  (no gradient for the input data), update. `loss` is the loss before the update.
- "elementwise": x -> the chain ELEMENTWISE_CHAIN applied to 16M floats -> loss = sum(y);
  one step = loss and d loss / d x (no parameters).
- "softmax_xent": loss = mean softmax cross-entropy of given logits; one step = loss and
  d loss / d logits (no parameters).
- "lenet": LeNet-5 on 1 x 28 x 28 images: conv 5x5 (6, padding 2), ReLU, max-pool 2;
  conv 5x5 (16), ReLU, max-pool 2; Dense 400-120-84-10 with ReLU between; softmax
  cross-entropy, SGD. Weights in torch's layouts (conv (out, in, kh, kw), Dense (out, in)).
- "lstm": one torch-layout LSTM layer (gates i, f, g, o; zero initial state) over `steps`
  time steps of (batch, input) inputs, a Dense layer on the last hidden state, softmax
  cross-entropy, SGD: forward, backprop through time, update.
- "adam": the Adam update alone (torch defaults, lr 1e-3, step 1 onward) over `tensors`
  parameters of `size` / `tensors` floats each, with fixed given gradients. The fingerprint
  is sum(p * g) over all parameters after the step (systems.adam_fingerprint).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

# The chain of 20 elementwise ops of the `elementwise` workload, as (name, constant).
# Every system must apply exactly these, in order.
ELEMENTWISE_CHAIN = [
    ("mul", 1.01), ("add", 0.1), ("tanh", None), ("mul", 2.0), ("sigmoid", None),
    ("add", -0.3), ("mul", 1.5), ("tanh", None), ("add", 0.2), ("mul", 0.9),
    ("sigmoid", None), ("mul", 3.0), ("add", -1.0), ("tanh", None), ("mul", 1.1),
    ("add", 0.05), ("sigmoid", None), ("mul", 2.5), ("add", -0.7), ("tanh", None),
]


def apply_chain(x, tanh, sigmoid):
    """ELEMENTWISE_CHAIN applied to x with a framework's tanh and sigmoid (mul and add are
    the operators)."""
    unary = {"tanh": tanh, "sigmoid": sigmoid}
    for op, c in ELEMENTWISE_CHAIN:
        x = x * c if op == "mul" else x + c if op == "add" else unary[op](x)
    return x


@dataclass(frozen=True)
class Workload:
    """One benchmark row: a training step (or forward+gradient) of fixed sizes."""

    name: str
    kind: str  # "mlp" | "elementwise" | "softmax_xent"
    batch: int = 0
    layers: tuple = ()  # mlp: (in, hidden..., classes)
    activation: str = "relu"  # mlp: "relu" | "tanh"
    lr: float = 0.01
    size: int = 0  # elementwise, adam: number of floats
    tensors: int = 0  # adam: how many parameters the floats are split into
    steps: int = 0  # lstm: sequence length
    hidden: int = 0  # lstm: hidden size (layers[0] is the input size, layers[-1] classes)
    classes: int = 0  # softmax_xent: row length
    devices: tuple = ("cpu", "gpu")
    extra: dict = field(default_factory=dict)

    @property
    def description(self) -> str:
        """What one step is, with the sizes actually used."""
        if self.kind == "mlp":
            depth = len(self.layers) - 2
            shape = "-".join(map(str, self.layers)) if depth <= 4 else \
                f"{self.layers[0]}-({self.layers[1]} x {depth})-{self.layers[-1]}"
            return f"{shape} {self.activation} MLP, batch {self.batch}, SGD step"
        if self.kind == "elementwise":
            return (f"{len(ELEMENTWISE_CHAIN)} elementwise ops over {self.size / 2**20:g}M "
                    "floats, forward + input gradient")
        if self.kind == "lenet":
            return f"LeNet-5 on 28 x 28 images, batch {self.batch}, SGD step"
        if self.kind == "lstm":
            return (f"LSTM {self.layers[0]}->{self.hidden} over {self.steps} steps, batch "
                    f"{self.batch}, BPTT + SGD step")
        if self.kind == "adam":
            return (f"Adam update of {self.size / 1e6:g}M parameters in {self.tensors} "
                    "tensors")
        return f"softmax cross-entropy loss + gradient, {self.batch} x {self.classes} logits"

    # --- floors --------------------------------------------------------------------------
    def flops(self) -> float:
        """Matmul FLOPs one step must do (no gradient for the input data)."""
        if self.kind == "lstm":
            n_in, h, t, b = self.layers[0], self.hidden, self.steps, self.batch
            # input and recurrent projections: forward, weight gradient, input gradient
            # (none for the data); the output layer likewise
            return 2.0 * t * b * 4 * h * (2 * n_in + 3 * h) + 2.0 * b * h * self.layers[-1] * 3
        if self.kind != "mlp":
            return 0.0
        total = 0.0
        for i, (n_in, n_out) in enumerate(zip(self.layers[:-1], self.layers[1:])):
            mm = 2.0 * self.batch * n_in * n_out
            total += mm * (2 if i == 0 else 3)  # forward, weight gradient, input gradient
        return total

    def bytes_moved(self) -> float:
        """Fewest bytes a step must move through memory (each input read, output written)."""
        if self.kind == "elementwise":
            return 2.0 * 4 * self.size
        if self.kind == "softmax_xent":
            return 2.0 * 4 * self.batch * self.classes + 4 * self.batch
        if self.kind == "adam":  # read p, g, m, v; write p, m, v
            return 7.0 * 4 * self.size
        return 0.0

    def samples(self) -> int:
        return self.batch if self.kind not in ("elementwise", "adam") else 1

    def with_batch(self, batch: int) -> "Workload":
        return replace(self, name=f"{self.name}@b{batch}", batch=batch)

    def with_depth(self, depth: int) -> "Workload":
        width = self.layers[1]
        layers = (self.layers[0],) + (width,) * depth + (self.layers[-1],)
        return replace(self, name=f"{self.name}@d{depth}", layers=layers)


def make_data(w: Workload, seed: int = 0) -> dict:
    """Initial weights and inputs, identical for every system (float32 NumPy arrays)."""
    rng = np.random.default_rng(seed)
    if w.kind == "mlp":
        params = []
        for n_in, n_out in zip(w.layers[:-1], w.layers[1:]):
            bound = math.sqrt(6.0 / (n_in + n_out))
            params.append(rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32))
            params.append(np.zeros(n_out, np.float32))
        return {"params": params,
                "x": rng.normal(size=(w.batch, w.layers[0])).astype(np.float32),
                "labels": rng.integers(0, w.layers[-1], size=w.batch).astype(np.int32)}
    if w.kind == "elementwise":
        return {"params": [], "x": rng.normal(size=w.size).astype(np.float32)}
    if w.kind == "softmax_xent":
        return {"params": [],
                "x": rng.normal(size=(w.batch, w.classes)).astype(np.float32),
                "labels": rng.integers(0, w.classes, size=w.batch).astype(np.int32)}
    if w.kind == "lenet":
        shapes = [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,), (120, 400), (120,), (84, 120),
                  (84,), (10, 84), (10,)]
        return {"params": [_uniform(rng, s, shapes[i - 1] if len(s) == 1 else s)
                           for i, s in enumerate(shapes)],
                "x": rng.normal(size=(w.batch, 1, 28, 28)).astype(np.float32),
                "labels": rng.integers(0, 10, size=w.batch).astype(np.int32)}
    if w.kind == "lstm":
        n_in, h, classes = w.layers[0], w.hidden, w.layers[-1]
        shapes = [(4 * h, n_in), (4 * h, h), (4 * h,), (4 * h,), (classes, h), (classes,)]
        return {"params": [_uniform(rng, s, (1, h)) for s in shapes],
                "x": rng.normal(size=(w.steps, w.batch, n_in)).astype(np.float32),
                "labels": rng.integers(0, classes, size=w.batch).astype(np.int32)}
    if w.kind == "adam":
        n = w.size // w.tensors
        return {"params": [rng.normal(size=n).astype(np.float32) for _ in range(w.tensors)],
                "grads": [rng.normal(size=n).astype(np.float32) for _ in range(w.tensors)]}
    raise ValueError(f"unknown workload kind {w.kind!r}")


def _uniform(rng, shape, fan_shape) -> np.ndarray:
    """torch's default layer initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    fan_in = int(np.prod(fan_shape[1:]))
    bound = 1.0 / math.sqrt(fan_in)
    return rng.uniform(-bound, bound, shape).astype(np.float32)


WORKLOADS: dict[str, Workload] = {}


def register(w: Workload) -> Workload:
    """Add a workload to the suite (later issues add lenet, lstm and optimizer rows)."""
    WORKLOADS[w.name] = w
    return w


register(Workload("mlp-s", "mlp", batch=128, layers=(784, 256, 256, 10)))
register(Workload("mlp-m", "mlp", batch=1024, layers=(784, 1024, 1024, 10)))
register(Workload("mlp-l", "mlp", batch=4096, layers=(4096, 4096, 4096, 4096, 10),
                  devices=("gpu",)))
register(Workload("deep-narrow", "mlp", batch=64, layers=(256,) * 33 + (10,),
                  activation="tanh"))
register(Workload("elementwise", "elementwise", size=16 * 2**20))
register(Workload("softmax-xent", "softmax_xent", batch=8192, classes=32000))
register(Workload("lenet", "lenet", batch=256, lr=0.05))
register(Workload("lstm", "lstm", batch=64, layers=(128, 10), steps=64, hidden=512, lr=0.1))
register(Workload("adam", "adam", size=100_000_000, tensors=100))

# Small variants for --quick (a 2-core CPU finishes the whole quick suite in < 2 minutes).
QUICK: dict[str, Workload] = {
    "mlp-s": WORKLOADS["mlp-s"],
    "mlp-m": replace(WORKLOADS["mlp-m"], batch=128),
    "mlp-l": replace(WORKLOADS["mlp-l"], batch=256, layers=(1024, 1024, 1024, 1024, 10)),
    "deep-narrow": replace(WORKLOADS["deep-narrow"], layers=(256,) * 9 + (10,)),
    "elementwise": replace(WORKLOADS["elementwise"], size=2**20),
    "softmax-xent": replace(WORKLOADS["softmax-xent"], batch=512, classes=8000),
    "lenet": replace(WORKLOADS["lenet"], batch=32),
    "lstm": replace(WORKLOADS["lstm"], batch=8, steps=8, hidden=64),
    "adam": replace(WORKLOADS["adam"], size=1_000_000, tensors=10),
}
