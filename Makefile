# graphc: `make demo` installs and trains a small classifier; `make test` installs and tests;
# `make bench` installs and runs the benchmark suite on the hardware present; `make fuzz` runs
# the random-graph fuzzer with a 5000-graph budget (the test suite runs 500).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-test test fuzz demo bench bench-quick overhead clean

# --system-site-packages: peers installed on the machine (torch, jax, cupy) stay visible.
$(PY):
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e .

install-test: $(PY)
	$(PY) -m pip install -q -e ".[test]"

test: install-test
	$(PY) -m pytest -q

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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
