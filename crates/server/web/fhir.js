// FHIR and event reading (pure): the Observations and AuditEvents the server
// sends, and chain events as sentences. `web/test/signing.test.mjs` checks
// the parsing in node.

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

export const BASIS = { 1: 'carer', 2: 'consent', 3: 'emergency' };
export const DENY = {
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

export const ZERO_ADDRESS = /^0x0{40}$/i;

export function named(table, value) {
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
