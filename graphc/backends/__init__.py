"""The backend registry (backend stage): which backends exist, which are available here,
and which ops each one can run.

A backend registers a factory under its name (plus aliases and a probe that says why it is
unavailable, if it is); `resolve("auto")` picks the available backend of highest priority.
A backend's kernels are looked up when a bound plan is compiled, at the first call; the
check here runs at gc.compile time instead, so a missing kernel is a CompileError naming the
op and the backend before anything runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import CompileError
from .base import Backend, Capabilities, Runtime  # noqa: F401


@dataclass
class _Entry:
    name: str
    factory: Callable[[], Backend]
    probe: Callable[[], str | None] | None  # None if usable here, else the reason it is not
    priority: int
    aliases: tuple
    auto: Callable[[], bool] | None  # whether "auto" may pick it (default: when available)


_ENTRIES: dict[str, _Entry] = {}
_ALIASES: dict[str, str] = {}
_INSTANCES: dict[str, Backend] = {}


def register(name: str, factory: Callable[[], Backend], probe=None, priority: int = 0,
             aliases: tuple = (), auto=None) -> None:
    """Make a backend known: `factory()` builds it (once, on first use); `probe()` returns
    None when it can run here or a sentence saying why not; "auto" prefers higher
    `priority` among the available backends whose `auto()` (if given) is true."""
    for n in (name, *aliases):
        if n in _ALIASES or n == "auto":
            raise ValueError(f"backend name {n!r} is already registered")
    _ENTRIES[name] = _Entry(name, factory, probe, priority, tuple(aliases), auto)
    for n in (name, *aliases):
        _ALIASES[n] = name


def unregister(name: str) -> None:
    """Forget a backend (tests register their own and remove it afterwards)."""
    entry = _ENTRIES.pop(name)
    for n in (name, *entry.aliases):
        _ALIASES.pop(n, None)
    _INSTANCES.pop(name, None)
    _PROBED.pop(name, None)


_PROBED: dict[str, str | None] = {}  # name -> its probe's answer: the machine's, stable


def availability(name: str) -> str | None:
    """None if the backend can run here, else the reason it cannot (probed once)."""
    name = _ALIASES[name]
    if name not in _PROBED:
        probe = _ENTRIES[name].probe
        _PROBED[name] = probe() if probe is not None else None
    return _PROBED[name]


def registered() -> list[str]:
    """Every registered backend's name."""
    return list(_ENTRIES)


def available() -> list[str]:
    """The registered backends that can run here, best first."""
    names = [n for n in _ENTRIES if availability(n) is None]
    return sorted(names, key=lambda n: -_ENTRIES[n].priority)


def resolve(backend: str) -> str:
    """The canonical name of the backend `compile(backend=...)` names; "auto" is the best
    one available."""
    if backend == "auto":
        return next(n for n in available() if _ENTRIES[n].auto is None or _ENTRIES[n].auto())
    if backend not in _ALIASES:
        names = ", ".join(sorted(_ALIASES))
        raise CompileError(f"compile: unknown backend {backend!r}; available: {names} "
                           f"(or 'auto')")
    name = _ALIASES[backend]
    why = availability(name)
    if why is not None:
        raise CompileError(f"compile: the {name} backend cannot run here: {why}")
    return name


def get(name: str) -> Backend:
    """The backend object for a registered name or alias (built on first use)."""
    name = _ALIASES[name]
    if name not in _INSTANCES:
        _INSTANCES[name] = _ENTRIES[name].factory()
    return _INSTANCES[name]


def supports(backend: str, op) -> bool:
    """Whether `backend` has a kernel for `op` (an OpDef)."""
    return get(backend).supports(op)


def check_supported(backend: str, steps) -> None:
    """CompileError for the first plan step whose op `backend` cannot run."""
    impl = get(backend)
    for step in steps:
        if not impl.supports(step.op):
            node = step.node
            what = " ".join(filter(None, [f"'{node.name}'" if node.name else "",
                                          f"made at {node.source}" if node.source else ""]))
            why = impl.unsupported.get(step.op.name)
            raise CompileError(f"compile: the {impl.name} backend has no kernel for op "
                               f"'{step.op.name}' (node {what or f'%{step.slot}'})"
                               f"{f' ({why})' if why else ''}; use another backend or "
                               f"express it with ops the backend has")


def _cpu() -> Backend:
    from .cpu import CPUBackend
    return CPUBackend()


def _cuda() -> Backend:
    from .cuda import CUDABackend
    return CUDABackend()


def _cuda_probe() -> str | None:
    from .cuda import probe
    return probe()


def _cuda_auto() -> bool:
    from .cuda import on_device
    return on_device()


register("numpy", _cpu, aliases=("cpu",))
register("cuda", _cuda, probe=_cuda_probe, priority=10, auto=_cuda_auto)
