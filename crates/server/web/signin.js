// Signing in and out: a chain key file and a certificate file, or the
// browser's client certificate; and what the page shows of who is signed in.

import { addressOf, personalSign } from './signing.js';
import { roleKind, session, setSession } from './state.js';
import { field, h, srOnly } from './dom.js';
import { say, sayError } from './status.js';
import { KEY_ACCEPT, forgetKey, hasKey, keepKey, keyFromInput } from './keys.js';
import { api } from './http.js';
import { startAlerts, stopAlerts } from './alerts.js';
import { renderNav, route, stopViewTimer } from './routing.js';

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

export function renderSignIn() {
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
          keepKey(key);
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
  setSession(null);
  forgetKey();
  stopViewTimer();
  stopAlerts();
}

export async function startSession(signedIn) {
  setSession(signedIn);
  renderWho();
  renderNav();
  if (roleKind() === 'patient') await startAlerts();
  await route(true);
}

export function renderWho() {
  const who = document.getElementById('who');
  const signedIn = session();
  if (!signedIn) return;
  who.hidden = false;
  who.replaceChildren(
    srOnly('Signed in as '),
    h('span', { class: 'who-name' }, signedIn.name || 'unnamed'),
    h('span', { class: 'pill', title: 'role' }, signedIn.role),
    h('code', { class: 'hex who-account', title: 'chain account' }, signedIn.account),
    h('span', { class: 'who-via' }, signedIn.via === 'certificate' ? 'signed in by certificate' : 'signed in by key file'),
    h('span', { class: hasKey() ? 'who-key loaded' : 'who-key' }, hasKey() ? 'chain key loaded' : 'chain key not loaded'),
    h('button', { type: 'button', class: 'secondary small', onclick: signOut }, 'Sign out'),
  );
}

/** The server ended the session (it answered 401): back to signing in. */
export function sessionEnded() {
  endSession();
  renderSignIn();
  say('error', 'Your session has ended. Sign in again.');
}
