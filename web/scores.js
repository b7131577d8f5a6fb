// Evaluation scores on the page: the metrics' names, the score table, the pixel-flipping
// curves and the order of the compare grid. Pure drawing; the engine computes the scores
// (Explainer.evaluate).

/** Every metric the engine has, as the page names it; `better` is the direction of a good score. */
export const METRICS = [
  { name: 'abpc', label: 'AbPC', better: 'higher', help: 'area between the least- and most-relevant-first flipping curves' },
  { name: 'morf', label: 'MoRF', better: 'lower', help: 'mean probability while the most relevant pixels are removed first' },
  { name: 'lerf', label: 'LeRF', better: 'higher', help: 'mean probability while the least relevant pixels are removed first' },
  { name: 'mu-fidelity', label: 'MuFidelity', better: 'higher', help: 'rank correlation of removed relevance with the score drop (150 perturbations)' },
  { name: 'sensitivity', label: 'Sensitivity', better: 'lower', help: 'largest change of the heatmap under small input noise (explains 8 noisy copies)' },
  { name: 'complexity', label: 'Complexity', better: 'lower', help: 'entropy of the attribution histogram' },
  { name: 'randomisation', label: 'Randomisation', better: 'lower', help: 'similarity to the heatmap of the model with random weights (sanity check; explains the randomised model 8 times)' },
];

export function metricLabel(name) {
  const m = METRICS.find((x) => x.name === name);
  return m ? `${m.label} ${m.better === 'higher' ? '↑' : '↓'}` : name;
}

export function formatScore(v) {
  return Number.isFinite(v) ? v.toFixed(3) : 'n/a';
}

/** One line of scores for a grid caption: "AbPC ↑ 0.412 · Complexity ↓ 3.210". */
export function scoreLine(evaluation) {
  return Object.entries(evaluation.scores)
    .map(([name, v]) => `${metricLabel(name)} ${formatScore(v)}`)
    .join(' · ');
}

/** Fills `table` with one row per metric of `evaluation`. */
export function fillScoreTable(table, evaluation) {
  const rows = Object.entries(evaluation.scores).map(([name, value]) => {
    const tr = document.createElement('tr');
    const th = document.createElement('th');
    th.scope = 'row';
    th.textContent = metricLabel(name);
    th.title = METRICS.find((m) => m.name === name)?.help ?? '';
    const td = document.createElement('td');
    td.textContent = formatScore(value);
    td.dataset.metric = name;
    tr.append(th, td);
    return tr;
  });
  const caption = document.createElement('caption');
  caption.textContent = '↑ higher is better, ↓ lower is better (pnpxai conventions)';
  table.replaceChildren(caption, ...rows);
}

/**
 * Draws the pixel-flipping curves on `canvas`: the target's probability as the most relevant
 * (MoRF, red) or least relevant (LeRF, blue) pixels are removed, step by step; the area between
 * them (AbPC) shaded. Returns false when there is nothing to draw.
 */
export function drawCurves(canvas, curves) {
  if (!curves || (!curves.morf && !curves.lerf)) {
    canvas.getContext('2d').clearRect(0, 0, canvas.width, canvas.height);
    return false;
  }
  const lines = [];
  if (curves.morf) lines.push({ values: curves.morf, colour: '#c0392b', label: 'MoRF' });
  if (curves.lerf) lines.push({ values: curves.lerf, colour: '#1f5fbf', label: 'LeRF' });
  drawLines(canvas, lines, { xLabel: 'pixels removed →', shade: lines.length === 2 });
  return true;
}

/** Draws the randomisation check's similarity as more layers are randomised (top down). */
export function drawSimilarity(canvas, randomised, similarity) {
  drawLines(canvas, [{ values: similarity, colour: '#1f5fbf', label: 'similarity' }], {
    xLabel: `layers randomised (1 … ${randomised[randomised.length - 1]}) →`,
    low: Math.min(0, ...similarity.filter(Number.isFinite)),
    high: 1,
  });
}

/** Line plot of equally spaced series on `canvas`, the area between the first two shaded if
 * `shade`; the y axis from `low` (0) to `high` (the largest value). */
function drawLines(canvas, lines, { xLabel, shade = false, low = 0, high } = {}) {
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  const pad = { left: 36, right: 8, top: 8, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const steps = lines[0].values.length;
  const finite = lines.flatMap((l) => l.values).filter(Number.isFinite);
  const top = high ?? Math.max(1e-6, ...finite);
  const span = Math.max(top - low, 1e-6);
  const x = (i) => pad.left + (steps > 1 ? (i / (steps - 1)) * plotW : plotW / 2);
  const y = (v) => pad.top + plotH * (1 - ((Number.isFinite(v) ? v : low) - low) / span);
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.strokeStyle = '#d5d9e0';
  ctx.lineWidth = 1;
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  if (shade && lines.length >= 2) {
    const [a, b] = lines;
    ctx.beginPath();
    b.values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    for (let i = steps - 1; i >= 0; i--) ctx.lineTo(x(i), y(a.values[i]));
    ctx.closePath();
    ctx.fillStyle = 'rgba(31, 95, 191, 0.15)';
    ctx.fill();
  }
  for (const line of lines) {
    ctx.beginPath();
    line.values.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.strokeStyle = line.colour;
    ctx.lineWidth = 2;
    ctx.stroke();
  }
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#5a6270';
  ctx.fillText(top.toFixed(2), 2, pad.top + 8);
  ctx.fillText(low.toFixed(2), 2, pad.top + plotH);
  ctx.fillText(xLabel, pad.left, height - 8);
  let right = width - 4;
  for (const line of [...lines].reverse()) {
    right -= ctx.measureText(line.label).width + 8;
    ctx.fillStyle = line.colour;
    ctx.fillText(line.label, right, height - 8);
  }
}

/**
 * A verdict a person can read from the randomisation check (`similarity` once every layer is
 * random, 1 = unchanged): {level: 'pass' | 'partial' | 'fail', text}.
 */
export function randomisationVerdict(similarity, layers) {
  const s = similarity.toFixed(2);
  if (!Number.isFinite(similarity)) {
    return { level: 'partial', text: 'The check could not compare the heatmaps (one of them is constant).' };
  }
  if (similarity >= 0.5) {
    return {
      level: 'fail',
      text: `✗ Barely depends on the model: with all ${layers} layers' weights replaced by random ones the heatmap stays similar (${s}; 1 = unchanged). It shows the photo's structure more than what the model learned.`,
    };
  }
  if (similarity >= 0.2) {
    return {
      level: 'partial',
      text: `△ Partly depends on the model: with all ${layers} layers randomised the heatmap keeps some similarity (${s}; 1 = unchanged).`,
    };
  }
  return {
    level: 'pass',
    text: `✓ Depends on the model: with all ${layers} layers' weights randomised the heatmap changes completely (similarity ${s}; 1 = unchanged).`,
  };
}

/** Re-orders the grid's items by `metric` (best first, unscored last); '' restores the run order. */
export function sortGrid(grid, items, metric) {
  const better = METRICS.find((m) => m.name === metric)?.better;
  const key = (item) => {
    const v = item.evaluation?.scores?.[metric];
    if (!Number.isFinite(v)) return Infinity;
    return better === 'higher' ? -v : v;
  };
  const ordered = metric ? [...items].sort((a, b) => key(a) - key(b) || a.index - b.index) : [...items].sort((a, b) => a.index - b.index);
  // Methods that failed have no item: they stay, last.
  const others = [...grid.children].filter((li) => !items.some((item) => item.li === li));
  grid.replaceChildren(...ordered.map((item) => item.li), ...others);
}
