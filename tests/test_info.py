"""`gc.info()` and `python -m graphc info`: the environment report for bug reports."""
import importlib
import subprocess
import sys

import numpy as np

import graphc as gc
from graphc import __main__ as cli
from graphc import backends

info_module = importlib.import_module("graphc.info")  # gc.info is the function


def test_info_names_versions_blas_cache_and_every_backend():
    text = gc.info()
    assert f"graphc {gc.__version__}" in text
    assert f"NumPy {np.__version__}" in text
    assert "Numba " in text and "BLAS: " in text and "threads" in text
    assert "kernel cache: " in text and "MiB" in text
    for name in backends.registered():
        reason = backends.availability(name)
        assert f"  {name}: " + ("available" if reason is None else f"unavailable: {reason}") \
            in text
    assert "GPU: " in text


def test_a_failing_probe_prints_its_reason(monkeypatch):
    def broken():
        raise OSError("disk gone")
    monkeypatch.setattr(info_module, "_cache_dir", broken)
    monkeypatch.setattr(info_module, "_blas", broken)
    text = gc.info()
    assert "kernel cache: unknown (OSError: disk gone)" in text
    assert "BLAS: unknown (OSError: disk gone)" in text


def test_python_m_graphc_info_prints_the_report():
    done = subprocess.run([sys.executable, "-m", "graphc", "info"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == gc.info().splitlines()[0]
    assert "backends:" in done.stdout


def test_other_commands_print_the_usage(capsys):
    assert cli.main(["nonsense"]) == 2
    assert "usage: python -m graphc info" in capsys.readouterr().err
