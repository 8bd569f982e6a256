"""The CPU backend's conv and max-pool kernels (graphc/backends/cpu/conv_kernels.py) equal
their ops' NumPy references: strides, padding, dilation, ties and NaN included."""
import numpy as np
import pytest

from graphc.backends.cpu import conv_kernels as K
from graphc.backends.cpu import numba_printer
from graphc.ops import conv as C

pytestmark = pytest.mark.skipif(not numba_printer.available(), reason="needs Numba")

CONVS = [((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1)),
         ((3, 2, 11, 10), (5, 2, 3, 2), (2, 1), (0, 2), (2, 1)),
         ((1, 1, 28, 28), (6, 1, 5, 5), (1, 1), (2, 2), (1, 1))]
POOLS = [((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)), ((2, 2, 9, 7), (3, 3), (2, 1), (1, 1)),
         ((1, 2, 6, 6), (3, 2), (1, 2), (1, 0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONVS)
def test_conv_kernels_equal_the_references(dtype, xs, ws, stride, padding, dilation):
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=xs).astype(dtype), rng.normal(size=ws).astype(dtype)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=1)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    y = C._conv2d(x, w, stride, padding, dilation, 1)
    out = np.empty_like(y)
    K.conv2d(x, w, out=out, **geo)
    np.testing.assert_allclose(out, y, **tol)
    gy = rng.normal(size=y.shape).astype(dtype)
    out = np.full_like(x, np.nan)
    K.conv2d_input_grad(gy, w, out=out, **geo)
    np.testing.assert_allclose(out, C._conv2d_input_grad(gy, w, x.shape, stride, padding,
                                                         dilation, 1), **tol)
    out = np.empty_like(w)
    K.conv2d_weight_grad(x, gy, out=out, **geo)
    np.testing.assert_allclose(out, C._conv2d_weight_grad(x, gy, w.shape, stride, padding,
                                                          dilation, 1), **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, kernel, stride, padding", POOLS)
def test_max_pool_kernels_equal_the_references(dtype, xs, kernel, stride, padding):
    rng = np.random.default_rng(1)
    x = rng.normal(size=xs).astype(dtype)
    x[0, 0, :2, :2] = 1.0  # a tie: the first maximum wins
    x[-1, -1, -1, -1] = np.nan  # NaN wins its windows, as np.max and np.argmax
    args = dict(kernel=kernel, stride=stride, padding=padding)
    y = C._max_pool2d(x, kernel, stride, padding)
    out = np.empty_like(y)
    K.max_pool2d(x, out=out, **args)
    np.testing.assert_array_equal(out, y)
    gy = rng.normal(size=y.shape).astype(dtype)
    out = np.full_like(x, np.nan)
    K.max_pool2d_grad(gy, x, out=out, **args)
    np.testing.assert_allclose(out, C._max_pool2d_grad(gy, x, kernel, stride, padding),
                               rtol=1e-5, atol=1e-6)  # overlapping windows: sum order
    gx = rng.normal(size=xs).astype(dtype)
    out = np.empty_like(y)
    K.max_pool2d_gather(gx, x, out=out, **args)
    np.testing.assert_array_equal(out, C._max_pool2d_gather(gx, x, kernel, stride, padding))


def test_unsupported_cases_run_the_reference():
    rng = np.random.default_rng(2)
    x, w = rng.normal(size=(2, 4, 6, 6)), rng.normal(size=(4, 2, 3, 3))  # groups=2
    out = np.empty((2, 4, 4, 4))
    K.conv2d(x, w, out=out, stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=2)
    np.testing.assert_allclose(out, C._conv2d(x, w, (1, 1), (0, 0), (1, 1), 2))
    xi = np.arange(16, dtype=np.int64).reshape(1, 1, 4, 4)
    out = np.empty((1, 1, 2, 2), np.int64)
    K.max_pool2d(xi, out=out, kernel=(2, 2), stride=(2, 2), padding=(0, 0))
    np.testing.assert_array_equal(out, C._max_pool2d(xi, (2, 2), (2, 2), (0, 0)))
