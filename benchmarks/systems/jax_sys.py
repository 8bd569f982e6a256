"""JAX: the workload's step under jax.jit, on the CPU and on the GPU.

Every matmul runs with precision=HIGHEST (true float32, no TF32 or bf16 passes). jax is
imported lazily (in `check()`/`build()`), so importing this module never fails.
"""
from __future__ import annotations

import os

# Keep JAX from grabbing 75% of GPU memory up front when this module is used on a GPU;
# must be set before jax is first imported.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

from ..workloads import apply_chain  # noqa: E402
from . import (TRAINING_KINDS, Runner, System, Unavailable, adam_fingerprint,  # noqa: E402
               gradient_fingerprint)


def _import_jax():
    try:
        import jax
    except Exception as exc:  # ImportError, or a broken install
        raise Unavailable(f"jax not importable: {exc}") from None
    return jax


def _step_function(workload):
    """The workload's step as a pure function, not yet jitted."""
    import jax
    import jax.numpy as jnp

    highest = jax.lax.Precision.HIGHEST

    def xent(logits, labels):
        logp = jax.nn.log_softmax(logits, axis=-1)
        picked = jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=1)
        return -jnp.mean(picked)

    if workload.kind == "mlp":
        act = {"relu": jax.nn.relu, "tanh": jnp.tanh}[workload.activation]
        lr = workload.lr

        def loss_fn(params, x, labels):
            h = x
            n_layers = len(params) // 2
            for i in range(n_layers):
                h = jnp.matmul(h, params[2 * i], precision=highest) + params[2 * i + 1]
                if i < n_layers - 1:
                    h = act(h)
            return xent(h, labels)

        def train_step(params, x, labels):
            loss, grads = jax.value_and_grad(loss_fn)(params, x, labels)
            new_params = [p - lr * g for p, g in zip(params, grads)]
            return new_params, loss

        return train_step

    if workload.kind in ("lenet", "lstm"):
        forward = _lenet_logits if workload.kind == "lenet" else _lstm_logits
        lr = workload.lr

        def train_step(params, x, labels):
            loss, grads = jax.value_and_grad(
                lambda p: xent(forward(p, x, highest), labels))(params)
            return [p - lr * g for p, g in zip(params, grads)], loss

        return train_step

    if workload.kind == "adam":
        return _adam_step

    if workload.kind == "elementwise":
        def chain_loss(x):
            y = apply_chain(x, jnp.tanh, jax.nn.sigmoid)
            return jnp.sum(y)

        return jax.value_and_grad(chain_loss)

    if workload.kind == "softmax_xent":
        return jax.value_and_grad(xent)  # w.r.t. the logits (argument 0)

    raise ValueError(f"unknown workload kind {workload.kind!r}")


def _lenet_logits(p, x, precision):
    import jax
    import jax.numpy as jnp
    lax = jax.lax

    def conv(h, w, b, pad):
        y = lax.conv_general_dilated(h, w, (1, 1), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"),
                                     precision=precision)
        return y + b[None, :, None, None]

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def dense(h, w, b):
        return jnp.matmul(h, w.T, precision=precision) + b

    h = pool(jax.nn.relu(conv(x, p[0], p[1], 2)))
    h = pool(jax.nn.relu(conv(h, p[2], p[3], 0)))
    h = h.reshape(h.shape[0], -1)
    h = jax.nn.relu(dense(h, p[4], p[5]))
    h = jax.nn.relu(dense(h, p[6], p[7]))
    return dense(h, p[8], p[9])


def _lstm_logits(p, x, precision):
    """torch's LSTM (gates i, f, g, o; zero initial state) as a scan, then the output layer."""
    import jax
    import jax.numpy as jnp
    w_ih, w_hh, b_ih, b_hh, w_out, b_out = p
    hidden = w_hh.shape[1]
    proj = jnp.matmul(x, w_ih.T, precision=precision) + b_ih

    def cell(carry, z_in):
        h, c = carry
        z = z_in + jnp.matmul(h, w_hh.T, precision=precision) + b_hh
        i, f, g, o = (z[:, k * hidden:(k + 1) * hidden] for k in range(4))
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), None

    zeros = jnp.zeros((x.shape[1], hidden), x.dtype)
    (h, _), _ = jax.lax.scan(cell, (zeros, zeros), proj)
    return jnp.matmul(h, w_out.T, precision=precision) + b_out


def _adam_step(state, grads):
    """torch.optim.Adam's update (defaults, lr 1e-3) over a list of parameters."""
    import jax.numpy as jnp
    params, ms, vs, t = state
    lr, b1, b2, eps = 1e-3, 0.9, 0.999, 1e-8
    t = t + 1
    c1, c2 = 1 - b1 ** t, jnp.sqrt(1 - b2 ** t)
    out_p, out_m, out_v = [], [], []
    for p, m, v, g in zip(params, ms, vs, grads):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        out_p.append(p - (lr / c1) * m / (jnp.sqrt(v) / c2 + eps))
        out_m.append(m)
        out_v.append(v)
    return out_p, out_m, out_v, t


class JaxRunner(Runner):
    def __init__(self, workload, data, device):
        import jax

        self.jax = jax
        self.kind = workload.kind
        self.device = device
        self.gpu = device.platform != "cpu"
        put = lambda a: jax.device_put(np.asarray(a), device)  # noqa: E731

        # Precision is explicit on every matmul: no default_matmul_precision context here,
        # as that setting is part of jit's cache key and a step outside it would retrace.
        fn = _step_function(workload)
        self.grads = data.get("grads")
        if self.kind == "adam":
            self.fn = jax.jit(fn, donate_argnums=(0,))
            zeros = [np.zeros_like(a) for a in data["params"]]
            self.params = ([put(a) for a in data["params"]], [put(z) for z in zeros],
                           [put(z) for z in zeros], jax.numpy.float32(0))
            self.args = ([put(g) for g in self.grads],)
            copy = tuple([put(np.asarray(a)) for a in part] for part in self.params[:3])
            loss = self.fn((*copy, jax.numpy.float32(0)), *self.args)  # compile on copies
        elif self.kind in TRAINING_KINDS:
            self.fn = jax.jit(fn, donate_argnums=(0,))
            self.params = [put(a) for a in data["params"]]
            self.args = (put(data["x"]), put(data["labels"]))
            # Compile now, on copies: the real parameters are donated by the first step.
            _, loss = self.fn([put(a) for a in data["params"]], *self.args)
        else:
            self.fn = jax.jit(fn)
            self.params = None
            self.args = (put(data["x"]),)
            if self.kind == "softmax_xent":
                self.args += (put(data["labels"]),)
            loss = self.fn(*self.args)
        jax.block_until_ready(loss)
        self.out = None

    def step(self):
        if self.kind == "adam":
            self.params = self.fn(self.params, *self.args)
            self.out = self.params[0]
        elif self.params is not None:
            self.params, loss = self.fn(self.params, *self.args)
            self.out = loss
        else:
            self.out = self.fn(*self.args)

    def sync(self):
        if self.out is not None:
            self.jax.block_until_ready(self.out)
        if self.params is not None:
            self.jax.block_until_ready(self.params)

    def fingerprint(self):
        if self.out is None:
            raise RuntimeError("fingerprint() before any step()")
        self.sync()
        if self.kind == "adam":
            return adam_fingerprint([np.asarray(p) for p in self.params[0]], self.grads)
        if self.kind in TRAINING_KINDS:
            return np.array([float(np.asarray(self.out))])
        loss, grad = self.out
        return gradient_fingerprint(np.asarray(loss), np.asarray(grad))

    def device_bytes(self):
        if not self.gpu:
            return None
        try:
            stats = self.device.memory_stats()
        except Exception:
            return None
        if not stats or "peak_bytes_in_use" not in stats:
            return None
        return int(stats["peak_bytes_in_use"])


class _Jax(System):
    platform = "cpu"

    def _device(self):
        jax = _import_jax()
        try:
            devices = jax.devices(self.platform)
        except Exception as exc:
            raise Unavailable(f"no JAX {self.platform} device: {exc}") from None
        if not devices:
            raise Unavailable(f"no JAX {self.platform} device")
        return devices[0]

    def check(self):
        self._device()

    def build(self, workload, data):
        return JaxRunner(workload, data, self._device())


class JaxJitCPU(_Jax):
    name, device, platform = "jax-jit", "cpu", "cpu"


class JaxJitGPU(_Jax):
    name, device, platform = "jax-jit", "gpu", "gpu"


SYSTEMS = [JaxJitCPU, JaxJitGPU]
