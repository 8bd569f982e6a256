"""Compiler passes (passes stage). Each is a pure function Program -> Program in its own module; the
default pipeline is DEFAULT_PASSES, run by gc.compile(optimize=True)."""
from __future__ import annotations

from .program import Program, rebuild, rewrite  # noqa: F401
from . import cse, dce, fold, simplify, sink

PASSES = {"simplify": simplify.run, "cse": cse.run, "fold": fold.run, "sink": sink.run,
          "dce": dce.run}
DEFAULT_PASSES = ("simplify", "fold", "sink", "cse", "simplify", "dce")


def run_passes(program: Program, passes) -> Program:
    """Apply passes (names or callables) in order."""
    for p in passes:
        fn = PASSES[p] if isinstance(p, str) else p
        program = fn(program)
    return program
