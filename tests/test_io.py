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
