"""Parameter initializers (graph stage; the torch/Keras conventions for fan-in and fan-out)."""
from __future__ import annotations

import math

import numpy as np

from .errors import GraphError


def _fans(shape: tuple) -> tuple[int, int]:
    """fan_in, fan_out as torch computes them: (out, in, *kernel) for >2-D, (in, out) for
    Dense weights stored as (in, out)."""
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[2:]))
    return shape[1] * receptive, shape[0] * receptive


def _glorot_uniform(rng, shape):
    fi, fo = _fans(shape)
    limit = math.sqrt(6.0 / (fi + fo))
    return rng.uniform(-limit, limit, shape)


def _glorot_normal(rng, shape):
    fi, fo = _fans(shape)
    return rng.normal(0.0, math.sqrt(2.0 / (fi + fo)), shape)


def _he_uniform(rng, shape):
    limit = math.sqrt(6.0 / _fans(shape)[0])
    return rng.uniform(-limit, limit, shape)


def _he_normal(rng, shape):
    return rng.normal(0.0, math.sqrt(2.0 / _fans(shape)[0]), shape)


INITIALIZERS = {
    "zeros": lambda rng, shape: np.zeros(shape),
    "ones": lambda rng, shape: np.ones(shape),
    "normal": lambda rng, shape: rng.normal(0.0, 1.0, shape),
    "uniform": lambda rng, shape: rng.uniform(0.0, 1.0, shape),
    "glorot_uniform": _glorot_uniform,
    "glorot_normal": _glorot_normal,
    "he_normal": _he_normal,
    "he_uniform": _he_uniform,
}


def initialize(init, shape: tuple, dtype, seed: int | None, name: str) -> np.ndarray:
    """A fresh array for parameter `name`: `init` is a name above or a callable(shape, rng)."""
    rng = np.random.default_rng(seed)
    if callable(init):
        values = init(shape, rng)
    elif init in INITIALIZERS:
        values = INITIALIZERS[init](rng, shape)
    else:
        raise GraphError(f"parameter '{name}': unknown initializer {init!r}; choose one of "
                         f"{sorted(INITIALIZERS)} or pass value=")
    return np.asarray(values, dtype=dtype).reshape(shape)
