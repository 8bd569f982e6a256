"""PyTorch on the CPU and on CUDA: eager, torch.compile (default and reduce-overhead), and
(CUDA only) the whole eager step captured in one CUDA graph.

Every runner computes the workload's step from `make_data` in float32 (TF32 off on CUDA).
torch is imported lazily (in `check()`/`build()`), so importing this module never fails.
"""
from __future__ import annotations

import numpy as np

from ..workloads import apply_chain
from . import Runner, System, Unavailable, gradient_fingerprint


def _import_torch():
    try:
        import torch
    except Exception as exc:  # ImportError, or a broken install
        raise Unavailable(f"torch not importable: {exc}") from None
    return torch


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _loss_function(workload):
    """The workload's forward + loss as a plain function of tensors."""
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
        if self.kind == "mlp":
            self.params = [torch.nn.Parameter(torch.tensor(a, device=dev)) for a in data["params"]]
            self.inputs = (torch.tensor(data["x"], device=dev),
                           torch.tensor(data["labels"], device=dev).long())
            self.optimizer = torch.optim.SGD(self.params, lr=workload.lr)
            self.leaf = None
        else:
            self.params = []
            self.optimizer = None
            self.leaf = torch.tensor(data["x"], device=dev).requires_grad_(True)
            self.inputs = (self.leaf,)
            if self.kind == "softmax_xent":
                self.inputs += (torch.tensor(data["labels"], device=dev).long(),)

        fn = _loss_function(workload)
        if mode == "compile":
            fn = torch.compile(fn)
        elif mode == "compile-ro":
            fn = torch.compile(fn, mode="reduce-overhead")
        self.fn = fn
        self.loss = None
        self.grad = None
        self.graph = None

        if mode in ("compile", "compile-ro"):
            self._warm_up(2)
        elif mode == "cudagraph":
            try:
                self._capture()
            except Exception as exc:
                raise Unavailable(f"CUDA graph capture failed: {type(exc).__name__}: "
                                  f"{_first_line(exc)}") from None

    # --- one step, eagerly (or through the compiled forward) -------------------------------
    def _forward_backward(self):
        """Forward, loss and backward; the gradients land in .grad. No update."""
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.fn(self.params, *self.inputs)
        else:
            self.leaf.grad = None
            loss = self.fn(*self.inputs)
        loss.backward()
        return loss.detach()

    def _eager_step(self):
        if self.mode == "compile-ro":
            self.torch.compiler.cudagraph_mark_step_begin()
        loss = self._forward_backward()
        if self.optimizer is not None:
            self.optimizer.step()
        self.loss = loss
        self.grad = None if self.leaf is None else self.leaf.grad

    def _warm_up(self, n):
        """Compile (and for reduce-overhead, record) now, so a compiler that cannot run here is
        reported as Unavailable. Forward + backward only: the parameters stay untouched."""
        try:
            for _ in range(n):
                if self.mode == "compile-ro":
                    self.torch.compiler.cudagraph_mark_step_begin()
                self._forward_backward()
            self.sync()
        except Exception as exc:
            raise Unavailable(f"torch.compile failed here: {type(exc).__name__}: "
                              f"{_first_line(exc)}") from None
        finally:
            if self.optimizer is not None:
                self.optimizer.zero_grad(set_to_none=True)
            elif self.leaf is not None:
                self.leaf.grad = None

    def _capture(self):
        """The whole eager step (forward, backward, optimizer.step()) in one CUDA graph,
        following torch's whole-network capture recipe: warm up on a side stream, grads set to
        None, capture; then restore the initial weights the warm-up steps changed."""
        torch = self.torch
        initial = [p.detach().clone() for p in self.params]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._eager_step()
        torch.cuda.current_stream().wait_stream(side)

        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            self.leaf.grad = None
        graph = torch.cuda.CUDAGraph()
        # Capture on the warm-up stream, whose cuBLAS handle and workspace already exist.
        with torch.cuda.graph(graph, stream=side):
            static_loss = self.fn(self.params, *self.inputs) if self.optimizer is not None \
                else self.fn(*self.inputs)
            static_loss.backward()
            if self.optimizer is not None:
                self.optimizer.step()
        # Capture runs nothing; the warm-up steps did: put the starting weights back in place.
        with torch.no_grad():
            for p, p0 in zip(self.params, initial):
                p.copy_(p0)
        torch.cuda.synchronize()
        self.graph = graph
        self.static_loss = static_loss.detach()
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

    def sync(self):
        if self.gpu:
            self.torch.cuda.synchronize()

    def fingerprint(self):
        self.sync()
        if self.loss is None:
            raise RuntimeError("fingerprint() before any step()")
        loss = float(self.loss.cpu())
        if self.kind == "mlp":
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
        # lenet, lstm (nn.LSTM on cuDNN) and adam (torch.optim.Adam(fused=True)) peers are
        # still to be written: they need a machine with torch to be tested on
        return workload.kind in ("mlp", "elementwise", "softmax_xent")

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
