// Shared pieces of the browser tests: a static server for dist/ on 127.0.0.1, headless Debian
// Chromium driven by playwright-core, and helpers for the page.

import { createServer } from 'node:http';
import { readFile, stat, mkdir } from 'node:fs/promises';
import { extname, join, normalize, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateRawSync, deflateSync } from 'node:zlib';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
export const DIST = resolve(process.env.XAI_DIST ?? join(ROOT, 'dist'));
export const SCREENSHOTS = join(ROOT, 'target', 'e2e-screenshots');
export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.webp': 'image/webp',
  '.safetensors': 'application/octet-stream',
  '.md': 'text/plain; charset=utf-8',
};

/** Serves `root` on 127.0.0.1 (a free port); resolves to {url, close, requests}. */
export async function serve(root = DIST) {
  const requests = [];
  const server = createServer(async (req, res) => {
    requests.push(req.url);
    try {
      let path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
      path = normalize(join(root, path));
      if (!path.startsWith(root)) throw new Error('outside');
      if ((await stat(path)).isDirectory()) path = join(path, 'index.html');
      const body = await readFile(path);
      res.writeHead(200, { 'content-type': TYPES[extname(path)] ?? 'application/octet-stream' });
      res.end(body);
    } catch {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
    }
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    requests,
    close: () => new Promise((ok) => server.close(ok)),
  };
}

/** Headless Chromium with the flags this machine needs (no background network at all);
 * playwright gives it a fresh temporary profile. With `webgpu`, the page gets WebGPU on
 * SwiftShader (Chromium's software adapter); otherwise it has no GPU at all. */
export async function launch({ webgpu = false } = {}) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      webgpu ? '--enable-unsafe-webgpu' : '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** The engine's relaxed-SIMD build, as a glob of its files: refusing them makes web/xai.js load
 * the simd128 build, as on a server without them. */
export const RELAXED_SIMD_FILES = '**/candle-xai-relaxed*';

/** Whether a collected console error is the browser reporting a request that failed (a file
 * refused or missing), rather than an error of the page. */
export const isFailedLoad = (message) => /Failed to load resource/.test(message);

/** A page of the app with console errors collected; waits until the model is loaded. Requests
 * to URLs matching `block` (a glob) fail, as on a server that does not have those files. */
export async function openApp(browser, url, { viewport = { width: 1280, height: 900 }, block = null } = {}) {
  const page = await browser.newPage({ viewport });
  if (block) await page.route(block, (route) => route.abort());
  const errors = [];
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') errors.push(`console: ${m.text()}`);
  });
  await page.goto(url);
  await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 120_000 });
  return { page, errors };
}

/** Waits until the page is idle (no explanation running). */
export async function idle(page, timeout = 300_000) {
  await page.waitForFunction(() => document.body.dataset.state === 'idle', null, { timeout });
}

/** Drops the model file `file` on the page and waits until it is recognised as `arch` with 10 classes. */
export async function dropModel(page, file, arch) {
  await page.click('#model-panel summary').catch(() => {});
  await page.setInputFiles('#model-file', file);
  const name = file.split('/').pop();
  await page.waitForFunction(
    (n) => document.getElementById('model-name').textContent.includes(n) || document.getElementById('error').textContent,
    name,
    { timeout: 300_000 },
  );
  await idle(page);
  if (await page.$eval('#error', (e) => e.textContent)) throw new Error(await page.$eval('#error', (e) => e.textContent));
  const shown = await page.$eval('#model-name', (e) => e.textContent);
  if (!shown.includes(`${name} (${arch}, 10 classes)`)) throw new Error(`the page shows ${shown}, not ${name} (${arch}, 10 classes)`);
}

export async function screenshot(page, name) {
  await mkdir(SCREENSHOTS, { recursive: true });
  const path = join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/** Tensors of a safetensors file: {name: {dtype, shape, data (Float32Array | BigInt64Array | ...)}}. */
export function readSafetensors(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLength = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const base = 8 + headerLength;
  const out = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const [start, end] = info.data_offsets;
    const raw = bytes.slice(base + start, base + end).buffer;
    const data = { F32: Float32Array, I64: BigInt64Array, F64: Float64Array, I32: Int32Array }[info.dtype];
    out[name] = { dtype: info.dtype, shape: info.shape, data: data ? new data(raw) : new Uint8Array(raw) };
  }
  return out;
}

/**
 * How far `a` is from the reference `b`, relative to b's largest magnitude: the largest
 * difference (`relative`, and where: `at`), the share of elements further than `tolerance`
 * (`outside`), and the relative L2 distance ||a - b|| / ||b|| (`l2`).
 */
export function relativeError(a, b, tolerance = 1e-4) {
  let maxDiff = 0;
  let maxRef = 0;
  let at = -1;
  let diff2 = 0;
  let ref2 = 0;
  for (let i = 0; i < b.length; i++) {
    maxRef = Math.max(maxRef, Math.abs(b[i]));
    ref2 += b[i] * b[i];
  }
  let outside = 0;
  for (let i = 0; i < b.length; i++) {
    let d = Math.abs(a[i] - b[i]);
    if (Number.isNaN(d)) d = Infinity;
    if (d > maxDiff) {
      maxDiff = d;
      at = i;
    }
    if (d > tolerance * maxRef) outside++;
    diff2 += d * d;
  }
  return {
    relative: maxRef > 0 ? maxDiff / maxRef : maxDiff,
    maxDiff,
    maxRef,
    at,
    outside: outside / b.length,
    l2: ref2 > 0 ? Math.sqrt(diff2 / ref2) : Math.sqrt(diff2),
  };
}

export function fromBase64(text) {
  return Uint8Array.from(Buffer.from(text, 'base64'));
}

function crc32(bytes) {
  let crc = ~0;
  for (const b of bytes) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return ~crc >>> 0;
}

function chunk(type, data) {
  const out = Buffer.alloc(12 + data.length);
  out.writeUInt32BE(data.length, 0);
  out.write(type, 4, 'latin1');
  data.copy(out, 8);
  out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
  return out;
}

/**
 * An RGB PNG of `width` x `height` whose pixels come from `pixel(x, y) -> [r, g, b]`. With
 * `claim: [w, h]`, the header says w x h while the data is that of the small image: a file
 * that claims to be enormous without being so.
 */
export function makePng(width, height, pixel, { claim } = {}) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(claim ? claim[0] : width, 0);
  ihdr.writeUInt32BE(claim ? claim[1] : height, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const raw = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1);
    for (let x = 0; x < width; x++) raw.set(pixel(x, y), row + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', deflateSync(raw, { level: 1 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** A safetensors file's `inputs` with every other f32 moved up by one ulp: the input the native
 * CLI is run on again to measure how far a result moves when its input moves by rounding. */
export function nudge(bytes) {
  const out = Buffer.from(bytes);
  const headerLength = Number(out.readBigUInt64LE(0));
  const words = new Uint32Array(out.buffer, out.byteOffset + 8 + headerLength, (out.length - 8 - headerLength) / 4);
  for (let i = 0; i < words.length; i += 2) words[i] += 1;
  return out;
}

/**
 * A zip archive of `entries` ([{ name, data, deflate }]), laid out as torch.save writes `.pth`
 * checkpoints: entries stored uncompressed, unless `deflate` asks for Deflate.
 */
export function makeZip(entries) {
  const locals = [];
  const centrals = [];
  let offset = 0;
  for (const { name, data, deflate = false } of entries) {
    const stored = deflate ? deflateRawSync(data) : Buffer.from(data);
    const fileName = Buffer.from(name, 'utf8');
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(deflate ? 8 : 0, 8);
    local.writeUInt32LE(crc32(data), 14);
    local.writeUInt32LE(stored.length, 18);
    local.writeUInt32LE(data.length, 22);
    local.writeUInt16LE(fileName.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(deflate ? 8 : 0, 10);
    central.writeUInt32LE(crc32(data), 16);
    central.writeUInt32LE(stored.length, 20);
    central.writeUInt32LE(data.length, 24);
    central.writeUInt16LE(fileName.length, 28);
    central.writeUInt32LE(offset, 42);
    locals.push(local, fileName, stored);
    centrals.push(central, fileName);
    offset += local.length + fileName.length + stored.length;
  }
  const directory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(entries.length, 8);
  end.writeUInt16LE(entries.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, directory, end]);
}

/**
 * A safetensors file of float32 `tensors` ({ name: [shape, values] }) with `metadata`; with
 * `header`, that JSON text is written as the header instead (a hostile header).
 */
export function makeSafetensors(tensors, metadata = undefined, header = undefined) {
  const entries = {};
  const data = [];
  let offset = 0;
  for (const [name, [shape, values]] of Object.entries(tensors)) {
    const bytes = Buffer.from(Float32Array.from(values).buffer);
    entries[name] = { dtype: 'F32', shape, data_offsets: [offset, offset + bytes.length] };
    data.push(bytes);
    offset += bytes.length;
  }
  if (metadata) entries.__metadata__ = metadata;
  const text = Buffer.from(header ?? JSON.stringify(entries), 'utf8');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(text.length));
  return Buffer.concat([length, text, ...data]);
}

/** The sample photo the page tests come back to, and the ImageNet classes of a cat. */
export const CAT = join(ROOT, 'web/assets/samples/chelsea.png');
export const CAT_CLASSES = new Set([281, 282, 283, 284, 285]);

/** The page's error message, '' when none is shown. */
export function errorText(page) {
  return page.$eval('#error', (e) => (e.hidden ? '' : e.textContent));
}

/** Waits until the page shows an error message and returns it. */
export async function shownError(page) {
  await page.waitForFunction(() => !document.getElementById('error').hidden && document.getElementById('error').textContent);
  await idle(page);
  return errorText(page);
}

/**
 * The page still works: the default model (brought back if another is in use) classifies the
 * cat photo as a cat and explains it without an error.
 */
export async function catStillWorks(page) {
  if (!(await page.$eval('#model-name', (e) => e.textContent)).includes('MobileNetV2')) {
    await page.$eval('#model-panel', (details) => { details.open = true; });
    await page.click('#default-model');
    await page.waitForFunction(() => document.getElementById('model-name').textContent.includes('MobileNetV2'));
    await idle(page);
  }
  await page.setInputFiles('#file', CAT);
  await page.waitForFunction(() => window.xaiApp.state.prepared?.name === 'chelsea.png');
  await idle(page);
  assert.equal(await errorText(page), '');
  const top = await page.evaluate(() => window.xaiApp.state.prediction.top[0].index);
  assert.ok(CAT_CLASSES.has(top), `top-1 ${top}`);
  assert.match(await page.$eval('#status', (e) => e.textContent), /^Done: /);
}
