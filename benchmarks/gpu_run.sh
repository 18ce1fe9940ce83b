#!/usr/bin/env bash
# The GPU benchmark as one command, for a GPU machine without network (benchmarks/README.md).
# Needs onnxruntime-gpu importable (for example from /tmp/ortsite, see the README) and PyTorch with
# CUDA for the PyTorch rows and the labml export. Results go to $OUT (or benchmarks/results).
# Extra arguments go to ddpm-bench, e.g. --gpu-batches 1,16 --models small to fit a short lease.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/ddpm-site .
export PYTHONPATH=/tmp/ddpm-site${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import onnxruntime as o; o.preload_dlls(); p = o.get_available_providers(); print(o.__version__, p); assert 'CUDAExecutionProvider' in p"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
PYTHONUNBUFFERED=1 python3 -m ddpm.benchmarks.bench --providers cpu,cuda --out-dir "$out" --tag gpu "$@" 2>&1 | tee "$out/bench-gpu.log"
