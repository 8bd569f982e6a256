"""Checkpoints (training toolkit, over the graph and Function stages): every parameter of a
graph (weights and optimizer state) in one versioned `.npz`, written atomically so that a
crash mid-save leaves the previous file intact."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .errors import GraphcError
from .graph import Graph, Parameter

FORMAT = "graphc-checkpoint"
VERSION = 1


class CheckpointError(GraphcError):
    """A checkpoint cannot be written, read, or does not fit the graph it is loaded into."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's parameter names differ from the graph's (strict loading)."""


def _parameters(target) -> list[Parameter]:
    """The parameters of a Graph, a Function (its graph's), a model (its `.parameters()`),
    or a list of Parameters."""
    from .function import Function
    if isinstance(target, Graph):
        return target.parameters()
    if isinstance(target, Function):
        return target.graph.parameters() if target.graph is not None else []
    if hasattr(target, "graph") and isinstance(target.graph, Graph):
        return target.graph.parameters()
    if isinstance(target, (list, tuple)) and all(isinstance(p, Parameter) for p in target):
        return list(target)
    raise CheckpointError(f"save/load need a Graph, a Function or a list of parameters, "
                          f"got {type(target).__name__}")


def save(path: str | os.PathLike, target, extra: dict | None = None) -> None:
    """Write every parameter of `target` (Graph, Function or parameter list) to `path`,
    with `extra` (JSON-serialisable: epoch, scheduler state...) alongside."""
    path = os.fspath(path)
    params = _parameters(target)
    meta = {"format": FORMAT, "version": VERSION,
            "names": [p.name for p in params], "extra": extra or {}}
    try:
        meta_json = json.dumps(meta)
    except TypeError as e:
        raise CheckpointError(f"save: `extra` must be JSON-serialisable ({e})") from e
    arrays = {f"p{i}": p.storage.host() for i, p in enumerate(params)}
    arrays["meta"] = np.frombuffer(meta_json.encode(), np.uint8)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".graphc-ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read(path: str | os.PathLike) -> tuple[dict, dict]:
    """({parameter name: array}, extra) from a checkpoint file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if "meta" not in z.files:
                raise CheckpointError(f"{path}: not a graphc checkpoint (no metadata)")
            _refuse_pickles(path, z)
            meta = json.loads(bytes(z["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a graphc checkpoint")
            if meta.get("version") != VERSION:
                raise CheckpointError(f"{path}: checkpoint version {meta.get('version')} is "
                                      f"not supported (this graphc reads {VERSION})")
            values = {name: z[f"p{i}"] for i, name in enumerate(meta["names"])}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, KeyError, EOFError, OSError, TypeError,
            AttributeError) as e:
        raise CheckpointError(f"{path}: truncated or not a graphc checkpoint "
                              f"({type(e).__name__}: {e})") from e
    return values, meta.get("extra", {})


def _refuse_pickles(path: str, z) -> None:
    """Raise if an entry of the archive holds Python objects: NumPy stores those pickled, and
    unpickling runs whatever code the file's author chose. Only the .npy header is read."""
    for key in z.files:
        try:
            with z.zip.open(key + ".npy") as f:
                version = np.lib.format.read_magic(f)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    continue  # np.load reports a format it cannot read
                _, _, dtype = read_header(f)
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile):
            continue  # not a .npy member or a damaged one: reading it fails with its reason
        if dtype.hasobject:
            raise CheckpointError(
                f"{path}: entry '{key}' holds pickled Python objects ({dtype}); graphc refuses "
                f"to unpickle checkpoint data, since unpickling can run arbitrary code. A "
                f"graphc checkpoint holds only numeric arrays: this file was not written by "
                f"gc.save, or was altered")


def load(path: str | os.PathLike, target, strict: bool = True) -> dict:
    """Restore `target`'s parameters from `path` by name and return the saved `extra`.
    strict: every parameter must be in the file and every saved value must be used."""
    path = os.fspath(path)
    values, extra = read(path)
    params = _parameters(target)
    by_name = {p.name: p for p in params}
    if strict:
        missing = sorted(set(by_name) - set(values))
        unused = sorted(set(values) - set(by_name))
        if missing or unused:
            raise CheckpointMismatchError(
                f"{path} does not match the graph: " +
                (f"missing {missing}" if missing else "") +
                ("; " if missing and unused else "") +
                (f"not in the graph {unused}" if unused else "") +
                " (load(..., strict=False) restores the parameters present in both)")
    for name, p in by_name.items():
        if name not in values:
            continue
        v = values[name]
        if v.shape != p.shape or v.dtype != p.dtype:
            raise CheckpointError(f"{path}: '{name}' is saved as {v.shape} {v.dtype} but the "
                                  f"parameter is {p.shape} {p.dtype}")
    for name, p in by_name.items():
        if name in values:
            p.assign(values[name])
    return extra
