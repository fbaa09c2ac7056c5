// MobileNet in the browser: loads the fastest build of the engine this browser validates and
// wraps the model API in promises. Every failure (a malformed model or image, a bad argument)
// rejects with an Error whose message says what was wrong; nothing here throws synchronously.
//
//   import { load } from './mobilenet.js';
//   const model = await load('mobilenet_v1_1.0_224.safetensors', { labels: '...text...' });
//   const top = await model.classify(imageElementOrImageData, { topK: 5 });
//   // [{ index: 653, label: 'military uniform', probability: 0.80 }, ...]
//   const faces = await (await loadDetector('face.safetensors')).detect(image);
//   // [{ class: 1, label: 'face', score: 0.99, box: [x, y, width, height] }, ...]

// Three builds of the same crate (scripts/build_wasm.sh): WebAssembly cannot test for an
// instruction set at run time, so the choice is made here, by validating a tiny module that
// uses one instruction of each.
const WASM_HEADER = [0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1, 5, 1, 0x60, 0, 1, 0x7b, 3, 2, 1, 0];
const F32X4_SPLAT_ZERO = [0x43, 0, 0, 0, 0, 0xfd, 0x13];
// () -> v128 { f32x4.splat(0.0) }
const SIMD_PROBE = Uint8Array.of(...WASM_HEADER, 10, 11, 1, 9, 0, ...F32X4_SPLAT_ZERO, 0x0b);
// () -> v128 { f32x4.relaxed_madd(splat 0, splat 0, splat 0) }
const RELAXED_PROBE = Uint8Array.of(...WASM_HEADER, 10, 28, 1, 26, 0,
  ...F32X4_SPLAT_ZERO, ...F32X4_SPLAT_ZERO, ...F32X4_SPLAT_ZERO, 0xfd, 0x85, 0x02, 0x0b);

/** The builds this browser runs, best first: `relaxed` (SIMD128 with fused multiply-add),
 * `simd` (SIMD128), `scalar`. */
export function supportedVariants() {
  const v = [];
  if (WebAssembly.validate(RELAXED_PROBE)) v.push('relaxed');
  if (WebAssembly.validate(SIMD_PROBE)) v.push('simd');
  v.push('scalar');
  return v;
}

const here = new URL('.', import.meta.url);
const instances = new Map(); // variant -> Promise of { glue, alive }
let generation = 0;

// The module instance of a build. A trap (a bug: a Rust panic) leaves an instance unusable,
// so a trapped one is replaced: importing the glue under a new URL gives a fresh instance.
async function instance(variant) {
  const cached = instances.get(variant);
  if (cached) {
    const inst = await cached.catch(() => null);
    if (inst && inst.alive) return inst;
  }
  const url = new URL(`${variant}/mobilenet.js?instance=${++generation}`, here);
  const made = (async () => {
    const glue = await import(url.href);
    await glue.default({ module_or_path: new URL(`${variant}/mobilenet_bg.wasm`, here) });
    return { glue, variant, alive: true };
  })();
  instances.set(variant, made);
  return made;
}

function checkVariant(variant) {
  const ok = supportedVariants();
  if (variant === undefined) return ok[0];
  if (!['relaxed', 'simd', 'scalar'].includes(variant)) {
    throw new Error(`variant '${variant}': expected relaxed, simd or scalar`);
  }
  if (!ok.includes(variant)) throw new Error(`this browser does not run the '${variant}' build (it runs ${ok.join(', ')})`);
  return variant;
}

// Runs f(), turning a trap into an Error that says what happened.
function guarded(inst, f) {
  if (!inst.alive) throw new Error('mobilenet: this model\'s module stopped after an internal error; load the model again');
  try {
    return f();
  } catch (e) {
    if (e instanceof WebAssembly.RuntimeError) {
      inst.alive = false;
      let panic = null;
      try { panic = inst.glue.lastPanic(); } catch { /* the instance is gone */ }
      throw new Error(`mobilenet: internal error (${panic || e.message}); load the model again`);
    }
    throw e instanceof Error ? e : new Error(String(e));
  }
}

async function bytesOf(source) {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  if (typeof Blob !== 'undefined' && source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  if (typeof source === 'string' || source instanceof URL) {
    const r = await fetch(source);
    if (!r.ok) throw new Error(`${source}: HTTP ${r.status}`);
    return new Uint8Array(await r.arrayBuffer());
  }
  throw new Error('a model is a URL, an ArrayBuffer, a typed array or a Blob');
}

function nameOf(source, given) {
  if (given) return given;
  if (typeof source === 'string' || source instanceof URL) return String(source).split('/').pop().split('?')[0] || 'model';
  if (typeof File !== 'undefined' && source instanceof File) return source.name;
  return 'model';
}

let scratch = null;
// RGBA pixels of anything an image can be in a page.
function rgbaOf(image) {
  if (image && image.data && Number.isInteger(image.width) && Number.isInteger(image.height)) {
    const d = image.data;
    if (!(d instanceof Uint8Array || d instanceof Uint8ClampedArray)) throw new Error('image.data must be a Uint8Array or Uint8ClampedArray of RGBA bytes');
    return { data: new Uint8Array(d.buffer, d.byteOffset, d.byteLength), width: image.width, height: image.height };
  }
  const width = image && (image.naturalWidth || image.videoWidth || image.width);
  const height = image && (image.naturalHeight || image.videoHeight || image.height);
  if (!width || !height) throw new Error('an image is ImageData, {data, width, height}, or a loaded image, canvas, video or ImageBitmap');
  if (!scratch) scratch = typeof OffscreenCanvas !== 'undefined' ? new OffscreenCanvas(1, 1) : document.createElement('canvas');
  scratch.width = width; scratch.height = height;
  const ctx = scratch.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(image, 0, 0, width, height);
  const d = ctx.getImageData(0, 0, width, height);
  return { data: new Uint8Array(d.data.buffer), width, height };
}

/** A classifier running in this page. */
export class MobileNet {
  constructor(inst, model) { this._inst = inst; this._model = model; }
  /** Input side in pixels. */
  get resolution() { return this._model.resolution; }
  /** Number of classes. */
  get classes() { return this._model.classes; }
  /** `f32`, `uint8` or `int8`. */
  get precision() { return this._model.precision; }
  /** The kernels' instruction set: `wasm128` or `scalar`. */
  get isa() { return this._model.isa; }
  /** The build running: `relaxed`, `simd` or `scalar`. */
  get variant() { return this._inst.variant; }
  /** The network, e.g. `MobileNet v1 α=1.0 224×224 1001 classes`. */
  get description() { return this._model.description; }
  /** Central-crop fraction (0.875: TF-slim's evaluation crop; 1: the whole image). */
  get crop() { return this._model.crop; }
  set crop(c) { guarded(this._inst, () => { this._model.crop = c; }); }
  label(i) { return guarded(this._inst, () => this._model.label(i)); }

  /** The `topK` most probable classes: `[{ index, label, probability }]`. */
  async classify(image, { topK = 5 } = {}) {
    const { data, width, height } = rgbaOf(image);
    return guarded(this._inst, () => {
      const p = this._model.probabilities(data, width, height);
      const order = Array.from(p.keys()).sort((a, b) => p[b] - p[a] || a - b).slice(0, Math.max(0, topK));
      return order.map(index => ({ index, label: this._model.label(index), probability: p[index] }));
    });
  }
  /** Softmax probabilities, one per class. */
  async probabilities(image) {
    const { data, width, height } = rgbaOf(image);
    return guarded(this._inst, () => this._model.probabilities(data, width, height));
  }
  /** Logits before softmax (f32 models). */
  async logits(image) {
    const { data, width, height } = rgbaOf(image);
    return guarded(this._inst, () => this._model.logits(data, width, height));
  }
  /** Logits of an input already preprocessed: `resolution²·3` floats, HWC (f32 models). */
  async logitsOfInput(input) {
    if (!(input instanceof Float32Array)) throw new Error('the input is a Float32Array');
    return guarded(this._inst, () => this._model.logits_of_input(input));
  }
  /** Frees the model's memory in the module. */
  dispose() { if (this._model) { try { this._model.free(); } catch { /* trapped */ } this._model = null; } }
}

/** An SSD detector running in this page. */
export class ObjectDetector {
  constructor(inst, detector) { this._inst = inst; this._d = detector; }
  /** Input side in pixels (images are fitted to it). */
  get resolution() { return this._d.resolution; }
  /** `f32` or `int8`. */
  get precision() { return this._d.precision; }
  /** The kernels' instruction set: `wasm128` or `scalar`. */
  get isa() { return this._inst.glue.isa(); }
  /** The build running: `relaxed`, `simd` or `scalar`. */
  get variant() { return this._inst.variant; }
  /** The detector's name. */
  get description() { return this._d.description; }

  /** Objects in the image: `[{ class, label, score, box: [x, y, width, height] }]`, the box
   * in the image's pixels. Options default to the detector's own settings. */
  async detect(image, { minScore, iou, maxDetections } = {}) {
    const { data, width, height } = rgbaOf(image);
    return guarded(this._inst, () => {
      const [s0, i0, m0] = this._d.defaultNms();
      const flat = this._d.detect(data, width, height, minScore ?? s0, iou ?? i0, maxDetections ?? m0);
      const out = [];
      for (let k = 0; k < flat.length; k += 6) {
        out.push({ class: flat[k], label: this._d.label(flat[k]), score: flat[k + 1], box: Array.from(flat.subarray(k + 2, k + 6)) });
      }
      return out;
    });
  }
  /** Frees the detector's memory in the module. */
  dispose() { if (this._d) { try { this._d.free(); } catch { /* trapped */ } this._d = null; } }
}

/**
 * Loads an SSD detector: a URL, ArrayBuffer, typed array or Blob/File holding a file
 * `mobilenet detect` accepts (a detector file from `mobilenet import` or `train-detect`, or an
 * int8 detector `.tflite` from `mobilenet quantize`). Options: `name`, `variant`.
 */
export async function loadDetector(source, { name, variant } = {}) {
  const v = checkVariant(variant);
  const [bytes, inst] = await Promise.all([bytesOf(source), instance(v)]);
  const d = guarded(inst, () => new inst.glue.Detector(bytes, nameOf(source, name)));
  return new ObjectDetector(inst, d);
}

/**
 * Loads a model: a URL, ArrayBuffer, typed array or Blob/File holding a file `mobilenet classify`
 * accepts (our safetensors, TF-slim or Keras safetensors, a float or quantized `.tflite`).
 * Options: `labels` (a labels file's text, or a URL of one), `name` (for messages), `variant`
 * (force `relaxed`, `simd` or `scalar`).
 */
export async function load(source, { labels, name, variant } = {}) {
  const v = checkVariant(variant);
  const [bytes, inst] = await Promise.all([bytesOf(source), instance(v)]);
  let labelText = labels;
  if (labels instanceof URL || (typeof labels === 'string' && /^(https?:|\.{0,2}\/)/.test(labels) && !labels.includes('\n'))) {
    const r = await fetch(labels);
    if (!r.ok) throw new Error(`${labels}: HTTP ${r.status}`);
    labelText = await r.text();
  }
  const model = guarded(inst, () => new inst.glue.Model(bytes, nameOf(source, name), labelText ?? undefined));
  return new MobileNet(inst, model);
}
