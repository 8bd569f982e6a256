"""Smoke runs of every example on a slice of the real data (skipped without GRAPHC_DATA):
one epoch each, so a change that breaks an example breaks CI."""
import os
import subprocess
import sys

import pytest

from conftest import needs_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@needs_data
@pytest.mark.parametrize("script, expect", [
    ("mnist_mlp.py", "test accuracy"),
    ("mnist_lenet.py", "test accuracy"),
    ("char_rnn.py", "sample:"),
    ("triplet_embedding.py", "nearest-neighbour test accuracy"),
    ("spoken_digits.py", "test accuracy"),
])
def test_example_runs(script, expect, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT,
               GRAPHC_DATA=os.path.abspath(os.environ["GRAPHC_DATA"]))
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", script), "--epochs", "1", "--limit",
         "256", "--no-progress", "--plot", str(tmp_path / "curve.png")],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert expect in out.stdout
