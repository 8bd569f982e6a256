"""The scheduler (schedule stage): binds a symbolic Plan to concrete shapes for one
backend and decides how it executes: kernels (kernel.py) made by elementwise fusion
(fusion.py), values recomputed instead of stored (recompute.py), a data-parallel step's
gradient buckets placed as allreduce starts and waits (collectives.py), SGD updates fused
into their GEMM (gemm_update.py), expression programs for the printers (expr.py) and the
arena every intermediate lives in (memory_plan.py). bind.py runs them in order; the result
is a BoundPlan (bound.py), which a backend compiles."""
from __future__ import annotations

from .bind import bind  # noqa: F401
from .bound import BoundPlan  # noqa: F401
from .capabilities import Capabilities  # noqa: F401
from .kernel import Kernel  # noqa: F401
