#!/usr/bin/env bash
# Time our engine against ONNX Runtime and TFLite (XNNPACK) — and tract/rten when built — on the
# same MobileNet v1 models, interleaved in one run, and print one Markdown table with ratios.
#
#   scripts/compare.sh                       # 1.0_224, 0.5_160, 0.25_128; batch 1 and 8; 1 and 2 threads
#   scripts/compare.sh --repeat 3            # best-of-3 medians (noisy machines)
#   scripts/compare.sh --models mobilenet_v1_0.25_128 --batches 1 --threads 1
#   PEERS=/path/to/peers scripts/compare.sh  # a prepared copy of ../shared/bench/peers
#
# The peers live in ../shared/bench/peers (read-only in CI): this script copies them to
# $PEERS (default: a cache directory) and runs their setup.sh once (WITH_TORCH=0: no PyTorch).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${PEERS_SRC:-$here/../shared/bench/peers}"
peers="${PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/mobilenet-peers/peers}"
if [ ! -x "$peers/.venv/bin/python" ]; then
  [ -d "$src" ] || { echo "no peer benchmark at $src" >&2; exit 1; }
  mkdir -p "$(dirname "$peers")"
  cp -r "$src" "$(dirname "$peers")/"
  chmod -R u+w "$peers"
  (cd "$peers" && WITH_TORCH=${WITH_TORCH:-0} ./setup.sh)
fi
(cd "$here" && cargo build --release -p mobilenet-cli >&2)
exec "$peers/.venv/bin/python" "$here/scripts/compare.py" --peers "$peers" \
  --ours "$here/target/release/mobilenet" "$@"
