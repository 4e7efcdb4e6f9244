// Patient: alerts, loaded at sign-in and then streamed live (server-sent
// events) for as long as the session lasts.

import { fmtTime, h, heading, humanKind, prettyJson } from './dom.js';
import { errorText } from './status.js';
import { api } from './http.js';

const alerts = { items: [], ids: new Set(), stream: null, error: null, live: 'connecting' };

/** How many alerts the page holds. */
export function alertCount() {
  return alerts.items.length;
}

/** Closes the live stream and forgets the alerts (the session ended). */
export function stopAlerts() {
  alerts.stream?.close();
  alerts.stream = null;
  alerts.items = [];
  alerts.ids = new Set();
  alerts.error = null;
}

export async function startAlerts() {
  try {
    const list = await api('GET', '/v1/alerts?limit=200', undefined, { what: 'Loading alerts' });
    const items = [...(list.alerts ?? [])].sort((a, b) => Number(b.id) - Number(a.id));
    alerts.items = items;
    alerts.ids = new Set(items.map((a) => Number(a.id)));
    alerts.error = null;
  } catch (err) {
    alerts.error = errorText(err);
  }
  updateAlertCount();
  const after = alerts.items.length ? Number(alerts.items[0].id) : 0;
  const stream = new EventSource(`/v1/alerts/stream?after=${after}`);
  alerts.stream = stream;
  alerts.live = 'connecting';
  stream.addEventListener('open', () => setLive('connected'));
  stream.addEventListener('error', () => setLive(stream.readyState === EventSource.CLOSED ? 'stopped' : 'reconnecting'));
  stream.addEventListener('alert', (e) => {
    let alert;
    try {
      alert = JSON.parse(e.data);
    } catch {
      return;
    }
    const id = Number(alert.id);
    if (alerts.ids.has(id)) return;
    alerts.ids.add(id);
    alerts.items.unshift(alert);
    updateAlertCount();
    const list = document.getElementById('alert-list');
    if (list) {
      document.getElementById('alerts-empty')?.remove();
      list.prepend(alertItem(alert, true));
      updateAlertSummary();
    }
  });
}

function setLive(state) {
  alerts.live = state;
  const el = document.getElementById('alert-live');
  if (el) el.textContent = liveText();
}

function liveText() {
  return {
    connecting: 'Live updates: connecting…',
    connected: 'Live updates: on. New alerts appear at the top.',
    reconnecting: 'Live updates: reconnecting…',
    stopped: 'Live updates: stopped. Reload the page to resume them.',
  }[alerts.live];
}

function updateAlertCount() {
  const badge = document.getElementById('alert-count');
  if (badge) badge.textContent = String(alerts.items.length);
}

function updateAlertSummary() {
  const el = document.getElementById('alert-summary');
  if (!el) return;
  const unusual = alerts.items.filter((a) => a.flagged).length;
  el.textContent = `${alerts.items.length} alert${alerts.items.length === 1 ? '' : 's'}, ${unusual} unusual.`;
}

function alertItem(alert, fresh = false) {
  const body = alert.body;
  const hasBody = body && typeof body === 'object' && Object.keys(body).length > 0;
  return h(
    'li',
    {
      class: `alert${alert.flagged ? ' flagged' : ''}${fresh ? ' fresh' : ''}`,
      dataset: { alertId: String(alert.id), alertKind: String(alert.kind ?? '') },
    },
    h(
      'div',
      { class: 'alert-head' },
      h('span', { class: 'alert-kind' }, humanKind(alert.kind)),
      alert.flagged ? h('span', { class: 'tag unusual' }, 'unusual') : null,
      fresh ? h('span', { class: 'tag new' }, 'new') : null,
      h('time', { datetime: new Date(Number(alert.created_ms)).toISOString() }, fmtTime(alert.created_ms)),
    ),
    h('p', { class: 'alert-why' }, String(alert.why ?? '')),
    hasBody ? h('details', {}, h('summary', {}, 'Details'), prettyJson(body)) : null,
  );
}

export async function alertsView(root) {
  root.append(
    heading('Alerts'),
    h('p', { class: 'lead' }, 'What happened with your data, newest first. Unusual events are marked \u201cunusual\u201d.'),
    h('p', { class: 'live', id: 'alert-live' }, liveText()),
    h('p', { id: 'alert-summary' }),
  );
  if (alerts.error) root.append(h('p', { class: 'inline-error' }, alerts.error));
  const list = h(
    'ol',
    { class: 'alerts', id: 'alert-list', 'aria-live': 'polite', 'aria-relevant': 'additions', 'aria-label': 'Alerts' },
    alerts.items.map((a) => alertItem(a)),
  );
  if (!alerts.items.length) root.append(h('p', { class: 'empty', id: 'alerts-empty' }, 'No alerts yet.'));
  root.append(list);
  queueMicrotask(updateAlertSummary);
}
