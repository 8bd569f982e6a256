"""The training loop: `fit` runs batch, mini-batch or stochastic gradient descent over
epochs with a progress bar, validation, metrics, callbacks (early stopping, checkpoints) and
learning-rate schedules. The training step and the evaluation function are each compiled
once; a different last-batch size binds its plan once and reuses it after."""
from __future__ import annotations

import itertools
import math
import sys
import time
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
    """Per-epoch figures (`history["loss"]`, `history["val_accuracy"]`, ...), the epochs
    they belong to, each epoch's wall time in seconds (`times`: training, validation and
    the schedule step), and the compiled functions fit made (`step`, `evaluate`)."""

    history: dict = field(default_factory=dict)
    epochs: list = field(default_factory=list)
    times: list = field(default_factory=list)
    step: Function | None = None
    evaluate: Callable | None = None
    stopped_early: bool = False

    def log(self, epoch: int, logs: dict, seconds: float | None = None) -> None:
        self.epochs.append(epoch)
        self.times.append(seconds)
        for k, v in logs.items():
            self.history.setdefault(k, []).append(v)


class Callback:
    """Hooks called by fit. `on_epoch_end` returning True stops training."""

    def on_train_begin(self, trainer: "Trainer") -> None:
        pass

    def on_batch_end(self, batch: int, logs: dict, trainer: "Trainer") -> None:
        """After each training step; batch counts from 0 within the epoch, logs["loss"] is
        that batch's loss."""

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
    """Save every parameter (optimizer state and the random counter included), the epoch
    count and the schedule's state to `path` after every `every` epochs, and, with
    `every_steps`, also after every that many batches within an epoch (with the position
    and the epoch's running loss). `fit(..., resume_from=path)` continues the same
    trajectory, bit for bit, from the last save. In a data-parallel fit rank 0 alone
    writes the file, the other ranks waiting until it is written."""

    def __init__(self, path: str, every: int = 1, every_steps: int | None = None):
        if every < 1 or (every_steps is not None and every_steps < 1):
            raise TrainError(f"ModelCheckpoint: every and every_steps must be positive, got "
                             f"{every} and {every_steps}")
        self.path, self.every, self.every_steps = path, every, every_steps

    def on_batch_end(self, batch, logs, trainer):
        # the epoch's last batch is left to on_epoch_end: its save includes validation,
        # the schedule's step and the callbacks that follow
        if (self.every_steps and (batch + 1) % self.every_steps == 0
                and batch + 1 < trainer.position["batches"]):
            trainer.save(self.path, trainer.position["epoch"], mid_epoch=True)

    def on_epoch_end(self, epoch, logs, trainer):
        if (epoch + 1) % self.every == 0:
            trainer.save(self.path, epoch + 1)


class Trainer:
    """What fit builds: the compiled step and evaluation over a model, or a given step."""

    def __init__(self, step: Function, evaluate, feed_names: list, parameters: list,
                 graph, schedule=None, optimizer=None):
        self.step, self.evaluate = step, evaluate
        self.feed_names, self.parameters, self.graph = feed_names, parameters, graph
        self.schedule, self.optimizer = schedule, optimizer
        # where fit is: epoch, batches done in it and its running sums, the batch plan
        self.position: dict = {}
        # data parallel (fit(data_parallel=comm)): the communicator, and for a model's step
        # the scalar placeholder weighting each rank's loss (name, dtype)
        self.comm = None
        self.weight: tuple | None = None
        self.batch_size: int | None = None  # the latest fit's training batch size
        self._eval_chunks: dict = {}  # _eval_chunk's answers

    def save(self, path: str, epochs_done: int, mid_epoch: bool = False) -> None:
        """Checkpoint the parameters, the schedule and (mid_epoch) fit's place in the
        epoch `epochs_done`, so that resume() continues exactly from here."""
        extra = {"epoch": epochs_done}
        if self.schedule is not None:
            extra["schedule"] = self.schedule.state_dict()
        if mid_epoch:
            extra["position"] = {k: self.position[k] for k in
                                 ("done", "loss_total", "count", "metrics", "plan")}
        if self.comm is None:
            io.save(path, self.graph, extra=extra)
        else:  # data parallel: the ranks hold the same values (the position too); rank 0 writes
            _on_rank_0(self.comm, lambda: io.save(path, self.graph, extra=extra),
                       f"write the checkpoint {path}")

    def resume(self, path: str) -> tuple[int, dict | None]:
        """Restore a checkpoint: (the epoch to continue, the position within it or None).
        Data parallel: rank 0 reads the file, the step's synchronize() copies what it read
        (parameters, optimizer state, counters) to every rank and the epoch, position and
        schedule go to every rank with it; the other ranks need no copy of the file."""
        if self.comm is None:
            extra = self._load(path)
        else:
            extra = _on_rank_0(self.comm, lambda: self._load(path),
                               f"read the checkpoint {path}")
            if self.comm.rank != 0 and self.schedule is not None and "schedule" in extra:
                self.schedule.load_state_dict(extra["schedule"])
            self.step.synchronize()
        return int(extra.get("epoch", 0)), extra.get("position")

    def _load(self, path: str) -> dict:
        """Restore the parameters and the schedule from `path`; its `extra`."""
        try:
            extra = io.load(path, self.graph)
        except io.CheckpointMismatchError as e:
            raise io.CheckpointMismatchError(
                f"{e}. fit resumes into the model and optimizer the checkpoint was written "
                f"from: in the same process, pass the interrupted fit's optimizer object (or "
                f"none) again; in a new process, build the model the same way") from e
        if self.schedule is not None and "schedule" in extra:
            self.schedule.load_state_dict(extra["schedule"])
        return extra


def _on_rank_0(comm, work: Callable, what: str):
    """Data parallel: run `work` on rank 0 alone, every rank waiting for it (a barrier that
    carries the outcome): its (JSON) result on every rank, or an error on every rank."""
    result, error = None, None
    if comm.rank == 0:
        try:
            result = work()
        except Exception as e:  # told to the other ranks, then raised here
            error = e
    told = None
    if comm.rank == 0:
        told = ({"error": f"{type(error).__name__}: {error}"} if error is not None else
                {"result": result})
    told = comm.allgather_object(told, f"fit: {what} on rank 0")[0]
    if error is not None:
        raise error
    if "error" in told:
        raise TrainError(f"rank 0 could not {what}: {told['error']}")
    return told["result"]


def _as_pair(data, what: str):
    """(inputs, labels) as arrays; inputs may be a dict {name: array} (a multi-input model)."""
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data[0], np.asarray(data[1])
        if isinstance(x, dict):
            if not x:
                raise TrainError(f"{what}: the inputs dict is empty")
            x = {k: np.asarray(v) for k, v in x.items()}
        else:
            x = np.asarray(x)
        for key, a in (x.items() if isinstance(x, dict) else [(None, x)]):
            if len(a) != len(y):
                name = "inputs" if key is None else f"inputs[{key!r}]"
                raise TrainError(f"{what}: {name} and labels differ in length ({len(a)} and "
                                 f"{len(y)})")
        return x, y
    raise TrainError(f"{what} for a model must be a pair (inputs, labels)")


def _input_arrays(x) -> list:
    """The input arrays in feed order: the dict's values in its order, or the one array."""
    return list(x.values()) if isinstance(x, dict) else [x]


def _input_placeholders(g, x):
    """Placeholders for the inputs, batch dimension unbound: a dict of them for dict inputs
    (named fit/<key>), else one (fit/x)."""
    def make(name, a):
        dt = a.dtype if a.dtype.kind in "iu" else np.float32
        return placeholder(g.unique_name(name), (None,) + a.shape[1:], dt)
    if isinstance(x, dict):
        return {k: make(f"fit/{k}", a) for k, a in x.items()}
    return make("fit/x", x)


def _model_trainer(model: Module, x: np.ndarray, y: np.ndarray, loss, optimizer, backend,
                   schedule, data_parallel=None, bucket_bytes: int | None = None) -> Trainer:
    """The model's training step and evaluation, compiled once per model, loss, backend and
    data layout: a later fit with the same (or no) optimizer reuses them, so it continues
    the same step (the same dropout seeds and optimizer state, which a resumed run needs)."""
    from .optim import Adam
    layout = tuple((k, a.dtype.str, a.shape[1:]) for k, a in
                   (x.items() if isinstance(x, dict) else [(None, x)]))
    key = (loss, backend, layout, y.dtype.str, y.shape[1:], data_parallel, bucket_bytes)
    cached = getattr(model, "_fit_trainer", None)
    if cached is not None and cached[0] == key and optimizer in (None, cached[1].optimizer):
        cached[1].schedule = schedule
        return cached[1]
    optimizer = optimizer or Adam()
    g = model.graph
    with g:
        ydt = np.int32 if y.dtype.kind in "iub" else np.float32
        xp = _input_placeholders(g, x)
        yp = placeholder(g.unique_name("fit/y"), (None,) + y.shape[1:], ydt)
        loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
        if loss_fn is None:
            raise TrainError(f"unknown loss {loss!r}; known: {sorted(LOSSES)} (or a callable "
                             f"(outputs, labels) -> scalar)")
        out = model(xp, training=True)
        weight = None
        if data_parallel is None:
            step = _compile({"loss": loss_fn(out, yp), "out": out}, optimizer=optimizer,
                            updates=model.updates(), backend=backend)
        else:
            # each rank minimizes its mean loss times n_rank * ranks / n_batch, so that the
            # mean over ranks of the gradients is the whole batch's even when the shares
            # differ (a weight of 1 when they are equal); "rank_loss" is the plain mean
            raw = loss_fn(out, yp)
            wp = placeholder(g.unique_name("fit/weight"), (), raw.dtype)
            weight = (wp.name, np.dtype(raw.dtype))
            step = _compile({"loss": raw * wp, "rank_loss": raw, "out": out},
                            optimizer=optimizer, updates=model.updates(), backend=backend,
                            data_parallel=data_parallel, **({} if bucket_bytes is None else
                                                            {"bucket_bytes": bucket_bytes}))
        out_eval = model(xp, training=False)
        evaluate = _compile({"loss": loss_fn(out_eval, yp), "out": out_eval},
                            backend=backend)
    names = [p.name for p in (xp.values() if isinstance(xp, dict) else [xp])] + [yp.name]
    trainer = Trainer(step, evaluate, names, g.parameters(), g, schedule, optimizer)
    trainer.comm, trainer.weight = data_parallel, weight
    model._fit_trainer = (key, trainer)
    return trainer


# An evaluation plan needing no more arena than this is never split (below it the memory
# saved is not worth the extra calls).
EVAL_ARENA_FLOOR = 64 << 20


def _eval_chunk(trainer: Trainer, x, y, batch_size: int) -> int:
    """The batch size evaluation runs at: `batch_size`, or the training batch size when an
    evaluation plan for `batch_size` examples would need a larger arena than the training
    step's and more than EVAL_ARENA_FLOOR. Evaluation is per example, so the figures are
    the same (up to rounding); the smaller plan holds a fraction of the memory and shares
    the training step's scratch buffers (a convolution's im2col matrix, which also grows
    with the batch). Decided from the plans alone: nothing is compiled for it."""
    train_bs, n = trainer.batch_size, min(batch_size, len(y))
    if train_bs is None or n <= train_bs or trainer.step is None:
        return batch_size
    arrays = _input_arrays(x) + [y]
    key = (n, train_bs, tuple((a.dtype.str, a.shape[1:]) for a in arrays))
    if key not in trainer._eval_chunks:
        def shapes(k):
            s = {name: (k,) + a.shape[1:] for name, a in zip(trainer.feed_names, arrays)}
            if trainer.weight is not None:  # data parallel: the step's loss weight, a scalar
                s[trainer.weight[0]] = ()
            return s
        from .errors import CompileError
        from .memory import arena_for
        try:
            need = arena_for(trainer.evaluate, shapes(n))
            limit = max(arena_for(trainer.step, shapes(train_bs)), EVAL_ARENA_FLOOR)
        except CompileError:  # a step feeding more than fit knows of: keep whole batches
            need = limit = 0
        trainer._eval_chunks[key] = batch_size if need <= limit else train_bs
    return trainer._eval_chunks[key]


def _run_eval(trainer: Trainer, x, y, batch_size, metrics) -> dict:
    total, n, outs = 0.0, 0, []
    batch_size = _eval_chunk(trainer, x, y, batch_size)
    for parts in batches(*_input_arrays(x), y, batch_size=batch_size, shuffle=False):
        r = trainer.evaluate(dict(zip(trainer.feed_names, parts)))
        total += float(r["loss"]) * len(parts[-1])
        n += len(parts[-1])
        if metrics:
            outs.append(r["out"])
    logs = {"loss": total / max(n, 1)}
    if metrics:
        out = np.concatenate(outs)
        for name, fn in metrics.items():
            logs[name] = fn(out, y)
    return logs


def _share(n: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of n that rank takes: contiguous, in rank order, counts differing by
    at most one (rank * n // size on; n // size each when size divides n)."""
    return rank * n // size, (rank + 1) * n // size


def _sum_over_ranks(comm, values: list, what: str) -> list:
    """Each position of `values` summed over the ranks, in rank order: the same floats on
    every rank (an allreduce need not give every rank the same rounding)."""
    every = comm.allgather_object([float(v) for v in values], what)
    return [sum(r[i] for r in every) for i in range(len(values))]


def _rank_batches(arrays: list, batch_size: int, shuffle: bool, rng, comm):
    """Data parallel: (this rank's rows of each batch, how many are its own, the batch's
    size), the batches in the order one process takes them (the same generator on every
    rank). A rank with no row of a batch (a last batch smaller than the ranks) gets the
    batch's last row, to be weighted 0: every rank takes part in every step."""
    n = len(arrays[0])
    for idx in batches(np.arange(n), batch_size=batch_size, shuffle=shuffle, rng=rng):
        lo, hi = _share(len(idx), comm.rank, comm.size)
        rows = idx[lo:hi] if hi > lo else idx[-1:]
        if not shuffle:  # consecutive rows: views, no copies
            rows = slice(int(rows[0]), int(rows[-1]) + 1)
        yield tuple(a[rows] for a in arrays), hi - lo, len(idx)


def _loss_value(out) -> float:
    """The loss a step returned: out["loss"], the first of a list, or the output itself."""
    return float(out["loss"] if isinstance(out, dict) else
                 out[0] if isinstance(out, (list, tuple)) else out)


def _shared_step(trainer: Trainer, comm, names: list, parts: tuple, own: int, n_batch: int,
                 metric_fns: dict) -> tuple[float, float, dict]:
    """Data parallel: one step on this rank's rows; (the batch's loss, its sum over the
    batch's rows, {metric: its sum}), summed over the ranks: the same on every rank."""
    feeds = dict(zip(names, parts))
    if trainer.weight is not None:
        name, dtype = trainer.weight
        feeds[name] = np.asarray(own * comm.size / n_batch, dtype)
    out = trainer.step(feeds)
    loss = float(out["rank_loss"]) if trainer.weight is not None else _loss_value(out)
    mine = [loss * own if own else 0.0]
    mine += [fn(out["out"], parts[-1]) * own if own else 0.0 for fn in metric_fns.values()]
    sums = _sum_over_ranks(comm, mine, "fit: the batch's loss and metrics")
    return sums[0] / n_batch, sums[0], dict(zip(metric_fns, sums[1:]))


def _run_eval_shared(trainer: Trainer, comm, x, y, batch_size, metrics) -> dict:
    """Data parallel: each rank evaluates its contiguous share of (x, y); the figures are
    the means over all the rows (each rank's weighted by its rows), the same on every rank.
    Metrics must be means over rows, as fit's training figures already assume."""
    if comm.size == 1:
        return _run_eval(trainer, x, y, batch_size, metrics)
    lo, hi = _share(len(y), comm.rank, comm.size)
    keys = ["loss", *metrics]
    mine = [0.0] * len(keys)
    if hi > lo:
        part = {k: a[lo:hi] for k, a in x.items()} if isinstance(x, dict) else x[lo:hi]
        logs = _run_eval(trainer, part, y[lo:hi], batch_size, metrics)
        mine = [logs[k] * (hi - lo) for k in keys]
    sums = _sum_over_ranks(comm, mine, "fit: the validation figures")
    return {k: s / max(len(y), 1) for k, s in zip(keys, sums)}


def _check_setup(comm, setup: dict) -> None:
    """TrainError on every rank unless every rank called fit alike (data set size, batches,
    seed, epochs, validation, callbacks): the ranks must take the same global batches."""
    every = comm.allgather_object(setup, "fit: the ranks' setups")
    differ = [r for r, s in enumerate(every) if s != every[0]]
    if not differ:
        return
    other = every[differ[0]]
    key = next(k for k in every[0] if every[0][k] != other.get(k))
    raise TrainError(
        f"fit: rank(s) {', '.join(map(str, differ))} called fit differently from rank 0: "
        f"{key} is {every[0][key]!r} on rank 0 and {other.get(key)!r} on rank {differ[0]}. "
        f"Every rank passes the whole data set (fit takes each rank's share of every batch) "
        f"and the same batch_size, shuffle, seed, epochs, validation, callbacks and "
        f"resume_from")


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
        backend: str | None = None, eval_batch_size: int = 1024, data_parallel=None,
        bucket_bytes: int | None = None) -> History:
    """Train a `gc.nn` model on (inputs, labels) (inputs an array, or a dict {name: array}
    for a model whose call takes a dict), or run a compiled step over a dict of arrays
    {placeholder name: array}. batch_size=None is full-batch gradient descent, 1 is
    stochastic, anything else mini-batch. Returns the History.

    For a model, the step minimizes `loss` ("cross_entropy", "mse", "bce", "hinge" or a
    callable (outputs, labels) -> scalar) with `optimizer` (default: the previous fit's on
    this model, else a new Adam), and evaluation runs the model in eval mode on
    `validation` = (inputs, labels). Epoch e shuffles with a generator seeded by (seed, e).
    resume_from: a ModelCheckpoint file; training continues from it (mid-epoch too) exactly
    as the interrupted run would have.

    data_parallel=comm (gc.distributed.mpi()): run the same fit on every rank, each rank
    passing the whole data set. The training step is compiled with data_parallel (and
    `bucket_bytes`, if given); evaluation is not. batch_size is the global batch: every
    rank shuffles with the same (seed, epoch) generator, so the batches are one process's,
    and rank r trains on rows [r * B // ranks, (r + 1) * B // ranks) of each batch of B
    rows. A model's step weights each rank's (mean) loss by its share, so the averaged
    gradient is the whole batch's even when the shares differ (batch_size not a multiple
    of the ranks, the last batch); a rank with no row of a last batch smaller than the
    ranks steps on one row weighted 0. A compiled step (given with its data_parallel) is
    not weighted: every batch must then split evenly. batch_size must be at least the
    number of ranks. The figures (loss, metrics, validation) are summed over the ranks
    after every batch and epoch, so every rank logs the same History (times: the slowest
    rank's) and callbacks, early stopping and the NaN check decide alike; validation is
    split over the ranks like the batches. Rank 0 alone shows progress and writes
    checkpoints (the others wait for it); resume_from is read by rank 0 and copied to
    every rank."""
    from tqdm.auto import tqdm

    callbacks = list(callbacks)
    metric_fns = _metric_fns(metrics) if isinstance(model_or_step, Module) else {}
    if data_parallel is not None:
        from .distributed import Communicator
        if not isinstance(data_parallel, Communicator):
            raise TrainError(f"fit: data_parallel must be a communicator from "
                             f"gc.distributed.mpi(), got {type(data_parallel).__name__}")
    if isinstance(model_or_step, Module):
        if bucket_bytes is not None and data_parallel is None:
            raise TrainError("fit: bucket_bytes sizes the gradient buckets of data_parallel "
                             "training; pass data_parallel=gc.distributed.mpi() too")
        x, y = _as_pair(train_data, "train_data")
        trainer = _model_trainer(model_or_step, x, y, loss, optimizer, backend, schedule,
                                 data_parallel, bucket_bytes)
        arrays, names = [*_input_arrays(x), y], trainer.feed_names
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
        trainer.comm = model_or_step.communicator
        if data_parallel is not None and data_parallel is not trainer.comm:
            raise TrainError("fit: a compiled step trains data parallel over the communicator "
                             "it was compiled with: compile the step with data_parallel=comm "
                             "(and fit needs no data_parallel=)")
        if bucket_bytes is not None:
            raise TrainError("fit: a compiled step has its buckets already: pass bucket_bytes "
                             "to gc.compile")
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
    n_batches = math.ceil(n / bs)
    dp = trainer.comm  # data parallel: every rank runs this fit on its shares
    trainer.batch_size = min(bs, n) if dp is None else -(-min(bs, n) // dp.size)
    batch_plan = {"n": n, "batch_size": bs, "shuffle": bool(shuffle), "seed": int(seed)}
    if dp is not None:
        _check_setup(dp, {
            "the number of training rows": n, "batch_size": bs, "shuffle": bool(shuffle),
            "seed": int(seed), "epochs": int(epochs), "initial_epoch": int(initial_epoch),
            "the feeds": [[k, a.dtype.str, list(a.shape[1:])] for k, a in zip(names, arrays)],
            "the number of validation rows": None if val is None else len(val[1]),
            "the metrics": list(metric_fns), "resume_from": resume_from is not None,
            "the callbacks": [type(cb).__name__ for cb in callbacks]})
        if bs < dp.size:
            raise TrainError(f"fit: batch_size {bs} is smaller than the {dp.size} ranks: each "
                             f"rank needs a row of every batch (batch_size is the global "
                             f"batch, split over the ranks)")
        if trainer.weight is None:  # a compiled step: its loss cannot be weighted
            for i, rows in ((0, min(bs, n)), (n_batches - 1, n - (n_batches - 1) * bs)):
                if rows % dp.size:
                    raise TrainError(
                        f"fit: batch {i + 1} has {rows} rows for {dp.size} ranks: over a "
                        f"compiled step fit splits every batch evenly (it cannot weight the "
                        f"step's loss by uneven shares); choose a batch_size and a number of "
                        f"rows that the ranks divide, or pass a gc.nn model")
    main_rank = dp is None or dp.rank == 0  # the rank that shows progress
    resumed = None
    if resume_from is not None:
        initial_epoch, resumed = trainer.resume(resume_from)
        if resumed is not None and resumed.get("plan") != batch_plan:
            raise TrainError(f"{resume_from} was saved in the middle of epoch "
                             f"{initial_epoch + 1} of a run with batches {resumed.get('plan')}; "
                             f"this run has {batch_plan}: resume with the same data, "
                             f"batch_size, shuffle and seed")
    history = History(step=trainer.step, evaluate=trainer.evaluate)
    history._trainer = trainer
    for cb in callbacks:
        cb.on_train_begin(trainer)
    for epoch in range(initial_epoch, epochs):
        started = time.perf_counter()
        rng = np.random.default_rng([seed, epoch])
        total, count, correct, skip = 0.0, 0, {k: 0.0 for k in metric_fns}, 0
        if resumed is not None and epoch == initial_epoch:  # the batches before the save
            skip, total, count = resumed["done"], resumed["loss_total"], resumed["count"]
            correct.update(resumed["metrics"])
        pos = trainer.position = {"epoch": epoch, "batches": n_batches, "plan": batch_plan,
                                  "metrics": correct}
        source = (batches(*arrays, batch_size=bs, shuffle=shuffle, rng=rng) if dp is None
                  else _rank_batches(arrays, bs, shuffle, rng, dp))
        todo = itertools.islice(source, skip, None)
        bar = tqdm(todo, total=n_batches, initial=skip, desc=f"epoch {epoch + 1}/{epochs}",
                   disable=not progress or not main_rank, leave=False, file=sys.stderr,
                   mininterval=0.5)
        for b, parts in enumerate(bar, start=skip):
            if dp is None:
                out = trainer.step(dict(zip(names, parts)))
                loss_value = float(out["loss"] if isinstance(out, dict) else
                                   out[0] if isinstance(out, (list, tuple)) else out)
                k = len(parts[0])
                total += loss_value * k
                count += k
                for name, fn in metric_fns.items():
                    correct[name] += fn(out["out"], parts[-1]) * k
            else:  # this rank's rows; the figures summed over the ranks
                parts, own, k = parts
                loss_value, loss_sum, sums = _shared_step(trainer, dp, names, parts, own, k,
                                                          metric_fns)
                total += loss_sum
                count += k
                for name in metric_fns:
                    correct[name] += sums[name]
            if not math.isfinite(loss_value):
                bar.close()
                raise TrainError(f"the loss became {loss_value} in epoch {epoch + 1}; lower "
                                 f"the learning rate or clip gradients")
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            pos.update(done=b + 1, loss_total=total, count=count)
            for cb in callbacks:
                cb.on_batch_end(b, {"loss": loss_value}, trainer)
        bar.close()
        logs = {"loss": total / count}
        logs.update({k: v / count for k, v in correct.items()})
        if val is not None:
            vlogs = (_run_eval(trainer, val[0], val[1], eval_batch_size, metric_fns)
                     if dp is None else
                     _run_eval_shared(trainer, dp, val[0], val[1], eval_batch_size, metric_fns))
            logs.update({f"val_{k}": v for k, v in vlogs.items()})
        if schedule is not None:
            logs["lr"] = schedule.optimizer.lr
            schedule.step()
        seconds = time.perf_counter() - started
        if dp is not None:  # the slowest rank's: the same History on every rank
            seconds = max(dp.allgather_object(seconds, "fit: the epoch's time"))
        history.log(epoch, logs, seconds)
        if progress and main_rank:
            tqdm.write(f"epoch {epoch + 1}/{epochs}: " +
                       "  ".join(f"{k} {v:.4g}" for k, v in logs.items()) +
                       f"  ({history.times[-1]:.1f} s)", file=sys.stderr)
        stop = False
        for cb in callbacks:
            stop = bool(cb.on_epoch_end(epoch, logs, trainer)) or stop
        if stop:
            history.stopped_early = True
            break
    for cb in callbacks:
        cb.on_train_end(trainer)
    return history
