// The explainer page: wires the controls in index.html to the Explainer API (web/xai.js).
// All engine work happens in Web Workers; this file only moves data and draws.

import { Explainer, CancelledError, DEFAULT_METRICS, pixelsToCanvas, rgbToRgba } from './xai.js';
import {
  METRICS, drawCurves, drawSimilarity, fillScoreTable, metricLabel, randomisationVerdict, scoreLine, sortGrid,
} from './scores.js';

const $ = (id) => document.getElementById(id);
const SAMPLES = new URL('assets/samples/', import.meta.url);

const state = {
  explainer: null,
  catalog: [], // every method the engine has
  metricParams: {}, // metric name -> {parameter: value} changed from the defaults
  methods: [], // those that can explain the loaded model
  params: {}, // method name -> {param: value}
  photo: null, // the photo as given ({source, name}), to prepare again for another model
  prepared: null,
  prediction: null,
  target: null,
  last: null, // the result on display
  grid: [], // compare-all results
  running: false, // an explanation runs in the engine (Cancel stops it)
  activity: 0, // work in progress of any kind (the page's data-state is 'busy' meanwhile)
  runId: 0,
  photoId: 0,
  backend: 'auto', // the user's choice of where explanations run
};

// ------------------------------------------------------------------------------------------
// Status, errors, progress

function setStatus(text) {
  $('status').textContent = text;
}

function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = !message;
}

/** Marks work in progress (`data-state="busy"` on the body until every piece is done). */
function begin() {
  state.activity++;
  updateControls();
}

function end() {
  state.activity = Math.max(0, state.activity - 1);
  updateControls();
}

function setRunning(running) {
  state.running = running;
  const progress = $('progress');
  if (running) progress.removeAttribute('value');
  else progress.value = 0;
  updateControls();
}

function updateControls() {
  document.body.dataset.state = state.activity > 0 ? 'busy' : 'idle';
  $('cancel').disabled = !state.running;
  const ready = Boolean(state.explainer && state.prepared);
  $('explain').disabled = !ready;
  $('compare').disabled = !ready;
  $('evaluate').disabled = !(ready && state.last) || state.running;
  $('sanity').disabled = !(ready && state.last) || state.running;
  $('optimise').disabled = !(ready && state.last && currentTunables().length) || state.running;
}

function progressTo(done, total, prefix) {
  const progress = $('progress');
  progress.max = Math.max(total, 1);
  progress.value = done;
  setStatus(`${prefix}: ${done} of ${total}…`);
}

function formatMs(ms) {
  return ms < 1000 ? `${ms.toFixed(0)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

function formatValue(v) {
  return Number.isFinite(v) ? v.toExponential(2) : String(v);
}

function download(bytes, name, type) {
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

function baseName() {
  return (state.prepared?.name ?? 'image').replace(/\.[^.]+$/, '').replace(/[^\w.-]+/g, '_');
}

// ------------------------------------------------------------------------------------------
// Methods and their parameters

/** A method's human name, from the engine's method list. */
function methodLabel(name) {
  return state.methods.find((m) => m.name === name)?.label ?? name;
}

/** The engine's description of the parameter a tunable sets ({key, label, help, ...}). */
function parameterOf(method, t) {
  return method.parameters.find((p) => p.key === t.name);
}

/** A parameter's help as a sentence: capitalised, with a full stop. */
function sentence(text) {
  if (!text) return '';
  const s = text[0].toUpperCase() + text.slice(1);
  return /[.!?]$/.test(s) ? s : `${s}.`;
}

const ATTENTION_METHODS = ['attention-rollout', 'generic-attention'];

/** The method list for the loaded model (`applicable`: the names that can explain it), the
 * current choice kept where it still applies. */
function fillMethods(applicable) {
  const select = $('method');
  const previous = select.value;
  state.methods = state.catalog.filter((m) => applicable.includes(m.name));
  select.replaceChildren();
  const groups = [
    ['Gradients', (n) => !n.startsWith('lrp-') && n !== 'grad-cam' && !ATTENTION_METHODS.includes(n)],
    ['Class activation maps', (n) => n === 'grad-cam'],
    ['Attention (transformers)', (n) => ATTENTION_METHODS.includes(n)],
    ['Layer-wise Relevance Propagation (composites)', (n) => n.startsWith('lrp-')],
  ];
  for (const [label, keep] of groups) {
    const group = document.createElement('optgroup');
    group.label = label;
    const members = state.methods.filter((m) => keep(m.name));
    for (const m of members) group.append(new Option(m.label, m.name));
    if (members.length) select.append(group);
  }
  select.value = state.methods.some((m) => m.name === previous) ? previous : 'gradient';
  for (const m of state.methods) {
    state.params[m.name] ??= Object.fromEntries(
      m.tunables.map((t) => [t.name, t.scale === 'choice' ? t.default_choice : t.default]),
    );
  }
  showMethod();
}

function currentMethod() {
  return state.methods.find((m) => m.name === $('method').value);
}

const LOG_STEPS = 1000;
function toSlider(t, v) {
  if (t.scale !== 'log') return v;
  const [lo, hi] = [Math.log10(t.min), Math.log10(t.max)];
  return Math.round(((Math.log10(Math.max(v, t.min)) - lo) / (hi - lo)) * LOG_STEPS);
}
function fromSlider(t, s) {
  if (t.scale !== 'log') return Number(s);
  const [lo, hi] = [Math.log10(t.min), Math.log10(t.max)];
  return Number((10 ** (lo + (Number(s) / LOG_STEPS) * (hi - lo))).toPrecision(3));
}

/** A parameter value as the number box shows it: tiny values in exponent form (1e-6). */
function shown(v) {
  return v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential() : String(v);
}

function tunableControl(method, t) {
  const values = state.params[method.name];
  const param = parameterOf(method, t);
  const name = param?.label ?? t.name;
  const help = sentence(param?.help);
  const id = `param-${t.name}`;
  const wrap = document.createElement('div');
  wrap.className = 'field';
  const label = document.createElement('label');
  label.htmlFor = id;
  label.textContent = `${name} `;
  const code = document.createElement('code');
  code.textContent = t.name;
  label.append(code);
  wrap.append(label);
  const hint = document.createElement('p');
  hint.className = 'hint';
  hint.id = `${id}-hint`;

  if (t.scale === 'choice') {
    const select = document.createElement('select');
    select.id = id;
    for (const c of t.choices) select.append(new Option(c, c));
    select.value = values[t.name];
    select.addEventListener('change', () => (values[t.name] = select.value));
    select.setAttribute('aria-describedby', hint.id);
    hint.textContent = `${help} Default: ${t.default_choice}.`.trim();
    wrap.append(select, hint);
    return wrap;
  }

  const row = document.createElement('div');
  row.className = 'pair';
  const number = document.createElement('input');
  number.type = 'number';
  number.id = id;
  number.min = t.min;
  number.max = t.max;
  number.step = t.scale === 'integer' ? 1 : 'any';
  number.value = shown(values[t.name]);
  number.setAttribute('aria-describedby', hint.id);
  const slider = document.createElement('input');
  slider.type = 'range';
  slider.setAttribute('aria-label', `${name} (slider${t.scale === 'log' ? ', logarithmic' : ''})`);
  if (t.scale === 'log') {
    slider.min = 0;
    slider.max = LOG_STEPS;
    slider.step = 1;
  } else {
    slider.min = t.min;
    slider.max = t.max;
    slider.step = t.scale === 'integer' ? 1 : (t.max - t.min) / 100;
  }
  slider.value = toSlider(t, values[t.name]);
  slider.addEventListener('input', () => {
    values[t.name] = fromSlider(t, slider.value);
    number.value = shown(values[t.name]);
  });
  number.addEventListener('input', () => {
    const v = Number(number.value);
    if (number.value !== '' && Number.isFinite(v) && v >= t.min && v <= t.max) {
      values[t.name] = t.scale === 'integer' ? Math.round(v) : v;
      slider.value = toSlider(t, values[t.name]);
    }
  });
  number.addEventListener('change', () => {
    let v = Number(number.value);
    if (!Number.isFinite(v)) v = t.default;
    v = Math.min(t.max, Math.max(t.min, t.scale === 'integer' ? Math.round(v) : v));
    number.value = shown(v);
    values[t.name] = v;
    slider.value = toSlider(t, v);
  });
  row.append(number, slider);
  hint.textContent = `${help} Range ${shown(t.min)} – ${shown(t.max)}${t.scale === 'log' ? ' (log scale)' : ''}; default ${shown(t.default)}.`.trim();
  wrap.append(row, hint);
  return wrap;
}

function showMethod() {
  const method = currentMethod();
  if (!method) return;
  $('method-help').textContent = method.help ?? '';
  $('layer-field').hidden = method.name !== 'grad-cam';
  const box = $('tunables');
  box.replaceChildren();
  const legend = document.createElement('legend');
  legend.textContent = `Parameters of ${method.label}`;
  box.append(legend);
  if (method.tunables.length === 0) {
    const p = document.createElement('p');
    p.className = 'hint';
    p.textContent = 'This method has no parameters.';
    box.append(p);
    return;
  }
  for (const t of method.tunables) box.append(tunableControl(method, t));
  const reset = document.createElement('button');
  reset.type = 'button';
  reset.textContent = 'Reset to defaults';
  reset.addEventListener('click', () => {
    state.params[method.name] = Object.fromEntries(
      method.tunables.map((t) => [t.name, t.scale === 'choice' ? t.default_choice : t.default]),
    );
    showMethod();
  });
  box.append(reset);
}

function fillLayers() {
  const select = $('layer');
  select.replaceChildren();
  const info = state.explainer.info;
  for (const name of info.layers) select.append(new Option(name, name));
  if (info.defaultCamLayer) select.value = info.defaultCamLayer;
}

function requestFor(methodName) {
  return {
    method: methodName,
    params: state.params[methodName] ?? {},
    target: state.target ?? undefined,
    layer: methodName === 'grad-cam' ? $('layer').value || undefined : undefined,
  };
}

// ------------------------------------------------------------------------------------------
// Backend

/** Shows where explanations run, and why not on the GPU when they do not. */
function showBackend() {
  const b = state.explainer?.backend;
  if (!b) return;
  document.body.dataset.backend = b.backend;
  $('backend').value = state.backend;
  let text = 'Explanations run on the CPU (WebAssembly).';
  if (b.backend === 'webgpu') text = `Explanations run on the GPU: ${b.gpuName}.`;
  else if (b.gpuProblem && state.backend !== 'cpu') text = `Explanations run on the CPU (WebAssembly): ${b.gpuProblem}.`;
  $('backend-info').textContent = text;
}

async function chooseBackend() {
  if (!state.explainer) return;
  cancelRun();
  state.backend = $('backend').value;
  begin();
  try {
    setStatus('Switching…');
    await state.explainer.setBackend(state.backend);
    showBackend();
    setStatus('Ready.');
  } catch (e) {
    showError(`Could not switch: ${e.message}`);
  } finally {
    end();
  }
}

/** A run that fell back from a failed GPU says so, and the menu follows. */
function noteFallback(result) {
  if (!result.fallback) return;
  state.backend = 'cpu';
  showBackend();
  showError(`The GPU failed, so this ran on the CPU: ${result.fallback}.`);
}

// ------------------------------------------------------------------------------------------
// Model

async function useModel(source, options, description) {
  begin();
  try {
    const previous = state.explainer;
    setStatus(`Loading ${description}…`);
    showError('');
    const started = performance.now();
    let explainer;
    try {
      const withBackend = { ...options, backend: state.backend };
      explainer = previous ? await previous.reload(source, withBackend) : await Explainer.load(source, withBackend);
    } catch (e) {
      setStatus(previous ? 'Ready (the previous model is still in use).' : 'No model loaded.');
      showError(`Could not use ${description}: ${e.message}`);
      return false;
    }
    cancelRun();
    if (previous) previous.dispose({ keepPainter: true });
    state.explainer = explainer;
    const info = explainer.info;
    $('model-name').textContent = `${description} (${info.architecture}, ${info.numClasses ?? '?'} classes)`;
    $('model-info').textContent = `Loaded ${info.architecture} with ${info.layers.length} layers in ${formatMs(
      performance.now() - started,
    )}.`;
    if (!state.catalog.length) {
      state.catalog = await explainer.methods();
      const build = await explainer.engineBuild();
      $('version').textContent = `${await explainer.version()} (WebAssembly ${build === 'relaxed-simd' ? 'relaxed SIMD' : 'SIMD'})`;
      fillMetricParameters(await explainer.metricCatalog());
    }
    fillMethods(info.methods ?? state.catalog.map((m) => m.name));
    const crop = info.inputSize ?? 224;
    $('crop-size').textContent = String(crop);
    $('resize-size').textContent = String(Math.round((crop * 256) / 224));
    fillLayers();
    showBackend();
    setStatus('Ready.');
    // The photo again, prepared for this model (a vision transformer may take another size).
    if (state.photo) await usePhoto(state.photo.source, state.photo.name);
    else if (state.prepared) await usePhoto(state.prepared);
    return true;
  } finally {
    end();
  }
}

// ------------------------------------------------------------------------------------------
// Photo and prediction

async function usePhoto(source, name) {
  if (!state.explainer) {
    showError('No model is loaded yet.');
    return;
  }
  const photoId = ++state.photoId;
  begin();
  try {
    showError('');
    cancelRun();
    setStatus('Reading the photo…');
    let prepared;
    try {
      prepared = await state.explainer.prepare(source, name);
    } catch (e) {
      if (photoId !== state.photoId) return;
      setStatus(state.prepared ? 'Ready (the previous photo is still in use).' : 'Ready.');
      showError(`Could not use this photo: ${e.message}`);
      return;
    }
    if (photoId !== state.photoId) return;
    let prediction;
    try {
      prediction = await state.explainer.predict(prepared);
    } catch (e) {
      if (photoId !== state.photoId) return;
      setStatus(state.prepared ? 'Ready (the previous photo is still in use).' : 'Ready.');
      showError(`The model could not classify this photo: ${e.message}`);
      return;
    }
    if (photoId !== state.photoId) return;
    state.prepared = prepared;
    if (!(source?.input instanceof Float32Array)) state.photo = { source, name };
    pixelsToCanvas(rgbToRgba(prepared.photo), prepared.width, prepared.height, $('photo'));
    $('photo-info').textContent = `${prepared.name}: ${prepared.sourceWidth}×${prepared.sourceHeight} pixels, shown as the model sees it (${prepared.width}×${prepared.height}).`;
    state.prediction = prediction;
    state.target = prediction.top[0].index;
    showTop5(prediction);
    updateControls();
    await explain();
  } finally {
    end();
  }
}

function showTop5(prediction) {
  const box = $('top5');
  box.replaceChildren();
  const legend = document.createElement('legend');
  legend.className = 'visually-hidden';
  legend.textContent = 'Class to explain';
  box.append(legend);
  const list = document.createElement('ol');
  list.className = 'top5';
  for (const [rank, p] of prediction.top.entries()) {
    const li = document.createElement('li');
    const id = `class-${p.index}`;
    const input = document.createElement('input');
    input.type = 'radio';
    input.name = 'target';
    input.id = id;
    input.value = p.index;
    input.checked = p.index === state.target;
    input.addEventListener('change', () => {
      state.target = p.index;
      explain();
    });
    const label = document.createElement('label');
    label.htmlFor = id;
    const pct = (p.probability * 100).toFixed(1);
    label.innerHTML = '<span class="cls"></span><span class="bar"><span></span></span><span class="pct"></span>';
    label.querySelector('.cls').textContent = `${p.label} (${p.index})`;
    label.querySelector('.bar > span').style.width = `${Math.max(p.probability * 100, 0.5)}%`;
    label.querySelector('.pct').textContent = `${pct}%`;
    label.title = `${rank + 1}. ${p.label}: ${pct}%`;
    li.append(input, label);
    list.append(li);
  }
  box.append(list);
}

// ------------------------------------------------------------------------------------------
// Explaining

function cancelRun() {
  if (state.running) {
    state.runId++;
    state.explainer?.cancel();
  }
}

/** Runs `work(runId)` as the page's one run: the previous run cancelled, the progress bar and
 * the controls set, a cancel or a failure reported (`failing` names what failed). The work
 * checks `runId` after each await: a newer run supersedes it. */
async function exclusiveRun(failing, work) {
  cancelRun();
  const runId = ++state.runId;
  showError('');
  begin();
  setRunning(true);
  try {
    await work(runId);
  } catch (e) {
    if (runId !== state.runId) return;
    if (e instanceof CancelledError) setStatus('Cancelled.');
    else {
      setStatus('Failed.');
      showError(`${failing} failed: ${e.message}`);
    }
  } finally {
    if (runId === state.runId) setRunning(false);
    end();
  }
}

async function runOne(methodName, runId, prefix) {
  const request = requestFor(methodName);
  return state.explainer.explain(state.prepared, {
    ...request,
    ...heatmapStyle(),
    onProgress: (done, total) => {
      if (prefix && runId === state.runId && total > 1) progressTo(done, total, prefix);
    },
  });
}

async function explain() {
  if (!state.explainer || !state.prepared) return;
  const method = currentMethod();
  await exclusiveRun(method.label, async (runId) => {
    setStatus(`Explaining with ${method.label}…`);
    const result = await runOne(method.name, runId, method.label);
    if (runId !== state.runId) return;
    showResult(result);
    noteFallback(result);
    setStatus(`Done: ${method.label} in ${formatMs(result.elapsedMs)} on ${deviceOf(result)}.`);
  });
}

function deviceOf(result, { named = false } = {}) {
  if (result.backend !== 'webgpu') return 'the CPU';
  return named ? `the GPU (${result.device})` : 'the GPU';
}

function showResult(result) {
  state.last = result;
  const canvas = $('heatmap');
  pixelsToCanvas(result.rgba, result.canvas.width, result.canvas.height, canvas);
  canvas.setAttribute('aria-label', `${methodLabel(result.method)} heatmap for ${result.label}`);
  $('bar-high').textContent = formatValue(result.high);
  $('bar-low').textContent = formatValue(result.low);
  drawColorbar().catch((e) => showError(`Could not draw the colour bar: ${e.message}`));
  const delta = result.convergenceDelta == null ? '' : `; convergence delta ${formatValue(result.convergenceDelta)}`;
  $('result-info').textContent = `${methodLabel(result.method)} for “${result.label}” (class ${result.target}): ${formatMs(
    result.elapsedMs,
  )} on ${deviceOf(result, { named: true })}; attributions [${result.shape.join(', ')}], range ${formatValue(result.low)} to ${formatValue(result.high)}${delta}.`;
  document.body.dataset.resultMethod = result.method;
  for (const id of ['download-png', 'download-raw', 'download-input']) $(id).disabled = false;
  showScores(result.evaluation);
  updateControls();
}

// ------------------------------------------------------------------------------------------
// Scores

/** The metrics ticked under the heatmap, as `evaluate` takes them (see `withParameters`). */
function chosenMetrics() {
  return withParameters(METRICS.map((m) => m.name).filter((name) => $(`metric-${name}`)?.checked));
}

/** Metric names as `evaluate` takes them: the name, or `{metric, ...}` with the parameters
 * changed under "Metric parameters". */
function withParameters(names) {
  return names.map((name) => {
    const changed = state.metricParams[name];
    return changed && Object.keys(changed).length ? { metric: name, ...changed } : name;
  });
}

/** One control per metric parameter (numbers, choices, switches), from the engine's catalog;
 * a value differing from the default is kept in `state.metricParams`. */
function fillMetricParameters(catalog) {
  const box = $('metric-parameters');
  for (const metric of catalog) {
    const group = document.createElement('fieldset');
    const legend = document.createElement('legend');
    legend.textContent = metricLabel(metric.name);
    group.append(legend);
    for (const p of metric.parameters) {
      if (!['integer', 'number', 'choice', 'bool'].includes(p.kind)) continue;
      const id = `metric-param-${metric.name}-${p.key}`;
      const field = document.createElement('label');
      field.htmlFor = id;
      field.title = p.help;
      field.textContent = `${p.label} `;
      let control;
      if (p.kind === 'choice') {
        control = document.createElement('select');
        for (const c of p.choices) control.append(new Option(c, c));
        control.value = p.default;
      } else if (p.kind === 'bool') {
        control = document.createElement('input');
        control.type = 'checkbox';
        control.checked = p.default === true;
      } else {
        control = document.createElement('input');
        control.type = 'number';
        control.step = p.kind === 'integer' ? 1 : 'any';
        if (p.min != null) control.min = p.min;
        if (p.max != null) control.max = p.max;
        control.value = p.default ?? '';
        control.placeholder = p.default == null ? 'auto' : String(p.default);
      }
      control.id = id;
      control.addEventListener('change', () => {
        let value;
        if (p.kind === 'bool') value = control.checked;
        else if (p.kind === 'choice') value = control.value;
        else value = control.value === '' ? null : Number(control.value);
        const changed = (state.metricParams[metric.name] ??= {});
        if (value === p.default || (value === null && p.default == null)) delete changed[p.key];
        else changed[p.key] = value;
      });
      field.append(control);
      group.append(field);
    }
    if (group.children.length > 1) box.append(group);
  }
}

function fillMetricChoices() {
  const box = $('metrics');
  for (const m of METRICS) {
    const label = document.createElement('label');
    const input = document.createElement('input');
    input.type = 'checkbox';
    input.id = `metric-${m.name}`;
    input.checked = DEFAULT_METRICS.includes(m.name);
    label.title = m.help;
    label.append(input, metricLabel(m.name));
    box.append(label);
    $('sort-by').append(new Option(metricLabel(m.name), m.name));
  }
}

/** Shows `evaluation` (or clears the scores when there is none). */
function showScores(evaluation) {
  const table = $('scores');
  const curves = $('curves');
  const verdict = $('verdict');
  const similarity = $('similarity');
  if (!evaluation) {
    table.replaceChildren();
    curves.hidden = verdict.hidden = similarity.hidden = true;
    return;
  }
  fillScoreTable(table, evaluation);
  curves.hidden = !drawCurves(curves, evaluation.curves);
  const check = evaluation.randomisation;
  verdict.hidden = similarity.hidden = !check;
  if (check) {
    const { level, text } = randomisationVerdict(evaluation.scores.randomisation, check.randomised.at(-1));
    verdict.dataset.level = level;
    verdict.textContent = text;
    drawSimilarity(similarity, check.randomised, check.similarity);
  }
}

/** The scores of `a` with those of `b` added (b's win where both have a metric). */
function mergeEvaluations(a, b) {
  if (!a) return b;
  return {
    ...a,
    ...b,
    scores: { ...a.scores, ...b.scores },
    higherIsBetter: { ...a.higherIsBetter, ...b.higherIsBetter },
    curves: b.curves ?? a.curves,
    randomisation: b.randomisation ?? a.randomisation,
  };
}

/** Scores `result` with `metrics` (the chosen ones), showing progress under `prefix`. */
async function scoreOne(result, runId, prefix, metrics = chosenMetrics()) {
  return state.explainer.evaluate(result, {
    metrics,
    onProgress: (done, total) => {
      if (prefix && runId === state.runId && total > 1) progressTo(done, total, prefix);
    },
  });
}

/** Scores the shown heatmap with the chosen metrics, or with `metrics` (the sanity check). */
async function evaluateShown(metrics) {
  const result = state.last;
  const asked = Array.isArray(metrics) ? metrics : chosenMetrics();
  if (!result || !asked.length) {
    if (result) setStatus('Tick at least one metric to score the heatmap.');
    return;
  }
  const label = methodLabel(result.method);
  await exclusiveRun(`Scoring ${label}`, async (runId) => {
    setStatus(`Scoring ${label}…`);
    const evaluation = await scoreOne(result, runId, `Scoring ${label}`, asked);
    if (runId !== state.runId) return;
    // A sanity check adds to the scores already shown rather than replacing them.
    result.evaluation = mergeEvaluations(result.evaluation, evaluation);
    if (state.last === result) showScores(result.evaluation);
    setStatus(`Scored ${label} in ${formatMs(evaluation.elapsedMs)}.`);
  });
}

/**
 * The heatmaps' look as set on the page: colour map, opacity and scaling (null: each method's
 * own; `hot` for Grad-CAM and attention, zennit's level for LRP, captum's outlier clipping for
 * the gradient family).
 */
function heatmapStyle() {
  const kind = $('scaling').value;
  const value = Number($('scaling-value').value);
  const colormap = $('colormap').value;
  return {
    colormap: colormap === 'auto' ? null : colormap,
    alpha: Number($('alpha').value),
    scaling: kind === 'auto' ? null : `${kind}:${value}`,
  };
}

/**
 * The scaling's number field: its meaning and range follow the kind chosen. "By method" has no
 * one number (level 3 for LRP, 2 % of outliers otherwise), so the field is hidden then.
 */
function scalingKindChanged() {
  const kind = $('scaling').value;
  const field = $('scaling-value');
  field.disabled = kind === 'auto';
  $('scaling-value-field').hidden = kind === 'auto';
  if (kind === 'outliers') Object.assign(field, { min: 0, max: 99.9, step: 0.5, value: 2 });
  if (kind === 'level') Object.assign(field, { min: 0.25, max: 100, step: 0.25, value: 3 });
  $('scaling-value-label').textContent = kind === 'level' ? 'Level' : 'Outliers clipped (%)';
  rerender();
}

/** The colour bar of the shown heatmap's colour map (before any: the one chosen, or bwr). */
async function drawColorbar() {
  if (!state.explainer) return;
  const chosen = heatmapStyle().colormap;
  await state.explainer.colorbar(state.last?.colormap ?? chosen ?? 'bwr', { width: 16, height: 224, canvas: $('colorbar') });
}

async function rerender() {
  $('alpha-value').textContent = Number($('alpha').value).toFixed(2);
  const options = heatmapStyle();
  try {
    if (state.last) {
      const r = await state.explainer.render(state.last, options);
      Object.assign(state.last, r);
      showResult(state.last);
    } else await drawColorbar();
    for (const item of state.grid) {
      const r = await state.explainer.render(item.result, options);
      Object.assign(item.result, r);
      pixelsToCanvas(r.rgba, r.canvas.width, r.canvas.height, item.canvas);
    }
  } catch (e) {
    showError(`Could not draw the heatmap: ${e.message}`);
  }
}

async function compareAll() {
  if (!state.explainer || !state.prepared) return;
  cancelRun();
  const runId = ++state.runId;
  showError('');
  begin();
  setRunning(true);
  $('compare-panel').hidden = false;
  const grid = $('grid');
  grid.replaceChildren();
  state.grid = [];
  const started = performance.now();
  const failures = [];
  const methods = state.methods;
  const workers = state.explainer.workers;
  let done = 0;
  let cancelled = false;
  try {
    // Every cell first, in the methods' order; they fill in as the workers finish them.
    const cells = methods.map((method) => {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'thumb';
      const canvas = document.createElement('canvas');
      canvas.width = canvas.height = 224;
      canvas.setAttribute('aria-hidden', 'true');
      const caption = document.createElement('span');
      caption.className = 'caption';
      caption.textContent = `${method.label}: waiting…`;
      button.append(canvas, caption);
      li.append(button);
      grid.append(li);
      return { method, li, button, canvas, caption };
    });
    const onWorkers = workers > 1 ? ` on ${workers} workers` : '';
    progressTo(0, methods.length, `Comparing ${methods.length} methods${onWorkers}`);
    // The methods that split between workers (IG, SmoothGrad: the longest) first, one at a time
    // on every worker; then the others side by side, one per worker. Started side by side, a
    // long method would run on one worker while the others finish the short ones and idle.
    const shares = await Promise.all(methods.map((m) => state.explainer.shares(m.name, requestFor(m.name).params)));
    const splits = (i) => workers > 1 && shares[i] > 1;
    const explainCell = async ({ method, li, button, canvas, caption }, i) => {
      if (cancelled || runId !== state.runId) return;
      caption.textContent = `${method.label}: running…`;
      try {
        // One method's own progress (IG's steps) only when the methods run one at a time.
        const result = await runOne(method.name, runId, workers > 1 ? null : `${i + 1}/${methods.length} ${method.label}`);
        if (runId !== state.runId) return;
        noteFallback(result);
        pixelsToCanvas(result.rgba, result.canvas.width, result.canvas.height, canvas);
        caption.textContent = `${method.label} · ${formatMs(result.elapsedMs)}`;
        button.setAttribute('aria-label', `${method.label}, ${formatMs(result.elapsedMs)}: show large`);
        button.addEventListener('click', () => {
          $('method').value = method.name;
          showMethod();
          showResult(result);
          $('heatmap').scrollIntoView({ block: 'nearest' });
        });
        state.grid.push({ method: method.name, result, canvas, li, button, index: i });
      } catch (e) {
        if (runId !== state.runId) return;
        if (e instanceof CancelledError) {
          cancelled = true;
          return;
        }
        caption.textContent = `${method.label}: failed`;
        failures.push(`${method.label}: ${e.message}`);
      }
      progressTo(++done, methods.length, `Comparing ${methods.length} methods${onWorkers}`);
    };
    const indexed = cells.map((cell, i) => [cell, i]);
    const run = ([cell, i]) => explainCell(cell, i);
    await eachInParallel(indexed.filter(([, i]) => splits(i)), 1, run);
    await eachInParallel(indexed.filter(([, i]) => !splits(i)), workers, run);
    if (runId !== state.runId) return;
    if (cancelled) {
      setStatus('Cancelled.');
      return;
    }
    state.grid.sort((a, b) => a.index - b.index);
    const compared = `Compared ${methods.length} methods in ${formatMs(performance.now() - started)}${onWorkers}`;
    // Scores after every heatmap is shown: the heatmaps come first, the scores fill in.
    if (!(await scoreGrid(runId, failures))) return;
    setStatus(`${compared}${chosenMetrics().length ? `, scored in ${formatMs(performance.now() - started)} in all` : ''}.`);
    if (failures.length) showError(failures.join('\n'));
  } finally {
    if (runId === state.runId) setRunning(false);
    end();
  }
}

/** Calls `work(item, index)` for every item, at most `limit` at a time (the explainer's
 * workers); resolves when every call has. */
async function eachInParallel(items, limit, work) {
  let next = 0;
  const lane = async () => {
    while (next < items.length) {
      const i = next++;
      await work(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
}

/** Scores every heatmap of the grid with the chosen metrics, on every worker, each caption
 * filled in as its scores arrive; false when cancelled or superseded. */
async function scoreGrid(runId, failures) {
  if (!chosenMetrics().length) return true;
  const grid = $('grid');
  const workers = state.explainer.workers;
  let done = 0;
  let cancelled = false;
  const lines = state.grid.map((item) => {
    const line = document.createElement('span');
    line.className = 'scoreline';
    line.textContent = 'scoring…';
    item.button.append(line);
    return line;
  });
  progressTo(0, state.grid.length, 'Scoring');
  await eachInParallel(state.grid, workers, async (item, i) => {
    if (cancelled || runId !== state.runId) return;
    const label = methodLabel(item.method);
    const line = lines[i];
    try {
      const prefix = `Scoring ${i + 1}/${state.grid.length} ${label}`;
      item.result.evaluation = await scoreOne(item.result, runId, workers > 1 ? null : prefix);
    } catch (e) {
      if (runId !== state.runId) return;
      if (e instanceof CancelledError) {
        cancelled = true;
        return;
      }
      line.textContent = 'not scored';
      failures.push(`Scoring ${label}: ${e.message}`);
      return;
    }
    if (runId !== state.runId) return;
    item.evaluation = item.result.evaluation;
    line.textContent = scoreLine(item.evaluation);
    item.button.setAttribute('aria-label', `${label}, ${formatMs(item.result.elapsedMs)}; ${line.textContent}: show large`);
    sortGrid(grid, state.grid, $('sort-by').value);
    progressTo(++done, state.grid.length, 'Scoring');
  });
  if (cancelled && runId === state.runId) setStatus('Cancelled.');
  return !cancelled && runId === state.runId;
}

// ------------------------------------------------------------------------------------------
// Optimise

/** The tunable parameters of the shown result's method. */
function currentTunables() {
  const name = state.last?.method;
  return state.methods.find((m) => m.name === name)?.tunables ?? [];
}

function formatParameter(v) {
  return typeof v === 'number' ? shown(Number(v.toPrecision(4))) : String(v);
}

/** Tunes the shown result's method for the photo, then shows its heatmap beside the current one. */
async function optimiseShown() {
  const result = state.last;
  if (!result) return;
  const label = methodLabel(result.method);
  const nTrials = Math.max(1, Math.min(200, Math.round(Number($('n-trials').value)) || 20));
  await exclusiveRun(`Optimising ${label}`, async (runId) => {
    $('optimised').hidden = true;
    setStatus(`Optimising ${label}…`);
    const found = await state.explainer.optimize(result, {
      objective: $('objective').value,
      nTrials,
      onProgress: (done, total) => {
        if (runId === state.runId) progressTo(done, total, `Optimising ${label}: trial`);
      },
    });
    if (runId !== state.runId) return;
    const best = await state.explainer.explain(state.prepared, {
      method: result.method,
      params: found.bestParams,
      target: result.target,
      layer: result.method === 'grad-cam' ? $('layer').value || undefined : undefined,
      ...heatmapStyle(),
    });
    if (runId !== state.runId) return;
    state.found = { method: result.method, params: found.best.params, result: best };
    showFound(result, found, best);
    const gain = found.best.objective - found.defaults.objective;
    setStatus(
      `Optimised ${label} in ${formatMs(found.elapsedMs)}: ${found.trials.length} trials, objective ${found.defaults.objective.toFixed(3)} → ${found.best.objective.toFixed(3)}${gain > 0 ? '' : ' (the parameters as set were best)'}.`,
    );
  });
}

/** The parameters found next to those set, and the two heatmaps side by side. */
function showFound(result, found, best) {
  const table = $('optimised-params');
  const head = document.createElement('tr');
  for (const text of ['', 'As set', 'Found']) {
    const th = document.createElement('th');
    th.textContent = text;
    head.append(th);
  }
  const row = (name, a, b) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = name;
    const [ta, tb] = [document.createElement('td'), document.createElement('td')];
    ta.textContent = a;
    tb.textContent = b;
    tr.append(th, ta, tb);
    return tr;
  };
  const rows = Object.keys(found.best.params).map((k) =>
    row(k, formatParameter(found.defaults.params[k]), formatParameter(found.best.params[k])),
  );
  rows.push(row($('objective').selectedOptions[0].textContent, found.defaults.objective.toFixed(3), found.best.objective.toFixed(3)));
  table.replaceChildren(head, ...rows);
  pixelsToCanvas(result.rgba, result.canvas.width, result.canvas.height, $('heatmap-defaults'));
  pixelsToCanvas(best.rgba, best.canvas.width, best.canvas.height, $('heatmap-found'));
  $('optimised').hidden = false;
}

/** Makes the parameters found the method's parameters, and shows their heatmap. */
function useFound() {
  const found = state.found;
  if (!found) return;
  Object.assign(state.params[found.method], found.params);
  $('method').value = found.method;
  showMethod();
  showResult(found.result);
}

// ------------------------------------------------------------------------------------------
// Wiring

function firstImage(dataTransfer) {
  const files = [...(dataTransfer?.files ?? [])];
  if (files.length) return files[0];
  for (const item of dataTransfer?.items ?? []) {
    if (item.kind === 'file') return item.getAsFile();
  }
  return null;
}

function wire() {
  $('file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    if (file) usePhoto(file);
    e.target.value = '';
  });
  const drop = $('drop');
  drop.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') {
      e.preventDefault();
      $('file').click();
    }
  });
  drop.addEventListener('click', () => $('file').click());
  for (const type of ['dragenter', 'dragover']) {
    document.addEventListener(type, (e) => {
      e.preventDefault();
      drop.classList.add('over');
    });
  }
  document.addEventListener('dragleave', () => drop.classList.remove('over'));
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const file = firstImage(e.dataTransfer);
    if (file) usePhoto(file);
    else showError('Nothing to use in what was dropped: drop an image file.');
  });
  document.addEventListener('paste', (e) => {
    const file = firstImage(e.clipboardData);
    if (file) {
      e.preventDefault();
      // Screenshots pasted from the clipboard are all called image.png.
      usePhoto(file, file.name && file.name !== 'image.png' ? file.name : 'pasted image');
    }
  });
  for (const button of document.querySelectorAll('.sample')) {
    button.addEventListener('click', () => usePhoto(new URL(button.dataset.sample, SAMPLES).href));
  }

  $('method').addEventListener('change', showMethod);
  $('backend').addEventListener('change', chooseBackend);
  $('explain').addEventListener('click', explain);
  $('compare').addEventListener('click', compareAll);
  $('evaluate').addEventListener('click', () => evaluateShown());
  $('sanity').addEventListener('click', () => evaluateShown(withParameters(['randomisation'])));
  $('optimise').addEventListener('click', optimiseShown);
  $('use-found').addEventListener('click', useFound);
  $('sort-by').addEventListener('change', () => sortGrid($('grid'), state.grid, $('sort-by').value));
  $('cancel').addEventListener('click', () => {
    cancelRun();
    setRunning(false);
    setStatus('Cancelled.');
  });
  $('colormap').addEventListener('change', rerender);
  $('scaling').addEventListener('change', scalingKindChanged);
  $('scaling-value').addEventListener('change', rerender);
  $('alpha').addEventListener('input', rerender);

  $('download-png').addEventListener('click', async () => {
    const r = state.last;
    if (!r) return;
    try {
      const bytes = await state.explainer.png(r, heatmapStyle());
      download(bytes, `${baseName()}-${r.method}.png`, 'image/png');
    } catch (e) {
      showError(`Could not write the PNG: ${e.message}`);
    }
  });
  $('download-raw').addEventListener('click', async () => {
    const r = state.last;
    if (!r) return;
    try {
      download(await state.explainer.attributionsSafetensors(r), `${baseName()}-${r.method}.safetensors`, 'application/octet-stream');
    } catch (e) {
      showError(`Could not write the attributions: ${e.message}`);
    }
  });
  $('download-input').addEventListener('click', async () => {
    if (!state.prepared) return;
    try {
      download(await state.explainer.inputSafetensors(state.prepared, state.target), `${baseName()}-input.safetensors`, 'application/octet-stream');
    } catch (e) {
      showError(`Could not write the input: ${e.message}`);
    }
  });

  $('model-file').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (!file) return;
    const graphFile = $('graph-file').files[0];
    const graph = graphFile ? await graphFile.text() : null;
    await useModel(file, { name: file.name, graph }, file.name);
  });
  $('default-model').addEventListener('click', () => useModel(undefined, {}, 'MobileNetV2 (ImageNet)'));
}

function toBase64(bytes) {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

// For tests and for the curious: the page's state and a few helpers.
window.xaiApp = {
  state,
  usePhoto,
  explain,
  compareAll,
  evaluateShown,
  optimiseShown,
  /** The displayed result's attributions as base64 of little-endian f32, with shape and target. */
  lastResult() {
    const r = state.last;
    if (!r) return null;
    const bytes = new Uint8Array(r.attributions.buffer, r.attributions.byteOffset, r.attributions.byteLength);
    return {
      method: r.method,
      params: r.params,
      shape: r.shape,
      target: r.target,
      label: r.label,
      attributions: toBase64(bytes),
      elapsedMs: r.elapsedMs,
      backend: r.backend,
      device: r.device,
    };
  },
  /** The displayed result as `candle-xai evaluate --attributions` reads it (base64 safetensors). */
  async attributionsSafetensors() {
    return toBase64(await state.explainer.attributionsSafetensors(state.last));
  },
  /** The preprocessed input as `candle-xai explain --input` reads it (base64 safetensors). */
  async inputSafetensors() {
    return toBase64(await state.explainer.inputSafetensors(state.prepared));
  },
};

fillMetricChoices();
wire();
updateControls();
window.xaiApp.ready = useModel(undefined, {}, 'MobileNetV2 (ImageNet)').then(async (ok) => {
  if (!ok) {
    showError(
      `${$('error').textContent}\nThe default model is installed by scripts/setup-web.sh; you can also load your own model below.`,
    );
    $('model-panel').open = true;
  }
  await drawColorbar();
  document.body.dataset.ready = 'true';
  return ok;
});
