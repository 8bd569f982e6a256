"""Special functions NumPy lacks (used by op references), vectorized with Numba when it is
installed."""
from __future__ import annotations

import math

import numpy as np

_erf_impl = None


def _build_erf():
    try:
        import numba

        @numba.vectorize(["float32(float32)", "float64(float64)"], cache=True)
        def erf_vec(x):
            return math.erf(x)

        return erf_vec
    except Exception:  # Numba missing or unusable: exact but slower Python fallback
        py_erf = np.frompyfunc(math.erf, 1, 1)
        return lambda x: py_erf(x).astype(x.dtype)


def erf(x: np.ndarray) -> np.ndarray:
    """The error function, exact to the dtype's rounding."""
    global _erf_impl
    if _erf_impl is None:
        _erf_impl = _build_erf()
    x = np.asarray(x)
    return np.asarray(_erf_impl(x), dtype=x.dtype)
