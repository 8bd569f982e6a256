"""PyTorch on the CPU and on CUDA: eager, torch.compile (default and reduce-overhead), and
(CUDA only) the whole eager step captured in one CUDA graph.

Every runner computes the workload's step from `make_data` in float32 (TF32 off on CUDA).
torch is imported lazily (in `check()`/`build()`), so importing this module never fails.

Per kind: mlp and lenet are functional (F.linear, F.conv2d, F.max_pool2d) over the data's
parameters; lstm runs torch.nn.LSTM (cuDNN on CUDA) holding the data's weights; the
training kinds update with torch.optim.SGD. adam is torch.optim.Adam alone: fused=True on
both devices in eager and CUDA-graph modes (on the CPU the fused kernel is one vectorized
pass per tensor, while foreach=True falls back there to one full pass per elementary op,
torch having no CPU foreach kernels); under torch.compile the default implementation
traced into generated kernels, as in torch's compiled-optimizer recipe.
"""
from __future__ import annotations

import numpy as np

from ..workloads import apply_chain
from . import (TRAINING_KINDS, Runner, System, Unavailable, adam_fingerprint,
               gradient_fingerprint)

KINDS = TRAINING_KINDS + ("elementwise", "softmax_xent", "adam")


def _import_torch():
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install
        raise Unavailable(f"torch not importable: {exc}") from None
    return torch


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _loss_function(workload, lstm=None):
    """The workload's forward + loss as a plain function of tensors (`lstm`: the
    torch.nn.LSTM holding the first four parameters of the lstm kind)."""
    import torch
    import torch.nn.functional as F

    if workload.kind == "mlp":
        act = {"relu": torch.relu, "tanh": torch.tanh}[workload.activation]

        def mlp_loss(params, x, labels):
            h = x
            n_layers = len(params) // 2
            for i in range(n_layers):
                h = h @ params[2 * i] + params[2 * i + 1]
                if i < n_layers - 1:
                    h = act(h)
            return F.cross_entropy(h, labels)

        return mlp_loss

    if workload.kind == "lenet":
        def lenet_loss(p, x, labels):
            h = F.max_pool2d(F.relu(F.conv2d(x, p[0], p[1], padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, p[2], p[3])), 2)
            h = h.reshape(h.shape[0], -1)
            h = F.relu(F.linear(h, p[4], p[5]))
            h = F.relu(F.linear(h, p[6], p[7]))
            return F.cross_entropy(F.linear(h, p[8], p[9]), labels)

        return lenet_loss

    if workload.kind == "lstm":
        def lstm_loss(p, x, labels):
            _, (h, _) = lstm(x)  # p[:4] are lstm's own weights; h: (1, batch, hidden)
            return F.cross_entropy(F.linear(h[0], p[4], p[5]), labels)

        return lstm_loss

    if workload.kind == "elementwise":
        def chain_loss(x):
            y = apply_chain(x, torch.tanh, torch.sigmoid)
            return y.sum()

        return chain_loss

    if workload.kind == "softmax_xent":
        def xent_loss(logits, labels):
            return F.cross_entropy(logits, labels)

        return xent_loss

    raise ValueError(f"unknown workload kind {workload.kind!r}")


def _lstm_module(torch, workload, weights, dev):
    """torch.nn.LSTM (one layer, gates i, f, g, o) holding the data's four LSTM weights."""
    lstm = torch.nn.LSTM(workload.layers[0], workload.hidden, device=dev)
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    with torch.no_grad():
        for name, value in zip(names, weights):
            # copy_ in place keeps cuDNN's flattened weight buffer intact
            getattr(lstm, name).copy_(torch.tensor(value))
    return lstm, [getattr(lstm, name) for name in names]


def _adam(torch, params, mode):
    """torch.optim.Adam with the workload's hyperparameters (torch's defaults, lr 1e-3)."""
    if mode in ("compile", "compile-ro"):
        return torch.optim.Adam(params, lr=1e-3)  # traced by torch.compile
    # a CUDA graph replays the step count too: it must live on the device (capturable)
    return torch.optim.Adam(params, lr=1e-3, fused=True, capturable=mode == "cudagraph")


class TorchRunner(Runner):
    """One workload's step in torch; `mode` is "eager", "compile", "compile-ro" or "cudagraph"."""

    def __init__(self, workload, data, device, mode):
        import torch

        self.torch = torch
        self.kind = workload.kind
        self.mode = mode
        self.gpu = device == "gpu"
        dev = torch.device("cuda" if self.gpu else "cpu")
        if self.gpu:
            torch.cuda.reset_peak_memory_stats()

        # torch.tensor copies: in-place updates never touch the shared NumPy data.
        def tensor(a):
            return torch.tensor(a, device=dev)

        lstm = None
        self.leaf = None
        self.fixed_grads = None
        if self.kind in TRAINING_KINDS:
            values = data["params"]
            if self.kind == "lstm":
                lstm, self.params = _lstm_module(torch, workload, values[:4], dev)
                values = values[4:]
            else:
                self.params = []
            self.params += [torch.nn.Parameter(tensor(a)) for a in values]
            self.inputs = (tensor(data["x"]), tensor(data["labels"]).long())
            self.optimizer = torch.optim.SGD(self.params, lr=workload.lr)
            self.update = self.optimizer.step
        elif self.kind == "adam":
            self.params = [torch.nn.Parameter(tensor(a)) for a in data["params"]]
            for p, g in zip(self.params, data["grads"]):
                p.grad = tensor(g)  # fixed: the step is the update alone
            self.fixed_grads = data["grads"]
            self.inputs = ()
            self.optimizer = _adam(torch, self.params, mode)
            self.update = self.optimizer.step
        else:
            self.params = []
            self.optimizer = None
            self.leaf = tensor(data["x"]).requires_grad_(True)
            self.inputs = (self.leaf,)
            if self.kind == "softmax_xent":
                self.inputs += (tensor(data["labels"]).long(),)

        compile_mode = {"compile": "default", "compile-ro": "reduce-overhead"}.get(mode)
        if self.kind == "adam":
            self.fn = None
            if compile_mode:
                self.update = torch.compile(self.optimizer.step, mode=compile_mode)
        else:
            fn = _loss_function(workload, lstm)
            self.fn = torch.compile(fn, mode=compile_mode) if compile_mode else fn
        self.module = lstm  # the torch.nn.LSTM of the lstm kind, else None
        self.loss = None
        self.grad = None
        self.graph = None
        self.steps = 0

        if compile_mode:
            self._warm_up(2)
        elif mode == "cudagraph":
            try:
                self._capture()
            except Exception as exc:
                raise Unavailable(f"CUDA graph capture failed: {type(exc).__name__}: "
                                  f"{_first_line(exc)}") from None

    # --- one step, eagerly (or through the compiled forward) -------------------------------
    def _clear_grads(self):
        """Gradients to None before a forward/backward (adam's are fixed and stay)."""
        if self.kind == "adam":
            return
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.leaf.grad = None

    def _loss_and_grads(self):
        """Forward, loss and backward, the gradients accumulating into .grad (clear them
        first); nothing for adam, whose gradients are fixed. No update."""
        if self.kind == "adam":
            return None
        loss = self.fn(self.params, *self.inputs) if self.optimizer is not None \
            else self.fn(*self.inputs)
        loss.backward()
        return loss.detach()

    def _forward_backward(self):
        """Gradients cleared, then forward, loss and backward; the gradients land in .grad."""
        self._clear_grads()
        return self._loss_and_grads()

    def _eager_step(self):
        if self.mode == "compile-ro":
            self.torch.compiler.cudagraph_mark_step_begin()
        loss = self._forward_backward()
        if self.optimizer is not None:
            self.update()
        self.loss = loss
        self.grad = None if self.leaf is None else self.leaf.grad

    def _warm_up(self, n):
        """Compile (and for reduce-overhead, record) now, so a compiler that cannot run here is
        reported as Unavailable. Forward + backward only: the parameters stay untouched; adam,
        whose compiled function is the update, is put back to its initial state after."""
        initial = self._snapshot() if self.kind == "adam" else None
        try:
            for _ in range(n):
                if self.kind == "adam":
                    self._eager_step()
                else:
                    if self.mode == "compile-ro":
                        self.torch.compiler.cudagraph_mark_step_begin()
                    self._forward_backward()
            self.sync()
        except Exception as exc:
            raise Unavailable(f"torch.compile failed here: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None
        finally:
            self._clear_grads()
            if initial is not None:
                self._restore(initial)

    def _snapshot(self):
        return [p.detach().clone() for p in self.params]

    def _restore(self, initial):
        """The parameters back to `initial` and the optimizer's state (moments, step count)
        to zero, in place: a captured graph or compiled step keeps reading these tensors."""
        torch = self.torch
        with torch.no_grad():
            for p, p0 in zip(self.params, initial):
                p.copy_(p0)
            for state in self.optimizer.state.values():
                for value in state.values():
                    if torch.is_tensor(value):
                        value.zero_()

    def _capture(self):
        """The whole eager step (forward, backward, optimizer.step()) in one CUDA graph,
        following torch's whole-network capture recipe: warm up on a side stream, grads set to
        None, capture; then restore the initial weights (and optimizer state) the warm-up
        steps changed."""
        torch = self.torch
        initial = self._snapshot()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)

        self._clear_grads()
        graph = torch.cuda.CUDAGraph()
        # Capture on the warm-up stream, whose cuBLAS handle and workspace already exist.
        with torch.cuda.graph(graph, stream=side):
            static_loss = self._loss_and_grads()
            if self.optimizer is not None:
                self.optimizer.step()
        # Capture runs nothing; the warm-up steps did: put the starting state back in place.
        if self.optimizer is not None:
            self._restore(initial)
        torch.cuda.synchronize()
        self.graph = graph
        self.static_loss = static_loss
        self.static_grad = None if self.leaf is None else self.leaf.grad
        self.loss = None
        self.grad = None

    # --- Runner interface ---------------------------------------------------------------------
    def step(self):
        if self.graph is not None:
            self.graph.replay()
            self.loss, self.grad = self.static_loss, self.static_grad
        else:
            self._eager_step()
        self.steps += 1

    def sync(self):
        if self.gpu:
            self.torch.cuda.synchronize()

    def fingerprint(self):
        self.sync()
        if self.steps == 0:
            raise RuntimeError("fingerprint() before any step()")
        if self.kind == "adam":
            return adam_fingerprint([p.detach().cpu().numpy() for p in self.params],
                                    self.fixed_grads)
        loss = float(self.loss.cpu())
        if self.kind in TRAINING_KINDS:
            return np.array([loss])
        return gradient_fingerprint(loss, self.grad.detach().cpu().numpy())

    def device_bytes(self):
        if self.gpu:
            return int(self.torch.cuda.max_memory_allocated())
        return None


class _Torch(System):
    mode = "eager"

    def check(self):
        torch = _import_torch()
        if self.device == "gpu":
            if not torch.cuda.is_available():
                raise Unavailable("torch.cuda.is_available() is False")
            # Float32 everywhere: no TF32 in cuBLAS matmuls or cuDNN.
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        if self.mode in ("compile", "compile-ro") and not hasattr(torch, "compile"):
            raise Unavailable(f"torch {torch.__version__} has no torch.compile")

    def supports(self, workload):
        return workload.kind in KINDS

    def build(self, workload, data):
        self.check()
        return TorchRunner(workload, data, self.device, self.mode)


class TorchEagerCPU(_Torch):
    name, device, mode = "torch-eager", "cpu", "eager"


class TorchEagerGPU(_Torch):
    name, device, mode = "torch-eager", "gpu", "eager"


class TorchCompileCPU(_Torch):
    name, device, mode = "torch-compile", "cpu", "compile"


class TorchCompileGPU(_Torch):
    name, device, mode = "torch-compile", "gpu", "compile"


class TorchCompileROCPU(_Torch):
    # On the CPU, reduce-overhead has no CUDA graphs to use: inductor skips them.
    name, device, mode = "torch-compile-ro", "cpu", "compile-ro"


class TorchCompileROGPU(_Torch):
    name, device, mode = "torch-compile-ro", "gpu", "compile-ro"


class TorchCudaGraphGPU(_Torch):
    name, device, mode = "torch-cudagraph", "gpu", "cudagraph"


SYSTEMS = [TorchEagerCPU, TorchEagerGPU, TorchCompileCPU, TorchCompileGPU,
           TorchCompileROCPU, TorchCompileROGPU, TorchCudaGraphGPU]
