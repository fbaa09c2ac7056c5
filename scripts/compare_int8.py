"""Time our integer engine against TFLite (LiteRT with its default XNNPACK delegate, and its
builtin kernels without delegates) on quantized .tflite MobileNets, interleaved in one run;
print a Markdown table. Our f32 engine on the same weights dequantized comes from the same
`mobilenet bench` call.

    python scripts/compare_int8.py --ours target/release/mobilenet --models a.tflite b.tflite
"""
import argparse
import json
import statistics
import subprocess
import time

import numpy as np


def litert(path, threads, mode, warmup, runs):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=path, num_threads=threads,
                     experimental_op_resolver_type=getattr(OpResolverType, mode))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    out = it.get_output_details()[0]
    info = np.iinfo(inp["dtype"])
    x = np.random.default_rng(0).integers(info.min, info.max + 1, size=inp["shape"]).astype(inp["dtype"])

    def run():
        it.set_tensor(inp["index"], x)
        it.invoke()
        it.get_tensor(out["index"])

    for _ in range(warmup):
        run()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", required=True)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    print("| model | threads | ours int8 ms | ours f32 ms | int8 speed-up | TFLite XNNPACK ms | TFLite builtin ms | ours / XNNPACK | ours / builtin |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in a.models:
        for threads in a.threads:
            ours, f32, xnn, builtin = [], [], [], []
            for _ in range(a.repeat):
                r = json.loads(subprocess.run(
                    [a.ours, "bench", "--model", path, "--threads", str(threads), "--json",
                     "--runs", str(a.runs), "--warmup", str(a.warmup)],
                    capture_output=True, text=True, check=True).stdout)
                ours.append(r["median_ms"])
                f32.append(r["f32_median_ms"])
                xnn.append(litert(path, threads, "AUTO", a.warmup, a.runs))
                builtin.append(litert(path, threads, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", a.warmup, a.runs))
            m = [statistics.median(v) for v in (ours, f32, xnn, builtin)]
            name = path.rsplit("/", 1)[-1]
            print(f"| {name} | {threads} | {m[0]:.2f} | {m[1]:.2f} | {m[1] / m[0]:.2f}x | {m[2]:.2f} | {m[3]:.2f} | {m[0] / m[2]:.2f} | {m[0] / m[3]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
