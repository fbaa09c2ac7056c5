#!/usr/bin/env python3
"""Runs the files `crates/mobilenet/tests/export.rs` exported (with
MOBILENET_WRITE_EXPORTS=DIR) in LiteRT or ONNX Runtime and prints a test's fixture: each file's
length, FNV-1a 64 hash and the runtime's logits for the test's fixed input
((i * 7919) % 256 / 127.5 - 1, NHWC; transposed for the NCHW files).

Usage: python scripts/export_fixture.py DIR > crates/mobilenet/tests/fixtures/export_tflite.json
       python scripts/export_fixture.py DIR onnx > crates/mobilenet/tests/fixtures/export_onnx.json
       python scripts/export_fixture.py DIR qdq > crates/mobilenet/tests/fixtures/export_qdq.json

The int8 (QDQ) files take integer pixels q = (i * 7919) % 256 (minus 128 for int8 models),
given as the float input scale·(q − zero point) with the graph's own input quantization.
(the peer environment's python: ai-edge-litert, onnxruntime and numpy).
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


def fixed_input(shape_nhwc):
    n = int(np.prod(shape_nhwc))
    return (((np.arange(n, dtype=np.int64) * 7919) % 256).astype(np.float32) / np.float32(127.5)
            - np.float32(1.0)).reshape(shape_nhwc)


def tflite_logits(path):
    # TFLite's reference kernels: the semantics, not one backend's rounding.
    it = Interpreter(model_path=path, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    it.set_tensor(inp["index"], fixed_input(inp["shape"]))
    it.invoke()
    return it.get_tensor(it.get_output_details()[0]["index"]).reshape(-1)


def onnx_logits(path):
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    i = s.get_inputs()[0]
    shape = i.shape
    if path.endswith("_nchw.onnx"):
        x = fixed_input([shape[0], shape[2], shape[3], shape[1]]).transpose(0, 3, 1, 2)
    else:
        x = fixed_input(shape)
    return s.run(None, {i.name: np.ascontiguousarray(x)})[0].reshape(-1)


def qdq_logits(path):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    inits = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    s, z = inits["input/scale"], inits["input/zero_point"]
    so = ort.SessionOptions()
    so.log_severity_level = 2
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    i = sess.get_inputs()[0]
    nchw = i.shape[1] == 3
    nhwc = [i.shape[0], i.shape[2], i.shape[3], i.shape[1]] if nchw else list(i.shape)
    n = int(np.prod(nhwc))
    q = ((np.arange(n, dtype=np.int64) * 7919) % 256).astype(np.int32)
    if z.dtype == np.int8:
        q = q - 128
    x = (np.float32(s) * (q.astype(np.float32) - np.float32(z))).reshape(nhwc)
    if nchw:
        x = x.transpose(0, 3, 1, 2)
    return sess.run(None, {i.name: np.ascontiguousarray(x)})[0].reshape(-1)


def main():
    d = sys.argv[1]
    if len(sys.argv) > 2 and sys.argv[2] == "qdq":
        import onnxruntime
        models = {}
        for name in ["mobilenet_v1_0.25_128_quant_nchw", "vww_96_int8_nhwc"]:
            path = os.path.join(d, name + ".onnx")
            data = open(path, "rb").read()
            models[name] = {"bytes": len(data), "fnv1a64": "%016x" % fnv1a(data),
                            "ort_logits": [float(v) for v in qdq_logits(path)]}
        print(json.dumps({
            "generator": "scripts/export_fixture.py, onnxruntime " + onnxruntime.__version__,
            "input": "q = (i * 7919) % 256 (int8: - 128), as scale * (q - zero point), NHWC order",
            "models": models,
        }, indent=1))
        return
    onnx = len(sys.argv) > 2 and sys.argv[2] == "onnx"
    models = {}
    names = ["tf_same_relu6", "symmetric_relu"]
    if onnx:
        names = [n + "_" + l for n in names for l in ["nchw", "nhwc"]]
    for name in names:
        path = os.path.join(d, name + (".onnx" if onnx else ".tflite"))
        data = open(path, "rb").read()
        out = onnx_logits(path) if onnx else tflite_logits(path)
        models[name] = {
            "bytes": len(data),
            "fnv1a64": "%016x" % fnv1a(data),
            ("ort_logits" if onnx else "litert_logits"): [float(v) for v in out],
        }
    if onnx:
        import onnxruntime
        generator = "onnxruntime " + onnxruntime.__version__
    else:
        import ai_edge_litert
        generator = "ai-edge-litert " + getattr(ai_edge_litert, "__version__", "?") + " reference kernels"
    print(json.dumps({
        "generator": "scripts/export_fixture.py, " + generator,
        "input": "(i * 7919) % 256 / 127.5 - 1, NHWC",
        "models": models,
    }, indent=1))


if __name__ == "__main__":
    main()
