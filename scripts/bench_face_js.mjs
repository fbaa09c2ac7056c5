// Times face-api's SSD-MobileNet-v1 face detector (@vladmandic/face-api 1.7.15) on TensorFlow.js
// in node, next to `mobilenet bench --model face.safetensors --image …` (see BENCHMARKS.md).
//
//   node scripts/bench_face_js.mjs NODE_MODULES IMAGE.rgb HEIGHT WIDTH [RUNS] [BACKEND]
//
// NODE_MODULES holds @vladmandic/face-api, @tensorflow/tfjs and @tensorflow/tfjs-backend-wasm
// (npm install @tensorflow/tfjs@4.22.0 @tensorflow/tfjs-backend-wasm@4.22.0
// @vladmandic/face-api@1.7.15); IMAGE.rgb is raw 8-bit RGB; BACKEND is wasm (default) or cpu.
// Prints one JSON object: median/min ms of detectAllFaces (resize, network, decoding, NMS)
// and of the network alone (forwardInput on the same input), and the detections.
import fs from 'fs';
import path from 'path';
import { createRequire } from 'module';

const [modules, rgbPath, h, w, runsArg, backendArg] = process.argv.slice(2);
const runs = Number(runsArg || 30);
const backend = backendArg || 'wasm';
const req = createRequire(path.resolve(modules, 'package.json'));
const faceapi = req('@vladmandic/face-api/dist/face-api.node-wasm.js');
const tf = faceapi.tf;
if (backend === 'wasm') {
  const wasm = req('@tensorflow/tfjs-backend-wasm');
  wasm.setWasmPaths(path.resolve(modules, '@tensorflow/tfjs-backend-wasm/dist') + '/');
}
await tf.setBackend(backend);
await tf.ready();
const modelDir = path.resolve(modules, '@vladmandic/face-api/model');
await faceapi.nets.ssdMobilenetv1.loadFromDisk(modelDir);
const raw = fs.readFileSync(rgbPath);
const image = tf.tensor3d(new Uint8Array(raw), [Number(h), Number(w), 3], 'int32');
const options = new faceapi.SsdMobilenetv1Options({ minConfidence: 0.5, maxResults: 100 });
const time = async (f) => {
  for (let i = 0; i < 5; i++) await f();
  const t = [];
  for (let i = 0; i < runs; i++) {
    const s = process.hrtime.bigint();
    await f();
    t.push(Number(process.hrtime.bigint() - s) / 1e6);
  }
  t.sort((a, b) => a - b);
  return { median: t[Math.floor(t.length / 2)], min: t[0] };
};
let found = [];
const detect = await time(async () => { found = await faceapi.detectAllFaces(image, options); });
const input = tf.randomUniform([1, 512, 512, 3], 0, 255);
const net = await time(async () => {
  const out = faceapi.nets.ssdMobilenetv1.forwardInput(await faceapi.toNetInput(input));
  await out.boxes[0].data();
  tf.dispose([...out.boxes, ...out.scores]);
});
const simd = backend === 'wasm' ? await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT') : false;
const threads = backend === 'wasm' ? await tf.env().getAsync('WASM_HAS_MULTITHREAD_SUPPORT') : false;
console.log(JSON.stringify({
  runtime: `face-api 1.7.15, tfjs ${tf.version.tfjs}, backend ${tf.getBackend()}`,
  wasm_simd: simd,
  wasm_threads: threads,
  runs,
  detect_median_ms: detect.median, detect_min_ms: detect.min,
  network_median_ms: net.median, network_min_ms: net.min,
  detections: found.map(d => ({ score: +d.score.toFixed(4), box: [d.box.x, d.box.y, d.box.width, d.box.height].map(v => +v.toFixed(1)) })),
}));
