"""NumPy kernels (CPU backend) that write into a preallocated output (`out=`), for the ops
that are not elementwise (elementwise ops go through the fused-kernel code generator). An op
missing here runs its reference and copies the result into place."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import conv_kernels as _conv_kernels

TILE_ROWS_ELEMENTS = 1 << 16


def _matmul(a, b, out):
    np.matmul(a, b, out=out)


def _reduce(fn):
    def kernel(x, out, axes, keepdims):
        fn(x, axis=axes, keepdims=keepdims, out=out)
    return kernel


def _rows(n_rows: int, row_len: int, elements: int = TILE_ROWS_ELEMENTS):
    """Row tiles of about `elements` elements."""
    step = max(1, elements // max(row_len, 1))
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
        from ...ops.nn import _log_softmax, _softmax
        np.copyto(out, (_log_softmax if log else _softmax)(x, axis))
    return kernel


def _check_labels(labels, n_classes):
    from ...ops.nn import _check_labels as check
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


_POOL = None


def _parallel(fn, tiles) -> None:
    """Run fn(r0, r1) over row tiles on a few threads (NumPy releases the GIL inside its
    loops); serially when the work is small or the machine has one core."""
    global _POOL
    tiles = list(tiles)
    workers = min(os.cpu_count() or 1, 8)
    if len(tiles) < 4 or workers < 2:
        for r0, r1 in tiles:
            fn(r0, r1)
        return
    if _POOL is None:
        _POOL = ThreadPoolExecutor(workers, thread_name_prefix="graphc")
    for f in [_POOL.submit(fn, r0, r1) for r0, r1 in tiles]:
        f.result()


def _sce_with_backward(logits, labels, g, loss_out, grad_out):
    """Loss and gradient of softmax cross-entropy in one pass over the logits: each tile of
    rows is read once from memory, its exponentials computed once."""
    _check_labels(labels, logits.shape[1])
    g = np.broadcast_to(g, loss_out.shape)

    def tile(r0, r1):
        t, o, rows = logits[r0:r1], grad_out[r0:r1], np.arange(r1 - r0)
        np.subtract(t, np.max(t, axis=1, keepdims=True), out=o)
        picked = o[rows, labels[r0:r1]]
        np.exp(o, out=o)
        total = np.sum(o, axis=1)
        np.subtract(np.log(total), picked, out=loss_out[r0:r1])
        np.multiply(o, (g[r0:r1] / total)[:, None], out=o)
        o[rows, labels[r0:r1]] -= g[r0:r1]

    big = logits.size >= 1 << 22
    _parallel(tile, _rows(logits.shape[0], logits.shape[1], 1 << 20) if big
              else [(0, logits.shape[0])])


# Kernels that compute two graph steps at once: (first op, second op) -> f(*inputs, *outs).
PAIRS = {("softmax_cross_entropy", "softmax_cross_entropy_backward"): _sce_with_backward}

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
INTO.update(_conv_kernels.INTO)
