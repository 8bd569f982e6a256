"""The code generator shared by the backends: a fused group becomes an expression program
(FusedExpr), which printers turn into source for one kernel (NumPy here; Numba and CUDA C
print the same program). Generated source names only inputs, outputs and temporaries by
position: no user string ever enters it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CHUNK_ELEMENTS = 1 << 15  # elements per tile: the tile's temporaries stay in L2


@dataclass
class Instr:
    op: str
    attrs: dict
    args: list  # ("in", k) external input k, ("v", j) result of instruction j
    dtype: np.dtype
    reference: object = None  # the op's NumPy reference, for the generic emitter


@dataclass
class FusedExpr:
    """One fused group: straight-line elementwise instructions over an iteration shape,
    full-shape outputs and trailing sum/mean reductions."""

    shape: tuple
    inputs: list  # [(slot, shape)]
    instrs: list  # [Instr]
    outputs: list  # [(slot, instr index)]
    reductions: list = field(default_factory=list)  # [(slot, instr, axes, kind, out shape)]
    epilogue: "FusedExpr | None" = None  # runs after the loop over the reductions' results

    def describe(self) -> str:
        names = " -> ".join(i.op for i in self.instrs)
        reds = "".join(f" + {r[3]}{r[2]}" for r in self.reductions)
        epi = f" ; then {self.epilogue.describe()}" if self.epilogue else ""
        return names + reds + epi


def build_expr(kernel, plan, shapes) -> FusedExpr:
    """The expression program of a fused kernel (see passes.fuse)."""
    late = set(kernel.epilogue)
    index_of: dict[int, int] = {}
    main_inputs = list(dict.fromkeys(
        s for st in kernel.steps if st.slot not in late for s in st.inputs
        if s in kernel.inputs))
    in_pos = {s: k for k, s in enumerate(main_inputs)}
    instrs, reductions = [], []
    for st in kernel.steps:
        if st.slot in late:
            continue
        if st.slot in kernel.reductions:
            src, axes, kind = kernel.reductions[st.slot]
            if src not in index_of:  # a sum straight over an input: read it through a copy
                index_of[src] = len(instrs)
                dtype = st.node.inputs[0].dtype
                instrs.append(Instr("cast", {"dtype": np.dtype(dtype).name},
                                    [("in", in_pos[src])], dtype, None))
            reductions.append((st.slot, index_of[src], tuple(axes), kind, tuple(shapes[st.slot])))
            continue
        args = [("v", index_of[s]) if s in index_of else ("in", in_pos[s]) for s in st.inputs]
        index_of[st.slot] = len(instrs)
        instrs.append(Instr(st.op.name, dict(st.node.attrs), args, st.node.dtype,
                            st.op.reference))
    red_slots = {r[0] for r in reductions}
    outputs = [(s, index_of[s]) for s in kernel.outputs if s not in red_slots | late]
    expr = FusedExpr(tuple(kernel.shape), [(s, tuple(shapes[s])) for s in main_inputs],
                     instrs, outputs, reductions)
    if late:
        expr.epilogue = _epilogue_expr(kernel, shapes, late)
    return expr


def _epilogue_expr(kernel, shapes, late) -> FusedExpr:
    """The epilogue as its own program: its inputs are slots (kernel inputs or reduction
    results), so it can run as a second, small kernel after the main loop."""
    steps = [st for st in kernel.steps if st.slot in late]
    index_of: dict[int, int] = {}
    inputs = list(dict.fromkeys(s for st in steps for s in st.inputs if s not in late))
    in_pos = {s: k for k, s in enumerate(inputs)}
    instrs = []
    for st in steps:
        args = [("v", index_of[s]) if s in index_of else ("in", in_pos[s]) for s in st.inputs]
        index_of[st.slot] = len(instrs)
        instrs.append(Instr(st.op.name, dict(st.node.attrs), args, st.node.dtype,
                            st.op.reference))
    outputs = [(s, index_of[s]) for s in kernel.outputs if s in late]
    return FusedExpr(tuple(kernel.epilogue_shape), [(s, tuple(shapes[s])) for s in inputs],
                     instrs, outputs)


# --- the tiled NumPy printer ----------------------------------------------------------------
UFUNCS = {"add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
          "neg": "negative", "exp": "exp", "log": "log", "sqrt": "sqrt", "abs": "absolute",
          "square": "square", "tanh": "tanh", "maximum": "maximum", "minimum": "minimum",
          "greater": "greater", "greater_equal": "greater_equal", "less": "less",
          "equal": "equal", "pow": "power", "sign": "sign"}


def _emit(ins: Instr, args: list, out: str, k: int) -> list:
    """Lines computing `ins` into array `out` (never one of its arguments' tiles: the caller
    takes the output tile before it frees the operands')."""
    if ins.op in UFUNCS:
        return [f"np.{UFUNCS[ins.op]}({', '.join(args)}, out={out})"]
    a = args[0] if args else None
    if ins.op == "relu":
        return [f"np.maximum({a}, 0, out={out})"]
    if ins.op == "sigmoid":  # 1/(1+e^-x) = (1 + tanh(x/2)) / 2: stable and SIMD-fast
        return [f"np.multiply({a}, 0.5, out={out})", f"np.tanh({out}, out={out})",
                f"np.multiply({out}, 0.5, out={out})", f"np.add({out}, 0.5, out={out})"]
    if ins.op == "cast":
        return [f"np.copyto({out}, {a}, casting='unsafe')"]
    if ins.op == "where":
        return [f"np.copyto({out}, {args[2]})", f"np.copyto({out}, {args[1]}, where={a})"]
    # every other op: its NumPy reference on the tile, copied into place
    return [f"np.copyto({out}, R{k}({', '.join(args)}), casting='unsafe')"]


def _last_uses(expr: FusedExpr) -> dict:
    last = {}
    for j, ins in enumerate(expr.instrs):
        for kind, i in ins.args:
            if kind == "v":
                last[i] = j
    for _, j in expr.outputs:
        last[j] = len(expr.instrs)
    for r in expr.reductions:
        last[r[1]] = len(expr.instrs)
    return last


def print_numpy(expr: FusedExpr, aliased_outputs=()) -> tuple[str, dict, list]:
    """Source of `kernel(*inputs, *outputs, *reduction_outputs)` processing the iteration
    space in row tiles, the namespace it needs, and its scratch buffers' (shape, dtype)."""
    shape = expr.shape
    rows = shape[0] if shape else 1
    inner = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
    tile = max(1, min(rows, CHUNK_ELEMENTS // max(inner, 1)))
    tiled = len(shape) >= 1 and rows > tile
    tshape = ((tile,) + tuple(shape[1:])) if shape else ()
    ns: dict = {"np": np}
    n_in, n_out = len(expr.inputs), len(expr.outputs)
    params = [f"i{k}" for k in range(n_in)] + [f"o{k}" for k in range(n_out)] + \
        [f"r{k}" for k in range(len(expr.reductions))]
    body: list[str] = []
    # register allocation of scratch tiles, per dtype
    scratch: list = []
    free: dict = {}
    last = _last_uses(expr)
    out_of = {j: k for k, (_, j) in enumerate(expr.outputs)}
    loc: dict[int, str] = {}
    temp_of: dict[int, int] = {}

    def take(dtype) -> int:
        pool = free.setdefault(np.dtype(dtype).str, [])
        if pool:
            return pool.pop()
        scratch.append((tshape, np.dtype(dtype)))
        return len(scratch) - 1

    def sl(name: str, arr_shape) -> str:
        if not tiled:
            return name
        if len(arr_shape) == len(shape) and arr_shape[0] == rows and rows > 1:
            return f"{name}[r0:r1]"
        return name

    ins_exprs = [sl(f"i{k}", s) for k, (_, s) in enumerate(expr.inputs)]
    for j, ins in enumerate(expr.instrs):
        args = [ins_exprs[i] if kind == "in" else loc[i] for kind, i in ins.args]
        if ins.reference is not None and ins.op not in UFUNCS:
            ns[f"R{j}"] = _bind(ins)
        direct = j in out_of and out_of[j] not in aliased_outputs
        if direct:
            target = sl(f"o{out_of[j]}", shape)
            lines = _emit(ins, args, target, j)
        else:
            t = take(ins.dtype)
            temp_of[j] = t
            target = f"s{t}[:n]" if tiled else f"s{t}"
            lines = _emit(ins, args, target, j)
        body.extend(lines)
        loc[j] = target
        for kind, i in ins.args:  # operands dying here hand their tile back
            if kind == "v" and last.get(i) == j and i in temp_of:
                free.setdefault(np.dtype(expr.instrs[i].dtype).str, []).append(temp_of.pop(i))
    for k, (_, j) in enumerate(expr.outputs):
        if k in aliased_outputs or j not in out_of or out_of[j] != k:
            body.append(f"np.copyto({sl(f'o{k}', shape)}, {loc[j]})")
    pre, post = [], []
    for k, (_, j, axes, kind, out_shape) in enumerate(expr.reductions):
        kd = tuple(1 if a in axes else d for a, d in enumerate(shape))
        ns[f"KD{k}"] = kd
        if tiled and 0 in axes:
            scratch.append((kd, np.dtype(expr.instrs[j].dtype)))
            part = f"s{len(scratch) - 1}"
            pre.append(f"acc{k} = r{k}.reshape(KD{k}); acc{k}[...] = 0")
            body.append(f"np.sum({loc[j]}, axis={axes}, keepdims=True, out={part})")
            body.append(f"np.add(acc{k}, {part}, out=acc{k})")
        elif tiled:
            pre.append(f"acc{k} = r{k}.reshape(KD{k})")
            body.append(f"np.sum({loc[j]}, axis={axes}, keepdims=True, out=acc{k}[r0:r1])")
        else:
            body.append(f"np.sum({loc[j]}, axis={axes}, keepdims=True, out=r{k}.reshape(KD{k}))")
        if kind == "mean":
            count = int(np.prod([shape[a] for a in axes], dtype=np.int64))
            post.append(f"np.divide(r{k}, {count}, out=r{k})")
    lines = [f"def kernel({', '.join(params)}):"]
    lines += [f"    {p}" for p in pre]
    if tiled:
        lines.append(f"    for r0 in range(0, {rows}, {tile}):")
        lines.append(f"        r1 = min(r0 + {tile}, {rows})")
        lines.append("        n = r1 - r0")
        lines += [f"        {b}" for b in body]
    else:
        lines += [f"    {b}" for b in body]
    lines += [f"    {p}" for p in post]
    return "\n".join(lines) + "\n", ns, scratch


def _bind(ins: Instr):
    ref, attrs = ins.reference, ins.attrs
    return (lambda *a: ref(*a, **attrs)) if attrs else ref


def compile_numpy(expr: FusedExpr, aliased_outputs=()):
    """A callable kernel(*inputs, *outputs, *reductions) with its scratch bound in."""
    source, ns, scratch = print_numpy(expr, aliased_outputs)
    for t, (shape, dtype) in enumerate(scratch):
        ns[f"s{t}"] = np.empty(shape, dtype)
    exec(compile(source, "<graphc fused kernel>", "exec"), ns)  # noqa: S102 - generated
    fn = ns["kernel"]
    fn.source = source
    return fn
