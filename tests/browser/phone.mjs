#!/usr/bin/env node
// Drives Switchboard's web phone (/phone) in headless Chromium (/usr/bin/chromium) with
// playwright-core: each user signs in on a page of their own, the page fetches SIP credentials
// and registers over SIP over WebSocket with SIP.js.
//
//   node phone.mjs '<plan JSON>'
//   plan: {"base": "http://127.0.0.1:8080", "users": [{"email": "...", "password": "..."}],
//          "signOut": true, "registrationsToken": "<admin access token>"}
//   With registrationsToken, GET /api/v1/registrations is read (as that admin) once every
//   page is registered, and put in each user's result as `registrations`.
//
// stdout: exactly one JSON line, the result: per user the page's final state and its event log.
// stderr: page console messages. Exit codes: 0 every page reached what the plan asks; 1 anything
// else; 2 usage error; 3 overall hard timeout (60 s). Chromium is killed before this exits.

import { chromium } from 'playwright-core';

const HARD_TIMEOUT_MS = 60000;
const STEP_TIMEOUT_MS = 20000;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const t0 = Date.now();
let printed = false;
function finish(result, code) {
  if (!printed) {
    printed = true;
    result.elapsed_ms = Date.now() - t0;
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  process.exit(code);
}
setTimeout(() => finish({ ok: false, error: `overall timeout (${HARD_TIMEOUT_MS} ms)` }, 3), HARD_TIMEOUT_MS);
process.on('SIGINT', () => finish({ ok: false, error: 'interrupted (SIGINT)' }, 130));
process.on('SIGTERM', () => finish({ ok: false, error: 'terminated (SIGTERM)' }, 143));

let plan;
try {
  plan = JSON.parse(process.argv[2] || '');
  if (!plan.base || !Array.isArray(plan.users) || plan.users.length === 0) throw new Error('base and users are required');
} catch (e) {
  console.error(`usage: node phone.mjs '<plan JSON>' (${e.message})`);
  finish({ ok: false, error: `usage: ${e.message}` }, 2);
}

const result = { ok: false, users: [] };
let browser;
try {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
      '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  const pages = [];
  for (const user of plan.users) {
    const context = await browser.newContext({ permissions: ['microphone'] });
    const page = await context.newPage();
    page.on('console', (m) => console.error(`[${user.email}] ${m.type()}: ${m.text()}`));
    page.on('pageerror', (e) => console.error(`[${user.email}] page error: ${e.message}`));
    await page.goto(`${plan.base}/phone`);
    await page.fill('#email', user.email);
    await page.fill('#password', user.password);
    await page.click('#login button[type=submit]');
    pages.push({ user, page });
  }
  for (const { user, page } of pages) {
    await page.waitForSelector('body[data-state=registered]', { timeout: STEP_TIMEOUT_MS });
    result.users.push({
      email: user.email,
      registered: true,
      status: await page.textContent('#status'),
      identity: await page.textContent('#identity'),
    });
  }
  if (plan.registrationsToken) {
    const response = await fetch(`${plan.base}/api/v1/registrations`, {
      headers: { Authorization: `Bearer ${plan.registrationsToken}` },
    });
    const registrations = await response.json();
    for (const user of result.users) user.registrations = registrations;
  }
  if (plan.signOut) {
    for (const [i, { page }] of pages.entries()) {
      await page.click('#logout');
      await page.waitForSelector('body[data-state=signed-out]', { timeout: STEP_TIMEOUT_MS });
      result.users[i].signed_out = true;
    }
  }
  for (const [i, { page }] of pages.entries()) {
    result.users[i].log = await page.evaluate(() => window.switchboardPhone.log.map((e) => `${e.event}:${e.detail}`));
  }
  result.ok = true;
} catch (e) {
  result.error = e.message;
}
if (browser) await browser.close().catch(() => {});
finish(result, result.ok ? 0 : 1);
