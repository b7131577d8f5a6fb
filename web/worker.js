// The engine's Web Worker: all wasm work (decoding, preprocessing, explaining, rendering) runs
// here so the page never freezes. Started by web/xai.js from a blob: URL; its first message
// brings the wasm-bindgen glue's URL and the compiled WebAssembly module, so a restarted worker
// (after a cancel) needs nothing from the network.
//
// Protocol: the page sends {id, type, ...args}; the worker answers {id, ok: true, result} or
// {id, ok: false, error, fatal}, and {id, progress: {done, total}} while explaining or evaluating.
//
// Backends: explanations run on WebGPU (the engine's WGSL kernels) when the page asks for it
// and the browser has an adapter, else on the CPU (WebAssembly). The model is always loaded on
// the CPU too: prediction, and the fallback when the GPU fails mid-run.

let xai = null;
let exports = null; // the wasm instance's exports (its memory, for diagnostics)
let model = null; // on the CPU
let gpuModel = null; // the same weights on the GPU, when explanations run there
let gpu = null; // the engine's GpuDevice, once opened
let gpuProblem = null; // why explanations do not run on WebGPU, for the page
let gpuName = null; // the adapter, as the browser describes it
let backend = 'cpu'; // where explanations run: 'webgpu' or 'cpu'

let gpuIsSoftware = false;

const isSoftware = (adapter) => Boolean(adapter.info?.isFallbackAdapter || adapter.isFallbackAdapter);
const SOFTWARE_ONLY =
  'the only WebGPU adapter is a software one, slower than the CPU path (choose WebGPU to use it anyway)';

function adapterName(adapter) {
  const info = adapter.info ?? {};
  const name = [info.vendor, info.architecture, info.device, info.description].filter(Boolean).join(' ');
  return `${name || 'unnamed adapter'}${isSoftware(adapter) ? ' (software)' : ''}`;
}

/** Opens WebGPU. `auto` skips software adapters (SwiftShader): the CPU path is faster. */
async function openGpu(mode) {
  if (gpu && mode === 'auto' && gpuIsSoftware) {
    gpuProblem = SOFTWARE_ONLY;
    return false;
  }
  if (gpu) return true;
  if (!self.navigator?.gpu) {
    gpuProblem = 'this browser does not offer WebGPU';
    return false;
  }
  try {
    const adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
    if (!adapter) {
      gpuProblem = 'the browser found no WebGPU adapter';
      return false;
    }
    if (mode === 'auto' && isSoftware(adapter)) {
      gpuProblem = SOFTWARE_ONLY;
      return false;
    }
    gpu = await xai.GpuDevice.request();
    gpuName = adapterName(adapter);
    gpuIsSoftware = isSoftware(adapter);
    gpuProblem = null;
    return true;
  } catch (err) {
    gpuProblem = `WebGPU could not start: ${err.message ?? err}`;
    return false;
  }
}

/** Puts the CPU model's weights on the GPU when explanations run there. */
function uploadModel() {
  if (backend !== 'webgpu' || !model || gpuModel) return;
  try {
    gpuModel = model.onGpu(gpu);
  } catch (err) {
    fallBack(err);
  }
}

/** Gives WebGPU up after a failure (a lost device, a refused kernel, memory exhausted). */
function fallBack(err) {
  gpuModel?.free();
  gpuModel = null;
  gpu?.free();
  gpu = null;
  backend = 'cpu';
  gpuProblem = `WebGPU failed (${err.message ?? err}); explanations now run on the CPU`;
  return gpuProblem;
}

function backendInfo() {
  return { backend, gpuName: gpu ? gpuName : null, gpuProblem };
}

async function useBackend(wanted) {
  backend = wanted !== 'cpu' && (await openGpu(wanted)) ? 'webgpu' : 'cpu';
  if (backend === 'cpu') {
    gpuModel?.free();
    gpuModel = null;
  }
  uploadModel();
}

function modelInfo(m) {
  return {
    architecture: m.architecture,
    inputChannels: m.inputChannels,
    numClasses: m.numClasses ?? null,
    layers: m.layerNames(),
    defaultCamLayer: m.defaultCamLayer() ?? null,
    methods: m.applicableMethods(),
    inputSize: m.inputSize() ?? null,
  };
}

function requireModel() {
  if (!model) throw new Error('no model is loaded');
  return model;
}

/** Progress messages for request `id`. */
function reporter(id) {
  return (done, total) => {
    postMessage({ id, progress: { done, total } });
    return true;
  };
}

/** Runs `work(model)` on the GPU when explanations run there, else (or when the GPU fails) on
 * the CPU: {result, fallback (why the GPU was given up, or null), engineMs}. */
async function onBackend(work) {
  requireModel();
  const started = performance.now();
  let result;
  let fallback = null;
  if (gpuModel) {
    try {
      result = await work(gpuModel);
    } catch (err) {
      if (err?.name !== 'DeviceError') throw err;
      fallback = fallBack(err);
    }
  }
  result ??= await work(model);
  return { result, fallback, engineMs: performance.now() - started };
}

const handlers = {
  async init({ glueUrl, module, backend: wanted = 'cpu' }) {
    xai = await import(glueUrl);
    exports = await xai.default({ module_or_path: module });
    await useBackend(wanted);
    return { result: { version: xai.version(), colormaps: xai.colormaps(), ...backendInfo() } };
  },

  load({ bytes, name, graph, arch }) {
    const loaded = xai.Model.load(new Uint8Array(bytes), name, graph ?? undefined, arch ?? undefined);
    gpuModel?.free();
    gpuModel = null;
    model?.free();
    model = loaded;
    uploadModel();
    return { result: { ...modelInfo(model), ...backendInfo() } };
  },

  /** The GPU device is lost on purpose (tests of the fallback); the model stays on it. */
  loseGpuForTesting() {
    gpu?.loseForTesting();
    return { result: backendInfo() };
  },

  async backend({ backend: wanted }) {
    await useBackend(wanted);
    return { result: backendInfo() };
  },

  methods() {
    return { result: JSON.parse(xai.methods()) };
  },

  metricCatalog() {
    return { result: JSON.parse(xai.metricCatalog()) };
  },

  shares({ method, params }) {
    return { result: xai.shares(method, params ?? undefined) };
  },

  defaultStyle({ method }) {
    return { result: xai.defaultStyle(method) };
  },

  colormap({ colormap, steps }) {
    const colours = xai.colormapColors(colormap, steps);
    return { result: colours, transfer: [colours.buffer] };
  },

  preprocess({ bytes, name, size }) {
    const r = xai.preprocess(new Uint8Array(bytes), name, size ?? undefined);
    return { result: r, transfer: [r.input.buffer, r.photo.buffer] };
  },

  predict({ input, shape }) {
    const logits = requireModel().predict(input, Uint32Array.from(shape));
    return { result: logits, transfer: [logits.buffer] };
  },

  async explain({ input, shape, method, params, target, layer, share }, id) {
    const { result: r, fallback, engineMs } = await onBackend((m) =>
      m.explain(
        input,
        Uint32Array.from(shape),
        method,
        params ?? undefined,
        target ?? undefined,
        layer ?? undefined,
        share ? Uint32Array.from(share) : undefined,
        reporter(id),
      ),
    );
    r.fallback = fallback;
    r.backend = backend;
    if (backend === 'webgpu') r.device = `WebGPU: ${gpuName}`;
    r.engineMs = engineMs;
    r.memoryBytes = exports.memory.buffer.byteLength;
    return { result: r, transfer: [r.attributions.buffer, r.logits.buffer] };
  },

  /** Scores attributions with the metrics: {targets, scores: [{metric, higher_is_better, values, ...}]}. */
  async evaluate({ input, shape, attributions, attributionsShape, metrics, target, method, params }, id) {
    const { result: json, fallback, engineMs } = await onBackend((m) =>
      m.evaluate(
        input,
        Uint32Array.from(shape),
        attributions,
        Uint32Array.from(attributionsShape),
        JSON.stringify(metrics),
        target,
        method ?? undefined,
        params ?? undefined,
        reporter(id),
      ),
    );
    return { result: { ...JSON.parse(json), fallback, backend, engineMs } };
  },

  /** Tunes a method's parameters: {method, defaults, best, best_method, trials}. */
  async optimize({ input, shape, method, params, target, objective, nTrials, seed }, id) {
    const { result: json, fallback, engineMs } = await onBackend((m) =>
      m.optimize(input, Uint32Array.from(shape), method, params ?? undefined, target, objective, nTrials, seed, reporter(id)),
    );
    return { result: { ...JSON.parse(json), fallback, backend, engineMs } };
  },

  overlay({ photo, width, height, attributions, shape, style }) {
    const r = xai.overlay(photo, width, height, attributions, Uint32Array.from(shape), JSON.stringify(style));
    return { result: r, transfer: [r.rgba.buffer] };
  },

  png({ photo, width, height, attributions, shape, style }) {
    const bytes = xai.renderPng(photo, width, height, attributions, Uint32Array.from(shape), JSON.stringify(style));
    return { result: bytes, transfer: [bytes.buffer] };
  },

  inputSafetensors({ input, shape, target }) {
    const bytes = xai.inputSafetensors(input, Uint32Array.from(shape), target ?? undefined);
    return { result: bytes, transfer: [bytes.buffer] };
  },

  explanationSafetensors({ attributions, shape, logits, target, convergenceDelta }) {
    const bytes = xai.explanationSafetensors(
      attributions,
      Uint32Array.from(shape),
      logits,
      target,
      convergenceDelta ?? undefined,
    );
    return { result: bytes, transfer: [bytes.buffer] };
  },
};

self.onmessage = async (event) => {
  const { id, type, ...args } = event.data;
  try {
    const handler = handlers[type];
    if (!handler) throw new Error(`unknown request ${type}`);
    if (!xai && type !== 'init') throw new Error('the engine is not initialised');
    const { result, transfer = [] } = await handler(args, id);
    postMessage({ id, ok: true, result }, transfer);
  } catch (err) {
    // A wasm trap (a panic, or memory exhausted) leaves the instance unusable: the page
    // restarts the worker when `fatal` is set.
    const fatal = err instanceof WebAssembly.RuntimeError || err instanceof RangeError;
    let error = err && err.message ? err.message : String(err);
    if (fatal) {
      error = /memory|allocat/i.test(error)
        ? `the engine ran out of memory (${error})`
        : `the engine stopped with an internal error (${error}); it has been restarted`;
    }
    postMessage({ id, ok: false, error, fatal });
  }
};
