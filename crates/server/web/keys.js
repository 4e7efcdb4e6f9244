// Keys: the chain key lives in this module and nowhere else. It is read from
// a file when first needed, kept in memory only, never stored or sent, and
// zeroed on signing out.

import { addressOf, parseKeyFile } from './signing.js';
import { session } from './state.js';
import { field, h } from './dom.js';
import { errorText, sayError } from './status.js';

/** @type {Uint8Array | null} */
let chainKey = null;
let pendingKey = null;
let keyLoaded = () => {};

/** Sets what runs when the key prompt has loaded a key (the page shows that it is loaded). */
export function onKeyLoaded(listener) {
  keyLoaded = listener;
}

/** Whether the chain key is in memory. */
export function hasKey() {
  return chainKey !== null;
}

/** Keeps `key`, read and checked at sign-in, as the chain key. */
export function keepKey(key) {
  chainKey = key;
}

export function forgetKey() {
  if (chainKey) chainKey.fill(0);
  chainKey = null;
  if (pendingKey) {
    pendingKey.reject(new Error('Signed out: nothing was signed.'));
    pendingKey = null;
  }
  document.getElementById('keyprompt')?.replaceChildren();
}

export const KEY_ACCEPT = '.key,.eth.key,text/plain';

export async function keyFromInput(input) {
  const file = input.files?.[0];
  if (!file) throw new Error('Choose your chain key file (.eth.key) first.');
  if (file.size > 4096) throw new Error('This file is too large to be a chain key file.');
  return parseKeyFile(await file.text());
}

function checkKeyMatches(key) {
  const account = addressOf(key);
  if (account !== String(session().account).toLowerCase()) {
    throw new Error(
      `This key belongs to account ${account}, but you are signed in as ${session().account}. Choose the key file for your account.`,
    );
  }
}

/**
 * The chain key, asking for the key file the first time one is needed
 * (after a certificate sign-in or a reload).
 */
export function needKey() {
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
          keyLoaded();
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
