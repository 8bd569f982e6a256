"""Keeps the benchmark suite alive in CI: a --quick run on one tiny workload."""
import json

from benchmarks import __main__ as bench
from benchmarks.suite import agrees
from benchmarks.workloads import QUICK, WORKLOADS, make_data
import numpy as np
import pytest


def test_quick_run_on_one_workload(tmp_path, capsys):
    out = tmp_path / "bench.json"
    systems = ["graphc-numpy", "numpy-naive", "numpy-expert"]
    code = bench.main(["--quick", "--workload", "mlp-s", "--device", "cpu", "--no-sweeps",
                       "--no-results", "--json", str(out)]
                      + [arg for s in systems for arg in ("--system", s)])
    assert code == 0
    report = json.loads(out.read_text())
    rows = {r["system"]: r for r in report["results"]}
    graphc = rows["graphc-numpy"]
    assert graphc["status"] == "ok" and graphc["median_ms"] > 0 and graphc["samples"] >= 3
    assert len(graphc["fingerprint"]) == 3  # three steps' losses, checked before timing
    assert report["machine"]["cores"] >= 1 and report["ceilings"]["cpu"]["matmul_flops"] > 0
    for r in report["results"]:  # every peer that ran agreed with the reference
        assert r["status"] in ("ok", "skipped"), (r["system"], r["status"], r["reason"])
    printed = capsys.readouterr().out
    assert "| mlp-s |" in printed and "graphc-numpy" in printed


def test_floors_match_the_workload_definitions():
    w = WORKLOADS["mlp-m"]
    # forward + weight gradient for layer 1, plus the input gradient for the other layers
    expected = 2 * 1024 * (784 * 1024 * 2 + 1024 * 1024 * 3 + 1024 * 10 * 3)
    assert w.flops() == expected
    assert WORKLOADS["elementwise"].bytes_moved() == 2 * 4 * 16 * 2**20
    data = make_data(QUICK["mlp-s"])
    assert [p.shape for p in data["params"]] == [(784, 256), (256,), (256, 256), (256,),
                                                 (256, 10), (10,)]
    np.testing.assert_array_equal(make_data(QUICK["mlp-s"])["x"], data["x"])  # seeded


def test_agreement_rule():
    ref = np.array([2.30, 2.29, 2.28])
    assert agrees(ref, ref * (1 + 1e-4), tf32=False)
    assert not agrees(ref, ref * 1.01, tf32=False)
    assert agrees(ref, ref * 1.01, tf32=True)
    assert not agrees(ref, np.array([np.nan, 2.29, 2.28]), tf32=False)
    assert not agrees(ref, np.array([2.30, 2.31, 2.28]), tf32=False)  # every step counts
    grad = np.array([1.0, 1e-3, 4.0])  # loss, sum(g) ~ 0, sum(g^2)
    assert agrees(grad, grad + [0, 1e-3, 0], tf32=False, width=3)
    assert not agrees(grad, grad + [0, 0, 0.1], tf32=False, width=3)
    checksums = np.array([-1001.17, -1797.99, -2594.82])  # adam: sum(p * g), negative
    assert agrees(checksums, checksums + 0.01, tf32=False)
    assert not agrees(checksums, checksums + [0, 0, 5], tf32=False)


def test_lenet_lstm_and_adam_rows_run_and_agree(tmp_path):
    out = tmp_path / "bench.json"
    code = bench.main(["--quick", "--workload", "lenet", "--workload", "lstm", "--workload",
                       "adam", "--device", "cpu", "--no-sweeps", "--no-results", "--json",
                       str(out), "--system", "graphc-numpy", "--system", "numpy-naive",
                       "--system", "numpy-expert", "--system", "jax-jit"])
    assert code == 0
    rows = {(r["workload"], r["system"]): r for r in json.loads(out.read_text())["results"]}
    for w in ("lenet", "lstm", "adam"):
        assert rows[(w, "graphc-numpy")]["status"] == "ok", rows[(w, "graphc-numpy")]
    # the hand-written Adam steps agree with graphc's (the reference is numpy-naive)
    assert rows[("adam", "numpy-expert")]["status"] == "ok"
    assert rows[("adam", "graphc-numpy")]["fingerprint"][0] < 0  # sum(p * g) falls
    for r in rows.values():  # JAX, where installed, agrees too
        assert r["status"] in ("ok", "skipped"), (r["workload"], r["system"], r["reason"])


def test_new_workloads_floors():
    adam = WORKLOADS["adam"]
    assert adam.bytes_moved() == 7 * 4 * 100_000_000
    data = make_data(QUICK["adam"])
    assert len(data["params"]) == 10 and data["params"][0].shape == (100_000,)
    lstm = WORKLOADS["lstm"]
    h, n_in, t, b = 512, 128, 64, 64
    assert lstm.flops() == 2 * t * b * 4 * h * (2 * n_in + 3 * h) + 2 * b * h * 10 * 3
    assert [p.shape for p in make_data(QUICK["lenet"])["params"]][:4] == \
        [(6, 1, 5, 5), (6,), (16, 6, 5, 5), (16,)]


def test_lstm_blas_floor_runs_the_steps_products_at_their_shapes():
    """The products the LSTM step must run: the workload's FLOPs less the three recurrent
    products of step 0 (zero initial state: no forward product, no weight-gradient term,
    no state gradient to pass back)."""
    from benchmarks.systems.numpy_sys import NumpyMatmulFloor
    w = QUICK["lstm"]
    assert NumpyMatmulFloor().supports(w)
    runner = NumpyMatmulFloor().build(w, make_data(w))
    runner.step()
    flops = 0
    for a, b, out in runner.calls:
        assert out.shape == (a.shape[0], b.shape[1]) and a.shape[1] == b.shape[0]
        flops += 2 * a.shape[0] * a.shape[1] * b.shape[1]
    g, h = 4 * w.hidden, w.hidden
    assert flops == w.flops() - 3 * 2 * w.batch * g * h
    assert len(runner.calls) == 1 + 2 * (w.steps - 1) + 3 + 2


def test_compile_time_reports_the_three_situations():
    from benchmarks import compile_time
    r = compile_time.measure("mlp-s", repeats=1)
    for key in ("cold_s", "disk_cache_s", "in_process_s", "numba_import_and_init_s"):
        assert np.isfinite(r[key]) and r[key] >= 0.0
    assert r["workload"] == "mlp-s"


def test_torch_peers_run_and_agree_on_lenet_lstm_and_adam(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    code = bench.main(["--quick", "--workload", "lenet", "--workload", "lstm", "--workload",
                       "adam", "--device", "cpu", "--no-sweeps", "--no-results", "--json",
                       str(out), "--system", "graphc-numpy", "--system", "numpy-naive",
                       "--system", "torch-eager"])
    assert code == 0
    rows = {(r["workload"], r["system"]): r for r in json.loads(out.read_text())["results"]}
    for w in ("lenet", "lstm", "adam"):
        torch_row, graphc_row = rows[(w, "torch-eager")], rows[(w, "graphc-numpy")]
        # "ok" means it agreed with the reference at every one of the three steps
        assert torch_row["status"] == "ok", (w, torch_row["reason"])
        assert len(torch_row["fingerprint"]) == 3
        assert agrees(np.array(graphc_row["fingerprint"]), np.array(torch_row["fingerprint"]),
                      tf32=False)
    lstm = rows[("lstm", "torch-eager")]["fingerprint"]
    assert lstm[2] < lstm[0]  # SGD through nn.LSTM lowers the loss


def test_torch_compiled_adam_starts_from_the_initial_state():
    """The compile warm-up runs real updates; the parameters and moments are put back."""
    pytest.importorskip("torch")
    from benchmarks.suite import AGREE_STEPS, _fingerprints
    from benchmarks.systems.numpy_sys import NumpyNaive
    from benchmarks.systems.torch_sys import TorchCompileCPU, TorchEagerCPU
    w = QUICK["adam"]
    data = make_data(w)
    reference = _fingerprints(NumpyNaive().build(w, data), AGREE_STEPS)
    for system in (TorchEagerCPU(), TorchCompileCPU()):
        got = _fingerprints(system.build(w, data), AGREE_STEPS)
        assert agrees(reference, got, tf32=False), (system.name, got, reference)
    np.testing.assert_array_equal(make_data(w)["params"][0], data["params"][0])  # untouched


def test_torch_lstm_peer_holds_the_data_weights_in_nn_lstm():
    torch = pytest.importorskip("torch")
    from benchmarks.systems.torch_sys import TorchEagerCPU
    w = QUICK["lstm"]
    data = make_data(w)
    runner = TorchEagerCPU().build(w, data)
    lstm = runner.module
    assert isinstance(lstm, torch.nn.LSTM) and (lstm.input_size, lstm.hidden_size) == (128, 64)
    own = [lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0]
    assert all(a is b for a, b in zip(runner.params[:4], own))  # SGD updates nn.LSTM's own
    for param, value in zip(runner.params, data["params"]):
        np.testing.assert_array_equal(param.detach().numpy(), value)
    with pytest.raises(RuntimeError, match="before any step"):
        runner.fingerprint()
    runner.step()
    assert not torch.equal(lstm.weight_hh_l0, torch.tensor(data["params"][1]))


def test_profile_times_every_computing_kernel_of_the_step(capsys):
    from benchmarks.profile import profile
    per = profile("lenet", steps=2, top=5, quick=True)
    out = capsys.readouterr().out
    assert out.startswith("lenet: step ")
    assert "by kind:" in out and "conv2d" in out and "slowest:" in out
    assert per and all(t >= 0 for t in per.values()) and sum(per.values()) > 0


def test_a_sample_times_only_the_steps_after_its_warmup():
    """Each sample runs untimed warm-up steps first (the suite's Timing.warmup), then syncs
    and times `inner` steps between two syncs."""
    from benchmarks.suite import Timing
    from benchmarks.worker import _sample

    class Recorder:
        def __init__(self):
            self.events = []

        def step(self):
            self.events.append("step")

        def sync(self):
            self.events.append("sync")

    r = Recorder()
    assert _sample(r, 3, warmup=2) >= 0
    assert r.events == ["step", "step", "sync", "step", "step", "step", "sync"]
    assert Timing().warmup >= 1


def test_ceilings_measured_again_keep_the_higher_and_retake_the_floors(monkeypatch):
    """A ceiling measured in a busy moment would scale every floor ratio: the suite
    measures again after the workloads and keeps the higher of each."""
    from benchmarks import machine
    from benchmarks.suite import Result, set_floors
    w = WORKLOADS["mlp-m"]
    ceil = {"matmul_flops": 1e11, "copy_bytes_per_s": 4e10}
    r = Result(w.name, "graphc-numpy", "cpu", median_ms=50.0)
    set_floors(r, w, ceil)
    low = r.flop_floor_ratio
    monkeypatch.setattr(machine, "ceilings", lambda device, quick: {
        "matmul_flops": 4e11, "copy_bytes_per_s": 2e10})
    bench._remeasure("cpu", False, ceil, [r], WORKLOADS)
    assert ceil == {"matmul_flops": 4e11, "copy_bytes_per_s": 4e10}
    assert r.flop_floor_ratio == pytest.approx(low * 4)
    assert r.flop_floor_ratio == pytest.approx(0.05 / (w.flops() / 4e11))


def test_a_step_too_big_for_all_systems_at_once_runs_in_groups_around_an_anchor(monkeypatch):
    """When the buffers of every system would not fit in half the memory, the systems are
    timed in groups of as many as fit, the first system in every group, so each peer is
    interleaved with it (not timed alone in a window of its own)."""
    from benchmarks import machine, suite
    from benchmarks.systems import all_systems
    w = QUICK["adam"]
    monkeypatch.setattr(machine, "available_bytes", lambda: 4 * w.bytes_moved())  # 2 fit
    names = ["graphc-numpy", "numpy-naive", "numpy-expert"]
    systems = [s for s in all_systems() if s.name in names]
    assert suite.group_size(w, "cpu", len(systems)) == 2
    assert suite.group_size(w, "gpu", len(systems)) == 3
    groups, real = [], suite._time_interleaved

    def spy(live, *args):
        groups.append([r.system for r, _ in live])
        real(live, *args)

    monkeypatch.setattr(suite, "_time_interleaved", spy)
    timing = suite.Timing(min_samples=3, max_samples=3, budget_s=0.0, settle_s=0.0)
    results = suite.run_workload(w, "cpu", systems, {"matmul_flops": 1e11,
                                                     "copy_bytes_per_s": 1e10},
                                 timing, None, log=None)
    assert groups == [names[:2], [names[0], names[2]]]
    rows = {r.system: r for r in results}
    assert all(r.status == "ok" for r in results), [(r.system, r.reason) for r in results]
    assert rows["graphc-numpy"].samples == 6 and len(rows["graphc-numpy"].round_ms) == 6
    assert rows["numpy-naive"].samples == rows["numpy-expert"].samples == 3
    assert all(r.median_ms > 0 and r.bytes_floor_ratio > 0 for r in results)
    monkeypatch.setattr(machine, "available_bytes", lambda: 2 * w.bytes_moved())  # 1 fits
    groups.clear()
    results = suite.run_workload(w, "cpu", systems, {"matmul_flops": 1e11,
                                                     "copy_bytes_per_s": 1e10},
                                 timing, None, log=None)
    assert groups == [[n] for n in names]
    assert [r.samples for r in results] == [3, 3, 3]
