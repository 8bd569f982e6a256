"""Every registered op, forward and gradient (and gradients of gradients), on the CUDA
backend: the whole op suite of tests/test_ops.py collected again with the CUDA backend as
the default, and random graphs from the fuzzer checked on it. Runs in Numba's simulator
(NUMBA_ENABLE_CUDASIM=1, its own pytest process) or on a device."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given

import graphc as gc

from cuda_env import NO_KERNELS

if NO_KERNELS is not None:
    pytest.skip(NO_KERNELS, allow_module_level=True)

import test_ops  # noqa: E402
from test_ops import *  # noqa: E402,F401,F403 - the op suite, collected again on CUDA
from test_fuzz import _settings, cases, check_case  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("GRAPHC_CUDA_FUZZ_EXAMPLES", "50"))
# Finite differences call a float64 plan twice per input element: minutes upon minutes in the
# simulator. So in CI every gradient test of the op suite (first, second and third
# derivatives) compares the gradients computed on CUDA with the NumPy backend's, one call
# each (the NumPy backend's are checked by finite differences in the main run), and
# `make test-cudasim-full` (GRAPHC_CUDA_FULL=1) runs the finite differences on CUDA itself.
FULL = os.environ.get("GRAPHC_CUDA_FULL") == "1"


def _against_numpy(y, wrt, feed, **fd_options):
    gc.testing.check_grads_against(y, wrt, feed, backend="cuda", reference="numpy",
                                   rtol=1e-9, atol=1e-11, seed=fd_options.get("seed", 0))


@pytest.fixture(autouse=True)
def gradients_against_the_numpy_backend(monkeypatch):
    if not FULL:
        monkeypatch.setattr(test_ops, "check_grads", _against_numpy)


@pytest.fixture(autouse=True, scope="module")
def cuda_by_default():
    """Make the CUDA backend the default for this module's tests."""
    saved = gc.config.backend
    gc.config.backend = "cuda"
    yield
    gc.config.backend = saved


@_settings(FUZZ_EXAMPLES)
@given(case=cases())
def test_random_graphs_on_cuda(case):
    check_case(case, backends=("cuda",))  # double backward compiled on CUDA too


def test_reshape_of_a_strided_view_follows_its_source():
    """A reshape of a transposed view is a copy: it must be taken at every call, not once
    when the plan is built."""
    with gc.Graph():
        a = gc.placeholder("a", (2, 3), "float64")
        fn = gc.compile(gc.exp(a.T.reshape(1, -1)))
        for seed in (0, 1):
            av = np.random.default_rng(seed).normal(size=(2, 3))
            np.testing.assert_allclose(fn({a: av}, to_numpy=True), np.exp(av.T.reshape(1, -1)))
