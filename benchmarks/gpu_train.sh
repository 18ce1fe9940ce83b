#!/usr/bin/env bash
# GPU training measurements for a machine without network: the labml preset with the seed's
# settings (batch 64, lr 2e-5, 3 epochs, EMA on) and the small preset at a large batch.
# Each run's log.jsonl (step, loss, images/s, wall time, peak GPU memory) lands in $OUT.
# MNIST must travel with the working tree: copy ../shared/data/mnist to data/mnist (git-ignored)
# here and carry data/mnist. Extra arguments go to both ddpm-train runs.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
data=${DDPM_DATA_DIR:-data/mnist}
mkdir -p "$out"
python3 -m pip install -q --no-deps --no-build-isolation --no-index --target /tmp/ddpm-site .
export PYTHONPATH=/tmp/ddpm-site${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu-train-device.txt"

run() {  # name, then ddpm-train arguments
  local name=$1; shift
  rm -rf "/tmp/runs/$name"
  PYTHONUNBUFFERED=1 python3 -m ddpm.train.cli --device cuda --data-dir "$data" --out "/tmp/runs/$name" \
    --no-progress --save-every 0 --log-every 50 "$@" 2>&1 | tee "$out/gpu-train-$name.log"
  cp "/tmp/runs/$name/log.jsonl" "$out/gpu-train-$name.jsonl"
}

run labml --preset labml --epochs 3 --no-samples "$@"
run small --preset small --batch-size 1024 --lr 1e-3 --epochs 40 --ema-decay 0.999 "$@"
cp /tmp/runs/small/model.pt "$out/gpu-small-model.pt"   # about 36 MB: small enough to bring back
