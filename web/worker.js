// The engine's Web Worker: all wasm work (decoding, preprocessing, explaining, rendering) runs
// here so the page never freezes. Started by web/xai.js from a blob: URL; its first message
// brings the wasm-bindgen glue's URL and the compiled WebAssembly module, so a restarted worker
// (after a cancel) needs nothing from the network.
//
// Protocol: the page sends {id, type, ...args}; the worker answers {id, ok: true, result} or
// {id, ok: false, error, fatal}, and {id, progress: {done, total}} while explaining.

let xai = null;
let exports = null; // the wasm instance's exports (its memory, for diagnostics)
let model = null;

function modelInfo(m) {
  return {
    architecture: m.architecture,
    inputChannels: m.inputChannels,
    numClasses: m.numClasses ?? null,
    layers: m.layerNames(),
    defaultCamLayer: m.defaultCamLayer() ?? null,
  };
}

function requireModel() {
  if (!model) throw new Error('no model is loaded');
  return model;
}

const handlers = {
  async init({ glueUrl, module }) {
    xai = await import(glueUrl);
    exports = await xai.default({ module_or_path: module });
    return { result: { version: xai.version(), colormaps: xai.colormaps() } };
  },

  load({ bytes, name, graph, arch }) {
    const loaded = xai.Model.load(new Uint8Array(bytes), name, graph ?? undefined, arch ?? undefined);
    if (model) model.free();
    model = loaded;
    return { result: modelInfo(model) };
  },

  methods() {
    return { result: JSON.parse(xai.methods()) };
  },

  colormap({ colormap, steps }) {
    const colours = xai.colormapColors(colormap, steps);
    return { result: colours, transfer: [colours.buffer] };
  },

  preprocess({ bytes, name }) {
    const r = xai.preprocess(new Uint8Array(bytes), name);
    return { result: r, transfer: [r.input.buffer, r.photo.buffer] };
  },

  predict({ input, shape }) {
    const logits = requireModel().predict(input, Uint32Array.from(shape));
    return { result: logits, transfer: [logits.buffer] };
  },

  explain({ input, shape, method, params, target, layer }, id) {
    const progress = (done, total) => {
      postMessage({ id, progress: { done, total } });
      return true;
    };
    const started = performance.now();
    const r = requireModel().explain(
      input,
      Uint32Array.from(shape),
      method,
      params ?? undefined,
      target ?? undefined,
      layer ?? undefined,
      progress,
    );
    r.engineMs = performance.now() - started;
    r.memoryBytes = exports.memory.buffer.byteLength;
    return { result: r, transfer: [r.attributions.buffer, r.logits.buffer] };
  },

  overlay({ photo, width, height, attributions, shape, colormap, alpha }) {
    const r = xai.overlay(photo, width, height, attributions, Uint32Array.from(shape), colormap, alpha);
    return { result: r, transfer: [r.rgba.buffer] };
  },

  png({ photo, width, height, attributions, shape, colormap, alpha }) {
    const bytes = xai.renderPng(photo, width, height, attributions, Uint32Array.from(shape), colormap, alpha);
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
