"""Process-wide settings (Function stage): the backend `gc.compile` uses when none is named.

`gc.config.backend` starts as $GRAPHC_BACKEND or "numpy"; assign it to change the default
for every later compile (and fit) that names no backend."""
from __future__ import annotations

import os

backend: str = os.environ.get("GRAPHC_BACKEND", "numpy")

# TF32 tensor-core math for float32 GEMMs on the CUDA backend: off by default (full float32,
# as on the CPU); True trades about 3 decimal digits of each product for speed. Read when
# the backend's cuBLAS handle is made (the first GEMM of the process).
allow_tf32: bool = False
