"""benchmarks/scaling.py: the ring-allreduce model, the RESULTS.md section, and the measured
allreduce run on two MPI ranks (skipped without mpi4py and mpiexec)."""
from __future__ import annotations

import importlib.util

import pytest

from benchmarks import scaling


def test_ring_allreduce_model():
    assert scaling.ring_allreduce_seconds(1e9, 1, 1e9, 1e-6) == 0.0
    # two ranks: two steps of half the bytes each
    assert scaling.ring_allreduce_seconds(1e9, 2, 1e9, 0.0) == pytest.approx(1.0)
    # the bandwidth term tends to 2 * bytes / bandwidth, the latency term grows with p
    big = scaling.ring_allreduce_seconds(1e9, 1000, 1e9, 0.0)
    assert 1.99 < big < 2.0
    assert scaling.ring_allreduce_seconds(0, 8, 1e9, 1e-6) == pytest.approx(14e-6)
    # across nodes the InfiniBand hop is slower than NVLink inside a node
    assert scaling.allreduce_seconds(1e8, 16) > scaling.allreduce_seconds(1e8, 8)


def test_scaling_rows():
    rows = scaling.scaling_rows(10e-3, 100e6)
    assert [r["gpus"] for r in rows] == scaling.GPU_COUNTS
    one = rows[0]
    assert one["strong_speedup"] == 1.0 and one["weak_efficiency"] == 1.0
    for r in rows:
        assert 0 < r["strong_efficiency"] <= 1.0 and 0 < r["weak_efficiency"] <= 1.0
        assert r["strong_step_ms"] >= 10.0 / r["gpus"] - 1e-9  # never faster than compute
    # a step much longer than its allreduce hides it: weak scaling stays near 100% in a node
    assert rows[3]["weak_efficiency"] > 0.99


def test_single_gpu_step_prefers_a_measured_gpu_row(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# r\n<!-- gpu:start -->\n## Latest full GPU run\n\n| workload | graphc-cuda "
                       "| jax-jit |\n| --- | --- | --- |\n| mlp-m | 250 us | 0.3 ms (1.2x) |\n"
                       "<!-- gpu:end -->\n")
    ms, source = scaling.single_gpu_step_ms(results, tmp_path / "none.md")
    assert ms == pytest.approx(0.25) and source.startswith("measured")
    notes = tmp_path / "GPU_NOTES.md"
    notes.write_text("| mlp-m 784-1024-1024-10, batch 1024 | 0.956 | 1.298 | 0.323 | 0.191 |\n")
    ms, source = scaling.single_gpu_step_ms(tmp_path / "missing.md", notes)
    assert ms == pytest.approx(0.323) and "GPU_NOTES" in source  # the floor is not a system


def test_write_section_replaces_only_its_own(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n<!-- cpu:start -->\ncpu table\n<!-- cpu:end -->\n")
    scaling.write_section(path, "## Data-parallel scaling\n\nfirst\n")
    scaling.write_section(path, "## Data-parallel scaling\n\nsecond\n")
    text = path.read_text()
    assert "cpu table" in text and "second" in text and "first" not in text
    assert text.count("## Data-parallel scaling") == 1


@pytest.mark.skipif(importlib.util.find_spec("mpi4py") is None or scaling._mpiexec() is None,
                    reason="needs mpi4py and mpiexec (pip install mpich mpi4py)")
def test_allreduce_measured_on_two_ranks():
    result = scaling.run_ranks("allreduce", 2, repeats=2, timeout=120)
    assert result["ranks"] == 2
    assert [int(s) for s in result["allreduce_s"]] == scaling.BUCKET_SIZES
    assert all(t > 0 for t in result["allreduce_s"].values())
