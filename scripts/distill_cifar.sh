#!/usr/bin/env bash
# Knowledge distillation on a small labelled set: an α 0.25 MobileNet (32×32, small-input stem,
# from scratch) trained on the 100-per-class CIFAR-10 folder of scripts/fine_tune_cifar.sh, alone
# and distilled from an α 1.0 teacher (a model that script fine-tuned from Google's weights), with
# the same epochs and seeds; every student tested on the 10,000 CIFAR-10 test JPEGs.
#   scripts/distill_cifar.sh BINARY SHARED_DATA WORK_DIR TEACHER [EPOCHS]
# WORK_DIR must hold train100/ (scripts/fine_tune_cifar.sh makes it).
set -euo pipefail
BIN=$1
DATA=$2
WORK=$3
TEACHER=$4
EPOCHS=${5:-30}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
teacher_top1=$("$BIN" eval --model "$TEACHER" --data "$DATA/cifar10_jpeg/test" --json \
  | python3 -c 'import json,sys; print("%.2f%%" % (100*json.load(sys.stdin)["top1"]))')
echo "teacher: $TEACHER, test top-1 $teacher_top1"
echo "| student α 0.25, $EPOCHS epochs | seed | test top-1 (best held-out epoch) | training wall time |"
echo "|---|---|---|---|"
for seed in 1 2; do
  for mode in alone w0.5 w0.9; do
    extra=()
    case $mode in
      w0.5) extra=(--teacher "$TEACHER" --distill-weight 0.5 --temperature 4) ;;
      w0.9) extra=(--teacher "$TEACHER" --distill-weight 0.9 --temperature 4) ;;
    esac
    out="$WORK/student-$mode-$seed"
    start=$(date +%s.%N)
    "$BIN" train --data "$WORK/train100" --out "$out" --show 0 --alpha 0.25 --resolution 32 \
      --epochs "$EPOCHS" --seed "$seed" "${extra[@]}" > "$out.log" 2>&1
    train_s=$(echo "$(date +%s.%N) - $start" | bc)
    top1=$("$BIN" eval --model "$out/model-best.safetensors" --data "$DATA/cifar10_jpeg/test" --json \
      | python3 -c 'import json,sys; print("%.2f%%" % (100*json.load(sys.stdin)["top1"]))')
    printf '| %s | %s | %s | %.0f s |\n' "$mode" "$seed" "$top1" "$train_s"
  done
done
