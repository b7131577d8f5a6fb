// A vision transformer on the page: timm's distilled DeiT (the parity fixture's seeded weights,
// 64x64 images in patches of 8, written as .safetensors and .pth by examples/seeded_model.rs in
// scripts/test-web.sh), dropped on the page in both formats and recognised under timm's names.
// The photo is prepared at the model's own size (64x64). "Compare all methods" shows every
// method, the transformer ones (attention rollout, gradient-weighted attention, AttnLRP, CP-LRP)
// included; every method on WebGPU equals the CPU's (WebAssembly) within 1e-4 of the largest
// attribution or, where the explanation itself is that sensitive, within 4x what the CPU's own
// result moves when the input moves by one ulp up or down, whichever moves it more (zennit's
// composites take the plain gradient through attention's products and softmax, which these
// random weights make ill-conditioned; one direction alone is one sample of that sensitivity:
// the flat composites moved 1.2e-3 up and 2.8e-4 after a change to the kernels' summation
// order, while WebGPU stayed 1.3-1.4e-3 from the CPU);
// AttnLRP on the page equals the native CLI's for the same preprocessed photo.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, serve, launch, openApp, idle, dropModel, screenshot, readSafetensors, relativeError, fromBase64 } from './harness.mjs';

const CLI = process.env.CANDLE_XAI_BIN ?? join(ROOT, 'target/release/candle-xai');
const MODELS = process.env.XAI_E2E_MODELS ?? join(ROOT, 'target/e2e-models');
const NAME = 'timm_deit_w128_d2_distilled_patch8_64';
const TOLERANCE = 1e-4;
const FLOOR_FACTOR = 4;
const PARAMS = { 'integrated-gradients': { n_steps: 8 }, smoothgrad: { n_samples: 4 } };
const TRANSFORMER_METHODS = ['attention-rollout', 'generic-attention', 'lrp-attn', 'lrp-cp'];

let server;
let browser;
let page;
let errors;
const work = mkdtempSync(join(tmpdir(), 'xai-vit-'));

before(async () => {
  for (const ext of ['safetensors', 'pth']) {
    assert.ok(existsSync(join(MODELS, `${NAME}.${ext}`)), `${NAME}.${ext} is missing: scripts/test-web.sh writes it`);
  }
  server = await serve();
  browser = await launch({ webgpu: true });
  ({ page, errors } = await openApp(browser, server.url));
});

after(async () => {
  await browser?.close();
  await server?.close();
});


test('DeiT as .pth: recognised; the photo is prepared at its 64x64', async () => {
  await dropModel(page, join(MODELS, `${NAME}.pth`), NAME);
  await page.evaluate(() => window.xaiApp.usePhoto(new URL('web/assets/samples/chelsea.png', location.href).href));
  await idle(page);
  assert.equal(await page.$eval('#error', (e) => e.textContent), '');
  assert.match(await page.$eval('#photo-info', (e) => e.textContent), /\(64×64\)/);
  assert.equal(await page.$eval('#crop-size', (e) => e.textContent), '64');
  assert.equal(await page.$eval('#resize-size', (e) => e.textContent), '73');
});

test('DeiT as .safetensors: compare all shows every method, the transformer ones included', async () => {
  await dropModel(page, join(MODELS, `${NAME}.safetensors`), NAME);
  await page.selectOption('#backend', 'cpu');
  await idle(page);
  const offered = await page.$$eval('#method option', (os) => os.map((o) => o.value));
  for (const m of TRANSFORMER_METHODS) assert.ok(offered.includes(m), `${m} is not offered: ${offered}`);
  await page.click('#compare');
  await page.waitForFunction(() => /^Compared \d+ methods/.test(document.getElementById('status').textContent), null, { timeout: 600_000 });
  assert.equal(await page.$eval('#error', (e) => e.textContent), '');
  const captions = await page.$$eval('#grid .caption', (cs) => cs.map((c) => c.textContent));
  assert.equal(captions.length, offered.length);
  for (const label of ['Attention rollout', 'Gradient-weighted attention', 'AttnLRP', 'CP-LRP']) {
    assert.ok(captions.some((c) => c.startsWith(label)), `no ${label} in the grid: ${captions}`);
  }
  await screenshot(page, 'transformer-compare-all');
});

test('DeiT: every method on WebGPU equals the CPU; AttnLRP on the page equals the CLI', async () => {
  const both = await page.evaluate(
    async ({ params }) => {
      const explainer = window.xaiApp.state.explainer;
      const prepared = window.xaiApp.state.prepared;
      // The same input one ulp up, and one ulp down, element by element.
      const nudged = (step) => {
        const input = new Float32Array(prepared.input);
        const bits = new Uint32Array(input.buffer);
        for (let i = 0; i < bits.length; i++) bits[i] += step;
        return { ...prepared, input };
      };
      const out = {};
      const runs = [['webgpu', 'webgpu', prepared], ['cpu', 'cpu', prepared], ['up', 'cpu', nudged(1)], ['down', 'cpu', nudged(-1)]];
      for (const [run, backend, photo] of runs) {
        await explainer.setBackend(backend);
        out[run] = {};
        for (const method of explainer.applicableMethods) {
          const r = await explainer.explain(photo, { method, params: params[method] ?? {} });
          out[run][method] = { values: Array.from(r.attributions), backend: r.backend, fallback: r.fallback, target: r.target };
        }
      }
      return out;
    },
    { params: PARAMS },
  );
  const methods = Object.keys(both.cpu);
  assert.equal(methods.length, 16);
  const failures = [];
  for (const method of methods) {
    const gpu = both.webgpu[method];
    assert.equal(gpu.backend, 'webgpu', `${method} ran on ${gpu.backend}: ${gpu.fallback}`);
    const cpu = Float32Array.from(both.cpu[method].values);
    const floor = Math.max(
      ...['up', 'down'].map((run) => relativeError(Float32Array.from(both[run][method].values), cpu, TOLERANCE).relative),
    );
    const allowed = Math.max(TOLERANCE, FLOOR_FACTOR * floor);
    const e = relativeError(Float32Array.from(gpu.values), cpu, TOLERANCE);
    console.log(`${method}: WebGPU vs CPU ${e.relative.toExponential(2)}, CPU vs CPU one ulp away ${floor.toExponential(2)}`);
    assert.ok(e.maxRef > 0, `${method}: all-zero attributions`);
    if (e.relative > allowed) failures.push(`${method}: WebGPU differs from the CPU by ${e.relative.toExponential(2)} > ${allowed.toExponential(2)} at ${e.at}`);
  }
  assert.deepEqual(failures, []);
  const input = join(work, 'input.safetensors');
  writeFileSync(input, fromBase64(await page.evaluate(() => window.xaiApp.inputSafetensors())));
  const out = join(work, 'cli.safetensors');
  const model = join(MODELS, `${NAME}.safetensors`);
  const cli = spawnSync(CLI, ['explain', '--model', model, '--input', input, '--method', 'lrp-attn', '--out', out], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  assert.equal(cli.status, 0, `CLI failed: ${cli.stderr}`);
  const theirs = readSafetensors(readFileSync(out));
  assert.equal(Number(theirs.targets.data[0]), both.cpu['lrp-attn'].target);
  const e = relativeError(Float32Array.from(both.cpu['lrp-attn'].values), theirs.attributions.data, TOLERANCE);
  assert.ok(e.relative <= TOLERANCE, `AttnLRP: the page differs from the CLI by ${e.relative.toExponential(2)} at ${e.at}`);
});

test('back to the default model; no errors in the console', async () => {
  await page.evaluate(() => {
    document.getElementById('model-panel').open = true;
  });
  await page.click('#default-model');
  await page.waitForFunction(() => /MobileNetV2/.test(document.getElementById('model-name').textContent));
  await idle(page);
  const offered = await page.$$eval('#method option', (os) => os.map((o) => o.value));
  for (const m of TRANSFORMER_METHODS) assert.ok(!offered.includes(m), `${m} is offered for a CNN`);
  assert.deepEqual(errors, []);
});
