"""Public error types (shared by every stage). Every error a user can cause is a GraphcError."""


class GraphcError(Exception):
    """Base class of every error graphc raises on purpose."""


class GraphError(GraphcError):
    """The graph is malformed: duplicate names, tensors from two graphs, bad arguments."""


class ShapeError(GraphcError, ValueError):
    """Operand shapes or dtypes do not fit an op; raised when the node is built."""


class FeedError(GraphcError, ValueError):
    """A call's feeds do not match the placeholders (missing, unknown, shape, dtype)."""


class GradientError(GraphcError):
    """A gradient was asked for that does not exist (integer tensor, op without rule)."""


class CompileError(GraphcError):
    """The graph cannot be compiled as asked (bad outputs, updates or backend)."""


class NumericsError(GraphcError, FloatingPointError):
    """compile(..., check_numerics=True): a kernel produced NaN or Inf (the message names the
    op, the node and the user's file:line; parameters are left as they were)."""


class ResourceError(GraphcError, MemoryError):
    """The plan's memory does not fit (the machine's, or memory_limit / GRAPHC_MEMORY_LIMIT);
    the message gives the plan's need and what to change."""


class DistributedError(GraphcError):
    """Data-parallel training failed across ranks: a collective timed out (the message names
    it and the ranks that did not arrive) or the ranks compiled different plans (the message
    names the ranks and the first difference)."""
