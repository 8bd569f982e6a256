"""Random well-typed graphs for the fuzz tests (tests/test_fuzz.py).

A graph is grown by *families*: small builders that each add one kind of op (an elementwise
op with broadcasting, a reduction, a slice, a convolution, a loss...) on top of tensors
already in the graph, or of new placeholders, parameters and constants. Every choice goes
through a `Source`, so the same builders run under hypothesis (which shrinks a failing graph
to a small one) or from a plain seeded generator (the coverage test).

Builders know the values of what they build (graphc.testing.evaluate, memoized), so ops
that need special inputs get them: positive inputs for log, sqrt and pow, denominators away
from zero, valid labels and indices, bounded arguments for exp. Gradients are checked
against finite differences that skip the few elements next to a kink (see
`finite_difference`), so relu, abs, max and comparisons need no special care.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

import graphc as gc
from graphc.graph import Constant, Parameter, Placeholder, Tensor, topo_order
from graphc.testing import evaluate

MAX_ELEMENTS = 48  # per leaf: finite differences cost two evaluations per element
DIMS = (1, 1, 2, 3, 4)  # size-1 dimensions often, to exercise broadcasting


# --- choices --------------------------------------------------------------------------------
class Source:
    """Where choices come from: hypothesis (`HypothesisSource`) or a seeded generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:  # inclusive
        return int(self.rng.integers(lo, hi + 1))

    def choice(self, options):
        options = list(options)
        return options[self.int(0, len(options) - 1)]

    def bool(self, p: float = 0.5) -> bool:
        return self.int(0, 999) < int(p * 1000)


class HypothesisSource(Source):
    """Choices drawn from hypothesis, which then shrinks failing graphs."""

    def __init__(self, draw):
        from hypothesis import strategies as st
        self._draw, self._st = draw, st

    def int(self, lo: int, hi: int) -> int:
        return self._draw(self._st.integers(lo, hi))


# --- the builder ----------------------------------------------------------------------------
@dataclass
class Case:
    """A random graph: outputs, a scalar loss of them, what to differentiate, the feeds."""

    graph: gc.Graph
    dtype: np.dtype
    outputs: list
    loss: Tensor
    wrt: list  # float placeholders and parameters
    feeds: dict  # placeholder name -> array
    families: list = field(default_factory=list)

    def ops(self) -> set:
        return {n.op.name for n in topo_order(self.outputs + [self.loss])}


class Builder:
    """Grows one graph in the current gc.Graph."""

    def __init__(self, src: Source, dtype, dynamic: bool = False):
        self.src, self.dtype = src, np.dtype(dtype)
        self.rng = np.random.default_rng(src.int(0, 2**31 - 1))
        self.dynamic = dynamic  # some placeholders get a None first dimension
        self.pool: list[Tensor] = []  # float tensors later ops may use
        self.feeds: dict = {}
        self.wrt: list = []
        self.cache: dict = {}
        self.n = 0

    # values and shapes
    def value(self, t: Tensor) -> np.ndarray:
        return evaluate(t, self.feeds, self.cache)

    def shape(self, t: Tensor) -> tuple:
        return self.value(t).shape

    def size(self, t: Tensor) -> int:
        return int(np.prod(self.shape(t), dtype=np.int64))

    # leaves
    def random_shape(self, ndim: int, max_elements: int = MAX_ELEMENTS) -> tuple:
        shape = []
        for _ in range(ndim):
            room = max_elements // max(int(np.prod(shape, dtype=np.int64)), 1)
            shape.append(self.src.choice([d for d in DIMS if d <= room] or [1]))
        return tuple(shape)

    def leaf(self, shape, values=None, trainable: bool = True, dtype=None,
             static: bool = False) -> Tensor:
        """A new placeholder, parameter or constant of `shape` (normal values by default);
        in a dynamic graph a placeholder may declare its first dimension None unless
        `static`."""
        dtype = np.dtype(dtype or self.dtype)
        if values is None:
            values = self.rng.normal(size=shape)
        values = np.asarray(values).astype(dtype)
        kind = self.src.choice(["placeholder", "placeholder", "parameter", "constant"])
        self.n += 1
        if kind == "constant" or not trainable and kind == "parameter":
            return gc.constant(values, dtype=dtype)
        if kind == "parameter":
            p = gc.parameter(f"p{self.n}", value=values, dtype=dtype)
            if dtype.kind == "f":
                self.wrt.append(p)
            return p
        decl = tuple(shape)
        if self.dynamic and decl and not static and self.src.bool(0.5):
            decl = (None,) + decl[1:]
        ph = gc.placeholder(f"x{self.n}", decl, dtype=dtype)
        self.feeds[ph.name] = values
        if dtype.kind == "f" and trainable:
            self.wrt.append(ph)
        return ph

    def labels(self, shape, n_classes: int) -> Tensor:
        values = self.rng.integers(0, n_classes, size=shape)
        dtype = self.src.choice(["int32", "int64"])
        return self.leaf(shape, values, trainable=False, dtype=dtype)

    # picking operands
    def pick(self, min_ndim: int = 0, max_ndim: int = 4, fresh: float = 0.3) -> Tensor:
        """A float tensor from the graph (or, sometimes or when none fits, a new leaf)."""
        fits = [t for t in self.pool if min_ndim <= len(self.shape(t)) <= max_ndim]
        if fits and not self.src.bool(fresh):
            return self.src.choice(fits)
        t = self.leaf(self.random_shape(self.src.int(min_ndim, max_ndim)))
        self.pool.append(t)
        return t

    def like_broadcast(self, shape, scalar: bool = True):
        """An operand that broadcasts against `shape`: same shape, some dims set to 1,
        leading dims dropped, or (if `scalar`) a Python float."""
        kind = self.src.int(0 if scalar else 1, 3)
        if kind == 0:
            return self.src.choice([0.5, -1.5, 2.0, 3.0])
        dims = list(shape)
        if kind >= 2:
            dims = [1 if self.src.bool(0.5) else d for d in dims]
            dims = dims[self.src.int(0, len(dims)):]
        same = [t for t in self.pool if self.shape(t) == tuple(dims)]
        if same and self.src.bool(0.5):
            return self.src.choice(same)
        return self.leaf(tuple(dims))

    def operand_pair(self):
        a = self.pick()
        b = self.like_broadcast(self.shape(a))
        if self.src.bool(0.3):  # broadcasting the other way round
            a, b = b, a
        return a, b

    # value-aware adapters
    def positive(self, t: Tensor, floor: float = 0.2) -> Tensor:
        v = self.value(t)
        if v.size and v.min() > floor and v.max() < 30:
            return t
        k = self.src.int(0, 3)
        return [lambda: gc.square(t) + 0.5, lambda: gc.sigmoid(t) + 0.25,
                lambda: gc.exp(gc.tanh(t)), lambda: gc.abs(t) + 0.5][k]()

    def bounded(self, t: Tensor, limit: float = 4.0) -> Tensor:
        v = np.abs(self.value(t))
        if not v.size or v.max() <= limit:
            return t
        return gc.tanh(t) * limit if self.src.bool(0.5) else t * float(limit / v.max())

    def away_from_zero(self, t: Tensor) -> Tensor:
        v = np.abs(self.value(t))
        if v.size and v.min() > 0.3 and v.max() < 30:
            return t
        return self.positive(t) if self.src.bool(0.5) else -self.positive(t)

    def add(self, t: Tensor) -> Tensor:
        """Put a result in the pool (floats only), rescaled if it grew large."""
        if t.dtype.kind != "f":
            return t
        v = np.abs(self.value(t))
        if v.size and np.all(np.isfinite(v)) and v.max() > 100:
            t = t * float(10.0 / v.max())
        self.pool.append(t)
        return t

    def axes(self, ndim: int):
        """An axis argument: None, an int (maybe negative) or a tuple."""
        if ndim == 0:
            return None
        k = self.src.int(0, 2)
        if k == 0:
            return None
        if k == 1:
            return self.src.int(-ndim, ndim - 1)
        return tuple(a for a in range(ndim) if self.src.bool(0.5)) or (0,)


# --- families -------------------------------------------------------------------------------
FAMILIES: dict = {}


def family(*op_names):
    """Register a builder; `op_names` are the ops it adds (checked by the coverage test)."""
    def deco(fn):
        FAMILIES[fn.__name__] = fn
        fn.op_names = op_names
        return fn
    return deco


UNARY = {
    "neg": gc.neg, "abs": gc.abs, "sign": gc.sign, "square": gc.square, "relu": gc.relu,
    "sigmoid": gc.sigmoid, "tanh": gc.tanh, "erf": gc.erf,
    "leaky_relu": lambda x: gc.leaky_relu(x, 0.1), "elu": lambda x: gc.elu(x, 0.7),
    "gelu": gc.gelu, "gelu_tanh": lambda x: gc.gelu(x, approximate="tanh"),
}


@family("neg", "abs", "sign", "square", "relu", "sigmoid", "tanh", "erf", "leaky_relu",
        "elu", "gelu")
def unary(b: Builder):
    fn = UNARY[b.src.choice(sorted(UNARY))]
    return b.add(fn(b.pick()))


@family("exp")
def exp(b: Builder):
    return b.add(gc.exp(b.bounded(b.pick())))


@family("log", "sqrt")
def log_sqrt(b: Builder):
    x = b.positive(b.pick())
    return b.add(gc.log(x) if b.src.bool() else gc.sqrt(x))


@family("softplus")
def softplus(b: Builder):
    beta, threshold = b.src.choice([(1.0, 20.0), (2.0, 20.0), (0.5, 1.5), (1.0, 1.0)])
    return b.add(gc.softplus(b.pick(), beta=beta, threshold=threshold))


@family("add", "sub", "mul", "maximum", "minimum")
def arithmetic(b: Builder):
    a, c = b.operand_pair()
    fn = b.src.choice([gc.add, gc.sub, gc.mul, gc.maximum, gc.minimum])
    return b.add(fn(a, c))


@family("div")
def div(b: Builder):
    a, c = b.operand_pair()
    if isinstance(c, Tensor):
        c = b.away_from_zero(c)
    return b.add(a / c)


@family("pow")
def power(b: Builder):
    base = b.pick()
    k = b.src.int(0, 2)
    if k == 0:  # integer exponent: any sign of base
        return b.add(b.bounded(base, 3.0) ** b.src.choice([2.0, 3.0]))
    base = b.positive(base)
    if k == 1:
        return b.add(base ** b.src.choice([0.5, -1.0, 1.5, -0.5]))
    return b.add(base ** b.bounded(b.like_broadcast(b.shape(base), scalar=False), 2.0)
                 if b.src.bool(0.7) else 2.0 ** b.bounded(base, 3.0))


@family("greater", "greater_equal", "less", "equal", "where")
def select(b: Builder):
    a, c = b.operand_pair()
    k = b.src.int(0, 3)
    if k == 3:  # exact ties on purpose: equal on values that are equal in any precision
        x = b.pick()
        cond = gc.equal(x, gc.maximum(x, b.src.choice([0.0, 0.5])))
    else:
        cond = [gc.greater, gc.greater_equal, gc.less][k](a, c)
    shape = b.value(cond).shape
    u, v = b.like_broadcast(shape, scalar=False), b.like_broadcast(shape)
    if b.src.bool(0.3):
        u, v = v, u
    return b.add(gc.where(cond, u, v))


@family("cast")
def cast(b: Builder):
    x = b.pick()
    k = b.src.int(0, 2)
    other = "float64" if b.dtype == np.float32 else "float32"
    if k == 0:  # through the other float width and back
        return b.add(gc.cast(gc.cast(x, other), b.dtype))
    if k == 1:  # a comparison as a 0/1 mask
        return b.add(x * gc.cast(gc.greater(x, b.src.choice([0.0, 0.3])), b.dtype))
    return b.add(gc.cast(gc.cast(x * 3.0, b.src.choice(["int32", "int64"])), b.dtype) + x)


@family("sum", "mean", "max", "min", "logsumexp")
def reduction(b: Builder):
    x = b.pick(min_ndim=1)
    fn = b.src.choice([gc.sum, gc.mean, gc.max, gc.min, gc.logsumexp])
    return b.add(fn(x, axis=b.axes(x.ndim), keepdims=b.src.bool()))


@family("max")
def max_over_broadcast(b: Builder):
    """A reduction over broadcast copies: every element ties (the gradient is shared)."""
    x = b.pick(max_ndim=2)
    shape = (b.src.int(2, 3),) + b.shape(x)
    return b.add(gc.broadcast_to(x, shape).max(axis=0) * 1.0)


@family("argmax", "one_hot")
def argmax_pick(b: Builder):
    x = b.pick(min_ndim=1, max_ndim=3)
    axis = b.src.int(-x.ndim, x.ndim - 1)
    n = b.shape(x)[axis]
    picked = gc.ops.one_hot(gc.ops.argmax(x, axis), n, b.src.choice(["int64", b.dtype]))
    moved = gc.transpose(x, [a for a in range(x.ndim) if a != axis % x.ndim] + [axis % x.ndim])
    return b.add((moved * picked).sum(axis=-1))


@family("reshape")
def reshape(b: Builder):
    x = b.pick(min_ndim=1)
    n = b.size(x)
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    first = b.src.choice(divisors)
    shape = [first, n // first]
    if b.src.bool(0.4):
        shape = [1] + shape
    if b.src.bool(0.5):
        shape[b.src.int(0, len(shape) - 1)] = -1
    return b.add(gc.reshape(x, tuple(shape)))


@family("transpose")
def transpose(b: Builder):
    x = b.pick(min_ndim=2)
    perm = list(range(x.ndim))
    b.rng.shuffle(perm)  # drawn from the builder's seed: every permutation is valid
    if perm == sorted(perm):
        perm = perm[::-1]
    return b.add(gc.transpose(x, perm))


@family("broadcast_to", "expand_dims")
def broadcast(b: Builder):
    x = b.pick(max_ndim=3)
    if b.src.bool(0.4):
        return b.add(gc.ops.expand_dims(x, b.src.int(0, x.ndim)))
    shape = tuple(b.src.int(2, 3) if d == 1 and b.src.bool(0.6) else d for d in b.shape(x))
    shape = (b.src.choice([1, 2]),) * b.src.int(0, 1) + shape
    if shape == b.shape(x):
        shape = (2,) + shape
    return b.add(gc.broadcast_to(x, shape))


@family("concat")
def concat(b: Builder):
    x = b.pick(min_ndim=1)
    shape = b.shape(x)
    axis = b.src.int(0, x.ndim - 1)
    if x.shape[axis] is None:  # the gradient needs the sizes along the concat axis
        axis = x.ndim - 1 if x.ndim > 1 else 0
        if x.shape[axis] is None:
            x = x * 1.0
            x = gc.reshape(x, shape)
    parts = [x]
    for _ in range(b.src.int(1, 2)):
        other = list(shape)
        other[axis] = b.src.int(1, 2)
        parts.append(b.leaf(tuple(other), static=True))
    order = b.src.int(0, len(parts) - 1)
    parts = parts[order:] + parts[:order]
    return b.add(gc.ops.concat(parts, axis=axis - x.ndim if b.src.bool() else axis))


def _index_item(b: Builder, d: int):
    k = b.src.int(0, 4)
    if k == 0:
        return b.src.int(-d, d - 1)
    if k == 1:
        return slice(None)
    if k == 2:
        return slice(b.src.int(0, d - 1), None)
    if k == 3:
        return slice(None, None, -1)
    return slice(b.src.int(-d, -1), None, b.src.choice([1, 2]))


@family("getitem")
def getitem(b: Builder):
    x = b.pick(min_ndim=1)
    index = [_index_item(b, d) for d in b.shape(x)]
    if b.src.bool(0.3):
        index.insert(b.src.int(0, len(index)), None)
    if b.src.bool(0.3) and len(index) > 1:
        index = [Ellipsis] + index[-b.src.int(1, len(index) - 1):]
    return b.add(x[tuple(index)] * 1.0)


@family("getitem")
def slices_summed(b: Builder):
    """Several slices of one tensor used together: their gradients merge into one
    scatter_slices (as an unrolled RNN's steps do)."""
    x = b.pick(min_ndim=2)
    n = b.shape(x)[0]
    total = x[0]
    for i in range(1, min(n, 3)):
        total = total + x[i] * float(i + 1)
    return b.add(total)


@family("matmul")
def matmul(b: Builder):
    a = b.pick(min_ndim=1, max_ndim=3)
    sa = b.shape(a)
    k = sa[-1]
    n = b.src.choice([1, 2, 3])
    kind = b.src.int(0, 3)
    if kind == 0 or a.ndim == 1:
        other = b.leaf((k, n) if b.src.bool(0.8) else (k,))
    elif kind == 1:  # batched, broadcast batch dimensions
        other = b.leaf(tuple(1 if b.src.bool() else d for d in sa[:-2]) + (k, n))
    elif kind == 2:  # the tensor on the right
        other, a = a, b.leaf((n, sa[-2]) if a.ndim >= 2 else (n, k))
        if a.ndim == 2 and other.ndim == 1:
            other, a = a, other
    else:
        other = b.leaf((k,))
    if a.ndim == 1 and other.ndim == 1:
        return b.add(a @ other)
    return b.add(gc.ops.matmul(a, other))


@family("matmul", "concat", "transpose")
def shared_weight(b: Builder):
    """One weight applied at several steps: gc.grad stacks the products into one GEMM."""
    w = b.leaf((b.src.int(1, 3), b.src.int(1, 3)))
    steps = b.src.int(2, 3)
    rows = b.src.int(1, 3)
    total = None
    for _ in range(steps):
        y = gc.ops.matmul(b.leaf((rows, b.shape(w)[0])), w)
        total = y if total is None else total + y
    return b.add(total)


@family("softmax", "log_softmax")
def softmax(b: Builder):
    x = b.pick(min_ndim=1)
    fn = b.src.choice([gc.softmax, gc.log_softmax])
    return b.add(fn(x, axis=b.src.int(-x.ndim, x.ndim - 1)))


@family("log_softmax", "softplus")
def stable_forms(b: Builder):
    """Forms the simplifier rewrites: log(softmax), log(sigmoid), log(1 - sigmoid)."""
    x = b.bounded(b.pick(min_ndim=1), 6.0)
    k = b.src.int(0, 2)
    if k == 0:
        return b.add(gc.log(gc.softmax(x, axis=-1)))
    if k == 1:
        return b.add(gc.log(gc.sigmoid(x)))
    return b.add(gc.log(1.0 - gc.sigmoid(x)))


def _matrix(b: Builder, min_cols: int = 1) -> Tensor:
    """A 2-D float tensor from the graph (flattened) or a new one."""
    x = b.pick(min_ndim=1)
    s = b.shape(x)
    if x.ndim == 2 and x.shape[1] is None:  # losses need the class count statically
        x = gc.reshape(x, s)
    if x.ndim != 2 or s[1] < min_cols or b.src.bool(0.2):
        if len(s) >= 2 and s[-1] >= min_cols:
            x = gc.reshape(x, (-1, s[-1]))
        else:
            x = b.leaf((b.src.int(1, 3), b.src.int(min_cols, 4)))
    return x


@family("softmax_cross_entropy", "one_hot")
def cross_entropy(b: Builder):
    logits = _matrix(b)
    n, c = b.shape(logits)
    labels = b.labels((n,), c)
    reduction = b.src.choice(["mean", "sum", "none"])
    if b.src.bool(0.3):  # written by hand: the simplifier fuses it into the op
        per = -gc.sum(gc.ops.one_hot(labels, c) * gc.log_softmax(logits, axis=1), axis=1)
        return b.add(per.mean() if reduction == "mean" else per)
    return b.add(gc.softmax_cross_entropy(logits, labels, reduction=reduction))


@family("binary_cross_entropy_with_logits")
def bce(b: Builder):
    logits = b.pick()
    targets = gc.sigmoid(b.like_broadcast(b.shape(logits), scalar=False)) if b.src.bool() else \
        b.leaf(b.shape(logits), b.rng.uniform(size=b.shape(logits)))
    return b.add(gc.binary_cross_entropy_with_logits(
        logits, targets, reduction=b.src.choice(["mean", "sum", "none"])))


@family("mul", "sum")
def losses(b: Builder):
    k = b.src.int(0, 2)
    reduction = b.src.choice(["mean", "sum", "none"])
    if k == 0:
        a, c = b.operand_pair()
        return b.add(gc.mse_loss(a * 1.0, c, reduction=reduction))
    x = _matrix(b, min_cols=2)
    if k == 1:
        labels = b.labels((b.shape(x)[0],), b.shape(x)[1])
        return b.add(gc.hinge_loss(x, labels, margin=b.src.choice([1.0, 0.5]),
                                   reduction=reduction))
    shape = b.shape(x)
    return b.add(gc.triplet_loss(x, b.leaf(shape), b.leaf(shape), reduction=reduction))


def _image(b: Builder, channels=None) -> Tensor:
    """A 4-D NCHW float tensor: a graph tensor reshaped, or a new leaf."""
    x = b.pick(min_ndim=1)
    n = b.size(x)
    for h in (4, 3):
        if n % (h * h) == 0 and b.src.bool(0.6) and (channels is None or
                                                     n // (h * h) % channels == 0):
            c = channels or 1
            return gc.reshape(x, (-1, c, h, h))
    return b.leaf((b.src.int(1, 2), channels or b.src.int(1, 2), b.src.int(3, 5),
                   b.src.int(3, 5)))


@family("conv2d")
def conv2d(b: Builder):
    groups = b.src.choice([1, 1, 2])
    x = _image(b, channels=groups * b.src.int(1, 2))
    n, c, h, w = b.shape(x)
    kh, kw = b.src.int(1, min(3, h)), b.src.int(1, min(3, w))
    dilation = (1, 1) if b.src.bool(0.7) else (b.src.int(1, 2), 1)
    if (kh - 1) * dilation[0] + 1 > h:
        dilation = (1, 1)
    weight = b.leaf((groups * b.src.int(1, 2), c // groups, kh, kw))
    bias = b.leaf((b.shape(weight)[0],)) if b.src.bool(0.4) else None
    return b.add(gc.ops.conv2d(x, weight, bias, stride=b.src.choice([1, (1, 2), 2]),
                               padding=b.src.choice([0, 1, (1, 0)]), dilation=dilation,
                               groups=groups))


@family("max_pool2d", "avg_pool2d")
def pool(b: Builder):
    x = _image(b)
    h, w = b.shape(x)[2:]
    k = (b.src.int(1, min(3, h)), b.src.int(1, min(3, w)))
    padding = (b.src.int(0, k[0] // 2), b.src.int(0, k[1] // 2))
    stride = None if b.src.bool() else (b.src.int(1, 2), b.src.int(1, 2))
    fn = b.src.choice([gc.ops.max_pool2d, gc.ops.avg_pool2d])
    y = fn(x, k, stride, padding)
    # a nonlinearity after the pool: its second derivative reaches the pool's gradient op
    return b.add(gc.tanh(y) if b.src.bool() else y)


@family("embedding")
def embedding(b: Builder):
    w = _matrix(b)
    n = b.shape(w)[0]
    ids = b.labels(b.random_shape(b.src.int(1, 2), 8), n)
    return b.add(gc.ops.embedding(ids, w))


@family("gather")
def gather(b: Builder):
    """torch.gather (an index no larger than the input off the axis) or
    numpy.take_along_axis (index and input broadcast against each other)."""
    x = b.pick(min_ndim=1)
    shape = b.shape(x)
    axis = b.src.int(0, len(shape) - 1)
    torch_rule = b.src.bool()
    dims = tuple(b.src.int(1, 3) if d == axis else b.src.int(1, n) if torch_rule
                 else b.src.choice([n, 1]) for d, n in enumerate(shape))
    index = b.labels(dims, shape[axis])
    if torch_rule:
        return b.add(gc.gather(x, axis, index))
    return b.add(gc.take_along_axis(x, index, axis))


@family("random_uniform")
def random(b: Builder):
    """Counter-based randomness: a pure function of the graph's counter, which the tests
    reset before every call, so every evaluation sees the same numbers."""
    x = b.pick(min_ndim=1)
    if b.src.bool():
        return b.add(gc.ops.dropout(x, p=b.src.choice([0.25, 0.5])))
    picked = gc.ops.one_hot(gc.ops.sample_categorical(x), b.shape(x)[-1], b.dtype)
    return b.add(x * picked + x)


@family("layer_norm")
def layer_norm(b: Builder):
    x = b.pick(min_ndim=1)
    if b.shape(x)[-1] < 2:
        x = b.leaf(b.shape(x)[:-1] + (3,))
    k = b.src.int(1, min(2, x.ndim))
    shape = b.shape(x)[x.ndim - k:]
    weight = b.leaf(shape) if b.src.bool() else None
    bias = b.leaf(shape) if b.src.bool() else None
    return b.add(gc.ops.layer_norm(x, shape, weight=weight, bias=bias,
                                   eps=b.src.choice([1e-5, 0.1])))


@family("batch_norm")
def batch_norm(b: Builder):
    x = b.pick(min_ndim=2, max_ndim=4)
    shape = b.shape(x)
    training = b.src.bool()
    if training and int(np.prod(shape, dtype=np.int64)) == shape[1]:
        x = b.leaf((2,) + shape[1:])  # batch statistics need two values per channel
        shape = b.shape(x)
    c = (shape[1],)
    running = (b.leaf(c), b.leaf(c, b.rng.uniform(0.5, 2.0, size=c)))
    weight = b.leaf(c) if b.src.bool() else None
    bias = b.leaf(c) if b.src.bool() else None
    return b.add(gc.ops.batch_norm(x, *running, weight=weight, bias=bias, training=training,
                                   eps=b.src.choice([1e-5, 0.1])))


# Registered ops no family builds directly. Each appears in graphs anyway, as noted, and the
# coverage test checks that; EXCLUDED lists ops that never appear, with the reason.
VIA_GRADIENTS = {
    "sum_to_like", "broadcast_like", "reshape_like", "zeros_like", "getitem_grad",
    "scatter_slices", "conv2d_input_grad", "conv2d_weight_grad", "max_pool2d_grad",
    "max_pool2d_gather", "avg_pool2d_grad", "softmax_cross_entropy_backward",
    "embedding_grad", "count", "scatter_add",
}
LEAVES = {"placeholder", "parameter", "constant"}
EXCLUDED: dict = {}  # op name -> why it cannot be fuzzed; none today


# --- whole cases ----------------------------------------------------------------------------
def build_case(src: Source, dtype, focus: str | None = None, families=None,
               max_extra: int = 3) -> Case:
    """A random graph around the family `focus` (drawn if None), with a few other families
    before and after it."""
    names = sorted(families or FAMILIES)
    focus = focus or src.choice(names)
    graph = gc.Graph("fuzz")
    with graph:
        b = Builder(src, dtype, dynamic=src.bool(0.15))
        used = []
        n_before = src.int(0, max_extra)
        for _ in range(n_before):
            used.append(src.choice(names))
            FAMILIES[used[-1]](b)
        used.append(focus)
        last = FAMILIES[focus](b)
        for _ in range(src.int(0, max(max_extra - n_before, 0))):
            used.append(src.choice(names))
            last = FAMILIES[used[-1]](b)
        outputs = [last]
        others = [t for t in b.pool if t is not last and not isinstance(
            t, (Placeholder, Parameter, Constant))]
        if others and src.bool(0.4):
            outputs.append(src.choice(others))
        loss = None
        for y in outputs:
            w = b.rng.normal(size=b.shape(y)).astype(y.dtype)
            term = gc.sum(y * gc.constant(w, dtype=y.dtype))
            loss = term if loss is None else loss + term
        wrt = [x for x in b.wrt if any(x is n for n in topo_order([loss]))]
    return Case(graph, np.dtype(dtype), outputs, loss, wrt, b.feeds, used)


def hypothesis_case(draw, dtypes=("float32", "float64"), families=None, max_extra=3) -> Case:
    """build_case with every choice drawn by hypothesis (for @st.composite)."""
    src = HypothesisSource(draw)
    return build_case(src, src.choice(dtypes), families=families, max_extra=max_extra)


def reset_random_streams(graph: gc.Graph) -> None:
    """Counter-based random ops give the same numbers in every evaluation from here."""
    counter = graph._names.get("rng/counter")
    if counter is not None:
        counter.value = np.zeros((), np.int64)


# --- finite differences -----------------------------------------------------------------------
def finite_difference(f, x: np.ndarray, h: float = 1e-6, rtol: float = 1e-4):
    """Central differences of scalar f at x, float64, and a mask of the elements where f is
    smooth enough to trust them: where the forward and backward one-sided differences agree
    (within the tolerance the caller compares with), no kink, jump or tie lies within h."""
    x = np.array(x, dtype=np.float64)
    f0 = f(x)
    grad = np.zeros(x.shape)
    smooth = np.ones(x.shape, bool)
    for j in np.ndindex(x.shape):
        orig = x[j]
        x[j] = orig + h
        up = f(x)
        x[j] = orig - h
        down = f(x)
        x[j] = orig
        fwd, bwd = (up - f0) / h, (f0 - down) / h
        grad[j] = (up - down) / (2 * h)
        smooth[j] = np.isfinite(grad[j]) and abs(fwd - bwd) <= rtol * (1 + abs(grad[j]))
    return grad, smooth
