"""Fused kernels printed as Numba loops (CPU backend): one pass over the iteration space,
every input read once, reductions accumulated in float64, each op printed from its
registry scalar form (OpDef.scalar). Used for groups of cheap arithmetic (OpDef.cost below
COST_TRANSCENDENTAL); groups with transcendental functions run as tiled NumPy instead
(NumPy's SIMD exp/tanh are 10-80x faster per element than Numba's scalar libm calls on the
machines we measured).

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

import numpy as np

from ...ops.registry import COST_TRANSCENDENTAL
from ...schedule.expr import FusedExpr

def available() -> bool:
    if os.environ.get("GRAPHC_NUMBA", "1") == "0":
        return False
    try:
        import numba  # noqa: F401
        return True
    except ImportError:
        return False


# Below this many elements a NumPy ufunc chain costs a few microseconds, less than the
# 0.1-0.2 s Numba takes to compile one more kernel on a cold cache.
MIN_ELEMENTS = 1 << 14


def suits(expr: FusedExpr) -> bool:
    """Numba pays for big groups of cheap arithmetic only (see the module docstring)."""
    size = int(np.prod(expr.shape, dtype=np.int64))
    return size >= MIN_ELEMENTS and all(prints(i) for i in expr.instrs) and available()


def prints(ins) -> bool:
    """Whether an instruction is cheap arithmetic with a scalar form (see the docstring)."""
    op = ins.opdef
    return (op is not None and op.cost < COST_TRANSCENDENTAL
            and op.scalar_form(ins.attrs) is not None)


def scalar_code(ins, j: int, args: list, consts: dict) -> str:
    """Instruction j as one scalar expression over `args`, from its OpDef's scalar form;
    typed constants it names are added to `consts` (module globals of the kernel source)."""
    dt = np.dtype(ins.dtype)
    tname = f"T_{dt.name}"
    consts[tname] = dt.type
    fields = {"T": tname}
    for name, value in (("zero", 0), ("one", 1), ("half", 0.5)):
        fields[name] = f"{name.upper()}_{dt.name}"
    named = {k: v for k, v in ins.attrs.items() if isinstance(v, (int, float))
             and not isinstance(v, bool)}
    named.update(ins.opdef.scalar_consts)
    for name, value in named.items():
        fields[name] = f"C{j}_{name}"
    template = ins.opdef.scalar_form(ins.attrs)
    code = template.format(*args, **fields)
    for name, value in (("zero", 0), ("one", 1), ("half", 0.5)):
        if fields[name] in code:
            consts[fields[name]] = dt.type(value)
    for name, value in named.items():
        if fields[name] in code:
            consts[fields[name]] = dt.type(value)
    if dt.kind == "f" and ins.op != "cast":
        code = f"{tname}({code})"  # keep float32 float32 whatever Python promotes
    return code


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


def _varying_dims(in_shape, shape) -> list[int]:
    """The iteration dimensions an input's index varies along (its broadcast ones do not)."""
    lead = len(shape) - len(in_shape)
    return [lead + i for i, d in enumerate(in_shape) if not (d == 1 and shape[lead + i] != 1)]


def _index(in_shape, shape, loop_vars) -> str:
    lead = len(shape) - len(in_shape)
    varying = set(_varying_dims(in_shape, shape))
    parts = [loop_vars[lead + i] if lead + i in varying else "0" for i in range(len(in_shape))]
    return "[" + ", ".join(parts) + "]" if parts else "[()]"


def print_numba(expr: FusedExpr, shared=None) -> tuple[str, dict]:
    """Source of `kernel(*inputs, *outputs, *accumulators, *extents)` (accumulators: float64,
    the reductions' keepdims shapes; extents: the iteration shape) and the constants it
    names. Extents are arguments, not literals, so one compiled kernel serves every shape
    with the same broadcasting pattern (a new batch size compiles nothing).

    `shared` maps an output to the input whose buffer it overwrites (in place): the kernel
    then stores through the input and takes no separate output. Fewer distinct arrays means
    fewer runtime alias checks, and LLVM gives up vectorizing a loop that needs more than 8
    (an Adam update over 7 arrays ran scalar, 3.5x slower)."""
    shared = shared or {}
    shape = expr.shape
    loop_vars = [f"j{d}" for d in range(len(shape))]
    consts: dict = {}
    n_in, n_out, n_red = len(expr.inputs), len(expr.outputs), len(expr.reductions)
    params = [f"i{k}" for k in range(n_in)] + [f"o{k}" for k in range(n_out)
                                               if k not in shared] + \
        [f"a{k}" for k in range(n_red)] + [f"n{d}" for d in range(len(shape))]
    body = []
    # Without reductions, each input is loaded in the outermost loop where its index is
    # fixed (a learning rate before the loops): left in the inner loop, such a load may
    # alias the stores and LLVM keeps the loop scalar (measured: 0.69 -> 0.53 ms for an SGD
    # update of 1M floats). With a reduction the hoisted form measured 5x slower, so there
    # every load stays innermost.
    loads: dict[int, list] = {}
    innermost = len(shape) - 1
    for k, (_, in_shape) in enumerate(expr.inputs):
        index = _index(in_shape, shape, loop_vars)
        depth = innermost if expr.reductions else max(_varying_dims(in_shape, shape),
                                                      default=-1)
        loads.setdefault(depth, []).append(f"x{k} = i{k}{index}")
    for j, ins in enumerate(expr.instrs):
        args = [f"x{i}" if kind == "in" else f"t{i}" for kind, i in ins.args]
        body.append(f"t{j} = {scalar_code(ins, j, args, consts)}")
    idx = "[" + ", ".join(loop_vars) + "]" if shape else "[()]"
    for k, (_, j) in enumerate(expr.outputs):
        body.append(f"{f'i{shared[k]}' if k in shared else f'o{k}'}{idx} = t{j}")
    for k, (_, j, axes, _, _) in enumerate(expr.reductions):
        r_idx = [("0" if d in axes else v) for d, v in enumerate(loop_vars)]
        body.append(f"a{k}[{', '.join(r_idx)}] += t{j}" if r_idx else f"a{k}[()] += t{j}")
    # constants are module globals, which Numba freezes into the machine code (and the
    # source hash, hence the cache key, covers their values)
    lines = ["import math", "import numpy as np", "import numba", ""]
    for name in sorted(consts):
        value = consts[name]
        if isinstance(value, type):
            lines.append(f"{name} = np.{np.dtype(value).name}")
        else:
            lines.append(f"{name} = np.{np.dtype(type(value)).name}"
                         f"(float.fromhex('{float(value).hex()}'))")
    lines += ["", "@numba.njit(cache=True, nogil=True, error_model='numpy')",
              f"def kernel({', '.join(params)}):"]
    indent = "    "
    lines += [indent + b for b in loads.get(-1, [])]
    for d, v in enumerate(loop_vars):
        lines.append(f"{indent}for {v} in range(n{d}):")
        indent += "    "
        lines += [indent + b for b in loads.get(d, [])]
    lines += [indent + b for b in body]
    return "\n".join(lines) + "\n", consts


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


def _load(source: str):
    """The Numba dispatcher of `source`, from this process's modules or the disk cache; the
    cached file is (re)written unless its text is exactly `source`."""
    name, directory, stem = _entry(source)
    module = sys.modules.get(name)
    if module is not None:
        return module.kernel
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
    return module.kernel


def _rebuild(source: str, jit, error: Exception):
    """Delete a cache entry that failed to load and compile it afresh."""
    _remove_entry(source, jit)
    warnings.warn(f"graphc: a cached kernel failed to load ({type(error).__name__}: {error}); "
                  f"deleted it and compiled it again", KernelCacheWarning, stacklevel=3)
    return _load(source)


def compile_numba(expr: FusedExpr, shared=None):
    """A callable kernel(*inputs, *outputs, *reductions) running one Numba loop nest;
    `shared`: see print_numba (the caller promises those outputs are those inputs)."""
    shared = shared or {}
    source, _ = print_numba(expr, shared)
    jit = _load(source)
    shape = expr.shape
    reds = []
    for _, _, axes, kind, _ in expr.reductions:
        kd = tuple(1 if a in axes else d for a, d in enumerate(shape))
        count = int(np.prod([shape[a] for a in axes], dtype=np.int64)) if kind == "mean" else 1
        reds.append((np.zeros(kd, np.float64), kd, count))
    n_in, n_out = len(expr.inputs), len(expr.outputs)
    kept = [k for k in range(n_out) if k not in shared]

    loaded = False  # whether the dispatcher has run once (and so loaded from disk or built)

    def kernel(*arrays):
        nonlocal jit, loaded
        accs = []
        for acc, _, _ in reds:
            acc[...] = 0.0
            accs.append(acc)
        args = (*arrays[:n_in], *[arrays[n_in + k] for k in kept], *accs, *shape)
        if loaded:
            jit(*args)
        else:
            # the first call loads Numba's cached machine code: a damaged index or data file
            # fails here, before any element is written
            from numba.core.errors import TypingError
            try:
                jit(*args)
            except TypingError:
                raise  # a kernel Numba cannot type is a bug in graphc, not a damaged cache
            except Exception as e:  # noqa: BLE001 - retried once, then raised
                jit = _rebuild(source, jit, e)
                jit(*args)
            loaded = True
        for (acc, kd, count), out in zip(reds, arrays[n_in + n_out:]):
            if count != 1:
                acc /= count
            np.copyto(out.reshape(kd), acc, casting="unsafe")

    kernel.source = source
    return kernel
