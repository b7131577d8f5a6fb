// <xai-explainer>: a heatmap explaining an image classifier's prediction, computed on the
// visitor's device by candle-xai (WebAssembly in a Web Worker). One script tag:
//
//   <script type="module" src="web/xai-explainer.js"></script>
//   <xai-explainer src="cat.jpg" method="lrp-epsilon-plus"></xai-explainer>
//
// Attributes (each change re-explains):
//   src       the photo (PNG, JPEG or WebP URL)                          required
//   model     .safetensors / .pth URL            default: ImageNet MobileNetV2 shipped with the page
//   method    a method name (Explainer.methods())                        default: gradient
//   params    JSON overrides of the method's parameters, e.g. '{"n_steps": 16}'
//   target    class index to explain                                    default: the top prediction
//   layer     Grad-CAM's layer                                          default: the model's last conv
//   colormap  bwr | hot | gray | positive          default: hot for Grad-CAM and attention, else bwr
//   scaling   outliers:P (captum: P% of the mass clipped) | level:L (zennit: saturates at
//             1/L of the largest magnitude)     default: level:3 for LRP, outliers:2 otherwise
//   alpha     heatmap opacity, 0..1                                     default: 0.5
//   size      rendered width in CSS pixels                              default: 224
//   backend   auto | webgpu | cpu: where explanations run                default: auto (WebGPU on a
//             hardware adapter, else WebAssembly on the CPU)
// Properties: `result` (the last explanation: attributions, shape, target, label, ...),
// `explainer` (the Explainer in use). Events: `xai-result` (detail: the result), `xai-error`
// (detail: {message}). The JavaScript API (all of xai.js: Explainer, ...) is re-exported from
// this module.

import { Explainer, DEFAULT_MODEL_URL } from './xai.js';

export * from './xai.js';

// One Explainer per model URL and backend, shared by every element on the page.
const explainers = new Map();
function explainerFor(modelUrl, backend = 'auto') {
  const url = new URL(modelUrl, document.baseURI).href;
  const key = `${backend} ${url}`;
  if (!explainers.has(key)) {
    const promise = Explainer.load(url, { backend });
    promise.catch(() => explainers.delete(key));
    explainers.set(key, promise);
  }
  return explainers.get(key);
}

// The engine runs one explanation at a time; elements queue so each gets its own run.
let queue = Promise.resolve();
function enqueue(task) {
  const run = queue.then(task, task);
  queue = run.catch(() => {});
  return run;
}

const TEMPLATE = `
<style>
  :host { display: inline-block; font: 14px/1.4 system-ui, sans-serif; color: #1b1f24; vertical-align: top; }
  figure { margin: 0; display: inline-flex; flex-direction: column; gap: 4px; }
  .view { display: flex; gap: 4px; align-items: stretch; }
  canvas.heat { width: var(--xai-size, 224px); height: var(--xai-size, 224px); background: #eceef2; border-radius: 4px; }
  .bar { display: flex; flex-direction: column; align-items: center; font-size: 10px; font-variant-numeric: tabular-nums; }
  .bar canvas { flex: 1 1 0; min-height: 0; height: 0; width: 10px; border: 1px solid #333; }
  figcaption { font-size: 12px; max-width: var(--xai-size, 224px); }
  progress { width: var(--xai-size, 224px); height: 6px; }
  .error { color: #a4161a; }
  [hidden] { display: none !important; }
</style>
<figure part="figure">
  <div class="view">
    <canvas class="heat" part="canvas" width="224" height="224" role="img"></canvas>
    <div class="bar" part="colorbar"><span class="high"></span><canvas width="1" height="224"></canvas><span class="low"></span></div>
  </div>
  <progress max="1" aria-label="Explaining"></progress>
  <figcaption part="caption" aria-live="polite">Loading…</figcaption>
</figure>`;

export class XaiExplainer extends HTMLElement {
  static observedAttributes = ['src', 'model', 'method', 'params', 'target', 'layer', 'colormap', 'scaling', 'alpha', 'size', 'backend'];

  #root;
  #run = 0;
  #scheduled = false;
  result = null;
  explainer = null;

  constructor() {
    super();
    this.#root = this.attachShadow({ mode: 'open' });
    this.#root.innerHTML = TEMPLATE;
  }

  connectedCallback() {
    this.#schedule();
  }

  attributeChangedCallback(name, oldValue, newValue) {
    if (oldValue === newValue || !this.isConnected) return;
    if (name === 'size') this.style.setProperty('--xai-size', `${Number(newValue) || 224}px`);
    if (['colormap', 'scaling', 'alpha'].includes(name) && this.result) this.#repaint();
    else this.#schedule();
  }

  #schedule() {
    if (this.#scheduled) return;
    this.#scheduled = true;
    queueMicrotask(() => {
      this.#scheduled = false;
      this.#explain();
    });
  }

  #el(selector) {
    return this.#root.querySelector(selector);
  }

  #caption(text, error = false) {
    const c = this.#el('figcaption');
    c.textContent = text;
    c.classList.toggle('error', error);
  }

  #options() {
    let params = {};
    const raw = this.getAttribute('params');
    if (raw) {
      try {
        params = JSON.parse(raw);
      } catch (e) {
        throw new Error(`params is not valid JSON: ${e.message}`);
      }
    }
    const target = this.getAttribute('target');
    const alpha = this.getAttribute('alpha');
    return {
      method: this.getAttribute('method') || 'gradient',
      params,
      target: target === null || target === '' ? undefined : Number(target),
      layer: this.getAttribute('layer') || undefined,
      colormap: this.getAttribute('colormap') || null,
      scaling: this.getAttribute('scaling') || null,
      alpha: alpha === null ? 0.5 : Number(alpha),
    };
  }

  async #explain() {
    const run = ++this.#run;
    const src = this.getAttribute('src');
    if (this.hasAttribute('size')) this.style.setProperty('--xai-size', `${Number(this.getAttribute('size')) || 224}px`);
    if (!src) {
      this.#caption('No image (set the src attribute).', true);
      return;
    }
    const progress = this.#el('progress');
    progress.hidden = false;
    progress.removeAttribute('value');
    try {
      const options = this.#options();
      this.#caption('Loading the model…');
      const explainer = await explainerFor(this.getAttribute('model') || DEFAULT_MODEL_URL, this.getAttribute('backend') || 'auto');
      if (run !== this.#run) return;
      this.explainer = explainer;
      const name = await explainer.methodLabel(options.method);
      if (run !== this.#run) return;
      const result = await enqueue(async () => {
        if (run !== this.#run) return null;
        this.#caption(`Explaining with ${name}…`);
        const image = new URL(src, document.baseURI).href;
        return explainer.explain(image, {
          ...options,
          canvas: this.#el('canvas.heat'),
          onProgress: (done, total) => {
            if (run !== this.#run) return;
            progress.max = Math.max(total, 1);
            progress.value = done;
          },
        });
      });
      if (!result || run !== this.#run) return;
      this.result = result;
      await this.#drawBar(result);
      const p = result.probabilities[result.target];
      const where = result.backend === 'webgpu' ? 'GPU' : 'CPU';
      this.#caption(`${result.label} (${(p * 100).toFixed(1)}%) · ${name} · ${(result.elapsedMs / 1000).toFixed(2)} s on the ${where}`);
      this.#el('canvas.heat').setAttribute('aria-label', `${name} heatmap of ${src} for ${result.label}`);
      this.dispatchEvent(new CustomEvent('xai-result', { detail: result, bubbles: true }));
    } catch (e) {
      if (run !== this.#run) return;
      this.result = null;
      const canvas = this.#el('canvas.heat');
      canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
      canvas.setAttribute('aria-label', 'No heatmap');
      this.#el('.bar canvas').getContext('2d').clearRect(0, 0, 1, 224);
      this.#el('.bar .high').textContent = '';
      this.#el('.bar .low').textContent = '';
      this.#caption(`Could not explain: ${e.message}`, true);
      this.dispatchEvent(new CustomEvent('xai-error', { detail: { message: e.message }, bubbles: true }));
    } finally {
      if (run === this.#run) progress.hidden = true;
    }
  }

  async #repaint() {
    const { colormap, scaling, alpha } = this.#options();
    const r = await this.explainer.render(this.result, { colormap, scaling, alpha, canvas: this.#el('canvas.heat') });
    Object.assign(this.result, r);
    await this.#drawBar(this.result);
  }

  async #drawBar(result) {
    await this.explainer.colorbar(result.colormap, { width: 1, height: 224, canvas: this.#el('.bar canvas') });
    this.#el('.bar .high').textContent = result.high.toExponential(1);
    this.#el('.bar .low').textContent = result.low.toExponential(1);
  }
}

if (!customElements.get('xai-explainer')) customElements.define('xai-explainer', XaiExplainer);
