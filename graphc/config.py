"""Process-wide settings (Function stage): the backend `gc.compile` uses when none is named.

`gc.config.backend` starts as $GRAPHC_BACKEND or "numpy"; assign it to change the default
for every later compile (and fit) that names no backend."""
from __future__ import annotations

import os

backend: str = os.environ.get("GRAPHC_BACKEND", "numpy")
