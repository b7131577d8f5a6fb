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
  const ctx = canvas.getContext('2d');
  const { width, height } = canvas;
  ctx.clearRect(0, 0, width, height);
  if (!curves || (!curves.morf && !curves.lerf)) return false;
  const pad = { left: 36, right: 8, top: 8, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const steps = (curves.morf ?? curves.lerf).length;
  const all = [...(curves.morf ?? []), ...(curves.lerf ?? [])];
  const top = Math.max(1e-6, ...all);
  const x = (i) => pad.left + (steps > 1 ? (i / (steps - 1)) * plotW : 0);
  const y = (p) => pad.top + plotH * (1 - p / top);
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.strokeStyle = '#d5d9e0';
  ctx.strokeRect(pad.left, pad.top, plotW, plotH);
  if (curves.morf && curves.lerf) {
    ctx.beginPath();
    curves.lerf.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p)) : ctx.moveTo(x(i), y(p))));
    for (let i = steps - 1; i >= 0; i--) ctx.lineTo(x(i), y(curves.morf[i]));
    ctx.closePath();
    ctx.fillStyle = 'rgba(31, 95, 191, 0.15)';
    ctx.fill();
  }
  for (const [curve, colour] of [
    [curves.morf, '#c0392b'],
    [curves.lerf, '#1f5fbf'],
  ]) {
    if (!curve) continue;
    ctx.beginPath();
    curve.forEach((p, i) => (i ? ctx.lineTo(x(i), y(p)) : ctx.moveTo(x(i), y(p))));
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    ctx.stroke();
  }
  ctx.fillStyle = '#5a6270';
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillText(top.toFixed(2), 2, pad.top + 8);
  ctx.fillText('0', 2, pad.top + plotH);
  ctx.fillText('pixels removed →', pad.left, height - 8);
  ctx.fillStyle = '#c0392b';
  ctx.fillText('MoRF', width - 80, height - 8);
  ctx.fillStyle = '#1f5fbf';
  ctx.fillText('LeRF', width - 40, height - 8);
  return true;
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
