"""The IR (graph stage): a Graph is an explicit DAG of Tensors (nodes), each made by one op.

A node records its op, its inputs, its static shape (entries may be None, bound at
call time), its dtype, its attributes and the user's file:line where it was made.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from . import dtypes as _dt
from .errors import GraphError

Shape = tuple  # tuple[int | None, ...]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class SourceInfo:
    """Where in the user's code a node was created."""

    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def user_source() -> SourceInfo | None:
    """The first stack frame outside the graphc package: the user's file:line (or, while
    gradient rules run, the line of the forward node being differentiated)."""
    override = getattr(_local, "source", None)
    if override is not None:
        return override
    frame = sys._getframe(1)
    while frame is not None:
        fname = frame.f_code.co_filename
        if not os.path.abspath(fname).startswith(_PACKAGE_DIR + os.sep):
            return SourceInfo(os.path.basename(fname), frame.f_lineno)
        frame = frame.f_back
    return None


def format_shape(shape: Shape) -> str:
    """Shapes print as NumPy does, with None for unbound dimensions."""
    if len(shape) == 1:
        return f"({shape[0]},)"
    return "(" + ", ".join(str(d) for d in shape) + ")"


class Tensor:
    """A node of the graph: the value one op computes from its inputs."""

    __slots__ = ("graph", "id", "op", "inputs", "attrs", "shape", "dtype", "name", "source",
                 "__weakref__")
    __array_priority__ = 1000  # make `ndarray * tensor` defer to Tensor.__rmul__

    def __init__(self, graph: "Graph", op, inputs: tuple, attrs: dict, shape: Shape, dtype,
                 name: str | None = None, source: SourceInfo | None = None):
        self.graph = graph
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.name = name
        self.source = source
        self.id = graph._add(self)

    # --- description -------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def op_name(self) -> str:
        return self.op.name

    def describe(self) -> str:
        """A short human label: op, name if any, shape, dtype and source line."""
        label = self.op.name + (f" '{self.name}'" if self.name else "")
        where = f" at {self.source}" if self.source else ""
        return f"{label} {format_shape(self.shape)} {self.dtype}{where}"

    def __repr__(self) -> str:
        return f"<Tensor {self.describe()}>"

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other):  # identity, so tensors can key dicts; use gc.equal for values
        return self is other

    def __bool__(self):
        raise GraphError(f"the truth value of a symbolic tensor ({self.describe()}) is unknown "
                         "until the graph runs; use gc.where or gc.greater instead of if/and/or")

    def __len__(self):
        if not self.shape or self.shape[0] is None:
            raise GraphError(f"len() of {self.describe()} is not known before the graph runs")
        return self.shape[0]

    def __iter__(self):
        raise GraphError(f"cannot iterate over symbolic tensor {self.describe()}; index it instead")

    # --- arithmetic (defined in graphc.ops, imported lazily to avoid a cycle) -----------
    def __add__(self, o): return _ops().add(self, o)
    def __radd__(self, o): return _ops().add(o, self)
    def __sub__(self, o): return _ops().sub(self, o)
    def __rsub__(self, o): return _ops().sub(o, self)
    def __mul__(self, o): return _ops().mul(self, o)
    def __rmul__(self, o): return _ops().mul(o, self)
    def __truediv__(self, o): return _ops().div(self, o)
    def __rtruediv__(self, o): return _ops().div(o, self)
    def __pow__(self, o): return _ops().pow(self, o)
    def __rpow__(self, o): return _ops().pow(o, self)
    def __matmul__(self, o): return _ops().matmul(self, o)
    def __rmatmul__(self, o): return _ops().matmul(o, self)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().abs(self)
    def __gt__(self, o): return _ops().greater(self, o)
    def __lt__(self, o): return _ops().less(self, o)
    def __getitem__(self, index): return _ops().getitem(self, index)

    @property
    def T(self) -> "Tensor":
        return _ops().transpose(self)

    def reshape(self, *shape) -> "Tensor":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops().reshape(self, shape)

    def transpose(self, *axes) -> "Tensor":
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().transpose(self, axes or None)

    def sum(self, axis=None, keepdims=False): return _ops().sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return _ops().mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return _ops().max(self, axis, keepdims)
    def min(self, axis=None, keepdims=False): return _ops().min(self, axis, keepdims)
    def astype(self, dtype): return _ops().cast(self, dtype)


def _ops():
    from . import ops
    return ops


class Placeholder(Tensor):
    """An input fed at call time; None dimensions bind to the fed array's size."""

    __slots__ = ()


class Constant(Tensor):
    """A value fixed when the graph is built."""

    __slots__ = ("value",)

    def __init__(self, graph, value: np.ndarray, name=None, source=None):
        from .ops.registry import get_op
        self.value = value
        super().__init__(graph, get_op("constant"), (), {}, value.shape, value.dtype, name, source)


class Parameter(Tensor):
    """A persistent value (a weight) that compiled functions read and may update. Its value
    lives in `storage` (graphc.storage), which a backend's runtime owns once a plan binds."""

    __slots__ = ("storage", "trainable")

    def __init__(self, graph, value: np.ndarray, name: str, trainable: bool, source=None):
        from .ops.registry import get_op
        from .storage import HostStorage
        self.storage = HostStorage(value)
        self.trainable = trainable
        super().__init__(graph, get_op("parameter"), (), {}, value.shape, value.dtype, name, source)

    @property
    def value(self) -> np.ndarray:
        """A copy of the current value as a NumPy array."""
        return self.storage.read()

    @value.setter
    def value(self, new) -> None:
        self.assign(new)

    def assign(self, new) -> None:
        """Overwrite the value (shape and dtype checked); compiled functions see it."""
        arr = np.asarray(new)
        if arr.shape != self.shape:
            raise GraphError(f"parameter '{self.name}' has shape {format_shape(self.shape)}; "
                             f"cannot assign a value of shape {format_shape(arr.shape)}")
        if arr.dtype != self.dtype:
            if not np.can_cast(arr.dtype, self.dtype, "same_kind"):
                raise GraphError(f"parameter '{self.name}' is {self.dtype}; cannot assign "
                                 f"a value of dtype {arr.dtype}")
            arr = arr.astype(self.dtype)
        self.storage.write(arr)  # in place: compiled functions hold this storage


class Graph:
    """A computational graph; `with Graph() as g:` makes it current for the block."""

    def __init__(self, name: str = "graph"):
        self.name = name
        self.nodes: list[Tensor] = []
        self._names: dict[str, Tensor] = {}
        self._counters: dict[str, int] = {}
        # bumped whenever a parameter's storage moves to another runtime: Functions bound
        # to the old storage bind again
        self._storage_epoch = 0

    def _add(self, node: Tensor) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _claim_name(self, name: str, kind: str) -> None:
        if not isinstance(name, str) or not name:
            raise GraphError(f"a {kind} needs a non-empty string name, got {name!r}")
        if name in self._names:
            other = self._names[name]
            raise GraphError(f"name '{name}' is already used in this graph by "
                             f"{other.describe()}; {kind} names must be unique")

    def unique_name(self, base: str) -> str:
        """A fresh name with the given prefix (for parameters graphc creates itself)."""
        while True:
            n = self._counters.get(base, 0)
            self._counters[base] = n + 1
            name = f"{base}_{n}"
            if name not in self._names:
                return name

    def _register_name(self, node: Tensor) -> None:
        self._names[node.name] = node

    def parameters(self, trainable: bool | None = None) -> list[Parameter]:
        """The graph's parameters in creation order (optionally only (non-)trainable ones)."""
        return [n for n in self.nodes if isinstance(n, Parameter)
                and (trainable is None or n.trainable == trainable)]

    def placeholders(self) -> list[Placeholder]:
        return [n for n in self.nodes if isinstance(n, Placeholder)]

    def get(self, name: str) -> Tensor:
        """The placeholder or parameter of that name."""
        try:
            return self._names[name]
        except KeyError:
            raise GraphError(f"no placeholder or parameter named '{name}' in this graph; "
                             f"known: {sorted(self._names)}") from None

    def __enter__(self) -> "Graph":
        _stack().append(self)
        return self

    def __exit__(self, *exc) -> None:
        _stack().pop()

    def __repr__(self) -> str:
        return f"<Graph '{self.name}' with {len(self.nodes)} nodes>"


_DEFAULT = Graph("default")
_local = threading.local()


@contextlib.contextmanager
def source_scope(source: SourceInfo | None):
    """Attribute nodes built inside the block to `source` (used for gradient nodes)."""
    previous = getattr(_local, "source", None)
    _local.source = source
    try:
        yield
    finally:
        _local.source = previous


def _stack() -> list:
    if not hasattr(_local, "stack"):
        _local.stack = []
    return _local.stack


def get_default_graph() -> Graph:
    """The graph new nodes go into: the innermost `with Graph()` block, else the default."""
    stack = _stack()
    return stack[-1] if stack else _DEFAULT


def reset_default_graph() -> Graph:
    """Replace the default graph by an empty one (handy in notebooks and tests)."""
    global _DEFAULT
    _DEFAULT = Graph("default")
    return _DEFAULT


def _check_shape_arg(shape, what: str) -> Shape:
    if isinstance(shape, int):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise GraphError(f"{what}: shape must be a tuple of ints or None, got {shape!r}") from None
    for d in shape:
        if d is not None and (not isinstance(d, (int, np.integer)) or d < 0):
            raise GraphError(f"{what}: shape entries must be non-negative ints or None, "
                             f"got {shape!r}")
    return tuple(None if d is None else int(d) for d in shape)


def placeholder(name: str, shape, dtype="float32") -> Placeholder:
    """An input of the graph, fed at call time; None entries in `shape` bind per call."""
    from .ops.registry import get_op
    g = get_default_graph()
    g._claim_name(name, "placeholder")
    shape = _check_shape_arg(shape, f"placeholder '{name}'")
    node = Placeholder(g, get_op("placeholder"), (), {}, shape, _dt.as_dtype(dtype), name,
                       user_source())
    g._register_name(node)
    return node


def parameter(name: str, value=None, shape=None, init: str = "glorot_uniform", dtype="float32",
              trainable: bool = True, seed: int | None = None) -> Parameter:
    """A persistent tensor: give an initial `value`, or a `shape` and an initializer name."""
    from .initializers import initialize
    g = get_default_graph()
    g._claim_name(name, "parameter")
    dtype = _dt.as_dtype(dtype)
    if value is not None:
        arr = np.array(value, dtype=dtype, copy=True)
        if shape is not None and tuple(shape) != arr.shape:
            raise GraphError(f"parameter '{name}': value has shape {format_shape(arr.shape)} "
                             f"but shape={tuple(shape)} was given")
    else:
        if shape is None:
            raise GraphError(f"parameter '{name}' needs either value= or shape=")
        shape = _check_shape_arg(shape, f"parameter '{name}'")
        if None in shape:
            raise GraphError(f"parameter '{name}' must have a fully known shape, got {shape}")
        arr = initialize(init, shape, dtype, seed, name)
    node = Parameter(g, arr, name, trainable, user_source())
    g._register_name(node)
    return node


def constant(value, dtype=None, name: str | None = None) -> Constant:
    """A constant tensor holding a copy of `value`."""
    if isinstance(value, Tensor):
        raise GraphError(f"constant() needs a value, got tensor {value.describe()}")
    arr = np.array(value, dtype=dtype, copy=True)
    if dtype is None and arr.dtype == np.float64 and not isinstance(value, np.ndarray):
        arr = arr.astype(_dt.DEFAULT_FLOAT)  # Python floats become the default float
    if dtype is None and arr.dtype == np.int64 and not isinstance(value, np.ndarray):
        arr = arr.astype(np.int32)
    return Constant(get_default_graph(), arr, name, user_source())


def flatten_structure(obj: Any, what: str, error=GraphError):
    """The tensors in `obj` (a tensor, or any nesting of dicts, lists, tuples and namedtuples
    of tensors) in order, and a function rebuilding the same nesting from a list of values.
    A leaf that is not a tensor raises `error` naming its path (`outputs['grads'][2]`)."""
    if not isinstance(obj, (Tensor, dict, list, tuple)):
        raise error(f"{what} must be a tensor, list, tuple or dict of tensors, "
                    f"got {type(obj).__name__}")
    flat: list = []
    template = _flatten_into(obj, what.rsplit(" ", 1)[-1], flat, what, error, set())
    return flat, lambda values: _rebuild_structure(template, iter(values))


def _flatten_into(obj, path: str, flat: list, what: str, error, open_ids: set):
    """A template of `obj` (None where a tensor was) whose tensors are appended to `flat`."""
    if isinstance(obj, Tensor):
        flat.append(obj)
        return None
    if isinstance(obj, (dict, list, tuple)):
        if id(obj) in open_ids:
            raise error(f"{what} contains itself at {path}")
        open_ids.add(id(obj))
        if isinstance(obj, dict):
            items = [(k, _flatten_into(v, f"{path}[{k!r}]", flat, what, error, open_ids))
                     for k, v in obj.items()]
        else:
            items = [_flatten_into(v, f"{path}[{i}]", flat, what, error, open_ids)
                     for i, v in enumerate(obj)]
        open_ids.discard(id(obj))
        return (type(obj), items)
    shown = repr(obj)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise error(f"{what} must be tensors, got {shown} at {path} (only dicts, lists and "
                f"tuples may hold them)")


def _rebuild_structure(template, values):
    if template is None:
        return next(values)
    kind, items = template
    if issubclass(kind, dict):
        built = {k: _rebuild_structure(t, values) for k, t in items}
        return built if kind is dict else _make(kind, built, dict)
    built = [_rebuild_structure(t, values) for t in items]
    if issubclass(kind, tuple) and hasattr(kind, "_fields"):  # a namedtuple
        return kind(*built)
    return built if kind is list else _make(kind, built, list if issubclass(kind, list)
                                            else tuple)


def _make(kind, built, plain):
    """`kind(built)` for a subclass of dict, list or tuple that accepts it, else `plain`."""
    try:
        return kind(built)
    except Exception:  # a subclass with its own constructor: give the plain container
        return plain(built)


def topo_order(outputs: Iterable[Tensor]) -> list[Tensor]:
    """Every ancestor of `outputs` (themselves included), inputs before users."""
    order: list[Tensor] = []
    seen: set[int] = set()
    for root in outputs:
        if id(root) in seen:
            continue
        stack: list[tuple[Tensor, int]] = [(root, 0)]
        seen.add(id(root))
        while stack:
            node, i = stack[-1]
            if i < len(node.inputs):
                stack[-1] = (node, i + 1)
                child = node.inputs[i]
                if id(child) not in seen:
                    seen.add(id(child))
                    stack.append((child, 0))
            else:
                stack.pop()
                order.append(node)
    return order


def same_graph(tensors: Any, what: str) -> Graph:
    """The one graph all `tensors` belong to, or a GraphError."""
    graphs = {id(t.graph): t for t in tensors}
    if len(graphs) > 1:
        a, b = list(graphs.values())[:2]
        raise GraphError(f"{what}: tensors come from different graphs: {a.describe()} and "
                         f"{b.describe()}")
    return next(iter(tensors)).graph
