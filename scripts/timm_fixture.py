#!/usr/bin/env python3
"""Builds a timm MobileNet v1 (α 0.25, 10 classes) with seeded weights, runs it in PyTorch and
prints the fixture `crates/mobilenet/tests/timm_import.rs` checks our importer against: every
tensor of the state dict (name, shape, dtype, and the offset and scale of its fill), the input and
PyTorch's logits.

The fill needs no random generator, so the Rust test rebuilds the same bytes: tensor number t
(state-dict order, from 0), element i (row-major, from 0) holds
    offset + scale * ((((i + 1) * 7919 + (t + 1) * 104729) % 2001) / 1000 - 1)
computed in float64 and rounded once to float32. Integer tensors (BatchNorm's
num_batches_tracked) hold 0.

The input is (i * 7919) % 256 / 127.5 - 1 in NHWC order (1×96×96×3), transposed to NCHW for
PyTorch.

Usage (the peer environment's python: torch, timm, safetensors, numpy):
    python scripts/timm_fixture.py > crates/mobilenet/tests/fixtures/timm_mobilenetv1.json
    python scripts/timm_fixture.py --save FILE.safetensors   # the state dict as timm saves it
"""
import json
import math
import sys

import numpy as np
import timm
import torch
from timm.models.efficientnet import _gen_mobilenet_v1

ALPHA, CLASSES, RES = 0.25, 10, 96


def fill(t, shape, offset, scale):
    n = int(np.prod(shape, dtype=np.int64))
    i = np.arange(n, dtype=np.int64)
    u = (((i + 1) * 7919 + (t + 1) * 104729) % 2001).astype(np.float64) / 1000.0 - 1.0
    return (offset + scale * u).astype(np.float32).reshape(shape)


def offset_scale(name, shape):
    if name.endswith("running_var"):
        return 1.0, 0.5
    if name.endswith("running_mean"):
        return 0.0, 0.1
    if len(shape) == 1 and name.endswith(".weight"):  # batch-norm gamma
        return 1.0, 0.25
    if name.endswith(".bias"):
        return 0.0, 0.1
    fan_in = int(np.prod(shape[1:]))
    return 0.0, math.sqrt(6.0 / fan_in)  # He-uniform: activations keep their scale


def main():
    torch.manual_seed(0)
    model = _gen_mobilenet_v1("mobilenetv1_025", ALPHA, num_classes=CLASSES).eval()
    state = model.state_dict()
    tensors, filled = [], {}
    for t, (name, value) in enumerate(state.items()):
        shape = list(value.shape)
        if value.dtype.is_floating_point:
            offset, scale = offset_scale(name, shape)
            filled[name] = torch.from_numpy(fill(t, shape, offset, scale))
        else:
            offset, scale = 0.0, 0.0
            filled[name] = torch.zeros(shape, dtype=value.dtype)
        tensors.append({"name": name, "shape": shape, "dtype": str(value.dtype).replace("torch.", ""),
                        "offset": offset, "scale": scale})
    model.load_state_dict(filled)
    if len(sys.argv) > 2 and sys.argv[1] == "--save":
        from safetensors.torch import save_file
        save_file(model.state_dict(), sys.argv[2])
        return
    n = RES * RES * 3
    x = (((np.arange(n, dtype=np.int64) * 7919) % 256).astype(np.float32) / np.float32(127.5)
         - np.float32(1.0)).reshape(1, RES, RES, 3).transpose(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(torch.from_numpy(np.ascontiguousarray(x))).reshape(-1)
    print(json.dumps({
        "generator": "scripts/timm_fixture.py, torch %s, timm %s" % (torch.__version__, timm.__version__),
        "model": "timm _gen_mobilenet_v1('mobilenetv1_025', %s, num_classes=%d), eval mode" % (ALPHA, CLASSES),
        "resolution": RES,
        "input": "(i * 7919) % 256 / 127.5 - 1, NHWC, transposed to NCHW",
        "fill": "offset + scale * ((((i + 1) * 7919 + (t + 1) * 104729) % 2001) / 1000 - 1), f64 then f32",
        "tensors": tensors,
        "logits": [float(v) for v in logits],
    }, indent=1))


if __name__ == "__main__":
    main()
