"""Common subexpression elimination (passes stage): one node per (op, inputs, attributes);
equal small constants are shared too."""
from __future__ import annotations

from ..graph import Constant, Tensor
from .program import Program, rewrite

MAX_CONST_ELEMENTS = 4096  # larger constants are compared by identity only


def _key(node: Tensor):
    if isinstance(node, Constant):
        v = node.value
        if v.size > MAX_CONST_ELEMENTS:
            return None
        return ("constant", v.dtype.str, v.shape, v.tobytes())
    if not node.inputs:
        return None  # placeholders and parameters are unique by construction
    return (node.op.name, tuple(id(x) for x in node.inputs), tuple(sorted(node.attrs.items())))


def run(program: Program) -> Program:
    """Merge nodes that compute the same thing from the same inputs."""
    seen: dict = {}

    def rule(node):
        key = _key(node)
        if key is None:
            return None
        first = seen.setdefault(key, node)
        return None if first is node else first

    return rewrite(program, rule)
