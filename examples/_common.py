"""Shared command-line options and the loss-curve plot for the examples."""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parser(description: str, epochs: int) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--backend", default="numpy", help="numpy (CPU), cuda (GPU) or auto")
    p.add_argument("--data", default=None, help="data directory (default: $GRAPHC_DATA)")
    p.add_argument("--plot", default=None, help="loss-curve PNG (default: <example>.png)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--limit", type=int, default=None,
                   help="use only the first N training examples (a quick smoke run)")
    return p


def plot_history(history, path: str, title: str) -> None:
    """Training and validation loss per epoch as a PNG (skipped without matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot written (pip install graphc[plot])")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [e + 1 for e in history.epochs]
    for key in ("loss", "val_loss"):
        if key in history.history:
            ax.plot(epochs, history.history[key], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"loss curve: {path}")


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
