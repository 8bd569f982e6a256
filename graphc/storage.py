"""Parameter storage (graph stage): where a parameter's value lives between calls.

A Parameter holds a storage object; the core reads and writes values only through it
(`p.value`, `p.assign`), and a backend's runtime may replace it with storage of its own
(device memory) when it binds a plan. Every host write bumps `version`, so host-side
mirrors of a value (an optimizer's step count) know when to read it again."""
from __future__ import annotations

import numpy as np


class HostStorage:
    """A value in host memory: one NumPy array that compiled plans read and write in place."""

    __slots__ = ("array", "version")
    device = "host"

    def __init__(self, array: np.ndarray):
        self.array = array
        self.version = 0

    def read(self) -> np.ndarray:
        """A host copy of the value."""
        return self.array.copy()

    def host(self) -> np.ndarray:
        """The value on the host without a copy where it already lives there (read only)."""
        return self.array

    def write(self, value: np.ndarray) -> None:
        """Overwrite the value in place (plans compiled against this storage see it)."""
        self.array[...] = value
        self.version += 1

    def snapshot(self):
        """An opaque copy of the value for `restore` (a failed step puts it back)."""
        return self.array.copy()

    def restore(self, snapshot) -> None:
        np.copyto(self.array, snapshot)
        self.version += 1
