// Today's CNN families on the page: an EfficientNet and a ConvNeXt (torchvision layouts with the
// parity fixtures' seeded weights, written as .safetensors and .pth by examples/seeded_model.rs
// in scripts/test-web.sh), each dropped on the page in both formats, recognised, and explained
// with LRP (lxt's rules, which pass through every new operation) on the CPU (WebAssembly), and
// with the gradient on WebGPU (Chromium's software adapter, on a 64x64 input: a 224x224 pass
// takes it minutes): the
// page's attributions equal the native CLI's for the same preprocessed photo, and WebGPU's equal
// the CPU's, within 1e-4 of the largest attribution or, where the explanation itself is that sensitive, within 4x what the CLI's own result moves
// when its input moves by one ulp (the Gamma rule's denominators come near zero in ConvNeXt with
// these random weights: 3e-4 of the maximum, measured), as tests/e2e/parity.test.mjs does.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ROOT, serve, launch, openApp, idle, dropModel, screenshot, readSafetensors, relativeError, fromBase64, nudge,
} from './harness.mjs';

const CLI = process.env.CANDLE_XAI_BIN ?? join(ROOT, 'target/release/candle-xai');
const MODELS = process.env.XAI_E2E_MODELS ?? join(ROOT, 'target/e2e-models');
const TOLERANCE = 1e-4;
const FLOOR_FACTOR = 4;
const METHOD = 'lrp-gamma-identity';
const CASES = [
  ['efficientnet_b0', 'EfficientNet-B0'],
  ['convnext_tiny', 'ConvNeXt-Tiny'],
];

let server;
let browser;
let page;
let errors;
const work = mkdtempSync(join(tmpdir(), 'xai-modern-'));

before(async () => {
  for (const [name] of CASES) {
    for (const ext of ['safetensors', 'pth']) {
      assert.ok(existsSync(join(MODELS, `${name}.${ext}`)), `${name}.${ext} is missing: scripts/test-web.sh writes it`);
    }
  }
  server = await serve();
  browser = await launch({ webgpu: true });
  ({ page, errors } = await openApp(browser, server.url));
});

after(async () => {
  await browser?.close();
  await server?.close();
});


async function explainOnCpu() {
  await page.selectOption('#backend', 'cpu');
  await idle(page);
  await page.selectOption('#method', METHOD);
  await page.click('#explain');
  await page.waitForFunction(
    (m) => document.body.dataset.state === 'idle' && (document.body.dataset.resultMethod === m || document.getElementById('error').textContent),
    METHOD,
    { timeout: 600_000 },
  );
  assert.equal(await page.$eval('#error', (e) => e.textContent), '');
  const result = await page.evaluate(() => window.xaiApp.lastResult());
  assert.equal(result.backend, 'cpu');
  return { ...result, values: new Float32Array(fromBase64(result.attributions).buffer) };
}

function cliExplain(model, input, target) {
  const out = join(work, 'cli.safetensors');
  const cli = spawnSync(CLI, ['explain', '--model', model, '--input', input, '--method', METHOD, '--out', out], {
    encoding: 'utf8',
    timeout: 600_000,
  });
  assert.equal(cli.status, 0, `CLI failed: ${cli.stderr}`);
  const theirs = readSafetensors(readFileSync(out));
  assert.equal(Number(theirs.targets.data[0]), target);
  return theirs.attributions.data;
}

const describe = (e) => `${e.relative.toExponential(2)} of the maximum ${e.maxRef.toExponential(2)}, at ${e.at}`;

for (const [name, label] of CASES) {
  for (const ext of ['safetensors', 'pth']) {
    const onGpuToo = ext === 'safetensors' ? ', and on WebGPU as on the CPU' : '';
    test(`${label} as .${ext}: recognised, and explained on the CPU as the CLI explains it${onGpuToo}`, async () => {
      await dropModel(page, join(MODELS, `${name}.${ext}`), name);
      await page.evaluate(() => window.xaiApp.usePhoto(new URL('web/assets/samples/chelsea.png', location.href).href));
      await idle(page);
      const onCpu = await explainOnCpu();
      const input = join(work, `${name}-input.safetensors`);
      const nudged = join(work, `${name}-input-ulp.safetensors`);
      const bytes = fromBase64(await page.evaluate(() => window.xaiApp.inputSafetensors()));
      writeFileSync(input, bytes);
      writeFileSync(nudged, nudge(bytes));
      const model = join(MODELS, `${name}.safetensors`);
      const cli = cliExplain(model, input, onCpu.target);
      const floor = relativeError(cliExplain(model, nudged, onCpu.target), cli, TOLERANCE);
      const allowed = Math.max(TOLERANCE, FLOOR_FACTOR * floor.relative);
      const e = relativeError(onCpu.values, cli, TOLERANCE);
      console.log(
        `${label} .${ext}: ${onCpu.elapsedMs.toFixed(0)} ms on the CPU; page vs CLI ${describe(e)}; ` +
          `CLI vs CLI one ulp away ${describe(floor)}`,
      );
      assert.ok(e.relative <= allowed, `${label}: the page differs from the CLI by ${describe(e)} > ${allowed}`);
      await screenshot(page, `modern-${name}-${ext}`);
      if (ext !== 'safetensors') return;
      // WebGPU through the page's own explainer, on the fixture's 64x64 input, with the
      // gradient (smooth everywhere in these models): a software adapter takes minutes for a
      // 224x224 pass, and 90 s for ConvNeXt's LRP at 64x64. The LRP rules' kernels are the
      // backend suite's and the parity suite's (tests/engine) on wgpu.
      const fixture = readSafetensors(readFileSync(join(ROOT, `tests/fixtures/${name}_refs.safetensors`)));
      const small = Array.from(fixture.inputs.data.subarray(0, 3 * 64 * 64));
      const both = await page.evaluate(
        async ({ input, method }) => {
          const explainer = window.xaiApp.state.explainer;
          const prepared = { input: new Float32Array(input), shape: [1, 3, 64, 64], photo: new Uint8Array(64 * 64 * 3), width: 64, height: 64 };
          const run = async (backend) => {
            await explainer.setBackend(backend);
            const started = performance.now();
            const r = await explainer.explain(prepared, { method });
            return { values: Array.from(r.attributions), backend: r.backend, fallback: r.fallback, ms: performance.now() - started };
          };
          const gpu = await run('webgpu');
          const cpu = await run('cpu');
          return { gpu, cpu };
        },
        { input: small, method: 'gradient' },
      );
      assert.equal(both.gpu.backend, 'webgpu', `WebGPU did not run: ${both.gpu.fallback}`);
      const g = relativeError(Float32Array.from(both.gpu.values), Float32Array.from(both.cpu.values), TOLERANCE);
      console.log(`${label} 64x64: ${both.gpu.ms.toFixed(0)} ms on WebGPU, ${both.cpu.ms.toFixed(0)} ms on the CPU; WebGPU vs CPU ${describe(g)}`);
      assert.ok(g.relative <= TOLERANCE, `${label}: WebGPU differs from the CPU by ${describe(g)}`);
    });
  }
}

test('back to the default model; no errors in the console', async () => {
  await page.evaluate(() => {
    document.getElementById('model-panel').open = true;
  });
  await page.click('#default-model');
  await page.waitForFunction(() => /MobileNetV2/.test(document.getElementById('model-name').textContent));
  await idle(page);
  assert.deepEqual(errors, []);
});
