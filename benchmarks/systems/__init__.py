"""Systems the suite compares: each builds a Runner for a workload on a device.

A system module defines one or more `System` subclasses and lists them in `SYSTEMS`.
Every runner starts from `workloads.make_data(workload)` and computes exactly the step the
workload describes, in float32 (TF32 off, JAX precision HIGHEST).
"""
from __future__ import annotations

import importlib

import numpy as np


class Unavailable(Exception):
    """The system cannot run here (not installed, no device, workload unsupported)."""


class Runner:
    """One compiled/prepared step of one system on one workload."""

    def step(self) -> None:
        """Run one step (may return before the device finishes)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for the device to finish all work issued so far."""

    def fingerprint(self) -> np.ndarray:
        """Figures of the last step to compare across systems: [loss] for training steps;
        [loss, sum(grad), sum(grad**2)] for the parameter-free kinds. Synchronizes."""
        raise NotImplementedError

    def device_bytes(self) -> int | None:
        """Device memory held by this system's pool, or None on the CPU."""
        return None


class System:
    """A way of computing the workloads: graphc on a backend, hand-written NumPy, torch..."""

    name = "?"
    device = "cpu"  # "cpu" or "gpu"
    tf32 = False  # rows computed with TF32 matmuls are labelled and compared with TF32 peers
    floor = False  # a lower bound (part of the step alone): timed, never agreement-checked

    def check(self) -> None:
        """Raise Unavailable(reason) when the system cannot run on this machine."""

    def supports(self, workload) -> bool:
        return True

    def build(self, workload, data: dict) -> Runner:
        raise NotImplementedError


MODULES = ["graphc_sys", "numpy_sys", "cupy_sys", "torch_sys", "jax_sys"]


def all_systems() -> list[System]:
    """Every system the suite knows, whether or not it can run here."""
    out = []
    for mod in MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{mod}")
        except ImportError as e:  # a peer module that cannot even import is reported, not fatal
            print(f"  (systems in {mod} unavailable: {e})")
            continue
        out.extend(cls() for cls in module.SYSTEMS)
    return out


TRAINING_KINDS = ("mlp", "lenet", "lstm")  # steps whose fingerprint is [loss]


def adam_fingerprint(params, grads) -> np.ndarray:
    """[sum of p * g] after an Adam step: each step moves it by about -lr * sum |g|."""
    return np.array([sum(float(np.dot(np.asarray(p, np.float64), np.asarray(g, np.float64)))
                         for p, g in zip(params, grads))])


def gradient_fingerprint(loss, grad) -> np.ndarray:
    """The fingerprint of a parameter-free step from host arrays."""
    g = np.asarray(grad, dtype=np.float64)
    return np.array([float(loss), float(g.sum()), float((g * g).sum())])
