#!/usr/bin/env python3
"""Runs the float .tflite files `crates/mobilenet/tests/export_tflite.rs` exported (with
MOBILENET_WRITE_EXPORTS=DIR) in LiteRT and prints the test's fixture: each file's length,
FNV-1a 64 hash and LiteRT's logits for the test's fixed input ((i * 7919) % 256 / 127.5 - 1).

Usage: python scripts/export_fixture.py DIR > crates/mobilenet/tests/fixtures/export_tflite.json
(the peer environment's python: ai-edge-litert and numpy).
"""
import json
import os
import sys

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def fnv1a(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main():
    d = sys.argv[1]
    models = {}
    for name in ["tf_same_relu6", "symmetric_relu"]:
        path = os.path.join(d, name + ".tflite")
        data = open(path, "rb").read()
        # TFLite's reference kernels: the semantics, not one backend's rounding.
        it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        n = int(np.prod(inp["shape"]))
        x = (((np.arange(n, dtype=np.int64) * 7919) % 256).astype(np.float32) / np.float32(127.5)
             - np.float32(1.0)).reshape(inp["shape"])
        it.set_tensor(inp["index"], x)
        it.invoke()
        out = it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1)
        models[name] = {
            "bytes": len(data),
            "fnv1a64": "%016x" % fnv1a(data),
            "litert_logits": [float(v) for v in out],
        }
    import ai_edge_litert
    print(json.dumps({
        "generator": "scripts/export_fixture.py, ai-edge-litert " + getattr(ai_edge_litert, "__version__", "?") + " reference kernels",
        "input": "(i * 7919) % 256 / 127.5 - 1, NHWC",
        "models": models,
    }, indent=1))


if __name__ == "__main__":
    main()
