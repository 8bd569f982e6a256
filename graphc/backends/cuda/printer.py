"""Fused kernels printed as Numba CUDA (CUDA backend): each fused group from the scheduler
(the FusedExpr the CPU printers print) becomes one module of flat `cuda.jit` kernels, every
op printed from its registry scalar form (OpDef.scalar), every scalar expression inlined
(no device functions: a kernel then compiles to PTX on its own, without a driver).

- No reductions: `kernel` is a grid-stride loop over the flattened iteration space; each
  input is read at the point's coordinates with its broadcast dimensions dropped.
- Reductions over the same axes: one block per output element (grid-stride over output
  elements); the block's threads stride over the reduced elements computing the whole chain
  (and writing the full-shape outputs), accumulate in float64 and reduce through shared
  memory; thread 0 writes the result (divided by the count for a mean).
- Reductions over different axes: the most common axes are reduced that way in `kernel`,
  which also writes the sources of the other reductions to full-shape scratch arrays; a
  kernel `reduce<g>` per other set of axes then reduces those the same way.
- An epilogue (elementwise work on the reductions' results) is the grid-stride kernel
  `epilogue`, launched after the others.

Extents are kernel arguments, not literals, so a source serves every shape with the same
broadcasting pattern. Sources are cached on disk as graphc.backends.kernel_cache describes;
under Numba's simulator (NUMBA_ENABLE_CUDASIM=1) the same source runs on host arrays."""
from __future__ import annotations

import math
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ...ops.registry import get_op
from ...schedule.expr import FusedExpr, Instr
from .. import kernel_cache
from ..scalar import constant_lines, has_scalar_form, index_code, scalar_code, varying_dims

RED_THREADS = 256  # the most threads a block reduction uses (its shared memory is sized so)
DEVICE_THREADS = 256
BLOCKS_PER_SM = 8  # 8 x 256 threads: an SM's full complement of resident threads
SIM_THREADS, SIM_BLOCKS = 32, 2  # the simulator runs each thread as a Python thread


def simulator() -> bool:
    """Whether numba.cuda is Numba's CUDA simulator."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM", 0))


def printable(expr: FusedExpr) -> bool:
    """Whether every instruction (epilogue included) has a scalar form to print."""
    exprs = [expr] + ([expr.epilogue] if expr.epilogue is not None else [])
    return all(has_scalar_form(ins) for e in exprs for ins in e.instrs)


_sm_count: list = []


def default_launch(n: int) -> tuple[int, int]:
    """(blocks, threads) for n elements: 1-2 blocks of 32 threads in the simulator; on a
    device 256 threads and enough blocks to cover n, at most BLOCKS_PER_SM per SM."""
    if simulator():
        return (1 if n <= SIM_THREADS else SIM_BLOCKS), SIM_THREADS
    if not _sm_count:
        from numba import cuda
        _sm_count.append(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    blocks = -(-max(n, 1) // DEVICE_THREADS)
    return max(1, min(blocks, BLOCKS_PER_SM * _sm_count[0])), DEVICE_THREADS


# --- the kernels of one fused group ------------------------------------------------------
@dataclass
class _Stage:
    """One kernel of the module: what it computes and where its array arguments come from
    (("a", i): the caller's i-th array, ("s", m): scratch array m)."""

    name: str
    expr: FusedExpr
    args: list
    shared: dict = field(default_factory=dict)
    stores: list = field(default_factory=list)  # [(m, j)]: scratch m <- instruction j
    tag: str = ""  # keeps attribute constants of different kernels apart

    @property
    def axes(self):
        """The axes its blocks reduce, or None for a grid-stride elementwise kernel."""
        return self.expr.reductions[0][2] if self.expr.reductions else None


def _identity(j: int, dtype) -> Instr:
    dt = np.dtype(dtype)
    return Instr("cast", {"dtype": dt.name}, [("in", j)], dt, None, get_op("cast"))


def _stages(expr: FusedExpr, shared: dict) -> tuple[list, list]:
    """The kernels of a fused group, in launch order, and the scratch arrays (shape, dtype)
    they pass values through."""
    n_in, n_out, n_red = len(expr.inputs), len(expr.outputs), len(expr.reductions)
    groups: dict = {}  # axes -> the reductions over them
    for k, r in enumerate(expr.reductions):
        groups.setdefault(tuple(r[2]), []).append(k)
    main_axes = max(groups, key=lambda a: len(groups[a])) if groups else None
    scratch, scratch_of = [], {}  # scratch_of: instruction -> its scratch array
    rest = [_second_reduction(expr, f"reduce{g + 1}", members, scratch, scratch_of)
            for g, members in enumerate(m for a, m in groups.items() if a != main_axes)]
    main_members = groups.get(main_axes, [])
    main = FusedExpr(expr.shape, expr.inputs, expr.instrs, expr.outputs,
                     [expr.reductions[k] for k in main_members])
    args = [("a", k) for k in range(n_in)] + \
        [("a", n_in + k) for k in range(n_out) if k not in shared] + \
        [("a", n_in + n_out + k) for k in main_members] + [("s", m) for m in range(len(scratch))]
    stages = [_Stage("kernel", main, args, dict(shared), [(m, j) for j, m in scratch_of.items()])]
    stages += rest
    epi = expr.epilogue
    if epi is not None:
        base = n_in + n_out + n_red
        n_ein = len(epi.inputs)
        stages.append(_Stage("epilogue", epi, [("a", base + k) for k in range(n_ein)]
                             + [("a", base + n_ein + k) for k in range(len(epi.outputs))],
                             tag="e"))
    return stages, scratch


def _second_reduction(expr, name: str, members: list, scratch: list, scratch_of: dict):
    """A kernel reducing, over their own axes, the sources of the reductions `members`,
    which the first kernel writes to scratch arrays (added to `scratch`)."""
    sources = list(dict.fromkeys(expr.reductions[k][1] for k in members))
    for j in sources:
        if j not in scratch_of:
            scratch_of[j] = len(scratch)
            scratch.append((tuple(expr.shape), np.dtype(expr.instrs[j].dtype)))
    sub = FusedExpr(expr.shape, [(None, expr.shape)] * len(sources),
                    [_identity(p, expr.instrs[j].dtype) for p, j in enumerate(sources)],
                    [], [(r[0], sources.index(r[1]), r[2], r[3], r[4])
                         for r in (expr.reductions[k] for k in members)])
    n_full = len(expr.inputs) + len(expr.outputs)
    return _Stage(name, sub, [("s", scratch_of[j]) for j in sources]
                  + [("a", n_full + k) for k in members], tag=name)


def _decompose(var: str, dims: list, extent: Callable, name: str = "j") -> list[str]:
    """Lines setting {name}{d} for each of `dims` from the flat C-order index `var`."""
    if not dims:
        return []
    if len(dims) == 1:
        return [f"{name}{dims[0]} = {var}"]
    lines = [f"q = {var}"]
    for d in reversed(dims[1:]):
        lines += [f"{name}{d} = q % {extent(d)}", f"q = q // {extent(d)}"]
    return lines + [f"{name}{dims[0]} = q"]


def _extent(d: int) -> str:
    return f"n{d}"


def _product(dims: list, extent: Callable) -> str:
    return " * ".join(extent(d) for d in dims) if dims else "1"


def _subscript(names: list) -> str:
    return "[" + ", ".join(names) + "]" if names else "[()]"


def _element(st: _Stage, consts: dict, inner: list) -> list[str]:
    """The per-element body: loads listed in `inner`, the chain, the stores."""
    e = st.expr
    loop_vars = [f"j{d}" for d in range(len(e.shape))]
    lines = [f"x{k} = i{k}{index_code(e.inputs[k][1], e.shape, loop_vars)}" for k in inner]
    for j, ins in enumerate(e.instrs):
        args = [f"x{i}" if kind == "in" else f"t{i}" for kind, i in ins.args]
        lines.append(f"t{j} = {scalar_code(ins, j, args, consts, st.tag)}")
    idx = _subscript(loop_vars)
    for k, (_, j) in enumerate(e.outputs):
        target = f"i{st.shared[k]}" if k in st.shared else f"o{k}"
        lines.append(f"{target}{idx} = t{j}")
    lines += [f"s{m}{idx} = t{j}" for m, j in st.stores]
    return lines


def _params(st: _Stage) -> list[str]:
    e = st.expr
    return [f"i{k}" for k in range(len(e.inputs))] + \
        [f"o{k}" for k in range(len(e.outputs)) if k not in st.shared] + \
        [f"r{k}" for k in range(len(e.reductions))] + [f"s{m}" for m, _ in st.stores] + \
        [f"n{d}" for d in range(len(e.shape))]


def _map_kernel(st: _Stage, consts: dict) -> list[str]:
    """A grid-stride loop over the flattened iteration space."""
    e = st.expr
    dims = [d for d, n in enumerate(e.shape) if n != 1]  # size-1 dims: coordinate 0
    fixed = [k for k, (_, s) in enumerate(e.inputs) if not varying_dims(s, e.shape)]
    inner = [k for k in range(len(e.inputs)) if k not in fixed]
    loop_vars = [f"j{d}" for d in range(len(e.shape))]
    head = [f"j{d} = 0" for d in range(len(e.shape)) if d not in dims]
    head += [f"x{k} = i{k}{index_code(e.inputs[k][1], e.shape, loop_vars)}" for k in fixed]
    head += [f"total = {_product(dims, _extent)}",
             "start = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x",
             "step = cuda.gridDim.x * cuda.blockDim.x",
             "for flat in range(start, total, step):"]
    body = _decompose("flat", dims, _extent) + _element(st, consts, inner)
    return ["    " + h for h in head] + ["        " + b for b in body]


def _reduce_kernel(st: _Stage, consts: dict) -> list[str]:
    """One block per output element: its threads stride over the reduced elements, then
    reduce their float64 partial sums through shared memory."""
    e = st.expr
    axes = set(st.axes)
    n_red = len(e.reductions)
    kept = [d for d, n in enumerate(e.shape) if n != 1 and d not in axes]
    reduced = [d for d, n in enumerate(e.shape) if n != 1 and d in axes]
    per_block = set(kept) | {d for d, n in enumerate(e.shape) if n == 1}
    depth = {}  # input -> 0: once per kernel, 1: once per output element, 2: per element
    for k, (_, s) in enumerate(e.inputs):
        vary = set(varying_dims(s, e.shape))
        depth[k] = 0 if not vary else (1 if vary <= per_block else 2)
    loop_vars = [f"j{d}" for d in range(len(e.shape))]

    def loads(level):
        return [f"x{k} = i{k}{index_code(e.inputs[k][1], e.shape, loop_vars)}"
                for k in range(len(e.inputs)) if depth[k] == level]

    consts["T_float64"] = np.float64
    head = [f"part = cuda.shared.array(({n_red}, {RED_THREADS}), T_float64)",
            "tid = cuda.threadIdx.x", "nt = cuda.blockDim.x"]
    head += [f"j{d} = 0" for d, n in enumerate(e.shape) if n == 1]
    head += loads(0)
    head += [f"nk = {_product(kept, _extent)}", f"nr = {_product(reduced, _extent)}",
             "for o in range(cuda.blockIdx.x, nk, cuda.gridDim.x):"]
    outer = _decompose("o", kept, _extent) + loads(1)
    outer += [f"a{k} = 0.0" for k in range(n_red)]
    outer.append("for r in range(tid, nr, nt):")
    inner = _decompose("r", reduced, _extent) + _element(st, consts, [k for k in depth
                                                                  if depth[k] == 2])
    inner += [f"a{k} += T_float64(t{r[1]})" for k, r in enumerate(e.reductions)]
    tail = _block_sum(n_red) + ["if tid == 0:"] + ["    " + x for x in _results(e)]
    return ["    " + h for h in head] + ["        " + b for b in outer] + \
        ["            " + b for b in inner] + ["        " + b for b in tail]


def _block_sum(n_red: int) -> list[str]:
    """Lines summing each thread's partial sums a<k> into part[k, 0]: a tree over shared
    memory for any block size (the upper half folds onto the lower, odd sizes included)."""
    lines = [f"part[{k}, tid] = a{k}" for k in range(n_red)]
    lines += ["cuda.syncthreads()", "m = nt", "while m > 1:", "    h = (m + 1) // 2",
              "    if tid < m - h:"]
    lines += [f"        part[{k}, tid] += part[{k}, tid + h]" for k in range(n_red)]
    return lines + ["    cuda.syncthreads()", "    m = h"]


def _results(e: FusedExpr) -> list[str]:
    """Thread 0's stores of the block's sums into output element o of each reduction."""
    lines = []
    for k, (_, _, _, kind, out_shape) in enumerate(e.reductions):
        out_dims = [d for d, n in enumerate(out_shape) if n != 1]
        lines += _decompose("o", out_dims, lambda d: f"r{k}.shape[{d}]", "p")
        idx = _subscript([f"p{d}" if d in out_dims else "0" for d in range(len(out_shape))])
        lines.append(f"r{k}{idx} = part[{k}, 0]" + (" / nr" if kind == "mean" else ""))
    return lines


def _module(stages: list) -> str:
    consts: dict = {}
    kernels = []
    for st in stages:
        body = _reduce_kernel(st, consts) if st.axes is not None else _map_kernel(st, consts)
        kernels += ["", "", "@cuda.jit(cache=True)", f"def {st.name}({', '.join(_params(st))}):"]
        kernels += body
    # constants are module globals, which Numba freezes into the machine code (and the
    # source hash, hence the cache key, covers their values)
    lines = ["import math", "import numpy as np", "from numba import cuda", ""]
    return "\n".join(lines + constant_lines(consts) + kernels) + "\n"


def _check(expr: FusedExpr) -> None:
    for e in [expr] + ([expr.epilogue] if expr.epilogue is not None else []):
        for ins in e.instrs:
            if not has_scalar_form(ins):
                raise ValueError(f"op {ins.op!r} has no scalar form: a fused group holding it "
                                 f"cannot be printed as a CUDA kernel")


def print_cuda(expr: FusedExpr, shared: dict | None = None) -> str:
    """Source of one module defining `kernel(*inputs, *outputs not in shared, *reduction
    outputs, *extents)` (and, for reductions over different axes or an epilogue, the
    kernels that follow it; see the module docstring). `shared` maps an output to the
    input whose buffer it overwrites: the kernel stores through that input."""
    _check(expr)
    return _module(_stages(expr, dict(shared or {}))[0])


# --- launching ----------------------------------------------------------------------------
def _type_name(dtype: np.dtype) -> str:
    dt = np.dtype(dtype)
    return "boolean" if dt.kind == "b" else dt.name


def _spec(a) -> tuple | None:
    """(dtype, ndim) of an array argument (NumPy, CuPy, any __cuda_array_interface__)."""
    if hasattr(a, "dtype") and hasattr(a, "ndim"):
        return np.dtype(a.dtype), a.ndim
    cai = a.__cuda_array_interface__
    return np.dtype(cai["typestr"]), len(cai["shape"])


def _signature(specs: list) -> str:
    """A Numba signature string, e.g. "void(float32[:, :], float32[:], int64)"."""
    parts = []
    for s in specs:
        if s is None:
            parts.append("int64")
        elif s[1] == 0:
            parts.append(f"Array({_type_name(s[0])}, 0, 'A')")
        else:
            parts.append(f"{_type_name(s[0])}[{', '.join([':'] * s[1])}]")
    return f"void({', '.join(parts)})"


_external: dict = {}  # stream pointer -> Numba's wrapper of it


def _numba_stream(stream):
    """The stream to launch on: a Numba stream as given, another library's (CuPy) wrapped;
    by default CuPy's current stream when CuPy is in use."""
    if stream is None:
        cupy = sys.modules.get("cupy")
        if cupy is None:
            return None
        stream = cupy.cuda.get_current_stream()
    from numba.cuda.cudadrv.driver import Stream
    if isinstance(stream, Stream):
        return stream
    ptr = int(stream.ptr)
    if ptr == 0:
        return None
    if ptr not in _external:
        from numba import cuda
        _external[ptr] = cuda.external_stream(ptr)
    return _external[ptr]


class FusedKernel:
    """A compiled fused group: call it as kernel(*inputs, *outputs, *reduction_outputs)
    (then, with an epilogue, *epilogue_inputs, *epilogue_outputs), optionally with
    stream=. `.source` is the module's source; `.ptx()` compiles each kernel to PTX."""

    def __init__(self, expr: FusedExpr, shared: dict | None, launch: Callable | None):
        _check(expr)
        self.expr = expr
        self.shared = dict(shared or {})
        self.launch = launch or default_launch
        self.stages, self.scratch_specs = _stages(expr, self.shared)
        self.source = _module(self.stages)
        self._module = _simulated(kernel_cache.load_module(self.source))
        n = len(expr.inputs) + len(expr.outputs) + len(expr.reductions)
        if expr.epilogue is not None:
            n += len(expr.epilogue.inputs) + len(expr.epilogue.outputs)
        self.n_args = n
        self._scratch = None
        self._loaded: set = set()  # stages whose dispatcher has compiled or loaded
        self._wrapped: dict = {}  # argument position -> (its interface, Numba's view of it)
        self._last = None  # per stage, the argument specs of the last call

    def __call__(self, *arrays, stream=None) -> None:
        sim = simulator()
        calls = self._calls(arrays)
        s = None if sim else _numba_stream(stream)
        for st, args in calls:
            if not sim:
                self._ensure(st, args)
            blocks, threads = self._config(st)
            config = (blocks, threads) if s is None else (blocks, threads, s)
            getattr(self._module, st.name)[config](*args)

    def prepare(self, *arrays) -> None:
        """The first call's one-time work, without launching anything: allocate the scratch
        arrays and, on a device, compile (or load from disk) every kernel for these arrays'
        types. Call it before capturing a CUDA graph: a captured call then neither
        allocates nor compiles."""
        calls = self._calls(arrays)
        if not simulator():
            for st, args in calls:
                self._ensure(st, args)

    def _calls(self, arrays) -> list:
        """(stage, its arguments) for each kernel, in launch order."""
        if len(arrays) != self.n_args:
            raise TypeError(f"fused CUDA kernel takes {self.n_args} arrays, got {len(arrays)}")
        scratch = self._scratch_arrays(arrays)
        if simulator():
            arrays = [_in_place(a) for a in arrays]
            scratch = [_in_place(a) for a in scratch]
        else:
            arrays = [self._device(p, a) for p, a in enumerate(arrays)]
            scratch = [self._device(self.n_args + m, a) for m, a in enumerate(scratch)]
        calls = [(st, self._arguments(st, arrays, scratch)) for st in self.stages]
        self._last = [[None if isinstance(a, int) else _spec(a) for a in args]
                      for _, args in calls]
        return calls

    def _device(self, position: int, a):
        """Numba's view of a device array, made without synchronizing the stream it names
        (a synchronization cannot be captured into a CUDA graph): kernels use it in the
        launch stream's order."""
        from numba import cuda
        from numba.cuda.cudadrv.devicearray import DeviceNDArray
        cai = getattr(a, "__cuda_array_interface__", None)
        if cai is None or isinstance(a, DeviceNDArray):
            return a  # a host array Numba copies over and back, or Numba's own
        key = (cai["data"][0], tuple(cai["shape"]), cai.get("strides"), cai["typestr"])
        hit = self._wrapped.get(position)
        if hit is None or hit[0] != key:
            hit = self._wrapped[position] = (key, cuda.as_cuda_array(a, sync=False))
        return hit[1]

    def _scratch_arrays(self, arrays) -> list:
        if self._scratch is None:
            if simulator():
                self._scratch = [np.empty(s, d) for s, d in self.scratch_specs]
            elif any(type(a).__module__.startswith("cupy") for a in arrays):
                import cupy  # its memory pool, as the CUDA runtime's other buffers
                self._scratch = [cupy.empty(s, d) for s, d in self.scratch_specs]
            else:
                from numba import cuda
                self._scratch = [cuda.device_array(s, d) for s, d in self.scratch_specs]
        return self._scratch

    def _arguments(self, st: _Stage, arrays, scratch) -> list:
        arrs = [arrays[i] if kind == "a" else scratch[i] for kind, i in st.args]
        return arrs + [int(n) for n in st.expr.shape]

    def _config(self, st: _Stage) -> tuple[int, int]:
        n = math.prod(st.expr.shape)
        blocks, threads = self.launch(n)
        if st.axes is None:
            return int(blocks), int(threads)
        axes = st.axes
        n_out = math.prod(d for a, d in enumerate(st.expr.shape) if a not in axes)
        n_red = math.prod(d for a, d in enumerate(st.expr.shape) if a in axes)
        # no more threads than reduced elements (rounded to a warp) or the shared memory
        # holds, as many threads in all as launch() asked for, no more blocks than outputs
        fewer = min(int(threads), RED_THREADS, max(32, -(-n_red // 32) * 32))
        blocks = -(-int(blocks) * int(threads) // fewer)
        return max(1, min(blocks, n_out)), fewer

    def _ensure(self, st: _Stage, args) -> None:
        """Compile or load the stage's kernel for these arguments. Loading Numba's cached
        machine code is where a damaged index or data file fails: before any launch."""
        if st.name in self._loaded:
            return
        fn = getattr(self._module, st.name)
        types = tuple(fn.typeof_pyval(a) for a in args)
        try:
            fn.compile(types)
        except kernel_cache.typing_errors():
            raise  # a kernel Numba cannot type is a bug in graphc, not a damaged cache
        except Exception as e:  # noqa: BLE001 - retried once, then raised
            self._module = _simulated(kernel_cache.rebuild_module(self.source, fn, e,
                                                                   stacklevel=4))
            self._loaded.clear()
            getattr(self._module, st.name).compile(types)
        self._loaded.add(st.name)

    def ptx(self, *arrays, cc: tuple = (9, 0)) -> dict:
        """{kernel name: PTX} for the argument types of `arrays` (as the call takes them)
        or, without arrays, of the last call; compiled from the plain Python functions."""
        from numba import cuda
        if arrays:
            if len(arrays) != self.n_args:
                raise TypeError(f"fused CUDA kernel takes {self.n_args} arrays, "
                                f"got {len(arrays)}")
            fake = [_Fake(*spec) for spec in self.scratch_specs]
            specs = [[None if isinstance(a, int) else _spec(a)
                      for a in self._arguments(st, arrays, fake)] for st in self.stages]
        elif self._last is not None:
            specs = self._last
        else:
            raise ValueError("no argument types: pass the arrays, or call the kernel first")
        out = {}
        for st, sp in zip(self.stages, specs):
            fn = getattr(self._module, st.name).py_func
            out[st.name], _ = cuda.compile_ptx(fn, _signature(sp), cc=cc)
        return out


# Python's math raises where a device returns NaN or infinity (log(-1), sqrt(-1),
# exp(1000)); NumPy's functions give the device's IEEE results
_IEEE_MATH = types.SimpleNamespace(**{n: getattr(math, n) for n in dir(math) if n[0] != "_"})
_IEEE_MATH.__dict__.update(exp=np.exp, expm1=np.expm1, log=np.log, log1p=np.log1p,
                           sqrt=np.sqrt, pow=np.power)


def _simulated(module):
    """The module, with IEEE math when it runs in the simulator (its source unchanged)."""
    if simulator():
        module.math = _IEEE_MATH
    return module


def _in_place(a):
    """The simulator's device-array view of a host array, without its copy in and out
    (which needs a contiguous array and undoes in-place writes when two arguments are one
    buffer: the untouched copy is copied back last)."""
    if isinstance(a, np.ndarray) and a.ndim > 0:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray(a)
    return a


class _Fake:
    """Stands in for a scratch array where only its type matters."""

    def __init__(self, shape, dtype):
        self.dtype, self.ndim = np.dtype(dtype), len(shape)


def compile_fused(expr: FusedExpr, shared: dict | None = None,
                  launch: Callable | None = None) -> FusedKernel:
    """A callable kernel(*inputs, *outputs, *reduction_outputs[, *epilogue_inputs,
    *epilogue_outputs], stream=None) running the group's CUDA kernels: the calling
    convention of the CPU's compile_numba (every output is passed; shared ones are ignored;
    reduction outputs receive the final values). `launch(n_elements) -> (blocks, threads)`
    sets the grid (default_launch when None)."""
    return FusedKernel(expr, shared, launch)
