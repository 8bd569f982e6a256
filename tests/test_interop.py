"""DLPack interop: torch (and JAX where installed) tensors fed without a copy, results taken
back with from_dlpack without a copy."""
import gc as pygc

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")


def _double():
    x = gc.placeholder("x", (None, 3))
    return gc.compile(x * 2.0)


def test_torch_cpu_tensor_is_fed_without_a_copy():
    x = gc.placeholder("x", (None, 3))
    fn = gc.compile(x * 2.0)
    t = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    fed = fn._feeds.arrays(fn._feeds.collect({"x": t}, {}))[0]
    assert np.shares_memory(fed, t.numpy())
    np.testing.assert_array_equal(fn(x=t), t.numpy() * 2)
    np.testing.assert_array_equal(t.numpy(), np.arange(6).reshape(2, 3))  # not written


def test_strided_torch_view_is_fed_as_a_view():
    fn = _double()
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)[:, 1:].T.contiguous().T
    fed = fn._feeds.arrays(fn._feeds.collect({"x": t}, {}))[0]
    assert np.shares_memory(fed, t.numpy())
    np.testing.assert_array_equal(fn(x=t), t.numpy() * 2)


def test_torch_dtype_conversion_copies_like_numpy_input():
    x = gc.placeholder("x", (None, 3))
    y = gc.placeholder("y", (None,), dtype="int32")
    fn = gc.compile(gc.softmax_cross_entropy(x, y))
    xs = torch.zeros(4, 3, dtype=torch.float64)
    ys = torch.tensor([0, 1, 2, 0])  # int64 into an int32 placeholder: the documented copy
    np.testing.assert_allclose(fn(x=xs, y=ys), np.log(3.0), rtol=1e-6)


def test_tensor_that_requires_grad_raises_a_feed_error():
    fn = _double()
    with pytest.raises(gc.FeedError, match=r"placeholder 'x'.*detach"):
        fn(x=torch.ones(2, 3, requires_grad=True))


def test_unsupported_dtype_raises_a_feed_error():
    fn = _double()
    with pytest.raises(gc.FeedError, match="placeholder 'x': cannot read the fed Tensor"):
        fn(x=torch.ones(2, 3, dtype=torch.bfloat16))


class _CudaTensor:
    """Stands for a CUDA tensor: a DLPack producer in device memory."""

    def __dlpack__(self, **kwargs):
        raise AssertionError("a device tensor must not be copied to the host")

    def __dlpack_device__(self):
        return (2, 0)


def test_device_tensor_on_the_cpu_backend_raises_instead_of_copying():
    fn = _double()
    with pytest.raises(gc.FeedError, match=r"'x' was fed a _CudaTensor in CUDA device memory"
                                           r".*t\.cpu\(\).*backend=\"cuda\""):
        fn(x=_CudaTensor())


def test_results_go_to_torch_and_numpy_without_a_copy():
    fn = _double()
    out = fn(x=np.ones((2, 3), np.float32))
    t = torch.from_dlpack(out)
    assert t.data_ptr() == out.ctypes.data
    assert np.shares_memory(np.from_dlpack(out), out)


def test_a_tensor_from_a_result_keeps_its_buffer_from_being_recycled():
    fn = _double()
    t = torch.from_dlpack(fn(x=np.ones((2, 3), np.float32)))
    pygc.collect()  # the result array itself is gone: only the tensor holds the buffer
    for _ in range(3):
        again = fn(x=np.full((2, 3), 5.0, np.float32))
        assert again.ctypes.data != t.data_ptr()
    np.testing.assert_array_equal(t.numpy(), np.full((2, 3), 2.0, np.float32))


def test_jax_arrays_in_both_directions():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    fn = _double()
    a = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    fed = fn._feeds.arrays(fn._feeds.collect({"x": a}, {}))[0]
    assert np.shares_memory(fed, np.from_dlpack(a))
    out = fn(x=a)
    np.testing.assert_array_equal(out, np.arange(6).reshape(2, 3) * 2)
    back = jnp.from_dlpack(out)
    np.testing.assert_array_equal(np.asarray(back), out)
