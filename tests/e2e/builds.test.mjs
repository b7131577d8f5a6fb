// The engine is built twice: with WebAssembly relaxed SIMD (fused multiply-adds in the
// convolutions' products) and with plain simd128. The page runs the relaxed build where the
// browser validates it (Chromium does) and the simd128 build where it does not, or where the
// server lacks the relaxed files (a page built without trunk's hook). Both give the CLI's
// attributions: LRP-EpsilonPlus and Grad-CAM within 1e-4 of the largest attribution, element by
// element, as in parity.test.mjs (which checks every method on the relaxed build).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  ROOT, CAT, RELAXED_SIMD_FILES, serve, launch, openApp, idle, readSafetensors, relativeError, fromBase64, isFailedLoad,
} from './harness.mjs';

const CLI = process.env.CANDLE_XAI_BIN ?? join(ROOT, 'target/release/candle-xai');
const MODEL = join(ROOT, 'web/assets/model/mobilenet_v2.safetensors');
const TOLERANCE = 1e-4;
const METHODS = ['lrp-epsilon-plus', 'grad-cam'];

let server;
let browser;
const work = mkdtempSync(join(tmpdir(), 'xai-builds-'));

before(async () => {
  server = await serve();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  await server?.close();
});

/** The app with the cat photo, on the build `block` leaves it (see openApp). */
async function catPage(block = null) {
  const { page, errors } = await openApp(browser, server.url, { block });
  await page.setInputFiles('#file', CAT);
  await page.waitForSelector('ol.top5');
  await idle(page);
  return { page, errors };
}

/** `method`'s attributions on the page, against the CLI's on the page's own input. */
async function checkAgainstCli(page, build) {
  const input = join(work, `${build}-input.safetensors`);
  writeFileSync(input, fromBase64(await page.evaluate(() => window.xaiApp.inputSafetensors())));
  for (const method of METHODS) {
    await page.selectOption('#method', method);
    await page.click('#explain');
    await page.waitForFunction((m) => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === m, method, {
      timeout: 300_000,
    });
    const ours = await page.evaluate(() => window.xaiApp.lastResult());
    const out = join(work, `${build}-${method}.safetensors`);
    const cli = spawnSync(CLI, ['explain', '--model', MODEL, '--input', input, '--method', method, '--out', out], {
      encoding: 'utf8',
      timeout: 300_000,
    });
    assert.equal(cli.status, 0, `CLI failed: ${cli.stderr}`);
    const theirs = readSafetensors(readFileSync(out));
    const err = relativeError(new Float32Array(fromBase64(ours.attributions).buffer), theirs.attributions.data, TOLERANCE);
    console.log(`${build} ${method}: ${ours.elapsedMs.toFixed(0)} ms in the page; max |diff| ${err.relative.toExponential(2)} of the largest`);
    assert.ok(err.relative <= TOLERANCE, `${build} ${method}: relative error ${err.relative} > ${TOLERANCE}`);
  }
}

test('Chromium runs the relaxed-SIMD build, downloads no other, and it gives the CLI\'s attributions', async () => {
  const served = server.requests.length;
  const { page, errors } = await catPage();
  assert.equal(await page.evaluate(() => window.xaiApp.state.explainer.engineBuild()), 'relaxed-simd');
  assert.match(await page.$eval('#version', (e) => e.textContent), /\(WebAssembly relaxed SIMD\)$/);
  const requested = server.requests.slice(served);
  assert.ok(requested.includes('/candle-xai-relaxed_bg.wasm'));
  assert.ok(!requested.includes('/candle-xai_bg.wasm'), 'the simd128 build was downloaded too');
  await checkAgainstCli(page, 'relaxed-simd');
  assert.deepEqual(errors, []);
  await page.close();
});

test('without the relaxed build on the server, the simd128 build runs and gives the CLI\'s attributions', async () => {
  const { page, errors } = await catPage(RELAXED_SIMD_FILES);
  assert.equal(await page.evaluate(() => window.xaiApp.state.explainer.engineBuild()), 'simd128');
  assert.match(await page.$eval('#version', (e) => e.textContent), /\(WebAssembly SIMD\)$/);
  await checkAgainstCli(page, 'simd128');
  // The browser reports the two refused requests, and nothing else goes wrong.
  assert.deepEqual(errors.filter((e) => !isFailedLoad(e)), []);
  await page.close();
});
