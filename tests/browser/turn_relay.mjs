#!/usr/bin/env node
// TURN relay-only WebRTC check in headless Chromium (/usr/bin/chromium), driven by playwright-core.
//
//   node turn_relay.mjs '<iceServers JSON>'
//   e.g. node turn_relay.mjs '[{"urls":["turn:127.0.0.1:3478?transport=udp"],"username":"u","credential":"p"}]'
//
// Two RTCPeerConnections in one page, both {iceServers, iceTransportPolicy:'relay'}, trade ICE candidates
// directly in page JS, open a data channel, and send MESSAGES messages each way. The TURN transport is
// chosen by the caller with the URL (?transport=udp or ?transport=tcp; both work in Chromium 156).
//
// stdout: exactly one JSON line (the result). stderr: page console messages and diagnostics.
// Exit codes: 0  both PCs 'connected', both ends of the selected candidate pair (on both PCs) are 'relay',
//                and every message arrived intact each way;
//             1  anything else (bad credentials, no relay candidate, ICE failed, lost messages, ...);
//             2  usage error (argument missing or not a JSON array);
//             3  overall hard timeout (45 s);  130/143  interrupted by SIGINT/SIGTERM.
// Chromium is always killed before this process exits (playwright kills its process group on 'exit').
// Do not SIGKILL this process: Chromium runs in its own process group and would be left behind;
// send SIGTERM (or rely on the 45 s timeout).
//
// Chromium notes, found on Debian 12 / Chromium 156.0.8078.79 / playwright-core 1.65.1 against coturn 4.6.1:
// - No HTTP server or secure context is needed: RTCPeerConnection and data channels work on about:blank
//   (window.isSecureContext is false there; the result reports it as secure_context).
// - A TURN server on 127.0.0.1 and loopback relay candidates work as they are, WITHOUT a network namespace:
//   with iceTransportPolicy 'relay' (and no getUserMedia permission) Chromium opens one TURN client socket
//   on the any-address, so the kernel uses 127.0.0.1 as its source; coturn saw every client as 127.0.0.1:*
//   and each PC made exactly one allocation. The same run inside `unshare -n` (only lo up, TURN server in
//   the same namespace) passes too. --allow-loopback-in-peer-connection and
//   --disable-features=WebRtcHideLocalIpsWithMdns are NOT needed for this check (it passed without them);
//   they are kept because they are harmless and match the host-candidate checks.
//   The TURN server must itself accept loopback peers (coturn: allow-loopback-peers), because the peer of
//   each allocation is the other PC's relay address on 127.0.0.1.
// - turn:...?transport=tcp works (relay_protocol 'tcp'). Give ONE transport per run: with both a udp and
//   a tcp URL, Chromium surfaced only the UDP relay candidate (apparently it prunes the lower-priority TURN
//   port), so the TCP path would not be tested. A URL without ?transport= is UDP.
// - A wrong credential gives an icecandidateerror 401 and no relay candidate: the check fails in ~1.3 s.
//   A TCP URL to a closed port fails as fast (error 701). A UDP URL to a port where nothing answers fails
//   only at the in-page budget (~31 s), since Chromium ignores ICMP port unreachable and keeps retrying.
// - One passing check takes ~1.2-1.7 s wall on the 2-core machine (Chromium start ~0.5 s, connect ~150 ms).

const MESSAGES = 20;
const HARD_TIMEOUT_MS = 45000;   // whole run, including browser launch and close -> exit 3
const PAGE_TIMEOUT_MS = 30000;   // in-page budget for gathering + connecting + messaging -> exit 1
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const t0 = Date.now();
let printed = false;
function finish(result, code) {
  if (!printed) {
    printed = true;
    result.elapsed_ms = Date.now() - t0;
    process.stdout.write(JSON.stringify(result) + '\n');
  }
  process.exit(code);   // playwright's 'exit' handler SIGKILLs the Chromium process group
}

const hardTimer = setTimeout(() => {
  console.error('turn_relay: overall timeout after', HARD_TIMEOUT_MS, 'ms');
  finish({ ok: false, error: `overall timeout (${HARD_TIMEOUT_MS} ms)` }, 3);
}, HARD_TIMEOUT_MS);
process.on('SIGINT', () => finish({ ok: false, error: 'interrupted (SIGINT)' }, 130));
process.on('SIGTERM', () => finish({ ok: false, error: 'terminated (SIGTERM)' }, 143));

let iceServers;
try {
  if (process.argv.length !== 3) throw new Error('expected exactly one argument');
  iceServers = JSON.parse(process.argv[2]);
  if (!Array.isArray(iceServers) || iceServers.length === 0) throw new Error('iceServers must be a non-empty JSON array');
} catch (e) {
  console.error(`usage: node turn_relay.mjs '<iceServers JSON array>'  (${e.message})`);
  finish({ ok: false, error: `usage: ${e.message}` }, 2);
}

// Runs inside the page. Returns a plain object; never throws (errors go into result.error).
async function pageCheck({ iceServers, messages, timeoutMs }) {
  const log = (...a) => console.log('[page]', ...a);
  const t0 = performance.now();
  const ms = () => Math.round(performance.now() - t0);
  const r = {
    secure_context: window.isSecureContext,
    state: {}, ice_state: {}, connected_ms: null,
    selected: {}, candidates: { pc1: [], pc2: [] }, candidate_errors: [],
    sent: { pc1_to_pc2: 0, pc2_to_pc1: 0 }, received: { pc1_to_pc2: [], pc2_to_pc1: [] },
    error: null,
  };
  const cfg = { iceServers, iceTransportPolicy: 'relay' };
  const pcs = {};
  let failNow;                                         // reject the current wait early (fatal event)
  const fatal = new Promise((_, rej) => { failNow = rej; });
  fatal.catch(() => {});
  const withDeadline = (p, what) => Promise.race([p, fatal, new Promise((_, rej) =>
    setTimeout(() => rej(new Error(`timeout waiting for ${what}`)), Math.max(0, timeoutMs - ms())))]);

  try {
    pcs.pc1 = new RTCPeerConnection(cfg);
    pcs.pc2 = new RTCPeerConnection(cfg);
    const other = { pc1: 'pc2', pc2: 'pc1' };
    const gathered = {};
    for (const name of ['pc1', 'pc2']) {
      const pc = pcs[name];
      let remoteSet, pending = [];
      pc.remoteReady = new Promise(f => { remoteSet = f; });
      pc.markRemoteSet = () => remoteSet();
      gathered[name] = new Promise(f => {
        pc.onicegatheringstatechange = () => { if (pc.iceGatheringState === 'complete') f(); };
      });
      pc.onicecandidate = async (e) => {
        if (!e.candidate) { log(name, 'end of candidates'); return; }
        const c = e.candidate;
        r.candidates[name].push({ type: c.type, protocol: c.protocol, address: c.address, port: c.port });
        log(name, 'candidate', c.type, c.protocol, c.address + ':' + c.port);
        const peer = pcs[other[name]];
        await peer.remoteReady;                  // addIceCandidate needs the remote description first
        peer.addIceCandidate(c).catch(err => log(other[name], 'addIceCandidate failed:', err.message));
      };
      pc.onicecandidateerror = (e) => {
        const ce = { pc: name, url: e.url, code: e.errorCode, text: e.errorText, address: e.address, port: e.port };
        r.candidate_errors.push(ce);
        log(name, 'icecandidateerror', JSON.stringify(ce));
      };
      pc.oniceconnectionstatechange = () => log(name, 'iceConnectionState', pc.iceConnectionState, ms() + 'ms');
      pc.onconnectionstatechange = () => {
        log(name, 'connectionState', pc.connectionState, ms() + 'ms');
        if (pc.connectionState === 'failed') failNow(new Error(`${name} connectionState failed`));
      };
    }
    const { pc1, pc2 } = pcs;

    // Data channel before the offer, so the offer carries the SCTP m-line.
    const dc1 = pc1.createDataChannel('turn-relay-check', { ordered: true });
    const dc2p = new Promise(f => { pc2.ondatachannel = e => f(e.channel); });
    const opened = dc => dc.readyState === 'open' ? Promise.resolve() : new Promise(f => dc.addEventListener('open', f, { once: true }));

    await pc1.setLocalDescription(await pc1.createOffer());
    await pc2.setRemoteDescription(pc1.localDescription); pc2.markRemoteSet();
    await pc2.setLocalDescription(await pc2.createAnswer());
    await pc1.setRemoteDescription(pc2.localDescription); pc1.markRemoteSet();

    // Fail fast when gathering finishes on either side without a single relay candidate (bad auth, no server).
    for (const name of ['pc1', 'pc2']) {
      gathered[name].then(() => {
        if (!r.candidates[name].some(c => c.type === 'relay'))
          failNow(new Error(`${name} gathered no relay candidate`));
      });
    }

    const connected = pc => pc.connectionState === 'connected' ? Promise.resolve() : new Promise(f => {
      pc.addEventListener('connectionstatechange', () => { if (pc.connectionState === 'connected') f(); });
    });
    await withDeadline(Promise.all([connected(pc1), connected(pc2)]), 'connectionState connected');
    r.connected_ms = ms();
    const dc2 = await withDeadline(dc2p, 'datachannel event');
    await withDeadline(Promise.all([opened(dc1), opened(dc2)]), 'data channel open');
    log('data channel open', ms() + 'ms');

    const expect = (dir) => Array.from({ length: messages }, (_, i) => `${dir} #${i}`);
    const allIn = Promise.all([[dc2, 'pc1_to_pc2'], [dc1, 'pc2_to_pc1']].map(([dc, dir]) => new Promise(f => {
      dc.onmessage = (e) => { r.received[dir].push(String(e.data)); if (r.received[dir].length >= messages) f(); };
    })));
    for (let i = 0; i < messages; i++) {
      dc1.send(`pc1_to_pc2 #${i}`); r.sent.pc1_to_pc2++;
      dc2.send(`pc2_to_pc1 #${i}`); r.sent.pc2_to_pc1++;
    }
    await withDeadline(allIn, 'all messages');
    r.messages_ms = ms();
    r.messages_intact = ['pc1_to_pc2', 'pc2_to_pc1'].every(d => JSON.stringify(r.received[d]) === JSON.stringify(expect(d)));
  } catch (e) {
    r.error = e.message;
    log('error:', e.message);
  }

  // Final states and the selected candidate pair, from getStats.
  for (const name of ['pc1', 'pc2']) {
    const pc = pcs[name];
    if (!pc) continue;
    r.state[name] = pc.connectionState;
    r.ice_state[name] = pc.iceConnectionState;
    try {
      const stats = await pc.getStats();
      let pair = null;
      stats.forEach(s => { if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId); });
      if (!pair) stats.forEach(s => { if (!pair && s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
      if (pair) {
        const l = stats.get(pair.localCandidateId) || {}, rm = stats.get(pair.remoteCandidateId) || {};
        r.selected[name] = {
          local_type: l.candidateType, remote_type: rm.candidateType,
          local: `${l.address}:${l.port}`, remote: `${rm.address}:${rm.port}`,
          protocol: l.protocol, relay_protocol: l.relayProtocol ?? null, turn_url: l.url ?? null,
          state: pair.state, bytes_sent: pair.bytesSent, bytes_received: pair.bytesReceived,
          rtt_ms: pair.currentRoundTripTime != null ? Math.round(pair.currentRoundTripTime * 1000 * 10) / 10 : null,
        };
      } else {
        r.selected[name] = null;
      }
      // relayProtocol and TURN URL of every gathered local candidate (only getStats has them)
      stats.forEach(s => {
        if (s.type !== 'local-candidate') return;
        const c = r.candidates[name].find(c => c.address === s.address && c.port === s.port);
        if (c) { c.relay_protocol = s.relayProtocol ?? null; c.turn_url = s.url ?? null; }
      });
    } catch (e) {
      r.selected[name] = null;
      log(name, 'getStats failed:', e.message);
    }
    pc.close();
  }
  return r;
}

let browser, code = 1, result = { ok: false };
try {
  // imported here, after the signal handlers and the hard timer are in place (a static import runs first)
  const { chromium } = await import('playwright-core');
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,   // ours above exit; 'exit' kills Chromium
    timeout: 20000,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--allow-loopback-in-peer-connection',
      '--disable-features=WebRtcHideLocalIpsWithMdns'],
  });
  const page = await browser.newPage();
  page.on('console', m => console.error(m.text()));
  page.on('pageerror', e => console.error('[pageerror]', e.message));
  await page.goto('about:blank');
  const r = await page.evaluate(pageCheck, { iceServers, messages: MESSAGES, timeoutMs: PAGE_TIMEOUT_MS });

  const sel = ['pc1', 'pc2'].map(n => r.selected[n]);
  const checks = {
    connected: r.state.pc1 === 'connected' && r.state.pc2 === 'connected',
    relay_pair: sel.every(s => s && s.local_type === 'relay' && s.remote_type === 'relay'),
    messages: r.received.pc1_to_pc2.length === MESSAGES && r.received.pc2_to_pc1.length === MESSAGES && r.messages_intact === true,
  };
  const ok = checks.connected && checks.relay_pair && checks.messages && !r.error;
  const types = n => r.candidates[n].map(c => c.type);
  result = {
    ok, checks, error: r.error,
    connection_state: r.state, ice_connection_state: r.ice_state,
    selected_pair: {
      pc1: sel[0] && { local: sel[0].local_type, remote: sel[0].remote_type },
      pc2: sel[1] && { local: sel[1].local_type, remote: sel[1].remote_type },
    },
    relay_protocol: { pc1: sel[0] ? sel[0].relay_protocol : null, pc2: sel[1] ? sel[1].relay_protocol : null },
    selected_detail: r.selected,
    messages: {
      expected: MESSAGES,
      pc1_to_pc2: r.received.pc1_to_pc2.length, pc2_to_pc1: r.received.pc2_to_pc1.length,
      intact: r.messages_intact === true,
      received_pc1_to_pc2: r.received.pc1_to_pc2, received_pc2_to_pc1: r.received.pc2_to_pc1,
    },
    candidate_types: { pc1: types('pc1'), pc2: types('pc2') },
    candidates: r.candidates, candidate_errors: r.candidate_errors,
    connected_ms: r.connected_ms, messages_ms: r.messages_ms ?? null,
    secure_context: r.secure_context, browser: browser.version(),
  };
  code = ok ? 0 : 1;
} catch (e) {
  console.error('turn_relay: error:', e.message);
  result = { ok: false, error: e.message };
  code = 1;
} finally {
  clearTimeout(hardTimer);
  if (browser) {
    // bounded close; if it hangs, process.exit below still kills Chromium
    await Promise.race([browser.close().catch(() => {}), new Promise(f => setTimeout(f, 5000))]);
  }
}
finish(result, code);
