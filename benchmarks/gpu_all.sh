#!/usr/bin/env bash
# The whole GPU job of issue #31 as one command, steps in priority order, each under its own time
# budget, results written under $OUT after every step (a call cut short keeps what finished):
#   $OUT/steps.txt     each step: status (ok, failed rc N, timed out, skipped: why), seconds, budget
#   $OUT/machine.txt   nvidia-smi, driver, Python, PyTorch, CUDA, ONNX Runtime and its providers
#   $OUT/results.tar.gz   every step's folder (logs, junit, bench/serving/eval JSON and tables)
#   $OUT/summary.md    the steps' tables (bench .md, serving .md, eval and training summaries)
# Steps: 0 setup, 1 pytest -m gpu, 2a labml batch 1, 2b labml batch 256, 2c small's CUDA-graph,
# fused and fp16 rows, 3 engine vs naive loops, 4 ddpm-eval fp32/fp16, 5 labml training.
# Usage: benchmarks/gpu_all.sh [--dry-run] [--from STEP] [--only S,S,...] [--stash-ort]
#   --dry-run (or DRY_RUN=1): every step on the CPU with tiny models and few steps (tests the flow)
#   --from 3: start at step 3 (the second call); --only 1,2b: just these (step 0 always runs)
#   --stash-ort: copy the carried .ortgpu/pN/part files to /tmp/ortgpu and exit (one call per part)
# Settings (environment): OUT, DEADLINE (seconds for the whole call; each step's budget is cut to
# what is left, default 470), BUDGET_<step> (e.g. BUDGET_2a=200), DDPM_DATA_DIR (MNIST, default
# data/mnist; tests/data/mnist in a dry run), EVAL_CKPT (a checkpoint of the embedded model, for
# its fp16 copy), PYTHON (default python3), GPU_ALL_WORK (scratch, default /tmp/gpu-all).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
script="$root/benchmarks/gpu_all.sh"
PY=${PYTHON:-python3}
work=${GPU_ALL_WORK:-/tmp/gpu-all}
out=${OUT:-$work/out}
dry=${DRY_RUN:-0}
from="" only="" step_arg=""
steps_all=(0 1 2a 2b 2c 3 4 5)
declare -A name=([0]=setup [1]=pytest-gpu [2a]=labml-b1 [2b]=labml-b256 [2c]=small-rows [3]=serving [4]=eval [5]=train)
declare -A budget=([0]=45 [1]=120 [2a]=150 [2b]=90 [2c]=45 [3]=150 [4]=150 [5]=150)  # 900 s: 450 (0-2c) + 450 (3-5)

while (($#)); do
  case $1 in
    --dry-run) dry=1 ;;
    --from) from=$2; shift ;;
    --only) only=,$2,; shift ;;
    --step) step_arg=$2; shift ;;  # internal: run one step's body (under the caller's timeout)
    --stash-ort)
      mkdir -p /tmp/ortgpu
      for p in .ortgpu/p*/part; do [[ -f $p ]] || continue; n=${p#.ortgpu/p}; cp "$p" "/tmp/ortgpu/${n%/part}"; done
      ls -l /tmp/ortgpu; exit 0 ;;
    -h|--help) sed -n '2,20p' "$script"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
export DRY_RUN=$dry GPU_ALL_WORK=$work OUT=$out PYTHON=$PY
site=$work/site
export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
[[ -d /tmp/ortsite ]] && export PYTHONPATH=/tmp/ortsite:$PYTHONPATH
if ((dry)); then data=${DDPM_DATA_DIR:-tests/data/mnist}; provider=cpu; else data=${DDPM_DATA_DIR:-data/mnist}; provider=cuda; fi
export PYTHONUNBUFFERED=1

ort_cuda="from ddpm.runtime.session import gpu_present; import onnxruntime as o; o.preload_dlls()
assert gpu_present() and 'CUDAExecutionProvider' in o.get_available_providers()"  # a GPU driver, and ORT's CUDA provider

ddpm() {  # a console script's main from the installed copy: ddpm MODULE ARGS...
  local module=$1; shift
  "$PY" -c "import sys; from ddpm.$module import main; sys.argv[0] = 'ddpm-$module'; main()" "$@"
}

# --- the steps' bodies: each writes into $d (its folder, packed into $OUT afterwards) -----------

step_0() {  # install this project and onnxruntime-gpu (from carried parts); describe the machine
  "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --target "$site" . || return 1
  if ! "$PY" -c "$ort_cuda" 2>/dev/null; then
    if ((!dry)) && [[ -f .ortgpu/name ]] && ls /tmp/ortgpu/* >/dev/null 2>&1; then
      wheel=/tmp/$(cat .ortgpu/name)
      echo "reassembling $(ls /tmp/ortgpu | wc -l) parts into $wheel"
      cat $(ls /tmp/ortgpu/* | sort -t/ -k4 -n) > "$wheel" &&
        "$PY" -m pip install -q --no-index --no-deps --target /tmp/ortsite "$wheel" || echo "onnxruntime-gpu: install FAILED"
    else
      echo "onnxruntime-gpu: no parts in /tmp/ortgpu (bash benchmarks/gpu_all.sh --stash-ort, one call per carried part)"
    fi
  fi
  {
    echo "# machine ($(date -u +%FT%TZ)$( ((dry)) && echo ', dry run'))"
    echo "tree: $(git rev-parse HEAD 2>/dev/null || echo 'not a git checkout')"
    echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-) x $(nproc)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not here"
    nvidia-smi 2>/dev/null | head -4
    "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0], sys.executable)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError as error:
    print("torch: missing", error)
import numpy, onnxruntime as o
o.preload_dlls() if hasattr(o, "preload_dlls") else None
print("onnxruntime", o.__version__, o.__file__, o.get_available_providers())
print("numpy", numpy.__version__)
import ddpm.runtime
print("ddpm", ddpm.runtime.__file__)
EOF
  } 2>&1 | tee "$d/machine.txt"
  cp "$d/machine.txt" "$out/machine.txt"
}

step_1() {
  "$PY" -m pytest -m gpu tests/test_gpu.py -q -rA -p no:cacheprovider -o junit_family=xunit1 --junitxml="$d/gpu-tests.xml"
}

labml_onnx() {  # the labml network with random weights (as ddpm-bench makes it), exported once
  local target=$work/labml.onnx preset=labml
  ((dry)) && preset=tiny target=$work/tiny.onnx  # a dry run times the tiny preset in labml's place
  [[ -s $target ]] || "$PY" - "$preset" "$target" <<'EOF' >&2 || return 1
import sys
from pathlib import Path
import torch
from ddpm.benchmarks.models import export_random
from ddpm.train.config import preset
from ddpm.train.unet import UNet
torch.manual_seed(0)  # the weights ddpm-bench's own labml module gets (models.random_module)
export_random(UNet(preset(sys.argv[1])).eval(), Path(sys.argv[2]), None, lambda line: print(line, file=sys.stderr))
EOF
  echo "$target"
}

bench() {  # TAG BATCHES IMPLEMENTATIONS MODEL-ARGS... (extra ddpm-bench arguments)
  local tag=$1 batches=$2 impls=$3; shift 3
  if ((dry)); then
    ddpm benchmarks.bench --providers cpu --cpu-batches "$batches" --implementations "$impls" --warmup 1 --repeats 2 \
      --threads 2 --no-samplers --out-dir "$d" --tag "dry-$tag" "$@"
  else
    ddpm benchmarks.bench --providers cuda --gpu-batches "$batches" --implementations "$impls" --warmup 3 --repeats 10 \
      --no-samplers --out-dir "$d" --tag "gpu-$tag" "$@"
  fi
}
labml_rows=eager,torchscript,ort,ort-iobinding,ort-cudagraph,ort-fused,ort-fp16

labml_models() {  # the model arguments for the labml rows (a dry run: tiny in place of labml)
  local file; file=$(labml_onnx) || return 1
  if ((dry)); then echo "--models small --onnx $file"; else echo "--models labml --labml-onnx $file"; fi
}

step_2a() { local m; m=$(labml_models) || return 1; bench labml-b1 1 "$labml_rows" $m --full-loop; }
step_2b() { local m; m=$(labml_models) || return 1; bench labml-b256 "$( ((dry)) && echo 4 || echo 256)" "$labml_rows" $m --no-full-loop; }
step_2c() {
  bench small "$( ((dry)) && echo 1,4 || echo 1,16,256)" \
    ort,ort-iobinding,ort-cudagraph,ort-fused,ort-fused-cudagraph,ort-fp16,ort-fp16-fused-cudagraph --models small --no-full-loop
}

step_3() {  # the continuous-batching engine against the naive per-request loops, 100-step requests
  local levels=1,16,64,256 threads=4
  ((dry)) && levels=1,4 threads=2
  "$PY" -m ddpm.benchmarks.serving --provider "$provider" --concurrency "$levels" --methods batched,engine,sequential \
    --quick --threads "$threads" --out "$d"
}

step_4() {  # ddpm-eval on the embedded model: fp32 and its fp16 copy, DPM-Solver++ 20 calls then ancestral 1000
  local n=1000 batch=1000 fp16="" rc=0 ancestral=1000 sde=20
  ((dry)) && n=8 batch=8 ancestral=10 sde=5
  if [[ -n ${EVAL_CKPT:-} ]]; then
    echo "fp16 copy: ddpm-export --ckpt $EVAL_CKPT --fp16 (sha256 $(sha256sum "$EVAL_CKPT" | cut -c1-16)...)"
    ddpm export.cli --ckpt "$EVAL_CKPT" --out-dir "$work/fp16" --fp16 --no-torchscript && fp16=$work/fp16/unet.fp16.onnx
  else
    echo "fp16: skipped: no checkpoint of the embedded model (EVAL_CKPT); ddpm-export needs one for the fp16 copy"
    echo -n "fp16 skipped: no EVAL_CKPT" > "$d/note.txt"
  fi
  for sampler in dpm++2m-sde:$sde ancestral:$ancestral; do
    for precision in fp32 fp16; do
      local model=() tag=$precision-${sampler%%:*}
      if [[ $precision == fp16 ]]; then [[ -n $fp16 ]] || continue; model=(--onnx "$fp16"); fi
      echo "== ddpm-eval $tag, N=$n, batch $batch"
      local start=$SECONDS
      ddpm runtime.eval_cli "${model[@]}" --provider "$provider" -n "$n" --batch-size "$batch" --sampler "${sampler%%:*}" \
        --steps "${sampler##*:}" --seed 0 --data-dir "$data" --json "$d/eval-$tag.json" -q || rc=$?
      echo "$tag: $((SECONDS - start)) s" | tee -a "$d/eval-seconds.txt"
    done
  done
  return $rc
}

step_5() {  # labml training throughput, without and with --compile (bounded steps; gpu_train.sh's settings)
  local args=(--preset labml --device cuda --max-steps 150 --log-every 25) rc=0 limit
  ((dry)) && args=(--preset tiny --device cpu --max-steps 6 --log-every 2 --max-images 256 --threads 2)
  for variant in eager compile; do
    local run=$work/train-$variant extra=()
    [[ $variant == compile ]] && extra=(--compile)
    if ((dry)) && [[ $variant == compile ]]; then  # inductor's C++ build on 2 CPU cores takes minutes (and failed here)
      echo "--compile: skipped in a dry run"; echo -n "--compile skipped in a dry run" > "$d/note.txt"; continue
    fi
    if [[ $variant == eager ]]; then limit=$(( $(remaining) / 3 )); else limit=$(( $(remaining) - SECONDS - 10 )); fi
    rm -rf "$run"
    echo "== ddpm-train ${args[*]} ${extra[*]} (at most $limit s)"
    timeout -k 5 "$limit" "$PY" -c "import sys; from ddpm.train.cli import main; sys.argv[0] = 'ddpm-train'; main()" \
      "${args[@]}" "${extra[@]}" --data-dir "$data" --out "$run" --no-progress --no-samples --save-every 0 2>&1 |
      tee "$d/train-$variant.log"
    local code=${PIPESTATUS[0]}
    ((code)) && { echo "train-$variant: rc $code"; rc=$code; }
    cp "$run/log.jsonl" "$d/train-$variant.jsonl" 2>/dev/null
  done
  "$PY" - "$d" <<'EOF' | tee "$d/train-summary.md"
import json, statistics, sys
from pathlib import Path
print("| run | logged steps | images/s (median after warm-up) | s per 60,000-image epoch | peak GPU GB |\n|---|---:|---:|---:|---:|")
for variant in ("eager", "compile"):
    path = Path(sys.argv[1]) / f"train-{variant}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rates = [r["images_per_s"] for r in rows[2:] or rows]
    if rates:
        rate = statistics.median(rates)
        print(f"| {variant} | {rows[-1]['step']} | {rate:.0f} | {60000 / rate:.1f} | {rows[-1].get('max_memory_gb') or 0:.1f} |")
    else:
        print(f"| {variant} | none | - | - | - |")
EOF
  return $rc
}

# --- the driver --------------------------------------------------------------------------------

if [[ -n $step_arg ]]; then  # one step's body, in its folder
  d=$work/steps/$step_arg; mkdir -p "$d"
  remaining() { echo "${STEP_LIMIT:-60}"; }
  "step_$step_arg"
  exit
fi

started=$SECONDS
deadline=${DEADLINE:-470}
remaining() { echo $((deadline - (SECONDS - started))); }
rm -rf "$work/steps" && mkdir -p "$work/steps" "$out" || exit 1
done_lines=()
write_steps() {  # steps.txt from what finished, plus the step running now
  { printf '# gpu_all.sh%s, started %s, deadline %s s\n' "$( ((dry)) && echo ' --dry-run')" "$start_stamp" "$deadline"
    printf '%-4s %-12s %-44s %7s %7s\n' step name status seconds budget
    printf '%s\n' "${done_lines[@]}"
    if [[ -n ${1:-} ]]; then printf '%-4s %-12s %-44s\n' "$1" "${name[$1]}" "running"; fi
  } > "$out/steps.txt.tmp"
  mv "$out/steps.txt.tmp" "$out/steps.txt"
}
record() { done_lines+=("$(printf '%-4s %-12s %-44s %7s %7s' "$1" "${name[$1]}" "$2" "$3" "$4")"); write_steps; }
pack() {  # every step folder so far into results.tar.gz, the tables into summary.md
  tar -czf "$out/results.tar.gz.tmp" -C "$work" steps && mv "$out/results.tar.gz.tmp" "$out/results.tar.gz"
  { for f in "$work"/steps/*/*.md; do [[ -f $f ]] && { echo "<!-- ${f#$work/steps/} -->"; cat "$f"; echo; }; done
    for f in "$work"/steps/4/eval-*.json; do [[ -f $f ]] && { echo "eval ${f##*/}:"; head -c 1500 "$f"; echo; }; done
  } > "$out/summary.md" 2>/dev/null
}
selected() {
  local s=$1
  [[ $s == 0 ]] && return 0
  [[ -n $only ]] && { [[ $only == *,$s,* || $only == *,${s%[abc]},* ]]; return; }
  [[ -z $from ]] || [[ ${s%[abc]} -gt ${from%[abc]} ]] || [[ ${s%[abc]} == "${from%[abc]}" && ! $s < $from ]]
}
why_not() {  # a reason a step cannot run on this machine, or nothing
  ((dry)) && return
  case $1 in
    5) "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || echo "no CUDA in PyTorch" ;;
    *) "$PY" -c "$ort_cuda" \
         2>/dev/null || echo "no CUDA provider in onnxruntime" ;;
  esac
}

start_stamp=$(date -u +%FT%TZ)
write_steps
for s in "${steps_all[@]}"; do
  b=${budget[$s]}; var=BUDGET_$s; b=${!var:-$b}
  if ! selected "$s"; then record "$s" "skipped: not selected" 0 "$b"; continue; fi
  left=$(remaining)
  if ((left < 10)); then record "$s" "skipped: no time left in DEADLINE" 0 "$b"; continue; fi
  ((left < b)) && b=$left
  [[ $s != 0 ]] && reason=$(why_not "$s") && [[ -n $reason ]] && { record "$s" "skipped: $reason" 0 "$b"; continue; }
  write_steps "$s"
  echo "=== step $s ${name[$s]} (budget $b s) ===" >&2
  mkdir -p "$work/steps/$s"
  t0=$SECONDS
  STEP_LIMIT=$b timeout -k 10 "$b" bash "$script" --step "$s" 2>&1 | tee "$work/steps/$s/log.txt"
  rc=${PIPESTATUS[0]}
  secs=$((SECONDS - t0))
  case $rc in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed rc $rc" ;;
  esac
  [[ -s $work/steps/$s/note.txt ]] && status="$status ($(head -c 60 "$work/steps/$s/note.txt"))"
  record "$s" "$status" "$secs" "$b"
  pack
  [[ $s == 0 ]] && [[ -n $(ls -d /tmp/ortsite 2>/dev/null) ]] && export PYTHONPATH=/tmp/ortsite:$PYTHONPATH
done
pack
cat "$out/steps.txt"
