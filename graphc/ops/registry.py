"""The op registry (graph stage): each op is declared once with its shape/dtype inference, its NumPy
reference and its gradient rules written in graph ops."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence


from ..errors import ShapeError
from ..graph import Tensor, format_shape, get_default_graph, same_graph, user_source

# infer(shapes, dtypes, **attrs) -> (shape, dtype); raises ShapeError via fail().
InferFn = Callable[..., tuple]
# rule(g, out, *inputs, **attrs) -> gradient for one input, as a graph tensor.
GradRule = Callable[..., Tensor]


@dataclass
class OpDef:
    """One op: everything graphc knows about it, in one place."""

    name: str
    infer: InferFn | None
    reference: Callable | None  # reference(*arrays, **attrs) -> ndarray
    grads: Sequence[GradRule | None] | None = None  # one rule per input, None: no gradient
    elementwise: bool = False
    # Inputs whose values are never read, only their shapes (e.g. the target of sum_to_like).
    # Their concrete shapes are passed to the reference as keyword `shapes_of` entries.
    shape_only: tuple = ()
    variadic: bool = False  # any number of inputs (concat)
    # The op returns its first input unchanged when input and output shapes are equal
    # (reshape/sum_to/broadcast to the shape it already has): backends alias instead of run.
    noop_if_same_shape: bool = False
    # An input holding integer indices: (its position, the number of valid indices from the
    # bound input shapes and the attributes, what they index). A call checks fed indices
    # against it before anything runs.
    indices: tuple | None = None
    # --- properties the scheduler and the backends' printers read ---------------------------
    # A view: its result shares its first input's buffer (reshape, transpose, slicing).
    view: bool = False
    # A fusable reduction over its first input: "sum" or "mean" (a kernel may end with it);
    # reduce_axes(in_shapes, attrs) gives the axes it reduces.
    reduction: str | None = None
    reduce_axes: Callable | None = None
    # Passes integer values through unchanged (reshape, transpose, cast): fed indices
    # keep their range through it, so a call can check them where they are fed.
    value_preserving: bool = False
    # Per-element cost of an elementwise op in units of one add (COST_CHEAP, COST_MEDIUM,
    # COST_TRANSCENDENTAL): what recomputing a value costs, which printer suits it.
    cost: int = 10
    # The op as one scalar expression, for printers of per-element loops (Numba on the CPU,
    # Numba CUDA): a template over the arguments {0}, {1}, ..., the output dtype's
    # constructor {T}, typed constants {zero} {one} {half}, the node's numeric attributes
    # by name and `scalar_consts` by name; or a callable(attrs) returning such a template.
    scalar: str | Callable | None = None
    scalar_consts: dict = field(default_factory=dict)
    doc: str = ""

    def scalar_form(self, attrs: dict) -> str | None:
        """The scalar template for a node with these attributes, or None."""
        return self.scalar(attrs) if callable(self.scalar) else self.scalar

    def __repr__(self) -> str:
        return f"<op {self.name}>"


COST_CHEAP, COST_MEDIUM, COST_TRANSCENDENTAL = 1, 4, 10

_REGISTRY: dict[str, OpDef] = {}


def register(name: str, infer=None, reference=None, grads=None, **kw) -> OpDef:
    """Declare an op once; redeclaring a name is a programming error."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} registered twice")
    op = OpDef(name, infer, reference, grads, **kw)
    _REGISTRY[name] = op
    return op


def get_op(name: str) -> OpDef:
    return _REGISTRY[name]


def all_ops() -> dict[str, OpDef]:
    """Name -> OpDef for every registered op."""
    return dict(_REGISTRY)


class InferError(Exception):
    """Raised by inference functions; apply() turns it into a ShapeError with context."""


def fail(msg: str):
    raise InferError(msg)


def apply(opname: str, inputs: Sequence[Tensor], name: str | None = None, **attrs) -> Tensor:
    """Build a node: infer its shape and dtype, or raise a ShapeError naming the user's line."""
    op = _REGISTRY[opname]
    inputs = tuple(inputs)
    graph = same_graph(inputs, opname) if inputs else get_default_graph()
    shapes = [t.shape for t in inputs]
    dts = [t.dtype for t in inputs]
    try:
        shape, dtype = op.infer(shapes, dts, **attrs)
    except InferError as e:
        src = user_source()
        operands = ", ".join(f"{format_shape(s)} {d}" for s, d in zip(shapes, dts))
        where = f" (at {src})" if src else ""
        raise ShapeError(f"{opname}: {e}; operands: {operands}{where}") from None
    return Tensor(graph, op, inputs, attrs, shape, dtype, name, user_source())


# --- source-less ops: leaves of the graph ------------------------------------------------
register("placeholder", doc="an input fed at call time")
register("parameter", doc="a persistent, possibly trainable value")
register("constant", doc="a value fixed at build time")
