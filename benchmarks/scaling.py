"""Data-parallel scaling figures: `python -m benchmarks.scaling`.

Measured here (each figure labelled "measured"): the time of one float32 allreduce per
bucket size (64 KB to 64 MB) between MPI ranks on this machine, and the mlp-m training step
on 1 rank (the whole batch) and on N ranks (each rank 1/N of the batch, gradients averaged
by the plan's allreduce). Modelled (labelled "modelled"): strong- and weak-scaling tables for
1 to 64 H200 GPUs, from an alpha-beta model of ring allreduce at NVLink and InfiniBand
bandwidths, with the single-GPU step time from benchmarks/RESULTS.md's GPU section when one
has been measured, otherwise the peers' figures in ../shared/GPU_NOTES.md (labelled so).

Ranks run under `mpiexec -n N python -m mpi4py -m benchmarks.scaling --worker ...`; every
rank writes its result to a file of its own, so that a rank that died is noticed (mpiexec's
exit status alone proves nothing)."""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUCKET_SIZES = [64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20, 64 << 20]
MLP_M = (784, 1024, 1024, 10)
MLP_M_BATCH = 1024
GPU_COUNTS = [1, 2, 4, 8, 16, 32, 64]
GPUS_PER_NODE = 8

# Interconnects of an HGX H200 node, as NVIDIA specifies them (bandwidth per GPU and
# direction, bytes/s) and per-message latencies typical of NCCL (alpha, s). Sources:
# - NVLink: "NVLink: 900GB/s" (bidirectional, per GPU), NVIDIA H200 Tensor Core GPU
#   datasheet, https://www.nvidia.com/en-us/data-center/h200/ -> 450 GB/s each way.
# - InfiniBand: one ConnectX-7 NDR 400 Gb/s adapter per GPU in HGX H200 / DGX H200 systems
#   (https://www.nvidia.com/en-us/data-center/dgx-h200/) -> 50 GB/s each way per GPU.
# - alpha: a few microseconds per ring step over NVLink, about 5-10 us over InfiniBand:
#   assumptions of the model, not measurements.
LINKS = {"nvlink": (450e9, 3e-6), "infiniband": (50e9, 8e-6)}


# --- the model -------------------------------------------------------------------------
def ring_allreduce_seconds(nbytes: float, ranks: int, bandwidth: float, alpha: float) -> float:
    """Alpha-beta time of a ring allreduce: 2 (p - 1) steps, each moving nbytes / p."""
    if ranks <= 1:
        return 0.0
    return 2 * (ranks - 1) * (alpha + nbytes / ranks / bandwidth)


def allreduce_seconds(nbytes: float, gpus: int) -> float:
    """Within one node the ring runs over NVLink; across nodes the InfiniBand link of each
    GPU is the slowest hop of the ring, so it sets the bandwidth term."""
    link = "nvlink" if gpus <= GPUS_PER_NODE else "infiniband"
    return ring_allreduce_seconds(nbytes, gpus, *LINKS[link])


def scaling_rows(step_s: float, grad_bytes: float, backward_fraction: float = 2 / 3,
                 counts=GPU_COUNTS) -> list[dict]:
    """Strong scaling (global batch fixed: compute / p) and weak scaling (per-GPU batch
    fixed) of a step of `step_s` seconds on one GPU whose gradients are `grad_bytes`. The
    allreduce overlaps backward (buckets), so a step takes compute + the part of the
    allreduce that backward does not hide."""
    rows = []
    for p in counts:
        comm = allreduce_seconds(grad_bytes, p)
        strong_compute = step_s / p
        strong = strong_compute + max(0.0, comm - backward_fraction * strong_compute)
        weak = step_s + max(0.0, comm - backward_fraction * step_s)
        rows.append({"gpus": p, "link": "nvlink" if p <= GPUS_PER_NODE else "infiniband",
                     "allreduce_ms": comm * 1e3, "strong_step_ms": strong * 1e3,
                     "strong_speedup": step_s / strong, "strong_efficiency": step_s / strong / p,
                     "weak_step_ms": weak * 1e3, "weak_efficiency": step_s / weak})
    return rows


def single_gpu_step_ms(results: Path = HERE / "RESULTS.md",
                       notes: Path = ROOT.parent / "shared" / "GPU_NOTES.md"):
    """(mlp-m step on one H200 in ms, where it came from): graphc's cuda row of the GPU
    section of RESULTS.md when measured, else the fastest peer of GPU_NOTES.md."""
    if results.exists():
        gpu = re.search(r"<!-- gpu:start -->(.*?)<!-- gpu:end -->", results.read_text(), re.S)
        m = gpu and re.search(r"^\|\s*mlp-m\s*\|\s*([0-9.]+)\s*(us|ms|s)\b", gpu.group(1),
                              re.M)
        if m:
            scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
            return float(m.group(1)) * scale, f"measured: graphc cuda, {results.name}"
    if notes.exists():
        m = re.search(r"^\| mlp-m [^|]*\|(.*)$", notes.read_text(), re.M)
        if m:
            values = [float(v) for v in re.findall(r"[0-9]+\.[0-9]+", m.group(1))]
            if values:
                return min(values[:-1] or values), ("GPU_NOTES.md (fastest peer on the H200, "
                                                    "not graphc)")
    return 0.323, "assumed: JAX jit mlp-m on an H200 (GPU_NOTES.md figure, file not found)"


# --- the workers (under mpiexec) -------------------------------------------------------
def _slowest(comm, times: list) -> np.ndarray:
    """Each repeat's time on the slowest rank: a collective ends when its last rank does."""
    from mpi4py import MPI
    out = np.array(times, np.float64)
    comm.Allreduce(MPI.IN_PLACE, out, op=MPI.MAX)
    return out


def _worker_allreduce(repeats: int) -> dict:
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    out = {}
    for size in BUCKET_SIZES:
        send = np.ones(size // 4, np.float32)
        recv = np.empty_like(send)
        comm.Allreduce(send, recv)  # warm-up: connections and buffers
        times = []
        for _ in range(repeats):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(send, recv)
            times.append(time.perf_counter() - t0)
        times = _slowest(comm, times)
        out[str(size)] = float(np.median(times))
    return {"ranks": comm.Get_size(), "allreduce_s": out}


def _mlp_step(batch: int, data_parallel=None):
    import graphc as gc
    rng = np.random.default_rng(0)
    g = gc.Graph()
    with g:
        x = gc.placeholder("x", (batch, MLP_M[0]))
        y = gc.placeholder("y", (batch,), dtype="int32")
        h = x
        for i, (a, b) in enumerate(zip(MLP_M[:-1], MLP_M[1:])):
            w = gc.parameter(f"w{i}", value=rng.normal(size=(a, b)) / np.sqrt(a),
                             dtype="float32")
            h = h @ w + gc.parameter(f"b{i}", value=np.zeros(b), dtype="float32")
            if i < len(MLP_M) - 2:
                h = gc.relu(h)
        loss = gc.softmax_cross_entropy(h, y)
        kwargs = {} if data_parallel is None else {"data_parallel": data_parallel}
        step = gc.compile(loss, optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), **kwargs)
    xb = rng.normal(size=(batch, MLP_M[0])).astype(np.float32)
    yb = rng.integers(0, MLP_M[-1], size=batch).astype(np.int32)
    return g, step, {"x": xb, "y": yb}


def _worker_step(repeats: int, global_batch: int) -> dict:
    import graphc as gc
    comm = gc.distributed.mpi(timeout=300)
    size = comm.size
    _, step, feeds = _mlp_step(global_batch // size, comm if size > 1 else None)
    for _ in range(3):
        step(feeds)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(feeds)
        times.append(time.perf_counter() - t0)
    from mpi4py import MPI
    times = _slowest(MPI.COMM_WORLD, times)
    return {"ranks": size, "batch_per_rank": global_batch // size,
            "step_s": float(np.median(times)), "spread": float(np.ptp(times) / np.median(times))}


def _worker(kind: str, repeats: int, global_batch: int, out_dir: str) -> None:
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    result = _worker_allreduce(repeats) if kind == "allreduce" else \
        _worker_step(repeats, global_batch)
    # one file per rank: the ranks' stdout lines interleave through mpiexec
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _mpiexec() -> str | None:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def run_ranks(kind: str, ranks: int, repeats: int, global_batch: int = MLP_M_BATCH,
              timeout: float = 900) -> dict:
    """Run one worker on `ranks` MPI ranks; its result, after checking every rank ended."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        raise RuntimeError("mpiexec not found: pip install mpich mpi4py")
    cores = os.cpu_count() or 1
    threads = str(max(1, cores // ranks))  # ranks share the cores: no oversubscription
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads, NUMBA_NUM_THREADS=threads,
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = [mpiexec, "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m",
               "benchmarks.scaling", "--worker", kind, "--repeats", str(repeats),
               "--global-batch", str(global_batch), "--out-dir", out_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT)
        done = {r: Path(out_dir, f"rank{r}.json") for r in range(ranks)}
        done = {r: json.loads(f.read_text()) for r, f in done.items() if f.exists()}
    if sorted(done) != list(range(ranks)):
        raise RuntimeError(f"{kind} on {ranks} ranks failed (ranks done: {sorted(done)}):\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return done[0]


# --- the report ------------------------------------------------------------------------
@dataclass
class Report:
    allreduce: dict
    steps: list
    step_ms: float
    step_source: str
    grad_bytes: int

    def markdown(self) -> str:
        ranks = self.allreduce["ranks"]
        lines = ["## Data-parallel scaling", "",
                 f"`python -m benchmarks.scaling`, {time.strftime('%Y-%m-%d')}, "
                 f"{os.cpu_count()} CPU cores here.", "",
                 f"### Allreduce per bucket (measured: {ranks} CPU ranks on this machine, "
                 "float32, MPI_Allreduce through mpi4py and MPICH)", "",
                 "| bucket | time | bandwidth (bytes / time) |", "| --- | --- | --- |"]
        for size, secs in self.allreduce["allreduce_s"].items():
            size = int(size)
            label = f"{size >> 20} MB" if size >= 1 << 20 else f"{size >> 10} KB"
            lines.append(f"| {label} | {secs * 1e3:.3f} ms | {size / secs / 1e9:.2f} GB/s |")
        lines += ["", "### mlp-m step on CPU ranks (measured; 784-1024-1024-10, global batch "
                  f"{MLP_M_BATCH}, SGD momentum, float32)", "",
                  "| ranks | batch per rank | step | spread | speedup |", "| --- | --- | --- | --- | --- |"]
        base = self.steps[0]["step_s"]
        for s in self.steps:
            lines.append(f"| {s['ranks']} | {s['batch_per_rank']} | {s['step_s'] * 1e3:.2f} ms "
                         f"| {s['spread'] * 100:.0f}% | {base / s['step_s']:.2f}x |")
        lines += ["", "Ranks share this machine's cores (each gets cores / ranks threads), so "
                  "the CPU speedup measures the plan's communication overhead, not a cluster.",
                  "", f"### H200 GPUs (modelled): mlp-m, one-GPU step {self.step_ms:.3f} ms "
                  f"({self.step_source}), {self.grad_bytes / 2**20:.1f} MiB of gradients", "",
                  "Ring allreduce, alpha-beta model: 2(p-1) steps of alpha + (bytes/p)/bandwidth; "
                  "NVLink 450 GB/s per GPU each way within a node of 8 (H200 datasheet: 900 GB/s "
                  "bidirectional), one 400 Gb/s InfiniBand NDR link per GPU (50 GB/s) across "
                  "nodes; alpha 3 us (NVLink) and 8 us (InfiniBand) assumed. Buckets overlap "
                  "backward (taken as 2/3 of the step).", "",
                  "| GPUs | link | allreduce | strong: step | speedup | efficiency | "
                  "weak: step | efficiency |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in scaling_rows(self.step_ms / 1e3, self.grad_bytes):
            lines.append(f"| {r['gpus']} | {r['link']} | {r['allreduce_ms']:.3f} ms | "
                         f"{r['strong_step_ms']:.3f} ms | {r['strong_speedup']:.2f}x | "
                         f"{r['strong_efficiency'] * 100:.0f}% | {r['weak_step_ms']:.3f} ms | "
                         f"{r['weak_efficiency'] * 100:.0f}% |")
        lines += ["", "A step this short is bound by the allreduce: within a node NVLink keeps "
                  "up, across nodes InfiniBand's bandwidth and latency cost more than the "
                  "compute saved, so strong scaling of mlp-m stops at one node; a model with "
                  "more compute per gradient byte scales further (weak scaling holds better)."]
        return "\n".join(lines) + "\n"


def write_section(path: Path, section: str) -> None:
    """Replace (or append) the '## Data-parallel scaling' section of RESULTS.md."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find("## Data-parallel scaling")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--global-batch", type=int, default=MLP_M_BATCH)
    p.add_argument("--results", default=str(HERE / "RESULTS.md"),
                   help="RESULTS.md to update ('' to leave it alone)")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", choices=["allreduce", "step"], help=argparse.SUPPRESS)
    p.add_argument("--out-dir", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.repeats, args.global_batch, args.out_dir)
        return 0
    allreduce = run_ranks("allreduce", args.ranks, args.repeats)
    steps = [run_ranks("step", r, args.repeats, args.global_batch)
             for r in sorted({1, args.ranks})]
    step_ms, source = single_gpu_step_ms()
    grad_bytes = sum(a * b + b for a, b in zip(MLP_M[:-1], MLP_M[1:])) * 4
    report = Report(allreduce, steps, step_ms, source, grad_bytes)
    text = report.markdown()
    print(text)
    if args.results:
        write_section(Path(args.results), text)
    if args.json:
        Path(args.json).write_text(json.dumps({"allreduce": allreduce, "steps": steps,
                                               "single_gpu_step_ms": step_ms,
                                               "single_gpu_source": source,
                                               "model": scaling_rows(step_ms / 1e3, grad_bytes)},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
