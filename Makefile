# graphc: `make demo` installs and trains a small classifier; `make test` installs and tests;
# `make bench` installs and runs the benchmark suite on the hardware present; `make fuzz` runs
# the random-graph fuzzer with a 5000-graph budget (the test suite runs 500); `make gpu-check`
# runs the GPU tests and the suite's GPU rows on a machine with a CUDA device.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-test test test-cudasim test-cudasim-full fuzz demo bench bench-quick overhead gpu-check clean

# --system-site-packages: peers installed on the machine (torch, jax, cupy) stay visible.
$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e .

install-test: $(PY)
	$(PY) -m pip install -q -e ".[test]"

# The CUDA backend's kernel tests run in Numba's simulator, which must be switched on before
# numba is imported: a pytest process of their own.
test: install-test
	$(PY) -m pytest -q
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q $(wildcard tests/test_cuda_*.py)

test-cudasim: install-test
	NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q $(wildcard tests/test_cuda_*.py)

test-cudasim-full: install-test
	GRAPHC_CUDA_FULL=1 NUMBA_ENABLE_CUDASIM=1 $(PY) -m pytest -q $(wildcard tests/test_cuda_*.py)

fuzz: install-test
	GRAPHC_FUZZ_EXAMPLES=$${GRAPHC_FUZZ_EXAMPLES:-5000} $(PY) -m pytest -q tests/test_fuzz.py

demo: install
	$(PY) examples/train_classifier.py

bench: $(PY)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks --json benchmarks/results.json --plot benchmarks/sweeps.png

bench-quick: $(PY)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) -m benchmarks --quick

overhead: install
	$(PY) -m benchmarks.overhead

# On a GPU machine without network (the H200): CuPy, numba-cuda, torch and JAX come from the
# machine; graphc is installed without dependencies. Writes into $OUT when it is set.
gpu-check:
	bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
