"""Matmul epilogue fusion for SGD (schedule stage): a weight update rides in its
gradient's GEMM when the backend can run `W += alpha * A @ B` (Capabilities.gemm_update)."""
from __future__ import annotations

import numpy as np

from .kernel import Kernel, view_bases


def fuse_gemm_updates(kernels: list[Kernel], plan, shapes) -> list[Kernel]:
    """Matmul epilogue fusion for SGD: a matmul whose result G only feeds `W - lr * G`, the
    in-place update of parameter W (no later reader), becomes one "gemm" kernel computing
    W += (-lr) * A @ B. The gradient is never stored and the update costs no extra pass.
    Where the update reads G transposed (a recurrent weight's gradient, summed over the
    steps as h^T @ dz), the kernel computes W += (-lr) * B^T @ A^T instead
    (Kernel.transpose_operands): the BLAS reads transposes in place, while a separate
    update pass over a transposed view walks memory against its rows (7 ms of an LSTM step
    for a 2048 x 512 weight)."""
    producer = {s: k for k in kernels for s in k.outputs}
    readers: dict[int, list] = {}
    for k in kernels:
        for s in k.inputs:
            readers.setdefault(s, []).append(k)
    base = view_bases(kernels, len(plan.nodes))
    param_slots = {s for _, s in plan.params}
    updated = {s: p for p, s in plan.updates}
    roots = set(plan.outputs)
    position = {id(k): i for i, k in enumerate(kernels)}
    merged: dict[int, Kernel] = {}  # id(update kernel) -> gemm kernel
    dropped: set[int] = set()
    for k in kernels:
        if k.kind != "fused" or len(k.steps) != 2 or k.reductions or k.epilogue:
            continue
        mul, sub = k.steps
        if mul.op.name != "mul" or sub.op.name != "sub" or sub.inputs[1] != mul.slot:
            continue
        w = sub.inputs[0]
        if w not in param_slots or sub.slot not in updated or sub.slot in roots \
                or k.outputs != [sub.slot]:
            continue
        lr = next((s for s in mul.inputs if tuple(shapes[s]) == ()), None)
        g = next((s for s in mul.inputs if s != lr), None)
        m, transposed = producer.get(g), None
        if m is not None and m.kind == "view" and len(m.steps) == 1 \
                and m.steps[0].op.name == "transpose" and len(shapes[g]) == 2 \
                and readers.get(g) == [k] and m.inputs[0] not in roots:
            transposed, g = m, m.inputs[0]
            m = producer.get(g)
            if readers.get(g) != [transposed]:
                continue
            readers_g = [k]
        else:
            readers_g = readers.get(g)
        if lr is None or m is None or m.kind != "op" or len(m.steps) != 1 \
                or m.steps[0].op.name != "matmul" or g in roots \
                or readers_g != [k] or len(shapes[g]) != 2:
            continue
        a, b = m.steps[0].inputs
        dtype = np.dtype(sub.node.dtype)
        if dtype.name not in ("float32", "float64") or len(shapes[a]) != 2 \
                or len(shapes[b]) != 2 \
                or tuple(shapes[w]) != tuple(shapes[g])[::-1 if transposed else 1] \
                or any(np.dtype(plan.nodes[s].dtype) != dtype for s in (a, b, lr, g)):
            continue
        later = kernels[position[id(k)] + 1:]
        if any(base[s] == w for s in (a, b)) or any(
                base[s] == w for j in later for s in j.inputs):
            continue  # W must be read last here: GEMM writes it in place
        steps = [m.steps[0]] + (transposed.steps if transposed else []) + [mul, sub]
        merged[id(k)] = Kernel("gemm", steps, [a, b, lr, w], [sub.slot],
                               shape=tuple(shapes[w]), transpose_operands=bool(transposed))
        dropped.add(id(m))
        if transposed:
            dropped.add(id(transposed))
    return [merged.get(id(k), k) for k in kernels if id(k) not in dropped]
