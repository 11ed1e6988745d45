// The Switchboard web phone: signs in to the control plane, fetches short-lived SIP
// credentials (POST /api/v1/sip/credentials) and ICE servers, registers over SIP over
// WebSocket (/sip on the page's own host) with SIP.js, and makes and takes calls.
//
// The page keeps its state on <body data-state="..."> and in window.switchboardPhone, so
// people and test drivers can see where it stands.

import { Invitation, Inviter, Registerer, RegistererState, SessionState, UserAgent } from "/phone/vendor/sip-0.21.2.min.js";

const api = "/api/v1";
const $ = (id) => document.getElementById(id);

/** Fetches new SIP credentials this many seconds before the old ones run out. */
const REFRESH_MARGIN = 300;

const phone = {
  token: null,
  credentials: null,
  userAgent: null,
  registerer: null,
  session: null,
  incoming: null,
  muted: false,
  held: false,
  refreshTimer: null,
  ringer: null,
  /** Everything that happened, newest last (for people debugging and for tests). */
  log: [],
};
window.switchboardPhone = phone;

function note(event, detail = "") {
  phone.log.push({ at: Date.now(), event, detail });
  if (phone.log.length > 200) phone.log.shift();
}

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text;
  note("state", state);
}

function setCallStatus(text) {
  $("call-status").textContent = text;
  note("call", text);
}

async function request(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (phone.token) headers.Authorization = `Bearer ${phone.token}`;
  const response = await fetch(api + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(json.message || `${method} ${path}: ${response.status}`);
  }
  return json;
}

function websocketUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/sip`;
}

async function signIn(event) {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    const body = { email: $("email").value, password: $("password").value };
    if ($("totp").value) body.totp_code = $("totp").value;
    const tokens = await request("POST", "/auth/login", body);
    phone.token = tokens.access_token;
    await start();
  } catch (error) {
    $("login-error").textContent = error.message;
    setState("signed-out", "Signed out");
  }
}

async function start() {
  setState("connecting", "Connecting…");
  const credentials = await request("POST", "/sip/credentials", {});
  const ice = await request("GET", "/ice-servers");
  phone.credentials = credentials;
  const userAgent = new UserAgent({
    uri: UserAgent.makeURI(credentials.uri),
    displayName: credentials.display_name,
    authorizationUsername: credentials.username,
    authorizationPassword: credentials.password,
    transportOptions: { server: websocketUrl(), keepAliveInterval: 30 },
    sessionDescriptionHandlerFactoryOptions: {
      peerConnectionConfiguration: { iceServers: ice.iceServers },
    },
    logBuiltinEnabled: false,
    delegate: {
      onInvite: (invitation) => incoming(invitation),
      onDisconnect: (error) => {
        setState("disconnected", error ? `Disconnected: ${error.message}` : "Disconnected");
        // No error: we stopped it (signing out).
        if (error) reconnect();
      },
    },
  });
  phone.userAgent = userAgent;
  await userAgent.start();
  phone.registerer = new Registerer(userAgent, { regId: 1 });
  phone.registerer.stateChange.addListener((state) => {
    if (state === RegistererState.Registered) {
      setState("registered", `Registered as ${credentials.number}`);
    } else if (state === RegistererState.Unregistered) {
      setState("unregistered", "Not registered");
    }
  });
  await phone.registerer.register({
    requestDelegate: {
      onReject: (response) => setState("refused", `Registration refused: ${response.message.reasonPhrase}`),
    },
  });
  scheduleRefresh();
  $("login").hidden = true;
  $("phone").hidden = false;
  $("identity").textContent = `${credentials.display_name} · ${credentials.number}`;
  history();
}

/** Swaps in fresh credentials before the current ones expire; the next challenge uses them. */
function scheduleRefresh() {
  clearTimeout(phone.refreshTimer);
  const left = phone.credentials.expires_at - Date.now() / 1000 - REFRESH_MARGIN;
  phone.refreshTimer = setTimeout(async () => {
    try {
      const fresh = await request("POST", "/sip/credentials", { extension_id: phone.credentials.extension_id });
      phone.credentials = fresh;
      phone.userAgent.configuration.authorizationUsername = fresh.username;
      phone.userAgent.configuration.authorizationPassword = fresh.password;
      note("credentials", "refreshed");
    } catch (error) {
      note("credentials", error.message);
    }
    scheduleRefresh();
  }, Math.max(left, 10) * 1000);
}

async function reconnect() {
  for (let wait = 1; phone.userAgent && !phone.userAgent.isConnected(); wait = Math.min(wait * 2, 30)) {
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
    try {
      await phone.userAgent.reconnect();
      await phone.registerer.register();
    } catch (error) {
      note("reconnect", error.message);
    }
  }
}

function target(input) {
  const value = input.trim();
  if (value.startsWith("sip:")) return UserAgent.makeURI(value);
  const domain = phone.credentials.realm;
  return UserAgent.makeURI(`sip:${encodeURIComponent(value)}@${domain}`);
}

function call() {
  const number = $("number").value;
  const uri = number && target(number);
  if (!uri || phone.session) return;
  const inviter = new Inviter(phone.userAgent, uri, {
    sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
  });
  track(inviter, `Calling ${number}…`);
  inviter.invite({
    requestDelegate: {
      onProgress: () => setCallStatus(`Ringing ${number}…`),
      onReject: (response) => setCallStatus(`Call failed: ${response.message.statusCode} ${response.message.reasonPhrase}`),
    },
  }).catch((error) => setCallStatus(`Call failed: ${error.message}`));
}

function incoming(invitation) {
  if (phone.session || phone.incoming) {
    invitation.reject({ statusCode: 486 });
    return;
  }
  phone.incoming = invitation;
  const from = invitation.remoteIdentity;
  $("incoming-from").textContent = from.displayName || from.uri.user;
  $("incoming").hidden = false;
  document.body.dataset.ringing = "true";
  note("incoming", from.uri.toString());
  ring(true);
  invitation.stateChange.addListener((state) => {
    if (state === SessionState.Terminated && phone.incoming === invitation) {
      phone.incoming = null;
      $("incoming").hidden = true;
      document.body.dataset.ringing = "false";
      ring(false);
    }
  });
}

function answer() {
  const invitation = phone.incoming;
  if (!invitation) return;
  phone.incoming = null;
  $("incoming").hidden = true;
  document.body.dataset.ringing = "false";
  ring(false);
  track(invitation, "Answering…");
  invitation.accept({
    sessionDescriptionHandlerOptions: { constraints: { audio: true, video: false } },
  }).catch((error) => setCallStatus(`Answer failed: ${error.message}`));
}

function decline() {
  if (phone.incoming) phone.incoming.reject({ statusCode: 603 });
}

/** Follows a session through its life: media on establish, buttons, history at the end. */
function track(session, text) {
  phone.session = session;
  phone.muted = false;
  phone.held = false;
  setCallStatus(text);
  buttons(true);
  session.stateChange.addListener((state) => {
    if (state === SessionState.Established) {
      document.body.dataset.call = "established";
      setCallStatus("In call");
      const handler = session.sessionDescriptionHandler;
      $("remote").srcObject = handler.remoteMediaStream;
      $("remote").play().catch(() => {});
    } else if (state === SessionState.Terminated) {
      document.body.dataset.call = "ended";
      setCallStatus("Call ended");
      if (phone.session === session) phone.session = null;
      buttons(false);
      history();
    }
  });
  session.delegate = {
    onInfo: (info) => {
      note("info", info.request.body);
      info.accept();
    },
  };
}

function buttons(inCall) {
  $("call").disabled = inCall;
  $("hangup").disabled = !inCall;
  $("mute").disabled = !inCall;
  $("hold").disabled = !inCall;
  $("mute").setAttribute("aria-pressed", "false");
  $("hold").setAttribute("aria-pressed", "false");
}

function hangup() {
  const session = phone.session;
  if (!session) return;
  switch (session.state) {
    case SessionState.Initial:
    case SessionState.Establishing:
      if (session instanceof Inviter) session.cancel();
      else if (session instanceof Invitation) session.reject();
      break;
    case SessionState.Established:
      session.bye();
      break;
    default:
      break;
  }
}

function mute() {
  const session = phone.session;
  if (!session || !session.sessionDescriptionHandler) return;
  phone.muted = !phone.muted;
  const pc = session.sessionDescriptionHandler.peerConnection;
  for (const sender of pc.getSenders()) {
    if (sender.track) sender.track.enabled = !phone.muted;
  }
  $("mute").setAttribute("aria-pressed", String(phone.muted));
  note("mute", String(phone.muted));
}

async function hold() {
  const session = phone.session;
  if (!session || session.state !== SessionState.Established) return;
  const held = !phone.held;
  session.sessionDescriptionHandlerOptionsReInvite = { hold: held };
  try {
    await session.invite({
      requestDelegate: {
        onAccept: () => {
          phone.held = held;
          $("hold").setAttribute("aria-pressed", String(held));
          setCallStatus(held ? "On hold" : "In call");
        },
      },
    });
  } catch (error) {
    setCallStatus(`Hold failed: ${error.message}`);
  }
}

/** A key: into the number while idle; in a call, RFC 4733 through the audio sender. */
function key(digit) {
  const session = phone.session;
  if (session && session.state === SessionState.Established) {
    const sent = session.sessionDescriptionHandler.sendDtmf(digit, { duration: 160, interToneGap: 70 });
    note("dtmf", `${digit} ${sent ? "rtp" : "failed"}`);
    return;
  }
  $("number").value += digit;
}

/** Two-tone ringing through Web Audio while a call waits. */
function ring(on) {
  if (phone.ringer) {
    clearInterval(phone.ringer.timer);
    phone.ringer.context.close();
    phone.ringer = null;
  }
  if (!on) return;
  const context = new AudioContext();
  const burst = () => {
    for (const frequency of [440, 480]) {
      const oscillator = context.createOscillator();
      const gain = context.createGain();
      gain.gain.value = 0.1;
      oscillator.frequency.value = frequency;
      oscillator.connect(gain).connect(context.destination);
      oscillator.start();
      oscillator.stop(context.currentTime + 2);
    }
  };
  burst();
  phone.ringer = { context, timer: setInterval(burst, 6000) };
}

async function history() {
  try {
    const page = await request("GET", "/calls?limit=10");
    const list = $("history");
    list.replaceChildren();
    for (const call of page.items || []) {
      const item = document.createElement("li");
      const when = new Date(call.started_at).toLocaleString();
      item.textContent = `${when}: ${call.from_number} → ${call.to_number} (${call.disposition})`;
      list.append(item);
    }
  } catch (error) {
    note("history", error.message);
  }
}

async function signOut() {
  clearTimeout(phone.refreshTimer);
  try {
    if (phone.registerer) await phone.registerer.unregister();
    if (phone.userAgent) await phone.userAgent.stop();
  } catch (error) {
    note("signout", error.message);
  }
  phone.userAgent = null;
  phone.registerer = null;
  phone.token = null;
  $("phone").hidden = true;
  $("login").hidden = false;
  setState("signed-out", "Signed out");
}

$("login").addEventListener("submit", signIn);
$("call").addEventListener("click", call);
$("hangup").addEventListener("click", hangup);
$("mute").addEventListener("click", mute);
$("hold").addEventListener("click", hold);
$("answer").addEventListener("click", answer);
$("decline").addEventListener("click", decline);
$("logout").addEventListener("click", signOut);
$("number").addEventListener("keydown", (event) => {
  if (event.key === "Enter") call();
});
for (const button of $("pad").querySelectorAll("button")) {
  button.addEventListener("click", () => key(button.textContent));
}
setState("signed-out", "Signed out");
