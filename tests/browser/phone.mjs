#!/usr/bin/env node
// Drives Switchboard's web phone (/phone) in headless Chromium (/usr/bin/chromium) with
// playwright-core: each user signs in on a page of their own, the page fetches SIP credentials
// and registers over SIP over WebSocket with SIP.js. A user with "opusOnly" offers and answers
// Opus alone (its page's createOffer and createAnswer cut every other audio codec), as an
// Opus-only client would.
//
//   node phone.mjs '<plan JSON>'
//   plan: {"base": "http://127.0.0.1:8080", "users": [{"email": "...", "password": "...",
//          "opusOnly": false}],
//          "signOut": true, "registrationsToken": "<admin access token>"}
//   With registrationsToken, GET /api/v1/registrations is read (as that admin) once every
//   page is registered, and put in each user's result as `registrations`.
//   With "call": {"from": 0, "to": 1, "number": "1002", "dtmf": "5", "talkMs": 3000,
//   "hold": true}, user
//   `from` dials `number`; user `to` (if given: the callee is another page) answers when it
//   rings. Once both are in the call, `from` presses `dtmf` half-way through `talkMs`; then
//   each page's RTCPeerConnection state and inbound audio statistics (getStats) go into the
//   result as `call`, and `from` hangs up. With "hold", `from` holds and resumes the call
//   before that.
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
    // An https base is the server's own (self-signed, for tests) certificate.
    const context = await browser.newContext({ permissions: ['microphone'], ignoreHTTPSErrors: true });
    if (user.opusOnly) {
      // The page offers Opus alone: every other audio codec is cut from its offers.
      await context.addInitScript(() => {
        const opusOnly = (description) => {
          const lines = description.sdp.split('\r\n');
          const opus = lines.map((l) => /^a=rtpmap:(\d+) opus\//i.exec(l)).find(Boolean)[1];
          const sdp = lines
            .map((l) => (l.startsWith('m=audio ') ? l.split(' ').slice(0, 3).concat([opus]).join(' ') : l))
            .filter((l) => {
              const pt = /^a=(?:rtpmap|fmtp|rtcp-fb):(\d+)/.exec(l);
              return !pt || pt[1] === opus;
            })
            .join('\r\n');
          return { type: description.type, sdp };
        };
        for (const name of ['createOffer', 'createAnswer']) {
          const original = RTCPeerConnection.prototype[name];
          RTCPeerConnection.prototype[name] = async function (...args) {
            return opusOnly(await original.apply(this, args));
          };
        }
      });
    }
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
    // Read from the page, which trusts the server's certificate.
    const registrations = await pages[0].page.evaluate(async (token) => {
      const response = await fetch('/api/v1/registrations', { headers: { Authorization: `Bearer ${token}` } });
      return response.json();
    }, plan.registrationsToken);
    for (const user of result.users) user.registrations = registrations;
  }
  if (plan.call) {
    const { from, to, number, dtmf, talkMs = 3000 } = plan.call;
    const involved = [from, ...(to === undefined ? [] : [to])].map((i) => pages[i].page);
    const caller = pages[from].page;
    await caller.fill('#number', number);
    await caller.click('#call');
    if (to !== undefined) {
      const callee = pages[to].page;
      await callee.waitForSelector('body[data-ringing=true]', { timeout: STEP_TIMEOUT_MS });
      await callee.click('#answer');
    }
    for (const page of involved) {
      await page.waitForSelector('body[data-call=established]', { timeout: STEP_TIMEOUT_MS });
    }
    await caller.waitForTimeout(talkMs / 2);
    if (dtmf) {
      for (const key of dtmf) await caller.click(`#pad button:text-is("${key}")`);
    }
    await caller.waitForTimeout(talkMs / 2);
    if (plan.call.hold) {
      // Hold and resume (re-INVITEs, sendonly then sendrecv), each answered before the next.
      await caller.click('#hold');
      await caller.waitForSelector('#hold[aria-pressed=true]', { timeout: STEP_TIMEOUT_MS });
      await caller.click('#hold');
      await caller.waitForSelector('#hold[aria-pressed=false]', { timeout: STEP_TIMEOUT_MS });
      await caller.waitForTimeout(500);
    }
    result.call = [];
    for (const page of involved) {
      result.call.push(await page.evaluate(async () => {
        const pc = window.switchboardPhone.session.sessionDescriptionHandler.peerConnection;
        const stats = await pc.getStats();
        let inbound = null;
        stats.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'audio') inbound = r; });
        const codec = inbound && stats.get(inbound.codecId);
        return {
          connectionState: pc.connectionState,
          packetsReceived: inbound ? inbound.packetsReceived : 0,
          audioLevel: inbound ? inbound.audioLevel : 0,
          totalAudioEnergy: inbound ? inbound.totalAudioEnergy : 0,
          codec: codec ? codec.mimeType : null,
        };
      }));
    }
    await caller.click('#hangup');
    for (const page of involved) {
      await page.waitForSelector('body[data-call=ended]', { timeout: STEP_TIMEOUT_MS });
    }
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
