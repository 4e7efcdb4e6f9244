// The medledger portal page: patients, carers and admins see what the chain
// and the ledger hold about them, and sign every change in the browser.
//
//   index.html ── app.js ── vendor.js (noble secp256k1 + keccak, web/build.mjs)
//                   │
//                   ├── GET  /portal/v1/session        who is signed in
//                   ├── POST /portal/v1/prepare        unsigned transaction + summary
//                   ├── sign (EIP-155 legacy tx) ───── POST /portal/v1/transactions
//                   └── sign (EIP-191 message) ─────── PUT/POST with x-medledger-signature
//
// The chain key is read from a file into `chainKey` below and nowhere else:
// never stored, never sent. Only signatures leave the page. No framework and
// no HTML strings: every node is built with `h()`/`svgEl()`, so server text
// is always text. Hash routes: `#/alerts`, `#/tx/<hash>`, ...
//
// The pure functions (RLP, signing, FHIR parsing) are exported so that
// `web/test/` can check them in node; the page itself only runs `boot()`.

import { secp256k1, keccak_256, bytesToHex, hexToBytes, utf8ToBytes, concatBytes } from './vendor.js';

// ---------------------------------------------------------------------------
// Bytes, RLP and signatures
// ---------------------------------------------------------------------------

/** `0x`-prefixed lowercase hex of `bytes`. */
export function hex0x(bytes) {
  return '0x' + bytesToHex(bytes);
}

/** Bytes of a hex string with or without `0x`; throws on odd length or non-hex. */
export function unhex(text) {
  const digits = String(text).replace(/^0x/i, '');
  if (digits.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(digits)) {
    throw new Error(`not hexadecimal bytes: ${String(text).slice(0, 20)}`);
  }
  return hexToBytes(digits);
}

/** A non-negative integer (number, bigint or decimal/0x string) as a bigint. */
export function toBigInt(value, what = 'value') {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return BigInt(value);
  if (typeof value === 'string' && /^(0x[0-9a-fA-F]+|[0-9]+)$/.test(value)) return BigInt(value);
  throw new Error(`${what} is not a non-negative integer: ${String(value)}`);
}

/** Minimal big-endian bytes of an integer; zero is the empty string (RLP's rule). */
export function intBytes(value) {
  const n = toBigInt(value);
  if (n === 0n) return new Uint8Array(0);
  let digits = n.toString(16);
  if (digits.length % 2) digits = '0' + digits;
  return hexToBytes(digits);
}

function rlpLength(length, offset) {
  if (length < 56) return Uint8Array.of(offset + length);
  const size = intBytes(length);
  return concatBytes(Uint8Array.of(offset + 55 + size.length), size);
}

/** RLP of a byte string (Uint8Array) or a list of items. */
export function rlp(item) {
  if (item instanceof Uint8Array) {
    if (item.length === 1 && item[0] < 0x80) return item;
    return concatBytes(rlpLength(item.length, 0x80), item);
  }
  if (Array.isArray(item)) {
    const body = concatBytes(...item.map(rlp));
    return concatBytes(rlpLength(body.length, 0xc0), body);
  }
  throw new Error('rlp: items are byte strings or lists');
}

/** The secret key in a `.eth.key` file: 64 hex digits, maybe `0x`, maybe whitespace. */
export function parseKeyFile(text) {
  const digits = String(text).trim().replace(/^0x/i, '');
  if (!/^[0-9a-fA-F]{64}$/.test(digits)) {
    throw new Error('This is not a chain key file: it must hold 64 hexadecimal digits (optionally starting with 0x).');
  }
  const key = hexToBytes(digits);
  if (!secp256k1.utils.isValidSecretKey(key)) {
    throw new Error('This chain key file holds a number that is not a valid secp256k1 key.');
  }
  return key;
}

/** The chain account of a secret key: last 20 bytes of keccak(uncompressed public key). */
export function addressOf(key) {
  const publicKey = secp256k1.getPublicKey(key, false);
  return hex0x(keccak_256(publicKey.subarray(1)).subarray(12));
}

/** Deterministic low-s signature of a 32-byte hash: `{ r, s, recovery }`. */
function signHash(key, hash) {
  const sig = secp256k1.sign(hash, key, { prehash: false, lowS: true, format: 'recovered' });
  return { recovery: sig[0], r: sig.subarray(1, 33), s: sig.subarray(33, 65) };
}

/** EIP-191 `personal_sign` hash of a text message. */
export function personalHash(message) {
  const body = utf8ToBytes(message);
  return keccak_256(concatBytes(utf8ToBytes(`\x19Ethereum Signed Message:\n${body.length}`), body));
}

/** EIP-191 `personal_sign`: `0x` + r (32) + s (32) + v (27 + recovery). */
export function personalSign(key, message) {
  const { r, s, recovery } = signHash(key, personalHash(message));
  return hex0x(concatBytes(r, s, Uint8Array.of(27 + recovery)));
}

/**
 * A signed legacy EIP-155 transaction, as raw `0x` hex.
 * `tx`: `{ nonce, gasPrice, gas, to, value, data, chainId }`.
 */
export function signLegacyTx(key, tx) {
  const to = unhex(tx.to);
  if (to.length !== 20) throw new Error(`transaction target is not a 20-byte address: ${tx.to}`);
  const data = unhex(tx.data ?? '0x');
  const chainId = toBigInt(tx.chainId, 'chain id');
  const fields = [
    intBytes(toBigInt(tx.nonce, 'nonce')),
    intBytes(toBigInt(tx.gasPrice ?? 0, 'gas price')),
    intBytes(toBigInt(tx.gas, 'gas')),
    to,
    intBytes(toBigInt(tx.value ?? 0, 'value')),
    data,
  ];
  const hash = keccak_256(rlp([...fields, intBytes(chainId), new Uint8Array(0), new Uint8Array(0)]));
  const { r, s, recovery } = signHash(key, hash);
  const v = chainId * 2n + 35n + BigInt(recovery);
  return hex0x(rlp([...fields, intBytes(v), intBytes(BigInt(hex0x(r))), intBytes(BigInt(hex0x(s)))]));
}

/**
 * The text an off-chain request signature covers: the portal it is meant for
 * and a fresh nonce (the server takes each request once), then the request.
 */
export function requestSigningText(portal, nonce, method, path, signedAtMs, body) {
  return `medledger portal request\nportal: ${portal}\nnonce: ${nonce}\n${method} ${path}\n${signedAtMs}\n${body}`;
}

/** A fresh request nonce: 32 hex digits from the browser's CSPRNG. */
function freshNonce() {
  return bytesToHex(crypto.getRandomValues(new Uint8Array(16)));
}

// ---------------------------------------------------------------------------
// FHIR and event reading (pure)
// ---------------------------------------------------------------------------

/**
 * The Observations of a FHIR Bundle, flattened: a panel (blood pressure)
 * gives one per component; waveforms keep their samples; each names its
 * device as the Observation shows it.
 */
export function observationsOf(bundle) {
  const out = [];
  for (const entry of bundle?.entry ?? []) {
    const r = entry?.resource;
    if (!r || r.resourceType !== 'Observation') continue;
    const time = Date.parse(r.effectiveDateTime ?? '');
    const identifier = String(r.identifier?.[0]?.value ?? '');
    const [reading, index] = identifier.split('#');
    const shared = {
      time: Number.isFinite(time) ? time : null,
      device: String(r.device?.display ?? r.device?.reference ?? ''),
      notes: (r.note ?? []).map((n) => String(n?.text ?? '')).filter(Boolean),
      reading: /^(0x)?[0-9a-fA-F]{64}$/.test(reading ?? '') ? reading.replace(/^0x/i, '').toLowerCase() : null,
      index: index ?? null,
    };
    const parts = Array.isArray(r.component) && r.component.length ? r.component : [r];
    for (const part of parts) {
      const obs = measuredIn(part, shared);
      if (obs) out.push(obs);
    }
  }
  return out;
}

/** One measured value (an Observation's or a component's), or `null`. */
function measuredIn(part, shared) {
  const coding = part.code?.coding?.[0] ?? {};
  const range = part.referenceRange?.[0] ?? {};
  const obs = {
    ...shared,
    code: String(coding.code ?? 'unknown'),
    display: String(coding.display ?? coding.code ?? 'Unknown'),
    value: null,
    unit: '',
    waveform: null,
    interp: part.interpretation?.[0]?.coding?.[0]?.code ?? null,
    low: typeof range.low?.value === 'number' ? range.low.value : null,
    high: typeof range.high?.value === 'number' ? range.high.value : null,
  };
  if (part.valueQuantity && typeof part.valueQuantity.value === 'number') {
    obs.value = part.valueQuantity.value;
    obs.unit = String(part.valueQuantity.unit ?? part.valueQuantity.code ?? '');
  } else if (part.valueSampledData) {
    obs.unit = String(part.valueSampledData.origin?.unit ?? '');
    obs.waveform = String(part.valueSampledData.data ?? '')
      .split(/\s+/)
      .map(Number)
      .filter(Number.isFinite);
  } else {
    return null;
  }
  return obs;
}

/** `'high'`, `'low'` or `null`: the interpretation code wins over the range. */
export function outOfRange(obs, reference) {
  if (obs.interp) {
    const code = String(obs.interp).toUpperCase();
    if (code.startsWith('H')) return 'high';
    if (code.startsWith('L')) return 'low';
    if (code === 'N') return null;
  }
  const lo = reference?.[0] ?? obs.low;
  const hi = reference?.[1] ?? obs.high;
  if (typeof obs.value !== 'number') return null;
  if (typeof hi === 'number' && obs.value > hi) return 'high';
  if (typeof lo === 'number' && obs.value < lo) return 'low';
  return null;
}

/** The ledger index an AuditEvent points at, if it names one. */
export function ledgerIndexOf(audit) {
  // `urn:medledger:ledger-entry`, value `<patient hex>/<index>`; "medledger"
  // itself holds "ledger", so look for the entry part, then the description.
  const entities = audit?.entity ?? [];
  const candidates = [
    ...entities.filter((e) => /ledger[-_]?entry/i.test(String(e?.what?.identifier?.system ?? ''))),
    ...entities.filter((e) => /ledger/i.test(String(e?.description ?? ''))),
  ];
  for (const entity of candidates) {
    const m = /(?:^|\/)(\d+)\s*$/.exec(String(entity?.what?.identifier?.value ?? ''));
    if (m) return m[1];
  }
  return null;
}

const BASIS = { 1: 'carer', 2: 'consent', 3: 'emergency' };
const DENY = {
  1: 'not registered staff',
  2: 'unknown patient',
  3: 'the patient opted out',
  4: 'no consent',
  5: 'not a doctor',
};
const STAFF_ROLE = { 1: 'doctor', 2: 'nurse' };
/**
 * HL7 v3 PurposeOfUse codes the contracts take as a purpose: a purpose on
 * chain is public forever, so it is one of these codes, never free text.
 */
export const PURPOSES = [
  ['TREAT', 'treatment'],
  ['ETREAT', 'emergency treatment'],
  ['CAREMGT', 'care management'],
  ['COC', 'coordination of care'],
  ['CLINTRCH', 'clinical trial research'],
  ['HRESCH', 'healthcare research'],
  ['HOPERAT', 'healthcare operations'],
  ['HQUALIMP', 'health quality improvement'],
  ['PATSFTY', 'patient safety'],
  ['HSYSADMIN', 'health system administration'],
  ['RECORDMGT', 'records management'],
  ['PATRQT', 'patient requested'],
  ['FAMRQT', 'family requested'],
  ['PWATRNY', 'power of attorney'],
  ['SUPNWK', 'support network'],
  ['PUBHLTH', 'public health'],
  ['HPAYMT', 'healthcare payment'],
  ['HLEGAL', 'legal'],
  ['TRAIN', 'training'],
];

/** A purpose code as people read it: `treatment (TREAT)`. */
export function purposeText(code) {
  const found = PURPOSES.find(([c]) => c === String(code ?? ''));
  return found ? `${found[1]} (${found[0]})` : String(code ?? '');
}

/** A select of the purposes, `first` (if any) as its first option. */
function purposeSelect(id, first) {
  return h(
    'select',
    { id },
    ...(first ? [h('option', { value: '' }, first)] : []),
    ...PURPOSES.map(([code, display]) => h('option', { value: code }, `${display} (${code})`)),
  );
}
const ZERO_ADDRESS = /^0x0{40}$/i;

function named(table, value) {
  const text = String(value ?? '');
  return table[text] ?? text;
}

function truthy(value) {
  return value === true || value === 'true' || value === '1';
}

/**
 * An event's arguments: under `args` (as `/portal/v1/events` gives them) or
 * beside `event` (as `/portal/v1/transactions` gives them).
 */
export function argsOf(event) {
  if (event?.args && typeof event.args === 'object') return event.args;
  const { event: _name, ...rest } = event ?? {};
  return rest;
}

/** One chain event as a sentence. */
export function eventText(event) {
  const a = argsOf(event);
  switch (event?.event) {
    case 'AccessGranted':
      return `Access request ${a.id} granted (basis ${named(BASIS, a.basis)})`;
    case 'AccessDenied':
      return `Access request ${a.id} denied (${named(DENY, a.reason)})`;
    case 'BreakGlass':
      return `Break glass on request ${a.id}; an administrator will review it`;
    case 'ReviewClosed':
      return `Review ${a.id} closed (outcome: ${a.outcome})`;
    case 'Annotated':
      return `Annotation ${a.id} recorded on request ${a.requestId ?? '?'}`;
    case 'ConsentGranted': {
      const to = a.grantee && !ZERO_ADDRESS.test(a.grantee) ? a.grantee : `every ${named(STAFF_ROLE, a.role)}`;
      return `Consent ${a.id} granted to ${to}`;
    }
    case 'ConsentRevoked':
      return `Consent ${a.id} revoked`;
    case 'OptOutChanged':
      return truthy(a.optedOut) ? 'Opted out of default access by assigned carers' : 'Default access by assigned carers restored';
    case 'CarerAssigned':
      return `Carer ${a.carer} assigned to patient ${short(a.patientRef)}`;
    case 'CarerReleased':
      return `Carer ${a.carer} released from patient ${short(a.patientRef)}`;
    default: {
      const args = Object.entries(a).map(([k, v]) => `${k} ${v}`).join(', ');
      return args ? `${event?.event ?? 'Event'} (${args})` : String(event?.event ?? 'Event');
    }
  }
}

/** `0x1234…abcd` for long hex; anything else unchanged. */
export function short(text) {
  const t = String(text ?? '');
  return /^0x[0-9a-fA-F]{16,}$/.test(t) ? `${t.slice(0, 6)}…${t.slice(-4)}` : t;
}

// ---------------------------------------------------------------------------
// Page state. The chain key lives here and nowhere else.
// ---------------------------------------------------------------------------

let session = null;
/** @type {Uint8Array | null} */
let chainKey = null;
let pendingKey = null;
let renderToken = 0;
let viewTimer = null;
let catalogue = null;
const alerts = { items: [], ids: new Set(), stream: null, error: null, live: 'connecting' };

function roleKind() {
  if (!session) return null;
  if (session.role === 'patient') return 'patient';
  if (session.role === 'admin') return 'admin';
  return 'carer';
}

function forgetKey() {
  if (chainKey) chainKey.fill(0);
  chainKey = null;
  if (pendingKey) {
    pendingKey.reject(new Error('Signed out: nothing was signed.'));
    pendingKey = null;
  }
  document.getElementById('keyprompt')?.replaceChildren();
}

// ---------------------------------------------------------------------------
// DOM helpers
// ---------------------------------------------------------------------------

const SVG_NS = 'http://www.w3.org/2000/svg';
let uniqueId = 0;

function nextId(prefix) {
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
function h(tag, props, ...children) {
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
function svgEl(tag, attrs, ...children) {
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

function fmtTime(ms) {
  if (ms === null || ms === undefined || ms === '' || !Number.isFinite(Number(ms))) return 'unknown time';
  return new Date(Number(ms)).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

function fmtSecs(secs) {
  return fmtTime(Number(secs) * 1000);
}

function fmtNumber(v) {
  if (typeof v !== 'number') return String(v);
  return Number.isInteger(v) ? String(v) : String(Number(v.toPrecision(4)));
}

function code(text, full = true) {
  return h('code', { class: 'hex', title: full ? null : String(text) }, full ? String(text ?? '') : short(text));
}

/** People's names by account (lower case), from the server's directory. */
const names = new Map();

/** Loads the names the signed-in person may see; a failure leaves accounts shown as they are. */
async function loadNames() {
  try {
    const answer = await api('GET', '/v1/directory', undefined, { what: 'Loading names' });
    names.clear();
    for (const [account, name] of Object.entries(answer.names ?? {})) names.set(account.toLowerCase(), String(name));
  } catch {
    // Names are a courtesy: accounts still say who it was.
  }
}

/** A person: their name and, beside it, their account; the account alone if no name is known. */
function person(account) {
  const name = names.get(String(account ?? '').toLowerCase());
  if (!name) return code(account);
  return h('span', { class: 'person' }, h('strong', {}, name), ' ', code(account, false));
}

function txLink(tx) {
  if (!tx) return 'none';
  return h('a', { href: `#/tx/${tx}`, class: 'hex' }, short(tx));
}

function heading(text, level = 2) {
  return h(`h${level}`, { tabindex: level === 2 ? '-1' : null, class: level === 2 ? 'view-title' : null }, text);
}

function card(title, ...children) {
  const id = nextId('card');
  return h('section', { class: 'card', 'aria-labelledby': id }, h('h3', { id }, title), ...children);
}

function field(id, labelText, control, hint) {
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

function srOnly(text) {
  return h('span', { class: 'sr-only' }, text);
}

/** A table with a caption; `rows` are arrays of cells (nodes or text). */
function table(captionText, headers, rows, { empty = 'Nothing yet.', rowProps } = {}) {
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

function prettyJson(value) {
  return h('pre', { class: 'json' }, JSON.stringify(value, null, 2));
}

function humanKind(kind) {
  const text = String(kind ?? '').replace(/[-_]/g, ' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

// ---------------------------------------------------------------------------
// Status region
// ---------------------------------------------------------------------------

let statusSeq = 0;

/** Writes an outcome to the live status region. `kind`: progress, ok or error. */
function say(kind, ...parts) {
  const el = document.getElementById('status');
  statusSeq += 1;
  el.dataset.kind = kind;
  el.dataset.seq = String(statusSeq);
  const label = kind === 'error' ? h('strong', {}, 'Error: ') : kind === 'progress' ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : null;
  el.replaceChildren(h('p', {}, label, ...parts));
}

function sayError(err) {
  say('error', errorText(err));
}

function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem, raw, what) {
    let text;
    if (problem && typeof problem === 'object' && (problem.title || problem.detail)) {
      const title = problem.title ?? `HTTP ${status}`;
      text = problem.detail ? `${title}: ${problem.detail}` : title;
    } else {
      const body = String(raw ?? '').trim().slice(0, 200);
      text = body ? `HTTP ${status}: ${body}` : `HTTP ${status}`;
    }
    super(`${what} failed. ${text}`);
    this.status = status;
    this.problem = problem;
  }
}

/**
 * One same-origin JSON call. `signed`: add the off-chain request signature
 * over the exact body sent. `auth: false`: a 401 is an answer, not a lost session.
 */
async function api(method, path, body, { signed = false, auth = true, what } = {}) {
  const headers = { accept: 'application/json' };
  let text;
  if (body !== undefined) {
    text = JSON.stringify(body);
    headers['content-type'] = 'application/json';
  }
  if (signed) {
    const key = await needKey();
    const signedAt = String(Date.now());
    const nonce = freshNonce();
    headers['x-medledger-signed-at'] = signedAt;
    headers['x-medledger-nonce'] = nonce;
    headers['x-medledger-signature'] = personalSign(
      key,
      requestSigningText(location.host, nonce, method, path.split('?')[0], signedAt, text ?? ''),
    );
  }
  const label = what ?? `${method} ${path.split('?')[0]}`;
  let res;
  try {
    res = await fetch(path, { method, headers, body: text, credentials: 'same-origin', cache: 'no-store' });
  } catch (e) {
    throw new Error(`${label} failed: the server could not be reached (${errorText(e)}).`);
  }
  const type = res.headers.get('content-type') ?? '';
  let data = null;
  let raw = '';
  if (type.includes('json')) {
    try {
      data = await res.json();
    } catch {
      data = null;
    }
  } else {
    raw = await res.text();
  }
  if (!res.ok) {
    if (res.status === 401 && auth && session) sessionEnded();
    throw new ApiError(res.status, data, raw, label);
  }
  return data ?? raw;
}

function sessionEnded() {
  endSession();
  renderSignIn();
  say('error', 'Your session has ended. Sign in again.');
}

// ---------------------------------------------------------------------------
// Keys
// ---------------------------------------------------------------------------

const KEY_ACCEPT = '.key,.eth.key,text/plain';

async function keyFromInput(input) {
  const file = input.files?.[0];
  if (!file) throw new Error('Choose your chain key file (.eth.key) first.');
  if (file.size > 4096) throw new Error('This file is too large to be a chain key file.');
  return parseKeyFile(await file.text());
}

function checkKeyMatches(key) {
  const account = addressOf(key);
  if (account !== String(session.account).toLowerCase()) {
    throw new Error(
      `This key belongs to account ${account}, but you are signed in as ${session.account}. Choose the key file for your account.`,
    );
  }
}

/**
 * The chain key, asking for the key file the first time one is needed
 * (after a certificate sign-in or a reload).
 */
function needKey() {
  if (chainKey) return Promise.resolve(chainKey);
  if (pendingKey) return pendingKey.promise;
  let resolve;
  let reject;
  const promise = new Promise((ok, fail) => {
    resolve = ok;
    reject = fail;
  });
  pendingKey = { promise, resolve, reject };
  showKeyPrompt();
  return promise;
}

function showKeyPrompt() {
  const host = document.getElementById('keyprompt');
  const input = h('input', { type: 'file', id: 'key-prompt-file', accept: KEY_ACCEPT, required: true });
  const problem = h('p', { class: 'inline-error', id: 'key-prompt-error', 'aria-live': 'assertive' });
  const close = () => host.replaceChildren();
  const cancel = () => {
    close();
    const waiting = pendingKey;
    pendingKey = null;
    waiting?.reject(new Error('No chain key was given, so nothing was signed.'));
  };
  const form = h(
    'form',
    {
      class: 'card keyprompt',
      'aria-labelledby': 'key-prompt-title',
      onsubmit: async (e) => {
        e.preventDefault();
        try {
          const key = await keyFromInput(input);
          checkKeyMatches(key);
          chainKey = key;
          close();
          renderWho();
          const waiting = pendingKey;
          pendingKey = null;
          waiting?.resolve(key);
        } catch (err) {
          problem.textContent = errorText(err);
          sayError(err);
          input.focus();
        }
      },
      onkeydown: (e) => {
        if (e.key === 'Escape') cancel();
      },
    },
    h('h2', { id: 'key-prompt-title' }, 'Your chain key is needed'),
    h(
      'p',
      {},
      'This change is signed in your browser. Choose your chain key file: it is kept in this page\u2019s memory only, never stored or sent.',
    ),
    field('key-prompt-file', 'Chain key file (.eth.key)', input),
    problem,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit' }, 'Use key'),
      h('button', { type: 'button', class: 'secondary', onclick: cancel }, 'Cancel'),
    ),
  );
  host.replaceChildren(form);
  input.focus();
}

// ---------------------------------------------------------------------------
// Signing in and out
// ---------------------------------------------------------------------------

/** The PEM text of a certificate file (`PREFIX.crt`), checked for its armour only. */
async function certificateFromInput(input) {
  const file = input.files?.[0];
  if (!file) throw new Error('Choose your certificate file (.crt) too: the server checks that it is not revoked.');
  if (file.size > 65536) throw new Error('This file is too large to be a certificate file.');
  const pem = await file.text();
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new Error('This is not a certificate file: it must hold a PEM "BEGIN CERTIFICATE" block.');
  }
  return pem;
}

async function signInWithKey(key, certificate) {
  const challenge = await api('POST', '/portal/v1/challenge', {}, { auth: false, what: 'Asking for a sign-in challenge' });
  if (!challenge || typeof challenge.message !== 'string') throw new Error('The server sent no sign-in challenge.');
  // Sign only a sign-in to this very portal.
  const lines = challenge.message.split('\n');
  if (lines[0] !== 'medledger portal sign-in' || lines[1] !== `portal: ${location.host}`) {
    throw new Error(`The sign-in challenge is not for this portal (${location.host}); nothing was signed.`);
  }
  const signature = personalSign(key, challenge.message);
  const signedIn = await api(
    'POST',
    '/portal/v1/session',
    { message: challenge.message, signature, certificate },
    { auth: false, what: 'Signing in' },
  );
  if (addressOf(key) !== String(signedIn.account).toLowerCase()) {
    await fetch('/portal/v1/session', { method: 'DELETE', credentials: 'same-origin' }).catch(() => {});
    throw new Error(`The server signed in account ${signedIn.account}, which is not this key's account ${addressOf(key)}.`);
  }
  return signedIn;
}

function renderSignIn() {
  document.getElementById('who').hidden = true;
  document.getElementById('who').replaceChildren();
  const nav = document.getElementById('nav');
  nav.hidden = true;
  nav.replaceChildren();
  const input = h('input', { type: 'file', id: 'signin-key', accept: KEY_ACCEPT, required: true });
  const certInput = h('input', { type: 'file', id: 'signin-cert', accept: '.crt,.pem', required: true });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h(
    'form',
    {
      class: 'card signin',
      'aria-labelledby': 'signin-title',
      onsubmit: async (e) => {
        e.preventDefault();
        button.disabled = true;
        let key = null;
        try {
          key = await keyFromInput(input);
          const certificate = await certificateFromInput(certInput);
          say('progress', 'Signing in…');
          const signedIn = await signInWithKey(key, certificate);
          chainKey = key;
          key = null;
          await startSession(signedIn);
          say('ok', `Signed in as ${signedIn.name || signedIn.account} (${signedIn.role}).`);
        } catch (err) {
          key?.fill(0);
          sayError(err);
          input.focus();
        } finally {
          button.disabled = false;
        }
      },
    },
    h('h2', { id: 'signin-title', class: 'view-title', tabindex: '-1' }, 'Sign in'),
    h(
      'p',
      {},
      'If your browser holds your medledger client certificate, it signs you in automatically when the page loads.',
    ),
    h(
      'p',
      {},
      'Otherwise, sign in with your chain key file and your certificate file. The key stays in this page\u2019s memory only: it is never stored or sent, and only signatures leave the page. The certificate is sent: the server checks that it is yours and not revoked.',
    ),
    field('signin-key', 'Chain key file (.eth.key)', input),
    field('signin-cert', 'Certificate file (.crt)', certInput),
    h('div', { class: 'actions' }, button),
  );
  const main = document.getElementById('main');
  main.setAttribute('aria-busy', 'false');
  main.replaceChildren(form);
}

async function signOut() {
  try {
    await api('DELETE', '/portal/v1/session', undefined, { auth: false, what: 'Signing out' });
    endSession();
    renderSignIn();
    say('ok', 'Signed out. The chain key was forgotten. (A client certificate signs you in again on the next page load.)');
  } catch (err) {
    endSession();
    renderSignIn();
    sayError(err);
  }
  history.replaceState(null, '', location.pathname);
}

function endSession() {
  session = null;
  forgetKey();
  stopViewTimer();
  alerts.stream?.close();
  alerts.stream = null;
  alerts.items = [];
  alerts.ids = new Set();
  alerts.error = null;
}

async function startSession(signedIn) {
  session = signedIn;
  renderWho();
  renderNav();
  if (roleKind() === 'patient') await startAlerts();
  await route(true);
}

function renderWho() {
  const who = document.getElementById('who');
  if (!session) return;
  who.hidden = false;
  who.replaceChildren(
    srOnly('Signed in as '),
    h('span', { class: 'who-name' }, session.name || 'unnamed'),
    h('span', { class: 'pill', title: 'role' }, session.role),
    h('code', { class: 'hex who-account', title: 'chain account' }, session.account),
    h('span', { class: 'who-via' }, session.via === 'certificate' ? 'signed in by certificate' : 'signed in by key file'),
    h('span', { class: chainKey ? 'who-key loaded' : 'who-key' }, chainKey ? 'chain key loaded' : 'chain key not loaded'),
    h('button', { type: 'button', class: 'secondary small', onclick: signOut }, 'Sign out'),
  );
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

/**
 * Prepares, signs and sends one on-chain action; shows and returns the
 * outcome. Throws (with the server's detail) when anything fails or reverts.
 */
async function act(action, args) {
  say('progress', `Preparing ${action.replace(/_/g, ' ')}…`);
  const prepared = await api('POST', '/portal/v1/prepare', { action, ...args }, { what: `Preparing ${action}` });
  if (session?.chain_id != null && String(prepared.chain_id) !== String(session.chain_id)) {
    throw new Error(`Refusing to sign: the transaction is for chain ${prepared.chain_id}, but this portal is on chain ${session.chain_id}.`);
  }
  say('progress', `Signing: ${prepared.summary}`);
  const key = await needKey();
  const raw = signLegacyTx(key, {
    nonce: prepared.nonce,
    gasPrice: 0,
    gas: prepared.gas,
    to: prepared.to,
    value: 0,
    data: prepared.data,
    chainId: prepared.chain_id,
  });
  say('progress', `Sending: ${prepared.summary}`);
  const result = await api('POST', '/portal/v1/transactions', { raw }, { what: 'Sending the transaction' });
  if (result.status !== 'ok') {
    throw new Error(`The transaction was reverted in block ${result.block}: ${result.error || 'no reason given'} (tx ${result.tx}).`);
  }
  const events = result.events ?? [];
  const what = events.length ? events.map(eventText).join('; ') : `${prepared.summary}: done`;
  say('ok', `${what} in block ${result.block}, tx `, txLink(result.tx), '.');
  return result;
}

/** Runs `work` with `button` disabled; errors go to the status region. */
async function busy(button, work) {
  if (button) button.disabled = true;
  try {
    return await work();
  } catch (err) {
    sayError(err);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ---------------------------------------------------------------------------
// Navigation and routing
// ---------------------------------------------------------------------------

const NAV = {
  patient: [
    ['alerts', 'Alerts'],
    ['history', 'Access history'],
    ['consents', 'Consents'],
    ['vitals', 'Vitals'],
    ['preferences', 'Preferences'],
  ],
  carer: [
    ['patients', 'Patients'],
    ['requests', 'Requests'],
  ],
  admin: [
    ['overview', 'Overview'],
    ['manage', 'Manage'],
    ['reviews', 'Reviews'],
  ],
};

function renderNav() {
  const nav = document.getElementById('nav');
  nav.hidden = false;
  nav.replaceChildren(
    h(
      'ul',
      {},
      NAV[roleKind()].map(([name, text]) =>
        h(
          'li',
          {},
          h(
            'a',
            { href: `#/${name}`, dataset: { view: name } },
            text,
            name === 'alerts' ? h('span', { class: 'badge', id: 'alert-count' }, String(alerts.items.length)) : null,
            name === 'alerts' ? srOnly(' in total') : null,
          ),
        ),
      ),
    ),
  );
}

function markNav(name) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

function stopViewTimer() {
  if (viewTimer) clearInterval(viewTimer);
  viewTimer = null;
}

/** Renders the view the hash names; `moveFocus`: after a navigation. */
async function route(moveFocus) {
  if (!session) return;
  stopViewTimer();
  const views = VIEWS[roleKind()];
  const parts = location.hash.startsWith('#/') ? location.hash.slice(2).split('/').map(decodeURIComponent) : [];
  let [name, ...rest] = parts;
  if (!name || !views[name]) {
    name = NAV[roleKind()][0][0];
    rest = [];
    history.replaceState(null, '', `#/${name}`);
  }
  markNav(name);
  const token = ++renderToken;
  const main = document.getElementById('main');
  main.setAttribute('aria-busy', 'true');
  const view = h('div', { class: 'view', dataset: { view: name } });
  try {
    await loadNames();
    await views[name](view, rest);
  } catch (err) {
    view.append(h('p', { class: 'inline-error' }, errorText(err)));
  }
  if (token !== renderToken || !session) return;
  const hadFocus = main.contains(document.activeElement);
  main.replaceChildren(view);
  main.setAttribute('aria-busy', 'false');
  if (moveFocus || hadFocus || document.activeElement === document.body) {
    (view.querySelector('.view-title') ?? main).focus({ preventScroll: !moveFocus });
  }
}

/** Re-renders the current view after a change, without a navigation. */
function refresh() {
  return route(false);
}

// ---------------------------------------------------------------------------
// Patient: alerts
// ---------------------------------------------------------------------------

async function startAlerts() {
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

async function alertsView(root) {
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

// ---------------------------------------------------------------------------
// Patient: access history and reads
// ---------------------------------------------------------------------------

function decisionOf(e) {
  const a = argsOf(e);
  switch (e.event) {
    case 'AccessGranted':
      return `granted (basis ${named(BASIS, a.basis)})`;
    case 'AccessDenied':
      return `denied (${named(DENY, a.reason)})`;
    case 'BreakGlass':
      return 'emergency access, to be reviewed';
    case 'ReviewClosed':
      return `review closed: ${a.outcome ?? ''}`;
    case 'Annotated':
      return named({ 1: 'annotation', 2: 'correction' }, a.kind) || 'annotation';
    default:
      return '';
  }
}

function whatOf(e) {
  const a = argsOf(e);
  const parts = [humanKind(e.event.replace(/([a-z])([A-Z])/g, '$1 $2').toLowerCase())];
  if (a.id !== undefined) parts.push(`#${a.id}`);
  if (a.purpose) parts.push(`purpose: ${purposeText(a.purpose)}`);
  if (a.reason && e.event === 'BreakGlass') parts.push(`reason fingerprint: ${String(a.reason).slice(0, 18)}…`);
  // The chain's scope is a bit set; only a server-decoded one is worth showing.
  if (a.scope !== undefined && a.scope !== '' && !/^\d+$/.test(String(a.scope))) parts.push(`scope: ${a.scope}`);
  return parts.join(', ');
}

function auditRows(bundle) {
  const rows = [];
  for (const entry of bundle?.entry ?? []) {
    const r = entry?.resource;
    if (!r || r.resourceType !== 'AuditEvent') continue;
    const who = r.agent?.[0]?.who;
    const purposes = (r.purposeOfEvent ?? [])
      .map((p) => p?.text || p?.coding?.[0]?.display || p?.coding?.[0]?.code)
      .filter(Boolean);
    const request = (r.entity ?? []).find((x) => /access-request/i.test(String(x?.what?.identifier?.system ?? '')));
    const served = String(r.outcome) === '0';
    const index = ledgerIndexOf(r);
    rows.push({
      recorded: r.recorded,
      who: who?.identifier?.value ?? who?.display ?? 'unknown',
      purpose: purposes.join('; ') || 'none given',
      outcome: `${served ? 'served' : 'refused'}${r.outcomeDesc ? `: ${r.outcomeDesc}` : ''}`,
      request: request?.what?.identifier?.value ?? null,
      index,
    });
  }
  return rows.reverse();
}

async function historyView(root) {
  root.append(heading('Access history'), h('p', { class: 'lead' }, 'Who asked for your data, what was decided, and every read of it.'));
  const [events, audit] = await Promise.allSettled([
    api('GET', '/portal/v1/events?names=AccessGranted,AccessDenied,BreakGlass,ReviewClosed,Annotated&limit=200', undefined, {
      what: 'Loading access decisions',
    }),
    api('GET', '/v1/audit', undefined, { what: 'Loading the reads of your data' }),
  ]);
  const decisions = card('Access decisions on the chain');
  if (events.status === 'fulfilled') {
    const list = [...(events.value.events ?? [])].sort((a, b) => Number(b.block) - Number(a.block));
    decisions.append(
      table(
        'Access decisions on the chain, newest first',
        ['When', 'Who', 'What', 'Decision', 'Transaction'],
        list.map((e) => [
          e.time_ms ? fmtTime(e.time_ms) : `block ${e.block}`,
          code(argsOf(e).requester ?? argsOf(e).reviewer ?? argsOf(e).author ?? 'unknown'),
          whatOf(e),
          decisionOf(e),
          txLink(e.tx),
        ]),
        { empty: 'No one has asked for your data yet.' },
      ),
    );
  } else {
    decisions.append(h('p', { class: 'inline-error' }, errorText(events.reason)));
  }
  const reads = card('Reads of your data');
  if (audit.status === 'fulfilled') {
    const rows = auditRows(audit.value);
    reads.append(
      h('p', { class: 'hint' }, 'Each read is an entry in your ledger; \u201cproof\u201d shows the entry and its proof of inclusion.'),
      table(
        'Reads of your data, newest first',
        ['When', 'Who', 'Purpose', 'Outcome', 'Request', 'Ledger'],
        rows.map((r) => [
          r.recorded ? fmtTime(Date.parse(r.recorded)) : 'unknown time',
          person(r.who),
          r.purpose,
          r.outcome,
          r.request ?? 'none',
          r.index !== null ? h('a', { href: `#/ledger/${r.index}` }, 'proof', srOnly(` of ledger entry ${r.index}`)) : 'no entry',
        ]),
        { empty: 'No one has read your data yet.' },
      ),
    );
  } else {
    reads.append(h('p', { class: 'inline-error' }, errorText(audit.reason)));
  }
  root.append(decisions, reads);
}

// ---------------------------------------------------------------------------
// Patient: consents
// ---------------------------------------------------------------------------

function scopeText(scope) {
  if (Array.isArray(scope)) return scope.join(', ');
  return String(scope ?? '');
}

function scopeHint() {
  const names = (catalogue ?? []).map((c) => c.name).filter(Boolean);
  return names.length
    ? `\u201call\u201d, or data types separated by commas: ${names.join(', ')}.`
    : '\u201call\u201d, or data type names separated by commas (heart-rate, spo2, …).';
}

async function loadCatalogue() {
  if (catalogue) return catalogue;
  try {
    const list = await api('GET', '/portal/v1/catalogue', undefined, { what: 'Loading the data types' });
    catalogue = Array.isArray(list) ? list : (list.types ?? []);
  } catch {
    catalogue = null;
  }
  return catalogue ?? [];
}

async function consentsView(root) {
  root.append(heading('Consents'), h('p', { class: 'lead' }, 'Who may read your data beyond your assigned carers, and for what.'));
  const [consents] = await Promise.all([
    api('GET', '/portal/v1/consents', undefined, { what: 'Loading your consents' }),
    loadCatalogue(),
  ]);
  const now = Date.now() / 1000;
  const grants = consents.grants ?? [];
  const current = card('Current grants');
  current.append(
    table(
      'Current consent grants',
      ['Grant', 'Granted to', 'Scope', 'Purpose', 'Granted', 'Expires', 'Action'],
      grants.map((g) => {
        const revoked = g.revoked === true;
        const expired = Number(g.expiry) > 0 && Number(g.expiry) < now;
        const revoke = h('button', { type: 'button', class: 'danger small', 'aria-label': `Revoke consent ${g.id}` }, 'Revoke');
        revoke.addEventListener('click', () =>
          busy(revoke, async () => {
            await act('revoke', { id: Number(g.id) });
            await refresh();
          }),
        );
        return [
          String(g.id),
          g.grantee && !ZERO_ADDRESS.test(g.grantee) ? person(g.grantee) : `every ${g.role ?? 'carer'}`,
          scopeText(g.scope),
          g.purpose ? purposeText(g.purpose) : 'any purpose',
          fmtSecs(g.granted_at),
          `${fmtSecs(g.expiry)}${expired ? ' (expired)' : ''}`,
          revoked ? 'revoked' : revoke,
        ];
      }),
      { empty: 'You have granted no consents.', rowProps: (i) => ({ dataset: { grant: String(grants[i].id) } }) },
    ),
  );

  const grantee = h('input', { type: 'text', id: 'grant-grantee', autocomplete: 'off', spellcheck: 'false', placeholder: '0x…' });
  const role = h(
    'select',
    { id: 'grant-role' },
    h('option', { value: '' }, 'No role: use the account'),
    h('option', { value: 'doctor' }, 'Every doctor'),
    h('option', { value: 'nurse' }, 'Every nurse'),
  );
  const scope = h('input', { type: 'text', id: 'grant-scope', value: 'all', required: true, autocomplete: 'off' });
  const purpose = purposeSelect('grant-purpose', 'Any purpose');
  const days = h('input', { type: 'number', id: 'grant-days', value: '30', min: '1', max: '3650', required: true });
  const submit = h('button', { type: 'submit' }, 'Grant access');
  const grantForm = h(
    'form',
    {
      'aria-labelledby': 'grant-title',
      onsubmit: (e) => {
        e.preventDefault();
        busy(submit, async () => {
          const args = grantArgs(grantee.value, role.value, scope.value, purpose.value, days.value);
          await act('grant', args);
          await refresh();
        });
      },
    },
    h('h3', { id: 'grant-title' }, 'Grant access'),
    field('grant-grantee', 'Grantee account', grantee, 'The chain account (0x and 40 hex digits) of one person.'),
    field('grant-role', 'Or a whole role', role),
    field('grant-scope', 'Scope', scope, scopeHint()),
    field('grant-purpose', 'Purpose', purpose, 'Only reads asked for this purpose, or any.'),
    field('grant-days', 'Days', days, 'How long the grant lasts.'),
    h('div', { class: 'actions' }, submit),
  );

  const opted = h('input', { type: 'checkbox', id: 'opt-out', checked: consents.opted_out === true });
  const save = h('button', { type: 'submit', class: 'secondary' }, 'Save opt-out choice');
  const optForm = h(
    'form',
    {
      'aria-labelledby': 'opt-title',
      onsubmit: (e) => {
        e.preventDefault();
        busy(save, async () => {
          await act('opt_out', { opted_out: opted.checked });
          await refresh();
        });
      },
    },
    h('h3', { id: 'opt-title' }, 'Default access by assigned carers'),
    h(
      'p',
      {},
      consents.opted_out
        ? 'You have opted out: doctors and nurses assigned to you need a grant from you, except in an emergency.'
        : 'Doctors and nurses assigned to you may read your data for your care without a grant.',
    ),
    h('div', { class: 'check' }, opted, h('label', { for: 'opt-out' }, 'Opt out: assigned carers need my grant')),
    h('div', { class: 'actions' }, save),
  );
  root.append(current, h('section', { class: 'card' }, grantForm), h('section', { class: 'card' }, optForm));
}

function grantArgs(grantee, role, scope, purpose, days) {
  const account = grantee.trim();
  if (account && role) throw new Error('Give either a grantee account or a role, not both.');
  if (!account && !role) throw new Error('Give a grantee account or choose a role.');
  if (account && !/^0x[0-9a-fA-F]{40}$/.test(account)) {
    throw new Error('The grantee account must be 0x followed by 40 hexadecimal digits.');
  }
  const n = Number(days);
  if (!Number.isInteger(n) || n < 1) throw new Error('Days must be a whole number of at least 1.');
  const args = { scope: normaliseScope(scope), purpose: purpose.trim(), days: n };
  if (account) args.grantee = account;
  else args.role = role;
  return args;
}

function normaliseScope(scope) {
  const text = scope
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .join(',');
  if (!text) throw new Error('Give a scope: \u201call\u201d or data type names separated by commas.');
  return text;
}

// ---------------------------------------------------------------------------
// Charts
// ---------------------------------------------------------------------------

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
function chartsOf(observations, types) {
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

async function patientVitalsView(root) {
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

// ---------------------------------------------------------------------------
// Patient: preferences
// ---------------------------------------------------------------------------

async function preferencesView(root) {
  root.append(heading('Preferences'), h('p', { class: 'lead' }, 'Which alerts are delivered to you. Every alert is kept either way.'));
  const prefs = await api('GET', '/v1/alerts/preferences', undefined, { what: 'Loading your alert preferences' });
  const mode = h(
    'select',
    { id: 'pref-mode' },
    h('option', { value: 'all', selected: prefs.mode === 'all' }, 'All alerts'),
    h('option', { value: 'unusual', selected: prefs.mode === 'unusual' }, 'Only unusual alerts'),
  );
  const hour = (id, value) => h('input', { type: 'number', id, min: '0', max: '23', value: String(value ?? 0), required: true });
  const start = hour('pref-day-start', prefs.day_start);
  const end = hour('pref-day-end', prefs.day_end);
  const reads = h('input', { type: 'number', id: 'pref-max-reads', min: '0', value: String(prefs.max_reads_per_hour ?? 0), required: true });
  const save = h('button', { type: 'submit' }, 'Save preferences');
  const form = h(
    'form',
    {
      'aria-labelledby': 'pref-title',
      onsubmit: (e) => {
        e.preventDefault();
        busy(save, async () => {
          const body = {
            mode: mode.value,
            day_start: wholeNumber(start.value, 'The start hour', 0, 23),
            day_end: wholeNumber(end.value, 'The end hour', 0, 23),
            max_reads_per_hour: wholeNumber(reads.value, 'Reads per hour', 0, Number.MAX_SAFE_INTEGER),
          };
          say('progress', 'Signing your preferences…');
          await api('PUT', '/v1/alerts/preferences', body, { signed: true, what: 'Saving preferences' });
          say('ok', 'Preferences saved.');
          await refresh();
        });
      },
    },
    h('h3', { id: 'pref-title' }, 'Alert preferences'),
    field('pref-mode', 'Alerts to deliver', mode),
    field('pref-day-start', 'Usual hours start (UTC hour, 0\u201323)', start),
    field('pref-day-end', 'Usual hours end (UTC hour, 0\u201323)', end, 'Reads outside these hours are unusual. The same hour twice: any hour is usual.'),
    field('pref-max-reads', 'Reads per hour by one person before they are unusual', reads),
    h('div', { class: 'actions' }, save),
  );
  root.append(h('section', { class: 'card' }, form));
}

function wholeNumber(text, what, min, max) {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${what} must be a whole number from ${min} to ${max}.`);
  return n;
}

// ---------------------------------------------------------------------------
// Doctors and nurses
// ---------------------------------------------------------------------------

function patientRefOf(text) {
  const ref = text.trim();
  if (!/^0x[0-9a-fA-F]{64}$/.test(ref)) throw new Error('The patient reference must be 0x followed by 64 hexadecimal digits.');
  return ref.toLowerCase();
}

function patientChoices(id) {
  return h(
    'datalist',
    { id },
    (session.patients ?? []).map((p) =>
      h('option', { value: p.patient }, [p.department, p.room && `room ${p.room}`, p.bed && `bed ${p.bed}`].filter(Boolean).join(', ')),
    ),
  );
}

async function patientsView(root) {
  root.append(heading('Patients'));
  await loadCatalogue();
  const assigned = session.patients ?? [];
  const requestPatient = h('input', { type: 'text', id: 'req-patient', list: 'req-patients', autocomplete: 'off', spellcheck: 'false', placeholder: '0x…', required: true });
  const mine = card('Your patients');
  mine.append(
    table(
      'Patients you are assigned to',
      ['Patient', 'Department', 'Room', 'Bed', 'Action'],
      assigned.map((p) => [
        code(p.patient, false),
        p.department ?? '',
        p.room ?? '',
        p.bed ?? '',
        h(
          'button',
          {
            type: 'button',
            class: 'secondary small',
            'aria-label': `Request access to patient ${short(p.patient)}`,
            onclick: () => {
              requestPatient.value = p.patient;
              document.getElementById('req-scope')?.focus();
            },
          },
          'Request access',
        ),
      ]),
      { empty: 'You are not assigned to any patient. You can still request access with a patient reference.' },
    ),
  );

  const scope = h('input', { type: 'text', id: 'req-scope', value: 'all', required: true, autocomplete: 'off' });
  const purpose = purposeSelect('req-purpose');
  const submit = h('button', { type: 'submit' }, 'Request access');
  const requestForm = h(
    'form',
    {
      'aria-labelledby': 'req-title',
      onsubmit: (e) => {
        e.preventDefault();
        busy(submit, async () => {
          await act('request_access', { patient: patientRefOf(requestPatient.value), scope: normaliseScope(scope.value), purpose: purpose.value.trim() });
        });
      },
    },
    h('h3', { id: 'req-title' }, 'Request access'),
    h('p', { class: 'hint' }, 'The chain decides at once, from your assignment or the patient\u2019s consent, and records the decision.'),
    field('req-patient', 'Patient reference', requestPatient, 'Choose one of your patients or paste a reference (0x and 64 hex digits).'),
    patientChoices('req-patients'),
    field('req-scope', 'Scope', scope, scopeHint()),
    field('req-purpose', 'Purpose', purpose),
    h('div', { class: 'actions' }, submit),
  );
  root.append(mine, h('section', { class: 'card' }, requestForm));
  if (session.role === 'doctor') root.append(breakGlassCard());
}

function breakGlassCard() {
  const patient = h('input', { type: 'text', id: 'bg-patient', list: 'bg-patients', autocomplete: 'off', spellcheck: 'false', placeholder: '0x…', required: true });
  const scope = h('input', { type: 'text', id: 'bg-scope', value: 'all', required: true, autocomplete: 'off' });
  const reason = h('textarea', { id: 'bg-reason', required: true, rows: '2', maxlength: '2000' });
  const start = h('button', { type: 'submit', class: 'danger' }, 'Break glass');
  const confirmBox = h('div', { class: 'confirm', hidden: true });
  const form = h(
    'form',
    {
      'aria-labelledby': 'bg-title',
      onsubmit: (e) => {
        e.preventDefault();
        try {
          const ref = patientRefOf(patient.value);
          if (!reason.value.trim()) throw new Error('Give the reason for emergency access.');
          const args = { patient: ref, scope: normaliseScope(scope.value), reason: reason.value.trim() };
          const go = h('button', { type: 'button', class: 'danger' }, 'Confirm break glass');
          const back = h('button', { type: 'button', class: 'secondary' }, 'Cancel');
          const close = () => {
            confirmBox.hidden = true;
            confirmBox.replaceChildren();
            start.disabled = false;
            start.focus();
          };
          back.addEventListener('click', close);
          go.addEventListener('click', () =>
            busy(go, async () => {
              const result = await act('break_glass', args);
              // The chain holds only the reason's SHA-256; the server keeps
              // the text, sealed for the patient and the reviewers.
              const glass = (result.events ?? []).find((e) => e?.event === 'BreakGlass');
              const id = argsOf(glass).id;
              if (id != null) {
                await api('POST', '/v1/justifications', { request: Number(id), text: args.reason }, { signed: true, what: 'Giving the server the reason' });
              }
              close();
              reason.value = '';
            }),
          );
          start.disabled = true;
          confirmBox.replaceChildren(
            h(
              'p',
              {},
              h('strong', {}, 'Emergency access to patient '),
              code(ref, false),
              ` for \u201c${args.reason}\u201d. You get access now; an administrator reviews it and the patient is told. Continue?`,
            ),
            h('div', { class: 'actions' }, go, back),
          );
          confirmBox.hidden = false;
          go.focus();
        } catch (err) {
          sayError(err);
        }
      },
    },
    h('h3', { id: 'bg-title' }, 'Break glass'),
    h('p', { class: 'hint' }, 'Emergency access without consent. It is granted at once and always reviewed.'),
    field('bg-patient', 'Patient reference', patient),
    patientChoices('bg-patients'),
    field('bg-scope', 'Scope', scope),
    field('bg-reason', 'Reason', reason, 'In your words. The chain keeps only its fingerprint; the text stays sealed at the server for the patient and the reviewing administrator.'),
    h('div', { class: 'actions' }, start),
    confirmBox,
  );
  return h('section', { class: 'card emergency' }, form);
}

async function requestsView(root) {
  root.append(heading('Requests'), h('p', { class: 'lead' }, 'Your access requests and what the chain decided.'));
  const answer = await api('GET', '/portal/v1/requests', undefined, { what: 'Loading your requests' });
  const list = [...(answer.requests ?? [])].sort((a, b) => Number(b.id) - Number(a.id));
  const now = Date.now() / 1000;
  root.append(
    card(
      'Access requests',
      table(
        'Your access requests, newest first',
        ['Request', 'Patient', 'Scope', 'Purpose', 'Decision', 'Expires', 'Transaction', 'Records'],
        list.map((r) => {
          const granted = r.decision === 'granted';
          const expired = granted && Number(r.expires_at) > 0 && Number(r.expires_at) < now;
          const decision = granted
            ? `granted${r.basis ? ` (basis ${r.basis})` : ''}${r.break_glass ? ', break glass' : ''}`
            : `denied${r.reason ? ` (${r.reason})` : ''}`;
          return [
            String(r.id),
            code(r.patient, false),
            scopeText(r.scope),
            purposeText(r.purpose),
            decision,
            granted ? `${fmtSecs(r.expires_at)}${expired ? ' (expired)' : ''}` : '',
            txLink(r.tx),
            granted && !expired
              ? h('a', { class: 'button small', href: `#/records/${r.id}`, 'aria-label': `View vitals of request ${r.id}` }, 'View vitals')
              : '',
          ];
        }),
        { empty: 'You have made no requests yet.', rowProps: (i) => ({ dataset: { request: String(list[i].id) } }) },
      ),
    ),
  );
}

async function recordsView(root, [id]) {
  if (!/^\d+$/.test(id ?? '')) throw new Error('No such request.');
  root.append(
    h('div', { class: 'view-head' }, heading(`Vitals for request ${id}`), h('a', { href: '#/requests', class: 'button secondary small' }, 'Back to requests')),
  );
  const [bundle, types] = await Promise.all([
    api('GET', `/v1/records?request=${id}`, undefined, { what: `Loading the records of request ${id}` }),
    loadCatalogue(),
  ]);
  const observations = observationsOf(bundle);
  if (!observations.length) {
    root.append(h('p', { class: 'empty' }, 'This request returned no readings.'));
    return;
  }
  const info = new Map((types ?? []).map((t) => [String(t.code), t]));
  root.append(h('div', { class: 'charts' }, chartsOf(observations, types)));

  const readings = readingsOf(observations);
  const shown = readings.slice(0, 100);
  root.append(
    card(
      'Readings',
      readings.length > shown.length ? h('p', { class: 'hint' }, `The newest ${shown.length} of ${readings.length} readings.`) : null,
      table(
        'Readings, newest first',
        ['When', 'Values', 'Out of range', 'Notes', 'Reading', 'Action'],
        shown.map((r) => {
          const values = r.observations.map((o) => {
            const t = info.get(o.code);
            return {
              name: t?.display ?? o.display,
              text: o.waveform ? `waveform, ${o.waveform.length} samples` : `${fmtNumber(o.value)} ${o.unit}`,
              side: outOfRange(o, Array.isArray(t?.reference) ? t.reference : null),
            };
          });
          const out = values.filter((v) => v.side);
          const annotate = h(
            'button',
            { type: 'button', class: 'secondary small', 'aria-label': `Annotate the reading at ${fmtTime(r.time)}`, disabled: !r.reading },
            'Annotate',
          );
          annotate.addEventListener('click', () => showAnnotate(Number(id), r, annotate));
          return [
            fmtTime(r.time),
            h('ul', { class: 'plain' }, values.map((v) => h('li', {}, `${v.name}: ${v.text}`))),
            out.length
              ? h('ul', { class: 'plain' }, out.map((v) => h('li', {}, h('strong', { class: 'out-text' }, `${v.name} ${v.side}`))))
              : 'none',
            r.notes.join('; '),
            r.reading ? code(`0x${r.reading}`, false) : 'unknown',
            annotate,
          ];
        }),
      ),
    ),
  );
}

/** Observations grouped by the reading they came from, newest first. */
function readingsOf(observations) {
  const byReading = new Map();
  for (const o of observations) {
    if (o.time === null) continue;
    const key = o.reading ?? `${o.code}@${o.time}#${o.index}`;
    if (!byReading.has(key)) byReading.set(key, { reading: o.reading, time: o.time, observations: [], notes: [] });
    const r = byReading.get(key);
    r.observations.push(o);
    for (const n of o.notes) if (!r.notes.includes(n)) r.notes.push(n);
  }
  return [...byReading.values()].sort((a, b) => b.time - a.time);
}

/** Opens the annotation form in a table row under the reading's row. */
function showAnnotate(request, reading, opener) {
  document.querySelector('tr.annotate-row')?.remove();
  const row = opener.closest('tr');
  const host = h('td', { colspan: String(row.children.length) });
  const hostRow = h('tr', { class: 'annotate-row' }, host);
  row.after(hostRow);
  const text = h('textarea', { id: 'annotate-text', rows: '3', required: true, maxlength: '2000' });
  const correction = h('input', { type: 'checkbox', id: 'annotate-correction' });
  const submit = h('button', { type: 'submit' }, 'Record annotation');
  const close = () => {
    hostRow.remove();
    opener.focus();
  };
  const form = h(
    'form',
    {
      class: 'annotate',
      'aria-labelledby': 'annotate-title',
      onsubmit: (e) => {
        e.preventDefault();
        busy(submit, async () => {
          const body = text.value.trim();
          if (!body) throw new Error('Write the annotation text first.');
          const result = await act('annotate', {
            request,
            reading: `0x${reading.reading}`,
            text: body,
            correction: correction.checked,
          });
          const event = (result.events ?? []).find((ev) => ev.event === 'Annotated');
          const annotation = event ? argsOf(event).id : undefined;
          if (annotation === undefined) {
            throw new Error('The annotation is on the chain, but the server named no Annotated event, so its text was not stored.');
          }
          say('progress', `Storing the text of annotation ${annotation}…`);
          await api('POST', '/v1/annotations', { annotation: Number(annotation), text: body }, { signed: true, what: 'Storing the annotation text' });
          say('ok', `Annotation ${annotation} recorded in block ${result.block}, tx `, txLink(result.tx), '; its text is stored.');
          await refresh();
        });
      },
    },
    h('h4', { id: 'annotate-title' }, `Annotate the reading at ${fmtTime(reading.time)}`),
    h('p', { class: 'hint' }, 'Reading ', code(`0x${reading.reading}`)),
    field('annotate-text', 'Annotation text', text),
    h('div', { class: 'check' }, correction, h('label', { for: 'annotate-correction' }, 'This is a correction of the reading')),
    h(
      'div',
      { class: 'actions' },
      submit,
      h('button', { type: 'button', class: 'secondary', onclick: close }, 'Cancel'),
    ),
  );
  host.replaceChildren(form);
  text.focus();
}

// ---------------------------------------------------------------------------
// Admins
// ---------------------------------------------------------------------------

function ageText(ms) {
  if (!ms) return { text: 'never seen', silent: true };
  const secs = Math.max(0, Math.round((Date.now() - Number(ms)) / 1000));
  const text = secs < 120 ? `${secs} s ago` : secs < 7200 ? `${Math.round(secs / 60)} min ago` : fmtTime(ms);
  return secs > 60 ? { text: `silent, last seen ${text}`, silent: true } : { text: `last seen ${text}`, silent: false };
}

function seen(ms, active) {
  if (active === false) return h('span', {}, 'inactive');
  const age = ageText(ms);
  return h('span', { class: age.silent ? 'silent' : 'alive' }, age.silent ? h('strong', {}, age.text) : age.text);
}

function yesNo(v) {
  return v ? 'yes' : 'no';
}

function argsText(args) {
  return Object.entries(args ?? {})
    .map(([k, v]) => `${k}: ${short(v)}`)
    .join(', ');
}

function overviewData(o) {
  const chain = o.chain ?? {};
  const blocks = [...(chain.blocks ?? [])].sort((a, b) => Number(b.number) - Number(a.number)).slice(0, 10);
  return [
    card(
      'Chain',
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Chain id'),
        h('dd', {}, String(chain.chain_id ?? 'unknown')),
        h('dt', {}, 'Chain height'),
        h('dd', { id: 'chain-height' }, String(chain.height ?? 'unknown')),
        h('dt', {}, 'Newest block'),
        h('dd', {}, blocks[0] ? fmtTime(blocks[0].time_ms) : 'none'),
      ),
      table(
        'Newest blocks',
        ['Block', 'Hash', 'Time', 'Transactions'],
        blocks.map((b) => [String(b.number), code(b.hash, false), fmtTime(b.time_ms), String(b.transactions ?? 0)]),
        { empty: 'No blocks yet.' },
      ),
    ),
    card(
      'Devices',
      table(
        'Devices',
        ['Device (EPC)', 'Kind (group)', 'Rule', 'Active', 'Patient', 'Status'],
        (o.devices ?? []).map((d) => [d.urn ? h('span', { title: String(d.epc) }, d.urn) : code(d.epc), d.group ?? '', d.rule ?? '', yesNo(d.active), d.patient ? code(d.patient, false) : 'none', seen(d.last_seen_ms, d.active)]),
        { empty: 'No devices registered.' },
      ),
    ),
    card(
      'Collectors',
      table(
        'Collectors',
        ['Account', 'Kind', 'Location', 'Active', 'Status'],
        (o.collectors ?? []).map((c) => [code(c.account), c.kind ?? '', c.location ?? '', yesNo(c.active), seen(c.last_seen_ms, c.active)]),
        { empty: 'No collectors registered.' },
      ),
    ),
    card(
      'Patients',
      table(
        'Admitted patients',
        ['Patient', 'Department', 'Room', 'Bed', 'Admitted', 'Carers'],
        (o.patients ?? []).map((p) => [
          code(p.patient, false),
          p.department ?? '',
          p.room ?? '',
          p.bed ?? '',
          typeof p.admitted === 'boolean' ? yesNo(p.admitted) : String(p.admitted ?? ''),
          (p.carers ?? []).length ? h('ul', { class: 'plain' }, p.carers.map((c) => h('li', {}, code(c)))) : 'none',
        ]),
        { empty: 'No patients admitted.' },
      ),
    ),
    card(
      'Staff',
      table(
        'Staff',
        ['Account', 'Role', 'Department', 'Active'],
        (o.staff ?? []).map((s) => [person(s.account), s.role ?? '', s.department ?? '', yesNo(s.active)]),
        { empty: 'No staff registered.' },
      ),
    ),
    card(
      'Anchors',
      table(
        'Newest anchors',
        ['Block', 'Kind', 'Time', 'Details', 'Transaction'],
        [...(o.anchors ?? [])].sort((a, b) => Number(b.block) - Number(a.block)).slice(0, 20).map((a) => [String(a.block), String(a.kind ?? ''), fmtTime(a.time_ms), argsText(a.args), txLink(a.tx)]),
        { empty: 'Nothing anchored yet.' },
      ),
    ),
    card(
      'Rule changes',
      table(
        'Rule changes',
        ['Block', 'Event', 'Details'],
        [...(o.rules ?? [])].sort((a, b) => Number(b.block) - Number(a.block)).slice(0, 20).map((r) => [String(r.block), r.event ?? '', argsText(r.args)]),
        { empty: 'No rule changes.' },
      ),
    ),
  ];
}

async function overviewView(root) {
  root.append(heading('Overview'));
  const updated = h('p', { class: 'hint', id: 'overview-updated' });
  const data = h('div', { class: 'overview-data' });
  root.append(updated, carerForm(), data);
  const load = async () => {
    const overview = await api('GET', '/portal/v1/overview', undefined, { what: 'Loading the overview' });
    // Keep the focus where it was across the refresh.
    const focusables = [...data.querySelectorAll('a, button, summary')];
    const focused = focusables.indexOf(document.activeElement);
    data.replaceChildren(...overviewData(overview));
    if (focused >= 0) [...data.querySelectorAll('a, button, summary')][focused]?.focus();
    updated.textContent = `Live: refreshed every 2 seconds; last at ${new Date().toLocaleTimeString()}.`;
  };
  await load();
  let running = false;
  viewTimer = setInterval(async () => {
    if (running || !data.isConnected) return;
    running = true;
    try {
      await load();
    } catch (err) {
      updated.textContent = `Live refresh failed: ${errorText(err)} Retrying.`;
    } finally {
      running = false;
    }
  }, 2000);
}

function carerForm() {
  const patient = h('input', { type: 'text', id: 'carer-patient', autocomplete: 'off', spellcheck: 'false', placeholder: '0x…', required: true });
  const carer = h('input', { type: 'text', id: 'carer-account', autocomplete: 'off', spellcheck: 'false', placeholder: '0x…', required: true });
  const run = (action, button) =>
    busy(button, async () => {
      const account = carer.value.trim();
      if (!/^0x[0-9a-fA-F]{40}$/.test(account)) throw new Error('The carer account must be 0x followed by 40 hexadecimal digits.');
      await act(action, { patient: patientRefOf(patient.value), carer: account });
    });
  const assign = h('button', { type: 'submit' }, 'Assign carer');
  const release = h('button', { type: 'button', class: 'secondary' }, 'Release carer');
  release.addEventListener('click', () => run('release_carer', release));
  return h(
    'section',
    { class: 'card' },
    h(
      'form',
      {
        'aria-labelledby': 'carer-title',
        onsubmit: (e) => {
          e.preventDefault();
          run('assign_carer', assign);
        },
      },
      h('h3', { id: 'carer-title' }, 'Assign or release a carer'),
      field('carer-patient', 'Patient reference', patient),
      field('carer-account', 'Carer account', carer),
      h('div', { class: 'actions' }, assign, release),
    ),
  );
}

/**
 * One admin action as a form: `fields` are [id, label, control, hint]; on
 * submit, `args()` builds the action's arguments from the controls, the
 * transaction is prepared (with the same dry-run refusal as every other),
 * signed in the page and relayed.
 */
function adminForm(id, title, action, fields, args, submitText, hint) {
  const submit = h('button', { type: 'submit' }, submitText);
  return h(
    'section',
    { class: 'card' },
    h(
      'form',
      {
        'aria-labelledby': `${id}-title`,
        onsubmit: (e) => {
          e.preventDefault();
          busy(submit, async () => {
            await act(action, await args());
          });
        },
      },
      h('h3', { id: `${id}-title` }, title),
      hint ? h('p', { class: 'hint' }, hint) : null,
      ...fields.map(([fid, label, control, fieldHint]) => field(fid, label, control, fieldHint)),
      h('div', { class: 'actions' }, submit),
    ),
  );
}

function textInput(id, attrs = {}) {
  return h('input', { type: 'text', id, autocomplete: 'off', spellcheck: 'false', required: true, ...attrs });
}

function accountOf(text, what) {
  const account = String(text ?? '').trim();
  if (!/^0x[0-9a-fA-F]{40}$/.test(account)) throw new Error(`${what} must be 0x followed by 40 hexadecimal digits.`);
  return account;
}

/** The place fields of an admission or a transfer. */
function placeFields(prefix) {
  const controls = {
    department: textInput(`${prefix}-department`, { placeholder: 'cardiology' }),
    floor: textInput(`${prefix}-floor`, { placeholder: 'floor-2' }),
    room: textInput(`${prefix}-room`, { placeholder: 'room-204' }),
    bed: textInput(`${prefix}-bed`, { placeholder: 'bed-B' }),
  };
  const fields = [
    [`${prefix}-department`, 'Department', controls.department],
    [`${prefix}-floor`, 'Floor', controls.floor],
    [`${prefix}-room`, 'Room', controls.room],
    [`${prefix}-bed`, 'Bed', controls.bed],
  ];
  const values = () => Object.fromEntries(Object.entries(controls).map(([k, c]) => [k, c.value.trim()]));
  return { fields, values };
}

/** Admin: the Registry and the rules, each change a transaction signed here. */
async function manageView(root) {
  root.append(
    heading('Manage'),
    h('p', { class: 'lead' }, 'Staff, devices, patients and rules. Each change is a transaction you sign here; the chain refuses what it would refuse from the command line, before anything is signed.'),
  );

  const staffAccount = textInput('staff-account', { placeholder: '0x…' });
  const staffRole = h('select', { id: 'staff-role' }, h('option', { value: 'doctor' }, 'Doctor'), h('option', { value: 'nurse' }, 'Nurse'));
  const staffDepartment = textInput('staff-department', { placeholder: 'cardiology' });
  root.append(
    adminForm(
      'register-staff',
      'Register staff',
      'register_staff',
      [
        ['staff-account', 'Account', staffAccount, 'The address in their certificate (medledger ca show).'],
        ['staff-role', 'Role', staffRole],
        ['staff-department', 'Department', staffDepartment],
      ],
      () => ({ account: accountOf(staffAccount.value, 'The account'), role: staffRole.value, department: staffDepartment.value.trim() }),
      'Register staff',
    ),
  );

  const goneAccount = textInput('deactivate-account', { placeholder: '0x…' });
  root.append(
    adminForm(
      'deactivate-staff',
      'Deactivate staff',
      'deactivate_staff',
      [['deactivate-account', 'Account', goneAccount]],
      () => ({ account: accountOf(goneAccount.value, 'The account') }),
      'Deactivate',
      'Their assignments and access requests lapse at once.',
    ),
  );

  const deviceCert = h('input', { type: 'file', id: 'device-cert', accept: '.crt,.pem' });
  const deviceEpc = h('input', { type: 'text', id: 'device-epc', autocomplete: 'off', spellcheck: 'false', placeholder: 'urn:epc:tag:sgtin-96:… or 24 hex digits' });
  const deviceGroup = h('input', { type: 'text', id: 'device-group', autocomplete: 'off', placeholder: 'icu-hr-monitor' });
  const deviceRule = h('input', { type: 'text', id: 'device-rule', autocomplete: 'off', placeholder: 'default' });
  root.append(
    adminForm(
      'register-device',
      'Register a device',
      'register_device',
      [
        ['device-cert', 'Certificate file', deviceCert, 'Its EPC, group and rule come from it. Or leave it out and give them below.'],
        ['device-epc', 'EPC', deviceEpc],
        ['device-group', 'Group', deviceGroup],
        ['device-rule', 'Rule', deviceRule],
      ],
      async () => {
        const file = deviceCert.files?.[0];
        if (file) return { certificate: await file.text() };
        if (!deviceEpc.value.trim() || !deviceGroup.value.trim() || !deviceRule.value.trim()) {
          throw new Error('Give the device certificate file, or its EPC, group and rule.');
        }
        return { epc: deviceEpc.value.trim(), group: deviceGroup.value.trim(), rule: deviceRule.value.trim() };
      },
      'Register device',
    ),
  );

  const admitPatient = textInput('admit-patient', { placeholder: '0x… (64 hex digits)' });
  const admitAccount = textInput('admit-account', { placeholder: '0x…' });
  const admitPlace = placeFields('admit');
  root.append(
    adminForm(
      'admit',
      'Admit a patient',
      'admit',
      [
        ['admit-patient', 'Patient reference', admitPatient, 'medledger patient ref gives it from the hospital\u2019s salt.'],
        ['admit-account', 'Patient account', admitAccount, 'The address in their patient card\u2019s certificate: it signs their consents.'],
        ...admitPlace.fields,
      ],
      () => ({ patient: patientRefOf(admitPatient.value), account: accountOf(admitAccount.value, 'The patient account'), ...admitPlace.values() }),
      'Admit',
    ),
  );

  const movePatient = textInput('transfer-patient', { placeholder: '0x…' });
  const movePlace = placeFields('transfer');
  const moveCarers = h('input', { type: 'text', id: 'transfer-carers', autocomplete: 'off', spellcheck: 'false', placeholder: '0x…, 0x…' });
  root.append(
    adminForm(
      'transfer',
      'Transfer a patient',
      'transfer',
      [
        ['transfer-patient', 'Patient reference', movePatient],
        ...movePlace.fields,
        ['transfer-carers', 'Carers after the move', moveCarers, 'Accounts separated by commas; empty: none.'],
      ],
      () => ({
        patient: patientRefOf(movePatient.value),
        ...movePlace.values(),
        carers: moveCarers.value
          .split(',')
          .map((a) => a.trim())
          .filter(Boolean)
          .map((a) => accountOf(a, 'A carer account')),
      }),
      'Transfer',
    ),
  );

  const leaving = textInput('discharge-patient', { placeholder: '0x…' });
  root.append(
    adminForm(
      'discharge',
      'Discharge a patient',
      'discharge',
      [['discharge-patient', 'Patient reference', leaving]],
      () => ({ patient: patientRefOf(leaving.value) }),
      'Discharge',
    ),
  );

  const bindScope = h(
    'select',
    { id: 'bind-scope' },
    ...['device', 'room', 'floor', 'group'].map((v) => h('option', { value: v }, v)),
  );
  const bindTarget = textInput('bind-target', { placeholder: 'an EPC, or a room, floor or group name' });
  const bindRule = textInput('bind-rule', { placeholder: 'default' });
  root.append(
    adminForm(
      'bind-rule',
      'Bind a rule',
      'bind_rule',
      [
        ['bind-scope', 'Scope', bindScope],
        ['bind-target', 'Device, room, floor or group', bindTarget],
        ['bind-rule', 'Rule', bindRule, 'A rule id registered in the RuleManager.'],
      ],
      () => ({ scope: bindScope.value, target: bindTarget.value.trim(), rule: bindRule.value.trim() }),
      'Bind rule',
    ),
  );
}

async function reviewsView(root) {
  root.append(heading('Reviews'), h('p', { class: 'lead' }, 'Break-glass accesses waiting for review, oldest first.'));
  const answer = await api('GET', '/portal/v1/reviews', undefined, { what: 'Loading the review queue' });
  const list = [...(answer.reviews ?? [])].sort((a, b) => Number(a.id) - Number(b.id));
  root.append(
    card(
      'Pending reviews',
      table(
        'Pending break-glass reviews',
        ['Review', 'Patient', 'Requester', 'Reason', 'When', 'Transaction', 'Outcome'],
        list.map((r) => {
          const inputId = `review-outcome-${r.id}`;
          const outcome = h('input', { type: 'text', id: inputId, required: true, autocomplete: 'off', maxlength: '32', placeholder: 'justified' });
          const close = h('button', { type: 'submit', class: 'small' }, 'Close review');
          const form = h(
            'form',
            {
              class: 'inline-form',
              onsubmit: (e) => {
                e.preventDefault();
                busy(close, async () => {
                  if (!outcome.value.trim()) throw new Error(`Give the outcome of review ${r.id}, for example \u201cjustified\u201d.`);
                  await act('close_review', { id: Number(r.id), outcome: outcome.value.trim() });
                  await refresh();
                });
              },
            },
            h('label', { for: inputId }, 'Outcome', srOnly(` for review ${r.id}`)),
            outcome,
            close,
          );
          return [String(r.id), code(r.patient, false), person(r.requester), r.reason ?? '(no reason given to the server)', fmtTime(r.time_ms), txLink(r.tx), form];
        }),
        { empty: 'No break-glass access is waiting for review.', rowProps: (i) => ({ dataset: { review: String(list[i].id) } }) },
      ),
    ),
  );
}

// ---------------------------------------------------------------------------
// Everyone: a transaction and a ledger entry
// ---------------------------------------------------------------------------

async function txView(root, [hash]) {
  if (!/^0x[0-9a-fA-F]{64}$/.test(hash ?? '')) throw new Error('That is not a transaction hash.');
  root.append(h('div', { class: 'view-head' }, heading('Transaction'), backButton()));
  const tx = await api('GET', `/portal/v1/tx/${hash}`, undefined, { what: 'Loading the transaction' });
  root.append(
    card(
      'Summary',
      h(
        'dl',
        { class: 'facts' },
        h('dt', {}, 'Hash'),
        h('dd', {}, code(tx.tx ?? hash)),
        h('dt', {}, 'Block'),
        h('dd', {}, String(tx.block ?? 'unknown')),
        h('dt', {}, 'Time'),
        h('dd', {}, fmtTime(tx.time_ms)),
        h('dt', {}, 'From'),
        h('dd', {}, code(tx.from ?? 'unknown')),
        h('dt', {}, 'To'),
        h('dd', {}, code(tx.to ?? 'none')),
        h('dt', {}, 'Status'),
        h('dd', {}, String(tx.status ?? 'unknown')),
      ),
    ),
    card(
      'Events',
      table(
        'Events the transaction emitted',
        ['Event', 'Meaning', 'Arguments'],
        (tx.events ?? []).map((e) => [e.event ?? '', eventText(e), h('ul', { class: 'plain args' }, Object.entries(argsOf(e)).map(([k, v]) => h('li', {}, `${k}: `, code(v))))]),
        { empty: 'No events.' },
      ),
    ),
  );
}

async function ledgerView(root, [index]) {
  if (!/^\d+$/.test(index ?? '')) throw new Error('That is not a ledger index.');
  root.append(h('div', { class: 'view-head' }, heading(`Ledger entry ${index}`), backButton()));
  const entry = await api('GET', `/portal/v1/ledger/${index}`, undefined, { what: `Loading ledger entry ${index}` });
  const anchor = entry.anchor;
  root.append(
    card(
      'Anchor',
      anchor
        ? h('p', {}, `The checkpoint covering this entry is anchored on the chain in block ${anchor.block}, transaction `, txLink(anchor.tx), '.')
        : h('p', {}, 'The checkpoint covering this entry is not anchored on the chain yet.'),
    ),
    card('Entry', prettyJson(entry.entry ?? null)),
    card('Checkpoint', prettyJson(entry.checkpoint ?? null)),
    card(
      'Inclusion proof',
      (entry.proof ?? []).length
        ? h('ol', { class: 'proof' }, entry.proof.map((p) => h('li', {}, code(p))))
        : h('p', { class: 'empty' }, 'The proof is empty: the entry is the only one in the checkpoint.'),
    ),
  );
}

function backButton() {
  return h('button', { type: 'button', class: 'secondary small', onclick: () => history.back() }, 'Back');
}

const VIEWS = {
  patient: {
    alerts: alertsView,
    history: historyView,
    consents: consentsView,
    vitals: patientVitalsView,
    preferences: preferencesView,
    tx: txView,
    ledger: ledgerView,
  },
  carer: { patients: patientsView, requests: requestsView, records: recordsView, tx: txView },
  admin: { overview: overviewView, manage: manageView, reviews: reviewsView, tx: txView, ledger: ledgerView },
};

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

async function boot() {
  document.getElementById('skip')?.addEventListener('click', (e) => {
    e.preventDefault();
    document.getElementById('main').focus();
  });
  window.addEventListener('hashchange', () => {
    if (session && location.hash.startsWith('#/')) route(true);
  });
  try {
    const res = await fetch('/portal/v1/session', { credentials: 'same-origin', cache: 'no-store', headers: { accept: 'application/json' } });
    if (res.ok) {
      await startSession(await res.json());
      return;
    }
    renderSignIn();
    if (res.status !== 401) {
      let problem = null;
      try {
        problem = await res.json();
      } catch {
        // Not JSON: the status says enough.
      }
      sayError(new ApiError(res.status, problem, '', 'Checking the session'));
    }
  } catch (err) {
    renderSignIn();
    say('error', `The portal could not reach the server: ${errorText(err)}`);
  }
}

if (typeof document !== 'undefined') boot();
