// DOM helpers: every node is built with `h()`/`svgEl()`, never from HTML
// strings, so server text is always text.

import { PURPOSES, short } from './fhir.js';
import { nameOf } from './state.js';

const SVG_NS = 'http://www.w3.org/2000/svg';
let uniqueId = 0;

export function nextId(prefix) {
  uniqueId += 1;
  return `${prefix}-${uniqueId}`;
}

function appendAll(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

/** An HTML element: `h('button', { type: 'button', onclick }, 'Text')`. */
export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props ?? {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k === 'for') el.htmlFor = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  appendAll(el, children);
  return el;
}

/** An SVG element. */
export function svgEl(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function fmtTime(ms) {
  if (ms === null || ms === undefined || ms === '' || !Number.isFinite(Number(ms))) return 'unknown time';
  return new Date(Number(ms)).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

export function fmtSecs(secs) {
  return fmtTime(Number(secs) * 1000);
}

export function fmtNumber(v) {
  if (typeof v !== 'number') return String(v);
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
}

export function code(text, full = true) {
  return h('code', { class: 'hex', title: full ? null : String(text) }, full ? String(text ?? '') : short(text));
}

/** A person: their name and, beside it, their account; the account alone if no name is known. */
export function person(account) {
  const name = nameOf(account);
  if (!name) return code(account);
  return h('span', { class: 'person' }, h('strong', {}, name), ' ', code(account, false));
}

export function txLink(tx) {
  if (!tx) return 'none';
  return h('a', { href: `#/tx/${tx}`, class: 'hex' }, short(tx));
}

export function heading(text, level = 2) {
  return h(`h${level}`, { tabindex: level === 2 ? '-1' : null, class: level === 2 ? 'view-title' : null }, text);
}

export function card(title, ...children) {
  const id = nextId('card');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h3', { id }, title), ...children);
}

export function field(id, labelText, control, hint) {
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h(
    'div',
    { class: 'field' },
    h('label', { for: id }, labelText),
    control,
    hint ? h('p', { class: 'hint', id: hintId }, hint) : null,
  );
}

export function srOnly(text) {
  return h('span', { class: 'sr-only' }, text);
}

/** A table with a caption; `rows` are arrays of cells (nodes or text). */
export function table(captionText, headers, rows, { empty = 'Nothing yet.', rowProps } = {}) {
  if (!rows.length) {
    return h('p', { class: 'empty' }, empty);
  }
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      {},
      h('caption', { class: 'sr-only' }, captionText),
      h('thead', {}, h('tr', {}, headers.map((t) => h('th', { scope: 'col' }, t)))),
      h(
        'tbody',
        {},
        rows.map((cells, i) => h('tr', rowProps ? rowProps(i) : {}, cells.map((c) => h('td', {}, c)))),
      ),
    ),
  );
}

export function prettyJson(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

export function humanKind(kind) {
  const text = String(kind ?? '').replace(/[-_]/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

/** A select of the purposes, `first` (if any) as its first option. */
export function purposeSelect(id, first) {
  return h(
    'select',
    { id },
    ...(first ? [h('option', { value: '' }, first)] : []),
    ...PURPOSES.map(([code, display]) => h('option', { value: code }, `${display} (${code})`)),
  );
}
