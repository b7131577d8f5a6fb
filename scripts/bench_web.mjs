#!/usr/bin/env node
// The browser's engine (wasm, CPU, headless Chromium) vs the native engine (CPU) on the same
// input: MobileNetV2 (the page's pretrained weights) at 224x224, or the model given with
// --model (a vision transformer: at its own size), the cat photo, in one run.
//
//   node scripts/bench_web.mjs [--reps N] [--methods gradient,lrp-epsilon-plus] [--out FILE] [--native-threads N]
//       [--model FILE.safetensors --arch-name NAME] [--no-compare] [--simd128]
//
// Needs dist/ (trunk build --release), the default model (scripts/setup-web.sh) and the native
// bench binary (cargo build --release --example bench). Environment: XAI_DIST, CHROMIUM (as in
// tests/e2e/harness.mjs), BENCH_BIN (default target/release/examples/bench).
//
// Browser side: dist/ served on 127.0.0.1, the JS API (web/xai.js: `Explainer.load(bytes)`,
// `explain(prepared, {method})`) on a blank page of that origin. The photo is decoded and
// preprocessed once (`explainer.prepare`), outside the timings; then per method one warm-up and
// N timed calls. `wasm_ms` is the explain call as the page sees it (`result.elapsedMs`: the
// request to the engine's Web Worker, the wasm `explain` there, the attributions and logits
// back; not the photo's decoding nor the heatmap's rendering, which `explain` does after it).
// `wasm_worker_ms` is the wasm `explain` call alone, timed inside the worker (`engineMs`).
// The wasm build is single-threaded (no wasm threads); Chromium loads the relaxed-SIMD build,
// or with --simd128 the plain simd128 one (the relaxed files refused, as on a server without them).
//
// Native side: `target/release/examples/bench --input` on the page's own preprocessed input
// (the Float32Array the page fed the engine, written to a temporary safetensors file as
// `input`), in one process: one warm-up, then N timed `explain` calls, each timed around the
// Rust call; threads: candle's default (RAYON_NUM_THREADS, else all cores), and also 1 thread
// when that is more, for a per-core comparison. The example's rows run LRP with zennit 0.5's
// BatchNorm merge (`merge_convention: keep-eps`), so the page is asked for the same; every
// other parameter is the method's default on both sides. Both sides explain the top-1 class,
// so each call includes that prediction forward.
//
// Then "Compare all methods" as the page runs it: every method that applies to the model, with
// its defaults, the ones that split between workers (IG, SmoothGrad) first one at a time, the
// others at most `workers` at a time, timed from the first request to the last result; once with one engine worker and once with the page's default pool
// (`defaultWorkers`: one per core the browser reports, at most 4), one warm-up each; and one
// Integrated Gradients and one SmoothGrad explanation on each pool (split between its workers).
//
// Output: one JSON line per method on stdout, then a markdown section (a table and notes,
// without a heading) on stdout, or in the file given by --out.

import { spawn } from 'node:child_process';
import { copyFileSync, existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { DIST, ROOT, serve, launch, fromBase64, RELAXED_SIMD_FILES, isFailedLoad } from '../tests/e2e/harness.mjs';

const USAGE =
  'usage: node scripts/bench_web.mjs [--reps N] [--methods a,b] [--out FILE] [--native-threads N] [--model FILE --arch-name NAME] [--no-compare] [--simd128]';
const DEFAULT_MODEL = join(DIST, 'web/assets/model/mobilenet_v2.safetensors');
// The page fetches the model from here, a copy of the file given in the served dist/ (a route
// would carry it through the DevTools protocol, which a model of 100 MB breaks).
const MODEL_URL = '/__bench-model.safetensors';
const PHOTO = 'web/assets/samples/chelsea.png'; // under dist/, as the page fetches it
const BENCH = process.env.BENCH_BIN ?? join(ROOT, 'target/release/examples/bench');
// Parameters beyond each method's defaults that make the page run what the native rows run.
const PAGE_PARAMS = (method) => (method.startsWith('lrp-') ? { merge_convention: 'keep-eps' } : {});

function parseArgs(argv) {
  const args = {
    reps: 5,
    methods: ['gradient', 'lrp-epsilon-plus'],
    out: null,
    nativeThreads: null,
    model: DEFAULT_MODEL,
    arch: 'mobilenet_v2',
    compare: true,
    simd128: false,
  };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${flag} needs a value\n${USAGE}`);
      return argv[++i];
    };
    if (flag === '--reps') args.reps = Number(value());
    else if (flag === '--methods') args.methods = value().split(',').filter(Boolean);
    else if (flag === '--out') args.out = value();
    else if (flag === '--native-threads') args.nativeThreads = Number(value());
    else if (flag === '--model') args.model = value();
    else if (flag === '--arch-name') args.arch = value();
    else if (flag === '--no-compare') args.compare = false;
    else if (flag === '--simd128') args.simd128 = true;
    else if (flag === '-h' || flag === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else throw new Error(`unknown argument ${flag}\n${USAGE}`);
  }
  // The native example's integrated-gradients and smoothgrad rows use other parameters than the
  // page's defaults, and it has no other methods: only these rows compare like with like.
  for (const m of args.methods) {
    if (m !== 'gradient' && !m.startsWith('lrp-')) throw new Error(`--methods: ${m} is not comparable (use gradient or lrp-*)`);
  }
  if (!Number.isInteger(args.reps) || args.reps < 1) throw new Error('--reps must be a positive integer');
  if (args.nativeThreads !== null && !(Number.isInteger(args.nativeThreads) && args.nativeThreads > 0)) {
    throw new Error('--native-threads must be a positive integer');
  }
  return args;
}

const log = (...a) => console.error('[bench_web]', ...a);

function stats(times) {
  const s = [...times].sort((a, b) => a - b);
  const n = s.length;
  return { median: n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2, min: s[0] };
}

/** A safetensors file holding one f32 tensor. */
function safetensors(name, shape, data) {
  let header = JSON.stringify({ [name]: { dtype: 'F32', shape, data_offsets: [0, data.byteLength] } });
  header += ' '.repeat((8 - (header.length % 8)) % 8);
  const out = Buffer.alloc(8 + header.length + data.byteLength);
  out.writeBigUInt64LE(BigInt(header.length), 0);
  out.write(header, 8, 'latin1');
  Buffer.from(data.buffer, data.byteOffset, data.byteLength).copy(out, 8 + header.length);
  return out;
}

/** The browser side: {chromium, input (Float32Array), shape, rows: {method: {...}}}. */
async function benchBrowser(methods, reps, model, compare, simd128) {
  const served = join(DIST, MODEL_URL.slice(1));
  copyFileSync(model, served);
  const server = await serve();
  const browser = await launch();
  try {
    const page = await browser.newPage();
    const errors = [];
    page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
    page.on('console', (m) => m.type() === 'error' && !isFailedLoad(m.text()) && errors.push(`console: ${m.text()}`));
    if (simd128) await page.route(RELAXED_SIMD_FILES, (route) => route.abort());
    // A blank page of the served origin, so that nothing but the benchmark runs (the app and the
    // embedding example would load and explain on their own).
    const blank = `${server.url}__bench.html`;
    await page.route(blank, (route) =>
      route.fulfill({ contentType: 'text/html', body: '<!doctype html><meta charset="utf-8"><title>bench</title>' }),
    );
    await page.goto(blank);
    const setup = await page.evaluate(async ({ photo, url }) => {
      const { Explainer } = await import('/web/xai.js');
      const bytes = await (await fetch(url)).arrayBuffer();
      const explainer = await Explainer.load(bytes, { name: 'model.safetensors', backend: 'cpu' });
      const prepared = await explainer.prepare(`/${photo}`);
      window.bench = { explainer, prepared };
      const u8 = new Uint8Array(prepared.input.buffer, prepared.input.byteOffset, prepared.input.byteLength);
      let binary = '';
      for (let i = 0; i < u8.length; i += 0x8000) binary += String.fromCharCode(...u8.subarray(i, i + 0x8000));
      return { input: btoa(binary), shape: prepared.shape, architecture: explainer.architecture, build: await explainer.engineBuild() };
    }, { photo: PHOTO, url: MODEL_URL });
    const rows = {};
    for (const method of methods) {
      log(`wasm: ${method}, 1 warm-up + ${reps} timed calls`);
      rows[method] = await page.evaluate(
        async ({ method, params, reps }) => {
          const { explainer, prepared } = window.bench;
          const page = [];
          const worker = [];
          let last;
          for (let i = 0; i <= reps; i++) {
            last = await explainer.explain(prepared, { method, params });
            if (i > 0) {
              page.push(last.elapsedMs);
              worker.push(last.engineMs);
            }
          }
          return { page, worker, target: last.target, label: last.label, params: last.params };
        },
        { method, params: PAGE_PARAMS(method), reps },
      );
    }
    await page.evaluate(() => window.bench.explainer.dispose());
    if (compare) log(`wasm: compare all methods, and IG and SmoothGrad, on one worker and on the pool, 1 warm-up + ${reps} rounds`);
    const compared = compare ? await benchCompareAll(page, reps) : null;
    if (errors.length) throw new Error(`errors in the page:\n${errors.join('\n')}`);
    const input = new Float32Array(fromBase64(setup.input).buffer);
    return { chromium: browser.version(), build: setup.build, input, shape: setup.shape, architecture: setup.architecture, rows, compared };
  } finally {
    await browser.close();
    await server.close();
    rmSync(served, { force: true });
  }
}

/**
 * "Compare all methods" with one engine worker, then with the default pool: [{workers, started
 * (workers the pool did start), methods, times: [ms per round]}].
 */
async function benchCompareAll(page, reps) {
  return page.evaluate(
    async ({ url, reps }) => {
      const { Explainer, defaultWorkers } = await import('/web/xai.js');
      const bytes = await (await fetch(url)).arrayBuffer();
      const { prepared } = window.bench;
      const rounds = [];
      for (const workers of [...new Set([1, defaultWorkers(bytes.byteLength)])]) {
        const explainer = await Explainer.load(bytes, { name: 'model.safetensors', backend: 'cpu', workers });
        const methods = explainer.applicableMethods;
        const times = [];
        for (let i = 0; i <= reps; i++) {
          const started = performance.now();
          // As the page does: the methods that split between workers first, one at a time.
          const shares = await Promise.all(methods.map((method) => explainer.shares(method)));
          const splits = (i) => workers > 1 && shares[i] > 1;
          for (const method of methods.filter((_, i) => splits(i))) await explainer.explain(prepared, { method });
          const rest = methods.filter((_, i) => !splits(i));
          let next = 0;
          const lane = async () => {
            while (next < rest.length) await explainer.explain(prepared, { method: rest[next++] });
          };
          await Promise.all(Array.from({ length: workers }, lane));
          if (i > 0) times.push(performance.now() - started);
        }
        // One Integrated Gradients and one SmoothGrad explanation, split between the workers.
        const single = {};
        for (const method of ['integrated-gradients', 'smoothgrad']) {
          single[method] = [];
          for (let i = 0; i <= reps; i++) {
            const r = await explainer.explain(prepared, { method });
            if (i > 0) single[method].push(r.elapsedMs);
          }
        }
        rounds.push({ workers, started: explainer.workersStarted, methods: methods.length, times, single });
        explainer.dispose();
      }
      return rounds;
    },
    { url: MODEL_URL, reps },
  );
}

/**
 * The native bench's row for exactly `method`. Its --only matches by substring (`gradient` also
 * selects integrated-gradients, `lrp-epsilon-plus` lrp-epsilon-plus-flat) and it prints each row
 * when done, so it runs until the wanted row arrives and is then stopped.
 */
function benchNative(method, inputPath, reps, threads, model, arch) {
  const env = { ...process.env };
  if (threads) env.RAYON_NUM_THREADS = String(threads);
  const argv = ['--model', model, '--arch-name', arch, '--input', inputPath, '--reps', String(reps), '--only', method, '--json'];
  return new Promise((resolve, reject) => {
    const child = spawn(BENCH, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let row = null;
    child.stderr.on('data', (d) => (err += d));
    child.stdout.on('data', (d) => {
      out += d;
      let newline;
      while (!row && (newline = out.indexOf('\n')) >= 0) {
        const line = out.slice(0, newline).trim();
        out = out.slice(newline + 1);
        if (!line.startsWith('{')) continue;
        const r = JSON.parse(line);
        if (r.method === method) {
          row = r;
          child.kill('SIGTERM');
        }
      }
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (row) resolve(row);
      else reject(new Error(`${BENCH} ${argv.join(' ')} gave no row for ${method} (exit ${code}): ${err.trim()}`));
    });
  });
}

const fmt = (ms) => (ms >= 100 ? ms.toFixed(0) : ms.toFixed(1));

async function main() {
  const args = parseArgs(process.argv.slice(2));
  for (const [path, hint] of [
    [join(DIST, 'candle-xai_bg.wasm'), 'run trunk build --release'],
    [args.model, 'run scripts/setup-web.sh, then trunk build --release (or give an existing --model)'],
    [BENCH, 'run cargo build --release --example bench'],
  ]) {
    if (!existsSync(path)) throw new Error(`${path} is missing: ${hint}`);
  }

  const web = await benchBrowser(args.methods, args.reps, args.model, args.compare, args.simd128);
  log(`Chromium ${web.chromium}; input ${JSON.stringify(web.shape)}`);

  const work = mkdtempSync(join(tmpdir(), 'xai-bench-web-'));
  const results = [];
  try {
    const inputPath = join(work, 'input.safetensors');
    writeFileSync(inputPath, safetensors('input', web.shape, web.input));
    for (const method of args.methods) {
      log(`native: ${method}, 1 warm-up + ${args.reps} timed calls`);
      const native = await benchNative(method, inputPath, args.reps, args.nativeThreads, args.model, args.arch);
      let single = null;
      if (native.threads > 1) {
        log(`native: ${method} on 1 thread`);
        single = await benchNative(method, inputPath, args.reps, 1, args.model, args.arch);
      }
      const w = web.rows[method];
      const ran = JSON.parse(w.params);
      for (const [key, value] of Object.entries(PAGE_PARAMS(method))) {
        if (ran[key] !== value) throw new Error(`the page ran ${method} with ${key} = ${ran[key]}, not ${value}`);
      }
      const page = stats(w.page);
      const worker = stats(w.worker);
      results.push({
        method,
        wasm_ms_median: page.median,
        wasm_ms_min: page.min,
        native_ms_median: native.ms_median,
        native_ms_min: native.ms_min,
        ratio: page.median / native.ms_median,
        reps: args.reps,
        chromium: web.chromium,
        wasm_worker_ms_median: worker.median,
        wasm_worker_ms_min: worker.min,
        native_threads: native.threads,
        ...(single && {
          native_1t_ms_median: single.ms_median,
          native_1t_ms_min: single.ms_min,
          ratio_1t: page.median / single.ms_median,
        }),
        target: w.target,
        label: w.label,
      });
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  for (const r of results) console.log(JSON.stringify(r));
  for (const c of web.compared ?? []) {
    const t = stats(c.times);
    const ig = stats(c.single['integrated-gradients']);
    const sg = stats(c.single.smoothgrad);
    console.log(
      JSON.stringify({
        compare_all: c.methods,
        workers: c.workers,
        workers_started: c.started,
        ms_median: t.median,
        ms_min: t.min,
        ig_ms_median: ig.median,
        smoothgrad_ms_median: sg.median,
        reps: args.reps,
      }),
    );
  }

  const threads = results[0].native_threads;
  const withSingle = results.some((r) => r.native_1t_ms_median !== undefined);
  const head = ['method', 'wasm ms', 'wasm ms in the worker', `native ms (${threads} thread${threads > 1 ? 's' : ''})`, 'wasm / native'];
  if (withSingle) head.push('native ms (1 thread)', 'wasm / native 1 thread');
  const cell = (median, min) => `${fmt(median)} (${fmt(min)})`;
  const lines = [
    (args.model === DEFAULT_MODEL ? "MobileNetV2 (the page's pretrained ImageNet weights)" : `${web.architecture} (${args.model})`) +
      ` on the cat photo (web/assets/samples/chelsea.png, ` +
      `preprocessed to [${web.shape.join(', ')}]), explaining its top-1 class (${results[0].label}). ` +
      `Milliseconds per explain call, median of ${args.reps} timed calls after one warm-up (minimum in parentheses). ` +
      `Ratio = wasm / native: how many times slower the browser is.`,
    '',
    `| ${head.join(' | ')} |`,
    `|${head.map((_, i) => (i ? '---:' : '---')).join('|')}|`,
  ];
  for (const r of results) {
    const row = [r.method, cell(r.wasm_ms_median, r.wasm_ms_min), cell(r.wasm_worker_ms_median, r.wasm_worker_ms_min), cell(r.native_ms_median, r.native_ms_min), r.ratio.toFixed(2)];
    if (withSingle) row.push(r.native_1t_ms_median !== undefined ? cell(r.native_1t_ms_median, r.native_1t_ms_min) : 'n/a', r.ratio_1t !== undefined ? r.ratio_1t.toFixed(2) : 'n/a');
    lines.push(`| ${row.join(' | ')} |`);
  }
  lines.push(
    '',
    `- **wasm**: headless Chromium ${web.chromium} (\`--disable-gpu\`, the e2e tests' flags), dist/ (\`trunk build --release\`, ` +
      `the ${web.build} build, single-threaded) served on 127.0.0.1; ` +
      'the JS API `Explainer.load(bytes)` then `explain(prepared, {method})` ' +
      "on the photo preprocessed once beforehand. \"wasm ms\" is the call as the page sees it (`result.elapsedMs`: the request to the " +
      "engine's Web Worker, the wasm explain, the attributions back; not the photo's decoding nor the heatmap's rendering); " +
      '"in the worker" is the wasm explain call alone.',
    `- **native**: \`target/release/examples/bench --arch-name ${args.arch} --input <the page's input> --only <method> --json\` ` +
      `(one process: one warm-up, then ${args.reps} calls timed around \`explain\`), on the same weights and the page's own input tensor; ` +
      `threads: candle's default (${threads} on this machine, \`nproc\` = ${cpus().length})` +
      (withSingle ? ', and `RAYON_NUM_THREADS=1`.' : '.'),
    '- Same parameters on both sides: the methods\' defaults, and for LRP zennit 0.5\'s BatchNorm merge ' +
      '(`merge_convention: keep-eps`, what the native rows run). Every call includes the top-1 prediction forward.',
    '',
  );
  if (web.compared?.length) {
    const [one] = web.compared;
    const oneMs = stats(one.times).median;
    lines.push(
      `"Compare all methods" (all ${one.methods} methods that apply, their defaults, no scores), as the page asks for it: ` +
        `IG and SmoothGrad first, each split between the workers, then the others at most one per worker at a time, from the first request to the last result; median of ${args.reps} ` +
        `rounds after one warm-up (minimum in parentheses). The default pool on this machine: ${web.compared.at(-1).workers} workers.`,
      '',
      '| engine workers | workers started | Compare all ms | speed-up | one IG explain ms (50 steps) | speed-up | one SmoothGrad explain ms | speed-up |',
      '|---:|---:|---:|---:|---:|---:|---:|---:|',
      ...web.compared.map((c) => {
        const t = stats(c.times);
        const ig = stats(c.single['integrated-gradients']);
        const sg = stats(c.single.smoothgrad);
        const igOne = stats(one.single['integrated-gradients']).median;
        const sgOne = stats(one.single.smoothgrad).median;
        return (
          `| ${c.workers} | ${c.started} | ${cell(t.median, t.min)} | ${(oneMs / t.median).toFixed(2)} ` +
          `| ${cell(ig.median, ig.min)} | ${(igOne / ig.median).toFixed(2)} | ${cell(sg.median, sg.min)} | ${(sgOne / sg.median).toFixed(2)} |`
        );
      }),
      '',
      'One Integrated Gradients or SmoothGrad explanation is split between the free workers (`shares`: each takes every ' +
        "n-th path point or noisy copy; the engine adds the shares up to the one-worker result within 1e-6, tests/engine/shares.rs and the e2e test). The methods' defaults.",
      '',
    );
  }
  const markdown = lines.join('\n');
  if (args.out) {
    writeFileSync(args.out, markdown);
    log(`wrote ${args.out}`);
  } else {
    console.log(`\n${markdown}`);
  }
}

main().catch((e) => {
  console.error(`[bench_web] error: ${e.stack ?? e}`);
  process.exit(1);
});
