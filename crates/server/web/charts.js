// Charts: SVG time series of vitals with their reference ranges, for the
// patient's own vitals and a carer's records.

import { observationsOf, outOfRange } from './fhir.js';
import { fmtNumber, fmtTime, h, heading, nextId, svgEl } from './dom.js';
import { api } from './http.js';
import { loadCatalogue } from './catalogue.js';
import { refresh } from './routing.js';

const CHART = { width: 640, height: 220, left: 56, right: 16, top: 14, bottom: 34 };
const MAX_POINTS = 2000;

function niceTicks(lo, hi, count = 4) {
  const span = hi - lo;
  const step0 = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= step0) ?? step0;
  const ticks = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function shortTime(ms, withDate) {
  const d = new Date(ms);
  return withDate
    ? d.toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' })
    : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

/** One time-series chart of a data type, with its reference band and out-of-range list. */
function chartFigure(type, points, info) {
  const sorted = points.filter((p) => p.time !== null).sort((a, b) => a.time - b.time).slice(-MAX_POINTS);
  // The unit as the Observation shows it to people (°C, mmHg), else the
  // catalogue's UCUM code.
  const unit = sorted.at(-1)?.unit || info?.unit || '';
  const title = info?.display ?? sorted.at(-1)?.display ?? type;
  const reference =
    Array.isArray(info?.reference) && info.reference.length === 2
      ? info.reference
      : sorted.some((p) => p.low !== null || p.high !== null)
        ? [sorted.find((p) => p.low !== null)?.low ?? null, sorted.find((p) => p.high !== null)?.high ?? null]
        : null;
  const flagged = sorted.map((p) => outOfRange(p, reference));
  const out = sorted.map((p, i) => ({ p, side: flagged[i] })).filter((x) => x.side);
  const latest = sorted.at(-1);
  const refText =
    reference && (reference[0] !== null || reference[1] !== null)
      ? ` Reference range ${reference[0] ?? '–'} to ${reference[1] ?? '–'} ${unit}.`
      : '';
  const summary =
    `${title}: ${sorted.length} reading${sorted.length === 1 ? '' : 's'}, latest ${fmtNumber(latest.value)} ${unit} at ${fmtTime(latest.time)}, ` +
    `${out.length} out of range.${refText}`;

  const { width: W, height: H, left: L, right: R, top: T, bottom: B } = CHART;
  const values = sorted.map((p) => p.value);
  let yMin = Math.min(...values, ...(reference ?? []).filter((v) => typeof v === 'number'));
  let yMax = Math.max(...values, ...(reference ?? []).filter((v) => typeof v === 'number'));
  if (yMin === yMax) {
    yMin -= 1;
    yMax += 1;
  }
  const pad = (yMax - yMin) * 0.08;
  yMin -= pad;
  yMax += pad;
  let xMin = sorted[0].time;
  let xMax = latest.time;
  if (xMin === xMax) {
    xMin -= 30_000;
    xMax += 30_000;
  }
  const x = (t) => L + ((t - xMin) / (xMax - xMin)) * (W - L - R);
  const y = (v) => T + ((yMax - v) / (yMax - yMin)) * (H - T - B);
  const titleId = nextId('chart-title');
  const parts = [svgEl('title', { id: titleId }, summary)];
  parts.push(svgEl('rect', { x: L, y: T, width: W - L - R, height: H - T - B, class: 'plot' }));
  if (reference) {
    const hi = typeof reference[1] === 'number' ? Math.min(reference[1], yMax) : yMax;
    const lo = typeof reference[0] === 'number' ? Math.max(reference[0], yMin) : yMin;
    if (hi > lo) parts.push(svgEl('rect', { x: L, y: y(hi), width: W - L - R, height: y(lo) - y(hi), class: 'band' }));
  }
  for (const v of niceTicks(yMin, yMax)) {
    parts.push(svgEl('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' }));
    parts.push(svgEl('text', { x: L - 6, y: y(v) + 4, class: 'tick', 'text-anchor': 'end' }, fmtNumber(v)));
  }
  const withDate = xMax - xMin > 20 * 3600_000;
  for (const [t, anchor] of [
    [xMin, 'start'],
    [(xMin + xMax) / 2, 'middle'],
    [xMax, 'end'],
  ]) {
    parts.push(svgEl('text', { x: x(t), y: H - 10, class: 'tick', 'text-anchor': anchor }, shortTime(t, withDate)));
  }
  // One line per device: readings of different devices are never joined.
  const devices = [...new Set(sorted.map((p) => p.device))];
  devices.forEach((device, i) => {
    const own = sorted.filter((p) => p.device === device);
    parts.push(
      svgEl('polyline', {
        class: `line d${i % DEVICE_LINES}`,
        'data-device': device,
        points: own.map((p) => `${x(p.time).toFixed(1)},${y(p.value).toFixed(1)}`).join(' '),
      }),
    );
  });
  sorted.forEach((p, i) => {
    const px = x(p.time);
    const py = y(p.value);
    const side = flagged[i];
    const label = `${fmtNumber(p.value)} ${unit} at ${fmtTime(p.time)}${side ? ` (${side}, out of range)` : ''}`;
    const mark = side
      ? svgEl('path', {
          class: 'pt out',
          'data-out-of-range': side,
          d:
            side === 'high'
              ? `M${px.toFixed(1)},${(py - 6).toFixed(1)} l5.5,9.5 h-11 z`
              : `M${px.toFixed(1)},${(py + 6).toFixed(1)} l5.5,-9.5 h-11 z`,
        })
      : svgEl('circle', { class: 'pt', cx: px.toFixed(1), cy: py.toFixed(1), r: 3 });
    mark.append(svgEl('title', {}, label));
    parts.push(mark);
  });
  const svg = svgEl(
    'svg',
    {
      class: 'chart',
      viewBox: `0 0 ${W} ${H}`,
      role: 'img',
      'aria-labelledby': titleId,
      preserveAspectRatio: 'xMidYMid meet',
    },
    parts,
  );
  const legend = h(
    'p',
    { class: 'legend' },
    legendMark('circle'),
    ' in range ',
    legendMark('high'),
    ' high ',
    legendMark('low'),
    ' low',
    reference ? [' ', legendMark('band'), ' reference range'] : null,
    devices.length > 1 || devices[0]
      ? devices.map((device, i) => h('span', { class: 'legend-item' }, legendMark(`d${i % DEVICE_LINES}`), ` ${device || 'unknown device'}`))
      : null,
  );
  const captionId = nextId('fig');
  const shown = out.slice(-20).reverse();
  return h(
    'figure',
    { class: 'card chart-card', dataset: { type }, 'aria-labelledby': captionId },
    h('figcaption', { id: captionId }, h('h3', {}, title), h('p', { class: 'chart-summary' }, summary)),
    svg,
    legend,
    out.length
      ? h(
          'div',
          { class: 'out-list' },
          h('h4', {}, `Out of range (${out.length})`),
          h(
            'ul',
            {},
            shown.map(({ p, side }) =>
              h('li', {}, h('strong', {}, side === 'high' ? 'High: ' : 'Low: '), `${fmtNumber(p.value)} ${unit} at ${fmtTime(p.time)}`),
            ),
          ),
          out.length > shown.length ? h('p', { class: 'hint' }, `and ${out.length - shown.length} earlier.`) : null,
        )
      : null,
  );
}

/** How many line styles devices cycle through in one chart. */
const DEVICE_LINES = 6;

function legendMark(kind) {
  const parts = /^d\d$/.test(kind)
    ? [svgEl('line', { class: `line ${kind}`, x1: 0, y1: 7, x2: 14, y2: 7 })]
    : kind === 'circle'
      ? [svgEl('circle', { class: 'pt', cx: 7, cy: 7, r: 3.5 })]
      : kind === 'high'
        ? [svgEl('path', { class: 'pt out', d: 'M7,1 l5.5,9.5 h-11 z' })]
        : kind === 'low'
          ? [svgEl('path', { class: 'pt out', d: 'M7,12 l5.5,-9.5 h-11 z' })]
          : [svgEl('rect', { class: 'band', x: 0, y: 2, width: 14, height: 10 })];
  return svgEl('svg', { class: 'legend-mark', width: 14, height: 14, viewBox: '0 0 14 14', 'aria-hidden': 'true' }, parts);
}

/** A small drawing of the newest waveform of a type. */
function waveformFigure(type, points, info) {
  const latest = points.filter((p) => p.waveform?.length).sort((a, b) => (a.time ?? 0) - (b.time ?? 0)).at(-1);
  const title = info?.display ?? latest?.display ?? type;
  if (!latest) return null;
  const samples = latest.waveform;
  const W = 640;
  const H = 90;
  const lo = Math.min(...samples);
  const hi = Math.max(...samples) === lo ? lo + 1 : Math.max(...samples);
  const line = samples
    .map((v, i) => `${((i / Math.max(1, samples.length - 1)) * (W - 8) + 4).toFixed(1)},${(H - 4 - ((v - lo) / (hi - lo)) * (H - 8)).toFixed(1)}`)
    .join(' ');
  const summary = `${title}: ${points.length} waveform${points.length === 1 ? '' : 's'}; the newest, ${samples.length} samples at ${fmtTime(latest.time)}, is drawn.`;
  return h(
    'figure',
    { class: 'card chart-card', dataset: { type } },
    h('figcaption', {}, h('h3', {}, title), h('p', { class: 'chart-summary' }, summary)),
    svgEl(
      'svg',
      { class: 'chart waveform', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': summary },
      svgEl('title', {}, summary),
      svgEl('polyline', { class: 'line', points: line }),
    ),
  );
}

/** Charts for every data type in `observations`, in catalogue order. */
export function chartsOf(observations, types) {
  const byType = new Map();
  for (const o of observations) {
    if (!byType.has(o.code)) byType.set(o.code, []);
    byType.get(o.code).push(o);
  }
  const info = new Map((types ?? []).map((t) => [String(t.code), t]));
  const order = [...byType.keys()].sort((a, b) => {
    const ia = (types ?? []).findIndex((t) => String(t.code) === a);
    const ib = (types ?? []).findIndex((t) => String(t.code) === b);
    return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || a.localeCompare(b);
  });
  const figures = [];
  for (const type of order) {
    const points = byType.get(type);
    const scalar = points.filter((p) => typeof p.value === 'number' && p.time !== null);
    if (scalar.length) figures.push(chartFigure(type, scalar, info.get(type)));
    else figures.push(waveformFigure(type, points, info.get(type)));
  }
  return figures.filter(Boolean);
}

export async function patientVitalsView(root) {
  const reload = h('button', { type: 'button', class: 'secondary small', onclick: () => refresh() }, 'Refresh');
  root.append(h('div', { class: 'view-head' }, heading('Vitals'), reload));
  const [bundle, types] = await Promise.all([
    api('GET', '/portal/v1/vitals', undefined, { what: 'Loading your vitals' }),
    loadCatalogue(),
  ]);
  const observations = observationsOf(bundle);
  if (!observations.length) {
    root.append(h('p', { class: 'empty' }, 'No readings yet.'));
    return;
  }
  root.append(h('p', { class: 'lead' }, `${observations.length} observations. Out-of-range values are drawn as triangles and listed under each chart.`));
  root.append(h('div', { class: 'charts' }, chartsOf(observations, types)));
}
