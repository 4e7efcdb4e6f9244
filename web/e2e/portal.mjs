// End-to-end test of the portal page in a real browser: a patient, a doctor
// and an admin use it the way people would, against a running medledger
// server the Rust test started.
//
//   node web/e2e/portal.mjs --facts FILE --screenshots DIR
//
// FILE (written by the Rust test):
//   {"portal": "https://127.0.0.1:PORT", "chromium": "/usr/bin/chromium",
//    "patient": {"key", "cert", "pkcs8", "account", "ref"}, "doctor": {...}, "admin": {...}}
// `key` is the .eth.key file, `cert` the PEM certificate chain, `pkcs8` its
// PEM P-256 key. Prints each step, saves a full-page screenshot after each
// main step into DIR, and exits 1 with the reason at the first failure.
//
// It waits on what a person sees (roles, labels, text), never on sleeps. The
// few hooks it reads besides: the status region's data-seq/data-kind (to
// tell a new outcome from the previous one), data-alert-id/-kind on alert
// items, data-grant/data-review on table rows, and #chain-height.

import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const WAIT_MS = 30_000;
const CHAIN_MS = 60_000;
const LIVE_ALERT_MS = 20_000;
/** Alert kinds that are about a carer's access or read (not the patient's own changes). */
const ACCESS_ALERT_KINDS = ['access-granted', 'access-denied', 'break-glass', 'record-read', 'record-refused', 'annotation'];

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

function parseArgs(argv) {
  const args = {};
  for (let i = 0; i < argv.length; i += 1) {
    const flag = argv[i];
    if (flag === '--facts' || flag === '--screenshots') {
      const value = argv[i + 1];
      if (!value) fail(`${flag} needs a value`);
      args[flag.slice(2)] = value;
      i += 1;
    } else {
      fail(`unknown argument ${flag}; usage: node web/e2e/portal.mjs --facts FILE --screenshots DIR`);
    }
  }
  if (!args.facts || !args.screenshots) fail('usage: node web/e2e/portal.mjs --facts FILE --screenshots DIR');
  return args;
}

function readFacts(file) {
  let facts;
  try {
    facts = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`cannot read the facts file ${file}: ${e.message}`);
  }
  if (typeof facts.portal !== 'string' || !facts.portal.startsWith('https://')) fail('facts: "portal" must be an https:// URL');
  for (const who of ['patient', 'doctor', 'admin']) {
    const p = facts[who];
    if (!p) fail(`facts: "${who}" is missing`);
    for (const k of ['key', 'cert', 'pkcs8', 'account']) {
      if (typeof p[k] !== 'string' || !p[k]) fail(`facts: "${who}.${k}" is missing`);
    }
  }
  if (!/^0x[0-9a-fA-F]{64}$/.test(facts.patient.ref ?? '')) fail('facts: "patient.ref" must be 0x and 64 hex digits');
  return facts;
}

const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const anyCase = (text) => new RegExp(escape(text), 'i');

let shotNumber = 0;
let shotDir = '.';
const openPages = new Map();
const pageProblems = [];

function log(text) {
  console.log(`e2e: ${text}`);
}

async function shot(page, name) {
  shotNumber += 1;
  const file = join(shotDir, `${String(shotNumber).padStart(2, '0')}-${name}.png`);
  await page.screenshot({ path: file, fullPage: true });
  log(`  screenshot ${file}`);
  checkPages();
}

/** Records uncaught page errors and CSP refusals; `checkPages` fails on them. */
function watch(page, who) {
  openPages.set(who, page);
  page.on('pageerror', (e) => pageProblems.push(`${who} page: uncaught error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to (load|execute|apply|connect|evaluate)/i.test(m.text())) {
      pageProblems.push(`${who} page: ${m.text()}`);
    }
  });
}

function checkPages() {
  if (pageProblems.length) fail(pageProblems.join('\n'));
}

async function statusSeq(page) {
  return Number((await page.locator('#status').getAttribute('data-seq')) ?? 0);
}

/**
 * Waits for the first outcome after `before` in the status region that is
 * an error or matches `pattern`; fails on an error.
 */
async function outcome(page, before, pattern, what, timeout = CHAIN_MS) {
  try {
    const handle = await page.waitForFunction(
      ({ before, source, flags }) => {
        const el = document.getElementById('status');
        if (!el || Number(el.dataset.seq) <= before) return null;
        const text = el.textContent.trim();
        if (el.dataset.kind === 'error') return { kind: 'error', text };
        if (el.dataset.kind === 'ok' && new RegExp(source, flags).test(text)) return { kind: 'ok', text };
        return null;
      },
      { before, source: pattern.source, flags: pattern.flags },
      { timeout },
    );
    const { kind, text } = await handle.jsonValue();
    if (kind === 'error') fail(`${what}: the page reported: ${text}`);
    log(`  outcome: ${text}`);
    return text;
  } catch (e) {
    if (e instanceof Failure) throw e;
    const now = (await page.locator('#status').textContent().catch(() => '')) ?? '';
    fail(`${what}: no outcome matching ${pattern} within ${timeout / 1000} s; the status says: ${now.trim() || '(nothing)'}`);
  }
}

async function expectFocus(locator, what) {
  const focused = await locator.evaluate((el) => el === document.activeElement);
  if (!focused) {
    const actual = await locator.page().evaluate(() => {
      const el = document.activeElement;
      return el ? `${el.tagName.toLowerCase()}#${el.id}` : 'nothing';
    });
    fail(`keyboard: after Tab the focus should be on ${what}, but it is on ${actual}`);
  }
}

async function visible(locator, what, timeout = WAIT_MS) {
  try {
    await locator.first().waitFor({ state: 'visible', timeout });
  } catch {
    fail(`${what}: not visible within ${timeout / 1000} s`);
  }
}

async function openView(page, link, title) {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: link }).click();
  await visible(page.getByRole('heading', { name: title, level: 2 }), `the ${title} view`);
}

async function signInWithKey(page, who, person) {
  await page.goto(`${portal}/`);
  await visible(page.getByRole('heading', { name: 'Sign in', level: 2 }), `${who}: the sign-in screen`);
  await visible(page.getByText(/client certificate/i), `${who}: the line about client certificates`);
  await page.getByLabel('Chain key file (.eth.key)').setInputFiles(person.key);
  await page.getByLabel('Certificate file (.crt)').setInputFiles(person.cert);
  const before = await statusSeq(page);
  await page.getByRole('button', { name: 'Sign in', exact: true }).click();
  await outcome(page, before, /signed in/i, `${who}: signing in by key file`, WAIT_MS);
  const banner = page.getByRole('banner');
  await visible(banner.getByText(anyCase(person.account)), `${who}: the top bar showing account ${person.account}`);
  await visible(banner.getByText('signed in by key file'), `${who}: the top bar saying "signed in by key file"`);
}

/** Waits for at least one chart; on the patient's Vitals view, refreshes while there is none. */
async function waitForChart(page, what, refreshable) {
  const chart = page.getByRole('img', { name: /\d+ readings?, latest/ });
  const deadline = Date.now() + CHAIN_MS;
  while (Date.now() < deadline) {
    try {
      await chart.first().waitFor({ state: 'visible', timeout: 5_000 });
      return chart;
    } catch {
      if (refreshable) await page.getByRole('button', { name: 'Refresh' }).click();
    }
  }
  fail(`${what}: no vitals chart within ${CHAIN_MS / 1000} s`);
}

const args = (() => {
  try {
    return parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(`e2e: ${e.message}`);
    process.exit(1);
  }
})();
const facts = (() => {
  try {
    return readFacts(args.facts);
  } catch (e) {
    console.error(`e2e: ${e.message}`);
    process.exit(1);
  }
})();
const portal = new URL(facts.portal).origin;
shotDir = args.screenshots;
mkdirSync(shotDir, { recursive: true });

const { patient: patientFacts, doctor: doctorFacts, admin: adminFacts, manage } = facts;
let browser;
let steps = 0;

async function step(name, work) {
  steps += 1;
  log(`step ${steps}: ${name}`);
  await work();
  checkPages();
}

async function main() {
  browser = await chromium.launch({
    executablePath: facts.chromium || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });

  // 1. The patient signs in by key file and grants the doctor access with the keyboard.
  const patientContext = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  patientContext.setDefaultTimeout(WAIT_MS);
  const patient = await patientContext.newPage();
  watch(patient, 'patient');
  let grantId = null;
  let alertBaseline = 0;

  await step('patient signs in by key file and sees the Alerts view', async () => {
    await signInWithKey(patient, 'patient', patientFacts);
    await visible(patient.getByRole('heading', { name: 'Alerts', level: 2 }), 'patient: the Alerts view after signing in');
    // The list is empty (and so has no size) until the first alert.
    await patient.getByRole('list', { name: 'Alerts', includeHidden: true }).waitFor({ state: 'attached', timeout: 30_000 });
    await shot(patient, 'patient-alerts');
  });

  await step('patient grants consent to the doctor, using the keyboard only', async () => {
    await openView(patient, 'Consents', 'Consents');
    const form = patient.getByRole('form', { name: 'Grant access' });
    const account = form.getByLabel('Grantee account', { exact: true });
    await account.focus();
    await expectFocus(account, 'the Grantee account field');
    await patient.keyboard.type(doctorFacts.account);
    await patient.keyboard.press('Tab');
    await expectFocus(form.getByLabel('Or a whole role', { exact: true }), 'the role select');
    await patient.keyboard.press('Tab');
    await expectFocus(form.getByLabel('Scope', { exact: true }), 'the Scope field');
    await patient.keyboard.press('ControlOrMeta+A');
    await patient.keyboard.type('all');
    await patient.keyboard.press('Tab');
    await expectFocus(form.getByLabel('Purpose', { exact: true }), 'the Purpose field');
    // A select of PurposeOfUse codes: typing picks "treatment (TREAT)".
    await patient.keyboard.type('treatment');
    await patient.keyboard.press('Tab');
    await expectFocus(form.getByLabel('Days', { exact: true }), 'the Days field');
    await patient.keyboard.press('ControlOrMeta+A');
    await patient.keyboard.type('30');
    await patient.keyboard.press('Tab');
    await expectFocus(form.getByRole('button', { name: 'Grant access' }), 'the Grant access button');
    const before = await statusSeq(patient);
    await patient.keyboard.press('Enter');
    const text = await outcome(patient, before, /granted/i, 'patient: granting consent');
    grantId = /Consent (\d+) granted/i.exec(text)?.[1] ?? null;
    const row = grantId
      ? patient.locator(`tr[data-grant="${grantId}"]`)
      : patient.getByRole('row').filter({ hasText: anyCase(doctorFacts.account) });
    await visible(row, 'patient: the new grant in Current grants');
    const rowText = await row.first().textContent();
    if (!anyCase(doctorFacts.account).test(rowText)) fail(`patient: the grant row does not name the doctor: ${rowText}`);
    if (!/treatment/.test(rowText)) fail(`patient: the grant row does not show the purpose "treatment": ${rowText}`);
    if (!grantId) grantId = (await row.first().getByRole('cell').first().textContent()).trim();
    await shot(patient, 'patient-consent-granted');
  });

  await step('patient sees at least one vitals chart', async () => {
    await openView(patient, 'Vitals', 'Vitals');
    const chart = await waitForChart(patient, 'patient: Vitals', true);
    log(`  chart: ${await chart.first().getAttribute('aria-labelledby').then((id) => patient.locator(`[id="${id}"]`).textContent())}`);
    // One line per device, named in the legend by its EPC URN.
    const device = await chart.first().locator('polyline[data-device]').first().getAttribute('data-device');
    if (!/^urn:epc:id:sgtin:/.test(device ?? '')) fail(`patient: the chart's line names no device by EPC URN: ${device}`);
    const legend = patient.locator('figure.chart-card .legend').first();
    if (!(await legend.textContent()).includes(device)) fail(`patient: the chart's legend does not name the device ${device}`);
    await shot(patient, 'patient-vitals');
  });

  await step('patient keeps the Alerts view open', async () => {
    await openView(patient, 'Alerts', 'Alerts');
    alertBaseline = await patient
      .locator('[data-alert-id]')
      .evaluateAll((items) => items.reduce((max, el) => Math.max(max, Number(el.dataset.alertId)), 0));
    log(`  newest alert so far: ${alertBaseline}`);
  });

  // 2. The doctor signs in by client certificate; the key file is asked for at the first signature.
  const doctorContext = await browser.newContext({
    ignoreHTTPSErrors: true,
    viewport: { width: 1280, height: 900 },
    clientCertificates: [{ origin: portal, certPath: doctorFacts.cert, keyPath: doctorFacts.pkcs8 }],
  });
  doctorContext.setDefaultTimeout(WAIT_MS);
  const doctor = await doctorContext.newPage();
  watch(doctor, 'doctor');
  let requestId = null;

  await step('doctor is signed in by client certificate, with no key loaded', async () => {
    await doctor.goto(`${portal}/`);
    const banner = doctor.getByRole('banner');
    await visible(banner.getByText(anyCase(doctorFacts.account)), `doctor: the top bar showing account ${doctorFacts.account}`);
    await visible(banner.getByText('signed in by certificate'), 'doctor: the top bar saying "signed in by certificate"');
    await visible(banner.getByText('chain key not loaded'), 'doctor: the top bar saying "chain key not loaded"');
    if (await doctor.getByLabel('Chain key file (.eth.key)').count()) fail('doctor: a key file input is shown before any signature is needed');
    await visible(doctor.getByRole('heading', { name: 'Patients', level: 2 }), 'doctor: the Patients view');
    await shot(doctor, 'doctor-certificate');
  });

  await step('doctor requests access, gives the key file when asked, and is granted', async () => {
    const form = doctor.getByRole('form', { name: 'Request access' });
    await form.getByLabel('Patient reference', { exact: true }).fill(patientFacts.ref);
    await form.getByLabel('Scope', { exact: true }).fill('all');
    await form.getByLabel('Purpose', { exact: true }).selectOption('TREAT');
    const before = await statusSeq(doctor);
    await form.getByRole('button', { name: 'Request access' }).click();
    const keyInput = doctor.getByLabel('Chain key file (.eth.key)');
    await visible(keyInput, 'doctor: the prompt for the chain key file');
    await shot(doctor, 'doctor-key-prompt');
    await keyInput.setInputFiles(doctorFacts.key);
    await doctor.getByRole('button', { name: 'Use key' }).click();
    const text = await outcome(doctor, before, /access request \d+ (granted|denied)/i, 'doctor: requesting access');
    if (!/granted/i.test(text)) fail(`doctor: the access request was not granted: ${text}`);
    requestId = /access request (\d+) granted/i.exec(text)[1];
    await visible(doctor.getByRole('banner').getByText('chain key loaded'), 'doctor: the top bar saying "chain key loaded"');
    await shot(doctor, 'doctor-access-granted');
  });

  await step(`doctor views the vitals of request ${requestId ?? ''}`.trim(), async () => {
    await openView(doctor, 'Requests', 'Requests');
    const link = doctor.getByRole('link', { name: `View vitals of request ${requestId}` });
    await visible(link, `doctor: "View vitals" for request ${requestId}`);
    await link.click();
    await visible(doctor.getByRole('heading', { name: `Vitals for request ${requestId}`, level: 2 }), 'doctor: the vitals of the request');
    const chart = await waitForChart(doctor, 'doctor: vitals of the request', false);
    const marked = await doctor.locator('[data-out-of-range]').count();
    if (marked > 0) {
      await visible(doctor.getByRole('heading', { name: /^Out of range \(\d+\)$/ }), 'doctor: the text list of out-of-range readings');
    }
    log(`  ${await chart.count()} chart(s), ${marked} out-of-range marker(s)`);
    await shot(doctor, 'doctor-vitals');
  });

  await step('doctor annotates the first reading', async () => {
    await doctor.getByRole('button', { name: /^Annotate / }).first().click();
    await doctor.getByLabel('Annotation text', { exact: true }).fill('checked by e2e');
    const before = await statusSeq(doctor);
    await doctor.getByRole('button', { name: 'Record annotation' }).click();
    await outcome(doctor, before, /annotation \d+ recorded.*stored/i, 'doctor: annotating a reading');
    await shot(doctor, 'doctor-annotated');
  });

  await step('doctor breaks the glass with reason "e2e-emergency"', async () => {
    await openView(doctor, 'Patients', 'Patients');
    const form = doctor.getByRole('form', { name: 'Break glass' });
    await form.getByLabel('Patient reference', { exact: true }).fill(patientFacts.ref);
    await form.getByLabel('Reason', { exact: true }).fill('e2e-emergency');
    await form.getByRole('button', { name: 'Break glass', exact: true }).click();
    const confirm = form.getByRole('button', { name: 'Confirm break glass' });
    await visible(confirm, 'doctor: the break-glass confirmation');
    const before = await statusSeq(doctor);
    await confirm.click();
    const text = await outcome(doctor, before, /break glass|granted/i, 'doctor: breaking the glass');
    if (!/granted/i.test(text)) fail(`doctor: break glass was not granted: ${text}`);
    await shot(doctor, 'doctor-break-glass');
  });

  // 3. The patient's open page shows a new alert about it, live.
  await step('patient sees a new alert about the doctor, live, without reloading', async () => {
    try {
      await patient.waitForFunction(
        ({ baseline, kinds }) =>
          [...document.querySelectorAll('[data-alert-id]')].some(
            (el) => Number(el.dataset.alertId) > baseline && kinds.includes(el.dataset.alertKind),
          ),
        { baseline: alertBaseline, kinds: ACCESS_ALERT_KINDS },
        { timeout: LIVE_ALERT_MS },
      );
    } catch {
      const kinds = await patient
        .locator('[data-alert-id]')
        .evaluateAll((items) => items.slice(0, 5).map((el) => `${el.dataset.alertId}:${el.dataset.alertKind}`));
      fail(`patient: no new access alert appeared within ${LIVE_ALERT_MS / 1000} s (newest: ${kinds.join(', ') || 'none'})`);
    }
    const fresh = patient.locator('[data-alert-id]').first();
    log(`  newest alert: ${(await fresh.textContent()).replace(/\s+/g, ' ').trim().slice(0, 160)}`);
    await shot(patient, 'patient-live-alert');
  });

  // 4. The admin sees the live overview and closes the break-glass review.
  const adminContext = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  adminContext.setDefaultTimeout(WAIT_MS);
  const admin = await adminContext.newPage();
  watch(admin, 'admin');

  await step('admin signs in by key file and sees devices and the chain height', async () => {
    await signInWithKey(admin, 'admin', adminFacts);
    await visible(admin.getByRole('heading', { name: 'Overview', level: 2 }), 'admin: the Overview view');
    const device = admin.getByRole('table', { name: 'Devices' }).getByRole('row').nth(1);
    await visible(device, 'admin: at least one device');
    if (!/urn:epc:id:sgtin:/.test(await device.textContent())) fail('admin: a device is not shown by its EPC URN');
    const height = Number((await admin.locator('#chain-height').textContent()).trim());
    if (!(height > 0)) fail(`admin: the chain height should be above 0, it shows ${height}`);
    log(`  chain height ${height}`);
    await shot(admin, 'admin-overview');
  });

  await step('admin closes the break-glass review as "justified"', async () => {
    await openView(admin, 'Reviews', 'Reviews');
    const row = admin.getByRole('row').filter({ hasText: 'e2e-emergency' });
    await visible(row, 'admin: the break-glass review with reason e2e-emergency');
    // People shown as people: the doctor by the name on their certificate.
    if (doctorFacts.name) await visible(row.getByText(doctorFacts.name), `admin: the review naming the doctor "${doctorFacts.name}"`);
    const reviewId = (await row.first().getByRole('cell').first().textContent()).trim();
    await row.first().getByLabel(/^Outcome/).fill('justified');
    const before = await statusSeq(admin);
    await row.first().getByRole('button', { name: 'Close review' }).click();
    await outcome(admin, before, /review \d+ closed/i, 'admin: closing the review');
    try {
      await admin.locator(`tr[data-review="${reviewId}"]`).waitFor({ state: 'detached', timeout: WAIT_MS });
    } catch {
      fail(`admin: review ${reviewId} is still listed after closing it`);
    }
    await shot(admin, 'admin-review-closed');
  });

  await step('admin registers and deactivates staff, registers a device, admits, transfers and discharges a patient, binds a rule: each signed in the page', async () => {
    await openView(admin, 'Manage', 'Manage');
    const form = (name) => admin.getByRole('form', { name });
    const signed = async (name, button, what) => {
      const before = await statusSeq(admin);
      await form(name).getByRole('button', { name: button }).click();
      return outcome(admin, before, /in block \d+/, what);
    };
    await form('Register staff').getByLabel('Account', { exact: true }).fill(manage.staff);
    await form('Register staff').getByLabel('Role', { exact: true }).selectOption('nurse');
    await form('Register staff').getByLabel('Department', { exact: true }).fill('ward');
    await signed('Register staff', 'Register staff', 'admin: registering a nurse');
    await form('Deactivate staff').getByLabel('Account', { exact: true }).fill(manage.staff);
    await signed('Deactivate staff', 'Deactivate', 'admin: deactivating the nurse');
    await form('Register a device').getByLabel('Certificate file', { exact: true }).setInputFiles(manage.device_cert);
    await signed('Register a device', 'Register device', 'admin: registering a device from its certificate');
    // The same device again: the dry run refuses it, before anything is signed.
    const before = await statusSeq(admin);
    await form('Register a device').getByRole('button', { name: 'Register device' }).click();
    const refused = await admin.waitForFunction(
      (before) => {
        const el = document.getElementById('status');
        return el && Number(el.dataset.seq) > before && el.dataset.kind === 'error' ? el.textContent : null;
      },
      before,
      { timeout: CHAIN_MS },
    );
    const why = await refused.jsonValue();
    if (!/DuplicateDevice/.test(why)) fail(`admin: registering the device twice should be refused as DuplicateDevice: ${why}`);
    log(`  refused: ${why.trim()}`);
    const admit = form('Admit a patient');
    await admit.getByLabel('Patient reference', { exact: true }).fill(manage.patient_ref);
    await admit.getByLabel('Patient account', { exact: true }).fill(manage.patient_account);
    for (const [label, value] of [['Department', 'ward'], ['Floor', 'floor-3'], ['Room', 'room-301'], ['Bed', 'bed-A']]) {
      await admit.getByLabel(label, { exact: true }).fill(value);
    }
    await signed('Admit a patient', 'Admit', 'admin: admitting a patient');
    const transfer = form('Transfer a patient');
    await transfer.getByLabel('Patient reference', { exact: true }).fill(manage.patient_ref);
    for (const [label, value] of [['Department', 'ward'], ['Floor', 'floor-3'], ['Room', 'room-302'], ['Bed', 'bed-B']]) {
      await transfer.getByLabel(label, { exact: true }).fill(value);
    }
    await signed('Transfer a patient', 'Transfer', 'admin: transferring the patient');
    await form('Discharge a patient').getByLabel('Patient reference', { exact: true }).fill(manage.patient_ref);
    await signed('Discharge a patient', 'Discharge', 'admin: discharging the patient');
    const bind = form('Bind a rule');
    await bind.getByLabel('Scope', { exact: true }).selectOption('group');
    await bind.getByLabel('Device, room, floor or group', { exact: true }).fill('ward-monitor');
    await bind.getByLabel('Rule', { exact: true }).fill('default');
    await signed('Bind a rule', 'Bind rule', 'admin: binding a rule to a group');
    await shot(admin, 'admin-manage');
  });

  // 5. The patient revokes the grant.
  await step(`patient revokes consent ${grantId}`, async () => {
    await openView(patient, 'Consents', 'Consents');
    const row = patient.locator(`tr[data-grant="${grantId}"]`);
    await visible(row, `patient: grant ${grantId} in Current grants`);
    const before = await statusSeq(patient);
    await row.getByRole('button', { name: /^Revoke/ }).click();
    await outcome(patient, before, /revoked/i, 'patient: revoking the grant');
    try {
      await patient.waitForFunction(
        (id) => {
          const tr = document.querySelector(`tr[data-grant="${id}"]`);
          return !tr || /revoked/i.test(tr.textContent);
        },
        grantId,
        { timeout: WAIT_MS },
      );
    } catch {
      fail(`patient: grant ${grantId} is still listed as active after revoking it`);
    }
    await shot(patient, 'patient-revoked');
  });
}

try {
  await main();
  log(`all ${steps} steps passed`);
  await browser.close();
  process.exit(0);
} catch (e) {
  console.error(`e2e: FAILED at step ${steps}: ${e instanceof Failure ? e.message : e.stack ?? e}`);
  for (const [who, page] of openPages) {
    const file = join(shotDir, `failure-${who}.png`);
    await page.screenshot({ path: file, fullPage: true }).then(
      () => console.error(`e2e:   screenshot ${file}`),
      () => {},
    );
  }
  await browser?.close().catch(() => {});
  process.exit(1);
}
