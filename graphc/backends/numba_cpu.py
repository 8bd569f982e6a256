"""Fused kernels printed as Numba loops: one pass over the iteration space, every input read
once, reductions accumulated in float64. Used for groups of cheap arithmetic; groups with
transcendental functions run as tiled NumPy instead (NumPy's SIMD exp/tanh are 10-80x faster
per element than Numba's scalar libm calls on the machines we measured).

Sources are written to a user-only cache directory, named by the hash of their source, and
compiled with `cache=True`, so a later process loads the machine code from disk."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import sys

import numpy as np

from .codegen import FusedExpr

# op -> expression template over argument expressions {0}, {1}, ... (Numba scalar code)
SCALAR = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "({0} / {1})",
    "neg": "(-{0})", "abs": "abs({0})", "square": "({0} * {0})",
    "relu": "({0} if {0} > ZERO_{dt} else ZERO_{dt})",
    "maximum": "({0} if ({0} > {1} or {0} != {0}) else {1})",
    "minimum": "({0} if ({0} < {1} or {0} != {0}) else {1})",
    "greater": "({0} > {1})", "greater_equal": "({0} >= {1})", "less": "({0} < {1})",
    "equal": "({0} == {1})", "where": "({1} if {0} else {2})", "sign": "np.sign({0})",
    "sqrt": "math.sqrt({0})",
}
NUMBA_OPS = set(SCALAR) | {"cast", "leaky_relu"}


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
    return (size >= MIN_ELEMENTS and all(i.op in NUMBA_OPS for i in expr.instrs)
            and available())


def cache_dir() -> str:
    """A user-owned directory (mode 0700) for generated kernels and Numba's cache."""
    root = os.environ.get("GRAPHC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "graphc")
    path = os.path.join(root, "numba")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


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
        dt = np.dtype(ins.dtype)
        tname = f"T_{dt.name}"
        consts[tname] = dt.type
        if ins.op == "cast":
            code = f"{tname}({args[0]})"
        elif ins.op == "leaky_relu":
            consts[f"S{j}"] = dt.type(ins.attrs["negative_slope"])
            consts[f"ZERO_{dt.name}"] = dt.type(0)
            code = f"({args[0]} if {args[0]} > ZERO_{dt.name} else {args[0]} * S{j})"
        else:
            if ins.op == "relu":
                consts[f"ZERO_{dt.name}"] = dt.type(0)
            code = SCALAR[ins.op].format(*args, dt=dt.name)
            if dt.kind == "f" and ins.op not in ("greater", "greater_equal", "less", "equal"):
                code = f"{tname}({code})"  # keep float32 float32 whatever Python promotes
        body.append(f"t{j} = {code}")
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


def _load(source: str):
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    directory = cache_dir()
    path = os.path.join(directory, f"k_{digest}.py")
    if not os.path.exists(path):
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    name = f"graphc_kernel_{digest}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return module.kernel


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

    def kernel(*arrays):
        accs = []
        for acc, _, _ in reds:
            acc[...] = 0.0
            accs.append(acc)
        jit(*arrays[:n_in], *[arrays[n_in + k] for k in kept], *accs, *shape)
        for (acc, kd, count), out in zip(reds, arrays[n_in + n_out:]):
            if count != 1:
                acc /= count
            np.copyto(out.reshape(kd), acc, casting="unsafe")

    kernel.source = source
    return kernel
