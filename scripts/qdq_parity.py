#!/usr/bin/env python3
"""An int8 ONNX export (QDQ) in ONNX Runtime against its quantized .tflite in LiteRT.

    mobilenet export --model q.tflite --format onnx -o q.onnx
    python scripts/qdq_parity.py q.tflite q.onnx [IMAGE...]

Each image is resized (bilinear, no crop) to the model's input; the .tflite gets the pixels as
its integer input, the ONNX file the same values dequantized (scale·(q − zero point)), which
its first QuantizeLinear turns back into those integers. Compared: the logits (the tensor
before the softmax, from LiteRT's reference kernels with every tensor kept, dequantized) in
units of their quantization step, and the top-1 class; then every layer alone (the ONNX graph
cut to that layer, fed the .tflite's own input tensor of it), which separates what the export
writes from how rounding differences grow through the network. Also prints what ORT made of
the graph (QLinearConv count) and its warnings, if any. Needs the peer environment (onnxruntime,
ai-edge-litert, onnx, PIL).
"""
import collections
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from PIL import Image


def main():
    tfl, onnx_path = sys.argv[1], sys.argv[2]
    images = sys.argv[3:] or ["../shared/data/images/" + n for n in
                              ["cat.png", "chelsea.png", "coffee.png", "grace_hopper.png", "parrot.jpg", "face.jpg"]]
    it = Interpreter(model_path=tfl, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                     experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    (s_in, z_in), dtype = inp["quantization"], inp["dtype"]
    # The logits: the input of the softmax if there is one, else the output.
    details = {d["index"]: d for d in it.get_tensor_details()}
    ops = it._get_ops_details()
    soft = [o for o in ops if o["op_name"] == "SOFTMAX"]
    logits_index = soft[0]["inputs"][0] if soft else it.get_output_details()[0]["index"]
    # A RESHAPE before the softmax keeps the quantization; either tensor will do.
    (s_out, z_out) = details[logits_index]["quantization"]

    so = ort.SessionOptions()
    so.log_severity_level = 2  # warnings and errors
    optimized = tempfile.mktemp(suffix=".onnx")
    so.optimized_model_filepath = optimized
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    kinds = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
    print("ORT ran it as:", dict(kinds))
    x_info = sess.get_inputs()[0]
    nchw = x_info.shape[1] == 3
    h, w = inp["shape"][1], inp["shape"][2]

    worst, agree, steps = 0, 0, []
    for path in images:
        px = np.asarray(Image.open(path).convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.int32)
        q = px - 128 if dtype == np.int8 else px
        it.set_tensor(inp["index"], q[None].astype(dtype))
        it.invoke()
        ref = (it.get_tensor(logits_index).astype(np.float32).reshape(-1) - z_out) * s_out
        x = (s_in * (q.astype(np.float32) - z_in))[None]
        if nchw:
            x = x.transpose(0, 3, 1, 2)
        got = sess.run(None, {x_info.name: np.ascontiguousarray(x, dtype=np.float32)})[0].reshape(-1)
        d = np.abs(got - ref) / s_out
        steps.append(d)
        worst = max(worst, float(d.max()))
        agree += int(np.argmax(got) == np.argmax(ref))
        print("%-40s max %.0f steps, %d of %d logits differ, top-1 %s / %s" % (
            path.split("/")[-1], d.max(), int((d > 0.5).sum()), d.size, np.argmax(got), np.argmax(ref)))
    allsteps = np.concatenate(steps)
    print("all: max %.0f steps (step %.4g), mean %.3f steps, top-1 agrees on %d of %d" % (
        worst, s_out, allsteps.mean(), agree, len(images)))
    layer_by_layer(it, onnx_path)


def layer_by_layer(it, onnx_path):
    """Each layer of the ONNX graph alone on the .tflite's input of it (the last image's)."""
    import onnx.utils
    graph = onnx.load(onnx_path).graph
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    tops = [o for o in it._get_ops_details()
            if o["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(layers) == len(tops), (len(layers), len(tops))
    details = {d["index"]: d for d in it.get_tensor_details()}
    worst, differ, total = 0, 0, 0
    for node, op in zip(layers, tops):
        cut = tempfile.mktemp(suffix=".onnx")
        onnx.utils.extract_model(onnx_path, cut, [node.input[0]], [node.name + "/quantized"])
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(cut, so, providers=["CPUExecutionProvider"])
        (s, z) = details[op["inputs"][0]]["quantization"]
        x = s * (it.get_tensor(op["inputs"][0]).astype(np.float32) - z)
        x = x.transpose(0, 3, 1, 2) if x.ndim == 4 else x.reshape(1, -1)
        got = sess.run(None, {node.input[0]: np.ascontiguousarray(x)})[0].astype(np.int32)
        got = got.transpose(0, 2, 3, 1) if got.ndim == 4 else got
        want = it.get_tensor(op["outputs"][0]).astype(np.int32)
        d = np.abs(got.reshape(want.shape) - want)
        worst, differ, total = max(worst, int(d.max())), differ + int((d > 0).sum()), total + d.size
    print("every layer alone: max %d step, %.2f%% of %d outputs differ (rounding: ONNX Runtime's "
          "float requantization vs TFLite's fixed point)" % (worst, 100.0 * differ / total, total))


if __name__ == "__main__":
    main()
