"""Memory budgets (Function stage): what a bound plan needs against `memory_limit`, byte
counts read and printed, and the ResourceError that says what to change. The plan itself
is made by graphc.schedule.memory_plan."""
from __future__ import annotations

import os
import re

import numpy as np

from .errors import CompileError, ResourceError
from .graph import format_shape
from .schedule.memory_plan import MemoryPlan, nbytes, plan_memory  # noqa: F401

# --- the plan's memory need against a budget --------------------------------------------------
LIMIT_ENV = "GRAPHC_MEMORY_LIMIT"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_bytes(value, what: str = "memory_limit") -> int:
    """A byte count from an int or a string such as "512M", "1.5GiB", "2e9" (K, M, G, T
    are powers of 1024)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower())
    if m is None or float(m.group(1)) <= 0:
        raise CompileError(f"{what}: expected a positive number of bytes such as 1000000, "
                           f"'512M' or '2GiB', got {value!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def memory_limit(explicit=None) -> int | None:
    """The byte budget of a plan: `explicit` if given, else $GRAPHC_MEMORY_LIMIT, else none."""
    if explicit is not None:
        return parse_bytes(explicit)
    env = os.environ.get(LIMIT_ENV)
    return parse_bytes(env, LIMIT_ENV) if env else None


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if n < 1024 or unit == "EiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def plan_need(bp) -> tuple[int, int]:
    """Bytes a bound plan allocates: (the arena, the output arrays handed back per call)."""
    dtypes = [n.dtype for n in bp.plan.nodes]
    outputs = sum(nbytes(bp.shapes[s], dtypes[s]) for s in bp.memory.external)
    return bp.memory.arena_bytes, outputs


def resource_error(bp, feed_shapes: dict, why: str) -> ResourceError:
    """A ResourceError giving the plan's memory need, its largest buffer and what to change."""
    arena, outputs = plan_need(bp)
    feeds = ", ".join(f"{ph.name}={tuple(shape)}" for ph, shape in feed_shapes.items())
    slots = list(bp.memory.offsets) + list(bp.memory.external)
    biggest = ""
    if slots:
        s = max(slots, key=lambda s: nbytes(bp.shapes[s], bp.plan.nodes[s].dtype))
        node = bp.plan.nodes[s]
        where = f" at {node.source}" if node.source else ""
        biggest = (f"; its largest buffer is {node.op.name} {tuple(bp.shapes[s])} "
                   f"{node.dtype} ({format_bytes(nbytes(bp.shapes[s], node.dtype))}){where}")
    return ResourceError(
        f"the plan for feed shapes {feeds or '()'} needs {format_bytes(arena + outputs)} "
        f"(arena {format_bytes(arena)} + output arrays {format_bytes(outputs)}) and {why}"
        f"{biggest}. Hint: use a smaller batch size (most buffers grow with it), shorter "
        f"sequences or a smaller model, or give the plan more memory (memory_limit= in "
        f"gc.compile or ${LIMIT_ENV})")


def check_fits(bp, limit: int | None, feed_shapes: dict) -> None:
    """ResourceError if the bound plan's allocations exceed `limit` bytes."""
    if limit is not None and sum(plan_need(bp)) > limit:
        raise resource_error(bp, feed_shapes, f"exceeds the memory limit of "
                             f"{format_bytes(limit)}")


def arena_for(fn, feed_shapes: dict) -> int:
    """Bytes of the arena compiled Function `fn` would bind for the feed shapes
    {placeholder name: shape} (a placeholder left out has its own, static, shape), from its
    plan alone: the plan is bound (fused, memory planned) but nothing is compiled or
    allocated."""
    from .backends import get
    from .schedule import bind
    plan = fn.symbolic_plan
    shapes = {}
    for ph, _ in plan.feeds:
        shape = tuple(feed_shapes.get(ph.name, ph.shape))
        if None in shape:
            raise CompileError(f"arena_for: no shape given for placeholder '{ph.name}' "
                               f"{format_shape(ph.shape)}")
        shapes[ph] = shape
    bound = bind(plan, shapes, get(fn.backend).caps, fuse=getattr(fn, "_fuse", True))
    return bound.memory.arena_bytes
