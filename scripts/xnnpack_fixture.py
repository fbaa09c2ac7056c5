#!/usr/bin/env python3
"""The outputs of TFLite with its default XNNPACK delegate on the quantized reference cases of
`../shared/data/reference/mobilenet_v1_expected.json`: Google's four uint8 files and the int8
Visual Wake Words model on the reference PNGs. `crates/mobilenet/tests/tflite.rs` checks that
the integer engine with XNNPACK's requantization (`--requant xnnpack`) gives these bytes.

Usage: python scripts/xnnpack_fixture.py ../shared/data > crates/mobilenet/tests/fixtures/xnnpack_outputs.json
(the peer environment's python: ai-edge-litert, numpy, Pillow).
"""
import json
import sys

import ai_edge_litert
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from PIL import Image

data = sys.argv[1]
expected = json.load(open(f"{data}/reference/mobilenet_v1_expected.json"))
interpreters = {}
cases = []
for case in expected["cases"]:
    if "output_uint8" in case:
        model = case["model"]
    elif "int8_output" in case:
        model = "mobilenet_v1/vww/vww_96_int8.tflite"
    else:
        continue
    if model not in interpreters:
        it = Interpreter(model_path=f"{data}/{model}", num_threads=1,
                         experimental_op_resolver_type=OpResolverType.AUTO)
        it.allocate_tensors()
        interpreters[model] = it
    it = interpreters[model]
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    # The PNG's pixels as RGB bytes (a gray PNG repeated over the channels), minus 128 for
    # an int8 input.
    x = np.asarray(Image.open(f"{data}/{case['input']}").convert("RGB")).astype(np.int16)
    if inp["dtype"] == np.int8:
        x = x - 128
    it.set_tensor(inp["index"], x[None].astype(inp["dtype"]))
    it.invoke()
    y = it.get_tensor(out["index"]).ravel()
    cases.append({"model": model, "input": case["input"],
                  "output": [int(v) for v in y]})
json.dump({"runtime": f"ai-edge-litert {ai_edge_litert.__version__}, XNNPACK delegate (OpResolverType.AUTO), 1 thread",
           "cases": cases}, sys.stdout, separators=(",", ":"))
print()
