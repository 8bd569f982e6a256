"""Hand-written NumPy: the obvious training step, and the same maths written by an expert.

Both compute exactly the workload's step in float32 and agree to the last bit on the CPU:
"numpy-naive" allocates every temporary afresh; "numpy-expert" preallocates every buffer
once in build() and runs step() through `out=` arguments, in-place updates and transposed
views handed to BLAS, and never computes the first layer's input gradient.

The step functions take the array module `xp` as a parameter and use only what NumPy and
CuPy share, so cupy_sys runs this very code on the GPU ("cupy" is the naive step,
"cupy-graph" the expert step captured into a CUDA graph).
"""
from __future__ import annotations

import numpy as np

from ..workloads import ELEMENTWISE_CHAIN
from . import Runner, System, Unavailable, adam_fingerprint, gradient_fingerprint

KINDS = ("mlp", "elementwise", "softmax_xent", "adam")


def _check_workload(workload) -> None:
    if workload.kind not in KINDS:
        raise Unavailable(f"does not implement {workload.kind}")
    if workload.kind == "mlp" and workload.activation not in ("relu", "tanh"):
        raise Unavailable(f"does not implement activation {workload.activation!r}")


# --- naive: the obvious code, temporaries allocated freely ----------------------------------
def naive_xent(xp, logits, labels):
    """Mean softmax cross-entropy and its gradient (softmax - onehot) / N."""
    n = logits.shape[0]
    m = logits.max(axis=1, keepdims=True)
    shifted = logits - m
    e = xp.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = xp.arange(n)
    loss = xp.mean(xp.log(s[:, 0]) - shifted[rows, labels])
    grad = e / s
    grad[rows, labels] -= 1.0
    grad /= float(n)
    return loss, grad


def naive_mlp_step(xp, params, x, labels, activation, lr):
    """One SGD step in place on `params` ([W0, b0, W1, b1, ...]); returns the loss before it."""
    n_layers = len(params) // 2
    hs = [x]  # the input of every layer
    h = x
    for i in range(n_layers):
        z = h @ params[2 * i] + params[2 * i + 1]
        if i < n_layers - 1:
            h = xp.maximum(z, 0) if activation == "relu" else xp.tanh(z)
            hs.append(h)
        else:
            h = z
    loss, dz = naive_xent(xp, h, labels)
    grads = [None] * len(params)
    for i in reversed(range(n_layers)):
        grads[2 * i] = hs[i].T @ dz
        grads[2 * i + 1] = dz.sum(axis=0)
        if i > 0:  # no gradient for the input data
            dh = dz @ params[2 * i].T
            if activation == "relu":
                dz = dh * (hs[i] > 0)
            else:
                dz = dh * (1 - hs[i] * hs[i])
    for p, g in zip(params, grads):
        p -= lr * g
    return loss


def naive_elementwise(xp, x):
    """loss = sum(chain(x)) and d loss / d x, keeping the forward values the backward needs."""
    saved = []  # the outputs of tanh and sigmoid; None for the linear ops
    y = x
    for op, c in ELEMENTWISE_CHAIN:
        if op == "mul":
            y = y * c
        elif op == "add":
            y = y + c
        elif op == "tanh":
            y = xp.tanh(y)
        elif op == "sigmoid":
            y = 1.0 / (1.0 + xp.exp(-y))
        else:
            raise ValueError(op)
        saved.append(y if op in ("tanh", "sigmoid") else None)
    loss = y.sum()
    g = xp.ones_like(x)
    for (op, c), y in zip(reversed(ELEMENTWISE_CHAIN), reversed(saved)):
        if op == "mul":
            g = g * c
        elif op == "tanh":
            g = g * (1 - y * y)
        elif op == "sigmoid":
            g = g * (y * (1 - y))
    return loss, g


ADAM = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8)  # torch.optim.Adam's defaults


class AdamState:
    """Parameters, fixed gradients and moments of the `adam` workload on module `xp`."""

    def __init__(self, xp, data):
        self.p = [xp.array(a, dtype=np.float32) for a in data["params"]]
        self.g = [xp.array(a, dtype=np.float32) for a in data["grads"]]
        self.m = [xp.zeros_like(a) for a in self.p]
        self.v = [xp.zeros_like(a) for a in self.p]
        self.t = 0
        self.grads = data["grads"]
        self.to_host = getattr(xp, "asnumpy", np.asarray)  # CuPy arrays come back to the host

    def factors(self):
        self.t += 1
        c1 = 1 - ADAM["b1"] ** self.t
        return ADAM["lr"] / c1, np.sqrt(1 - ADAM["b2"] ** self.t)

    def fingerprint(self):
        return adam_fingerprint([self.to_host(p) for p in self.p], self.grads)


def naive_adam(xp, s: AdamState) -> None:
    step, c2 = s.factors()
    b1, b2, eps = ADAM["b1"], ADAM["b2"], ADAM["eps"]
    for i, g in enumerate(s.g):
        s.m[i] = b1 * s.m[i] + (1 - b1) * g
        s.v[i] = b2 * s.v[i] + (1 - b2) * g * g
        s.p[i] = s.p[i] - step * s.m[i] / (xp.sqrt(s.v[i]) / c2 + eps)


class NaiveRunner(Runner):
    """The obvious step on arrays of module `xp` (NumPy here, CuPy in cupy_sys)."""

    xp = np

    def __init__(self, workload, data):
        _check_workload(workload)
        xp = self.xp
        self.kind = workload.kind
        self.activation, self.lr = workload.activation, workload.lr
        self.adam = AdamState(xp, data) if self.kind == "adam" else None  # owns its params
        self.params = [] if self.adam else [xp.array(p, dtype=np.float32)
                                            for p in data["params"]]
        self.x = xp.array(data["x"], dtype=np.float32) if "x" in data else None
        self.labels = xp.array(data["labels"]) if "labels" in data else None
        self.loss = self.grad = None

    def step(self):
        xp = self.xp
        if self.kind == "adam":
            naive_adam(xp, self.adam)
        elif self.kind == "mlp":
            self.loss = naive_mlp_step(xp, self.params, self.x, self.labels,
                                       self.activation, self.lr)
        elif self.kind == "elementwise":
            self.loss, self.grad = naive_elementwise(xp, self.x)
        else:
            self.loss, self.grad = naive_xent(xp, self.x, self.labels)

    def fingerprint(self):
        if self.kind == "adam":
            return self.adam.fingerprint()
        if self.kind == "mlp":
            return np.array([float(self.loss)])
        return gradient_fingerprint(self.loss, self.grad)


# --- expert: every buffer preallocated, out= everywhere, nothing allocated per step ---------
class XentBuffers:
    """Buffers for softmax cross-entropy over (n, c) logits: the loss and its gradient."""

    def __init__(self, xp, n, c, labels, grad=None):
        self.n = n
        self.m = xp.empty((n, 1), np.float32)  # row max
        self.s = xp.empty((n, 1), np.float32)  # row sum of exp
        self.s_flat = self.s.reshape(n)
        self.lse = xp.empty(n, np.float32)
        self.picked = xp.empty(n, np.float32)
        self.loss = xp.empty((), np.float32)
        # the flat index of each row's label in the (n, c) gradient
        self.idx = xp.arange(n, dtype=np.int64) * c + xp.asarray(labels).astype(np.int64)
        self.grad = xp.empty((n, c), np.float32) if grad is None else grad
        self.grad_flat = self.grad.reshape(n * c)  # a view: grad is C-contiguous


def expert_xent(xp, logits, b: XentBuffers) -> None:
    """Loss into b.loss, gradient into b.grad; `logits` may be b.grad itself (in place)."""
    g, gf = b.grad, b.grad_flat
    xp.max(logits, axis=1, keepdims=True, out=b.m)
    xp.subtract(logits, b.m, out=g)  # shifted logits
    xp.take(gf, b.idx, out=b.picked)  # shifted logit of each row's label
    xp.exp(g, out=g)
    xp.sum(g, axis=1, keepdims=True, out=b.s)
    xp.log(b.s_flat, out=b.lse)
    xp.subtract(b.lse, b.picked, out=b.lse)
    xp.mean(b.lse, out=b.loss)
    xp.divide(g, b.s, out=g)  # softmax
    xp.take(gf, b.idx, out=b.picked)
    xp.subtract(b.picked, 1.0, out=b.picked)
    xp.put(gf, b.idx, b.picked, mode="wrap")  # softmax - onehot (indices are in range)
    xp.divide(g, float(b.n), out=g)


class ExpertMLP:
    """Forward, backward and SGD update, in place on buffers made once."""

    def __init__(self, xp, workload, data):
        self.xp, self.lr, self.relu = xp, workload.lr, workload.activation == "relu"
        values = data["params"]
        self.W = [xp.array(values[i], dtype=np.float32) for i in range(0, len(values), 2)]
        self.b = [xp.array(values[i], dtype=np.float32) for i in range(1, len(values), 2)]
        self.x = xp.array(data["x"], dtype=np.float32)
        n = self.x.shape[0]
        # z[i]: layer i's pre-activation, then (in place) its activation; the last is the
        # logits, which the loss turns (in place) into their gradient.
        self.z = [xp.empty((n, w.shape[1]), np.float32) for w in self.W]
        self.dh = [xp.empty_like(z) for z in self.z[:-1]]  # gradient of each hidden output
        # relu: mask of the active units; tanh: 1 - h^2
        self.scratch = [xp.empty(z.shape, bool if self.relu else np.float32)
                        for z in self.z[:-1]]
        # max(z, 0) against a zero array of z's shape: NumPy's maximum with a scalar takes
        # a slow unvectorized path (4x slower at 1024 x 1024); the results are identical.
        zeros = {z.shape: xp.zeros(z.shape, np.float32) for z in self.z[:-1]} if self.relu else {}
        self.zeros = [zeros.get(z.shape) for z in self.z[:-1]]
        self.dW = [xp.empty_like(w) for w in self.W]
        self.db = [xp.empty_like(b) for b in self.b]
        self.xent = XentBuffers(xp, n, self.W[-1].shape[1], data["labels"], grad=self.z[-1])
        self.loss = self.xent.loss

    def step(self):
        xp, W, b, z = self.xp, self.W, self.b, self.z
        last = len(W) - 1
        h = self.x
        for i in range(last + 1):
            xp.matmul(h, W[i], out=z[i])
            xp.add(z[i], b[i], out=z[i])
            if i < last:
                if self.relu:
                    xp.maximum(z[i], self.zeros[i], out=z[i])
                else:
                    xp.tanh(z[i], out=z[i])
            h = z[i]
        expert_xent(xp, z[last], self.xent)
        dz = z[last]
        for i in range(last, -1, -1):
            h_in = self.x if i == 0 else z[i - 1]
            xp.matmul(h_in.T, dz, out=self.dW[i])  # a transposed view: BLAS reads it as is
            xp.sum(dz, axis=0, out=self.db[i])
            if i > 0:  # the input data gets no gradient
                dh, t = self.dh[i - 1], self.scratch[i - 1]
                xp.matmul(dz, W[i].T, out=dh)  # before W[i] is updated
                if self.relu:
                    xp.greater(h_in, 0, out=t)
                else:
                    xp.multiply(h_in, h_in, out=t)
                    xp.subtract(1, t, out=t)
                xp.multiply(dh, t, out=dh)
                dz = dh
            xp.multiply(self.dW[i], self.lr, out=self.dW[i])
            xp.subtract(W[i], self.dW[i], out=W[i])
            xp.multiply(self.db[i], self.lr, out=self.db[i])
            xp.subtract(b[i], self.db[i], out=b[i])


class ExpertElementwise:
    """The chain forward, keeping only the tanh/sigmoid outputs, then the chain rule."""

    def __init__(self, xp, workload, data):
        self.xp = xp
        self.x = xp.array(data["x"], dtype=np.float32)
        self.work = xp.empty_like(self.x)
        self.saved = {k: xp.empty_like(self.x) for k, (op, _) in enumerate(ELEMENTWISE_CHAIN)
                      if op in ("tanh", "sigmoid")}
        self.grad = xp.empty_like(self.x)
        self.tmp = xp.empty_like(self.x)
        self.loss = xp.empty((), np.float32)

    def step(self):
        xp, w = self.xp, self.work
        cur = self.x
        for k, (op, c) in enumerate(ELEMENTWISE_CHAIN):
            if op == "mul":
                xp.multiply(cur, c, out=w)
                cur = w
            elif op == "add":
                xp.add(cur, c, out=w)
                cur = w
            else:
                y = self.saved[k]
                if op == "tanh":
                    xp.tanh(cur, out=y)
                else:  # sigmoid: 1 / (1 + exp(-x))
                    xp.negative(cur, out=y)
                    xp.exp(y, out=y)
                    xp.add(y, 1.0, out=y)
                    xp.divide(1.0, y, out=y)
                cur = y
        xp.sum(cur, out=self.loss)
        g = self.grad
        first = True  # g is still the implicit ones: the first factor is written, not multiplied
        for k in range(len(ELEMENTWISE_CHAIN) - 1, -1, -1):
            op, c = ELEMENTWISE_CHAIN[k]
            if op == "add":
                if first:
                    g.fill(1.0)
                    first = False
                continue
            if op == "mul":
                if first:
                    g.fill(c)
                else:
                    xp.multiply(g, c, out=g)
            else:
                y, t = self.saved[k], (g if first else self.tmp)
                if op == "tanh":  # 1 - y^2
                    xp.multiply(y, y, out=t)
                    xp.subtract(1, t, out=t)
                else:  # sigmoid: y (1 - y)
                    xp.subtract(1, y, out=t)
                    xp.multiply(t, y, out=t)
                if not first:
                    xp.multiply(g, t, out=g)
            first = False
        if first:
            g.fill(1.0)


class ExpertXent:
    """Loss and gradient of the given logits (left untouched) into preallocated buffers."""

    def __init__(self, xp, workload, data):
        self.xp = xp
        self.x = xp.array(data["x"], dtype=np.float32)
        self.buffers = XentBuffers(xp, self.x.shape[0], self.x.shape[1], data["labels"])
        self.loss, self.grad = self.buffers.loss, self.buffers.grad

    def step(self):
        expert_xent(self.xp, self.x, self.buffers)


class ExpertAdam:
    """Adam in place, through one scratch buffer per parameter."""

    def __init__(self, xp, workload, data):
        self.xp, self.s = xp, AdamState(xp, data)
        self.scratch = [xp.empty_like(p) for p in self.s.p]

    def step(self):
        xp, s = self.xp, self.s
        step, c2 = s.factors()
        b1, b2, eps = ADAM["b1"], ADAM["b2"], ADAM["eps"]
        for p, g, m, v, t in zip(s.p, s.g, s.m, s.v, self.scratch):
            m *= b1
            xp.multiply(g, 1 - b1, out=t)
            m += t
            v *= b2
            xp.multiply(g, g, out=t)
            t *= 1 - b2
            v += t
            xp.sqrt(v, out=t)
            t *= 1 / c2
            t += eps
            xp.divide(m, t, out=t)
            t *= step
            p -= t


EXPERT = {"mlp": ExpertMLP, "elementwise": ExpertElementwise, "softmax_xent": ExpertXent,
          "adam": ExpertAdam}


class ExpertRunner(Runner):
    """The expert step on arrays of module `xp`: step() allocates nothing."""

    xp = np

    def __init__(self, workload, data):
        _check_workload(workload)
        self.kind = workload.kind
        self.impl = EXPERT[workload.kind](self.xp, workload, data)
        self.step = self.impl.step

    def step(self):  # replaced per instance by the implementation's step
        self.impl.step()

    def fingerprint(self):
        if self.kind == "adam":
            return self.impl.s.fingerprint()
        if self.kind == "mlp":
            return np.array([float(self.impl.loss)])
        return gradient_fingerprint(float(self.impl.loss), self.impl.grad)


class NumpyNaive(System):
    name = "numpy-naive"
    device = "cpu"
    runner = NaiveRunner

    def supports(self, workload):
        return workload.kind in KINDS

    def build(self, workload, data):
        return self.runner(workload, data)


class NumpyExpert(NumpyNaive):
    name = "numpy-expert"
    runner = ExpertRunner


class MatmulFloorRunner(Runner):
    """The step's matrix multiplications alone, into preallocated outputs: forward, weight
    gradients and input gradients (none for the data), shapes and transposes as the step's.
    No implementation of the step can beat it on the CPU, where the matmuls dominate."""

    def __init__(self, workload, data):
        impl = ExpertMLP(np, workload, data)
        calls = []
        h = impl.x
        for w, z in zip(impl.W, impl.z):
            calls.append((h, w, z))
            h = z
        for i in range(len(impl.W) - 1, -1, -1):
            h_in = impl.x if i == 0 else impl.z[i - 1]
            calls.append((h_in.T, impl.z[i], impl.dW[i]))
            if i > 0:
                calls.append((impl.z[i], impl.W[i].T, impl.dh[i - 1]))
        self.calls = calls

    def step(self):
        for a, b, out in self.calls:
            np.matmul(a, b, out=out)

    def fingerprint(self):
        return np.array([np.nan])


class LstmMatmulFloorRunner(MatmulFloorRunner):
    """The LSTM step's matrix multiplications alone, each in the operand layout this BLAS
    runs fastest (contiguous operands, the recurrent forward product as W_hh @ h^T): the
    input projection of every step at once, the recurrent product of steps 1..T-1 (the
    zero initial state needs none), the state gradients of steps T-1..1, both weight
    gradients as one product over the stacked steps, and the output layer's three."""

    def __init__(self, workload, data):
        rng = np.random.default_rng(1)
        t, b, n_in, h = workload.steps, workload.batch, workload.layers[0], workload.hidden
        classes, g = workload.layers[-1], 4 * workload.hidden

        def arr(*shape):
            return rng.standard_normal(shape).astype(np.float32)

        w_ih, w_hh, w_out = data["params"][0], data["params"][1], data["params"][4]
        x = data["x"].reshape(t * b, n_in)
        w_ih_t = np.ascontiguousarray(w_ih.T)
        hs_t, gates = arr(t, h, b), arr(t, b, g)  # h_t^T per step; dG_t per step
        hs = arr(t * b, h)
        dgates = gates.reshape(t * b, g)
        calls = [(x, w_ih_t, np.empty((t * b, g), np.float32))]
        calls += [(w_hh, hs_t[i], np.empty((g, b), np.float32)) for i in range(t - 1)]
        calls += [(hs[-b:], np.ascontiguousarray(w_out.T), np.empty((b, classes), np.float32))]
        grad_out = arr(b, classes)
        calls += [(grad_out.T, hs[-b:], np.empty((classes, h), np.float32)),
                  (grad_out, w_out, np.empty((b, h), np.float32))]
        calls += [(gates[i], w_hh, np.empty((b, h), np.float32)) for i in range(t - 1, 0, -1)]
        calls += [(dgates[b:].T, hs[:-b], np.empty((g, h), np.float32)),
                  (dgates.T, x, np.empty((g, n_in), np.float32))]
        self.calls = calls


class NumpyMatmulFloor(NumpyNaive):
    name = "blas-floor"
    runner = MatmulFloorRunner
    floor = True

    def supports(self, workload):
        return workload.kind in ("mlp", "lstm")

    def build(self, workload, data):
        if workload.kind == "lstm":
            return LstmMatmulFloorRunner(workload, data)
        return self.runner(workload, data)


SYSTEMS = [NumpyNaive, NumpyExpert, NumpyMatmulFloor]
