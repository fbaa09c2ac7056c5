#!/usr/bin/env bash
# `mobilenet serve` under load, next to the engine's own batch throughput, in one run:
#   scripts/serve_load.sh MODEL IMAGE [REQUESTS] [THREADS]
# Starts the server on a free loopback port, runs the load client at concurrency 1, 8 and 64,
# reads the server's peak RSS, then `mobilenet bench --batch 32` on the same model.
set -euo pipefail
cd "$(dirname "$0")/.."
model=$1; image=$2; requests=${3:-400}; threads=${4:-0}
cargo build --release -q -p mobilenet-cli --bin mobilenet --example loadtest
bin=target/release/mobilenet
log=$(mktemp)
$bin serve --model "$model" --bind 127.0.0.1:0 --threads "$threads" > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.2; done
addr=$(sed -n 's|^listening on http://\([^ ]*\).*|\1|p' "$log")
echo "server $addr (pid $pid), model $model, image $image, $requests requests per level"
target/release/examples/loadtest "$addr" "$image" "$requests" 1,8,64
echo "{\"server_peak_rss_mb\": $(awk '/VmHWM/ {print $2/1024}' /proc/$pid/status)}"
kill -TERM $pid; wait $pid || true
$bin bench --model "$model" --batch 32 --threads "$threads" --runs 10 --json
