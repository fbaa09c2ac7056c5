#!/bin/sh
# Builds the browser package of crates/wasm into OUT (default target/wasm-pkg):
#   OUT/{relaxed,simd,scalar}/mobilenet.js + mobilenet_bg.wasm   three builds of the engine
#   OUT/mobilenet.js, index.html, …                                the loader and the demo page
# WebAssembly cannot test for SIMD at run time, so the kernels are compiled three times
# (relaxed SIMD with fused multiply-add, SIMD128, scalar) and the loader picks the best one
# the browser validates. Needs `rustup target add wasm32-unknown-unknown` and
# `cargo install wasm-bindgen-cli --version <the wasm-bindgen in Cargo.lock>`.
set -eu
cd "$(dirname "$0")/.."
out=${1:-target/wasm-pkg}
want=$(sed -n '/^name = "wasm-bindgen"$/{n;s/^version = "\(.*\)"$/\1/p;}' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{print $2}') || true
if [ "$have" != "$want" ]; then
    echo "build_wasm: needs wasm-bindgen-cli $want (found '${have:-none}'):" >&2
    echo "    cargo install wasm-bindgen-cli --version $want" >&2
    exit 2
fi
mkdir -p "$out"
for variant in relaxed simd scalar; do
    case $variant in
        relaxed) features="+simd128,+relaxed-simd" ;;
        simd) features="+simd128" ;;
        scalar) features="-simd128" ;;
    esac
    RUSTFLAGS="-C target-feature=$features" cargo build --quiet --locked --release \
        -p mobilenet-wasm --lib --target wasm32-unknown-unknown --target-dir "target/wasm-$variant"
    wasm-bindgen --target web --no-typescript --out-dir "$out/$variant" --out-name mobilenet \
        "target/wasm-$variant/wasm32-unknown-unknown/release/mobilenet_wasm.wasm"
done
cp crates/wasm/www/* "$out/"
for variant in relaxed simd scalar; do
    printf '%s: %s bytes, %s gzipped\n' "$variant" \
        "$(wc -c < "$out/$variant/mobilenet_bg.wasm")" "$(gzip -9c "$out/$variant/mobilenet_bg.wasm" | wc -c)"
done
