"""Data-parallel training over MPI (graphc.distributed, compile(data_parallel=...)).

Multi-rank tests run `mpiexec -n 2 python -m mpi4py tests/mpi/train.py ...` in a subprocess
with a timeout and check what EACH rank printed (mpiexec's exit status alone proves
nothing: a rank that exits early with status 0 makes it return 0). Single-process tests
use a communicator over MPI.COMM_SELF: bucketing, the plan printout, what the scheduler may
not fuse, and that one rank trains exactly like a plain step."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from conftest import needs_data
from graphc.plan import make_buckets

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "mpi" / "train.py"
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


def _mpiexec():
    local = Path(sys.executable).parent / "mpiexec"
    return str(local) if local.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
needs_mpi4py = pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed "
                                  "(pip install mpich mpi4py)")
needs_mpiexec = pytest.mark.skipif(not HAVE_MPI4PY or MPIEXEC is None,
                                   reason="mpi4py or mpiexec is missing (pip install mpich mpi4py)")


@pytest.fixture(scope="module")
def self_comm():
    """A communicator of this process alone (MPI.COMM_SELF)."""
    if not HAVE_MPI4PY:
        pytest.skip("mpi4py is not installed")
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:
        pytest.skip(f"mpi4py cannot load an MPI library: {e}")
    return gc.distributed.mpi(MPI.COMM_SELF, timeout=30)


def run_ranks(*args, n: int = 2, timeout: float = 120.0, expect=(0, 1),
              script: Path = SCRIPT) -> tuple[dict, object]:
    """Run a script of tests/mpi on n ranks; {rank: the result it wrote} and the finished
    process. Each rank writes its own file: stdout lines of two ranks can interleave."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py",
                               str(script), "--out", out, *map(str, args)], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        results = {}
        for path in Path(out).glob("rank*.json"):
            r = json.loads(path.read_text())
            results[r["rank"]] = r
    assert set(expect) <= set(results), (
        f"ranks {sorted(expect)} should each print a result; got {sorted(results)}\n"
        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}")
    return results, proc


def _trained(results: dict) -> str:
    """The shared digest of two ranks that both trained without error."""
    for r in results.values():
        assert "error" not in r, r
        assert r["size"] == 2
        assert r["plan_has_buckets"]
    assert results[0]["digest"] == results[1]["digest"], "ranks ended with different parameters"
    return results[0]["digest"]


# --- several ranks ---------------------------------------------------------------------
@needs_mpiexec
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_ranks_train_as_one_process_on_the_whole_batch(optimizer):
    results, _ = run_ranks("--optimizer", optimizer)
    _trained(results)
    for r in results.values():
        assert r["rel_err"] < 1e-6, r  # float64: one process trained on the whole batches
        assert len(r["losses"]) == 10
    # each rank gets the loss of its own half of the batch back, as torch DDP
    assert results[0]["losses"] != results[1]["losses"]


@needs_mpiexec
def test_gradient_clipping_sees_the_averaged_gradients():
    # the global norm is taken over the means, so ranks clip alike and as one process would
    results, _ = run_ranks("--optimizer", "adamw-clip")
    _trained(results)
    assert all(r["rel_err"] < 1e-6 for r in results.values())


@needs_mpiexec
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_different_initial_values_are_replaced_by_rank_0s(optimizer):
    # rank 1 builds its parameters from another seed; the first call copies rank 0's, so
    # both match the single process started from rank 0's values
    results, _ = run_ranks("--optimizer", optimizer, "--different-init")
    _trained(results)
    assert all(r["rel_err"] < 1e-6 for r in results.values())


@needs_mpiexec
def test_bucket_size_does_not_change_the_result():
    tiny, _ = run_ranks("--bucket-bytes", 64)  # smaller than any gradient: one each
    huge, _ = run_ranks("--bucket-bytes", 1 << 30)  # larger than all of them: one bucket
    assert tiny[0]["buckets"] == [1, 1, 1, 1] and huge[0]["buckets"] == [4]
    assert _trained(tiny) == _trained(huge)
    assert all(r["rel_err"] < 1e-6 for r in tiny.values())


@needs_mpiexec
def test_different_plans_raise_on_every_rank():
    results, _ = run_ranks("--mismatch", timeout=60)
    for r in results.values():
        assert r["error"] == "DistributedError", r
        msg = r["message"]
        assert "rank(s) 1 differ from rank 0" in msg
        assert "'parameter w1 (6, 16) float64'" in msg and "'parameter w1 (6, 17) float64'" in msg


@needs_mpiexec
def test_a_rank_that_exits_before_an_allreduce_ends_the_other_with_an_error():
    results, _ = run_ranks("--die-at", 2, "--timeout", 2, timeout=60)
    assert results[1]["exited_at"] == 2
    r = results[0]
    assert r["error"] == "DistributedError", r
    assert "allreduce of bucket 0" in r["message"] and "timed out after 2 s" in r["message"]
    assert "rank(s) 1 did not arrive" in r["message"]


@needs_mpiexec
def test_a_stuck_rank_is_named_and_the_job_aborted():
    # rank 1 sleeps for an hour before its first call: without the abort, mpiexec would wait
    results, proc = run_ranks("--die-at", 0, "--hang", "--timeout", 2, timeout=90,
                              expect=(0,))
    r = results[0]
    assert r["error"] == "DistributedError", r
    assert "plan fingerprint" in r["message"] and "rank(s) 1 did not arrive" in r["message"]
    assert proc.returncode != 0  # MPI_Abort ended the job
    assert "DistributedError" in proc.stderr


@needs_mpiexec
def test_a_timeout_names_only_the_ranks_that_did_not_arrive():
    # 3 ranks (more than this machine's cores is fine): rank 2 is stuck, rank 1 is late but
    # answers rank 0's "where are you?" while it waits, so only rank 2 is named
    results, proc = run_ranks(n=3, timeout=90, expect=(0,), script=ROOT / "tests" / "mpi" /
                              "stuck.py")
    r = results[0]
    assert r["error"] == "DistributedError", r
    assert "metrics allreduce (collective #2) timed out after 3 s on rank 0 of 3" in r["message"]
    assert "rank(s) 2 did not arrive" in r["message"]
    assert proc.returncode != 0


# --- one process -----------------------------------------------------------------------
def _mlp(dtype="float64", second_dtype=None, seed=0):
    rng = np.random.default_rng(seed)
    x = gc.placeholder("x", (None, 5), dtype=dtype)
    y = gc.placeholder("y", (None,), dtype="int32")
    w1 = gc.parameter("w1", value=rng.normal(size=(5, 7)), dtype=dtype)
    b1 = gc.parameter("b1", value=np.zeros(7), dtype=dtype)
    dt2 = second_dtype or dtype
    w2 = gc.parameter("w2", value=rng.normal(size=(7, 3)), dtype=dt2)
    b2 = gc.parameter("b2", value=np.zeros(3), dtype=dt2)
    h = gc.tanh(x @ w1 + b1)
    if second_dtype:
        h = h.astype(dt2)
    loss = gc.softmax_cross_entropy(h @ w2 + b2, y)
    return loss, [w1, b1, w2, b2]


def _data(n=12, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)), rng.integers(0, 3, n).astype(np.int32)


def test_import_graphc_does_not_import_mpi4py():
    code = "import sys, graphc; assert 'mpi4py' not in sys.modules, 'mpi4py imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)))


@needs_mpi4py
def test_buckets_follow_bucket_bytes(self_comm):
    with gc.Graph():
        loss, params = _mlp()
        fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), data_parallel=self_comm,
                        bucket_bytes=1)
        plan = fn.symbolic_plan
    sizes = {p.name: int(np.prod(p.shape)) * 8 for p in params}
    one_each = fn.buckets
    assert [len(b.grads) for b in one_each] == [1, 1, 1, 1]
    assert sorted(n for b in one_each for n in b.names) == sorted(sizes)
    assert [b.index for b in one_each] == [0, 1, 2, 3]
    whole = make_buckets(plan, 1 << 30)
    assert len(whole) == 1 and whole[0].nbytes == sum(sizes.values())
    # packed in the order the plan produces the gradients, contiguous in the flat buffer
    order = [n for b in one_each for n in b.names]
    assert list(whole[0].names) == order
    assert list(whole[0].offsets) == list(np.cumsum([0] + [sizes[n] // 8 for n in order])[:-1])
    # a bucket is closed before the gradient that would take it past bucket_bytes
    limit = sizes["w1"] + sizes["b1"]
    for b in make_buckets(plan, limit):
        assert b.nbytes <= limit or len(b.grads) == 1
    assert sum(len(b.grads) for b in make_buckets(plan, limit)) == 4


@needs_mpi4py
def test_buckets_hold_one_dtype(self_comm):
    with gc.Graph():
        loss, _ = _mlp("float64", second_dtype="float32")
        fn = gc.compile(loss, optimizer=gc.optim.Adam(), data_parallel=self_comm)
    by_dtype = {str(b.dtype): sorted(b.names) for b in fn.buckets}
    assert by_dtype == {"float64": ["b1", "w1"], "float32": ["b2", "w2"]}


@needs_mpi4py
def test_plan_printout_shows_where_buckets_start_and_are_awaited(self_comm):
    with gc.Graph():
        loss, _ = _mlp()
        fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1, momentum=0.9),
                        data_parallel=self_comm, bucket_bytes=1)
        symbolic = str(fn.plan)
        assert symbolic.count("= allreduce_mean(") == 4
        assert "bucket 0: 1 gradient(s)" in symbolic and "bucket 3:" in symbolic
        x, y = _data()
        fn(x=x, y=y)
        printed = str(fn.plan)
        bound = fn.bound_plan(x=x.shape, y=y.shape)
    assert printed.count("allreduce start bucket") == 4
    assert printed.count("allreduce wait bucket") == 4
    assert "data parallel: 4 bucket(s)" in printed
    kernels = bound.kernels
    made = {s: i for i, k in enumerate(kernels) for s in k.outputs}
    starts = {k.bucket.index: i for i, k in enumerate(kernels) if k.kind == "allreduce_start"}
    waits = {k.bucket.index: i for i, k in enumerate(kernels) if k.kind == "allreduce_wait"}
    assert sorted(starts) == sorted(waits) == [0, 1, 2, 3]
    assert [starts[b] for b in range(4)] == sorted(starts.values())  # started in order
    for b in range(4):
        start = kernels[starts[b]]
        last = max(made.get(g, -1) for g in start.inputs)
        assert last < starts[b]
        # right after its last gradient, or after the previous bucket's start
        anchor = max(last, starts[b - 1] if b else -1)
        assert all(k.kind == "allreduce_start" for k in kernels[anchor + 1:starts[b]])
        wait = kernels[waits[b]]
        readers = [i for i, k in enumerate(kernels) if set(k.inputs) & set(wait.outputs)]
        assert readers and min(readers) == waits[b] + 1  # awaited right before its reader
        assert starts[b] < waits[b]
    # the rest of backward runs while the buckets are in flight: the first wait comes after
    # the last gradient is computed
    assert min(waits.values()) > max(starts.values())
    printed_lines = printed.splitlines()
    first_start = next(i for i, ln in enumerate(printed_lines) if "allreduce start" in ln)
    first_wait = next(i for i, ln in enumerate(printed_lines) if "allreduce wait" in ln)
    assert first_start < first_wait


@needs_mpi4py
def test_updates_are_not_fused_across_the_allreduce(self_comm):
    x, y = _data(64)
    with gc.Graph():
        loss, _ = _mlp()
        plain = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
        plain_kinds = [k.kind for k in plain.bound_plan(x=x.shape, y=y.shape).kernels]
    with gc.Graph():
        loss, _ = _mlp()
        fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), data_parallel=self_comm)
        bound = fn.bound_plan(x=x.shape, y=y.shape)
    if gc.backends.cpu.blas.available():
        assert "gemm" in plain_kinds  # without data_parallel the update rides in the GEMM
    assert "gemm" not in [k.kind for k in bound.kernels]
    reduced = {r for b in fn.buckets for r in b.reduced}
    for k in bound.kernels:
        if k.kind in ("fused", "op", "gemm"):
            members = {st.slot for st in k.steps}
            assert not members & reduced  # no kernel computes a mean: only the waits
            # a kernel that reads a mean computes nothing a gradient needs
            if set(k.inputs) & reduced:
                assert all("allreduce" not in st.op.name for st in k.steps)
    start = next(k for k in bound.kernels if k.kind == "allreduce_start")
    computed = {s for k in bound.kernels if k.kind in ("fused", "op") for s in k.outputs}
    assert set(start.inputs) <= computed  # every gradient is materialised before its allreduce


@needs_mpi4py
@pytest.mark.parametrize("optimizer", [lambda: gc.optim.Adam(lr=0.01),
                                       lambda: gc.optim.SGD(lr=0.1, momentum=0.9,
                                                            clip_grad_norm=1.0)])
def test_one_rank_trains_exactly_like_a_plain_step(self_comm, optimizer):
    finals = []
    for dp in (None, self_comm):
        with gc.Graph():
            loss, params = _mlp()
            fn = gc.compile(loss, optimizer=optimizer(), data_parallel=dp, bucket_bytes=200)
            losses = [float(fn(x=x, y=y)) for x, y in (_data(seed=s) for s in range(5))]
            finals.append(([p.value for p in params], losses))
    (pa, la), (pb, lb) = finals
    assert la == lb
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(a, b)


@needs_mpi4py
def test_function_exposes_its_communicator_and_synchronizes(self_comm):
    with gc.Graph():
        loss, params = _mlp()
        fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), data_parallel=self_comm)
        assert fn.communicator is self_comm
        fn.synchronize()  # one rank: rank 0's values are already everywhere
        plain = gc.compile(loss)
        assert plain.communicator is None and plain.buckets == []
        with pytest.raises(gc.CompileError, match="data_parallel"):
            plain.synchronize()


@needs_mpi4py
def test_communicator_collectives_on_one_rank(self_comm):
    c = self_comm
    assert (c.rank, c.size) == (0, 1)
    a = np.arange(6.0).reshape(2, 3)
    assert c.broadcast(a) is a
    np.testing.assert_array_equal(c.allreduce_mean(a), a)
    assert c.allgather_object({"k": [1, 2]}) == [{"k": [1, 2]}]
    c.check_same(["a", "b"])
    c.barrier()
    with pytest.raises(gc.DistributedError, match="C-contiguous"):
        c.broadcast(a.T)
    with pytest.raises(gc.DistributedError, match="timeout"):
        gc.distributed.mpi(timeout=0)


@needs_mpi4py
def test_abort_ends_comm_world_not_the_private_communicator():
    # MPICH aborts a communicator other than COMM_WORLD by a message that a rank reads only
    # inside an MPI call: a rank stuck elsewhere would never end (a CI run hung on it)
    from mpi4py import MPI
    comm = gc.distributed.mpi(MPI.COMM_SELF, timeout=30)
    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def Abort(self, code):
            calls.append((self.name, code))

    comm._MPI = types.SimpleNamespace(COMM_WORLD=Recorder("world"))
    comm.comm = Recorder("private dup")
    comm.abort(3)
    assert calls == [("world", 3)]


@needs_mpi4py
def test_compile_errors_name_what_to_change(self_comm):
    with gc.Graph():
        loss, _ = _mlp()
        with pytest.raises(gc.CompileError, match="pass optimizer="):
            gc.compile(loss, data_parallel=self_comm)
        with pytest.raises(gc.CompileError, match="NCCL"):
            gc.compile(loss, optimizer=gc.optim.SGD(), data_parallel=self_comm, backend="cuda")
        with pytest.raises(gc.CompileError, match="gc.distributed.mpi"):
            gc.compile(loss, optimizer=gc.optim.SGD(), data_parallel=object())
        with pytest.raises(gc.CompileError, match="bucket_bytes"):
            gc.compile(loss, optimizer=gc.optim.SGD(), data_parallel=self_comm, bucket_bytes=0)
    with gc.Graph():
        loss, _ = _mlp()
        with pytest.raises(gc.CompileError, match="Sophia"):
            gc.compile(loss, optimizer=gc.optim.Sophia(logits=loss), data_parallel=self_comm)


@needs_mpi4py
def test_gradients_are_computed_in_their_bucket_unless_read_elsewhere(self_comm):
    x, y = _data()
    with gc.Graph():
        loss, params = _mlp()
        fn = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1), data_parallel=self_comm,
                        bucket_bytes=1)
        bound = fn.bound_plan(x=x.shape, y=y.shape)
        # every gradient is written straight into its place in a flat buffer: no copy
        assert sorted(bound.memory.in_bucket.values()) == [0, 1, 2, 3]
        assert "in bucket 0" in str(bound)
    with gc.Graph():
        loss, params = _mlp()
        g_w1 = gc.grad(loss, params[0])
        fn = gc.compile([loss, g_w1], optimizer=gc.optim.SGD(lr=0.1),
                        data_parallel=self_comm, bucket_bytes=1)
        bound = fn.bound_plan(x=x.shape, y=y.shape)
        returned = {b.grads[0] for b in fn.buckets if b.names == ("w1",)}
        assert not returned & set(bound.memory.in_bucket)  # the caller's gradient is copied
        _, got = fn(x=x, y=y)
    with gc.Graph():
        loss, params = _mlp()
        want = gc.compile(gc.grad(loss, params[0]))(x=x, y=y)
    np.testing.assert_array_equal(got, want)  # this rank's own gradient, before the update


# --- gc.fit(..., data_parallel=comm) ---------------------------------------------------
FIT_SCRIPT = ROOT / "tests" / "mpi" / "fit.py"


def _fit_ranks(*args, **kw):
    results, proc = run_ranks(*args, script=FIT_SCRIPT, timeout=kw.pop("timeout", 300), **kw)
    for r in results.values():
        assert "error" not in r, r
        assert r["size"] == 2
    return results, proc


@needs_mpiexec
@pytest.mark.parametrize("n, batch_size", [
    (101, 16),  # 6 batches of 16 (8 rows a rank) and one of 5 (2 and 3 rows)
    (97, 16),  # a last batch of 1 row: rank 0 has none (a padding row of weight 0)
    (100, 15),  # batch_size not a multiple of the ranks: 7 and 8 rows a rank
])
def test_fit_on_two_ranks_trains_as_one_process(n, batch_size):
    results, proc = _fit_ranks("--mode", "fit", "--n", n, "--batch-size", batch_size,
                               "--progress")
    r0, r1 = results[0], results[1]
    assert r0["digest"] == r1["digest"], "ranks ended with different parameters"
    # every figure is the same on every rank (times: the slowest rank's), so callbacks and
    # early stopping decide alike
    for key in ("history", "epochs", "stopped_early", "times"):
        assert r0[key] == r1[key], key
    assert r0["epochs"] == [0, 1, 2]
    assert set(r0["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    for r in (r0, r1):
        assert r["same_names"] and r["same_keys"]
        # float64, shuffled, rank 1 started from other initial values: as one process on
        # the whole batches with the same seed
        assert r["rel_err"] < 1e-6, r["rel_err"]
        assert r["history_rel_err"] < 1e-6, r["history_rel_err"]
    # only rank 0 reports progress: one summary line per epoch
    assert proc.stderr.count("epoch 1/3: loss") == 1, proc.stderr[-2000:]
    assert proc.stderr.count("epoch 3/3: loss") == 1


@needs_mpiexec
def test_fit_on_two_ranks_takes_dict_inputs():
    results, _ = _fit_ranks("--mode", "dict", "--n", 75, "--batch-size", 16)
    assert results[0]["digest"] == results[1]["digest"]
    assert results[0]["history"] == results[1]["history"]
    for r in results.values():
        assert r["rel_err"] < 1e-6 and r["history_rel_err"] < 1e-6, r


@needs_mpiexec
def test_fit_checkpoint_written_by_rank_0_resumes_on_both_ranks(tmp_path):
    ck = str(tmp_path / "ck.npz")
    common = ("--n", 101, "--batch-size", 16, "--epochs", 3, "--ckpt", ck)
    # batch 4 of epoch 2 (0-based epoch 1): the last save was after its 4th batch
    written, _ = _fit_ranks("--mode", "ckpt-write", "--every-steps", 2, "--stop-epoch", 1,
                            "--stop-batch", 4, *common)
    for r in written.values():
        assert r["interrupted"]
    assert written[0]["full_digest"] == written[1]["full_digest"]
    assert written[0]["full"] == written[1]["full"]
    assert written[0]["saves"] > 0 and written[1]["saves"] == 0  # rank 0 alone writes
    assert os.path.exists(ck)
    # fresh processes, each rank built from other initial values than the run's
    resumed, _ = _fit_ranks("--mode", "ckpt-resume", *common)
    assert resumed[0]["loads"] == 1 and resumed[1]["loads"] == 0  # rank 0 reads, broadcasts
    full = written[0]["full"]
    for r in resumed.values():
        assert r["digest"] == written[0]["full_digest"]  # bit for bit, optimizer state too
        assert r["epochs"] == [1, 2]
        for key, values in full["history"].items():
            assert r["history"][key] == values[1:], key
        assert r["saves"] == 0


@needs_mpiexec
def test_a_checkpoint_rank_0_cannot_write_fails_on_every_rank(tmp_path):
    ck = str(tmp_path / "no such folder" / "ck.npz")
    results, _ = run_ranks("--mode", "ckpt-fail", "--ckpt", ck, script=FIT_SCRIPT, timeout=180)
    assert "error" in results[0] and "TrainError" != results[0]["error"], results[0]
    r1 = results[1]
    assert r1.get("error") == "TrainError", r1  # told by rank 0, not timed out
    assert f"rank 0 could not write the checkpoint {ck}" in r1["message"]
    assert results[0]["error"] in r1["message"]


@needs_mpiexec
def test_fit_on_ranks_with_different_data_fails_on_every_rank():
    results, _ = run_ranks("--mode", "mismatch", "--n", 64, script=FIT_SCRIPT, timeout=180)
    for r in results.values():
        assert r.get("error") == "TrainError", r
        assert "rank(s) 1" in r["message"] and "64" in r["message"] and "63" in r["message"]


@needs_mpiexec
def test_fit_over_a_data_parallel_step():
    # a compiled step cannot be weighted: fit splits batches that divide evenly...
    results, _ = _fit_ranks("--mode", "step", "--n", 96, "--batch-size", 16)
    assert results[0]["digest"] == results[1]["digest"]
    assert results[0]["history"] == results[1]["history"]
    assert all(r["rel_err"] < 1e-6 for r in results.values())
    # ...and refuses the others on every rank, before any step
    refused, _ = run_ranks("--mode", "step", "--n", 101, "--batch-size", 16,
                           script=FIT_SCRIPT, timeout=180)
    for r in refused.values():
        assert r.get("error") == "TrainError", r
        assert "5 rows" in r["message"] and "2 ranks" in r["message"]


@needs_mpiexec
@needs_data
def test_mnist_mlp_example_runs_data_parallel(tmp_path):
    # as tests/test_examples.py runs the examples, on 2 ranks
    env = dict(os.environ, PYTHONPATH=str(ROOT),
               GRAPHC_DATA=os.path.abspath(os.environ["GRAPHC_DATA"]),
               OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py",
         str(ROOT / "examples" / "mnist_mlp.py"), "--data-parallel", "--epochs", "1",
         "--limit", "512", "--no-progress", "--plot", str(tmp_path / "curve.png")],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # rank 0 alone prints; a rank that failed or left early would have ended the job
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("test accuracy")]
    assert len(lines) == 1 and lines[0].endswith("on 2 ranks"), proc.stdout
    assert float(lines[0].split()[2]) > 0.5
    # the plot too (or the note that matplotlib is missing)
    assert proc.stdout.count("loss curve:") + proc.stdout.count("no plot written") == 1


def _blob_fit(data_parallel, **kw):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(70, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int32)
    with gc.Graph() as g:
        model = gc.nn.Sequential(gc.nn.Dense(4, 8, activation="relu"), gc.nn.Dropout(0.2),
                                 gc.nn.Dense(8, 2))
        h = gc.fit(model, (x, y), epochs=2, batch_size=16, validation=(x[:20], y[:20]),
                   optimizer=gc.optim.Adam(lr=0.01), progress=False,
                   data_parallel=data_parallel, **kw)
        return h, {p.name: p.value for p in g.parameters()}


@needs_mpi4py
@pytest.mark.parametrize("shuffle", [True, False])
def test_fit_on_one_rank_equals_the_plain_fit(self_comm, shuffle):
    plain, want = _blob_fit(None, shuffle=shuffle)
    one, got = _blob_fit(self_comm, bucket_bytes=64, shuffle=shuffle)
    assert one.history == plain.history
    assert one.step.communicator is self_comm and len(one.step.buckets) == 4
    assert plain.step.communicator is None
    assert one.evaluate.communicator is None  # evaluation is not data parallel
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@needs_mpi4py
def test_fit_data_parallel_errors_name_what_to_change(self_comm):
    x, y = _data(16)
    with gc.Graph():
        loss, _ = _mlp()
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.1))
        with pytest.raises(gc.train.TrainError, match="compile the step with data_parallel"):
            gc.fit(step, {"x": x, "y": y}, data_parallel=self_comm, progress=False)
        with pytest.raises(gc.train.TrainError, match="bucket_bytes"):
            gc.fit(step, {"x": x, "y": y}, bucket_bytes=1024, progress=False)
    with pytest.raises(gc.train.TrainError, match="gc.distributed.mpi"):
        gc.fit(gc.nn.Dense(5, 3), (x, y), data_parallel=object(), progress=False)
