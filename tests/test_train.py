import numpy as np
import pytest

import graphc as gc


def _blobs(rng, n=300):
    centers = np.array([[0.0, 2.0], [-2.0, -1.0], [2.0, -1.0]])
    labels = rng.integers(0, 3, size=n)
    return (centers[labels] + rng.normal(scale=0.7, size=(n, 2))).astype(np.float32), labels


def test_small_mlp_trains_with_sgd(rng):
    points, labels = _blobs(rng)
    x = gc.placeholder("x", (None, 2))
    t = gc.placeholder("t", (None,), dtype="int32")
    h = gc.tanh(x @ gc.parameter("w1", shape=(2, 16), seed=1)
                + gc.parameter("b1", shape=(16,), init="zeros"))
    logits = h @ gc.parameter("w2", shape=(16, 3), seed=2) + gc.parameter("b2", shape=(3,),
                                                                           init="zeros")
    loss = gc.softmax_cross_entropy(logits, t)
    step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.2))
    evaluate = gc.compile([loss, logits])
    first, _ = evaluate(x=points, t=labels)
    losses = []
    for epoch in range(15):
        for i in range(0, len(points), 30):
            step(x=points[i:i + 30], t=labels[i:i + 30])
        losses.append(float(evaluate(x=points, t=labels)[0]))
    final, logits_v = evaluate(x=points, t=labels)
    assert final < 0.5 * first
    assert losses[-1] < losses[0]
    assert np.mean(logits_v.argmax(1) == labels) > 0.9


def test_training_step_matches_manual_numpy(rng):
    """One SGD step equals the same step written by hand in float64 NumPy."""
    xv = rng.normal(size=(6, 4))
    tv = rng.integers(0, 3, size=6)
    w0 = rng.normal(size=(4, 3))
    x = gc.placeholder("x", (None, 4), dtype="float64")
    t = gc.placeholder("t", (None,), dtype="int64")
    w = gc.parameter("w", value=w0, dtype="float64")
    loss = gc.softmax_cross_entropy(x @ w, t)
    gc.compile(loss, optimizer=gc.optim.SGD(lr=0.5))(x=xv, t=tv)
    z = xv @ w0
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(6), tv] -= 1
    np.testing.assert_allclose(w.value, w0 - 0.5 * xv.T @ p / 6, rtol=1e-12)


# --- fit ----------------------------------------------------------------------------------
def _blob_model():
    return gc.nn.Sequential(gc.nn.Dense(2, 32, activation="tanh"), gc.nn.Dense(32, 3))


def test_fit_mini_batch_with_validation_metrics_and_history(rng):
    x, y = _blobs(rng, 400)
    h = gc.fit(_blob_model(), (x[:300], y[:300]), epochs=6, batch_size=32,
               optimizer=gc.optim.Adam(lr=0.02), validation=(x[300:], y[300:]), progress=False)
    assert h.epochs == list(range(6))
    assert set(h.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert h.history["loss"][-1] < 0.5 * h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.9
    # 300 = 9 batches of 32 + one of 12: two bound plans, compiled once each
    assert len(h.step._compiled) == 2
    assert gc.train.evaluate(h, (x[300:], y[300:]))["accuracy"] == h.history["val_accuracy"][-1]


@pytest.mark.parametrize("batch_size", [None, 1])
def test_fit_full_batch_and_stochastic(batch_size, rng):
    x, y = _blobs(rng, 60)
    h = gc.fit(_blob_model(), (x, y), epochs=3, batch_size=batch_size,
               optimizer=gc.optim.SGD(lr=0.05), progress=False)
    assert len(h.step._compiled) == 1
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_fit_a_compiled_step(rng):
    x, y = _blobs(rng, 100)
    xp = gc.placeholder("x", (None, 2))
    tp = gc.placeholder("t", (None,), dtype="int32")
    loss = gc.softmax_cross_entropy(_blob_model()(xp), tp)
    step = gc.compile({"loss": loss}, optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
    h = gc.fit(step, {"x": x, "t": y}, epochs=4, batch_size=20, progress=False)
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_early_stopping_restores_the_best_weights(rng):
    x, y = _blobs(rng, 200)
    model = _blob_model()
    # min_delta so large that no later epoch counts as better: stops after epoch 2 and puts
    # back epoch 1's weights
    stopper = gc.train.EarlyStopping(monitor="val_loss", patience=1, min_delta=100.0)
    h = gc.fit(model, (x[:100], y[:100]), epochs=30, batch_size=10,
               validation=(x[100:], y[100:]), optimizer=gc.optim.SGD(lr=0.1),
               callbacks=[stopper], progress=False)
    assert h.stopped_early and h.epochs == [0, 1]
    assert stopper.best == h.history["val_loss"][0] != h.history["val_loss"][1]
    assert gc.train.evaluate(h, (x[100:], y[100:]))["loss"] == pytest.approx(
        h.history["val_loss"][0], rel=1e-6)


def test_checkpoint_and_resume_continue_the_same_trajectory(tmp_path, rng):
    x, y = _blobs(rng, 120)

    def run(epochs, **kw):
        with gc.Graph():
            model = gc.nn.Sequential(gc.nn.Dense(2, 16, activation="relu"), gc.nn.Dropout(0.2),
                                     gc.nn.Dense(16, 3))
            opt = gc.optim.Adam(lr=0.01)
            sched = gc.optim.StepLR(opt, step_size=2, gamma=0.5)
            h = gc.fit(model, (x, y), epochs=epochs, batch_size=16, optimizer=opt,
                       schedule=sched, progress=False, **kw)
            return h, [p.value for p in model.parameters()]

    full, w_full = run(5)
    run(3, callbacks=[gc.train.ModelCheckpoint(str(tmp_path / "ck.npz"))])
    resumed, w_res = run(5, resume_from=str(tmp_path / "ck.npz"))
    assert resumed.epochs == [3, 4]
    assert resumed.history["loss"] == full.history["loss"][3:]
    assert resumed.history["lr"] == full.history["lr"][3:]
    for a, b in zip(w_full, w_res):
        np.testing.assert_array_equal(a, b)


def test_fit_errors_are_explained(rng):
    x, y = _blobs(rng, 10)
    with pytest.raises(gc.train.TrainError, match="unknown loss"):
        gc.fit(_blob_model(), (x, y), loss="l7", progress=False)
    with pytest.raises(gc.train.TrainError, match="differ in length"):
        gc.fit(_blob_model(), (x, y[:5]), progress=False)
    with pytest.raises(gc.train.TrainError, match="the loss became nan"):
        gc.fit(_blob_model(), (x * np.nan, y), progress=False)


# --- interruption and resumption -----------------------------------------------------------
def _dropout_model():
    return gc.nn.Sequential(gc.nn.Dense(2, 16, activation="relu"), gc.nn.Dropout(0.3),
                            gc.nn.Dense(16, 3))


def _fit_blobs(model, opt, sched, epochs=3, **kw):
    x, y = _blobs(np.random.default_rng(5), 150)  # 9 batches of 16 and one of 6
    return gc.fit(model, (x, y), epochs=epochs, batch_size=16, optimizer=opt, schedule=sched,
                  seed=4, progress=False, **kw)


def _setup():
    model = _dropout_model()
    opt = gc.optim.Adam(lr=0.02)
    return model, opt, gc.optim.StepLR(opt, step_size=1, gamma=0.7)


class _Interrupt(gc.train.Callback):
    """Ctrl-C at a given (epoch, batch)."""

    def __init__(self, epoch, batch):
        self.at = (epoch, batch)

    def on_batch_end(self, batch, logs, trainer):
        if (trainer.position["epoch"], batch) == self.at:
            raise KeyboardInterrupt


def _uninterrupted():
    with gc.Graph() as g:
        h = _fit_blobs(*_setup())
        return h, {p.name: p.value for p in g.parameters()}


@pytest.mark.parametrize("where", ["same model", "fresh graph"])
@pytest.mark.parametrize("every_steps", [None, 4])
def test_an_interrupted_fit_resumes_bit_for_bit(tmp_path, where, every_steps):
    """Ctrl-C in the middle of epoch 2 (the loss of batches 0-6 done), then resume from the
    last checkpoint (end of epoch 1, or batch 4 of epoch 2): the parameters, the Adam state,
    the step and random counters and the logged figures equal an uninterrupted run's."""
    full, want = _uninterrupted()
    ck = str(tmp_path / "ck.npz")
    with gc.Graph() as g:
        model, opt, sched = _setup()
        with pytest.raises(KeyboardInterrupt):
            _fit_blobs(model, opt, sched, callbacks=[
                gc.train.ModelCheckpoint(ck, every_steps=every_steps), _Interrupt(1, 6)])
        if where == "same model":  # as after Ctrl-C in a notebook
            resumed = _fit_blobs(model, opt, sched, resume_from=ck)
            got = {p.name: p.value for p in g.parameters()}
    if where == "fresh graph":  # as a new process would
        with gc.Graph() as g:
            resumed = _fit_blobs(*_setup(), resume_from=ck)
            got = {p.name: p.value for p in g.parameters()}
    assert resumed.epochs == [1, 2]
    assert resumed.history["loss"] == full.history["loss"][1:]
    assert resumed.history["lr"] == full.history["lr"][1:]
    assert set(got) == set(want) and int(got["rng/counter"]) == 30
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_mid_epoch_checkpoints_record_the_position(tmp_path):
    ck = tmp_path / "ck.npz"
    with gc.Graph():
        model, opt, sched = _setup()
        with pytest.raises(KeyboardInterrupt):
            _fit_blobs(model, opt, sched, callbacks=[
                gc.train.ModelCheckpoint(str(ck), every_steps=3), _Interrupt(0, 7)])
    _, extra = gc.io.read(ck)
    assert extra["epoch"] == 0 and extra["position"]["done"] == 6
    assert extra["position"]["plan"] == {"n": 150, "batch_size": 16, "shuffle": True,
                                         "seed": 4}
    with gc.Graph():
        model, opt, sched = _setup()
        with pytest.raises(gc.train.TrainError, match="middle of epoch 1.*same data, "
                                                      "batch_size"):
            gc.fit(model, _blobs(np.random.default_rng(5), 150), epochs=3, batch_size=32,
                   optimizer=opt, schedule=sched, seed=4, progress=False,
                   resume_from=str(ck))
    with pytest.raises(gc.train.TrainError, match="every_steps must be positive"):
        gc.train.ModelCheckpoint(str(ck), every_steps=0)


def test_resuming_with_another_optimizer_in_the_same_process_is_explained(tmp_path):
    ck = str(tmp_path / "ck.npz")
    with gc.Graph():
        model, opt, sched = _setup()
        _fit_blobs(model, opt, sched, epochs=1, callbacks=[gc.train.ModelCheckpoint(ck)])
        with pytest.raises(gc.CheckpointError, match="pass the interrupted fit's optimizer"):
            _fit_blobs(model, gc.optim.Adam(lr=0.02), None, resume_from=ck)


def test_a_second_fit_continues_with_the_same_compiled_step():
    with gc.Graph():
        model, opt, sched = _setup()
        first = _fit_blobs(model, opt, sched, epochs=1)
        again = _fit_blobs(model, None, None, epochs=1)
        assert again.step is first.step
        assert opt.step_count == 2 * 10  # both fits' steps (10 batches an epoch)


_KILLED_CHILD = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import graphc as gc, test_train as t

class Kill(gc.train.Callback):
    def on_epoch_end(self, epoch, logs, trainer):
        if epoch == 1:
            os.kill(os.getpid(), signal.SIGKILL)

model, opt, sched = t._setup()
t._fit_blobs(model, opt, sched, callbacks=[gc.train.ModelCheckpoint(sys.argv[2]), Kill()])
"""


def test_a_killed_process_resumes_from_its_last_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    ck = str(tmp_path / "ck.npz")
    r = subprocess.run([sys.executable, "-c", _KILLED_CHILD, os.path.dirname(__file__), ck],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert gc.io.read(ck)[1]["epoch"] == 2
    full, want = _uninterrupted()
    with gc.Graph() as g:
        resumed = _fit_blobs(*_setup(), resume_from=ck)
        got = {p.name: p.value for p in g.parameters()}
    assert resumed.epochs == [2] and resumed.history["loss"] == full.history["loss"][2:]
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


class _Recorder(gc.train.Callback):
    """Every hook fit calls, in order."""

    def __init__(self):
        self.calls = []

    def on_train_begin(self, trainer):
        self.calls.append(("begin", trainer.position.get("epoch")))

    def on_batch_end(self, batch, logs, trainer):
        self.calls.append(("batch", trainer.position["epoch"], batch))

    def on_epoch_end(self, epoch, logs, trainer):
        self.calls.append(("epoch", epoch, sorted(logs)))

    def on_train_end(self, trainer):
        self.calls.append(("end",))


def test_fit_hooks_initial_epoch_eval_batch_size_and_epoch_times(rng, monkeypatch):
    x, y = _blobs(rng, 50)
    rec = _Recorder()
    eval_sizes = []
    real_eval = gc.train._run_eval

    def spy(trainer, xs, ys, batch_size, metrics):
        eval_sizes.append(batch_size)
        return real_eval(trainer, xs, ys, batch_size, metrics)

    monkeypatch.setattr(gc.train, "_run_eval", spy)
    h = gc.fit(_blob_model(), (x[:40], y[:40]), epochs=3, initial_epoch=1, batch_size=20,
               validation=(x[40:], y[40:]), eval_batch_size=4, callbacks=[rec],
               optimizer=gc.optim.SGD(lr=0.1), progress=False)
    assert h.epochs == [1, 2] and eval_sizes == [4, 4]
    keys = ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert rec.calls == [("begin", None), ("batch", 1, 0), ("batch", 1, 1), ("epoch", 1, keys),
                         ("batch", 2, 0), ("batch", 2, 1), ("epoch", 2, keys), ("end",)]
    assert len(h.times) == 2 and all(t > 0 for t in h.times)


class _TwoInputs(gc.nn.Module):
    """A model whose call takes a dict: an image and a vector of extra features."""

    kind = "two_inputs"

    def __init__(self):
        super().__init__()
        self.image = gc.nn.Dense(4, 3)
        self.meta = gc.nn.Dense(2, 3)

    def children(self):
        return [self.image, self.meta]

    def forward(self, x, training):
        return self.image(x["image"].reshape(-1, 4), training) + self.meta(x["meta"], training)


def test_fit_takes_dict_inputs_for_a_multi_input_model():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(96, 2, 2)).astype(np.float32)
    meta = rng.normal(size=(96, 2)).astype(np.float32)
    labels = (image.reshape(96, 4).sum(1) + meta[:, 0] > 0).astype(np.int32)
    model = _TwoInputs()
    data = ({"image": image, "meta": meta}, labels)
    h = gc.fit(model, data, epochs=8, batch_size=16, optimizer=gc.optim.Adam(lr=0.05),
               validation=data, progress=False)
    assert h.history["loss"][-1] < h.history["loss"][0]
    assert h.history["val_accuracy"][-1] > 0.8
    names = [p.name for p in h.step._feeds.placeholders]
    assert names[0].startswith("fit/image") and names[1].startswith("fit/meta")


def test_fit_dict_inputs_of_different_lengths_are_named():
    model = _TwoInputs()
    with pytest.raises(gc.train.TrainError, match=r"inputs\['meta'\] and labels differ"):
        gc.fit(model, ({"image": np.zeros((4, 2, 2)), "meta": np.zeros((3, 2))},
                       np.zeros(4)), progress=False)


def _eval_batch_sizes(monkeypatch) -> list:
    """The batch sizes fit's evaluations run at (batches() called without shuffling)."""
    sizes, real = [], gc.train.batches

    def spy(*arrays, batch_size, shuffle=True, **kw):
        if not shuffle:
            sizes.append(batch_size)
        return real(*arrays, batch_size=batch_size, shuffle=shuffle, **kw)

    monkeypatch.setattr(gc.train, "batches", spy)
    return sizes


def test_validation_splits_batches_whose_plan_outgrows_the_training_step(rng, monkeypatch):
    """An evaluation plan for eval_batch_size examples needing a larger arena than the
    training step's (and than EVAL_ARENA_FLOOR) runs in parts of the training batch size,
    with the same figures; below the floor the batches stay whole."""
    x, y = _blobs(rng, 200)
    start = _blob_model().state_dict()
    runs = {}
    for floor in (float("inf"), 0):
        monkeypatch.setattr(gc.train, "EVAL_ARENA_FLOOR", floor)
        sizes = _eval_batch_sizes(monkeypatch)
        model = _blob_model()
        model.load_state_dict(start)
        h = gc.fit(model, (x[:120], y[:120]), epochs=2, batch_size=8,
                   validation=(x[120:], y[120:]), eval_batch_size=64, progress=False,
                   optimizer=gc.optim.SGD(lr=0.1), seed=3)
        runs[floor] = h.history
        later = gc.train.evaluate(h, (x[120:], y[120:]), batch_size=64)
        assert sizes == ([64, 64, 64] if floor else [8, 8, 8])
        assert later["loss"] == pytest.approx(h.history["val_loss"][-1], rel=1e-6)
    whole, split = runs[float("inf")], runs[0]
    np.testing.assert_allclose(split["val_loss"], whole["val_loss"], rtol=1e-6)
    assert split["val_accuracy"] == whole["val_accuracy"]
    assert split["loss"] == whole["loss"]  # training itself is untouched


def test_fit_feeds_uint8_images_scaled_inside_the_model(rng):
    """uint8 inputs stay uint8 (a quarter of float32's memory): fit's placeholder takes
    them as they are, and a cast at the model's start scales each batch in the graph; the
    run equals one fed the same pixel values in float32."""
    images = rng.integers(0, 256, size=(96, 1, 4, 4)).astype(np.uint8)
    labels = (images.reshape(96, -1).mean(1) > 127.5).astype(np.int32)

    def model():
        return gc.nn.Sequential(lambda t: gc.cast(t, np.float32) / 255,
                                gc.nn.Conv2D(1, 4, 3, activation="relu"), gc.nn.Flatten(),
                                gc.nn.Dense(16, 2))
    start = model().state_dict()
    runs = {}
    for dtype in (np.uint8, np.float32):
        m = model()
        m.load_state_dict(start)
        data = (images.astype(dtype), labels)
        h = runs[dtype] = gc.fit(m, data, epochs=3, batch_size=16, progress=False,
                                 validation=data, optimizer=gc.optim.Adam(lr=0.05))
        feeds = {ph.name: ph.dtype for ph, _ in h.step.symbolic_plan.feeds}
        assert feeds[h._trainer.feed_names[0]] == dtype
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(runs[np.uint8].history[key],
                                   runs[np.float32].history[key], rtol=1e-6)


def test_arena_for_reads_the_arena_from_the_plan_alone():
    x = gc.placeholder("x", (None, 8))
    h = gc.tanh(x @ gc.parameter("w", shape=(8, 32), seed=1))
    fn = gc.compile(h.sum(axis=1))
    need = gc.memory.arena_for(fn, {"x": (64, 8)})
    assert need == fn.bound_plan(x=(64, 8)).memory.arena_bytes > 0
    with pytest.raises(gc.CompileError, match="no shape given for placeholder 'x'"):
        gc.memory.arena_for(fn, {})
