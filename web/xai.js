// candle-xai in the browser: explanations of image classifiers computed by the Rust engine
// (compiled to WebAssembly) in Web Workers, so the page never freezes.
//
//   import { Explainer } from './web/xai.js';
//   const explainer = await Explainer.load();            // the default MobileNetV2, or bytes/URL/Blob
//   const result = await explainer.explain(file, { method: 'integrated-gradients', params: { n_steps: 32 } });
//   document.body.append(result.canvas);                 // heatmap over the photo
//   result.attributions;                                 // Float32Array, shaped like result.shape
//
// Everything the engine needs (worker, wasm, model, class names) is fetched once, from this
// page's own origin; after that no request leaves the page.

const HERE = new URL('.', import.meta.url);
const ROOT = new URL('..', HERE);

export const DEFAULT_MODEL_URL = new URL('assets/model/mobilenet_v2.safetensors', HERE).href;
/** The metrics `evaluate` computes when not told: the cheap ones (sensitivity explains again). */
export const DEFAULT_METRICS = ['abpc', 'morf', 'lerf', 'complexity'];
export const IMAGENET_CLASSES_URL = new URL('assets/imagenet_classes.json', HERE).href;
const WORKER_URL = new URL('worker.js', HERE).href;

// The engine is built twice (scripts/build-relaxed-wasm.sh): with WebAssembly relaxed SIMD, whose
// fused multiply-add speeds the convolutions' products, and with plain simd128 for browsers
// without it. The first build the browser validates and serves is used.
const RELAXED_SIMD_BUILD = { name: 'relaxed-simd', glue: 'candle-xai-relaxed.js', wasm: 'candle-xai-relaxed_bg.wasm' };
const SIMD128_BUILD = { name: 'simd128', glue: 'candle-xai.js', wasm: 'candle-xai_bg.wasm' };
// The smallest module using relaxed SIMD: (func (result v128) f32x4.relaxed_madd of three
// f32x4.splat 1.0). It validates exactly where the browser has relaxed SIMD.
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // types: () -> v128
  0x03, 0x02, 0x01, 0x00, // one function of type 0
  0x0a, 0x1c, 0x01, 0x1a, 0x00, // code: one body of 26 bytes, no locals
  ...[0, 1, 2].flatMap(() => [0x43, 0x00, 0x00, 0x80, 0x3f, 0xfd, 0x13]), // f32.const 1, f32x4.splat
  0xfd, 0x85, 0x02, // f32x4.relaxed_madd
  0x0b, // end
]);

/** Whether this browser runs WebAssembly relaxed SIMD. */
export function hasRelaxedSimd() {
  try {
    return WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}

const EXPLAIN_OPTIONS = new Set(['method', 'params', 'target', 'layer', 'colormap', 'scaling', 'alpha', 'onProgress', 'signal', 'canvas']);

export class CancelledError extends Error {
  constructor() {
    super('cancelled');
    this.name = 'AbortError';
  }
}

async function fetchOk(url, what) {
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new Error(`could not fetch ${what} (${url}): ${e.message}`);
  }
  if (!response.ok) throw new Error(`could not fetch ${what} (${url}): HTTP ${response.status}`);
  return response;
}

/** The wasm-bindgen glue's text and the compiled module of `build`. */
async function fetchBuild(build) {
  const [glueText, module] = await Promise.all([
    fetchOk(new URL(build.glue, ROOT).href, 'the engine bindings').then((r) => r.text()),
    fetchOk(new URL(build.wasm, ROOT).href, 'the engine').then(async (r) => WebAssembly.compile(await r.arrayBuffer())),
  ]);
  return { glueText, module, build: build.name };
}

/** The fastest build this browser runs; the relaxed-SIMD one where it validates and is served
 * (a page built without the hook has only the other). */
async function fetchEngine() {
  if (hasRelaxedSimd()) {
    try {
      return await fetchBuild(RELAXED_SIMD_BUILD);
    } catch (err) {
      console.warn(`candle-xai: the relaxed-SIMD engine is unavailable (${err.message}); using the simd128 one`);
    }
  }
  return fetchBuild(SIMD128_BUILD);
}

// The worker's code, the wasm-bindgen glue and the compiled module, fetched once per page.
let runtimePromise = null;
function runtime() {
  if (!runtimePromise) {
    runtimePromise = (async () => {
      const [workerText, { glueText, module, build }] = await Promise.all([
        fetchOk(WORKER_URL, 'the engine worker').then((r) => r.text()),
        fetchEngine(),
      ]);
      const blobUrl = (text) => URL.createObjectURL(new Blob([text], { type: 'text/javascript' }));
      return { workerUrl: blobUrl(workerText), glueUrl: blobUrl(glueText), module, build };
    })();
    runtimePromise.catch(() => {
      runtimePromise = null;
    });
  }
  return runtimePromise;
}

/** One engine worker; requests run one after the other. */
class Engine {
  #worker = null;
  #pending = new Map();
  #next = 1;
  #ready = null;
  #model = null; // {bytes, name, graph, arch} to reload after a restart
  #backend; // 'auto' | 'webgpu' | 'cpu', asked again of a restarted worker
  info = null;

  /** `model` ({bytes, name, graph, arch}): loaded as the worker starts (a pool's helper). */
  constructor(backend = 'cpu', model = null) {
    this.#backend = backend;
    this.#model = model;
    this.#ready = this.#start();
  }

  /** The model this worker holds, to load into another. */
  get model() {
    return this.#model;
  }

  async #start() {
    const rt = await runtime();
    const worker = new Worker(rt.workerUrl, { type: 'module', name: 'candle-xai engine' });
    worker.onmessage = (e) => this.#receive(e.data);
    worker.onerror = (e) => {
      e.preventDefault();
      this.#failAll(new Error(`the engine worker failed: ${e.message || 'unknown error'}`));
    };
    this.#worker = worker;
    this.meta = { ...(await this.#send('init', { glueUrl: rt.glueUrl, module: rt.module, backend: this.#backend })), build: rt.build };
    this.backend = backendOf(this.meta);
    if (this.#model) this.info = await this.#send('load', this.#model);
  }

  #receive(message) {
    const entry = this.#pending.get(message.id);
    if (!entry) return;
    if (message.progress) {
      entry.onProgress?.(message.progress.done, message.progress.total);
      return;
    }
    this.#pending.delete(message.id);
    if (message.ok) entry.resolve(message.result);
    else {
      entry.reject(new Error(message.error));
      if (message.fatal) this.restart();
    }
  }

  #failAll(error) {
    for (const entry of this.#pending.values()) entry.reject(error);
    this.#pending.clear();
  }

  #send(type, args, { transfer = [], onProgress } = {}) {
    const id = this.#next++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onProgress });
      this.#worker.postMessage({ id, type, ...args }, transfer);
    });
  }

  async ready() {
    await this.#ready;
    return this.meta;
  }

  async call(type, args = {}, options = {}) {
    await this.#ready;
    return this.#send(type, args, options);
  }

  async load(bytes, name, graph, arch) {
    await this.#ready;
    const info = await this.#send('load', { bytes, name, graph, arch });
    this.#model = { bytes, name, graph, arch };
    this.info = info;
    this.backend = backendOf(info);
    return info;
  }

  /** Moves explanations to 'webgpu', 'cpu' or 'auto' (WebGPU on a hardware adapter). */
  async setBackend(backend) {
    await this.#ready;
    this.#backend = backend;
    this.backend = await this.#send('backend', { backend });
    return this.backend;
  }

  /** After a run fell back from a failed GPU, later restarts stay on the CPU. */
  noteFallback(result) {
    if (!result.fallback) return;
    this.#backend = 'cpu';
    this.backend = { backend: 'cpu', gpuName: null, gpuProblem: result.fallback };
  }

  /** Stops whatever runs now (its promise rejects with CancelledError) and starts afresh. */
  restart() {
    this.#worker?.terminate();
    this.#failAll(new CancelledError());
    this.#ready = this.#start();
    return this.#ready;
  }

  dispose() {
    this.#worker?.terminate();
    this.#failAll(new Error('the explainer was disposed'));
  }
}

/** The most engine workers an explainer runs side by side; each holds its own copy of the model. */
const MAX_WORKERS = 4;
/** Model bytes all of an explainer's workers may hold together: a large model gets fewer copies. */
const POOL_MODEL_BYTES = 1 << 30;

/**
 * How many engine workers explain side by side by default: one per core the browser reports
 * (the page's own thread mostly waits), at most MAX_WORKERS, and fewer for a model so large
 * that its copies would pass POOL_MODEL_BYTES.
 */
export function defaultWorkers(modelBytes = 0) {
  const cores = globalThis.navigator?.hardwareConcurrency ?? 1;
  const byMemory = Math.floor(POOL_MODEL_BYTES / Math.max(modelBytes, 1));
  return Math.max(1, Math.min(cores, MAX_WORKERS, byMemory));
}

/**
 * Engine workers holding one model, so that explanations (and scores, and tuning runs) asked
 * for at the same time run at the same time, each on its own core. The first worker is the
 * explainer's; the others are started when a request finds every worker busy, and load the
 * same model. On WebGPU everything runs on the first: the GPU is one device.
 */
class EnginePool {
  #first;
  #helpers = [];
  #running = new Map(); // Engine -> requests in flight
  size;

  constructor(first, size) {
    this.#first = first;
    this.size = size;
  }

  get first() {
    return this.#first;
  }

  /** Every started worker, the first first: a worker's index here is its `worker` number. */
  get #engines() {
    return [this.#first, ...this.#helpers];
  }

  /** How many workers are started. */
  get started() {
    return 1 + this.#helpers.length;
  }

  /** How many workers are running a request now. */
  get busy() {
    return this.#engines.filter((engine) => this.#load(engine) > 0).length;
  }

  /** Runs request `type` on the least busy worker: {result, worker (its index in the pool)}. */
  async run(type, args, options) {
    const engine = this.#pick();
    this.#running.set(engine, this.#load(engine) + 1);
    try {
      const result = await engine.call(type, args, options);
      engine.noteFallback(result);
      return { result, worker: this.#engines.indexOf(engine) };
    } finally {
      this.#running.set(engine, this.#load(engine) - 1);
    }
  }

  #load(engine) {
    return this.#running.get(engine) ?? 0;
  }

  // Synchronous, so that requests made together never pick the same idle worker.
  #pick() {
    if (this.#first.backend?.backend === 'webgpu') return this.#first;
    const engines = this.#engines;
    const least = engines.reduce((a, b) => (this.#load(b) < this.#load(a) ? b : a));
    if (this.#load(least) === 0 || engines.length >= this.size) return least;
    const helper = new Engine('cpu', this.#first.model);
    this.#helpers.push(helper);
    return helper;
  }

  /** Stops every run (their promises reject with CancelledError); the workers start afresh. */
  restart() {
    return Promise.all(this.#engines.map((engine) => engine.restart()));
  }

  /** After a switch of backend the helpers (CPU only) are given up; they start again when needed. */
  dropHelpers() {
    for (const helper of this.#helpers) helper.dispose();
    this.#helpers = [];
    this.#running = new Map([[this.#first, this.#load(this.#first)]]);
  }

  dispose() {
    this.dropHelpers();
    this.#first.dispose();
  }
}

function backendOf({ backend, gpuName, gpuProblem }) {
  return { backend, gpuName, gpuProblem };
}

async function toBytes(source) {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  if (source instanceof Blob) return new Uint8Array(await source.arrayBuffer());
  if (typeof source === 'string' || source instanceof URL) {
    return new Uint8Array(await (await fetchOk(source, nameOf(source, 'the file'))).arrayBuffer());
  }
  if (typeof HTMLCanvasElement !== 'undefined' && source instanceof HTMLCanvasElement) {
    const blob = await new Promise((resolve) => source.toBlob(resolve, 'image/png'));
    return new Uint8Array(await blob.arrayBuffer());
  }
  if (typeof HTMLImageElement !== 'undefined' && source instanceof HTMLImageElement) {
    return toBytes(source.currentSrc || source.src);
  }
  throw new TypeError('expected bytes (ArrayBuffer, Uint8Array), a Blob or File, a URL, an <img> or a <canvas>');
}

function nameOf(source, fallback) {
  if (typeof File !== 'undefined' && source instanceof File) return source.name;
  if (typeof source === 'string' || source instanceof URL) {
    const path = new URL(String(source), location.href).pathname;
    return decodeURIComponent(path.split('/').pop() || fallback);
  }
  return fallback;
}

/** Class probabilities from logits (softmax, shifted by the largest logit so it cannot overflow). */
export function softmax(logits) {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const exps = Array.from(logits, (v) => Math.exp(v - max));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((v) => v / sum);
}

/**
 * The `k` most likely classes of `probabilities`, most likely first:
 * [{index, label, probability}], labels from `labelOf(index)`.
 */
export function topClasses(probabilities, k = 5, labelOf = (index) => `class ${index}`) {
  return Array.from(probabilities, (probability, index) => ({ index, probability }))
    .sort((a, b) => b.probability - a.probability)
    .slice(0, k)
    .map(({ index, probability }) => ({ index, label: labelOf(index), probability }));
}

/**
 * RGBA pixels of a vertical colour bar `width` x `height`, the high end at the top: row y has
 * colour y of `colours` (RGB triples from top to bottom, as `Explainer#colormapColors(colormap,
 * height)` returns them).
 */
export function colorbarPixels(colours, width, height) {
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      rgba.set([colours[3 * y], colours[3 * y + 1], colours[3 * y + 2], 255], (y * width + x) * 4);
    }
  }
  return rgba;
}

let imagenetClasses = null;
async function loadImagenetClasses() {
  imagenetClasses ??= fetchOk(IMAGENET_CLASSES_URL, 'the ImageNet class names').then((r) => r.json());
  return imagenetClasses;
}

/** Draws RGBA pixels on a new canvas (or `into`). */
export function pixelsToCanvas(rgba, width, height, into) {
  const canvas = into ?? document.createElement('canvas');
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(rgba), width, height), 0, 0);
  return canvas;
}

export function rgbToRgba(rgb) {
  const out = new Uint8ClampedArray((rgb.length / 3) * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    out[j] = rgb[i];
    out[j + 1] = rgb[i + 1];
    out[j + 2] = rgb[i + 2];
    out[j + 3] = 255;
  }
  return out;
}

/**
 * A loaded model with everything needed to explain its predictions. Workers: a pool of engines
 * (each with the model; they explain, score and tune, several requests at once when the
 * browser has the cores) and a painter (decodes photos, renders heatmaps, writes files), so a
 * heatmap's colours can change while a long explanation runs.
 */
export class Explainer {
  #pool;
  #engine; // the pool's first worker: predictions, the backend
  #painter;
  #methods = null;

  constructor(pool, painter, info, labels) {
    this.#pool = pool;
    this.#engine = pool.first;
    this.#painter = painter;
    this.info = info;
    this.labels = labels;
  }

  /**
   * Loads a model: `.safetensors` or PyTorch `.pth` bytes (ArrayBuffer, Uint8Array, Blob/File
   * or URL); nothing for the default ImageNet MobileNetV2. Options: `name` (for messages),
   * `graph` (graph JSON text for a custom model), `arch` (force a torchvision architecture),
   * `labels` (class names; ImageNet's by default for a 1000-class model), `backend` (where
   * explanations run: 'auto' (default: WebGPU on a hardware adapter, else the CPU), 'webgpu'
   * (any adapter, software ones included) or 'cpu' (WebAssembly)), `workers` (how many engine
   * workers may explain at the same time on the CPU; default `defaultWorkers(model size)`: one
   * per core, at most 4).
   */
  static async load(source, options = {}) {
    const painter = options.painter ?? new Engine();
    const engine = new Engine(options.backend ?? 'auto');
    try {
      const bytes = await toBytes(source ?? DEFAULT_MODEL_URL);
      const name = options.name ?? nameOf(source ?? DEFAULT_MODEL_URL, 'model.safetensors');
      const info = await engine.load(bytes, name, options.graph ?? null, options.arch ?? null);
      let labels = options.labels ?? null;
      if (!labels && info.numClasses === 1000) labels = await loadImagenetClasses();
      const workers = options.workers ?? defaultWorkers(bytes.byteLength);
      if (!(Number.isInteger(workers) && workers >= 1)) throw new RangeError(`workers: expected a whole number from 1; got ${workers}`);
      return new Explainer(new EnginePool(engine, workers), painter, info, labels);
    } catch (e) {
      engine.dispose();
      if (!options.painter) painter.dispose();
      throw e;
    }
  }

  /** Another model using the same painter worker (the page's model upload). */
  async reload(source, options = {}) {
    return Explainer.load(source, { ...options, painter: this.#painter });
  }

  get architecture() {
    return this.info.architecture;
  }
  get layers() {
    return this.info.layers;
  }
  get defaultCamLayer() {
    return this.info.defaultCamLayer;
  }
  /** The names of the methods that can explain this model (Grad-CAM needs a convolutional or
   * token layer; attention rollout, gradient-weighted attention, AttnLRP and CP-LRP a transformer). */
  get applicableMethods() {
    return this.info.methods;
  }
  get numClasses() {
    return this.info.numClasses;
  }

  /**
   * Where explanations run: {backend: 'webgpu' | 'cpu', gpuName (the adapter, on WebGPU),
   * gpuProblem (why not WebGPU, or why it was given up)}.
   */
  get backend() {
    return this.#engine.backend;
  }

  /** Moves explanations to 'webgpu', 'cpu' or 'auto'; resolves to the new `backend`. */
  async setBackend(backend) {
    this.#pool.dropHelpers();
    return this.#engine.setBackend(backend);
  }

  /** How many engine workers may explain at the same time (WebGPU: one). */
  get workers() {
    return this.#engine.backend?.backend === 'webgpu' ? 1 : this.#pool.size;
  }

  /** How many engine workers are started now. */
  get workersStarted() {
    return this.#pool.started;
  }

  /**
   * Loses the GPU device on purpose, as a driver reset would (WebGL's `loseContext` for
   * WebGPU): the next explanation fails on the GPU and is redone on the CPU. For tests.
   */
  async loseGpuForTesting() {
    return this.#engine.call('loseGpuForTesting');
  }

  /**
   * Every method, as the engine describes it (cached): [{name, label (its human name), help (one
   * sentence on what it computes), method and defaults (the default parameters), parameters
   * (each as {key, kind: 'bool' | 'integer' | 'number' | 'choice' | 'text' | 'json', label, help,
   * default, choices?, syntax?, min?, optional, excludes?}), tunables (the parameters worth a
   * control: {name (a parameter's key), scale: 'integer' | 'linear' | 'log' | 'choice', min, max,
   * default, choices?, default_choice?})}].
   */
  async methods() {
    if (!this.#methods) {
      this.#methods = this.#painter.call('methods');
      this.#methods.catch(() => (this.#methods = null));
    }
    return this.#methods;
  }

  /**
   * Every metric `evaluate` takes, as the engine describes it: [{name, higher_is_better,
   * parameters (as methods' parameters, each with its default; the seed is evaluate's)}]. A
   * metric in `evaluate`'s `metrics` is its name, or `{metric: name, key: value, ...}` with
   * parameters changed.
   */
  async metricCatalog() {
    return this.#painter.call('metricCatalog');
  }

  /** The human name of method `name` (e.g. 'Integrated Gradients'), or `name` if it has none. */
  async methodLabel(name) {
    return (await this.methods()).find((m) => m.name === name)?.label ?? name;
  }

  /** The engine's (the crate's) version. */
  async version() {
    return (await this.#painter.ready()).version;
  }

  /** Which build of the engine runs: 'relaxed-simd' (fused multiply-adds) or 'simd128'. */
  async engineBuild() {
    return (await this.#painter.ready()).build;
  }

  /** Colour map names, the default first. */
  async colormaps() {
    return (await this.#painter.ready()).colormaps;
  }

  /** RGB colours of a colour map from its top (high) to its bottom (low). */
  async colormapColors(colormap, steps = 256) {
    return this.#painter.call('colormap', { colormap, steps });
  }

  /**
   * Draws `colormap`'s colour bar (the high end at the top) on `canvas` (or a new canvas) of
   * `width` x `height` pixels; resolves to the canvas.
   */
  async colorbar(colormap = 'bwr', { width = 16, height = 224, canvas } = {}) {
    const colours = await this.colormapColors(colormap, height);
    return pixelsToCanvas(colorbarPixels(colours, width, height), width, height, canvas);
  }

  /**
   * Decodes and preprocesses a photo (PNG, JPEG or WebP of any size): shorter side 256, centre
   * crop 224 (a model that takes another size, a vision transformer trained at 384: that crop,
   * the shorter side in proportion), ImageNet normalisation. Returns {input, shape, photo (RGB),
   * width, height, sourceWidth, sourceHeight, name}. Accepts what `explain` accepts.
   */
  async prepare(image, name) {
    if (image && image.input instanceof Float32Array && image.shape) return image;
    const bytes = await toBytes(image);
    const label = name ?? nameOf(image, 'image');
    const size = this.info.inputSize ?? null;
    const prepared = await this.#painter.call('preprocess', { bytes, name: label, size });
    prepared.name = label;
    if (this.info.inputChannels !== prepared.shape[1]) {
      throw new Error(
        `this model expects ${this.info.inputChannels}-channel input; the page feeds it ${prepared.shape[1]}-channel ` +
          `${prepared.width}x${prepared.height} photos`,
      );
    }
    return prepared;
  }

  /** The model's prediction: {logits, probabilities, top: [{index, label, probability}]}. */
  async predict(image, k = 5) {
    const prepared = await this.prepare(image);
    const logits = await this.#engine.call('predict', { input: prepared.input, shape: prepared.shape });
    const probabilities = softmax(logits);
    const top = topClasses(probabilities, k, (index) => this.labelOf(index));
    return { logits, probabilities, top, prepared };
  }

  labelOf(index) {
    return this.labels?.[index] ?? `class ${index}`;
  }

  /**
   * Explains a photo. Options: `method` (a name from `methods()`, default 'gradient'),
   * `params` (overrides of its defaults, e.g. {n_steps: 32}; they may also sit beside the
   * options: {method: 'integrated-gradients', n_steps: 32}), `target` (class index; default:
   * the top prediction), `layer` (Grad-CAM's layer), `colormap` ('bwr' | 'hot' | 'gray' |
   * 'positive'), `scaling` (which value the colours' ends stand for: 'outliers:P', captum's
   * P% of the mass clipped, or 'level:L', zennit's 1/L of the largest magnitude); both default
   * to the method's own (`defaultStyle(method)`), `alpha` (heatmap opacity 0..1), `onProgress(done, total)`, `signal`
   * (an AbortSignal that cancels). Returns {attributions (Float32Array), shape, logits, target,
   * label, top5, probabilities, convergenceDelta, method, params, elapsedMs, canvas, low, high,
   * prepared, backend ('webgpu' | 'cpu'), device (the adapter's name or 'cpu'), fallback (set
   * when WebGPU failed and the CPU produced this result: why), worker (the engine worker that
   * ran it), shares (how many workers split it: IG and SmoothGrad take every free one)}.
   */
  async explain(image, options = {}) {
    const prepared = await this.prepare(image);
    const method = options.method ?? 'gradient';
    // Method parameters may also be given beside the options: {method: 'smoothgrad', n_samples: 8}.
    let params = options.params ?? {};
    if (typeof params === 'string') params = JSON.parse(params);
    for (const [key, value] of Object.entries(options)) {
      if (!EXPLAIN_OPTIONS.has(key)) params = { ...params, [key]: value };
    }
    params = JSON.stringify(params);
    const request = {
      input: prepared.input,
      shape: prepared.shape,
      method,
      params,
      target: options.target ?? null,
      layer: options.layer ?? null,
    };
    const { result, elapsedMs } = await this.#explainShared(request, options);
    result.elapsedMs = elapsedMs;
    result.label = this.labelOf(result.target);
    result.probabilities = softmax(result.logits);
    result.top5 = topClasses(result.probabilities, 5, (index) => this.labelOf(index));
    result.prepared = prepared;
    const rendered = await this.render(result, {
      colormap: options.colormap ?? null,
      scaling: options.scaling ?? null,
      alpha: options.alpha ?? 0.5,
      canvas: options.canvas,
    });
    return Object.assign(result, rendered);
  }

  /**
   * Scores an explanation (a result of `explain`) with evaluation metrics, pnpxai's
   * definitions and defaults. Options: `metrics` (names, or objects {metric, ...params}; default
   * ['abpc', 'morf', 'lerf', 'complexity']; 'mu-fidelity' runs 150 perturbed inputs and 'sensitivity' explains 8 noisy copies
   * with the result's own method), `onProgress(done, total)`, `signal`. Returns {scores: {name:
   * value}, higherIsBetter: {name: bool}, curves: {morf, lerf} (pixel-flipping probabilities,
   * the unperturbed input first) when a flipping metric was asked for, randomisation: {layers,
   * randomised, similarity} (the sanity check's curve) when 'randomisation' was, elapsedMs}.
   */
  async evaluate(result, options = {}) {
    const { result: evaluation, elapsedMs } = await this.#run(
      'evaluate',
      {
        input: result.prepared.input,
        shape: result.prepared.shape,
        attributions: result.attributions,
        attributionsShape: result.shape,
        metrics: options.metrics ?? DEFAULT_METRICS,
        target: result.target,
        method: result.method,
        params: result.params,
      },
      options,
    );
    const out = { scores: {}, higherIsBetter: {}, curves: null, elapsedMs };
    for (const s of evaluation.scores) {
      out.scores[s.metric] = s.values[0] ?? NaN;
      out.higherIsBetter[s.metric] = s.higher_is_better;
      if (s.randomisation) {
        const r = s.randomisation;
        out.randomisation = { layers: r.layers, randomised: r.randomised, similarity: r.similarity.map((row) => row[0]) };
      }
      if (s.morf_curves || s.lerf_curves) {
        out.curves ??= {};
        if (s.morf_curves) out.curves.morf = s.morf_curves[0];
        if (s.lerf_curves) out.curves.lerf = s.lerf_curves[0];
      }
    }
    return out;
  }

  /**
   * Tunes the method of an explanation (a result of `explain`) for its photo and class, as
   * pnpxai's optimizer does: TPE over the method's tunable parameters, maximising `objective`
   * ('abpc' by default; weighted metrics such as 'abpc:1,complexity:0.1'). Options: `nTrials`
   * (default 20), `seed` (0), `onProgress(done, total)` (trials), `signal`. Returns {defaults,
   * best: {params, objective, scores}, bestParams (the method's full parameters, for
   * `explain`), trials, elapsedMs}.
   */
  async optimize(result, options = {}) {
    const { result: found, elapsedMs } = await this.#run(
      'optimize',
      {
        input: result.prepared.input,
        shape: result.prepared.shape,
        method: result.method,
        params: result.params,
        target: result.target,
        objective: options.objective ?? 'abpc',
        nTrials: options.nTrials ?? 20,
        seed: options.seed ?? 0,
      },
      options,
    );
    const { method: _name, ...bestParams } = found.best_method;
    return { ...found, bestParams, elapsedMs };
  }

  /**
   * Into how many shares one explanation with `method` and `params` (an object or JSON text) can
   * be split between workers: IG's path points, SmoothGrad's noisy copies; 1 for the others.
   */
  async shares(method, params = {}) {
    return this.#painter.call('shares', { method, params: typeof params === 'string' ? params : JSON.stringify(params) });
  }

  /**
   * One explanation, split between the engine workers when it can be (IG's path points and
   * SmoothGrad's noisy copies, in shares the engine adds up exactly) and more than one is free
   * to take a share; otherwise on one worker. {result (`shares`: how many workers took part),
   * elapsedMs}.
   */
  async #explainShared(request, options) {
    const possible = this.workers > 1 ? await this.shares(request.method, request.params) : 1;
    // Counted after the await, synchronously with the dispatch below: explanations asked for
    // together (the page's Compare all) do not each count the same workers free.
    const count = Math.min(this.workers - this.#pool.busy, possible);
    if (count <= 1) {
      const ran = await this.#run('explain', request, options);
      ran.result.shares = 1;
      return ran;
    }
    const done = new Array(count).fill(0);
    const onProgress = options.onProgress && ((i, d) => {
      done[i] = d;
      options.onProgress(done.reduce((a, b) => a + b, 0), possible);
    });
    const started = performance.now();
    const parts = await Promise.all(
      done.map((_, i) =>
        this.#run('explain', { ...request, share: [i, count] }, { ...options, onProgress: onProgress && ((d) => onProgress(i, d)) }),
      ),
    );
    // The shares' attributions and convergence deltas add up to the whole's, in share order.
    const result = parts[0].result;
    for (const { result: part } of parts.slice(1)) {
      for (let k = 0; k < result.attributions.length; k++) result.attributions[k] += part.attributions[k];
      if (result.convergenceDelta != null) result.convergenceDelta = Math.fround(result.convergenceDelta + part.convergenceDelta);
      result.engineMs = Math.max(result.engineMs ?? 0, part.engineMs ?? 0);
    }
    result.shares = count;
    return { result, elapsedMs: performance.now() - started };
  }

  /** Runs request `type` with `args` on the least busy engine worker, cancelled through
   * `options.signal` and reporting to `options.onProgress`: {result (a GPU fallback noted),
   * elapsedMs}; the result's `worker` is the index of the worker that ran it. */
  async #run(type, args, options) {
    if (options.signal?.aborted) throw new CancelledError();
    const abort = () => this.cancel();
    options.signal?.addEventListener('abort', abort, { once: true });
    const started = performance.now();
    try {
      const { result, worker } = await this.#pool.run(type, args, { onProgress: options.onProgress });
      result.worker = worker;
      return { result, elapsedMs: performance.now() - started };
    } finally {
      options.signal?.removeEventListener('abort', abort);
    }
  }

  /** Cancels every running explanation, score and tuning run (their promises reject with a
   * CancelledError); the workers start afresh. */
  cancel() {
    return this.#pool.restart();
  }

  /**
   * `method`'s default heatmap style, as the CLI's: {colormap ('hot' for Grad-CAM and the
   * attention methods, else 'bwr'), scaling ('level:3' for LRP, as zennit; else 'outliers:2',
   * as captum)}.
   */
  async defaultStyle(method) {
    return this.#painter.call('defaultStyle', { method });
  }

  /**
   * The heatmap of `result` over its photo: {canvas, low, high, colormap, scaling, alpha} (the
   * colour map and scaling used). `colormap` and `scaling` ('outliers:P' or 'level:L'): null
   * for the method's defaults.
   */
  async render(result, { colormap = null, scaling = null, alpha = 0.5, canvas } = {}) {
    const r = await this.#painter.call('overlay', this.#heatmapRequest(result, { colormap, scaling, alpha }));
    const target = canvas ?? (typeof document !== 'undefined' ? document.createElement('canvas') : null);
    if (target) pixelsToCanvas(r.rgba, r.width, r.height, target);
    return { canvas: target, rgba: r.rgba, low: r.low, high: r.high, colormap: r.colormap, scaling: r.scaling, alpha };
  }

  /** PNG bytes of the heatmap with its labelled colour bar (what the CLI writes). */
  async png(result, { colormap = null, scaling = null, alpha = 0.5 } = {}) {
    return this.#painter.call('png', this.#heatmapRequest(result, { colormap, scaling, alpha }));
  }

  #heatmapRequest(result, style) {
    const p = result.prepared;
    return {
      photo: p.photo,
      width: p.width,
      height: p.height,
      attributions: result.attributions,
      shape: result.shape,
      style: { method: result.method, ...style },
    };
  }

  /** The raw attributions as safetensors (`attributions`, `logits`, `targets`, ...), as the CLI writes them. */
  async attributionsSafetensors(result) {
    return this.#painter.call('explanationSafetensors', {
      attributions: result.attributions,
      shape: result.shape,
      logits: result.logits,
      target: result.target,
      convergenceDelta: result.convergenceDelta,
    });
  }

  /** The preprocessed input as `candle-xai explain --input` reads it. */
  async inputSafetensors(prepared, target) {
    return this.#painter.call('inputSafetensors', {
      input: prepared.input,
      shape: prepared.shape,
      target: target ?? null,
    });
  }

  dispose({ keepPainter = false } = {}) {
    this.#pool.dispose();
    if (!keepPainter) this.#painter.dispose();
  }
}
