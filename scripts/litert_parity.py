"""Our integer engine against TFLite on a quantized .tflite file: the same images (smooth
gradients with noise, and pure noise) through both, output bytes compared (all outputs, in
order: an int8 detector's predictors too).

    cargo build --release -p mobilenet --example qrun
    python scripts/litert_parity.py model.tflite [images] [OpResolverType]

OpResolverType: BUILTIN_REF (TFLite's reference kernels, the default: the definition our engine
follows bit for bit), BUILTIN_WITHOUT_DEFAULT_DELEGATES (its optimized kernels), AUTO (XNNPACK).
Needs ai_edge_litert (the peer benchmark's environment has it).
"""
import os
import sys, subprocess, numpy as np
from ai_edge_litert.interpreter import Interpreter
path = sys.argv[1]; n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
from ai_edge_litert.interpreter import OpResolverType
mode = sys.argv[3] if len(sys.argv) > 3 else 'BUILTIN_REF'
it = Interpreter(model_path=path, experimental_op_resolver_type=getattr(OpResolverType, mode)); it.allocate_tensors()
i = it.get_input_details()[0]; o = it.get_output_details()[0]
rng = np.random.default_rng(3)
shape = i['shape']
# smooth-ish images plus noise, and pure noise
px = []
for k in range(n):
    yy, xx = np.mgrid[0:shape[1], 0:shape[2]]
    base = (yy[..., None] * rng.integers(1, 9) + xx[..., None] * rng.integers(1, 9) + np.arange(3) * 70 + rng.integers(0, 255)) % 256
    img = (base + rng.integers(-20, 21, size=base.shape)).clip(0, 255).astype(np.uint8) if k % 2 == 0 else rng.integers(0, 256, size=shape[1:], dtype=np.uint8)
    px.append(img)
px = np.stack(px)
import tempfile
raw = os.path.join(tempfile.mkdtemp(), 'images.raw')
open(raw, 'wb').write(px.tobytes())
ours = subprocess.run([os.path.join(os.path.dirname(__file__), '..', 'target', 'release', 'examples', 'qrun'), path, raw], capture_output=True, text=True, check=True).stdout.strip().split('\n')
same = 0
for k in range(n):
    x = px[k:k+1].astype(np.int16)
    if i['dtype'] == np.int8: x = x - 128
    it.set_tensor(i['index'], x.astype(i['dtype'])); it.invoke()
    # Every output in order (an int8 detector has one per predictor).
    y = np.concatenate([it.get_tensor(d['index']).astype(np.int32).ravel() for d in it.get_output_details()])
    mine = np.array([int(v) for v in ours[k].split()])
    same += np.array_equal(y, mine)
    if not np.array_equal(y, mine): print('image', k, 'differs: max', np.abs(y - mine).max(), 'count', (y != mine).sum())
print(mode, path.split('/')[-1], f'{same}/{n} images byte-identical to LiteRT', y.dtype, y.shape)
