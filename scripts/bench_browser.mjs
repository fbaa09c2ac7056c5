// Times MobileNet v1 batch 1, one thread, in headless Chromium: our WebAssembly build
// (relaxed-SIMD and SIMD128 variants) against TensorFlow.js (tfjs-backend-wasm, SIMD) and
// ONNX Runtime Web (wasm EP, SIMD), all in the same page and run, on the same weights (the
// peers' models from ../shared/bench/peers/make_models.py), each checked against the Keras
// reference probabilities first. Rounds alternate the engines; medians of every timed run.
//
// Usage:
//   scripts/build_wasm.sh                       # our package in target/wasm-pkg
//   npm install --prefix ~/.cache/mobilenet-js @tensorflow/tfjs@4.22.0 \
//       @tensorflow/tfjs-backend-wasm@4.22.0 onnxruntime-web playwright-core
//   node scripts/bench_browser.mjs [--pkg target/wasm-pkg] [--node-modules DIR] [--models DIR]
//        [--rounds 10] [--per-round 10] [--warmup 20] [--json out.json]
// --models holds mobilenet_v1_<a>_<r>.{onnx,safetensors,mobilenet.safetensors} and ref/ (the
// peers' models; `mobilenet import X.safetensors -o X.mobilenet.safetensors --resolution R`).
import http from 'node:http';
import { readFile, writeFile, stat } from 'node:fs/promises';
import { gzipSync } from 'node:zlib';
import path from 'node:path';
import os from 'node:os';
import { createRequire } from 'node:module';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const pkg = path.resolve(arg('--pkg', path.join(root, 'target/wasm-pkg')));
const nm = path.resolve(arg('--node-modules', path.join(os.homedir(), '.cache/mobilenet-js/node_modules')));
const models = path.resolve(arg('--models', path.join(os.homedir(), '.cache/mobilenet-peers/peers/models')));
const config = {
  models: [['mobilenet_v1_0.25_128', 0.25, 128], ['mobilenet_v1_1.0_224', 1.0, 224]],
  rounds: +arg('--rounds', 10), perRound: +arg('--per-round', 10), warmup: +arg('--warmup', 20),
};

const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.wasm': 'application/wasm', '.json': 'application/json' };
const routes = [['/pkg/', pkg], ['/nm/', nm], ['/models/', models]];
const server = http.createServer(async (req, res) => {
  const url = decodeURIComponent(req.url.split('?')[0]);
  let file = url === '/bench.html' ? path.join(root, 'scripts/browser_bench.html') : null;
  for (const [prefix, dir] of routes) if (url.startsWith(prefix)) file = path.join(dir, url.slice(prefix.length));
  if (!file || url.includes('..')) { res.writeHead(404).end(); return; }
  try {
    const body = await readFile(file);
    res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' }).end(body);
  } catch { res.writeHead(404).end(); }
});
await new Promise(r => server.listen(0, '127.0.0.1', r));
const base = `http://127.0.0.1:${server.address().port}`;

const { chromium } = createRequire(path.join(nm, 'x.js'))('playwright-core');
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium', args: ['--no-sandbox', '--disable-dev-shm-usage'] });
const page = await browser.newPage();
page.on('console', m => { if (m.type() === 'error') console.error('page:', m.text()); });
page.on('pageerror', e => console.error('page error:', e.message));
await page.goto(`${base}/bench.html`);
await page.waitForFunction('window.ready === true');
const { env, results } = await page.evaluate(c => window.bench(c), config);
await browser.close();
server.close();

// What each engine makes a page download: its JS and its SIMD wasm, raw and gzipped.
async function size(files) {
  let raw = 0, gz = 0;
  for (const f of files) { const b = await readFile(f); raw += b.length; gz += gzipSync(b, { level: 9 }).length; }
  return { bytes: raw, gzipped: gz };
}
const sizes = {
  'ours (relaxed)': await size([path.join(pkg, 'mobilenet.js'), path.join(pkg, 'relaxed/mobilenet.js'), path.join(pkg, 'relaxed/mobilenet_bg.wasm')]),
  tfjs: await size([path.join(nm, '@tensorflow/tfjs/dist/tf.min.js'), path.join(nm, '@tensorflow/tfjs-backend-wasm/dist/tf-backend-wasm.min.js'), path.join(nm, '@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm-simd.wasm')]),
  'onnxruntime-web': await size([path.join(nm, 'onnxruntime-web/dist/ort.wasm.min.js'), path.join(nm, 'onnxruntime-web/dist/ort-wasm-simd-threaded.mjs'), path.join(nm, 'onnxruntime-web/dist/ort-wasm-simd-threaded.wasm')]),
};
console.log(`# ${env.userAgent}\n# crossOriginIsolated=${env.crossOriginIsolated} tfjs SIMD=${env.tfjsSimd}; ${os.cpus()[0].model}, ${os.cpus().length} CPUs; ${new Date().toISOString()}`);
console.log('| model | engine | median ms | p10 ms | runs | max abs prob error vs Keras |');
console.log('|---|---|---|---|---|---|');
for (const r of results) console.log(`| ${r.model} | ${r.engine} | ${r.median_ms.toFixed(2)} | ${r.p10_ms.toFixed(2)} | ${r.runs} | ${r.max_abs_prob_error.toExponential(1)} |`);
console.log('\n| engine | JS + SIMD wasm bytes | gzipped |\n|---|---|---|');
for (const [k, v] of Object.entries(sizes)) console.log(`| ${k} | ${v.bytes} | ${v.gzipped} |`);
const out = arg('--json');
if (out) await writeFile(out, JSON.stringify({ env, config, results, sizes }, null, 1));
