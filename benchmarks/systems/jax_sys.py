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
from . import Runner, System, Unavailable, gradient_fingerprint  # noqa: E402


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

    if workload.kind == "elementwise":
        def chain_loss(x):
            y = apply_chain(x, jnp.tanh, jax.nn.sigmoid)
            return jnp.sum(y)

        return jax.value_and_grad(chain_loss)

    if workload.kind == "softmax_xent":
        return jax.value_and_grad(xent)  # w.r.t. the logits (argument 0)

    raise ValueError(f"unknown workload kind {workload.kind!r}")


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
        if self.kind == "mlp":
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
        if self.params is not None:
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
        if self.kind == "mlp":
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
