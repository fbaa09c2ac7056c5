#!/usr/bin/env python3
"""Instructions per multiply-accumulate of the aarch64 int8 GEMM inner loops.

Speed cannot be measured on x86-64 (qemu-user's timing says nothing about a real core), so
this counts what the compiler emitted: it disassembles the release build of crates/kernels
for aarch64 (`aarch64-linux-gnu-objdump`), finds each GEMM tile function's innermost loop
(the backward branch around the most multiply instructions, the tightest of those) and divides its length by
the multiply-adds one trip does.

    scripts/aarch64_loops.py [BINARY]

BINARY defaults to the newest release test binary of crates/kernels in target/aarch64
(build it with `cargo test --release --no-run -p mobilenet-kernels --lib --target
aarch64-unknown-linux-gnu --target-dir target/aarch64`, with the linker set as in
scripts/test_aarch64.sh).
"""

import glob
import os
import re
import subprocess
import sys

# The instruction that multiplies, multiply-adds per instruction, and the tile it is for.
KERNELS = [
    ("sdot", 16, "sdot (dot product), 4 rows x 16 columns"),
    ("usmmla", 32, "usmmla (i8mm), 4 rows x 16 columns"),
    ("smull", 8, "smull/smull2 + sadalp (plain NEON), 2 rows x 16 columns"),
]


def functions(binary):
    out = subprocess.run(
        ["aarch64-linux-gnu-objdump", "-d", "--no-show-raw-insn", binary],
        capture_output=True, text=True, check=True,
    ).stdout
    for chunk in re.split(r"\n(?=[0-9a-f]+ <)", out):
        head, _, body = chunk.partition("\n")
        ins = []
        for line in body.split("\n"):
            m = re.match(r"\s+([0-9a-f]+):\s+(.*)", line)
            if m:
                ins.append((int(m.group(1), 16), m.group(2).strip()))
        if ins:
            yield head, ins


def inner_loops(ins):
    """(start, end) of every backward branch inside the function."""
    first = ins[0][0]
    for addr, text in ins:
        m = re.match(r"(b\.\w+|b|cbnz|cbz|tbnz|tbz)\s+.*?([0-9a-f]+) <", text)
        if m and first <= int(m.group(2), 16) < addr:
            yield int(m.group(2), 16), addr


def main():
    if len(sys.argv) > 1:
        binary = sys.argv[1]
    else:
        found = [
            p for p in glob.glob(
                "target/aarch64/aarch64-unknown-linux-gnu/release/deps/mobilenet_kernels-*")
            if not p.endswith(".d")
        ]
        if not found:
            sys.exit("no release build of crates/kernels for aarch64 in target/aarch64")
        binary = max(found, key=os.path.getmtime)
    print(f"{'kernel':58} {'loop':>5} {'mults':>5} {'MACs':>5} {'instr/MAC':>9}")
    for mult, per, what in KERNELS:
        best = None
        for head, ins in functions(binary):
            # The tile functions, or gemm where the compiler inlined one.
            if "4gemm4neon" not in head:
                continue
            for lo, hi in inner_loops(ins):
                body = [t for a, t in ins if lo <= a <= hi]
                if any(t.startswith("bl") for t in body):
                    continue
                n = sum(1 for t in body if t.split()[0] == mult)
                if n == 0:
                    continue
                # smull comes with smull2: both multiply 8 bytes.
                if mult == "smull":
                    n += sum(1 for t in body if t.split()[0] == "smull2")
                macs = n * per
                ratio = len(body) / macs
                # The widest tile's innermost loop: the most multiplies, then the tightest.
                key = (macs, -ratio)
                if best is None or key > best[0]:
                    best = (key, len(body), n, macs, ratio)
        if best is None:
            print(f"{what:58} not found")
        else:
            _, length, n, macs, ratio = best
            print(f"{what:58} {length:5} {n:5} {macs:5} {ratio:9.3f}")


if __name__ == "__main__":
    main()
