#!/usr/bin/env bash
# make gpu-check: the GPU half of graphc's checks, for a machine with a CUDA device and no
# network (the H200 machine: CuPy, numba-cuda, CUDA 13, torch and JAX installed). At most
# about 8 minutes: the pytest gpu tests (3 min cap), then the benchmark suite's GPU rows
# (4 min cap), writing the GPU section of RESULTS.md and its JSON into $OUT when it is set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/gpu-check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 \
    || $PY -m pip install -q --no-deps -e . >>"$OUT/install.txt" 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
$PY -c "import graphc as gc; print('cuda backend:', gc.backends.availability('cuda') or 'available')" \
    | tee -a "$OUT/gpu.txt"
echo "== pytest -m gpu"
timeout 180 $PY -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.txt" | tail -25
echo "== benchmarks (GPU rows)"
timeout 240 $PY -m benchmarks --device gpu --no-sweeps \
    --workload mlp-s --workload mlp-m --workload mlp-l --workload deep-narrow \
    --workload elementwise --workload softmax-xent --workload lenet --workload lstm \
    --workload adam --json "$OUT/gpu-results.json" --results "$OUT/RESULTS.md" 2>&1 \
    | tee "$OUT/bench-gpu.txt" | tail -40
echo "== compile time (mlp-m, cuda)"
timeout 60 $PY -m benchmarks.compile_time --backend cuda 2>&1 | tee "$OUT/compile-time.txt" | tail -8
exit 0
