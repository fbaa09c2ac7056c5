#!/usr/bin/env bash
# Fine-tuning Google's ImageNet MobileNet (1.0-224 float) on a small labelled set: 100 CIFAR-10
# training JPEGs per class (the first 100 of each class folder), tested on the 10,000 test JPEGs.
# Linear probe, two-stage fine-tuning (RMSprop, or Adam as in Keras's guide; batch norm training
# or frozen) and training from scratch side by side, with wall times. All at 128×128 (the images
# are 32×32). Each model is tested as the run kept it (the epoch best on the 10% held out) and as
# it ended. scripts/fine_tune_cifar_keras.py runs the Adam recipes in Keras on the same images.
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
  local top1=() which
  for which in best last; do
    top1+=("$("$BIN" eval --model "$WORK/$name/model-$which.safetensors" --data "$DATA/cifar10_jpeg/test" --json \
      | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.2f%%" % (100*r["top1"]))')")
  done
  local epoch=$(python3 -c 'import json,sys
h=[json.loads(l) for l in open(sys.argv[1])]
b=max(range(len(h)), key=lambda i: (h[i]["val_accuracy"], -h[i]["val_loss"], -i))
print(h[b]["epoch"])' "$WORK/$name/metrics.jsonl")
  printf '| %s | %s (epoch %s) | %s | %.0f s |\n' "$name" "${top1[0]}" "$epoch" "${top1[1]}" "$train_s"
}
echo "| run | test top-1, best held-out epoch | test top-1, last epoch | training wall time |"
echo "|---|---|---|---|"
run linear-probe --init "$INIT" --freeze backbone --epochs 10 --lr 0.01
run linear-probe-adam --init "$INIT" --freeze backbone --epochs 10 --optimizer adam --lr 0.001
run two-stage --init "$INIT" --freeze-epochs 3 --epochs 8 --lr 0.01
run two-stage-bn-frozen --init "$INIT" --freeze-epochs 3 --epochs 8 --lr 0.01 --bn frozen
run two-stage-adam --init "$INIT" --optimizer adam --lr 0.001 --freeze-epochs 3 --epochs 8 --unfreeze-lr-scale 0.01 --bn frozen
run scratch --alpha 1.0 --epochs 8
