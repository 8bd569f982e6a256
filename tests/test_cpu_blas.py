"""The CPU backend's choice of OpenBLAS kernels (graphc/backends/cpu/blas.py): an AVX-512
CPU whose OpenBLAS runs older kernels (not in its table, or pinned by OPENBLAS_CORETYPE)
is moved up to the AVX-512 ones, never down, and GRAPHC_BLAS_CORE=keep leaves it alone."""
import os
import subprocess
import sys

import numpy as np
import pytest

from graphc.backends.cpu import blas

FULL = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"})


def test_an_avx512_cpu_on_older_kernels_gets_the_avx512_ones():
    assert blas.avx512_core("Haswell", FULL) == "SkylakeX"
    assert blas.avx512_core("Zen", FULL | {"avx512_bf16"}) == "Cooperlake"
    assert blas.avx512_core("Prescott", FULL) == "SkylakeX"


def test_avx512_kernels_stay_and_a_cpu_without_avx512_is_never_moved():
    for core in blas.AVX512_CORES:
        assert blas.avx512_core(core, FULL) is None
    assert blas.avx512_core("Haswell", FULL - {"avx512bw"}) is None
    assert blas.avx512_core("Haswell", frozenset({"avx2", "fma"})) is None


def test_cpu_flags_are_read_from_linux():
    flags = blas.cpu_flags()
    if not os.path.exists("/proc/cpuinfo"):
        assert flags == frozenset()
    else:
        assert "fpu" in flags or not flags  # every x86 CPU reports fpu


def _core_in_fresh_process(env: dict) -> str:
    code = ("import numpy as np; import graphc.backends.cpu as cpu; "
            "from graphc.backends.cpu import blas; "
            "a = np.random.default_rng(0).standard_normal((300, 200)).astype(np.float32); "
            "ok = np.allclose(a @ a.T, a.astype(np.float64) @ a.T.astype(np.float64), "
            "rtol=1e-4, atol=1e-3); print(blas.kernel_core(), ok)")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "True"
    return out[0]


@pytest.mark.skipif(blas.kernel_core() is None or not blas._AVX512_FLAGS <= blas.cpu_flags(),
                    reason="needs NumPy's OpenBLAS on an AVX-512 CPU")
def test_the_cpu_backend_runs_avx512_kernels_even_over_an_older_pinned_core():
    """A fresh process pinned to Haswell kernels (as this project's machine image pins them)
    runs the AVX-512 ones once the CPU backend is imported, with correct products; with
    GRAPHC_BLAS_CORE=keep it keeps Haswell."""
    assert _core_in_fresh_process({"OPENBLAS_CORETYPE": "Haswell"}) in blas.AVX512_CORES
    assert _core_in_fresh_process({"OPENBLAS_CORETYPE": "Haswell",
                                   "GRAPHC_BLAS_CORE": "keep"}) == "Haswell"
    assert blas.kernel_core() in blas.AVX512_CORES  # this test process too
    assert blas._products_agree()


def test_select_kernels_runs_once_and_reports_the_change():
    first = blas.select_kernels()
    assert blas.select_kernels() is first  # cached: one switch per process
    if first is not None:
        before, after = first
        assert before not in blas.AVX512_CORES and after in blas.AVX512_CORES
        assert blas.kernel_core() == after
    a = np.arange(12.0).reshape(3, 4)
    np.testing.assert_allclose(a @ a.T, np.einsum("ij,kj->ik", a, a))


def test_the_blas_found_is_numpys_even_beside_scipys_own_openblas():
    """SciPy's wheel vendors a second OpenBLAS; graphc's GEMM, thread control and kernel
    choice act on the copy NumPy runs, whichever is loaded first."""
    pytest.importorskip("scipy.linalg")
    code = ("import numpy, scipy.linalg, threadpoolctl; import graphc.backends.cpu; "
            "from graphc.backends.cpu import blas; "
            "libs = [i['filepath'] for i in threadpoolctl.threadpool_info() "
            "if i['user_api'] == 'blas']; "
            "found = blas._find_library(); "
            "print(len(libs), found is not None and "
            "found[1]['filepath'].startswith(blas._numpy_dirs()), blas.kernel_core())")
    out = subprocess.run([sys.executable, "-c", code],
                         env={**os.environ, "OPENBLAS_CORETYPE": "Haswell"},
                         capture_output=True, text=True, check=True).stdout.split()
    if int(out[0]) < 2 or blas.kernel_core() is None:
        pytest.skip("SciPy runs NumPy's BLAS here, or NumPy's BLAS is not OpenBLAS")
    assert out[1] == "True"
    if blas._AVX512_FLAGS <= blas.cpu_flags():
        assert out[2] in blas.AVX512_CORES


@pytest.mark.parametrize("shape", [(2048, 64), (64, 2048), (129, 257), (3, 5)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transpose_into_writes_the_transpose(shape, dtype, rng):
    a = rng.standard_normal(shape).astype(dtype)
    out = np.full(shape[::-1], np.nan, dtype)
    blas.transpose_into(a, out)
    np.testing.assert_array_equal(out, a.T)


def test_transpose_into_strided_rows_in_and_out(rng):
    """Windows of bigger arrays (rows contiguous, a longer leading dimension), as the plan's
    slices are: only the window is written."""
    parent = rng.standard_normal((300, 200)).astype(np.float32)
    a = parent[10:266, 3:131]  # (256, 128): 32K elements, the BLAS's route where it has one
    big = np.zeros((140, 300), np.float32)
    blas.transpose_into(a, big[5:133, 20:276])
    np.testing.assert_array_equal(big[5:133, 20:276], a.T)
    big[5:133, 20:276] = 0
    assert not big.any()


@pytest.mark.skipif(blas.kernel_core() is None, reason="OpenBLAS has somatcopy")
def test_openblas_somatcopy_is_found_and_checked():
    assert blas._somatcopy() is not None
