// Admins: the live overview, the Registry and the rules, and break-glass
// reviews.

import { short } from './fhir.js';
import { card, code, field, fmtTime, h, heading, person, srOnly, table, txLink } from './dom.js';
import { errorText } from './status.js';
import { api } from './http.js';
import { act, busy, patientRefOf } from './tx.js';
import { refresh, setViewTimer } from './routing.js';

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

export async function overviewView(root) {
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
  setViewTimer(
    setInterval(async () => {
      if (running || !data.isConnected) return;
      running = true;
      try {
        await load();
      } catch (err) {
        updated.textContent = `Live refresh failed: ${errorText(err)} Retrying.`;
      } finally {
        running = false;
      }
    }, 2000),
  );
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
export async function manageView(root) {
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

export async function reviewsView(root) {
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
