#!/usr/bin/env python3
"""Runs Google's float 1.0-224 as `mobilenet export` wrote it — a .tflite in LiteRT (XNNPACK and
the reference kernels), or a .onnx (NCHW or NHWC input) in ONNX Runtime — on the six reference
images and prints the largest |Δlogit| against TensorFlow's logits in
../shared/data/reference/mobilenet_v1_expected.json.

Usage: python scripts/export_parity.py exported.{tflite,onnx} [../shared/data]
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
    images = [np.asarray(Image.open(os.path.join(data, c["input"])).convert("RGB"), dtype=np.float32) / 127.5 - 1.0
              for c in cases]
    if model.endswith(".onnx"):
        import onnxruntime as ort
        s = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        i = s.get_inputs()[0]
        nchw = i.shape[1] == 3
        worst = 0.0
        for c, x in zip(cases, images):
            x = x[None].transpose(0, 3, 1, 2) if nchw else x[None]
            got = s.run(None, {i.name: np.ascontiguousarray(x)})[0].reshape(-1)
            worst = max(worst, float(np.abs(got - np.asarray(c["logits"], dtype=np.float32)).max()))
        print(f"ONNX Runtime {ort.__version__} ({'NCHW' if nchw else 'NHWC'}): max |Δlogit| against TensorFlow "
              f"over {len(cases)} images: {worst:.2e}; metadata keys {sorted(s.get_modelmeta().custom_metadata_map)}")
        return
    for name, resolver in [("xnnpack", OpResolverType.AUTO), ("reference", OpResolverType.BUILTIN_REF)]:
        it = Interpreter(model_path=model, experimental_op_resolver_type=resolver)
        it.allocate_tensors()
        inp, out = it.get_input_details()[0], it.get_output_details()[0]
        worst = 0.0
        for c, x in zip(cases, images):
            it.set_tensor(inp["index"], x[None])
            it.invoke()
            got = it.get_tensor(out["index"]).reshape(-1)
            worst = max(worst, float(np.abs(got - np.asarray(c["logits"], dtype=np.float32)).max()))
        print(f"LiteRT {name}: max |Δlogit| against TensorFlow over {len(cases)} images: {worst:.2e}")


if __name__ == "__main__":
    main()
