"""Time our integer engine against TFLite (LiteRT with its default XNNPACK delegate, and its
builtin kernels without delegates) on quantized .tflite MobileNets, interleaved in one run;
print a Markdown table. Our f32 engine on the same weights dequantized comes from the same
`mobilenet bench` call. Ours runs twice: with TFLite's requantization (the default, the bytes of
its reference kernels) and with XNNPACK's (`--requant xnnpack`, the bytes of the XNNPACK run).

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
    ap.add_argument("--no-builtin", action="store_true", help="skip TFLite's builtin kernels")
    a = ap.parse_args()
    print("| model | threads | ours int8 ms (TFLite rq) | ours int8 ms (XNNPACK rq) | ours f32 ms | int8 (XNNPACK rq) speed-up over f32 | TFLite XNNPACK ms | TFLite builtin ms | ours / XNNPACK (TFLite rq) | ours / XNNPACK (XNNPACK rq) |")
    print("|---|---|---|---|---|---|---|---|---|---|")

    def ours_ms(path, threads, requant):
        r = json.loads(subprocess.run(
            [a.ours, "bench", "--model", path, "--threads", str(threads), "--json",
             "--runs", str(a.runs), "--warmup", str(a.warmup), "--requant", requant],
            capture_output=True, text=True, check=True).stdout)
        return r["median_ms"], r["f32_median_ms"]

    for path in a.models:
        for threads in a.threads:
            exact, fast, f32, xnn, builtin = [], [], [], [], []
            for _ in range(a.repeat):
                e, f = ours_ms(path, threads, "tflite")
                exact.append(e)
                f32.append(f)
                e, f = ours_ms(path, threads, "xnnpack")
                fast.append(e)
                f32.append(f)
                xnn.append(litert(path, threads, "AUTO", a.warmup, a.runs))
                if not a.no_builtin:
                    builtin.append(litert(path, threads, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", a.warmup, a.runs))
            m = [statistics.median(v) if v else float("nan") for v in (exact, fast, f32, xnn, builtin)]
            name = path.rsplit("/", 1)[-1]
            print(f"| {name} | {threads} | {m[0]:.3f} | {m[1]:.3f} | {m[2]:.3f} | {m[2] / m[1]:.2f}x | {m[3]:.3f} | {m[4]:.3f} | {m[0] / m[3]:.2f} | {m[1] / m[3]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
