#!/usr/bin/env bash
# Fine-tuning Google's ImageNet MobileNet (1.0-224 float) on a small labelled set: 100 CIFAR-10
# training JPEGs per class (the first 100 of each class folder), tested on the 10,000 test JPEGs.
# Linear probe, two-stage fine-tuning (RMSprop or Adam as Keras's guide; batch norm training or
# frozen) and training from scratch
# side by side, with wall times. All at 128×128 (the images are 32×32).
#   scripts/fine_tune_cifar.sh [mobilenet binary] [shared data] [work dir]
set -euo pipefail
BIN=${1:-target/release/mobilenet}
DATA=${2:-../shared/data}
WORK=${3:-$(mktemp -d)}
INIT=$DATA/mobilenet_v1/float/mobilenet_v1_1.0_224_imagenet_float.safetensors
mkdir -p "$WORK/train100"
for dir in "$DATA"/cifar10_jpeg/train/*/; do
  class=$(basename "$dir")
  mkdir -p "$WORK/train100/$class"
  files=("$dir"*)
  cp "${files[@]:0:100}" "$WORK/train100/$class/"
done
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
run() {
  local name=$1; shift
  local start=$(date +%s.%N)
  "$BIN" train --data "$WORK/train100" --out "$WORK/$name" --show 0 --resolution 128 "$@" > "$WORK/$name.log" 2>&1
  local train_s=$(echo "$(date +%s.%N) - $start" | bc)
  local top1=$("$BIN" eval --model "$WORK/$name/model-best.safetensors" --data "$DATA/cifar10_jpeg/test" --json \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f%% of %d" % (100*r["top1"], r["images"]))')
  printf '| %s | %s | %.0f s |\n' "$name" "$top1" "$train_s"
}
echo "| run | test top-1 (10,000 CIFAR-10 test images) | training wall time |"
echo "|---|---|---|"
run linear-probe --init "$INIT" --freeze backbone --epochs 10 --lr 0.01
run two-stage --init "$INIT" --freeze-epochs 3 --epochs 8 --lr 0.01
run two-stage-bn-frozen --init "$INIT" --freeze-epochs 3 --epochs 8 --lr 0.01 --bn frozen
run two-stage-adam --init "$INIT" --optimizer adam --lr 0.001 --freeze-epochs 3 --epochs 8 --unfreeze-lr-scale 0.01 --bn frozen
run two-stage-adam-bn-train --init "$INIT" --optimizer adam --lr 0.001 --freeze-epochs 3 --epochs 8 --unfreeze-lr-scale 0.1
run scratch --alpha 1.0 --epochs 8
