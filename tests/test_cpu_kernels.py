"""The CPU backend's NumPy kernels (graphc/backends/cpu/kernels.py) that take another route
than the obvious NumPy call: their results are NumPy's."""
import threading

import numpy as np
import pytest

from graphc.backends.cpu import conv_kernels, kernels

MATMUL = kernels.INTO["matmul"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m, k, n", [(16, 512, 2048), (64, 512, 2048), (3, 40, 300),
                                     (100, 2048, 256), (256, 128, 2048), (64, 128, 4096)])
@pytest.mark.parametrize("transposed_weight", [True, False])
def test_matmul_equals_numpys_whichever_route_it_takes(dtype, m, k, n, transposed_weight, rng):
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((n, k)).astype(dtype).T if transposed_weight else \
        rng.standard_normal((k, n)).astype(dtype)
    out = np.full((m, n), np.nan, dtype)
    MATMUL(a, b, out=out)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, a.astype(np.float64) @ b.astype(np.float64),
                               rtol=tol, atol=tol * np.sqrt(k))


@pytest.mark.skipif(not kernels._runs_openblas(), reason="the route is chosen for OpenBLAS")
def test_few_rows_times_a_transposed_weight_go_through_the_transposed_product(rng):
    """x @ W.T with few rows is computed as (W @ x.T).T in a per-thread scratch buffer that
    is kept: the same call again writes no new memory."""
    a = rng.standard_normal((8, 512)).astype(np.float32)
    w = rng.standard_normal((1024, 512)).astype(np.float32)
    out = np.empty((8, 1024), np.float32)
    MATMUL(a, w.T, out=out)
    scratch = conv_kernels._buffer("matmul_transposed", (1024, 8), np.float32)
    np.testing.assert_array_equal(scratch.T, out)  # the transposed product was written there
    MATMUL(a * 2, w.T, out=out)
    assert conv_kernels._buffer("matmul_transposed", (1024, 8), np.float32) is scratch
    np.testing.assert_allclose(out, (a * 2) @ w.T, rtol=1e-5, atol=1e-4)


def test_matmul_into_a_strided_output_or_batched_operands_takes_numpys_route(rng):
    a = rng.standard_normal((8, 512)).astype(np.float32)
    w = rng.standard_normal((1024, 512)).astype(np.float32)
    parent = np.zeros((1024, 8), np.float32)
    MATMUL(a, w.T, out=parent.T)  # the output itself is a transposed view
    np.testing.assert_allclose(parent.T, a @ w.T, rtol=1e-5, atol=1e-4)
    a3 = rng.standard_normal((2, 8, 512)).astype(np.float32)
    out3 = np.empty((2, 8, 1024), np.float32)
    MATMUL(a3, w.T, out=out3)
    np.testing.assert_allclose(out3, a3 @ w.T, rtol=1e-5, atol=1e-4)


def test_concurrent_transposed_products_keep_their_own_scratch(rng):
    w = rng.standard_normal((512, 256)).astype(np.float32)
    inputs = [rng.standard_normal((16, 256)).astype(np.float32) for _ in range(4)]
    results, errors = [None] * 4, []

    def work(i):
        try:
            out = np.empty((16, 512), np.float32)
            for _ in range(50):
                MATMUL(inputs[i], w.T, out=out)
                np.testing.assert_allclose(out, inputs[i] @ w.T, rtol=1e-5, atol=1e-4)
            results[i] = out
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(r is not None for r in results)
