"""Dead code elimination (passes stage): a step keeps only what its outputs and updates
need, and drops updates that assign a parameter its own value."""
from __future__ import annotations

from .program import Program


def run(program: Program) -> Program:
    """Nodes no root reaches are never scheduled; `p <- p` updates are removed."""
    return Program(program.outputs, tuple((p, v) for p, v in program.updates if v is not p))
