// Patient views: access history and reads, consents, preferences. (Alerts
// are in `alerts.js`, vitals in `charts.js`.)

import { BASIS, DENY, ZERO_ADDRESS, argsOf, ledgerIndexOf, named, purposeText } from './fhir.js';
import {
  card,
  code,
  field,
  fmtSecs,
  fmtTime,
  h,
  heading,
  humanKind,
  person,
  purposeSelect,
  srOnly,
  table,
  txLink,
} from './dom.js';
import { errorText, say } from './status.js';
import { api } from './http.js';
import { act, busy } from './tx.js';
import { loadCatalogue, normaliseScope, scopeHint, scopeText } from './catalogue.js';
import { refresh } from './routing.js';

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

export async function historyView(root) {
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

export async function consentsView(root) {
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

// ---------------------------------------------------------------------------
// Patient: preferences
// ---------------------------------------------------------------------------

export async function preferencesView(root) {
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
