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
    with `extra` (JSON-serialisable: epoch, scheduler state...) alongside. A path ending in
    .safetensors writes that format instead (see save_safetensors)."""
    path = os.fspath(path)
    if _is_safetensors(path):
        return save_safetensors(path, target, extra)
    params = _parameters(target)
    meta = {"format": FORMAT, "version": VERSION,
            "names": [p.name for p in params], "extra": extra or {}}
    try:
        meta_json = json.dumps(meta)
    except TypeError as e:
        raise CheckpointError(f"save: `extra` must be JSON-serialisable ({e})") from e
    arrays = {f"p{i}": p.storage.host() for i, p in enumerate(params)}
    arrays["meta"] = np.frombuffer(meta_json.encode(), np.uint8)
    _write_atomically(path, lambda f: np.savez(f, **arrays))


def read(path: str | os.PathLike) -> tuple[dict, dict]:
    """({parameter name: array}, extra) from a checkpoint file (.npz or .safetensors)."""
    path = os.fspath(path)
    if _is_safetensors(path):
        return read_safetensors(path)
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
    strict: every parameter must be in the file and every saved value must be used.
    A .safetensors path is read by load_safetensors."""
    path = os.fspath(path)
    if _is_safetensors(path):
        return load_safetensors(path, target, strict)
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


# --- safetensors: the Hugging Face format (no pickle, memory-mapped), torch-compatible ---------
SAFETENSORS_EXTRA = "graphc_extra"  # the metadata entry holding `extra` as JSON
# Kept by torch's BatchNorm, not by graphc's: skipped when a torch file is loaded into a model.
_TORCH_ONLY = ("num_batches_tracked",)


def _is_safetensors(path: str) -> bool:
    return path.endswith(".safetensors")


def _safetensors_numpy():
    try:
        import safetensors.numpy as st
    except ImportError:
        raise CheckpointError("reading and writing .safetensors files needs the safetensors "
                              "package: pip install safetensors (or graphc[safetensors])") \
            from None
    return st


def _named(target) -> dict:
    """{key: parameter}: torch's state_dict keys for a gc.nn model (so the file loads into
    the same torch module), parameter names for a Graph, Function or parameter list."""
    from .nn.module import Module
    if isinstance(target, Module):
        return dict(target.named_parameters())
    return {p.name: p for p in _parameters(target)}


def save_safetensors(path: str | os.PathLike, target, extra: dict | None = None) -> None:
    """Write `target`'s parameter values to a .safetensors file, atomically: a gc.nn model
    by its state_dict keys ("0.weight"), anything else by parameter name; `extra` goes into
    the metadata as JSON."""
    path = os.fspath(path)
    st = _safetensors_numpy()
    try:
        meta = {SAFETENSORS_EXTRA: json.dumps(extra or {})}
    except TypeError as e:
        raise CheckpointError(f"save: `extra` must be JSON-serialisable ({e})") from e
    tensors = {k: np.asarray(p.value, order="C") for k, p in _named(target).items()}
    data = st.save(tensors, metadata=meta)
    _write_atomically(path, lambda f: f.write(data))


def _write_atomically(path: str, write) -> None:
    """path holds either its old content or all that `write(file)` writes, whatever happens
    meanwhile: a temporary file, fsync, an atomic rename, the directory fsynced."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".graphc-ckpt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
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


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict]:
    """({key: array}, extra) from a .safetensors file (memory-mapped while it is read)."""
    path = os.fspath(path)
    _safetensors_numpy()
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(path, framework="numpy") as f:
            values = {k: f.get_tensor(k) for k in f.keys()}
            meta = f.metadata() or {}
        extra = json.loads(meta.get(SAFETENSORS_EXTRA, "{}"))
    except Exception as e:  # safetensors raises its own error types (Rust-side) or OSError
        raise CheckpointError(f"{path}: truncated or not a safetensors file "
                              f"({type(e).__name__}: {e})") from e
    return values, extra


def load_safetensors(path: str | os.PathLike, target, strict: bool = True) -> dict:
    """Assign `target`'s parameters from a .safetensors file (keys as save_safetensors
    writes them, so a torch module's state_dict file loads into the same gc.nn model) and
    return the saved `extra` ({} for files graphc did not write)."""
    path = os.fspath(path)
    values, extra = read_safetensors(path)
    params = _named(target)
    from .nn.module import Module
    if isinstance(target, Module):
        values = {k: v for k, v in values.items() if k.rsplit(".", 1)[-1] not in _TORCH_ONLY}
    missing = sorted(set(params) - set(values))
    unused = sorted(set(values) - set(params))
    if strict and (missing or unused):
        raise CheckpointMismatchError(
            f"{path} does not match the {'model' if isinstance(target, Module) else 'graph'}: "
            f"missing {missing}, not in it {unused} (load(..., strict=False) restores the "
            f"parameters present in both)")
    for key, p in params.items():
        v = values.get(key)
        if v is not None and (v.shape != p.shape or not np.can_cast(v.dtype, p.dtype,
                                                                     "same_kind")):
            raise CheckpointError(f"{path}: '{key}' is saved as {v.shape} {v.dtype} but the "
                                  f"parameter is {p.shape} {p.dtype}")
    for key, p in params.items():
        if key in values:
            p.value = values[key]
    return extra
