"""The on-disk cache of generated kernel modules (backend stage), shared by the Numba
printers of the CPU and the CUDA backends.

Sources are written to a user-only cache directory, named by the hash of their source, and
compiled with `cache=True`, so a later process loads the machine code from disk. A cached
source is executed only when its text equals the source just printed; an entry that fails to
load (a damaged file, a damaged Numba index or data file) is deleted and rebuilt once. The
directory is never used when another user owns it, and is tightened to 0700 otherwise."""
from __future__ import annotations

import atexit
import glob
import hashlib
import os
import shutil
import sys
import tempfile
import types
import warnings


class KernelCacheWarning(UserWarning):
    """The kernel cache directory or one of its entries was not usable as found (and was
    fixed, rebuilt or bypassed, as the message says)."""


_bypassed: dict[str, str] = {}  # a cache directory another user owns -> our private stand-in


def cache_dir() -> str:
    """A user-owned directory (mode 0700) for generated kernels and Numba's cache:
    `$GRAPHC_CACHE_DIR/numba`, else `$XDG_CACHE_HOME/graphc/numba` or
    `~/.cache/graphc/numba`."""
    root = os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphc")
    path = os.path.join(root, "numba")
    if path in _bypassed:
        return _bypassed[path]
    os.makedirs(path, mode=0o700, exist_ok=True)
    if not hasattr(os, "getuid"):  # no POSIX owners or modes to check (Windows)
        return path
    st = os.stat(path)
    if st.st_uid != os.getuid():
        # its files (and Numba's pickled index) could be anything that user wrote
        private = tempfile.mkdtemp(prefix="graphc-kernels-")
        atexit.register(shutil.rmtree, private, True)
        _bypassed[path] = private
        warnings.warn(f"graphc: the kernel cache {path} belongs to another user (uid "
                      f"{st.st_uid}), so no kernel is loaded from it; this process compiles "
                      f"into {private} instead. Set GRAPHC_CACHE_DIR to a directory of your own "
                      f"to keep compiled kernels between runs.", KernelCacheWarning, stacklevel=2)
        return private
    mode = st.st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o700)
        what = ""
        if mode & 0o022:  # others could have planted entries: trust none of them
            _purge(path)
            what = "; other users could write to it, so its entries were deleted (rebuilt on use)"
        warnings.warn(f"graphc: the kernel cache {path} had mode {mode:04o}; tightened to 0700 "
                      f"(user only){what}", KernelCacheWarning, stacklevel=2)
    return path


def _purge(directory: str) -> None:
    """Delete every kernel source and Numba cache file in the directory."""
    for f in glob.glob(os.path.join(glob.escape(directory), "k_*.py*")):
        _unlink(f)
    shutil.rmtree(os.path.join(directory, "__pycache__"), ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _entry(source: str) -> tuple[str, str, str]:
    """(module name, cache directory, file name stem) of the entry for this source."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    return f"graphc_kernel_{digest}", cache_dir(), f"k_{digest}"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _numba_files(directory: str, stem: str, jit=None) -> list[str]:
    """Numba's index and data files for the entry (in `__pycache__` next to the source, or
    wherever NUMBA_CACHE_DIR put them, which the dispatcher knows)."""
    where = getattr(getattr(jit, "_cache", None), "_cache_path", None)
    places = {os.path.join(directory, "__pycache__")} | ({where} if where else set())
    return [f for d in places for f in glob.glob(os.path.join(glob.escape(d), stem + ".*"))]


def _remove_entry(source: str, jit=None) -> None:
    name, directory, stem = _entry(source)
    sys.modules.pop(name, None)
    for f in [os.path.join(directory, stem + ".py")] + _numba_files(directory, stem, jit):
        _unlink(f)


def load_module(source: str) -> types.ModuleType:
    """The module of `source`, from this process's modules or the disk cache; the cached
    file is (re)written unless its text is exactly `source`."""
    name, directory, stem = _entry(source)
    module = sys.modules.get(name)
    if module is not None:
        return module
    path = os.path.join(directory, stem + ".py")
    if _read(path) != source:  # absent, damaged or not ours: Numba's files for it are stale
        _remove_entry(source)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(source)
        os.replace(tmp, path)
    # executed from the verified text (not through a .pyc); the file gives Numba its cache key
    module = types.ModuleType(name)
    module.__file__ = path
    exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - generated, verified
    sys.modules[name] = module
    return module


def rebuild_module(source: str, jit, error: Exception, stacklevel: int = 3) -> types.ModuleType:
    """Delete a cache entry that failed to load (`jit`: one of its dispatchers) and load
    its module afresh."""
    _remove_entry(source, jit)
    warnings.warn(f"graphc: a cached kernel failed to load ({type(error).__name__}: {error}); "
                  f"deleted it and compiled it again", KernelCacheWarning, stacklevel=stacklevel)
    return load_module(source)


def _load(source: str):
    """The Numba dispatcher `kernel` of `source` (see load_module)."""
    return load_module(source).kernel


def _rebuild(source: str, jit, error: Exception):
    """Delete a cache entry that failed to load and compile it afresh."""
    return rebuild_module(source, jit, error, stacklevel=4).kernel


def typing_errors() -> tuple:
    """Numba's typing-error classes (numba's own and numba-cuda's, where installed): a
    kernel that fails to type is a bug in graphc, never a damaged cache entry."""
    found = []
    for module in ("numba.core.errors", "numba.cuda.core.errors"):
        try:
            found.append(__import__(module, fromlist=["TypingError"]).TypingError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)
