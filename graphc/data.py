"""Data sets and batching: IDX files (MNIST, Fashion-MNIST), character-level text, folders of
labelled WAV recordings, and a seeded shuffling batch iterator.

Readers take a directory; without one they read `$GRAPHC_DATA`. A missing or malformed file
raises `DataError` naming the file and what is wrong with it."""
from __future__ import annotations

import gzip
import os
import re
import wave
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import GraphcError


class DataError(GraphcError):
    """A data file is missing, unreadable or not in the expected format."""


# IDX type codes -> big-endian NumPy dtypes (yann.lecun.com/exdb/mnist, "the IDX file format")
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def data_dir(directory: str | os.PathLike | None = None) -> str:
    """`directory`, or `$GRAPHC_DATA` when it is None."""
    if directory is not None:
        return os.fspath(directory)
    env = os.environ.get("GRAPHC_DATA")
    if not env:
        raise DataError("no data directory given and GRAPHC_DATA is not set; pass "
                        "directory=... or export GRAPHC_DATA=/path/to/data")
    return env


def _read_bytes(path: str) -> bytes:
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with open(path, "rb") as f:
            head = f.read(2)
            f.seek(0)
            if head == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as gz:
                    return gz.read()
            return f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read it ({e})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """One IDX file (raw or gzip-compressed) as an array of its stored type and shape."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    dtype, ndim = np.dtype(_IDX_TYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    need = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != need:
        raise DataError(f"{path}: IDX header promises shape {shape} ({need} bytes) but the "
                        f"file holds {len(raw)} bytes")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: str, stem: str) -> str:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx")):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise DataError(f"{os.path.join(directory, stem + '.gz')}: no such file (nor without .gz)")


def _dataset_folder(directory: str, name: str) -> str:
    """`<directory>/<name>`, or `directory` itself when it is already that folder (it holds
    the training images and has no `<name>` subfolder)."""
    nested = os.path.join(directory, name)
    if os.path.isdir(nested):
        return nested
    stem = "train-images-idx3-ubyte"
    if any(os.path.isfile(os.path.join(directory, n))
           for n in (stem + ".gz", stem, stem.replace("-idx", ".idx"))):
        return directory
    raise DataError(f"{os.path.join(nested, stem + '.gz')}: no such file (nor without .gz), "
                    f"and {directory} holds no {stem} either: pass the folder with the IDX "
                    f"files or its parent")


def load_idx_dataset(name: str = "mnist", directory: str | None = None,
                     normalize: bool = True) -> dict:
    """MNIST-layout data set `name` ("mnist", "fashion-mnist") from the folder `directory`
    or `<directory>/<name>`: {"train": (images, labels), "test": (images, labels)}. Images
    are float32 in [0, 1] of shape (n, 28, 28) when normalize, else uint8 as stored (a
    quarter of the memory; divided by 255 in float32 they are the normalized values: fit
    feeds uint8 as it is, and a model starting with `lambda t: gc.cast(t, np.float32) /
    255` scales each batch in the graph, to the same values); labels int32."""
    folder = _dataset_folder(data_dir(directory), name)
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images {images.shape} and labels "
                            f"{labels.shape} do not pair up")
        if normalize:
            images = images.astype(np.float32) / np.float32(255)
        out[split] = (images, labels.astype(np.int32))
    return out


def mnist(directory: str | None = None, normalize: bool = True) -> dict:
    """MNIST from the `mnist` folder `directory` or `<directory>/mnist` (see
    load_idx_dataset)."""
    return load_idx_dataset("mnist", directory, normalize)


def fashion_mnist(directory: str | None = None, normalize: bool = True) -> dict:
    """Fashion-MNIST from the folder `directory` or `<directory>/fashion-mnist` (see
    load_idx_dataset)."""
    return load_idx_dataset("fashion-mnist", directory, normalize)


@dataclass
class CharText:
    """A text encoded as integer ids over its sorted character vocabulary."""

    text: str
    vocab: list
    ids: np.ndarray  # int32

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.vocab)}
        try:
            return np.array([index[c] for c in s], np.int32)
        except KeyError as e:
            raise DataError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids) -> str:
        return "".join(self.vocab[int(i)] for i in ids)

    def split(self, fraction: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """(train ids, validation ids): the first `fraction` of the text and the rest."""
        cut = int(len(self.ids) * fraction)
        return self.ids[:cut], self.ids[cut:]

    @staticmethod
    def windows(ids: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        """Non-overlapping (inputs, targets) windows: targets are inputs shifted by one."""
        n = (len(ids) - 1) // length
        if n < 1:
            raise DataError(f"text of {len(ids)} characters is shorter than one window "
                            f"of {length} + 1")
        x = ids[:n * length].reshape(n, length)
        y = ids[1:n * length + 1].reshape(n, length)
        return x, y


def char_text(path: str | None = None, directory: str | None = None) -> CharText:
    """A character-level text data set: `path`, or tiny Shakespeare under the data
    directory (`tinyshakespeare/input.txt`)."""
    if path is None:
        path = os.path.join(data_dir(directory), "tinyshakespeare", "input.txt")
    raw = _read_bytes(os.fspath(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from e
    if not text:
        raise DataError(f"{path}: empty file")
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    return CharText(text, vocab, np.array([index[c] for c in text], np.int32))


@dataclass
class Recording:
    """One WAV recording: float32 samples in [-1, 1], its rate and the fields of its name."""

    signal: np.ndarray
    rate: int
    label: int
    speaker: str
    index: int
    path: str


_WAV_NAME = re.compile(r"^(\d+)_([^_]+)_(\d+)\.wav$")


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """A PCM WAV file (8, 16 or 32 bit; channels averaged) as (float32 samples, rate)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with wave.open(path, "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            frames = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise DataError(f"{path}: not a readable PCM WAV file ({e})") from e
    kinds = {1: (np.uint8, 128.0, 128.0), 2: ("<i2", 0.0, 32768.0), 4: ("<i4", 0.0, 2.0 ** 31)}
    if width not in kinds:
        raise DataError(f"{path}: {8 * width}-bit samples are not supported")
    dtype, offset, scale = kinds[width]
    samples = (np.frombuffer(frames, dtype).astype(np.float32) - offset) / np.float32(scale)
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(1)
    return samples.astype(np.float32), rate


def wav_folder(directory: str | None = None, subdir: str = "fsdd/recordings") -> list:
    """Every `{label}_{speaker}_{index}.wav` in a folder (by default the Free Spoken Digit
    Dataset under the data directory) as Recordings, sorted by name."""
    folder = os.path.join(data_dir(directory), subdir) if subdir else data_dir(directory)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: no such directory")
    recordings = []
    for name in sorted(os.listdir(folder)):
        m = _WAV_NAME.match(name)
        if m is None:
            continue
        signal, rate = read_wav(os.path.join(folder, name))
        recordings.append(Recording(signal, rate, int(m.group(1)), m.group(2),
                                    int(m.group(3)), os.path.join(folder, name)))
    if not recordings:
        raise DataError(f"{folder}: no files named <label>_<speaker>_<index>.wav")
    return recordings


def batches(*arrays, batch_size: int, shuffle: bool = True, seed: int | None = 0,
            drop_last: bool = False, rng: np.random.Generator | None = None) -> Iterator:
    """Yield aligned mini-batches (tuples, or single arrays when given one) of the arrays'
    first axis; shuffled by a seeded generator (or `rng`, whose state advances)."""
    if not arrays:
        raise ValueError("batches: give at least one array")
    n = len(arrays[0])
    for a in arrays[1:]:
        if len(a) != n:
            raise ValueError(f"batches: arrays have different lengths ({n} and {len(a)})")
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be positive, got {batch_size}")
    if shuffle:
        order = (rng if rng is not None else np.random.default_rng(seed)).permutation(n)
    else:
        order = None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            parts = tuple(a[start:start + batch_size] for a in arrays)
        else:
            idx = order[start:start + batch_size]
            parts = tuple(a[idx] for a in arrays)
        yield parts if len(parts) > 1 else parts[0]
