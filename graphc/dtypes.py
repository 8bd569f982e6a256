"""Dtype rules (shared by every stage): the default float, promotion between tensors, safe
feed conversion."""
from __future__ import annotations

import numpy as np

DEFAULT_FLOAT = np.dtype("float32")


def as_dtype(dtype) -> np.dtype:
    """Normalise anything NumPy understands as a dtype."""
    return np.dtype(dtype)


def is_float(dtype) -> bool:
    return np.dtype(dtype).kind == "f"


def promote(*dtypes) -> np.dtype:
    """Result dtype of an arithmetic op: floats win over ints (as in torch), else NumPy's rule."""
    dts = [np.dtype(d) for d in dtypes]
    floats = [d for d in dts if d.kind == "f"]
    if floats:
        return np.result_type(*floats)
    if all(d.kind == "b" for d in dts):
        return np.dtype("bool")
    return np.result_type(*dts)


def can_feed(src: np.dtype, dst: np.dtype) -> bool:
    """Whether an array of dtype src may be converted to a placeholder of dtype dst."""
    src, dst = np.dtype(src), np.dtype(dst)
    if src == dst:
        return True
    if dst.kind in "iu" and src.kind in "iub":
        return True  # narrowing is checked against the values
    return bool(np.can_cast(src, dst, "same_kind"))
