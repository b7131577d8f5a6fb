// The WebGPU path in the browser: Chromium's software adapter (SwiftShader, through
// --enable-unsafe-webgpu) runs the engine's WGSL kernels in the page's worker.
//
// 1. Every method and LRP composite on the three MNIST fixture models gives, on WebGPU, the
//    attributions the CPU (WebAssembly) path gives in the same page, within 1e-4 of the largest
//    attribution, element by element, for the whole batch of four digits.
// 2. The page: "Automatic" stays on the CPU with a software adapter and says why; choosing the
//    GPU explains the cat photo there (Grad-CAM, equal to the CPU's within 1e-4) and says so.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, serve, launch, openApp, idle, screenshot, readSafetensors, relativeError } from './harness.mjs';

const TOLERANCE = 1e-4;
const MNIST = join(ROOT, 'tests/fixtures/mnist');
const MODELS = ['mlp', 'vgg', 'resnet'];
const PARAMS = { 'integrated-gradients': { n_steps: 8 }, smoothgrad: { n_samples: 4 } };

let server;
let browser;
let page;
let errors;

before(async () => {
  server = await serve();
  browser = await launch({ webgpu: true });
  ({ page, errors } = await openApp(browser, server.url));
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** Every method on `backend` in the page, for one fixture model: {method: {attributions, shape, backend, device}}. */
async function explainAll(name, backend) {
  const model = readFileSync(join(MNIST, `${name}.safetensors`)).toString('base64');
  const graph = readFileSync(join(MNIST, `${name}.graph.json`), 'utf8');
  const inputs = readSafetensors(readFileSync(join(MNIST, `${name}_refs.safetensors`))).inputs;
  return page.evaluate(
    async ({ model, graph, input, shape, backend, params }) => {
      const { Explainer } = await import('./web/xai.js');
      const bytes = Uint8Array.from(atob(model), (c) => c.charCodeAt(0));
      const explainer = await Explainer.load(bytes, { name: 'mnist.safetensors', graph, backend });
      const [, , h, w] = shape;
      const prepared = { input: new Float32Array(input), shape, photo: new Uint8Array(h * w * 3), width: w, height: h };
      const out = { backend: explainer.backend };
      try {
        // The methods that apply: Grad-CAM needs a convolutional layer, which the MLP does not
        // have, and none of these models has the attention the transformer methods read.
        for (const method of explainer.info.methods) {
          const r = await explainer.explain(prepared, { method, params: params[method] ?? {} });
          out[method] = { attributions: Array.from(r.attributions), shape: r.shape, backend: r.backend, device: r.device, fallback: r.fallback };
        }
      } finally {
        explainer.dispose();
      }
      return out;
    },
    { model, graph, input: Array.from(inputs.data), shape: inputs.shape, backend, params: PARAMS },
  );
}

for (const name of MODELS) {
  test(`${name}: every method on WebGPU equals the CPU's`, async () => {
    const gpu = await explainAll(name, 'webgpu');
    assert.equal(gpu.backend.backend, 'webgpu', `WebGPU did not start: ${gpu.backend.gpuProblem}`);
    const cpu = await explainAll(name, 'cpu');
    assert.equal(cpu.backend.backend, 'cpu');
    const methods = Object.keys(cpu).filter((k) => k !== 'backend');
    assert.equal(methods.length, name === 'mlp' ? 11 : 12);
    for (const method of methods) {
      assert.equal(gpu[method].backend, 'webgpu', `${method} ran on ${gpu[method].backend}: ${gpu[method].fallback}`);
      assert.equal(cpu[method].device, 'cpu');
      assert.deepEqual(gpu[method].shape, cpu[method].shape, method);
      const e = relativeError(gpu[method].attributions, cpu[method].attributions, TOLERANCE);
      assert.ok(e.maxRef > 0, `${method}: all-zero attributions`);
      assert.ok(e.relative <= TOLERANCE, `${name} ${method}: WebGPU differs from the CPU by ${e.relative.toExponential(2)} of the maximum at ${e.at}`);
    }
  });
}

test('the page: automatic skips a software adapter; choosing the GPU explains the photo there', async () => {
  await page.evaluate(() => window.xaiApp.usePhoto(new URL('web/assets/samples/chelsea.png', location.href).href));
  await idle(page);
  assert.equal(await page.$eval('body', (b) => b.dataset.backend), 'cpu');
  assert.match(await page.$eval('#backend-info', (e) => e.textContent), /CPU .*software/);

  const explainWith = async (backend) => {
    await page.selectOption('#backend', backend);
    await idle(page);
    await page.selectOption('#method', 'grad-cam');
    await page.click('#explain');
    await idle(page);
    return page.evaluate(() => window.xaiApp.lastResult());
  };
  const onGpu = await explainWith('webgpu');
  assert.equal(await page.$eval('body', (b) => b.dataset.backend), 'webgpu');
  assert.match(await page.$eval('#backend-info', (e) => e.textContent), /run on the GPU/);
  assert.match(await page.$eval('#status', (e) => e.textContent), /Done: Grad-CAM .* on the GPU/);
  assert.equal(onGpu.backend, 'webgpu');
  await screenshot(page, 'webgpu-grad-cam');
  const onCpu = await explainWith('cpu');
  assert.equal(onCpu.backend, 'cpu');
  const decode = (r) => new Float32Array(Uint8Array.from(Buffer.from(r.attributions, 'base64')).buffer);
  const e = relativeError(decode(onGpu), decode(onCpu), TOLERANCE);
  assert.ok(e.relative <= TOLERANCE, `Grad-CAM on WebGPU differs from the CPU by ${e.relative.toExponential(2)}`);
  // A lost GPU: the run is redone on the CPU, the page says so and stays on the CPU.
  await page.selectOption('#backend', 'webgpu');
  await idle(page);
  assert.equal(await page.$eval('body', (b) => b.dataset.backend), 'webgpu');
  await page.evaluate(() => window.xaiApp.state.explainer.loseGpuForTesting());
  const after = await explainWith('webgpu');
  assert.equal(after.backend, 'cpu', `after losing the GPU: ${JSON.stringify(after)}`);
  assert.match(await page.$eval('#error', (e) => e.textContent), /GPU failed, so this ran on the CPU: WebGPU failed \(.*lost/);
  assert.equal(await page.$eval('#backend', (e) => e.value), 'cpu');
  assert.equal(await page.$eval('body', (b) => b.dataset.backend), 'cpu');
  const e2 = relativeError(decode(after), decode(onCpu), TOLERANCE);
  assert.ok(e2.relative <= TOLERANCE, 'the fallback run equals the CPU run');
  // Back to automatic: the software adapter, though open, is not used.
  await page.selectOption('#backend', 'auto');
  await idle(page);
  assert.equal(await page.$eval('body', (b) => b.dataset.backend), 'cpu');
  assert.match(await page.$eval('#backend-info', (e) => e.textContent), /CPU .*software/);
  assert.deepEqual(errors, []);
});
