"""Checkpoints: round trips, atomic writes, clear errors, and exact resumption."""
import os

import numpy as np
import pytest

import graphc as gc


def _model(rng):
    x = gc.placeholder("x", (None, 4))
    t = gc.placeholder("t", (None,), dtype="int32")
    h = gc.tanh(x @ gc.parameter("w1", shape=(4, 8), seed=1) + gc.parameter("b1", shape=(8,),
                                                                             init="zeros"))
    logits = h @ gc.parameter("w2", shape=(8, 3), seed=2)
    loss = gc.softmax_cross_entropy(logits, t)
    xs = rng.normal(size=(32, 4)).astype(np.float32)
    ts = rng.integers(0, 3, size=32)
    return loss, xs, ts


def test_round_trip_includes_optimizer_state(tmp_path, rng):
    with gc.Graph() as g:
        loss, xs, ts = _model(rng)
        fn = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.01))
        for _ in range(3):
            fn(x=xs, t=ts)
        saved = {p.name: p.value for p in g.parameters()}
        assert any(name.startswith("adam/exp_avg") for name in saved)
        gc.save(tmp_path / "c.npz", fn, extra={"epoch": 3})
        for p in g.parameters():
            p.value = np.zeros(p.shape)
        assert gc.load(tmp_path / "c.npz", g) == {"epoch": 3}
        for p in g.parameters():
            np.testing.assert_array_equal(p.value, saved[p.name])


def test_resuming_continues_the_same_trajectory(tmp_path, rng):
    def run(steps, resume_from=None, save_at=None):
        with gc.Graph() as g:
            loss, xs, ts = _model(np.random.default_rng(0))
            opt = gc.optim.SGD(lr=0.1, momentum=0.9)
            fn = gc.compile(loss, optimizer=opt)
            start = 0
            if resume_from:
                start = gc.load(resume_from, g)["step"]
            losses = []
            for i in range(start, steps):
                losses.append(float(fn(x=xs[i % 4::4], t=ts[i % 4::4])))
                if save_at == i + 1:
                    gc.save(tmp_path / "mid.npz", g, extra={"step": i + 1})
            return losses, {p.name: p.value for p in g.parameters()}

    full, end = run(8, save_at=4)
    resumed, end2 = run(8, resume_from=tmp_path / "mid.npz")
    assert resumed == full[4:]
    for name in end:
        np.testing.assert_array_equal(end[name], end2[name])


def test_a_crash_mid_save_leaves_the_old_checkpoint(tmp_path, rng, monkeypatch):
    with gc.Graph() as g:
        _model(rng)
        gc.save(tmp_path / "c.npz", g)
        before = (tmp_path / "c.npz").read_bytes()

        def crash(*a, **k):
            raise KeyboardInterrupt("power cut")
        monkeypatch.setattr(np, "savez", crash)
        with pytest.raises(KeyboardInterrupt):
            gc.save(tmp_path / "c.npz", g)
        assert (tmp_path / "c.npz").read_bytes() == before
        assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def test_truncated_foreign_and_mismatched_files(tmp_path, rng):
    with gc.Graph() as g:
        _model(rng)
        gc.save(tmp_path / "c.npz", g)
    raw = (tmp_path / "c.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(gc.CheckpointError, match="cut.npz.*truncated"):
        gc.load(tmp_path / "cut.npz", g)
    np.savez(tmp_path / "foreign.npz", a=np.zeros(3))
    with pytest.raises(gc.CheckpointError, match="foreign.npz.*not a graphc checkpoint"):
        gc.load(tmp_path / "foreign.npz", g)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(gc.CheckpointError, match="text.npz"):
        gc.load(tmp_path / "text.npz", g)
    with pytest.raises(gc.CheckpointError, match="no such"):
        gc.load(tmp_path / "nope.npz", g)
    with gc.Graph() as other:
        gc.parameter("w1", shape=(4, 8))
        gc.parameter("extra", shape=(2,))
        with pytest.raises(gc.CheckpointError, match=r"missing \['extra'\].*not in the graph"):
            gc.load(tmp_path / "c.npz", other)
    with gc.Graph() as wrong:
        gc.parameter("w1", shape=(8, 4))
        with pytest.raises(gc.CheckpointError, match="'w1' is saved as"):
            gc.load(tmp_path / "c.npz", wrong, strict=False)


class _Payload:
    """Unpickling this runs code: what a hostile checkpoint would carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _resave(src, dst, **replace):
    """Copy the checkpoint `src` to `dst`, replacing some entries (allow_pickle: the new
    entries may be object arrays, which is the point)."""
    with np.load(src) as z:
        entries = {k: z[k] for k in z.files}
    entries.update(replace)
    np.savez(dst, **entries)


@pytest.mark.parametrize("entry", ["p0", "meta"])
def test_a_pickled_object_is_refused_not_unpickled(tmp_path, rng, entry):
    marker = tmp_path / "unpickled"
    with gc.Graph() as g:
        _model(rng)
        gc.save(tmp_path / "c.npz", g)
        _resave(tmp_path / "c.npz", tmp_path / "evil.npz",
                **{entry: np.array([_Payload(marker)], dtype=object)})
        before = {p.name: p.value for p in g.parameters()}
        with pytest.raises(gc.CheckpointError,
                           match=rf"evil.npz: entry '{entry}' holds pickled Python objects.*"
                                 r"refuses to unpickle"):
            gc.load(tmp_path / "evil.npz", g)
        assert not marker.exists()
        for p in g.parameters():  # nothing was half-restored
            np.testing.assert_array_equal(p.value, before[p.name])


def test_malformed_metadata_is_a_checkpoint_error(tmp_path, rng):
    with gc.Graph() as g:
        _model(rng)
        gc.save(tmp_path / "c.npz", g)
        for i, meta in enumerate([b"{not json", b'{"format": "graphc-checkpoint", '
                                  b'"version": 1, "names": 7}', b"\xff\xfe"]):
            _resave(tmp_path / "c.npz", tmp_path / f"m{i}.npz",
                    meta=np.frombuffer(meta, np.uint8))
            with pytest.raises(gc.CheckpointError, match=f"m{i}.npz.*not a graphc checkpoint"):
                gc.load(tmp_path / f"m{i}.npz", g)
        # an entry the metadata names but the archive lacks
        with np.load(tmp_path / "c.npz") as z:
            kept = {k: z[k] for k in z.files if k != "p1"}
        np.savez(tmp_path / "short.npz", **kept)
        with pytest.raises(gc.CheckpointError, match="short.npz.*truncated"):
            gc.load(tmp_path / "short.npz", g)


# --- safetensors ----------------------------------------------------------------------------
def _cnn():
    nn = gc.nn
    return nn.Sequential(nn.Conv2D(1, 3, 3), gc.relu, nn.BatchNorm(3), nn.Flatten(),
                         nn.Dense(3 * 4 * 4, 5))


def test_safetensors_round_trip_of_a_graph_and_of_a_model(tmp_path, rng):
    pytest.importorskip("safetensors")
    with gc.Graph() as g:
        loss, xs, ts = _model(rng)
        fn = gc.compile(loss, optimizer=gc.optim.Adam(lr=0.01))
        fn(x=xs, t=ts)
        saved = {p.name: p.value for p in g.parameters()}
        gc.save(tmp_path / "g.safetensors", fn, extra={"epoch": 1})
        for p in g.parameters():
            p.value = np.zeros(p.shape)
        assert gc.load(tmp_path / "g.safetensors", g) == {"epoch": 1}
        for p in g.parameters():
            np.testing.assert_array_equal(p.value, saved[p.name])
        values, extra = gc.io.read(tmp_path / "g.safetensors")
        assert set(values) == set(saved) and extra == {"epoch": 1}
    with gc.Graph():
        model = _cnn()
        state = model.state_dict()
        gc.save(tmp_path / "m.safetensors", model)
        from safetensors.numpy import load_file
        on_disk = load_file(tmp_path / "m.safetensors")
        assert sorted(on_disk) == sorted(state)  # torch's keys: "0.weight", "2.running_mean"
        for p in model.parameters():
            p.value = np.ones(p.shape)
        assert gc.load(tmp_path / "m.safetensors", model) == {}
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, state[k])
    assert sorted(os.listdir(tmp_path)) == ["g.safetensors", "m.safetensors"]


def test_safetensors_files_move_between_graphc_and_torch(tmp_path, rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file
    tnn = torch.nn
    net = tnn.Sequential(tnn.Conv2d(1, 3, 3), tnn.ReLU(), tnn.BatchNorm2d(3), tnn.Flatten(),
                         tnn.Linear(48, 5))
    net.eval()
    model = _cnn()
    x = gc.placeholder("x", (None, 1, 6, 6))
    fn = gc.compile(model(x))
    xv = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    gc.save(tmp_path / "from_graphc.safetensors", model)
    net.load_state_dict(load_file(tmp_path / "from_graphc.safetensors"))  # strict
    np.testing.assert_allclose(net(torch.tensor(xv)).detach().numpy(), fn(x=xv), rtol=1e-5,
                               atol=1e-6)
    for m in net.modules():  # new torch weights and running statistics
        if isinstance(m, (tnn.Conv2d, tnn.Linear, tnn.BatchNorm2d)):
            torch.nn.init.uniform_(m.weight)
        if isinstance(m, tnn.BatchNorm2d):
            m.running_mean.uniform_()
            m.running_var.uniform_(0.5, 2.0)
    save_file(net.state_dict(), tmp_path / "from_torch.safetensors")  # num_batches_tracked too
    assert gc.load(tmp_path / "from_torch.safetensors", model) == {}
    np.testing.assert_allclose(fn(x=xv), net(torch.tensor(xv)).detach().numpy(), rtol=1e-5,
                               atol=1e-6)


def test_safetensors_errors(tmp_path, rng):
    pytest.importorskip("safetensors")
    with gc.Graph() as g:
        _model(rng)
        gc.save(tmp_path / "c.safetensors", g)
    raw = (tmp_path / "c.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(gc.CheckpointError, match="cut.safetensors: truncated or not a "
                                                 "safetensors file"):
        gc.load(tmp_path / "cut.safetensors", g)
    with pytest.raises(gc.CheckpointError, match="no such checkpoint file"):
        gc.load(tmp_path / "nope.safetensors", g)
    with gc.Graph() as other:
        gc.parameter("w1", shape=(4, 8))
        gc.parameter("extra", shape=(2,))
        with pytest.raises(gc.CheckpointError, match=r"missing \['extra'\], not in it "
                                                     r"\['b1', 'w2'\]"):
            gc.load(tmp_path / "c.safetensors", other)
    with gc.Graph() as wrong:
        gc.parameter("w1", shape=(8, 4))
        with pytest.raises(gc.CheckpointError, match=r"'w1' is saved as \(4, 8\) float32"):
            gc.load(tmp_path / "c.safetensors", wrong, strict=False)
    with pytest.raises(gc.CheckpointError, match="extra. must be JSON"):
        gc.save(tmp_path / "x.safetensors", g, extra={"f": object()})


def test_a_crash_mid_safetensors_save_leaves_the_old_file(tmp_path, rng, monkeypatch):
    pytest.importorskip("safetensors")
    with gc.Graph() as g:
        _model(rng)
        gc.save(tmp_path / "c.safetensors", g)
        before = (tmp_path / "c.safetensors").read_bytes()

        def crash(*a, **k):
            raise KeyboardInterrupt("power cut")
        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(KeyboardInterrupt):
            gc.save(tmp_path / "c.safetensors", g)
        assert (tmp_path / "c.safetensors").read_bytes() == before
        assert os.listdir(tmp_path) == ["c.safetensors"]


def test_without_safetensors_installed_the_error_says_how(tmp_path, rng, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with gc.Graph() as g:
        _model(rng)
        with pytest.raises(gc.CheckpointError, match=r"pip install safetensors"):
            gc.save(tmp_path / "c.safetensors", g)
        gc.save(tmp_path / "c.npz", g)  # npz needs nothing more
