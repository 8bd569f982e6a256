"""Every registered op, forward and gradient (and gradients of gradients), on the CUDA
backend: the whole op suite of tests/test_ops.py collected again with the CUDA backend as
the default, and random graphs from the fuzzer checked on it. Runs in Numba's simulator
(NUMBA_ENABLE_CUDASIM=1, its own pytest process) or on a device."""
from __future__ import annotations

import os

import pytest
from hypothesis import given

import graphc as gc

from cuda_env import NO_KERNELS

if NO_KERNELS is not None:
    pytest.skip(NO_KERNELS, allow_module_level=True)

from test_ops import *  # noqa: E402,F401,F403 - the op suite, collected again on CUDA
from test_fuzz import _settings, cases, check_case  # noqa: E402

FUZZ_EXAMPLES = int(os.environ.get("GRAPHC_CUDA_FUZZ_EXAMPLES", "20"))
# Gradient checks compile a float64 graph and call it twice per element: minutes upon
# minutes in the simulator, so CI checks every op's forward values and the fuzzer's graphs
# (gradients included), and `make test-cudasim-full` (GRAPHC_CUDA_FULL=1) every gradient.
FULL = os.environ.get("GRAPHC_CUDA_FULL") == "1"


@pytest.fixture(autouse=True)
def gradients_only_in_the_full_run(request):
    if request.node.name.startswith(("test_gradient", "test_second_derivative",
                                     "test_third_derivative")) and not FULL:
        pytest.skip("gradient checks on CUDA run in `make test-cudasim-full`")


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
    check_case(case, backends=("cuda",), double_backward=False)
