#!/usr/bin/env bash
# Our integer engine vs TFLite (XNNPACK and builtin kernels) on quantized .tflite files, with
# our f32 engine alongside; median of --repeat interleaved rounds. Uses the same peer
# environment as compare.sh (PEERS=... or the cache copy it prepares).
#
#   scripts/compare_int8.sh                    # the four uint8 files in ../shared/data
#   scripts/compare_int8.sh --models x.tflite --threads 1
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
peers="${PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/mobilenet-peers/peers}"
[ -x "$peers/.venv/bin/python" ] || { echo "no peer environment at $peers: run scripts/compare.sh once" >&2; exit 1; }
(cd "$here" && cargo build --release -p mobilenet-cli >&2)
q="$here/../shared/data/mobilenet_v1/quant_uint8"
default=(--models "$q/mobilenet_v1_1.0_224_quant_embedding_extractor.tflite" "$q/mobilenet_v1_0.75_192_quant.tflite"
         "$q/mobilenet_v1_0.5_160_quant.tflite" "$q/mobilenet_v1_0.25_128_quant.tflite")
case " $* " in *" --models "*) default=() ;; esac
exec "$peers/.venv/bin/python" "$here/scripts/compare_int8.py" --ours "$here/target/release/mobilenet" "${default[@]}" "$@"
