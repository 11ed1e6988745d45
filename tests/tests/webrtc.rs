//! Browsers as phones, against the real binary: SIP over WebSocket (RFC 7118) on the HTTP
//! and HTTPS listeners with short-lived credentials from `POST /api/v1/sip/credentials`.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use switchboard_sip::digest::Challenge;
use switchboard_sip::message::{HeaderName, Limits, Message, Response};
use switchboard_tests::{
    ADMIN_PASSWORD, Api, Server, TIMEOUT, expect_events, free_udp_port, metric, run_sipp_register,
    sipp, sipp_command,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message as Frame};

const OWNER: &str = "owner@example.com";
const OWNER_PASSWORD: &str = "owner-password-1";

fn start(dir: &std::path::Path) -> Server {
    Server::start(dir, &[("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)])
}

/// A user who owns extension `number`; returns the user's access token.
async fn owner_of(api: &Api, server: &Server, number: &str) -> String {
    user_with_extension(api, server, (OWNER, OWNER_PASSWORD), number).await
}

/// User `email` owning extension `number`; returns the user's access token.
async fn user_with_extension(
    api: &Api,
    server: &Server,
    (email, password): (&str, &str),
    number: &str,
) -> String {
    let user = api
        .create(
            "/users",
            json!({"email": email, "password": password, "display_name": format!("User {number}")}),
        )
        .await;
    api.create(
        "/extensions",
        json!({"number": number, "display_name": "Owner's phone", "password": "never-in-a-browser",
               "user_id": user["id"]}),
    )
    .await;
    switchboard_tests::login(server, email, password).await
}

async fn credentials(server: &Server, token: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = switchboard_tests::http()
        .post(server.url("/api/v1/sip/credentials"))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// A SIP-over-WebSocket client, as a browser library is one.
struct Browser<S> {
    socket: WebSocketStream<S>,
    /// The `.invalid` host it names itself by (RFC 7118 §5.2).
    host: &'static str,
    transport: &'static str,
    /// The last CSeq of its REGISTER dialog.
    cseq: u32,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Browser<S> {
    async fn exchange(&mut self, text: String) -> Response {
        self.socket.send(Frame::text(text)).await.unwrap();
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.socket.next())
                .await
                .expect("an answer in time")
                .expect("open")
                .unwrap();
            let Frame::Text(text) = frame else { continue };
            match Message::parse(text.as_bytes(), &Limits::default()).unwrap() {
                Message::Response(response) if response.status >= 200 => return response,
                _ => {}
            }
        }
    }

    /// Registers with `credentials` from the API: the challenge, then the answer.
    async fn register(&mut self, credentials: &Value) -> Response {
        let (host, transport) = (self.host, self.transport);
        let uri = credentials["uri"].as_str().unwrap();
        let domain = credentials["realm"].as_str().unwrap();
        self.cseq += 2;
        let first = self.cseq - 1;
        let text = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/{transport} {host};branch=z9hG4bKws{cseq}\r\nMax-Forwards: 70\r\n\
                 From: <{uri}>;tag=b{cseq}\r\nTo: <{uri}>\r\nCall-ID: ws-{host}\r\nCSeq: {cseq} REGISTER\r\n\
                 Contact: <sip:q8ac@{host};transport=ws>;+sip.ice;reg-id=1;+sip.instance=\"<urn:uuid:{host}>\"\r\n\
                 Supported: path, gruu, outbound\r\nExpires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
            )
        };
        let challenge = self.exchange(text(first, "")).await;
        assert_eq!(challenge.status, 401);
        let challenge =
            Challenge::parse(challenge.headers.get(&HeaderName::WwwAuthenticate).unwrap()).unwrap();
        let answer = challenge.answer(
            credentials["username"].as_str().unwrap(),
            credentials["password"].as_str().unwrap(),
            "REGISTER",
            &format!("sip:{domain}"),
            "cnonce",
            1,
        );
        self.exchange(text(first + 1, &format!("Authorization: {answer}\r\n")))
            .await
    }
}

fn sip_request(url: &str) -> tungstenite::handshake::client::Request {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "sip".parse().unwrap());
    request
}

#[tokio::test]
async fn browsers_register_over_ws_and_wss_with_credentials_from_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;

    // The admin owns no extension: nothing to give.
    let (status, body) = credentials(&server, &api.token, None).await;
    assert_eq!(status, 404, "{body}");
    let token = owner_of(&api, &server, "1001").await;
    let (status, creds) = credentials(&server, &token, None).await;
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["number"], "1001");
    assert_eq!(creds["uri"], "sip:1001@localhost");
    let username = creds["username"].as_str().unwrap();
    assert!(username.ends_with(":1001"), "{username}");
    assert!(!creds.to_string().contains("never-in-a-browser"));
    let ws_url = format!("ws://{}/sip", server.http);
    let wss_url = format!("wss://{}/sip", server.https);
    assert_eq!(
        creds["websocket"],
        json!([
            format!("ws://127.0.0.1:{}/sip", server.http.port()),
            format!("wss://127.0.0.1:{}/sip", server.https.port())
        ])
    );
    // Someone else's extension is refused.
    let other = api.extension("1002", "another-secret").await;
    let (status, body) = credentials(&server, &token, Some(json!({"extension_id": other}))).await;
    assert_eq!(status, 403, "{body}");

    // Without the `sip` subprotocol the upgrade is refused.
    match tokio_tungstenite::connect_async(&ws_url).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status(), 400),
        other => panic!("expected 400, got {other:?}"),
    }

    // Over WS: the subprotocol is echoed, a CRLF CRLF keepalive is answered, and the
    // REGISTER succeeds with outbound.
    let (socket, response) = tokio_tungstenite::connect_async(sip_request(&ws_url))
        .await
        .unwrap();
    assert_eq!(response.headers()["sec-websocket-protocol"], "sip");
    let mut plain = Browser {
        socket,
        host: "plain.invalid",
        transport: "WS",
        cseq: 0,
    };
    plain.socket.send(Frame::text("\r\n\r\n")).await.unwrap();
    let pong = tokio::time::timeout(TIMEOUT, plain.socket.next())
        .await
        .unwrap();
    assert_eq!(pong.unwrap().unwrap(), Frame::text("\r\n"));
    let ok = plain.register(&creds).await;
    assert_eq!(ok.status, 200, "{ok:?}");
    assert_eq!(ok.headers.get(&HeaderName::Require), Some("outbound"));

    // Over WSS on the HTTPS listener, trusting the generated certificate.
    let ca = dir.path().join("data/tls/sip-self-signed.crt");
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.https).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (socket, _) = tokio_tungstenite::client_async(sip_request(&wss_url), tls)
        .await
        .unwrap();
    let mut secure = Browser {
        socket,
        host: "secure.invalid",
        transport: "WSS",
        cseq: 0,
    };
    assert_eq!(secure.register(&creds).await.status, 200);

    let listed = api.wait_for_registrations(2).await;
    let mut transports: Vec<&str> = listed
        .iter()
        .map(|r| r["transport"].as_str().unwrap())
        .collect();
    transports.sort_unstable();
    assert_eq!(transports, ["WS", "WSS"], "{listed:?}");

    let connections = "switchboard_sip_websocket_connections";
    assert_eq!(metric(&server, connections).await, 2);

    // Closing the page takes its binding with it.
    plain.socket.close(None).await.unwrap();
    let left = api.wait_for_registrations(1).await;
    assert_eq!(left[0]["transport"], "WSS", "{left:?}");
    assert_eq!(metric(&server, connections).await, 1);

    // Credentials stop working when the extension's password changes.
    let id = creds["extension_id"].as_str().unwrap();
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/extensions/{id}"),
            Some(json!({"password": "a-new-password"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let refused = secure.register(&creds).await;
    assert_eq!(refused.status, 403);
    let (_, fresh) = credentials(&server, &token, None).await;
    assert_eq!(secure.register(&fresh).await.status, 200);
}

/// Runs `tests/browser/phone.mjs` with `plan`; `None` when Chromium or the npm packages are
/// missing (a failure under the README test command, which installs them).
fn drive_phones(plan: &Value) -> Option<Value> {
    let script = switchboard_tests::browser_script("phone.mjs")?;
    let output = std::process::Command::new("node")
        .arg(script)
        .arg(plan.to_string())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(serde_json::from_str(stdout.trim()).unwrap())
}

#[tokio::test]
async fn the_web_phone_signs_in_and_registers_over_ws_and_wss_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    owner_of(&api, &server, "1001").await;
    let page = switchboard_tests::http()
        .get(server.url("/phone"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("/phone/phone.js"));

    // While the page is signed in, the API lists its registration over WebSocket (WSS when
    // the page came over HTTPS); once it signs out (un-REGISTER), none is left.
    for (base, transport) in [
        (format!("http://{}", server.http), "WS"),
        (format!("https://{}", server.https), "WSS"),
    ] {
        let plan = json!({
            "base": base,
            "users": [{"email": OWNER, "password": OWNER_PASSWORD}],
            "signOut": true,
            "registrationsToken": api.token,
        });
        let Some(result) = tokio::task::spawn_blocking(move || drive_phones(&plan))
            .await
            .unwrap()
        else {
            return;
        };
        let user = &result["users"][0];
        assert_eq!(user["status"], "Registered as 1001", "{result}");
        let listed = user["registrations"]["items"].as_array().expect("listed");
        assert_eq!(listed.len(), 1, "{result}");
        assert_eq!(listed[0]["transport"], transport, "{result}");
        let agent = listed[0]["user_agent"].as_str().unwrap();
        assert!(agent.starts_with("SIP.js/"), "{result}");
        assert_eq!(user["signed_out"], true, "{result}");
        api.wait_for_registrations(0).await;
    }
}

/// Waits (bounded, while `driving` runs) until metric `name` is `value`; whether it got there.
async fn wait_for_metric<T>(
    server: &Server,
    name: &str,
    value: u64,
    driving: &tokio::task::JoinHandle<T>,
) -> bool {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while std::time::Instant::now() < deadline && !driving.is_finished() {
        if metric(server, name).await == value {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    false
}

/// Two users with web phones: Alice owns 1001, Bob 1002.
const ALICE_AND_BOB: [(&str, &str); 2] = [
    ("alice@example.com", "alice-password-1"),
    ("bob@example.com", "bob-password-1"),
];

/// A server where Alice and Bob have their extensions, and the admin's API.
async fn alice_and_bob(dir: &std::path::Path) -> (Server, Api) {
    let server = start(dir);
    let api = Api::login(&server).await;
    user_with_extension(&api, &server, ALICE_AND_BOB[0], "1001").await;
    user_with_extension(&api, &server, ALICE_AND_BOB[1], "1002").await;
    (server, api)
}

/// The live event stream, as the admin, once it says it is ready.
async fn events(
    server: &Server,
    api: &Api,
) -> WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}/api/v1/events", server.http);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello = json!({"token": api.token}).to_string();
    socket.send(Frame::text(hello)).await.unwrap();
    expect_events(&mut socket, &["events.ready"]).await;
    socket
}

/// A page's call statistics show media flowing in, in `codec`: connected, packets and sound.
fn assert_heard(stats: &Value, (codec, result): (&str, &Value)) {
    assert_eq!(stats["connectionState"], "connected", "{result}");
    assert_eq!(stats["codec"], codec, "{result}");
    assert!(stats["packetsReceived"].as_u64().unwrap() >= 50, "{result}");
    assert!(
        stats["totalAudioEnergy"].as_f64().unwrap() > 0.0,
        "{result}"
    );
}

#[tokio::test]
async fn two_browsers_call_each_other_with_audio_both_ways_and_dtmf() {
    let dir = tempfile::tempdir().unwrap();
    let (server, api) = alice_and_bob(dir.path()).await;
    let mut socket = events(&server, &api).await;
    let plan = json!({
        "base": format!("http://{}", server.http),
        "users": ALICE_AND_BOB.map(|(email, password)| json!({"email": email, "password": password})),
        "call": {"from": 0, "to": 1, "number": "1002", "dtmf": "5", "talkMs": 3000, "hold": true},
    });
    let Some(result) = tokio::task::spawn_blocking(move || drive_phones(&plan))
        .await
        .unwrap()
    else {
        return;
    };
    // Both RTCPeerConnections connected to us, and each heard the other's (fake) microphone.
    assert_heard(&result["call"][0], ("audio/PCMU", &result));
    assert_heard(&result["call"][1], ("audio/PCMU", &result));
    // The key pressed in the caller's page (RTCDTMFSender, RFC 4733) reached call control.
    // Hold and resume from the page were answered, and told.
    let wanted = [
        "call.answered",
        "call.dtmf",
        "call.held",
        "call.resumed",
        "call.ended",
    ];
    let seen = expect_events(&mut socket, &wanted).await;
    assert_eq!(
        (&seen[1]["digit"], &seen[1]["side"]),
        (&json!("5"), &json!("caller")),
        "{seen:?}"
    );
    assert_eq!(seen[4]["disposition"], "answered", "{seen:?}");
    assert_eq!(seen[4]["hangup_side"], "caller", "{seen:?}");
    let (_, calls) = api.call(reqwest::Method::GET, "/calls", None).await;
    let record = &calls["items"][0];
    assert_eq!(
        (&record["from_number"], &record["to_number"]),
        (&json!("1001"), &json!("1002"))
    );
    assert_eq!(record["disposition"], "answered", "{record}");
    assert!(record["billsec"].as_i64().unwrap() >= 2, "{record}");
}

/// A browser that answers our offer (G.711, then Opus) with Opus alone is sent Opus,
/// transcoded from the caller's PCMU. (Chromium still sends the codec our offer put first,
/// PCMU, which passes through to the caller.)
#[tokio::test]
async fn a_browser_that_answers_with_opus_is_sent_opus_and_both_hear() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = alice_and_bob(dir.path()).await;
    let plan = json!({
        "base": format!("http://{}", server.http),
        "users": [
            {"email": ALICE_AND_BOB[0].0, "password": ALICE_AND_BOB[0].1},
            {"email": ALICE_AND_BOB[1].0, "password": ALICE_AND_BOB[1].1, "opusOnly": true},
        ],
        "call": {"from": 0, "to": 1, "number": "1002", "talkMs": 3000},
    });
    let Some(result) = tokio::task::spawn_blocking(move || drive_phones(&plan))
        .await
        .unwrap()
    else {
        return;
    };
    assert_heard(&result["call"][0], ("audio/PCMU", &result));
    assert_heard(&result["call"][1], ("audio/opus", &result));
}

#[tokio::test]
async fn a_browser_calls_a_sipp_phone_and_the_recording_has_both_sides() {
    browser_calls_a_pcmu_phone(false).await;
}

/// With Opus only, the browser's audio is transcoded to the phone's PCMU and back.
#[tokio::test]
async fn a_browser_offering_only_opus_is_transcoded_for_a_pcmu_only_phone() {
    browser_calls_a_pcmu_phone(true).await;
}

/// A web phone (offering `opus_only` or not) calls a SIPp phone that knows only PCMU and
/// echoes: the browser hears itself back, and the call's recording has both sides.
async fn browser_calls_a_pcmu_phone(opus_only: bool) {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    owner_of(&api, &server, "1001").await;
    let phone = api.extension("1003", "phone-secret-1").await;
    let (status, body) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/extensions/{phone}"),
            Some(json!({"record_calls": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    if sipp().is_none() {
        return;
    }
    // SIPp registers as 1003 and answers on the same port with PCMU only, echoing RTP.
    let port = free_udp_port();
    let registered = run_sipp_register(&server, dir.path(), ("1003", "phone-secret-1"), port, 1);
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stdout)
    );
    api.wait_for_registrations(1).await;
    let uas = sipp_command(&server, dir.path(), "pcmu_echo_uas.xml", port)
        .args(["-m", "1", "-mp", &free_udp_port().to_string(), "-rtp_echo"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the SIPp phone");
    let plan = json!({
        "base": format!("http://{}", server.http),
        "users": [{"email": OWNER, "password": OWNER_PASSWORD, "opusOnly": opus_only}],
        "call": {"from": 0, "number": "1003", "talkMs": 3000},
    });
    let driving = tokio::task::spawn_blocking(move || drive_phones(&plan));
    // While the call is up, the media plane has one browser leg (transcoded or not).
    let legs = wait_for_metric(&server, "switchboard_media_webrtc_legs", 1, &driving).await;
    let transcoded = metric(&server, "switchboard_media_transcoded_legs").await;
    let result = driving.await.unwrap();
    let uas = uas.wait_with_output().unwrap();
    let Some(result) = result else { return };
    assert!(legs, "no browser leg while the call was up");
    assert_eq!(transcoded, u64::from(opus_only));
    assert!(
        uas.status.success(),
        "{}",
        String::from_utf8_lossy(&uas.stdout)
    );
    // The browser hears its own microphone back through SIPp's echo: RTP reached SIPp.
    let codec = if opus_only {
        "audio/opus"
    } else {
        "audio/PCMU"
    };
    assert_heard(&result["call"][0], (codec, &result));

    let (_, calls) = api.call(reqwest::Method::GET, "/calls", None).await;
    let record = &calls["items"][0];
    assert_eq!(record["disposition"], "answered", "{record}");
    let recording = record["recording_id"]
        .as_str()
        .expect("recorded")
        .to_owned();
    api.wait_for_recording(&recording, "complete").await;
    let (spec, samples) = api.wav(&recording).await;
    assert_eq!(spec.channels, 2);
    // Each channel (caller left, callee right) carries sound, not silence.
    for channel in 0..2 {
        let energy: f64 = samples
            .iter()
            .skip(channel)
            .step_by(2)
            .map(|s| f64::from(*s).powi(2))
            .sum::<f64>()
            / (samples.len() / 2) as f64;
        assert!(
            energy.sqrt() > 100.0,
            "channel {channel} RMS {}",
            energy.sqrt()
        );
    }
}
