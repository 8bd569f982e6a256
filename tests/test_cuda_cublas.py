"""graphc/backends/cuda/cublas.py: the cuBLAS call a matmul becomes (flags, leading
dimensions, batch strides) checked by running it with cuBLAS's column-major semantics in
NumPy; the simulator's runtime computes every GEMM that way; on a device (gpu marker) our
own handle's GEMMs are captured into the step's CUDA graph."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import graphc as gc
from graphc.backends.cuda.cublas import OP_N, OP_T, emulate, plan_gemm

from cuda_env import NO_KERNELS, on_device

SHAPES = [(3, 4, 5), (1, 4, 5), (3, 1, 5), (3, 4, 1), (1, 1, 1), (2, 3, 2)]
# batch shapes a strided batched GEMM expresses: equal, one side 2-D, size-1 batches
BATCHES = [((), ()), ((2,), (2,)), ((2,), ()), ((), (3,)), ((1,), (4,)), ((2, 3), (2, 3)),
           ((2, 1, 3), (1, 1, 1)), ((1, 2, 3), (2, 3))]


def _operand(rng, shape, transposed):
    if not transposed:
        return rng.normal(size=shape)
    return np.swapaxes(rng.normal(size=shape[:-2] + (shape[-1], shape[-2])), -1, -2)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_layout_is_read_in_place_and_computes_the_product(m, k, n, dtype):
    rng = np.random.default_rng(0)
    for (ta, tb), (ba, bb) in itertools.product(itertools.product([0, 1], [0, 1]), BATCHES):
        a = _operand(rng, ba + (m, k), ta).astype(dtype)
        b = _operand(rng, bb + (k, n), tb).astype(dtype)
        want = np.matmul(a.astype(np.float64), b.astype(np.float64))
        call = plan_gemm(a.shape, a.strides, b.shape, b.strides, a.itemsize)
        assert call is not None, (ba, bb, ta, tb)
        out = np.full(want.shape, np.nan, dtype)
        emulate(call, a, b, out, 1.0, 0.0)  # beta = 0 never reads the output
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol)
        acc = np.ones(want.shape, dtype)
        emulate(call, a, b, acc, -0.5, 1.0)
        np.testing.assert_allclose(acc, 1 - 0.5 * want, rtol=tol, atol=tol)


def test_transposed_views_become_flags_not_copies():
    a = np.zeros((6, 4))  # A is (4, 6) as a.T
    b = np.zeros((6, 5))
    call = plan_gemm(a.T.shape, a.T.strides, b.shape, b.strides, 8)
    # C^T = B^T A^T: B is C-contiguous (read as B^T: no flag), A.T is F-contiguous (flag)
    assert (call.trans_b, call.trans_a) == (OP_N, OP_T)
    assert (call.m, call.n, call.k, call.ldb, call.lda, call.ldc) == (5, 4, 6, 5, 4, 5)
    row_slice = np.zeros((4, 10))[:, 2:8]  # a padded row: leading dimension 10
    call = plan_gemm(row_slice.shape, row_slice.strides, b.shape, b.strides, 8)
    assert (call.trans_a, call.lda) == (OP_N, 10)


def test_layouts_cublas_cannot_read_are_refused():
    a = np.zeros((2, 1, 3, 4))
    b = np.zeros((1, 3, 4, 5))  # batch (2, 3) walked with strides (12, 0) and (0, 20)
    assert plan_gemm(a.shape, a.strides, b.shape, b.strides, 8) is None
    rev = np.zeros((3, 4))[:, ::-1]
    assert plan_gemm(rev.shape, rev.strides, b.shape[2:], (40, 8), 8) is None
    every_other = np.zeros((3, 8))[:, ::2]
    assert plan_gemm(every_other.shape, every_other.strides, (4, 5), (40, 8), 8) is None


@pytest.mark.skipif(NO_KERNELS is not None or on_device, reason="the simulator's runtime")
def test_the_simulator_computes_gemms_as_the_device_call(monkeypatch):
    from graphc.backends.cuda import cublas
    calls = []
    real = cublas.emulate
    monkeypatch.setattr(cublas, "emulate", lambda call, *a: (calls.append(call), real(call, *a)))
    rng = np.random.default_rng(0)
    with gc.Graph():
        x = gc.placeholder("x", (4, 3), "float64")
        w = gc.parameter("w", value=rng.normal(size=(3, 2)))
        v = gc.parameter("v", value=rng.normal(size=(2, 3, 2)))
        loss = gc.sum(gc.tanh(x @ w) ** 2) + gc.sum(gc.matmul(v, gc.tanh(x @ w).T) ** 2)
        args = {"x": rng.normal(size=(4, 3))}
        want = gc.compile([loss, *gc.grad(loss, [w, v])], backend="numpy")(args)
        got = gc.compile([loss, *gc.grad(loss, [w, v])], backend="cuda")(args, to_numpy=True)
    for g, e in zip(got, want):
        np.testing.assert_allclose(g, e, rtol=1e-12)
    assert len(calls) >= 3 and any(c.batch == 2 for c in calls)
    assert any(OP_T in (c.trans_a, c.trans_b) for c in calls)  # gradients read transposes


@pytest.mark.gpu
@pytest.mark.skipif(not on_device, reason="needs a CUDA device (not the simulator)")
def test_gemms_are_captured_in_the_step_graph():
    rng = np.random.default_rng(0)
    with gc.Graph():
        x = gc.placeholder("x", (64, 32))
        w = gc.parameter("w", value=rng.normal(size=(32, 16)).astype(np.float32))
        v = gc.parameter("v", value=rng.normal(size=(16, 8)).astype(np.float32))
        loss = gc.mean(gc.relu(x @ w) @ v)
        step = gc.compile(loss, optimizer=gc.optim.Adam(lr=1e-3), backend="cuda")
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a refused capture warns and runs eagerly
            for _ in range(3):
                step(x=rng.normal(size=(64, 32)).astype(np.float32))
        assert gc.backends.get("cuda").runtime.blas.capturable
