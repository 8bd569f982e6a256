"""The tiled NumPy printer (CPU backend): a FusedExpr becomes one Python function that
walks the iteration space in row tiles, each op a NumPy `out=` call into a scratch tile
that stays in cache. Every op prints: through FORMS where a ufunc or a short in-place
sequence computes it, else through its NumPy reference."""
from __future__ import annotations

import numpy as np

from ...schedule.expr import FusedExpr, Instr

CHUNK_ELEMENTS = 1 << 15  # elements per tile: the tile's temporaries stay in L2


# op -> lines computing it into array {out} from argument arrays {0}, {1}, ...: a ufunc
# with out=, or a short sequence of in-place steps. Ops missing here run their NumPy
# reference on the tile and copy the result into place.
FORMS = {
    **{op: [f"np.{ufunc}({{args}}, out={{out}})"] for op, ufunc in {
        "add": "add", "sub": "subtract", "mul": "multiply", "div": "divide",
        "neg": "negative", "exp": "exp", "log": "log", "sqrt": "sqrt", "abs": "absolute",
        "square": "square", "tanh": "tanh", "maximum": "maximum", "minimum": "minimum",
        "greater": "greater", "greater_equal": "greater_equal", "less": "less",
        "equal": "equal", "pow": "power", "sign": "sign"}.items()},
    "relu": ["np.maximum({0}, 0, out={out})"],
    # 1/(1+e^-x) = (1 + tanh(x/2)) / 2: stable and SIMD-fast
    "sigmoid": ["np.multiply({0}, 0.5, out={out})", "np.tanh({out}, out={out})",
                "np.multiply({out}, 0.5, out={out})", "np.add({out}, 0.5, out={out})"],
    "cast": ["np.copyto({out}, {0}, casting='unsafe')"],
    "where": ["np.copyto({out}, {2})", "np.copyto({out}, {1}, where={0})"],
}


def _emit(ins: Instr, args: list, out: str, k: int) -> list:
    """Lines computing `ins` into array `out` (never one of its arguments' tiles: the caller
    takes the output tile before it frees the operands')."""
    form = FORMS.get(ins.op)
    if form is not None:
        return [line.format(*args, args=", ".join(args), out=out) for line in form]
    return [f"np.copyto({out}, R{k}({', '.join(args)}), casting='unsafe')"]


def _live(expr: FusedExpr) -> set:
    """The instructions an output or a reduction needs. A fused group can hold steps whose
    values no output keeps (a value its reader recomputes, see schedule.recompute): they
    are not printed."""
    live = {j for _, j in expr.outputs} | {r[1] for r in expr.reductions}
    for j in range(len(expr.instrs) - 1, -1, -1):
        if j in live:
            live.update(i for kind, i in expr.instrs[j].args if kind == "v")
    return live


def _last_input_read(expr: FusedExpr, live: set) -> int:
    """The last live instruction reading an input (-1 when none does)."""
    return max((j for j in live if any(kind == "in" for kind, _ in expr.instrs[j].args)),
               default=-1)


def _last_uses(expr: FusedExpr, live: set) -> dict:
    last = {}
    for j, ins in enumerate(expr.instrs):
        if j not in live:
            continue
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
    live = _live(expr)
    last = _last_uses(expr, live)
    # An output that overwrites an input's buffer (in place, or a parameter's storage:
    # same shape, same layout) is written directly by its instruction once every input of
    # the tile has been read, when the instruction is one call that reads its arguments
    # before writing (a ufunc with out=, whose exact overlap NumPy handles); else through a
    # scratch tile and a copy at the end.
    inputs_read_by = _last_input_read(expr, live)
    out_of = {j: k for k, (_, j) in enumerate(expr.outputs)}
    loc: dict[int, str] = {}
    temp_of: dict[int, int] = {}
    written: set[int] = set()  # outputs their instruction writes directly

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
        if j not in live:
            continue
        args = [ins_exprs[i] if kind == "in" else loc[i] for kind, i in ins.args]
        if ins.reference is not None and ins.op not in FORMS:
            ns[f"R{j}"] = _bind(ins)
        direct = j in out_of and (out_of[j] not in aliased_outputs or (
            j >= inputs_read_by and len(FORMS.get(ins.op, ())) == 1))
        if direct:
            written.add(out_of[j])
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
        if k not in written:
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
    if tiled and body:
        lines.append(f"    for r0 in range(0, {rows}, {tile}):")
        lines.append(f"        r1 = min(r0 + {tile}, {rows})")
        lines.append("        n = r1 - r0")
        lines += [f"        {b}" for b in body]
    else:
        lines += [f"    {b}" for b in body]
    lines += [f"    {p}" for p in post]
    if len(lines) == 1:  # nothing left to compute (every value recomputed by its readers)
        lines.append("    pass")
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
