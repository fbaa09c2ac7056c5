"""TFLite's own post-training int8 quantization of Google's float MobileNet v1 1.0-224 (a Keras
graph given the TF-slim weights), calibrated on 64 images of a folder spread as `mobilenet
quantize --images 64` spreads them, and the top-1 agreement of float and int8 on every image of
the folder: the reference for `mobilenet quantize` (BENCHMARKS.md, post-training quantization).

    python scripts/ptq_vs_tflite.py FLOAT.safetensors IMAGE_FOLDER

Needs tensorflow, safetensors and pillow (the peers' environment of ../shared/bench/peers).
Writes /tmp/tflite_ptq_int8.tflite.
"""
import os, sys, glob
import numpy as np
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
from safetensors.numpy import load_file
from PIL import Image

w = load_file(sys.argv[1])
images = sorted(glob.glob(sys.argv[2] + "/*.jpg"))
model = tf.keras.applications.MobileNet(input_shape=(224, 224, 3), alpha=1.0, weights=None, classes=1001, classifier_activation=None)
bn = lambda p: [w[p + "/BatchNorm/gamma"], w[p + "/BatchNorm/beta"], w[p + "/BatchNorm/moving_mean"], w[p + "/BatchNorm/moving_variance"]]
model.get_layer("conv1").set_weights([w["MobilenetV1/Conv2d_0/weights"]])
model.get_layer("conv1_bn").set_weights(bn("MobilenetV1/Conv2d_0"))
for i in range(1, 14):
    d, p = f"MobilenetV1/Conv2d_{i}_depthwise", f"MobilenetV1/Conv2d_{i}_pointwise"
    model.get_layer(f"conv_dw_{i}").set_weights([w[d + "/depthwise_weights"]])
    model.get_layer(f"conv_dw_{i}_bn").set_weights(bn(d))
    model.get_layer(f"conv_pw_{i}").set_weights([w[p + "/weights"]])
    model.get_layer(f"conv_pw_{i}_bn").set_weights(bn(p))
model.get_layer("conv_preds").set_weights([w["MobilenetV1/Logits/Conv2d_1c_1x1/weights"], w["MobilenetV1/Logits/Conv2d_1c_1x1/biases"]])

def prep(path):
    im = Image.open(path).convert("RGB")
    W, H = im.size
    cw, ch = W * 0.875, H * 0.875
    im = im.crop(((W - cw) / 2, (H - ch) / 2, (W + cw) / 2, (H + ch) / 2)).resize((224, 224), Image.BILINEAR)
    return (np.asarray(im, np.float32) / 127.5 - 1.0)[None]

x = [prep(p) for p in images]
calib = [x[i] for i in np.linspace(0, len(x) - 1, 64).round().astype(int)]
conv = tf.lite.TFLiteConverter.from_keras_model(model)
conv.optimizations = [tf.lite.Optimize.DEFAULT]
conv.representative_dataset = lambda: ([c] for c in calib)
conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
q = conv.convert()
open("/tmp/tflite_ptq_int8.tflite", "wb").write(q)
it = tf.lite.Interpreter(model_content=q)
it.allocate_tensors()
inp, out = it.get_input_details()[0], it.get_output_details()[0]
agree = conf = conf_agree = 0
for xi in x:
    f = model(xi, training=False).numpy()[0]
    it.set_tensor(inp["index"], xi)
    it.invoke()
    o = it.get_tensor(out["index"])[0]
    a = int(np.argmax(f) == np.argmax(o))
    agree += a
    p = np.exp(f - f.max()); p /= p.sum()
    if p.max() > 0.5:
        conf += 1; conf_agree += a
print(f"TFLite PTQ int8 top-1 = float on {agree} of {len(x)}; on {conf_agree} of {conf} with float p > 0.5")
