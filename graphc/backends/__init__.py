"""The backends a plan compiles to, and which ops each one can run.

A backend's kernels are looked up when a bound plan is compiled, at the first call; the
check here runs at gc.compile time instead, so a missing kernel is a CompileError naming the
op and the backend before anything runs."""
from __future__ import annotations

from ..errors import CompileError

AVAILABLE = ("numpy",)


def resolve(backend: str) -> str:
    """The backend `compile(backend=...)` names; "auto" is the best one available."""
    if backend == "auto":
        return "numpy"
    if backend not in AVAILABLE:
        raise CompileError(f"compile: unknown backend {backend!r}; available: "
                           f"{', '.join(AVAILABLE)} (or 'auto')")
    return backend


def supports(backend: str, op) -> bool:
    """Whether `backend` has a kernel for `op` (an OpDef)."""
    if backend == "numpy":
        from .numpy_kernels import INTO
        # every op runs its NumPy reference unless a dedicated out= kernel exists
        return op.reference is not None or op.name in INTO
    return False


def check_supported(backend: str, steps) -> None:
    """CompileError for the first plan step whose op `backend` cannot run."""
    for step in steps:
        if not supports(backend, step.op):
            node = step.node
            what = " ".join(filter(None, [f"'{node.name}'" if node.name else "",
                                          f"made at {node.source}" if node.source else ""]))
            raise CompileError(f"compile: the {backend} backend has no kernel for op "
                               f"'{step.op.name}' (node {what or f'%{step.slot}'}); use another "
                               f"backend or express it with ops the backend has")
