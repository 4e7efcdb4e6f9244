// Doctors and nurses: their patients, access requests, break glass, and the
// records (vitals and annotations) of a granted request.

import { argsOf, observationsOf, outOfRange, purposeText, short } from './fhir.js';
import { session } from './state.js';
import { card, code, field, fmtNumber, fmtSecs, fmtTime, h, heading, purposeSelect, table, txLink } from './dom.js';
import { say, sayError } from './status.js';
import { api } from './http.js';
import { act, busy, patientRefOf } from './tx.js';
import { loadCatalogue, normaliseScope, scopeHint, scopeText } from './catalogue.js';
import { refresh } from './routing.js';
import { chartsOf } from './charts.js';

function patientChoices(id) {
  return h(
    'datalist',
    { id },
    (session().patients ?? []).map((p) =>
      h('option', { value: p.patient }, [p.department, p.room && `room ${p.room}`, p.bed && `bed ${p.bed}`].filter(Boolean).join(', ')),
    ),
  );
}

export async function patientsView(root) {
  root.append(heading('Patients'));
  await loadCatalogue();
  const assigned = session().patients ?? [];
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
  if (session().role === 'doctor') root.append(breakGlassCard());
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

export async function requestsView(root) {
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

export async function recordsView(root, [id]) {
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
