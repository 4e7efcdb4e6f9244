// Status region: the live region that tells what happened (progress, ok or
// error).

import { h } from './dom.js';

let statusSeq = 0;

/** Writes an outcome to the live status region. `kind`: progress, ok or error. */
export function say(kind, ...parts) {
  const el = document.getElementById('status');
  statusSeq += 1;
  el.dataset.kind = kind;
  el.dataset.seq = String(statusSeq);
  const label = kind === 'error' ? h('strong', {}, 'Error: ') : kind === 'progress' ? h('span', { class: 'spinner', 'aria-hidden': 'true' }) : null;
  el.replaceChildren(h('p', {}, label, ...parts));
}

export function sayError(err) {
  say('error', errorText(err));
}

export function errorText(err) {
  return err instanceof Error ? err.message : String(err);
}
