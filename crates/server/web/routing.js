// Navigation and routing: the hash names the view (`#/alerts`,
// `#/tx/<hash>`, ...); the entry module gives the views of each role.

import { roleKind, session, setNames } from './state.js';
import { h, srOnly } from './dom.js';
import { errorText } from './status.js';
import { api } from './http.js';
import { alertCount } from './alerts.js';

const NAV = {
  patient: [
    ['alerts', 'Alerts'],
    ['history', 'Access history'],
    ['consents', 'Consents'],
    ['vitals', 'Vitals'],
    ['preferences', 'Preferences'],
  ],
  carer: [
    ['patients', 'Patients'],
    ['requests', 'Requests'],
  ],
  admin: [
    ['overview', 'Overview'],
    ['manage', 'Manage'],
    ['reviews', 'Reviews'],
  ],
};

/** The views of each role: `{ patient: { alerts: view, ... }, ... }`. */
let viewsByRole = {};
let renderToken = 0;
let viewTimer = null;

/** Sets the views of each role; the entry module does, once, before routing. */
export function setViews(byRole) {
  viewsByRole = byRole;
}

export function renderNav() {
  const nav = document.getElementById('nav');
  nav.hidden = false;
  nav.replaceChildren(
    h(
      'ul',
      {},
      NAV[roleKind()].map(([name, text]) =>
        h(
          'li',
          {},
          h(
            'a',
            { href: `#/${name}`, dataset: { view: name } },
            text,
            name === 'alerts' ? h('span', { class: 'badge', id: 'alert-count' }, String(alertCount())) : null,
            name === 'alerts' ? srOnly(' in total') : null,
          ),
        ),
      ),
    ),
  );
}

function markNav(name) {
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
}

export function stopViewTimer() {
  if (viewTimer) clearInterval(viewTimer);
  viewTimer = null;
}

/** Keeps `timer` (from `setInterval`) to stop when the view changes. */
export function setViewTimer(timer) {
  viewTimer = timer;
}

/** Loads the names the signed-in person may see; a failure leaves accounts shown as they are. */
async function loadNames() {
  try {
    const answer = await api('GET', '/v1/directory', undefined, { what: 'Loading names' });
    setNames(answer.names ?? {});
  } catch {
    // Names are a courtesy: accounts still say who it was.
  }
}

/** Renders the view the hash names; `moveFocus`: after a navigation. */
export async function route(moveFocus) {
  if (!session()) return;
  stopViewTimer();
  const views = viewsByRole[roleKind()];
  const parts = location.hash.startsWith('#/') ? location.hash.slice(2).split('/').map(decodeURIComponent) : [];
  let [name, ...rest] = parts;
  if (!name || !views[name]) {
    name = NAV[roleKind()][0][0];
    rest = [];
    history.replaceState(null, '', `#/${name}`);
  }
  markNav(name);
  const token = ++renderToken;
  const main = document.getElementById('main');
  main.setAttribute('aria-busy', 'true');
  const view = h('div', { class: 'view', dataset: { view: name } });
  try {
    await loadNames();
    await views[name](view, rest);
  } catch (err) {
    view.append(h('p', { class: 'inline-error' }, errorText(err)));
  }
  if (token !== renderToken || !session()) return;
  const hadFocus = main.contains(document.activeElement);
  main.replaceChildren(view);
  main.setAttribute('aria-busy', 'false');
  if (moveFocus || hadFocus || document.activeElement === document.body) {
    (view.querySelector('.view-title') ?? main).focus({ preventScroll: !moveFocus });
  }
}

/** Re-renders the current view after a change, without a navigation. */
export function refresh() {
  return route(false);
}
