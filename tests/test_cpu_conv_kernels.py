"""The CPU backend's conv and max-pool kernels (graphc/backends/cpu/conv_kernels.py) equal
their ops' NumPy references: strides, padding, dilation, ties and NaN included."""
import numpy as np
import pytest

from graphc.backends.cpu import conv_kernels as K
from graphc.backends.cpu import kernels
from graphc.backends.cpu import numba_printer
from graphc.ops import conv as C

pytestmark = pytest.mark.skipif(not numba_printer.available(), reason="needs Numba")

CONVS = [((2, 3, 9, 8), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1)),
         ((3, 2, 11, 10), (5, 2, 3, 2), (2, 1), (0, 2), (2, 1)),
         ((1, 1, 28, 28), (6, 1, 5, 5), (1, 1), (2, 2), (1, 1))]
POOLS = [((2, 3, 8, 8), (2, 2), (2, 2), (0, 0)), ((2, 2, 9, 7), (3, 3), (2, 1), (1, 1)),
         ((1, 2, 6, 6), (3, 2), (1, 2), (1, 0)), ((2, 2, 7, 9), (2, 2), (2, 2), (0, 0))]


@pytest.fixture(params=["direct", "im2col"])
def conv_path(request, monkeypatch):
    """Every stride-1 convolution and weight gradient computed directly from the padded
    image (as small first layers are), or every one through im2col and a GEMM."""
    limit = 10 ** 9 if request.param == "direct" else 0
    monkeypatch.setattr(K, "DIRECT_GRAD_K", limit)
    monkeypatch.setattr(K, "DIRECT_WEIGHTS", limit)
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONVS)
def test_conv_kernels_equal_the_references(dtype, xs, ws, stride, padding, dilation, conv_path):
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
    x[0, 1, 3, 3] = np.nan  # ... also as a window's last element
    x[0, 1, 4, 5] = x[0, 1, 5, 4] = 9.0  # a tie between a window's second and third
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


def test_the_weight_gradient_does_not_depend_on_which_thread_takes_a_chunk(monkeypatch,
                                                                            conv_path):
    """Bit-for-bit the same sum whichever thread took which chunk: the serial run, and
    threaded runs in which a different thread wins the chunks, agree exactly."""
    monkeypatch.setattr(K, "CHUNK_BYTES", 1)
    rng = np.random.default_rng(5)
    x, w = rng.normal(size=(9, 3, 8, 8)), rng.normal(size=(4, 3, 3, 3))
    geo = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)
    gy = rng.normal(size=C._conv2d(x, w, (1, 1), (1, 1), (1, 1), 1).shape)
    results = []
    for order in (None, "reversed", "interleaved"):
        if order is None:
            monkeypatch.setattr(kernels, "threads", lambda: 1, raising=False)
        else:  # stand-in scheduler: the chunks run in another order
            def run_chunks(fn, n, order=order):
                idx = list(range(n))[::-1] if order == "reversed" else \
                    list(range(1, n, 2)) + list(range(0, n, 2))
                for c in idx:
                    fn(c)
            monkeypatch.setattr(kernels, "run_chunks", run_chunks, raising=False)
        out = np.empty_like(w)
        K.conv2d_weight_grad(x, gy, out=out, **geo)
        results.append(out)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("xs, ws, stride, padding, dilation", CONVS)
def test_chunks_on_threads_equal_the_references(monkeypatch, xs, ws, stride, padding,
                                                dilation, conv_path):
    """One image per chunk, the chunks taken in turn by two threads (the weight gradient's
    per-chunk sums added in chunk order at the end), as a big batch runs."""
    monkeypatch.setattr(K, "CHUNK_BYTES", 1)
    monkeypatch.setattr(kernels, "threads", lambda: 2, raising=False)
    rng = np.random.default_rng(3)
    xs = (7,) + xs[1:]
    x, w = rng.normal(size=xs), rng.normal(size=ws)
    geo = dict(stride=stride, padding=padding, dilation=dilation, groups=1)
    y = C._conv2d(x, w, stride, padding, dilation, 1)
    out = np.empty_like(y)
    K.conv2d(x, w, out=out, **geo)
    np.testing.assert_allclose(out, y, rtol=1e-10, atol=1e-10)
    gy = rng.normal(size=y.shape)
    out = np.full_like(x, np.nan)
    K.conv2d_input_grad(gy, w, out=out, **geo)
    np.testing.assert_allclose(out, C._conv2d_input_grad(gy, w, x.shape, stride, padding,
                                                         dilation, 1), rtol=1e-10, atol=1e-10)
    out = np.full_like(w, np.nan)
    K.conv2d_weight_grad(x, gy, out=out, **geo)
    np.testing.assert_allclose(out, C._conv2d_weight_grad(x, gy, w.shape, stride, padding,
                                                          dilation, 1), rtol=1e-10, atol=1e-10)
    p = C._max_pool2d(x, (2, 2), (2, 2), (0, 0))
    out = np.empty_like(p)
    K.max_pool2d(x, out=out, kernel=(2, 2), stride=(2, 2), padding=(0, 0))
    np.testing.assert_array_equal(out, p)
    out = np.full_like(x, np.nan)
    gp = rng.normal(size=p.shape)
    K.max_pool2d_grad(gp, x, out=out, kernel=(2, 2), stride=(2, 2), padding=(0, 0))
    np.testing.assert_array_equal(out, C._max_pool2d_grad(gp, x, (2, 2), (2, 2), (0, 0)))


def test_infinities_reach_only_what_the_reference_reaches(conv_path):
    """The stride-1 kernels compute each row a few columns wide of the output and drop the
    extra columns: an Inf in the image or the weight must not leak NaN through them."""
    rng = np.random.default_rng(4)
    x, w = rng.normal(size=(2, 2, 7, 7)), rng.normal(size=(3, 2, 3, 3))
    x[0, 1, 3, 6] = np.inf  # the last column: read only by the extra columns and the edge
    w[1, 0, 2, 2] = -np.inf
    geo = dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)
    gy = rng.normal(size=(2, 3, 5, 5))
    with np.errstate(invalid="ignore"):
        out = np.empty_like(w)
        K.conv2d_weight_grad(x, gy, out=out, **geo)
        want = C._conv2d_weight_grad(x, gy, w.shape, (1, 1), (0, 0), (1, 1), 1)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)
        out = np.empty_like(x)
        K.conv2d_input_grad(gy, w, out=out, **geo)
        want = C._conv2d_input_grad(gy, w, x.shape, (1, 1), (0, 0), (1, 1), 1)
        np.testing.assert_array_equal(np.isnan(out), np.isnan(want))
        np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("images_per_chunk", [1, 3, 7])
def test_the_weight_gradient_over_chunks_of_several_images_equals_the_reference(
        monkeypatch, images_per_chunk):
    """Through im2col, a chunk's images sit side by side in one (K, images x pixels) operand
    and one GEMM sums them: chunks of 1, 3 (the last one short) and all 7 images."""
    monkeypatch.setattr(K, "DIRECT_GRAD_K", 0)
    rng = np.random.default_rng(5)
    cases = [((7, 6, 9, 9), (4, 6, 3, 3), (1, 1)), ((7, 3, 8, 10), (5, 3, 5, 5), (0, 2))]
    for xs, ws, padding in cases:
        x, w = rng.normal(size=xs), rng.normal(size=ws)
        geo = dict(stride=(1, 1), padding=padding, dilation=(1, 1), groups=1)
        gy = rng.normal(size=C._conv2d(x, w, (1, 1), padding, (1, 1), 1).shape)
        wp = xs[3] + 2 * padding[1]
        per_image = max(ws[1] * ws[2] * ws[3], ws[0]) * gy.shape[2] * wp * x.itemsize
        monkeypatch.setattr(K, "CHUNK_BYTES", per_image * images_per_chunk)
        out = np.full_like(w, np.nan)
        K.conv2d_weight_grad(x, gy, out=out, **geo)
        np.testing.assert_allclose(out, C._conv2d_weight_grad(x, gy, w.shape, (1, 1), padding,
                                                              (1, 1), 1), rtol=1e-10, atol=1e-10)
        out32 = np.empty(ws, np.float32)
        K.conv2d_weight_grad(x.astype(np.float32), gy.astype(np.float32), out=out32, **geo)
        np.testing.assert_allclose(out32, out, rtol=1e-4, atol=1e-4)
