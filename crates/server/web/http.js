// HTTP: one same-origin JSON call, signed when it changes something off
// chain.

import { freshNonce, personalSign, requestSigningText } from './signing.js';
import { session } from './state.js';
import { errorText } from './status.js';
import { needKey } from './keys.js';

export class ApiError extends Error {
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

let sessionLost = () => {};

/** Sets what runs when the server answers 401 while signed in: the session ended. */
export function onSessionLost(listener) {
  sessionLost = listener;
}

/**
 * One same-origin JSON call. `signed`: add the off-chain request signature
 * over the exact body sent. `auth: false`: a 401 is an answer, not a lost session.
 */
export async function api(method, path, body, { signed = false, auth = true, what } = {}) {
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
    if (res.status === 401 && auth && session()) sessionLost();
    throw new ApiError(res.status, data, raw, label);
  }
  return data ?? raw;
}
