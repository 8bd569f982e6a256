"""The backend interface (backend stage): what a backend supplies to the core.

A backend is one folder under graphc/backends/ and one `register` line in
graphc/backends/__init__.py. It declares its name, its `Capabilities` (what the scheduler
may fuse for it, what recomputing costs there, how its buffers align), which ops it runs,
and it compiles a bound plan (graphc.schedule.BoundPlan) into a step callable. Its runtime
provides the services the core needs without knowing where memory lives: parameter
storage, copies to and from the host, finiteness checks for check_numerics, and
synchronization."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ..schedule.capabilities import Capabilities

__all__ = ["Backend", "Capabilities", "Runtime"]


class Runtime:
    """Memory and synchronization services of one kind of device. The base class is the
    host's: NumPy arrays in host memory."""

    device = "host"

    def adopt(self, param) -> Any:
        """Make the parameter's storage live on this runtime (a backend calls this when it
        binds a plan) and return its array there."""
        storage = param.storage
        if storage.device != self.device:
            from ..storage import HostStorage
            param.storage = HostStorage(storage.read())
            param.graph._storage_epoch += 1
        return param.storage.array

    def to_host(self, array) -> np.ndarray:
        """A host (NumPy) view or copy of one of this runtime's arrays."""
        return np.asarray(array)

    def from_host(self, array: np.ndarray):
        """A copy of a host array on this runtime."""
        return np.array(array, copy=True)

    def copy(self, array):
        """A copy of one of this runtime's arrays, on this runtime."""
        return np.array(array, copy=True)

    def non_finite(self, array) -> str | None:
        """'NaN' or 'Inf' if a floating-point array holds one, else None."""
        arr = np.asarray(array)
        if arr.dtype.kind not in "fc" or np.isfinite(arr).all():
            return None
        return "NaN" if np.isnan(arr).any() else "Inf"

    def synchronize(self) -> None:
        """Wait until all work queued on this runtime is done (host: nothing to wait for)."""


class Backend:
    """One backend: subclasses set `name`, `caps` and `runtime` and implement
    `compile_bound`; `supports` says which ops it runs and `unsupported` why not."""

    name: str = "?"
    caps: Capabilities = Capabilities()
    runtime: Runtime = Runtime()
    # op name -> why this backend has no kernel for it (the completeness test reads it)
    unsupported: dict = {}

    def supports(self, op) -> bool:
        """Whether this backend can run a plan step of `op` (an OpDef)."""
        return op.name not in self.unsupported

    def compile_bound(self, bound, watch=None) -> Callable[..., tuple]:
        """run(*feeds) -> tuple of outputs for one bound plan, updating parameters in
        their storage. `watch` (check_numerics): call watch.before(i, inputs) and
        watch.after(i, outputs) around every computing kernel i of bound.kernels."""
        raise NotImplementedError
