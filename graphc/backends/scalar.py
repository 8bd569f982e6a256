"""Scalar printing shared by the per-element loop printers (Numba on the CPU, Numba CUDA):
an instruction as one scalar expression from its OpDef's scalar form, an input's index
under broadcasting, and the typed constants a kernel module names as globals. Printed
source names values only by position; constants are written as hexadecimal floats."""
from __future__ import annotations

import numpy as np


def scalar_code(ins, j: int, args: list, consts: dict, tag: str = "") -> str:
    """Instruction j as one scalar expression over `args`, from its OpDef's scalar form;
    typed constants it names are added to `consts` (module globals of the kernel source).
    `tag` keeps the attribute constants of different kernels in one module apart."""
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
        fields[name] = f"C{tag}{j}_{name}"
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


def has_scalar_form(ins) -> bool:
    """Whether an instruction can be printed by scalar_code."""
    return ins.opdef is not None and ins.opdef.scalar_form(ins.attrs) is not None


def varying_dims(in_shape, shape) -> list[int]:
    """The iteration dimensions an input's index varies along (its broadcast ones do not)."""
    lead = len(shape) - len(in_shape)
    return [lead + i for i, d in enumerate(in_shape) if not (d == 1 and shape[lead + i] != 1)]


def index_code(in_shape, shape, loop_vars) -> str:
    """The subscript reading an input of `in_shape` at the iteration point `loop_vars`."""
    lead = len(shape) - len(in_shape)
    varying = set(varying_dims(in_shape, shape))
    parts = [loop_vars[lead + i] if lead + i in varying else "0" for i in range(len(in_shape))]
    return "[" + ", ".join(parts) + "]" if parts else "[()]"


def constant_lines(consts: dict) -> list[str]:
    """Module-global definitions of the constants: dtype constructors and typed values
    (written as hexadecimal floats, so the source, hence its hash, pins their bits)."""
    lines = []
    for name in sorted(consts):
        value = consts[name]
        if isinstance(value, type):
            lines.append(f"{name} = np.{np.dtype(value).name}")
        else:
            lines.append(f"{name} = np.{np.dtype(type(value)).name}"
                         f"(float.fromhex('{float(value).hex()}'))")
    return lines
