"""Peak memory of the PyTorch MNIST example (examples/mnist in pytorch/examples: two
convolutions, dropout, log_softmax + nll_loss, Adadelta, StepLR; batch 64, test batch 1000)
ported to graphc, against the same program in torch.

Each system runs in a fresh process; the figure is that process's peak resident set
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`), so it counts the libraries, the data, the
plans and every scratch buffer, as a user's `/usr/bin/time -v` would. graphc also reports
the resident set after each phase and the bytes its plans and conv scratch buffers hold.
Epochs are cut to `--steps` training batches (the data set is loaded whole all the same)
and each ends with an evaluation over the whole test set.

Run: python -m benchmarks.memory_port [--steps 100] [--epochs 1] [--system graphc torch]
     [--uint8] [--whole-eval-batches] [--data DIR] [--json PATH]"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH, TEST_BATCH = 64, 1000


def _mib(n_bytes: float) -> float:
    return n_bytes / (1 << 20)


def _status() -> dict:
    """VmRSS and VmHWM (peak) of this process in MiB, from /proc (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


def peak_rss_mib() -> float:
    """ru_maxrss of this process in MiB (kilobytes on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


# --- graphc -----------------------------------------------------------------------------
def run_graphc(args) -> dict:
    import numpy as np

    phases = {"import": _status()}
    import graphc as gc
    from graphc import nn
    phases["import"] = _status()

    ds = gc.data.mnist(args.data, normalize=not args.uint8)
    (x, y), (xt, yt) = ds["train"], ds["test"]
    x, xt = x[:, None], xt[:, None]                      # NCHW: (N, 1, 28, 28)
    phases["data"] = _status()
    first = [nn.Conv2D(1, 32, 3)]
    if args.uint8:  # uint8 pixels fed as they are, scaled to [0, 1] inside the graph
        first.insert(0, lambda t: gc.cast(t, np.float32) / 255)
    model = nn.Sequential(*first, gc.relu, nn.Conv2D(32, 64, 3), gc.relu,
                          nn.MaxPool2D(2), nn.Dropout(0.25), nn.Flatten(),
                          nn.Dense(9216, 128), gc.relu, nn.Dropout(0.5), nn.Dense(128, 10),
                          nn.LogSoftmax(dim=1))
    opt = gc.optim.Adadelta(lr=1.0)
    if args.whole_eval_batches:  # never split validation batches (fit's behaviour before)
        gc.train.EVAL_ARENA_FLOOR = float("inf")

    class Probe(gc.train.Callback):
        def on_batch_end(self, batch, logs, trainer):
            if batch == 0 and "first step" not in phases:
                phases["first step"] = _status()

        def on_epoch_end(self, epoch, logs, trainer):
            phases[f"epoch {epoch + 1} (after validation)"] = _status()

    history = gc.fit(model, (x[:args.steps * BATCH], y[:args.steps * BATCH]),
                     epochs=args.epochs, batch_size=BATCH, optimizer=opt, loss=gc.nll_loss,
                     schedule=gc.optim.StepLR(opt, step_size=1, gamma=0.7),
                     validation=(xt, yt), eval_batch_size=TEST_BATCH, progress=False,
                     callbacks=[Probe()])
    held = {"data arrays": _mib(sum(a.nbytes for a in (x, y, xt, yt)))}
    for name, fn in (("train step", history.step), ("evaluation", history.evaluate)):
        entries = getattr(fn, "_compiled", {})
        held[f"{name} arenas ({len(entries)} bound plans)"] = _mib(sum(
            bp.memory.arena_bytes for bp, _ in entries.values()))
    try:  # the CPU backend's per-thread conv scratch (im2col) buffers, if it has them
        from graphc.backends.cpu import conv_kernels
        scratch = getattr(conv_kernels._scratch, "arrays", {})
        held[f"conv scratch ({len(scratch)} buffers)"] = _mib(sum(
            a.nbytes for a in scratch.values()))
    except (ImportError, AttributeError):
        pass
    return {"val_accuracy": history.history["val_accuracy"][-1], "phases": phases,
            "held_at_end_mib": held}


def _idx(directory, stem: str, header: int):
    """An MNIST IDX file's payload as uint8 (the folder `mnist/` or its parent)."""
    import gzip

    import numpy as np
    directory = directory or os.environ["GRAPHC_DATA"]
    if os.path.isdir(os.path.join(directory, "mnist")):
        directory = os.path.join(directory, "mnist")
    with gzip.open(os.path.join(directory, stem + ".gz"), "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=header).copy()


# --- torch --------------------------------------------------------------------------------
def run_torch(args) -> dict:
    phases = {}
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F
    phases["import"] = _status()
    # uint8, as torchvision keeps it; read here so that graphc is not imported
    (x, y), (xt, yt) = [(torch.from_numpy(_idx(args.data, f"{s}-images-idx3-ubyte", 16)
                                          .reshape(-1, 28, 28)),
                         torch.from_numpy(_idx(args.data, f"{s}-labels-idx1-ubyte", 8)).long())
                        for s in ("train", "t10k")]
    phases["data"] = _status()
    torch.manual_seed(0)

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = tnn.Conv2d(1, 32, 3, 1), tnn.Conv2d(32, 64, 3, 1)
            self.dropout1, self.dropout2 = tnn.Dropout(0.25), tnn.Dropout(0.5)
            self.fc1, self.fc2 = tnn.Linear(9216, 128), tnn.Linear(128, 10)

        def forward(self, t):
            t = F.relu(self.conv2(F.relu(self.conv1(t))))
            t = self.dropout1(F.max_pool2d(t, 2))
            t = self.dropout2(F.relu(self.fc1(torch.flatten(t, 1))))
            return F.log_softmax(self.fc2(t), dim=1)

    def images(batch):  # ToTensor: uint8 -> float in [0, 1], per batch
        return batch[:, None].float().div_(255)

    model = Net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.7)
    g = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)[:args.steps * BATCH]
        for b in range(0, len(order), BATCH):
            idx = order[b:b + BATCH]
            opt.zero_grad()
            loss = F.nll_loss(model(images(x[idx])), y[idx])
            loss.backward()
            opt.step()
            if "first step" not in phases:
                phases["first step"] = _status()
        model.eval()
        correct = 0
        with torch.no_grad():
            for b in range(0, len(xt), TEST_BATCH):
                out = model(images(xt[b:b + TEST_BATCH]))
                correct += int((out.argmax(1) == yt[b:b + TEST_BATCH]).sum())
        sched.step()
        phases[f"epoch {epoch + 1} (after validation)"] = _status()
    return {"val_accuracy": correct / len(xt), "phases": phases}


# --- driver -------------------------------------------------------------------------------
def _worker(args) -> None:
    result = (run_graphc if args.worker == "graphc" else run_torch)(args)
    result["peak_rss_mib"] = peak_rss_mib()
    print("RESULT " + json.dumps(result))


def measure(system: str, args) -> dict:
    """One system in a fresh process: its result dict (peak_rss_mib, phases, ...)."""
    cmd = [sys.executable, "-m", "benchmarks.memory_port", "--worker", system,
           "--steps", str(args.steps), "--epochs", str(args.epochs)]
    if args.data:
        cmd += ["--data", args.data]
    cmd += [f"--{k}" for k in ("uint8", "whole-eval-batches")
            if getattr(args, k.replace("-", "_"))]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{system} worker failed (exit {out.returncode}):\n"
                       f"{out.stderr[-3000:]}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100, help="training batches per epoch")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--system", nargs="+", default=["graphc", "torch"],
                   choices=["graphc", "torch"])
    p.add_argument("--uint8", action="store_true",
                   help="graphc: keep the images uint8 and scale them inside the model")
    p.add_argument("--whole-eval-batches", action="store_true",
                   help="graphc: validate in whole batches of 1000 however large their plan")
    p.add_argument("--data", default=None, help="data directory (default: $GRAPHC_DATA)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return
    results = {}
    for system in args.system:
        r = results[system] = measure(system, args)
        print(f"{system}: peak RSS {r['peak_rss_mib']:.0f} MiB, val_accuracy "
              f"{r['val_accuracy']:.4f}")
        for phase, st in r["phases"].items():
            print(f"  {phase:<28} RSS {st.get('VmRSS', float('nan')):7.0f} MiB   "
                  f"peak {st.get('VmHWM', float('nan')):7.0f} MiB")
        for what, mib in r.get("held_at_end_mib", {}).items():
            print(f"  held at the end: {what:<36} {mib:7.1f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
