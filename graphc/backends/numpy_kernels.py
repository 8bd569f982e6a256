"""NumPy kernels that write into a preallocated output (`out=`), for the ops that are not
elementwise (elementwise ops go through the fused-kernel code generator). An op missing
here runs its reference and copies the result into place."""
from __future__ import annotations

import numpy as np

TILE_ROWS_ELEMENTS = 1 << 16


def _matmul(a, b, out):
    np.matmul(a, b, out=out)


def _reduce(fn):
    def kernel(x, out, axes, keepdims):
        fn(x, axis=axes, keepdims=keepdims, out=out)
    return kernel


def _rows(n_rows: int, row_len: int):
    """Row tiles of about TILE_ROWS_ELEMENTS elements."""
    step = max(1, TILE_ROWS_ELEMENTS // max(row_len, 1))
    for r0 in range(0, n_rows, step):
        yield r0, min(r0 + step, n_rows)


def _softmax_rows(x, out, log: bool):
    """Softmax (or log-softmax) of each row of a 2-D array, tile by tile."""
    for r0, r1 in _rows(x.shape[0], x.shape[1]):
        t, o = x[r0:r1], out[r0:r1]
        m = np.max(t, axis=1, keepdims=True)
        np.subtract(t, m, out=o)
        if log:
            e = np.exp(o)
            np.subtract(o, np.log(np.sum(e, axis=1, keepdims=True)), out=o)
        else:
            np.exp(o, out=o)
            np.divide(o, np.sum(o, axis=1, keepdims=True), out=o)


def _softmax_family(log: bool):
    def kernel(x, out, axis):
        if x.ndim == 2 and axis % 2 == 1:
            _softmax_rows(x, out, log)
            return
        from ..ops.nn import _log_softmax, _softmax
        np.copyto(out, (_log_softmax if log else _softmax)(x, axis))
    return kernel


def _check_labels(labels, n_classes):
    from ..ops.nn import _check_labels as check
    check(labels, n_classes, "softmax_cross_entropy")


def _sce(logits, labels, out):
    """Per-row loss logsumexp(x) - x[label], one tile of rows at a time."""
    _check_labels(labels, logits.shape[1])
    for r0, r1 in _rows(*logits.shape):
        z = logits[r0:r1] - np.max(logits[r0:r1], axis=1, keepdims=True)
        lse = np.log(np.sum(np.exp(z), axis=1))  # relative to the row maximum: no cancellation
        np.subtract(lse, z[np.arange(r1 - r0), labels[r0:r1]], out=out[r0:r1])


def _sce_backward(g, logits, labels, out):
    """g[:, None] * (softmax(logits) - one_hot(labels)), one tile of rows at a time."""
    _check_labels(labels, logits.shape[1])
    for r0, r1 in _rows(*logits.shape):
        t, o = logits[r0:r1], out[r0:r1]
        np.subtract(t, np.max(t, axis=1, keepdims=True), out=o)
        np.exp(o, out=o)
        np.divide(o, np.sum(o, axis=1, keepdims=True), out=o)
        o[np.arange(r1 - r0), labels[r0:r1]] -= 1
        np.multiply(o, g[r0:r1, None], out=o)


INTO = {
    "matmul": _matmul,
    "sum": _reduce(np.sum),
    "mean": _reduce(np.mean),
    "max": _reduce(np.max),
    "min": _reduce(np.min),
    "softmax": _softmax_family(log=False),
    "log_softmax": _softmax_family(log=True),
    "softmax_cross_entropy": _sce,
    "softmax_cross_entropy_backward": _sce_backward,
}
