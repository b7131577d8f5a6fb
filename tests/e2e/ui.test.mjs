// The page as a person uses it: bad photos and bad models give readable messages and the page
// keeps working; large photos; cancel; compare all; downloads; keyboard; phone width.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import * as harness from './harness.mjs';
import {
  ROOT, CAT, serve, launch, openApp, idle, screenshot, readSafetensors, fromBase64, makePng,
} from './harness.mjs';

let server;
let browser;
let page;
let errors;

before(async () => {
  server = await serve();
  browser = await launch();
  ({ page, errors } = await openApp(browser, server.url));
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const errorText = () => harness.errorText(page);
const shownError = () => harness.shownError(page);
const catStillWorks = () => harness.catStillWorks(page);

async function usePhotoFile(name, buffer, mimeType = 'image/png') {
  await page.setInputFiles('#file', { name, mimeType, buffer });
}

const BAD_PHOTOS = [
  ['a text file named .png', 'notes.png', Buffer.from('hello, I am a text file, not a photo\n'), /notes\.png is not a PNG, JPEG or WebP image/],
  ['an empty file', 'empty.jpg', Buffer.alloc(0), /empty\.jpg is empty/],
  ['a truncated PNG', 'half.png', readFileSync(CAT).subarray(0, 60_000), /could not decode half\.png|half\.png is not a valid PNG/],
  ['a GIF', 'anim.gif', Buffer.from('GIF89a\x01\x00\x01\x00\x00\x00\x00;', 'latin1'), /anim\.gif is a GIF image; candle-xai reads PNG, JPEG and WebP/],
  ['an enormous image (20000x20000 header)', 'huge.png', makePng(1, 1, () => [0, 0, 0], { claim: [20000, 20000] }), /megapixels are refused/],
];

for (const [what, name, bytes, message] of BAD_PHOTOS) {
  test(`photo: ${what} gives a readable message and the page keeps working`, async () => {
    await catStillWorks();
    await usePhotoFile(name, bytes);
    const text = await shownError();
    assert.match(text, /^Could not use this photo: /);
    assert.match(text, message);
    // The previous photo is still shown and usable.
    assert.match(await page.$eval('#status', (e) => e.textContent), /previous photo is still in use/);
    await page.click('#explain');
    await idle(page);
    assert.equal(await errorText(), '');
    await catStillWorks();
  });
}

for (const [how, event] of [['pasted', 'paste'], ['dropped', 'drop']]) {
  test(`photo: a ${how} image is used`, async () => {
    const png = makePng(320, 240, (x, y) => [x % 256, y % 256, (x * y) % 256]).toString('base64');
    await page.evaluate(
      ({ png, event }) => {
        const bytes = Uint8Array.from(atob(png), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], `${event}.png`, { type: 'image/png' }));
        const target = event === 'drop' ? document.getElementById('drop') : document;
        const e = event === 'paste'
          ? new ClipboardEvent('paste', { clipboardData: data, bubbles: true, cancelable: true })
          : new DragEvent('drop', { dataTransfer: data, bubbles: true, cancelable: true });
        target.dispatchEvent(e);
      },
      { png, event },
    );
    await page.waitForFunction((e) => window.xaiApp.state.prepared?.name === `${e}.png`, event);
    await idle(page);
    assert.equal(await errorText(), '');
    assert.match(await page.$eval('#photo-info', (e) => e.textContent), /320×240 pixels/);
  });
}

test('photo: a large photo (4000x3000) is resized and explained', async () => {
  const png = makePng(4000, 3000, (x, y) => [(x * 255) / 4000, (y * 255) / 3000, 128]);
  await usePhotoFile('large.png', png);
  await page.waitForFunction(() => window.xaiApp.state.prepared?.name === 'large.png', null, { timeout: 120_000 });
  await idle(page);
  assert.equal(await errorText(), '');
  assert.match(await page.$eval('#photo-info', (e) => e.textContent), /large\.png: 4000×3000 pixels/);
  assert.deepEqual(await page.evaluate(() => window.xaiApp.state.prepared.shape), [1, 3, 224, 224]);
});

const BAD_MODELS = [
  ['a text file named .safetensors', 'weights.safetensors', Buffer.from('not weights at all'), /weights\.safetensors is not a valid safetensors file/],
  ['random bytes named .pth', 'model.pth', Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 256)), /model\.pth/],
  ['a photo named .safetensors', 'photo.safetensors', readFileSync(CAT), /photo\.safetensors is not a valid safetensors file/],
];

for (const [what, name, bytes, message] of BAD_MODELS) {
  test(`model: ${what} is refused with a message and the default model keeps working`, async () => {
    await page.click('#model-panel summary').catch(() => {});
    await page.setInputFiles('#model-file', { name, mimeType: 'application/octet-stream', buffer: bytes });
    const text = await shownError();
    assert.match(text, new RegExp(`^Could not use ${name.replace('.', '\\.')}: `));
    assert.match(text, message);
    assert.match(await page.$eval('#model-name', (e) => e.textContent), /MobileNetV2/);
    await catStillWorks();
  });
}

test('model: safetensors that fit no architecture name the tensors', async () => {
  // A valid safetensors file holding the wrong tensors: the page's own input tensor.
  const input = fromBase64(await page.evaluate(() => window.xaiApp.inputSafetensors()));
  await page.setInputFiles('#model-file', { name: 'input.safetensors', mimeType: 'application/octet-stream', buffer: Buffer.from(input) });
  const text = await shownError();
  assert.match(text, /the weights fit no known architecture.*inputs/);
  await catStillWorks();
});

test('model: uploading the default weights as a .pth-converted safetensors works', async () => {
  const bytes = readFileSync(join(ROOT, 'web/assets/model/mobilenet_v2.safetensors'));
  await page.setInputFiles('#model-file', { name: 'my-model.safetensors', mimeType: 'application/octet-stream', buffer: bytes });
  await page.waitForFunction(() => /my-model/.test(document.getElementById('model-name').textContent), null, { timeout: 120_000 });
  await idle(page);
  assert.equal(await errorText(), '');
  assert.match(await page.$eval('#model-name', (e) => e.textContent), /my-model\.safetensors \(mobilenet_v2, 1000 classes\)/);
  await page.click('#default-model');
  await page.waitForFunction(() => /MobileNetV2/.test(document.getElementById('model-name').textContent));
  await idle(page);
});

test('cancel stops a long Integrated Gradients run and the next run works', async () => {
  await catStillWorks();
  await page.selectOption('#method', 'integrated-gradients');
  await page.fill('#param-n_steps', '100');
  await page.press('#param-n_steps', 'Tab');
  await page.click('#explain');
  await page.waitForFunction(() => Number(document.getElementById('progress').value) > 0, null, { timeout: 120_000 });
  assert.match(await page.$eval('#status', (e) => e.textContent), /Integrated Gradients: \d+ of 100/);
  await screenshot(page, 'ui-progress');
  await page.click('#cancel');
  await idle(page);
  assert.equal(await page.$eval('#status', (e) => e.textContent), 'Cancelled.');
  assert.equal(await errorText(), '');
  await page.fill('#param-n_steps', '10');
  await page.press('#param-n_steps', 'Tab');
  await page.click('#explain');
  await page.waitForFunction(() => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === 'integrated-gradients');
  assert.match(await page.$eval('#result-info', (e) => e.textContent), /Integrated Gradients .* convergence delta/);
});

test('colour maps, opacity and the colour bar', async () => {
  await page.selectOption('#method', 'gradient');
  await page.click('#explain');
  await idle(page);
  const pixel = () => page.$eval('#heatmap', (c) => Array.from(c.getContext('2d').getImageData(112, 112, 1, 1).data));
  const before = await pixel();
  // Each colour map draws its own colour bar; going back to one draws its bar again.
  const barPixels = () => {
    const c = document.getElementById('colorbar');
    return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).join();
  };
  // 'auto': the shown method's own colour map (bwr for the gradient).
  assert.equal(await page.$eval('#colormap', (e) => e.value), 'auto');
  const shownColormap = await page.evaluate(() => window.xaiApp.state.last.colormap);
  assert.equal(shownColormap, 'bwr');
  const bars = new Map([[shownColormap, await page.evaluate(barPixels)]]);
  for (const colormap of ['hot', 'gray', 'positive', 'bwr']) {
    await page.selectOption('#colormap', colormap);
    const seen = bars.get(colormap);
    await page.waitForFunction(
      ({ seen, others }) => {
        const c = document.getElementById('colorbar');
        const now = Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data).join();
        return seen === undefined ? !others.includes(now) : now === seen;
      },
      { seen, others: [...bars.values()] },
    );
    if (seen === undefined) bars.set(colormap, await page.evaluate(barPixels));
    await screenshot(page, `ui-colormap-${colormap}`);
  }
  assert.equal(bars.size, 4, 'four colour maps, four colour bars');
  await page.$eval('#alpha', (e) => {
    e.value = '1';
    e.dispatchEvent(new Event('input'));
  });
  await page.waitForFunction(() => document.getElementById('alpha-value').textContent === '1.00');
  await page.waitForFunction((b) => {
    const d = Array.from(document.getElementById('heatmap').getContext('2d').getImageData(112, 112, 1, 1).data);
    return d.join() !== b.join();
  }, before);
  const high = await page.$eval('#bar-high', (e) => e.textContent);
  const low = await page.$eval('#bar-low', (e) => e.textContent);
  assert.match(high, /^\d\.\d\de[-+]\d+$/);
  assert.match(low, /^-\d\.\d\de[-+]\d+$/);
  await page.$eval('#alpha', (e) => {
    e.value = '0.5';
    e.dispatchEvent(new Event('input'));
  });
  await page.selectOption('#colormap', 'auto');
});

// Each method family's heatmaps are scaled as its field draws them (LRP: zennit's level 3;
// the gradient family: captum's 2% outliers), and the scaling can be set on the page.
test('scaling: LRP at zennit\'s level 3 by default, the level and the outlier share adjustable', async () => {
  await page.selectOption('#method', 'lrp-epsilon-plus');
  await page.click('#explain');
  await page.waitForFunction(() => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === 'lrp-epsilon-plus');
  const shown = await page.evaluate(() => window.xaiApp.lastResult());
  const a = new Float32Array(fromBase64(shown.attributions).buffer);
  const plane = a.length / 3;
  let largest = 0;
  for (let i = 0; i < plane; i++) largest = Math.max(largest, Math.abs(a[i] + a[i + plane] + a[i + 2 * plane]));
  const barHigh = () => page.$eval('#bar-high', (e) => Number(e.textContent));
  const near = (x, y) => Math.abs(x - y) <= 0.01 * Math.abs(y);
  assert.ok(near(await barHigh(), largest / 3), `auto: ${await barHigh()} vs max/3 = ${largest / 3}`);
  await screenshot(page, 'ui-scaling-lrp-auto');
  await page.selectOption('#scaling', 'level');
  await page.fill('#scaling-value', '6');
  await page.press('#scaling-value', 'Tab');
  await page.waitForFunction((want) => Math.abs(Number(document.getElementById('bar-high').textContent) - want) <= 0.01 * want, largest / 6);
  await screenshot(page, 'ui-scaling-lrp-level6');
  await page.selectOption('#scaling', 'outliers');
  await page.waitForFunction((level6) => Math.abs(Number(document.getElementById('bar-high').textContent) - level6) > 0.01 * level6, largest / 6);
  const outliers = await barHigh();
  assert.ok(outliers > 0 && outliers <= largest * 1.001, `outliers:2 ends at ${outliers}, the largest is ${largest}`);
  await page.selectOption('#scaling', 'auto');
  await page.waitForFunction((want) => Math.abs(Number(document.getElementById('bar-high').textContent) - want) <= 0.01 * want, largest / 3);
  assert.equal(await page.$eval('#scaling-value', (e) => e.disabled), true);
  assert.equal(await page.$eval('#scaling-value-field', (e) => e.hidden), true, 'no number to set for "By method"');
  await page.selectOption('#method', 'gradient');
  await page.click('#explain');
  await page.waitForFunction(() => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === 'gradient');
});

test('downloads: the PNG with its colour bar and the raw attributions', async () => {
  const [png] = await Promise.all([page.waitForEvent('download'), page.click('#download-png')]);
  assert.equal(png.suggestedFilename(), 'chelsea-gradient.png');
  const pngBytes = readFileSync(await png.path());
  assert.equal(pngBytes.subarray(1, 4).toString(), 'PNG');
  assert.ok(pngBytes.readUInt32BE(16) > 224, 'the PNG is wider than the photo: it has a colour bar');
  const [raw] = await Promise.all([page.waitForEvent('download'), page.click('#download-raw')]);
  assert.equal(raw.suggestedFilename(), 'chelsea-gradient.safetensors');
  const tensors = readSafetensors(readFileSync(await raw.path()));
  assert.deepEqual(tensors.attributions.shape, [1, 3, 224, 224]);
  assert.deepEqual(tensors.logits.shape, [1, 1000]);
  const shown = await page.evaluate(() => window.xaiApp.lastResult());
  assert.deepEqual(Array.from(tensors.attributions.data), Array.from(new Float32Array(fromBase64(shown.attributions).buffer)));
  assert.equal(Number(tensors.targets.data[0]), shown.target);
});

test('choosing another class in the top-5 explains that class', async () => {
  const second = await page.evaluate(() => window.xaiApp.state.prediction.top[1]);
  await page.check(`#class-${second.index}`);
  await page.waitForFunction((i) => document.body.dataset.state === 'idle' && window.xaiApp.state.last?.target === i, second.index);
  assert.match(await page.$eval('#result-info', (e) => e.textContent), new RegExp(`class ${second.index}`));
});

test('compare all: one heatmap per method', async () => {
  await page.selectOption('#method', 'smoothgrad');
  await page.fill('#param-n_samples', '4');
  await page.press('#param-n_samples', 'Tab');
  await page.selectOption('#method', 'integrated-gradients');
  await page.fill('#param-n_steps', '10');
  await page.press('#param-n_steps', 'Tab');
  await page.click('#compare');
  await page.waitForFunction(() => /^Compared \d+ methods/.test(document.getElementById('status').textContent), null, { timeout: 600_000 });
  assert.equal(await errorText(), '');
  const captions = await page.$$eval('#grid .caption', (cs) => cs.map((c) => c.textContent));
  assert.equal(captions.length, 12);
  for (const c of captions) assert.match(c, / · [\d.]+ (ms|s)$/);
  // Each heatmap carries its scores (AbPC first); sorted by AbPC, the best comes first.
  const lines = await page.$$eval('#grid .scoreline', (ls) => ls.map((l) => l.textContent));
  assert.equal(lines.length, 12);
  for (const l of lines) assert.match(l, /^AbPC ↑ -?\d\.\d{3} · MoRF ↓ \d\.\d{3} · LeRF ↑ \d\.\d{3} · Complexity ↓ \d\.\d{3}$/);
  await page.selectOption('#sort-by', 'abpc');
  const abpc = await page.$$eval('#grid .scoreline', (ls) => ls.map((l) => Number(/AbPC ↑ (-?[\d.]+)/.exec(l.textContent)[1])));
  for (let i = 1; i < abpc.length; i++) assert.ok(abpc[i] <= abpc[i - 1], `sorted by AbPC: ${abpc}`);
  await page.selectOption('#sort-by', '');
  await screenshot(page, 'ui-compare-all');
  await page.click('#grid li:nth-child(5) button');
  assert.equal(await page.$eval('#method', (e) => e.value), 'grad-cam');
});

test('every control has an accessible name, and the page works from the keyboard', async () => {
  await catStillWorks();
  const unnamed = await page.$$eval('input, select, button, progress, canvas', (elements) =>
    elements
      .filter((e) => !e.closest('[hidden]') && e.getAttribute('aria-hidden') !== 'true')
      .filter((e) => !(e.labels?.length || e.getAttribute('aria-label') || e.getAttribute('aria-labelledby') || (e.tagName === 'BUTTON' && e.textContent.trim())))
      .map((e) => e.outerHTML.slice(0, 80)),
  );
  assert.deepEqual(unnamed, []);
  // Choose a method and explain with keys only.
  await page.focus('#method');
  await page.selectOption('#method', 'grad-cam');
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement.id);
  assert.equal(focused, 'layer', 'Tab moves from the method to the Grad-CAM layer');
  await page.focus('#explain');
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod === 'grad-cam');
  // The photo drop zone opens the file picker with Enter and with Space. (Whether headless
  // Chromium then shows a chooser is its own business: the test checks the picker was asked for.)
  await page.$eval('#file', (input) => {
    window.pickerRequests = 0;
    input.addEventListener('click', (e) => {
      window.pickerRequests++;
      e.preventDefault();
    });
  });
  await page.focus('#drop');
  await page.keyboard.press('Enter');
  await page.keyboard.press(' ');
  assert.equal(await page.evaluate(() => window.pickerRequests), 2);
});

test('usable at phone width', async () => {
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true });
  await phone.goto(server.url);
  await phone.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 120_000 });
  await phone.click('button[data-sample="chelsea.png"]');
  await phone.waitForSelector('ol.top5');
  await phone.waitForFunction(() => document.body.dataset.state === 'idle' && document.body.dataset.resultMethod);
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than the phone`);
  await screenshot(phone, 'ui-phone');
  await phone.close();
});

test('no uncaught errors in the page', () => {
  assert.deepEqual(errors, []);
});
