// Transactions: every on-chain action is prepared by the server, signed in
// the page and relayed.

import { signLegacyTx } from './signing.js';
import { eventText } from './fhir.js';
import { session } from './state.js';
import { txLink } from './dom.js';
import { say, sayError } from './status.js';
import { needKey } from './keys.js';
import { api } from './http.js';

/**
 * Prepares, signs and sends one on-chain action; shows and returns the
 * outcome. Throws (with the server's detail) when anything fails or reverts.
 */
export async function act(action, args) {
  say('progress', `Preparing ${action.replace(/_/g, ' ')}…`);
  const prepared = await api('POST', '/portal/v1/prepare', { action, ...args }, { what: `Preparing ${action}` });
  if (session()?.chain_id != null && String(prepared.chain_id) !== String(session().chain_id)) {
    throw new Error(`Refusing to sign: the transaction is for chain ${prepared.chain_id}, but this portal is on chain ${session().chain_id}.`);
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
export async function busy(button, work) {
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

/** A patient reference as typed (0x and 64 hex digits), in lower case; staff and admin actions take one. */
export function patientRefOf(text) {
  const ref = text.trim();
  if (!/^0x[0-9a-fA-F]{64}$/.test(ref)) throw new Error('The patient reference must be 0x followed by 64 hexadecimal digits.');
  return ref.toLowerCase();
}
