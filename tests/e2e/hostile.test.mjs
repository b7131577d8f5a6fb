// Hostile and broken files dropped on the page, one of each kind the CLI refuses (issue: tiny
// files with huge allocations, sizes from a model file, untrusted nesting depth, unbounded work,
// silent nonsense, misleading messages): each gives a message in the user's terms, and the page
// keeps working with the cat photo and the default model afterwards.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as harness from './harness.mjs';
import {
  serve, launch, openApp, idle, makePng, makeSafetensors, makeZip,
} from './harness.mjs';

let server;
let browser;
let page;

before(async () => {
  server = await serve();
  browser = await launch();
  ({ page } = await openApp(browser, server.url));
});

after(async () => {
  await browser?.close();
  await server?.close();
});

const errorText = () => harness.errorText(page);
const shownError = () => harness.shownError(page);
const catStillWorks = () => harness.catStillWorks(page);

async function useModelFile(name, buffer) {
  await page.click('#model-panel summary').catch(() => {});
  await page.setInputFiles('#model-file', { name, mimeType: 'application/octet-stream', buffer });
}

// ---- photos -----------------------------------------------------------------------------------

test('photo: a 3 KB PNG of 100000x1 pixels is explained from its crop, in bounded memory', async () => {
  const png = makePng(100_000, 1, (x) => [x % 251, 90, 160]);
  assert.ok(png.length < 3000, `${png.length} bytes`);
  await page.setInputFiles('#file', { name: 'wide.png', mimeType: 'image/png', buffer: png });
  await page.waitForFunction(() => window.xaiApp.state.prepared?.name === 'wide.png', null, { timeout: 120_000 });
  await idle(page);
  assert.equal(await errorText(), '');
  assert.deepEqual(await page.evaluate(() => window.xaiApp.state.prepared.shape), [1, 3, 224, 224]);
  await catStillWorks();
});

test('photo: a JPEG cut to a third is refused as truncated, not filled in grey', async () => {
  await catStillWorks();
  const jpeg = await page.screenshot({ type: 'jpeg', quality: 90 });
  const cut = jpeg.subarray(0, Math.floor(jpeg.length / 3));
  await page.setInputFiles('#file', { name: 'cut.jpg', mimeType: 'image/jpeg', buffer: cut });
  const text = await shownError();
  assert.match(text, /^Could not use this photo: /);
  assert.match(text, /cut\.jpg is a truncated or corrupt JPEG/);
  await catStillWorks();
});

// ---- models -------------------------------------------------------------------------------------

/** A pickle (protocol 2) of `body`, as data.pkl of a torch.save zip. */
const pickle = (body) => Buffer.concat([Buffer.from([0x80, 0x02]), body, Buffer.from('.')]);

/**
 * A tiny RGB model in safetensors with its graph in the metadata: conv 3->4 (3x3), BatchNorm,
 * ReLU, global average pooling, Linear 4->3. `change` edits the tensors and graph nodes first.
 */
function tinyModel(change = () => {}) {
  const filled = (n, v) => Array.from({ length: n }, () => v);
  const tensors = {
    'conv.weight': [[4, 3, 3, 3], Array.from({ length: 108 }, (_, i) => ((i % 7) - 3) / 10)],
    'bn.weight': [[4], filled(4, 1)],
    'bn.bias': [[4], filled(4, 0)],
    'bn.running_mean': [[4], filled(4, 0)],
    'bn.running_var': [[4], filled(4, 1)],
    'fc.weight': [[3, 4], filled(12, 0.5)],
  };
  const nodes = [
    { name: 'conv', op: 'Conv2d', kernel_size: 3, padding: 1 },
    { name: 'bn', op: 'BatchNorm2d' },
    { name: 'relu', op: 'ReLU' },
    { name: 'pool', op: 'AdaptiveAvgPool2d', output_size: 1 },
    { name: 'flatten', op: 'Flatten' },
    { name: 'fc', op: 'Linear' },
  ];
  change(tensors, nodes);
  return makeSafetensors(tensors, { candle_xai_graph: JSON.stringify({ input_channels: 3, nodes }) });
}

test('model: the tiny graph model these cases break is itself accepted', async () => {
  await useModelFile('tiny.safetensors', tinyModel());
  await page.waitForFunction(() => document.getElementById('model-name').textContent.includes('tiny.safetensors'));
  await idle(page);
  assert.equal(await errorText(), '');
  await catStillWorks();
});

const REFUSED_AT_LOAD = [
  [
    'a checkpoint whose pickle nests 200,000 levels deep', 'deep.pth',
    () => makeZip([{ name: 'archive/data.pkl', data: pickle(Buffer.concat([Buffer.alloc(200_000, ']'), Buffer.alloc(199_999, 'a')])) }]),
    /levels deep/,
  ],
  [
    'a checkpoint with a Deflate-compressed entry', 'deflated.pth',
    () => makeZip([{ name: 'archive/data.pkl', data: pickle(Buffer.from('}')), deflate: true }]),
    /compressed \(Deflate\); torch\.save stores entries uncompressed/,
  ],
  [
    'NaN weights', 'nan.safetensors',
    () => tinyModel((t) => { t['conv.weight'][1][17] = NaN; }),
    /conv\.weight.*holds NaN at element 17/,
  ],
  [
    'a negative running variance', 'variance.safetensors',
    () => tinyModel((t) => { t['bn.running_var'][1][2] = -1; }),
    /bn.*negative variance/,
  ],
  [
    'a header that names a tensor twice', 'twice.safetensors',
    () => makeSafetensors({}, undefined,
      '{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'),
    /names tensor `w` twice/,
  ],
  [
    'a graph field of the wrong form', 'field.safetensors',
    () => tinyModel((_, nodes) => { nodes[0].kernel_size = [3]; }),
    /expected a whole number or a \[height, width\] pair of whole numbers, found \[3\]/,
  ],
];

for (const [what, name, bytes, message] of REFUSED_AT_LOAD) {
  test(`model: ${what} is refused at load with a message; the page keeps the model it had`, async () => {
    await catStillWorks();
    await useModelFile(name, bytes());
    const text = await shownError();
    assert.match(text, new RegExp(`^Could not use ${name.replace('.', '\\.')}: `));
    assert.match(text, message);
    assert.match(await page.$eval('#model-name', (e) => e.textContent), /MobileNetV2/);
    await catStillWorks();
  });
}

const REFUSED_AT_USE = [
  [
    'a Linear weight of the wrong width (blamed on the weights, not on the photo)', 'width.safetensors',
    () => tinyModel((t) => { t['fc.weight'] = [[3, 5], Array(15).fill(0.5)]; }),
    /layer `fc` \(Linear\) expects 5 features but receives shape \[1, 4\] at every input size: the model's weights do not fit together/,
  ],
  [
    'a padding of 30000 (more memory than the page may use)', 'padding.safetensors',
    () => tinyModel((_, nodes) => { nodes[0].padding = 30_000; }),
    /needs about \d+ MiB of memory, more than the \d+ MiB/,
  ],
];

for (const [what, name, bytes, message] of REFUSED_AT_USE) {
  test(`model: ${what} gives a message when used; the page keeps working`, async () => {
    await catStillWorks();
    await useModelFile(name, bytes());
    const text = await shownError();
    assert.match(text, message);
    await catStillWorks();
  });
}

// ---- parameters ---------------------------------------------------------------------------------

test('work: a million integration steps is clamped on the page and refused by the JS API', async () => {
  await catStillWorks();
  await page.selectOption('#method', 'integrated-gradients');
  await page.fill('#param-n_steps', '1000000');
  await page.press('#param-n_steps', 'Tab');
  const max = await page.$eval('#param-n_steps', (e) => e.max);
  assert.equal(await page.$eval('#param-n_steps', (e) => e.value), max);
  const refused = await page.evaluate(async () => {
    try {
      await window.xaiApp.state.explainer.explain(window.xaiApp.state.prepared, { method: 'integrated-gradients', n_steps: 1_000_000 });
      return 'explained';
    } catch (e) {
      return e.message;
    }
  });
  assert.match(refused, /n_steps.*from 1 to 4096/);
  await page.selectOption('#method', 'gradient');
  await catStillWorks();
});
