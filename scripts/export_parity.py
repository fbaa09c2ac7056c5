#!/usr/bin/env python3
"""Runs a float .tflite from `mobilenet export --format tflite` of Google's float 1.0-224 in
LiteRT (XNNPACK and the reference kernels) on the six reference images and prints the largest
|Δlogit| against TensorFlow's logits in ../shared/data/reference/mobilenet_v1_expected.json.

Usage: python scripts/export_parity.py exported.tflite [../shared/data]
"""
import json
import os
import sys

import numpy as np
from PIL import Image
from ai_edge_litert.interpreter import Interpreter, OpResolverType


def main():
    model = sys.argv[1]
    data = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "../../shared/data")
    cases = [c for c in json.load(open(os.path.join(data, "reference/mobilenet_v1_expected.json")))["cases"]
             if c["model"].endswith("1.0_224_imagenet_float.safetensors")]
    for name, resolver in [("xnnpack", OpResolverType.AUTO), ("reference", OpResolverType.BUILTIN_REF)]:
        it = Interpreter(model_path=model, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        worst = 0.0
        for c in cases:
            x = np.asarray(Image.open(os.path.join(data, c["input"])).convert("RGB"), dtype=np.float32)
            it.set_tensor(inp["index"], (x / 127.5 - 1.0)[None])
            it.invoke()
            got = it.get_tensor(out["index"]).reshape(-1)
            worst = max(worst, float(np.abs(got - np.asarray(c["logits"], dtype=np.float32)).max()))
        print(f"LiteRT {name}: max |Δlogit| against TensorFlow over {len(cases)} images: {worst:.2e}")


if __name__ == "__main__":
    main()
