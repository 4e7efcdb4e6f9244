// Everyone: a transaction and a ledger entry, with its inclusion proof.

import { argsOf, eventText } from './fhir.js';
import { card, code, fmtTime, h, heading, prettyJson, table, txLink } from './dom.js';
import { api } from './http.js';

export async function txView(root, [hash]) {
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

export async function ledgerView(root, [index]) {
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
