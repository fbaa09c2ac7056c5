#!/bin/sh
# Runs the aarch64 kernels' tests and the integer engine's LiteRT parity tests on x86-64 under
# qemu-user, cross-built into target/aarch64:
#   - every kernel of crates/kernels (f32 NEON; int8 plain NEON, dot product and i8mm, each
#     against its scalar definition) on qemu's "max" CPU, which has every extension, and on a
#     Cortex-A72 (Raspberry Pi 4), which has none of them: what is detected there must run;
#   - crates/mobilenet/tests/tflite.rs on "max": the integer engine byte for byte equal to
#     LiteRT's outputs on Google's uint8 and the VWW int8 files, on every ISA the CPU has.
# Needs `rustup target add aarch64-unknown-linux-gnu` and
# `apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross`; exits 2 naming
# what is missing.
set -eu
cd "$(dirname "$0")/.."
missing=""
for tool in qemu-aarch64 aarch64-linux-gnu-gcc; do
    command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
done
[ -d "$(rustc --print sysroot)/lib/rustlib/aarch64-unknown-linux-gnu" ] ||
    missing="$missing rust-std-aarch64-unknown-linux-gnu"
if [ -n "$missing" ]; then
    echo "test_aarch64: missing$missing (rustup target add aarch64-unknown-linux-gnu;" \
        "apt-get install qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)" >&2
    exit 2
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
# qemu-user keeps madvise's huge-page advice from the host's pages: the test that checks
# the advice takes effect skips itself under emulation.
export MOBILENET_UNDER_QEMU=1
target="--target aarch64-unknown-linux-gnu --target-dir target/aarch64 --locked"
for cpu in max cortex-a72; do
    echo "== crates/kernels on qemu -cpu $cpu"
    QEMU_CPU=$cpu cargo test $target -p mobilenet-kernels --lib
done
echo "== LiteRT parity on qemu -cpu max"
QEMU_CPU=max cargo test $target -p mobilenet --test tflite
