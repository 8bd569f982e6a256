"""graphc.data: IDX, text and WAV readers (synthetic files, and the real data sets when
GRAPHC_DATA is set), and the batch iterator."""
import gzip
import wave

import numpy as np
import pytest

from conftest import needs_data

import graphc as gc
from graphc import data


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("dtype, code", [("uint8", 0x08), ("int16", 0x0B), ("float32", 0x0D)])
def test_read_idx_round_trip(tmp_path, compress, dtype, code, rng):
    arr = (rng.normal(size=(3, 4, 5)) * 50).astype(dtype)
    raw = _idx_bytes(arr, code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if compress else raw)
    got = data.read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, arr)


def test_malformed_idx_files_are_named(tmp_path):
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x56\x78rest")
    with pytest.raises(gc.DataError, match="bad.idx.*magic"):
        data.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(_idx_bytes(np.zeros((4, 4), np.uint8), 0x08)[:-3])
    with pytest.raises(gc.DataError, match="short.idx.*promises"):
        data.read_idx(short)
    broken = tmp_path / "broken.gz"
    broken.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20)[:-6])
    with pytest.raises(gc.DataError, match="broken.gz"):
        data.read_idx(broken)
    with pytest.raises(gc.DataError, match="no such file"):
        data.read_idx(tmp_path / "missing.idx")


def test_mnist_layout_from_a_directory(tmp_path, rng):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for prefix, n in (("train", 7), ("t10k", 3)):
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(images, 0x08)))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(_idx_bytes(labels, 0x08))
    ds = data.mnist(tmp_path)
    x, y = ds["train"]
    assert x.shape == (7, 28, 28) and x.dtype == np.float32 and 0 <= x.min() <= x.max() <= 1
    assert y.dtype == np.int32 and ds["test"][0].shape == (3, 28, 28)


def test_missing_directory_or_variable_is_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHC_DATA", raising=False)
    with pytest.raises(gc.DataError, match="GRAPHC_DATA"):
        data.mnist()
    with pytest.raises(gc.DataError, match="train-images-idx3-ubyte"):
        data.mnist(tmp_path)


def test_char_text(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("hello world\n")
    ds = data.char_text(path)
    assert ds.vocab == sorted(set("hello world\n"))
    assert ds.decode(ds.ids) == "hello world\n"
    x, y = ds.windows(ds.ids, 5)
    assert x.shape == (2, 5) and (x[:, 1:] == y[:, :-1]).all()
    assert ds.decode(y[0]) == "ello "
    with pytest.raises(gc.DataError, match="not in the vocabulary"):
        ds.encode("z")


def _write_wav(path, samples, rate=8000):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, "<i2").tobytes())


def test_wav_folder(tmp_path):
    folder = tmp_path / "rec"
    folder.mkdir()
    _write_wav(folder / "3_ann_7.wav", [0, 16384, -32768])
    _write_wav(folder / "1_bob_0.wav", [100] * 10)
    (folder / "notes.txt").write_text("ignored")
    recs = data.wav_folder(tmp_path, subdir="rec")
    assert [(r.label, r.speaker, r.index) for r in recs] == [(1, "bob", 0), (3, "ann", 7)]
    np.testing.assert_allclose(recs[1].signal, [0, 0.5, -1])
    assert recs[1].rate == 8000
    (folder / "2_eve_1.wav").write_bytes(b"RIFF garbage")
    with pytest.raises(gc.DataError, match="2_eve_1.wav"):
        data.wav_folder(tmp_path, subdir="rec")


def test_batches_cover_everything_once_and_are_seeded():
    x, y = np.arange(10), np.arange(10) * 2
    got = list(data.batches(x, y, batch_size=4, seed=3))
    assert [len(b[0]) for b in got] == [4, 4, 2]
    assert sorted(np.concatenate([b[0] for b in got])) == list(range(10))
    assert all((b[1] == 2 * b[0]).all() for b in got)
    again = list(data.batches(x, y, batch_size=4, seed=3))
    assert all((a[0] == b[0]).all() for a, b in zip(got, again))
    assert [len(b) for b in data.batches(x, batch_size=4, drop_last=True, shuffle=False)] == [4, 4]
    with pytest.raises(ValueError, match="different lengths"):
        next(data.batches(x, y[:3], batch_size=2))




@needs_data
@pytest.mark.parametrize("loader", [data.mnist, data.fashion_mnist])
def test_real_idx_data_sets(loader):
    ds = loader()
    assert ds["train"][0].shape == (60000, 28, 28) and ds["test"][0].shape == (10000, 28, 28)
    assert set(np.unique(ds["train"][1])) == set(range(10))


@needs_data
def test_real_text_and_recordings():
    text = data.char_text()
    assert len(text.text) == 1115394 and text.vocab_size == 65
    recs = data.wav_folder()
    assert len(recs) == 3000 and {r.rate for r in recs} == {8000}
    assert {r.label for r in recs} == set(range(10))


def _write_idx_layout(folder, rng, sizes=(("train", 7), ("t10k", 3))):
    folder.mkdir()
    for prefix, n in sizes:
        images = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(images, 0x08)))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(_idx_bytes(labels, 0x08)))


def test_mnist_from_the_folder_itself_or_its_parent(tmp_path, rng):
    _write_idx_layout(tmp_path / "mnist", rng)
    _write_idx_layout(tmp_path / "fashion-mnist", rng, (("train", 5), ("t10k", 2)))
    for ds in (data.mnist(tmp_path), data.mnist(tmp_path / "mnist"),
               data.mnist(str(tmp_path / "mnist"))):
        assert ds["train"][0].shape == (7, 28, 28) and ds["test"][1].shape == (3,)
    assert data.fashion_mnist(tmp_path / "fashion-mnist")["train"][0].shape == (5, 28, 28)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with pytest.raises(gc.DataError, match=r"elsewhere/mnist/train-images-idx3-ubyte\.gz: no "
                                           r"such file .*pass the folder with the IDX files "
                                           r"or its parent"):
        data.mnist(empty)


@needs_data
def test_real_mnist_folder_itself():
    import os
    ds = data.mnist(os.path.join(os.environ["GRAPHC_DATA"], "mnist"))
    assert ds["train"][0].shape == (60000, 28, 28) and ds["test"][0].shape == (10000, 28, 28)


def test_mnist_normalize_false_keeps_the_stored_bytes(tmp_path, rng):
    """normalize=False: the images as stored, uint8 (divided by 255 in float32 they are
    normalize=True's values exactly)."""
    _write_idx_layout(tmp_path / "mnist", rng)
    raw, scaled = data.mnist(tmp_path, normalize=False), data.mnist(tmp_path)
    for split in ("train", "test"):
        (xr, yr), (xs, ys) = raw[split], scaled[split]
        assert xr.dtype == np.uint8 and xs.dtype == np.float32
        np.testing.assert_array_equal(xr.astype(np.float32) / np.float32(255), xs)
        np.testing.assert_array_equal(yr, ys)
        assert yr.dtype == np.int32
