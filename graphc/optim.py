"""Optimizers (training toolkit; their updates enter the graph before the passes): each
turns a loss into parameter updates written in graph ops, so the update (and the optimizer's
state: moments, accumulators, the step count) is part of the compiled plan and fused like
any other elementwise work.

Update rules and defaults are those of the `torch.optim` class of the same name. Numeric
hyper-parameters (lr, betas, eps, weight_decay, ...) live in scalar parameters of the plan:
assigning `opt.lr = 0.1` between calls takes effect without recompiling. Structural options
(momentum on or off, nesterov, amsgrad, centered) are fixed when the step is compiled.
Optimizer state is non-trainable parameters named `<optimizer>/<state>/<parameter>`, so
checkpoints save it with the weights."""
from __future__ import annotations

import math

import numpy as np

from .autodiff import grad
from .errors import CompileError, GraphError
from .graph import Graph, Parameter, Tensor, topo_order
from .ops import elementwise as E
from .ops import reductions as R

F64 = np.dtype("float64")


class Optimizer:
    """Base class: subclasses implement `_rule(p, g) -> {parameter: new value}`, reading
    the new step count (a float64 scalar tensor, 1 on the first step) from `_count()`."""

    counts_steps = False  # keep a step count even when no rule reads it

    def __init__(self, clip_grad_norm: float | None = None, **hyper):
        self._hyper_values = {k: float(v) for k, v in hyper.items()}
        if clip_grad_norm is not None:
            if clip_grad_norm <= 0:
                raise ValueError(f"clip_grad_norm must be positive, got {clip_grad_norm}")
            self._hyper_values["clip_grad_norm"] = float(clip_grad_norm)
        self._hyper: dict = {}  # (name, dtype) -> scalar Parameter
        self._state: dict = {}  # (name, parameter) -> Parameter
        self._step: Parameter | None = None
        self._t: Tensor | None = None
        self.params: list[Parameter] = []  # what the latest updates() optimizes
        self._graph: Graph | None = None
        # the host's mirror of the step count: (storage, its version when read) and value
        self._count_key: tuple | None = None
        self._host_count = 0

    # --- hyper-parameters ----------------------------------------------------------------
    def __getattr__(self, name):
        hv = self.__dict__.get("_hyper_values", {})
        if name in hv:
            return hv[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if "_hyper_values" in self.__dict__ and name in self._hyper_values:
            self._hyper_values[name] = float(value)
            for (hname, _), node in self._hyper.items():
                if hname == name:
                    node.assign(value)
            return
        super().__setattr__(name, value)

    @property
    def hyperparameters(self) -> dict:
        """The numeric hyper-parameters and their current values."""
        return dict(self._hyper_values)

    @property
    def prefix(self) -> str:
        return type(self).__name__.lower()

    def _new_param(self, name: str, value: np.ndarray) -> Parameter:
        g = self._graph
        pname = g.unique_name(f"{self.prefix}/{name}")
        g._claim_name(pname, "parameter")
        node = Parameter(g, value, pname, False)
        g._register_name(node)
        return node

    def _h(self, name: str, dtype) -> Parameter:
        """Hyper-parameter `name` as a scalar parameter of the given dtype."""
        key = (name, np.dtype(dtype))
        if key not in self._hyper:
            self._hyper[key] = self._new_param(name, np.asarray(self._hyper_values[name],
                                                                dtype))
        return self._hyper[key]

    def _s(self, name: str, p: Parameter, fill: float = 0.0) -> Parameter:
        """Per-parameter state `name`, shaped like p, initialised to `fill`."""
        key = (name, p)
        if key not in self._state:
            self._state[key] = self._new_param(f"{name}/{p.name}",
                                               np.full(p.shape, fill, p.dtype))
        return self._state[key]

    def state(self, p: Parameter) -> dict:
        """{state name: its Parameter} for one parameter (empty before compiling)."""
        return {name: node for (name, q), node in self._state.items() if q is p}

    @property
    def step_count(self) -> int:
        """Steps taken so far by the compiled updates (counted by the rules that need a
        count: momentum, Adagrad, Adam, AdamW; 0 for plain SGD). Kept on the host: the
        stored count is read again only after something assigned it (a checkpoint load),
        so reading it costs no device round trip per step."""
        if self._step is None:
            return 0
        storage = self._step.storage
        if self._count_key != (id(storage), storage.version):
            self._host_count = int(storage.host())
            self._count_key = (id(storage), storage.version)
        return self._host_count

    # --- hooks the compiled step calls ---------------------------------------------------
    def attach(self, fn, compile_again) -> None:
        """Called once by gc.compile with the Function it made for this optimizer;
        `compile_again(outputs, updates=...)` compiles more with the same options."""

    def after_step(self, fn, feeds: dict) -> None:
        """Called by the Function after each step it ran (feeds: placeholder -> array)."""
        if self._step is not None and self._count_key is not None and \
                self._count_key == (id(self._step.storage), self._step.storage.version):
            self._host_count += 1  # else stale anyway: the next read takes the stored count

    # --- the step ------------------------------------------------------------------------
    def updates(self, loss: Tensor, params=None) -> dict:
        """{parameter: new value} for one step minimizing `loss` (optimizer state included);
        by default over every trainable parameter the loss depends on."""
        if loss.shape != ():
            raise CompileError(f"the optimizer needs a scalar loss, got {loss.describe()}; "
                               "reduce it with .mean() or .sum()")
        if self._graph is not None and self._graph is not loss.graph:
            raise GraphError(f"this {type(self).__name__} is already used with another graph")
        self._graph = loss.graph
        if params is None:
            params = [n for n in topo_order([loss]) if isinstance(n, Parameter) and n.trainable]
        self.params = list(params)
        grads = grad(loss, self.params)
        if "clip_grad_norm" in self._hyper_values:
            grads = self._clip(grads)
        self._t = None
        out: dict = {}
        for p, g in zip(self.params, grads):
            out.update(self._rule(p, g))
        if self.counts_steps:
            self._count()
        if self._t is not None:
            out[self._step] = self._t
        return out

    def _count(self) -> Tensor:
        """The new step count (1 on the first step) as a float64 scalar. The counter is
        made only for rules that read it, so plain SGD carries no extra kernel."""
        if self._t is None:
            if self._step is None:
                self._step = self._new_param("step", np.zeros((), F64))
            self._t = self._step + 1.0
        return self._t

    def _clip(self, grads: list) -> list:
        """torch.nn.utils.clip_grad_norm_: scale every gradient by min(1, max/(norm+1e-6))
        where norm is the L2 norm of all gradients together."""
        total = None
        for g in grads:
            s = R.sum(E.square(E.cast(g, F64)))
            total = s if total is None else total + s
        coef = E.minimum(self._h("clip_grad_norm", F64) / (E.sqrt(total) + 1e-6), 1.0)
        return [g * E.cast(coef, g.dtype) for g in grads]

    def _rule(self, p: Parameter, g: Tensor) -> dict:
        raise NotImplementedError

    def _scalar(self, value: Tensor, p: Parameter) -> Tensor:
        """A float64 scalar expression in p's dtype."""
        return value if value.dtype == p.dtype else E.cast(value, p.dtype)

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v:g}" for k, v in self._hyper_values.items())
        return f"{type(self).__name__}({hp})"


class SGD(Optimizer):
    """torch.optim.SGD: optional weight decay, momentum (the first step's buffer is the
    gradient itself), dampening and Nesterov momentum."""

    def __init__(self, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False,
                 clip_grad_norm: float | None = None):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        super().__init__(clip_grad_norm, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay)
        self.nesterov = nesterov
        self._with_momentum = momentum != 0
        self._with_decay = weight_decay != 0

    def _rule(self, p, g):
        h = lambda name: self._h(name, p.dtype)  # noqa: E731
        out = {}
        if self._with_decay:
            g = g + h("weight_decay") * p
        if self._with_momentum:
            buf = self._s("momentum_buffer", p)
            new_buf = E.where(E.equal(self._count(), 1.0), g,
                              h("momentum") * buf + (1.0 - h("dampening")) * g)
            out[buf] = new_buf
            g = g + h("momentum") * new_buf if self.nesterov else new_buf
        out[p] = p - h("lr") * g
        return out


class Adagrad(Optimizer):
    """torch.optim.Adagrad: accumulated squared gradients scale each coordinate's step."""

    def __init__(self, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10,
                 clip_grad_norm: float | None = None):
        super().__init__(clip_grad_norm, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         eps=eps)
        self.initial_accumulator_value = initial_accumulator_value
        self._with_decay = weight_decay != 0

    def _rule(self, p, g):
        h = lambda name: self._h(name, p.dtype)  # noqa: E731
        if self._with_decay:
            g = g + h("weight_decay") * p
        acc = self._s("sum", p, self.initial_accumulator_value)
        new_acc = acc + g * g
        clr = self._h("lr", F64) / (1.0 + (self._count() - 1.0) * self._h("lr_decay", F64))
        return {acc: new_acc,
                p: p - self._scalar(clr, p) * g / (E.sqrt(new_acc) + h("eps"))}


class Adadelta(Optimizer):
    """torch.optim.Adadelta: step sizes from running averages of squared gradients and
    squared updates."""

    def __init__(self, lr: float = 1.0, rho: float = 0.9, eps: float = 1e-6,
                 weight_decay: float = 0.0, clip_grad_norm: float | None = None):
        super().__init__(clip_grad_norm, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay)
        self._with_decay = weight_decay != 0

    def _rule(self, p, g):
        h = lambda name: self._h(name, p.dtype)  # noqa: E731
        if self._with_decay:
            g = g + h("weight_decay") * p
        sq, acc_delta = self._s("square_avg", p), self._s("acc_delta", p)
        rho, eps = h("rho"), h("eps")
        new_sq = rho * sq + (1.0 - rho) * g * g
        delta = E.sqrt(acc_delta + eps) / E.sqrt(new_sq + eps) * g
        return {sq: new_sq, acc_delta: rho * acc_delta + (1.0 - rho) * delta * delta,
                p: p - h("lr") * delta}


class RMSprop(Optimizer):
    """torch.optim.RMSprop: gradients divided by a running RMS (centered: by the running
    standard deviation), with optional momentum."""

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 clip_grad_norm: float | None = None):
        super().__init__(clip_grad_norm, lr=lr, alpha=alpha, eps=eps,
                         weight_decay=weight_decay, momentum=momentum)
        self.centered = centered
        self._with_momentum = momentum != 0
        self._with_decay = weight_decay != 0

    def _rule(self, p, g):
        h = lambda name: self._h(name, p.dtype)  # noqa: E731
        if self._with_decay:
            g = g + h("weight_decay") * p
        alpha = h("alpha")
        sq = self._s("square_avg", p)
        new_sq = alpha * sq + (1.0 - alpha) * g * g
        out = {sq: new_sq}
        if self.centered:
            gavg = self._s("grad_avg", p)
            new_gavg = alpha * gavg + (1.0 - alpha) * g
            out[gavg] = new_gavg
            avg = E.sqrt(new_sq - new_gavg * new_gavg) + h("eps")
        else:
            avg = E.sqrt(new_sq) + h("eps")
        if self._with_momentum:
            buf = self._s("momentum_buffer", p)
            new_buf = h("momentum") * buf + g / avg
            out[buf] = new_buf
            out[p] = p - h("lr") * new_buf
        else:
            out[p] = p - h("lr") * g / avg
        return out


class Adam(Optimizer):
    """torch.optim.Adam: bias-corrected first and second moments (amsgrad: the running
    maximum of the second moment); weight decay added to the gradient (L2)."""

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False,
                 clip_grad_norm: float | None = None):
        super().__init__(clip_grad_norm, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                         weight_decay=weight_decay)
        self.amsgrad = amsgrad
        self._with_decay = weight_decay != 0

    @property
    def betas(self) -> tuple:
        return (self.beta1, self.beta2)

    @betas.setter
    def betas(self, value) -> None:
        self.beta1, self.beta2 = value

    def _rule(self, p, g):
        h = lambda name: self._h(name, p.dtype)  # noqa: E731
        out = {}
        base = p
        if self._with_decay:
            if self.decoupled:
                base = p * (1.0 - h("lr") * h("weight_decay"))
            else:
                g = g + h("weight_decay") * p
        b1, b2 = h("beta1"), h("beta2")
        m, v = self._s("exp_avg", p), self._s("exp_avg_sq", p)
        new_m = b1 * m + (1.0 - b1) * g
        new_v = b2 * v + (1.0 - b2) * g * g
        out[m], out[v] = new_m, new_v
        if self.amsgrad:
            vmax = self._s("max_exp_avg_sq", p)
            new_v = E.maximum(vmax, new_v)
            out[vmax] = new_v
        t = self._count()
        bc1 = 1.0 - E.pow(self._h("beta1", F64), t)
        bc2 = 1.0 - E.pow(self._h("beta2", F64), t)
        step_size = self._scalar(self._h("lr", F64) / bc1, p)
        bc2_sqrt = self._scalar(E.sqrt(bc2), p)
        out[p] = base - step_size * new_m / (E.sqrt(new_v) / bc2_sqrt + h("eps"))
        return out


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (p <- p * (1 - lr * wd) first)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False,
                 clip_grad_norm: float | None = None):
        super().__init__(lr, betas, eps, weight_decay, amsgrad, clip_grad_norm)


# --- learning-rate schedules -------------------------------------------------------------
class LRScheduler:
    """Sets `optimizer.lr` from a closed form of the number of `step()` calls so far (as
    torch.optim.lr_scheduler: call `step()` once per epoch or per batch, after the update).
    Changing lr writes a scalar parameter: nothing is recompiled."""

    def __init__(self, optimizer: Optimizer):
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch: int) -> float:
        raise NotImplementedError

    def step(self) -> float:
        """Advance one epoch (or batch) and return the new learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = self.lr_at(self.last_epoch)
        return self.optimizer.lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.base_lr = float(state["base_lr"])
        self.last_epoch = int(state["last_epoch"])
        self.optimizer.lr = self.lr_at(self.last_epoch)


class StepLR(LRScheduler):
    """lr = base_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** (epoch // self.step_size)


class ExponentialLR(LRScheduler):
    """lr = base_lr * gamma ** epoch."""

    def __init__(self, optimizer: Optimizer, gamma: float):
        self.gamma = gamma
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.base_lr * self.gamma ** epoch


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2."""

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0):  # noqa: N803
        self.T_max, self.eta_min = T_max, eta_min
        super().__init__(optimizer)

    def lr_at(self, epoch):
        return self.eta_min + (self.base_lr - self.eta_min) * (
            1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    """Linear warmup (torch.optim.lr_scheduler.LinearLR): the factor on base_lr moves from
    start_factor to end_factor over total_iters steps, then stays."""

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3,
                 end_factor: float = 1.0, total_iters: int = 5):
        if not 0 < start_factor <= 1 or not 0 <= end_factor <= 1:
            raise ValueError("LinearLR: factors must lie in (0, 1] and [0, 1]")
        self.start_factor, self.end_factor, self.total_iters = \
            start_factor, end_factor, total_iters
        super().__init__(optimizer)

    def lr_at(self, epoch):
        frac = min(epoch, self.total_iters) / self.total_iters if self.total_iters else 1.0
        return self.base_lr * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class SequentialLR(LRScheduler):
    """Schedules one after another (e.g. linear warmup, then cosine): `schedulers[i]` runs
    from milestones[i-1] on, counting its epochs from its own start."""

    def __init__(self, optimizer: Optimizer, schedulers: list, milestones: list):
        if len(milestones) != len(schedulers) - 1:
            raise ValueError("SequentialLR needs one milestone fewer than schedulers")
        self.schedulers, self.milestones = list(schedulers), list(milestones)
        for s in self.schedulers:
            s.base_lr = self.schedulers[0].base_lr
        super().__init__(optimizer)
        self.base_lr = self.schedulers[0].base_lr
        optimizer.lr = self.lr_at(0)

    def lr_at(self, epoch):
        start, which = 0, 0
        for i, m in enumerate(self.milestones):
            if epoch >= m:
                start, which = m, i + 1
        return self.schedulers[which].lr_at(epoch - start)


class Sophia(Optimizer):
    """SophiaG (Liu et al., 2023, "Sophia: A Scalable Stochastic Second-order Optimizer"):
    momentum m, a diagonal Hessian estimate h (an EMA of the Gauss-Newton-Bartlett
    estimator), and a clipped, preconditioned step

        p <- p (1 - lr wd);  m <- b1 m + (1 - b1) g
        p <- p - lr sign(m) min(|m| / (rho B h + eps), 1)

    B is the batch size. Every k steps (after the update), with labels y' sampled from
    softmax(logits): g' = grad of cross_entropy(logits, y'), h <- b2 h + (1 - b2) g' g'.
    Give the logits the loss is computed from: `Sophia(logits=logits)`. The estimator runs
    as a second compiled function, called by the step every k-th call, so the other calls
    pay nothing for it."""

    counts_steps = True  # the step count decides when the estimator runs

    def __init__(self, logits: Tensor | None = None, lr: float = 1e-4,
                 betas: tuple = (0.965, 0.99), rho: float = 0.04, weight_decay: float = 1e-1,
                 eps: float = 1e-15, k: int = 10, clip_grad_norm: float | None = None):
        super().__init__(clip_grad_norm, lr=lr, beta1=betas[0], beta2=betas[1], rho=rho,
                         weight_decay=weight_decay, eps=eps)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"Sophia: k (the Hessian refresh interval) must be a positive "
                             f"int, got {k!r}")
        self.logits, self.k = logits, k

    def updates(self, loss, params=None):
        if self.logits is None:
            raise CompileError("Sophia needs the logits its loss is computed from, for the "
                               "Hessian estimator: Sophia(logits=logits, ...)")
        return super().updates(loss, params)

    def _rule(self, p, g):
        h = lambda name: self._h(name, p.dtype)  # noqa: E731
        m, hess = self._s("exp_avg", p), self._s("hessian", p)
        b1 = h("beta1")
        new_m = b1 * m + (1.0 - b1) * g
        batch = self._batch(p.dtype)
        ratio = E.minimum(E.abs(new_m) / (h("rho") * batch * hess + h("eps")), 1.0)
        decayed = p * (1.0 - h("lr") * h("weight_decay"))
        return {m: new_m, p: decayed - h("lr") * E.sign(new_m) * ratio}

    def _batch(self, dtype) -> Tensor:
        from .ops.shape_ops import count
        lead = tuple(range(self.logits.ndim - 1))
        return count(self.logits, lead, dtype)

    def attach(self, fn, compile_again) -> None:
        """Compile the Hessian estimator as a second function, beside the step."""
        updates, outputs = self._estimator_graph()
        self._estimator = compile_again(outputs, updates=updates)
        fn.aux_outputs = None

    def after_step(self, fn, feeds: dict) -> None:
        """Every k-th step, refresh the Hessian estimate (its outputs: fn.aux_outputs)."""
        super().after_step(fn, feeds)
        if self.step_count % self.k == 0:
            fn.aux_outputs = self._estimator(feeds)

    def _estimator_graph(self):
        """(updates refreshing h, outputs): the estimator's graph."""
        from .ops.nn import softmax_cross_entropy
        from .ops.random import sample_categorical
        from .ops.shape_ops import reshape
        logits = self.logits
        sampled = sample_categorical(logits)
        classes = logits.shape[-1]
        flat = reshape(logits, (-1, classes))
        loss = softmax_cross_entropy(flat, reshape(sampled, (-1,)))
        grads = grad(loss, self.params)
        out = {}
        for p, g in zip(self.params, grads):
            hess = self._s("hessian", p)
            b2 = self._h("beta2", p.dtype)
            out[hess] = b2 * hess + (1.0 - b2) * g * g
        return out, {"sampled": sampled}
