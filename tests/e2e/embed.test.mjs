// The embedding: <xai-explainer> elements loaded by one script tag, and the JavaScript API.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serve, launch, screenshot, isFailedLoad } from './harness.mjs';

let server;
let browser;
let page;
const errors = [];

before(async () => {
  server = await serve();
  browser = await launch();
  page = await browser.newPage({ viewport: { width: 1000, height: 900 } });
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
  await page.goto(`${server.url}web/examples/embed.html`);
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const caption = (id) => page.$eval(`#${id}`, (e) => e.shadowRoot.querySelector('figcaption').textContent);

test('each element explains its photo with its method', async () => {
  await page.waitForFunction(() => [...document.querySelectorAll('xai-explainer')].every((e) => e.result), null, { timeout: 300_000 });
  assert.match(await caption('cat-lrp'), /^(tabby|tiger cat|Persian cat|Siamese cat|Egyptian cat) \(\d+\.\d%\) · LRP: ε \+ z⁺ · /);
  assert.match(await caption('cat-cam'), /cat .* · Grad-CAM · /);
  assert.match(await caption('coffee-ig'), /^espresso .* · Integrated Gradients · /);
  const ig = await page.$eval('#coffee-ig', (e) => ({ params: JSON.parse(e.result.params), shape: e.result.shape, n: e.result.attributions.length }));
  assert.equal(ig.params.n_steps, 16);
  assert.deepEqual(ig.shape, [1, 3, 224, 224]);
  assert.equal(ig.n, 3 * 224 * 224);
  await screenshot(page, 'embed-elements');
});

test('changing an attribute re-explains; a bad src gives a message in the element', async () => {
  const next = page.$eval('#cat-cam', (e) => new Promise((ok) => e.addEventListener('xai-result', (ev) => ok(ev.detail.method), { once: true })));
  await page.$eval('#cat-cam', (e) => e.setAttribute('method', 'gradient'));
  assert.equal(await next, 'gradient');
  const failed = page.$eval('#cat-cam', (e) => new Promise((ok) => e.addEventListener('xai-error', (ev) => ok(ev.detail.message), { once: true })));
  await page.$eval('#cat-cam', (e) => e.setAttribute('src', '../assets/imagenet_classes.json'));
  assert.match(await failed, /imagenet_classes\.json is not a PNG, JPEG or WebP image/);
  assert.match(await caption('cat-cam'), /^Could not explain: /);
});

test('the JavaScript API: Explainer.load(bytes) and explain(image, options)', async () => {
  await page.click('#run-api');
  await page.waitForFunction(() => window.apiResult || /^Error/.test(document.getElementById('api-log').textContent), null, { timeout: 300_000 });
  const log = await page.$eval('#api-log', (e) => e.textContent);
  assert.match(log, /\(class \d+, top-5: .+\); attributions \[1,3,224,224\] sum /);
  const r = await page.evaluate(() => ({
    method: window.apiResult.method,
    samples: JSON.parse(window.apiResult.params).n_samples,
    canvas: window.apiResult.canvas.width,
    n: window.apiResult.attributions.length,
    top5: window.apiResult.top5.length,
  }));
  assert.deepEqual(r, { method: 'smoothgrad', samples: 8, canvas: 224, n: 3 * 224 * 224, top5: 5 });
  await screenshot(page, 'embed-api');
  assert.deepEqual(errors.filter((e) => !isFailedLoad(e)), []);
});

// The explainer's pool of engine workers: requests made together run together, one per worker,
// with the same results as one worker gives; cancel stops every one of them.
test('the JavaScript API: two explanations at once run on two workers, and cancel stops both', async () => {
  const r = await page.evaluate(async () => {
    const { Explainer } = await import('/web/xai.js');
    const explainer = await Explainer.load(undefined, { backend: 'cpu', workers: 2 });
    try {
      const cat = await explainer.prepare('../assets/samples/chelsea.png');
      const [a, b] = await Promise.all([
        explainer.explain(cat, { method: 'gradient' }),
        explainer.explain(cat, { method: 'gradient' }),
      ]);
      const same = a.attributions.length === b.attributions.length && a.attributions.every((v, i) => Object.is(v, b.attributions[i]));
      // Two long runs (VarGrad: one worker each, its variance is not split), cancelled once
      // both are under way.
      const running = new Set();
      let bothRunning;
      const under = new Promise((ok) => (bothRunning = ok));
      const long = [0, 1].map((i) =>
        explainer
          .explain(cat, {
            method: 'smoothgrad',
            aggregate: 'variance',
            n_samples: 2000,
            onProgress: (done) => {
              if (done > 0) running.add(i);
              if (running.size === 2) bothRunning();
            },
          })
          .then(
            () => 'finished',
            (e) => e.name,
          ),
      );
      await under;
      explainer.cancel();
      const outcomes = await Promise.all(long);
      const after = await explainer.explain(cat, { method: 'gradient' });
      return {
        workers: [a.worker, b.worker].sort(),
        started: explainer.workersStarted,
        same,
        outcomes,
        afterSame: after.attributions.every((v, i) => Object.is(v, a.attributions[i])),
      };
    } finally {
      explainer.dispose();
    }
  });
  assert.deepEqual(r, { workers: [0, 1], started: 2, same: true, outcomes: ['AbortError', 'AbortError'], afterSame: true });
});

// One Integrated Gradients or SmoothGrad explanation is split between the free workers (each
// takes a share of the path points or noisy copies) and adds up to what one worker gives.
test('the JavaScript API: IG and SmoothGrad are split between the workers, with one worker\'s result', async () => {
  const r = await page.evaluate(async () => {
    const { Explainer } = await import('/web/xai.js');
    const bytes = await (await fetch('../assets/model/mobilenet_v2.safetensors')).arrayBuffer();
    const pool = await Explainer.load(bytes, { backend: 'cpu', workers: 2 });
    const single = await Explainer.load(bytes, { backend: 'cpu', workers: 1 });
    try {
      const cat = await pool.prepare('../assets/samples/chelsea.png');
      const out = {};
      for (const [method, params] of [
        ['integrated-gradients', { n_steps: 6 }],
        ['smoothgrad', { n_samples: 4 }],
      ]) {
        const reported = [];
        const split = await pool.explain(cat, { method, params, onProgress: (done, total) => reported.push([done, total]) });
        const whole = await single.explain(cat, { method, params });
        let diff = 0;
        let norm = 0;
        for (let i = 0; i < whole.attributions.length; i++) {
          diff += (split.attributions[i] - whole.attributions[i]) ** 2;
          norm += whole.attributions[i] ** 2;
        }
        out[method] = {
          shares: [split.shares, whole.shares],
          relative: Math.sqrt(diff / norm),
          delta: whole.convergenceDelta == null ? null : Math.abs(split.convergenceDelta - whole.convergenceDelta),
          progressTotal: reported.at(-1)?.[1],
          progressDone: reported.at(-1)?.[0],
        };
      }
      return out;
    } finally {
      pool.dispose();
      single.dispose({ keepPainter: false });
    }
  });
  for (const [method, total] of [['integrated-gradients', 6], ['smoothgrad', 4]]) {
    const m = r[method];
    assert.deepEqual(m.shares, [2, 1], method);
    assert.ok(m.relative < 1e-6, `${method}: ${m.relative} from one worker's`);
    assert.deepEqual([m.progressDone, m.progressTotal], [total, total], `${method}: progress`);
  }
  assert.ok(r['integrated-gradients'].delta < 1e-4, `IG delta moved by ${r['integrated-gradients'].delta}`);
});
