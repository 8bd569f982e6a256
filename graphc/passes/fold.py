"""Constant folding (passes stage): ops whose inputs are all constants are computed at
compile time."""
from __future__ import annotations

import numpy as np

from ..graph import Constant
from .program import Program, rewrite

MAX_FOLDED_ELEMENTS = 1 << 20  # larger results stay computed at run time


def _static(node) -> bool:
    return None not in node.shape


def run(program: Program) -> Program:
    """Replace constant subexpressions by their values (small results only)."""
    def rule(node):
        op = node.op
        if not node.inputs or op.reference is None or not _static(node):
            return None
        if int(np.prod(node.shape, dtype=np.int64)) > MAX_FOLDED_ELEMENTS:
            return None
        args = []
        for i, x in enumerate(node.inputs):
            if i in op.shape_only:
                if not _static(x):
                    return None
                args.append(x.shape)
            elif isinstance(x, Constant):
                args.append(x.value)
            else:
                return None
        with np.errstate(all="ignore"):
            value = np.asarray(op.reference(*args, **node.attrs), dtype=node.dtype)
        return Constant(node.graph, np.array(value, copy=True), source=node.source)

    return rewrite(program, rule)
