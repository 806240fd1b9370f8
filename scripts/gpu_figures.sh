#!/usr/bin/env bash
# The README's GPU figures in one run: the test suite on CUDA, then `bench` at the paper's model
# sizes and batches (random weights, bf16). A lent GPU comes for minutes, so every step has a
# time cap inside one overall budget, and the results are packed after each step: a run cut short
# still returns what it finished.
#   scripts/gpu_figures.sh OUTDIR [SECONDS [STEP…]]  → OUTDIR/gpu_figures.tgz (one file per step), OUTDIR/steps.log
# STEP: tests janus-pro-1b janus-pro-7b llamagen-xl lumina-768 lumina-1024 janus-7b-batch1 decode-modes
#       janus-vs-transformers spec-lumina-768 spec-janus-7b tests-transformers-oldest sample-llamagen-xl
#       lowvram-janus-7b lowvram-lumina-768 lowvram-janus-1b lowvram-uncapped (default: all, in that order).
# `tests-transformers-oldest` runs the engine and family tests on CUDA under the oldest supported
# transformers (4.56.2, as .ci/run does on CPU): the Cache-layer compatibility on the static step.
# lowvram-*: int8/int4 weights (torchao) x full/LineAR at batch 1 with the GPU capped by
# torch.cuda.set_per_process_memory_fraction (8 GiB for the 7B models, 4 GiB for Janus-Pro-1B), each
# after the planner's verdict for the same request; lowvram-uncapped: bf16 vs int8 vs int4 uncapped
# (the "no slower than 2x bf16" check).
# Every bench runs the static (CUDA-graph) step, `full` and `linear` side by side, and reports step
# time against the roofline; `decode-modes` compares eager, CUDA graph and inductor + CUDA graph on
# Janus-Pro-1B x128, and `janus-7b-batch1` puts one 7B image against transformers' generate.
# `spec-*` run full / LineAR / LineAR + speculative Jacobi (window 16) at batch 1 and 8: random
# weights give the cost per forward (window of 16 vs 1 token); combine it with the acceptance
# measured on the demo model or reported for the real models (README, "Speculative decoding").
# `sample-llamagen-xl` times `sample` end to end (LlamaGen-XL 384 px, LineAR 1/6, batch 256, bf16,
# 2,560 images) on random weights written in LlamaGen's file layout; 50,000 images take
# 50000 / images_per_s seconds. Its weights and images go to a scratch folder, not the archive.
# Caps: the eager step took 39 ms on an H200 (Janus-Pro-1B x128 and 7B x64 alike), so an eager run
# of 576 tokens is ~25 s; the static runs should take a few seconds each. Tests took ~110 s.
# PYTHON picks the interpreter (default python3); DEVICE the torch device (default cuda).
set -uo pipefail
dest=${1:?usage: scripts/gpu_figures.sh OUTDIR [SECONDS [STEP…]]}
budget=${2:-36000}
shift $(($# < 2 ? $# : 2))
steps=("$@")
((${#steps[@]})) || steps=(tests janus-pro-1b janus-pro-7b llamagen-xl lumina-768 lumina-1024 janus-7b-batch1
  decode-modes janus-vs-transformers spec-lumina-768 spec-janus-7b tests-transformers-oldest sample-llamagen-xl
  lowvram-janus-7b lowvram-lumina-768 lowvram-janus-1b lowvram-uncapped)
py=${PYTHON:-python3}
device=${DEVICE:-cuda}
work=$(mktemp -d)
mkdir -p "$dest"
deadline=$((SECONDS + budget))
export PYTHONUNBUFFERED=1

step() {  # NAME CAP COMMAND…: runs COMMAND for at most CAP seconds and what is left of the budget
  local name=$1 cap=$2 left=$((deadline - SECONDS)) start=$SECONDS
  shift 2
  if ((left < 20)); then
    echo "$name: skipped, ${left}s of the budget left" | tee -a "$dest/steps.log"
    return
  fi
  ((cap > left)) && cap=$left
  timeout "$cap" "$@" >"$work/$name.out" 2>"$work/$name.err"
  echo "$name: rc=$? in $((SECONDS - start))s (cap ${cap}s)" | tee -a "$dest/steps.log"
  tar czf "$dest/gpu_figures.tgz" -C "$work" .
}
bench() {  # NAME CAP BENCH-ARGS…
  local name=$1 cap=$2
  shift 2
  step "$name" "$cap" "$py" -m linear_core bench --device "$device" --dtype bf16 --json "$@"
}

capped() {  # NAME CAP GIB ARGS…: the CLI with the process's CUDA allocations capped at GIB GiB
  local name=$1 cap=$2 gib=$3
  shift 3
  step "$name" "$cap" "$py" -c "import sys, torch
torch.cuda.set_per_process_memory_fraction($gib * 2**30 / torch.cuda.get_device_properties(0).total_memory)
from linear_core.cli import main
sys.exit(main(sys.argv[1:]))" "$@"
}
lowvram() {  # NAME CAP GIB ARCH: the planner's verdicts, then the capped bench of int8/int4 x full/LineAR
  local name=$1 cap=$2 gib=$3 arch=$4 mode policy
  for mode in int8 int4; do
    for policy in full linear; do
      step "$name-plan-$mode-$policy" 60 "$py" -m linear_core plan --model "$arch" --device-memory "${gib}GiB" \
        --quantize "$mode" --policy "$policy" --budget 1/6 --json
    done
  done
  capped "$name" "$cap" "$gib" bench --arch "$arch" --device "$device" --dtype bf16 --json --batch 1 \
    --quantize int8,int4 --policies full,linear --budget 1/6
}

{ nvidia-smi -L; "$py" -c "import torch, transformers; print('torch', torch.__version__, 'transformers',
transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')"; } \
  >"$work/device.txt" 2>&1
parallel=$("$py" -c "import xdist" 2>/dev/null && echo "-n 12")
for name in "${steps[@]}"; do
  case $name in
    # shellcheck disable=SC2086
    tests) step tests 220 env LINEAR_TEST_DEVICE="$device" "$py" -m pytest -q -rs $parallel --ignore=tests/comfyui tests ;;
    janus-pro-1b) bench "$name" 120 --arch janus-pro-1b --batch 128 --policies full,linear --budget 1/4,1/6 ;;
    janus-pro-7b) bench "$name" 120 --arch janus-pro-7b --batch 64 --policies full,linear --budget 1/6 ;;
    llamagen-xl) bench "$name" 120 --arch llamagen-xl --batch 256 --policies full,linear --budget 1/6 ;;
    lumina-768) bench "$name" 240 --arch lumina-mgpt-7b-768 --batch 12 --policies full,linear --budget 1/8 ;;
    lumina-1024) bench "$name" 300 --arch lumina-mgpt-7b-1024 --batch 8 --policies full,linear --budget 1/8 ;;
    janus-7b-batch1) bench "$name" 200 --arch janus-pro-7b --vs-transformers --batch 1 --budget 1/6 ;;
    decode-modes) bench "$name" 200 --arch janus-pro-1b --batch 128 --policies linear --budget 1/6 \
      --decode eager,static,compiled ;;
    janus-vs-transformers) bench "$name" 200 --arch janus-pro-1b --vs-transformers --batch 16 --budget 1/4,1/6 ;;
    spec-lumina-768) for b in 1 8; do bench "$name-b$b" 150 --arch lumina-mgpt-7b-768 --batch $b --policies full,linear \
      --budget 1/6 --speculative jacobi --window 16; done ;;
    spec-janus-7b) for b in 1 8; do bench "$name-b$b" 120 --arch janus-pro-7b --batch $b --policies full,linear \
      --budget 1/6 --speculative jacobi --window 16; done ;;
    tests-transformers-oldest)
      oldest=$(mktemp -d)  # beside $work, not in it: $work is packed after each step
      "$py" -m pip install -q --no-deps --target "$oldest" transformers==4.56.2 tokenizers==0.22.2 \
        huggingface_hub==0.36.2 >"$work/tf-oldest.pip" 2>&1
      step "$name" 240 env LINEAR_TEST_DEVICE="$device" PYTHONPATH="$oldest" "$py" -m pytest -q -rs \
        -p no:cacheprovider tests/test_engine.py tests/test_llamagen.py tests/test_janus.py tests/test_lumina.py \
        tests/test_emu3.py tests/test_static_step.py -k "not cli"
      rm -rf "$oldest" ;;
    sample-llamagen-xl)
      scratch=$(mktemp -d)
      step "$name" 480 bash -c "'$py' scripts/random_llamagen.py '$scratch' && '$py' -m linear_core sample --json \
        --model '$scratch/c2i_XL_384.safetensors' --vq '$scratch/vq_ds16_c2i.safetensors' --device '$device' \
        --dtype bf16 --policy linear --budget 1/6 --batch 256 --num-images 2560 --out '$scratch/samples'"
      rm -rf "$scratch" ;;
    lowvram-janus-7b) lowvram "$name" 400 8 janus-pro-7b ;;
    lowvram-lumina-768) lowvram "$name" 500 8 lumina-mgpt-7b-768 ;;
    lowvram-janus-1b) lowvram "$name" 200 4 janus-pro-1b ;;
    lowvram-uncapped) bench "$name" 400 --arch janus-pro-7b --batch 1 --quantize none,int8,int4 --policies full,linear \
      --budget 1/6 ;;
    *) echo "unknown step $name" | tee -a "$dest/steps.log" ;;
  esac
done
echo "done in ${SECONDS}s" | tee -a "$dest/steps.log"
rm -rf "$work"
