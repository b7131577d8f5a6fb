// Once the page has loaded its own assets (engine, model, class names), nothing it does makes a
// network request: photos, models, explanations, cancel (which restarts the engine worker),
// colour maps and downloads all stay on the device.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, serve, launch, openApp, idle, screenshot } from './harness.mjs';

let server;
let browser;
let page;
const after_load = [];

before(async () => {
  server = await serve();
  browser = await launch();
  ({ page } = await openApp(browser, server.url));
  // Every request from now on, from the page or its workers, whatever the address; blob: and
  // data: URLs are in memory (a restarted engine worker starts from blob: URLs), not network.
  page.context().on('request', (r) => {
    if (!/^(blob|data):/.test(r.url())) after_load.push(`${r.method()} ${r.url()}`);
  });
  page.on('websocket', (w) => after_load.push(`websocket ${w.url()}`));
});

after(async () => {
  await browser?.close();
  await server?.close();
});

test('the page loads only its own assets, from its own origin', () => {
  const own = server.requests.filter((url) => url.startsWith('/'));
  assert.equal(own.length, server.requests.length);
  // Chromium has relaxed SIMD: the engine's relaxed-SIMD build is loaded, and only that one.
  for (const asset of ['/candle-xai-relaxed_bg.wasm', '/candle-xai-relaxed.js', '/web/worker.js', '/web/assets/model/mobilenet_v2.safetensors', '/web/assets/imagenet_classes.json']) {
    assert.ok(server.requests.includes(asset), `${asset} was loaded`);
  }
  for (const asset of ['/candle-xai_bg.wasm', '/candle-xai.js']) assert.ok(!server.requests.includes(asset), `${asset} was not loaded`);
});

test('using the page makes no request after load', async () => {
  const served = server.requests.length;
  await page.setInputFiles('#file', join(ROOT, 'web/assets/samples/chelsea.png'));
  await idle(page);
  for (const method of ['grad-cam', 'lrp-epsilon-plus', 'smoothgrad']) {
    await page.selectOption('#method', method);
    if (method === 'smoothgrad') {
      await page.fill('#param-n_samples', '4');
      await page.press('#param-n_samples', 'Tab');
    }
    await page.click('#explain');
    await page.waitForFunction((m) => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === m, method);
  }
  await page.selectOption('#colormap', 'hot');
  await Promise.all([page.waitForEvent('download'), page.click('#download-png')]);
  await Promise.all([page.waitForEvent('download'), page.click('#download-raw')]);
  // Cancel restarts the engine worker: from memory, not from the network.
  await page.selectOption('#method', 'integrated-gradients');
  await page.click('#explain');
  await page.waitForFunction(() => Number(document.getElementById('progress').value) > 0, null, { timeout: 120_000 });
  await page.click('#cancel');
  await idle(page);
  await page.selectOption('#method', 'gradient');
  await page.click('#explain');
  await page.waitForFunction(() => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === 'gradient');
  // A model of the user's own, and a photo pasted in.
  await page.setInputFiles('#model-file', {
    name: 'mine.safetensors',
    mimeType: 'application/octet-stream',
    buffer: readFileSync(join(ROOT, 'web/assets/model/mobilenet_v2.safetensors')),
  });
  await page.waitForFunction(() => /mine\.safetensors/.test(document.getElementById('model-name').textContent), null, { timeout: 120_000 });
  await idle(page);
  await screenshot(page, 'privacy-after');
  assert.equal(await page.$eval('#error', (e) => e.textContent), '');
  assert.deepEqual(after_load, []);
  assert.deepEqual(server.requests.slice(served), []);
});
