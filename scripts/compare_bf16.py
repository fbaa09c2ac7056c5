#!/usr/bin/env python3
"""bf16 inference: our `bench --precision f32|bf16` next to PyTorch f32 and bf16, interleaved.

Run with the peer environment's Python (it has torch and timm):

    ~/.cache/mobilenet-peers/peers/.venv/bin/python scripts/compare_bf16.py \
        --ours target/release/mobilenet --presets 1.0_224 0.5_160 --batches 1 8 --threads 1 2

Every (preset, batch, threads) runs each of the four engines in its own process, in turn,
--repeat times; the table shows each engine's median of its per-round medians (the machine is
shared and noisy: interleaving puts every engine through the same disturbances) and the ratios
of medians. PyTorch runs timm's MobileNet v1 in eval mode, channels_last, under
`inference_mode`: f32, and bf16 as the whole model and input cast to torch.bfloat16 (oneDNN's
AVX512-BF16 kernels; batch norm is not folded in eager PyTorch, as in the peers' sweep).
"""
import argparse
import json
import statistics
import subprocess
import sys
import time


def torch_child(preset, batch, threads, runs, warmup, dtype):
    import torch
    from timm.models.efficientnet import _gen_mobilenet_v1

    torch.set_num_threads(threads)
    alpha, res = preset.split("_")
    alpha, res = float(alpha), int(res)
    m = _gen_mobilenet_v1(f"mobilenetv1_{int(alpha * 100):03d}", alpha, pretrained=False)
    m = m.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, res, res).contiguous(memory_format=torch.channels_last)
    if dtype == "bf16":
        m, x = m.to(torch.bfloat16), x.to(torch.bfloat16)
    ts = []
    with torch.inference_mode():
        for _ in range(warmup):
            m(x)
        for _ in range(runs):
            t = time.perf_counter()
            m(x)
            ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    print(json.dumps({"median_ms": ts[len(ts) // 2], "min_ms": ts[0],
                      "isa": f"torch {torch.__version__}"}))


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"{' '.join(cmd)} failed: {out.stderr.strip()[-400:]}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ours", default="target/release/mobilenet")
    p.add_argument("--presets", nargs="+", default=["1.0_224"])
    p.add_argument("--batches", nargs="+", type=int, default=[1])
    p.add_argument("--threads", nargs="+", type=int, default=[1])
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        preset, batch, threads, dtype = a.child
        return torch_child(preset, int(batch), int(threads), a.runs, a.warmup, dtype)
    engines = {
        "ours f32": lambda pr, b, t: [a.ours, "bench", "--preset", pr, "--batch", str(b), "--threads", str(t),
                                      "--runs", str(a.runs), "--warmup", str(a.warmup), "--json"],
        "ours bf16": lambda pr, b, t: [a.ours, "bench", "--preset", pr, "--batch", str(b), "--threads", str(t),
                                       "--runs", str(a.runs), "--warmup", str(a.warmup), "--json",
                                       "--precision", "bf16"],
        "torch f32": lambda pr, b, t: [sys.executable, __file__, "--runs", str(a.runs), "--warmup",
                                       str(a.warmup), "--child", pr, str(b), str(t), "f32"],
        "torch bf16": lambda pr, b, t: [sys.executable, __file__, "--runs", str(a.runs), "--warmup",
                                        str(a.warmup), "--child", pr, str(b), str(t), "bf16"],
    }
    print("| preset | batch | threads | " + " | ".join(f"{e} ms" for e in engines)
          + " | bf16 over our f32 | our bf16 over torch bf16 |")
    print("|---|---|---|" + "---|" * (len(engines) + 2))
    for pr in a.presets:
        for b in a.batches:
            for t in a.threads:
                med = {e: [] for e in engines}
                for _ in range(a.repeat):
                    for e, cmd in engines.items():
                        med[e].append(run(cmd(pr, b, t))["median_ms"])
                m = {e: statistics.median(v) for e, v in med.items()}
                cells = " | ".join(f"{m[e]:.3f}" for e in engines)
                print(f"| {pr} | {b} | {t} | {cells} | {m['ours f32'] / m['ours bf16']:.2f}× "
                      f"| {m['torch bf16'] / m['ours bf16']:.2f}× faster |", flush=True)


if __name__ == "__main__":
    main()
