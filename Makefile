# graphc: `make demo` installs and trains a small classifier; `make test` installs and tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install install-test test demo overhead clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

install: $(PY)
	$(PY) -m pip install -q -e .

install-test: $(PY)
	$(PY) -m pip install -q -e ".[test]"

test: install-test
	$(PY) -m pytest -q

demo: install
	$(PY) examples/train_classifier.py

overhead: install
	$(PY) -m benchmarks.overhead

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
