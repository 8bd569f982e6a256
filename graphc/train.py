"""The training loop: `fit` runs batch, mini-batch or stochastic gradient descent over
epochs with a progress bar, validation, metrics, callbacks (early stopping, checkpoints) and
learning-rate schedules. The training step and the evaluation function are each compiled
once; a different last-batch size binds its plan once and reuses it after."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import io
from . import ops
from .data import batches
from .errors import GraphcError
from .function import Function, compile as _compile
from .graph import placeholder
from .nn.module import Module


class TrainError(GraphcError):
    """fit() was given data or options it cannot use."""


LOSSES: dict[str, Callable] = {
    "cross_entropy": lambda out, y: ops.softmax_cross_entropy(out, y),
    "mse": lambda out, y: ops.mse_loss(out, y),
    "bce": lambda out, y: ops.binary_cross_entropy_with_logits(out, y),
    "hinge": lambda out, y: ops.hinge_loss(out, y),
}


def accuracy(out: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose arg-max (or, for one output column, sign) matches the label."""
    if out.ndim == y.ndim + 1 and out.shape[-1] > 1:
        return float(np.mean(out.argmax(-1) == y))
    return float(np.mean((out.reshape(y.shape) > 0) == (y > 0.5)))


METRICS = {"accuracy": accuracy}


@dataclass
class History:
    """Per-epoch figures (`history["loss"]`, `history["val_accuracy"]`, ...) and the compiled
    functions fit made (`step`, `evaluate`), for reuse after training."""

    history: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)
    step: Function | None = None
    evaluate: Callable | None = None
    stopped_early: bool = False

    def log(self, epoch: int, logs: dict) -> None:
        self.epochs.append(epoch)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)


class Callback:
    """Hooks called by fit. `on_epoch_end` returning True stops training."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict, trainer: "Trainer") -> bool | None:
        return None

    def on_train_end(self, trainer: "Trainer") -> None:
        pass


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs; with
    restore_best_weights, put back the parameters of the best epoch at the end."""

    def __init__(self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0,
                 mode: str = "auto", restore_best_weights: bool = True):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.restore = restore_best_weights
        self.best = None
        self.best_epoch = None
        self._weights = None
        self._wait = 0

    def _better(self, value) -> bool:
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch, logs, trainer):
        if self.monitor not in logs:
            raise TrainError(f"EarlyStopping monitors {self.monitor!r}, but the logs have "
                             f"{sorted(logs)} (validation data gives val_* entries)")
        value = logs[self.monitor]
        if self._better(value):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore:
                self._weights = [p.value for p in trainer.parameters]
            return False
        self._wait += 1
        return self._wait >= self.patience

    def on_train_end(self, trainer):
        if self.restore and self._weights is not None:
            for p, w in zip(trainer.parameters, self._weights):
                p.value = w


class ModelCheckpoint(Callback):
    """Save every parameter (optimizer state included), the epoch count and the schedule's
    state to `path` after every `every` epochs; `fit(..., resume_from=path)` continues."""

    def __init__(self, path: str, every: int = 1):
        self.path, self.every = path, every

    def on_epoch_end(self, epoch, logs, trainer):
        if (epoch + 1) % self.every == 0:
            trainer.save(self.path, epoch + 1)


class Trainer:
    """What fit builds: the compiled step and evaluation over a model, or a given step."""

    def __init__(self, step: Function, evaluate, feed_names: list, parameters: list,
                 graph, schedule=None):
        self.step, self.evaluate = step, evaluate
        self.feed_names, self.parameters, self.graph = feed_names, parameters, graph
        self.schedule = schedule

    def save(self, path: str, epochs_done: int) -> None:
        extra = {"epoch": epochs_done}
        if self.schedule is not None:
            extra["schedule"] = self.schedule.state_dict()
        io.save(path, self.graph, extra=extra)

    def resume(self, path: str) -> int:
        extra = io.load(path, self.graph)
        if self.schedule is not None and "schedule" in extra:
            self.schedule.load_state_dict(extra["schedule"])
        return int(extra.get("epoch", 0))


def _as_pair(data, what: str):
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = np.asarray(data[0]), np.asarray(data[1])
        if len(x) != len(y):
            raise TrainError(f"{what}: inputs and labels differ in length ({len(x)} and "
                             f"{len(y)})")
        return x, y
    raise TrainError(f"{what} for a model must be a pair (inputs, labels)")


def _model_trainer(model: Module, x: np.ndarray, y: np.ndarray, loss, optimizer, backend,
                   schedule) -> Trainer:
    g = model.graph
    with g:
        xdt = x.dtype if x.dtype.kind in "iu" else np.float32
        ydt = np.int32 if y.dtype.kind in "iub" else np.float32
        xp = placeholder(g.unique_name("fit/x"), (None,) + x.shape[1:], xdt)
        yp = placeholder(g.unique_name("fit/y"), (None,) + y.shape[1:], ydt)
        loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
        if loss_fn is None:
            raise TrainError(f"unknown loss {loss!r}; known: {sorted(LOSSES)} (or a callable "
                             f"(outputs, labels) -> scalar)")
        out = model(xp, training=True)
        step = _compile({"loss": loss_fn(out, yp), "out": out}, optimizer=optimizer,
                        updates=model.updates(), backend=backend)
        out_eval = model(xp, training=False)
        evaluate = _compile({"loss": loss_fn(out_eval, yp), "out": out_eval},
                            backend=backend)
    return Trainer(step, evaluate, [xp.name, yp.name], g.parameters(), g, schedule)


def _run_eval(trainer: Trainer, x, y, batch_size, metrics) -> dict:
    total, n, outs = 0.0, 0, []
    for xb, yb in batches(x, y, batch_size=batch_size, shuffle=False):
        r = trainer.evaluate({trainer.feed_names[0]: xb, trainer.feed_names[1]: yb})
        total += float(r["loss"]) * len(xb)
        n += len(xb)
        if metrics:
            outs.append(r["out"])
    logs = {"loss": total / max(n, 1)}
    if metrics:
        out = np.concatenate(outs)
        for name, fn in metrics.items():
            logs[name] = fn(out, y)
    return logs


def evaluate(history: History, data, batch_size: int = 1024, metrics=("accuracy",)) -> dict:
    """Loss and metrics of the trained model on (inputs, labels), in eval mode."""
    x, y = _as_pair(data, "evaluate data")
    return _run_eval(history._trainer, x, y, batch_size, _metric_fns(metrics))


def _metric_fns(metrics) -> dict:
    out = {}
    for m in metrics or ():
        if callable(m):
            out[getattr(m, "__name__", "metric")] = m
        elif m in METRICS:
            out[m] = METRICS[m]
        else:
            raise TrainError(f"unknown metric {m!r}; known: {sorted(METRICS)} (or a callable)")
    return out


def fit(model_or_step, train_data, epochs: int = 1, batch_size: int | None = 32,
        shuffle: bool = True, validation=None, metrics=("accuracy",), callbacks=(),
        loss="cross_entropy", optimizer=None, schedule=None, seed: int = 0,
        initial_epoch: int = 0, resume_from: str | None = None, progress: bool = True,
        backend: str = "numpy", eval_batch_size: int = 1024) -> History:
    """Train a `gc.nn` model on (inputs, labels), or run a compiled step over a dict of
    arrays {placeholder name: array}. batch_size=None is full-batch gradient descent, 1 is
    stochastic, anything else mini-batch. Returns the History.

    For a model, the step minimizes `loss` ("cross_entropy", "mse", "bce", "hinge" or a
    callable (outputs, labels) -> scalar) with `optimizer` (default Adam), and evaluation
    runs the model in eval mode on `validation` = (inputs, labels). Epoch e shuffles with a
    generator seeded by (seed, e), so a run resumed at epoch e sees the same batches."""
    from tqdm.auto import tqdm

    from .optim import Adam
    callbacks = list(callbacks)
    metric_fns = _metric_fns(metrics) if isinstance(model_or_step, Module) else {}
    if isinstance(model_or_step, Module):
        x, y = _as_pair(train_data, "train_data")
        trainer = _model_trainer(model_or_step, x, y, loss, optimizer or Adam(), backend,
                                 schedule)
        arrays, names = [x, y], trainer.feed_names
        val = _as_pair(validation, "validation") if validation is not None else None
    elif isinstance(model_or_step, Function):
        if not isinstance(train_data, dict) or not train_data:
            raise TrainError("train_data for a compiled step must be a dict "
                             "{placeholder name: array}")
        names = list(train_data)
        arrays = [np.asarray(train_data[k]) for k in names]
        graph = model_or_step.graph
        trainer = Trainer(model_or_step, None, names, graph.parameters() if graph else [],
                          graph, schedule)
        val = None
        if validation is not None:
            raise TrainError("validation needs a model; for a compiled step, evaluate in a "
                             "callback")
    else:
        raise TrainError(f"fit needs a gc.nn model or a compiled Function, got "
                         f"{type(model_or_step).__name__}")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise TrainError("train_data arrays differ in length")
    bs = n if batch_size is None else int(batch_size)
    if bs < 1:
        raise TrainError(f"batch_size must be positive or None, got {batch_size}")
    if resume_from is not None:
        initial_epoch = trainer.resume(resume_from)
    history = History(step=trainer.step, evaluate=trainer.evaluate)
    history._trainer = trainer
    for cb in callbacks:
        cb.on_train_begin(trainer)
    for epoch in range(initial_epoch, epochs):
        rng = np.random.default_rng([seed, epoch])
        total, count, correct = 0.0, 0, {k: 0.0 for k in metric_fns}
        n_batches = math.ceil(n / bs)
        bar = tqdm(batches(*arrays, batch_size=bs, shuffle=shuffle, rng=rng),
                   total=n_batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                   leave=False, file=sys.stderr, mininterval=0.5)
        for parts in bar:
            out = trainer.step(dict(zip(names, parts)))
            loss_value = float(out["loss"] if isinstance(out, dict) else
                               out[0] if isinstance(out, (list, tuple)) else out)
            k = len(parts[0])
            total += loss_value * k
            count += k
            for name, fn in metric_fns.items():
                correct[name] += fn(out["out"], parts[1]) * k
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainError(f"the loss became {loss_value} in epoch {epoch + 1}; lower "
                                 f"the learning rate or clip gradients")
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        bar.close()
        logs = {"loss": total / count}
        logs.update({k: v / count for k, v in correct.items()})
        if val is not None:
            vlogs = _run_eval(trainer, val[0], val[1], eval_batch_size, metric_fns)
            logs.update({f"val_{k}": v for k, v in vlogs.items()})
        if schedule is not None:
            logs["lr"] = schedule.optimizer.lr
            schedule.step()
        history.log(epoch, logs)
        if progress:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: " +
                       "  ".join(f"{k} {v:.4g}" for k, v in logs.items()), file=sys.stderr)
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(epoch, logs, trainer)) or stop
        if stop:
            history.stopped_early = True
            break
    for cb in callbacks:
        cb.on_train_end(trainer)
    return history
