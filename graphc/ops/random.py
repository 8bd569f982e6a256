"""Counter-based random numbers (graph stage: registry ops): `random_uniform` is a pure
function of (seed, counter, element index), so a compiled step stays a pure plan, a backend
computes the same stream, and a checkpoint (which saves the counter) resumes the same
stream. Each training step advances the graph's counter by one (compile adds that update),
and each random op in the graph has its own seed, so two dropout layers draw independent
masks."""
from __future__ import annotations

import numpy as np

from .. import dtypes as _dt
from ..errors import GraphError
from ..graph import Parameter, Tensor
from .common import lift
from .elementwise import cast, greater_equal
from .registry import apply, fail, register

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)


def _mix(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser (Steele, Lea and Flood, 2014), on uint64 arrays."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


def uniform_bits(seed: int, counter: int, n: int) -> np.ndarray:
    """n uint64 values, a pure function of (seed, counter, index)."""
    with np.errstate(over="ignore"):
        key = _mix(np.array([(seed & (2**64 - 1))], _U64) ^ _mix(
            np.array([int(counter) & (2**64 - 1)], _U64)))[0]
        return _mix(np.arange(n, dtype=_U64) * _GOLDEN + key)


def _random_uniform(counter, shape, seed, dtype):
    n = int(np.prod(shape, dtype=np.int64))
    bits = uniform_bits(seed, int(counter), n) >> _U64(40)  # 24 random bits
    return (bits.astype(np.float64) * 2.0 ** -24).astype(dtype).reshape(shape)


def _infer(shapes, dts, seed, dtype):
    if shapes[0] != () or dts[0].kind not in "iu":
        fail(f"the counter must be an integer scalar, got {shapes[0]} {dts[0]}")
    if not _dt.is_float(np.dtype(dtype)):
        fail(f"random_uniform makes floats, not {dtype}")
    return shapes[1], np.dtype(dtype)


register("random_uniform", _infer, _random_uniform, (None, None), shape_only=(1,),
         doc="uniform [0, 1) numbers shaped like the second input, from (seed, counter)")


def rng_counter(graph) -> Parameter:
    """The graph's random-stream counter: a non-trainable int64 scalar parameter."""
    node = graph._names.get("rng/counter")
    if node is None:
        graph._claim_name("rng/counter", "parameter")
        node = Parameter(graph, np.zeros((), np.int64), "rng/counter", False)
        graph._register_name(node)
    return node


def advance_counters(outputs: list, updates: dict) -> None:
    """A compiled step that draws random numbers advances its graph's counter by one per
    call: add that update (unless the caller updates the counter itself)."""
    from ..graph import topo_order
    values = [v for v in updates.values() if isinstance(v, Tensor)]
    for node in topo_order(list(outputs) + values):
        if node.op.name == "random_uniform":
            counter = node.inputs[0]
            if counter not in updates:
                updates[counter] = counter + 1
            return


def _next_seed(graph) -> int:
    graph._random_ops = getattr(graph, "_random_ops", 0) + 1
    return graph._random_ops * 0x632BE59BD9B4E019 & (2**63 - 1)


def random_uniform(like, seed: int | None = None, dtype=None) -> Tensor:
    """Uniform [0, 1) numbers of like's (run-time) shape, fresh on every step."""
    like = lift(like)
    g = like.graph
    seed = _next_seed(g) if seed is None else int(seed)
    dtype = np.dtype(dtype or (like.dtype if _dt.is_float(like.dtype) else "float32"))
    return apply("random_uniform", (rng_counter(g), like), seed=seed, dtype=dtype.name)


def dropout(x, p: float = 0.5, training: bool = True, seed: int | None = None) -> Tensor:
    """torch.nn.functional.dropout: in training, zero each element with probability p and
    scale the rest by 1/(1-p); outside training, x unchanged."""
    x = lift(x)
    if not 0.0 <= p <= 1.0:
        raise GraphError(f"dropout: p must lie in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = greater_equal(random_uniform(x, seed), p)
    return x * cast(keep, x.dtype) * (1.0 / (1.0 - p))


def sample_categorical(logits, seed: int | None = None) -> Tensor:
    """One class index per row, drawn from softmax(logits) along the last axis (Gumbel-max),
    fresh on every step; int64."""
    from .elementwise import log, maximum
    from .reductions import argmax
    logits = lift(logits)
    u = random_uniform(logits, seed)
    return argmax(logits - log(-log(maximum(u, 1e-20))), axis=-1)
