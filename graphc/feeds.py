"""Feed checking (Function stage): what a call passes in becomes one array per
placeholder, checked before anything runs: names, graphs, dtypes (converted only where
safe), static shapes, and integer indices against the ranges the ops reading them accept."""
from __future__ import annotations

import numpy as np

from . import dtypes as _dt
from .errors import FeedError
from .graph import Constant, Placeholder, Tensor, format_shape


def _ignored_value(node):
    """(t, c, k) when node is where(equal(t, c), k, t) with constants c and k: labels t with
    an ignored value c replaced by k (nll_loss's ignore_index), else None."""
    if node.op.name != "where" or len(node.inputs) != 3:
        return None
    cond, k, t = node.inputs
    if cond.op.name != "equal" or not isinstance(k, Constant) or k.value.size != 1:
        return None
    a, b = cond.inputs
    c = b if a is t else a if b is t else None
    if not isinstance(c, Constant) or c.value.size != 1:
        return None
    return t, c.value.item(), k.value.item()


def _index_checks(plan) -> list:
    """[(feed position, step, count(shapes, attrs), noun, ignored)] for every op reading
    integer indices (OpDef.indices) that come straight from a placeholder (through
    value-preserving ops on integers, and through nll_loss's replacement of an ignored label
    by a constant in range), so a call can check their range before anything runs;
    `ignored` is that label value (None when there is none)."""
    position = {ph: i for i, (ph, _) in enumerate(plan.feeds)}
    checks, seen = [], set()
    for step in plan.steps:
        if step.op.indices is None:
            continue
        k, count, noun = step.op.indices
        src, ignored = step.node.inputs[k], None
        while src.dtype.kind in "iu":
            if src.op.value_preserving and src.inputs and src.inputs[0].dtype.kind in "iu":
                src = src.inputs[0]
                continue
            masked = _ignored_value(src) if ignored is None else None
            if masked is None or masked[0].dtype.kind not in "iu":
                break
            src, ignored, replacement = masked
            ignored = (ignored, replacement)
        if src in position and (src, step.op.name) not in seen:
            seen.add((src, step.op.name))
            checks.append((position[src], step, count, noun, ignored))
    return checks


class Feeds:
    """The placeholders a plan reads and the checks a call's feeds must pass."""

    def __init__(self, plan, graph, device: str = "host"):
        self.device = device  # the backend runtime's device: "host" reads host memory only
        self.placeholders = [ph for ph, _ in plan.feeds]
        self._by_name = {ph.name: ph for ph in self.placeholders}
        self._graph_names = graph._names if graph is not None else {}
        self._index_checks = _index_checks(plan)

    def collect(self, feeds, kwargs) -> dict:
        """{placeholder: value} from a dict (placeholders or names) and keywords."""
        given: dict = {}
        items = list((feeds or {}).items()) + list(kwargs.items())
        for key, value in items:
            ph = self._lookup(key)
            if ph is None:
                continue  # a placeholder of the graph this step does not need
            if ph in given:
                raise FeedError(f"placeholder '{ph.name}' is fed twice")
            given[ph] = value
        missing = [ph.name for ph in self.placeholders if ph not in given]
        if missing:
            raise FeedError(f"missing feed for placeholder(s) {', '.join(map(repr, missing))}; "
                            f"this function needs {[ph.name for ph in self.placeholders]}")
        return given

    def arrays(self, given: dict) -> list:
        """One checked array per placeholder, in plan order."""
        return [convert(ph, given[ph], self.device) for ph in self.placeholders]

    def _lookup(self, key):
        if isinstance(key, Tensor):
            if not isinstance(key, Placeholder):
                raise FeedError(f"only placeholders can be fed, got {key.describe()}")
            if key in self.placeholders:
                return key
            if key.name in self._graph_names and self._graph_names[key.name] is key:
                return None
            raise FeedError(f"placeholder '{key.name}' belongs to another graph")
        if isinstance(key, str):
            if key in self._by_name:
                return self._by_name[key]
            if isinstance(self._graph_names.get(key), Placeholder):
                return None
            raise FeedError(f"unknown placeholder {key!r}; this function takes "
                            f"{sorted(self._by_name)}")
        raise FeedError(f"feed keys must be placeholders or their names, got {key!r}")

    def check_indices(self, arrays: list, bound) -> None:
        """FeedError before anything runs if fed labels or indices are out of range."""
        for pos, step, count, noun, ignored in self._index_checks:
            n = count([bound.shapes[s] for s in step.inputs], step.node.attrs)
            ids = arrays[pos]
            if ignored is not None:
                value, replacement = ignored
                if 0 <= replacement < n:  # the op reads the stand-in for an ignored label
                    ids = ids[ids != value]
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                bad = ids[(ids < 0) | (ids >= n)]
                where = f" made at {step.node.source}" if step.node.source else ""
                word = "label" if noun == "classes" else "index"
                raise FeedError(f"placeholder '{self.placeholders[pos].name}': {word} "
                                f"{bad.flat[0]} is out of range for {n} {noun} ({bad.size} "
                                f"value(s) outside [0, {n}); fed range [{ids.min()}, "
                                f"{ids.max()}]), read by {step.op.name}{where}")


_HOST_DLPACK = (1, 3)  # DLPack device types in host memory: kDLCPU, kDLCUDAHost (pinned)
_DLPACK_NAMES = {2: "CUDA", 4: "OpenCL", 7: "Vulkan", 8: "Metal", 10: "ROCm",
                 13: "CUDA managed", 14: "oneAPI"}


def convert(ph: Placeholder, value, device: str = "host") -> np.ndarray:
    """The fed value as an array of the placeholder's dtype and shape, or a FeedError. A
    device array (CuPy, anything with __cuda_array_interface__) stays on its device; a host
    DLPack producer (torch, JAX CPU arrays) is read without a copy."""
    arr = _as_array(ph, value, device)
    if arr.dtype != ph.dtype:
        if not _dt.can_feed(arr.dtype, ph.dtype):
            raise FeedError(f"placeholder '{ph.name}' is {ph.dtype}; cannot convert fed "
                            f"dtype {arr.dtype} safely (cast it explicitly)")
        if ph.dtype.kind in "iu" and arr.dtype.kind in "iu" and arr.size:
            info = np.iinfo(ph.dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise FeedError(f"placeholder '{ph.name}' is {ph.dtype}; fed values "
                                f"[{arr.min()}, {arr.max()}] do not fit")
        arr = arr.astype(ph.dtype)
    if arr.ndim != len(ph.shape) or any(
            d is not None and d != a for d, a in zip(ph.shape, arr.shape)):
        raise FeedError(f"placeholder '{ph.name}' expects shape {format_shape(ph.shape)}, "
                        f"got {format_shape(arr.shape)}")
    return arr


def _as_array(ph: Placeholder, value, device: str):
    """The fed value as an array the backend of `device` reads, copied only where NumPy's
    asarray would copy it too."""
    on_device = hasattr(value, "__cuda_array_interface__") or _dlpack_device(value) not in (
        None, *_HOST_DLPACK)
    if on_device:
        if device != "host":
            return value
        kind = _DLPACK_NAMES.get(_dlpack_device(value), "GPU")
        raise FeedError(f"placeholder '{ph.name}' was fed a {type(value).__name__} in {kind} "
                        f"device memory; this function runs on the CPU backend, which reads "
                        f"host memory: move it to the CPU first (torch: t.cpu(), CuPy: "
                        f"a.get(), JAX: jax.device_get(a)) or compile with backend=\"cuda\"")
    if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
        return np.asarray(value)
    try:
        return np.from_dlpack(value)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise FeedError(f"placeholder '{ph.name}': cannot read the fed "
                        f"{type(value).__name__} through DLPack: {e}") from e


def _dlpack_device(value) -> int | None:
    """The DLPack device type of `value`, or None if it is no DLPack producer."""
    probe = getattr(value, "__dlpack_device__", None)
    if probe is None or isinstance(value, np.ndarray):
        return None
    try:
        return int(probe()[0])
    except Exception:  # a producer that cannot say: treat it as host memory
        return None
