//! SIP against the real binary: phones registering over UDP and TCP with digest (MD5 and
//! SHA-256), registrations surviving `kill -9`, the directory following the control plane,
//! and SIPp (a third-party peer) registering through the challenge.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_media::g711::Law;
use switchboard_sip::digest::{Algorithm, Challenge};
use switchboard_sip::message::{HeaderName, Limits, Message, Response, frame_len};
use switchboard_tests::{
    ADMIN_PASSWORD, Api, PeerProcess, Server, TIMEOUT, credentials_csv, expect_events,
    free_tcp_port, free_udp_port, metric, peer, run_sipp_register, sipp, sipp_command,
    wait_for_socket,
};

/// A phone: sends REGISTERs over UDP, TCP, or TLS (through `openssl s_client`, a TLS client
/// nobody here wrote) and reads the responses.
enum Phone {
    Udp(UdpSocket, SocketAddr),
    Stream(StreamPhone),
}

/// A stream connection: bytes out through `writer`, bytes in from a reader thread.
struct StreamPhone {
    transport: &'static str,
    local: SocketAddr,
    writer: Box<dyn Write + Send>,
    incoming: std::sync::mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    /// The TLS client process, killed with the phone.
    child: Option<std::process::Child>,
}

impl Drop for StreamPhone {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl StreamPhone {
    fn new(
        transport: &'static str,
        local: SocketAddr,
        mut reader: impl Read + Send + 'static,
        writer: Box<dyn Write + Send>,
        child: Option<std::process::Child>,
    ) -> Self {
        let (tx, incoming) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut chunk) {
                if tx.send(chunk[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            transport,
            local,
            writer,
            incoming,
            pending: Vec::new(),
            child,
        }
    }

    /// Reads (bounded in time) until `pending` holds `len` bytes or a whole message.
    fn fill(&mut self, until: impl Fn(&[u8]) -> bool) {
        while !until(&self.pending) {
            let chunk = self
                .incoming
                .recv_timeout(TIMEOUT)
                .expect("bytes from the server before the timeout");
            self.pending.extend_from_slice(&chunk);
        }
    }
}

impl Phone {
    fn udp(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self::Udp(socket, server)
    }

    fn tcp(server: SocketAddr) -> Self {
        let stream = TcpStream::connect(server).unwrap();
        let local = stream.local_addr().unwrap();
        let reader = stream.try_clone().unwrap();
        Self::Stream(StreamPhone::new(
            "TCP",
            local,
            reader,
            Box::new(stream),
            None,
        ))
    }

    /// TLS through `openssl s_client`, verifying the server's certificate against `ca`.
    fn tls(server: SocketAddr, ca: &std::path::Path) -> Self {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-quiet",
                "-verify_return_error",
                "-verify_hostname",
            ])
            .arg("localhost")
            .arg("-CAfile")
            .arg(ca)
            .arg("-connect")
            .arg(server.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("run openssl s_client");
        let reader = child.stdout.take().unwrap();
        let writer = Box::new(child.stdin.take().unwrap());
        // s_client's own address is not known here; the server answers over the connection.
        let local = SocketAddr::from(([127, 0, 0, 1], 5061));
        Self::Stream(StreamPhone::new("TLS", local, reader, writer, Some(child)))
    }

    fn local(&self) -> SocketAddr {
        match self {
            Self::Udp(socket, _) => socket.local_addr().unwrap(),
            Self::Stream(stream) => stream.local,
        }
    }

    fn transport(&self) -> &'static str {
        match self {
            Self::Udp(..) => "UDP",
            Self::Stream(stream) => stream.transport,
        }
    }

    fn exchange(&mut self, text: &str) -> Response {
        match self {
            Self::Udp(socket, server) => {
                socket.send_to(text.as_bytes(), *server).unwrap();
                let mut buffer = [0u8; 65_535];
                let n = socket.recv(&mut buffer).expect("a response");
                response(&buffer[..n])
            }
            Self::Stream(stream) => {
                stream.writer.write_all(text.as_bytes()).unwrap();
                stream.writer.flush().unwrap();
                stream
                    .fill(|pending| matches!(frame_len(pending, &Limits::default()), Ok(Some(_))));
                let length = frame_len(&stream.pending, &Limits::default())
                    .unwrap()
                    .unwrap();
                let bytes: Vec<u8> = stream.pending.drain(..length).collect();
                response(&bytes)
            }
        }
    }

    fn register_text(
        &self,
        number: &str,
        cseq: u32,
        expires: u32,
        authorization: Option<&str>,
    ) -> String {
        let local = self.local();
        let transport = self.transport();
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "REGISTER sip:localhost SIP/2.0\r\nVia: SIP/2.0/{transport} {local};rport;branch=z9hG4bK{number}r{cseq}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:{number}@localhost>;tag=t{number}\r\nTo: <sip:{number}@localhost>\r\n\
             Call-ID: reg-{number}-{transport}@test\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{number}@{local};transport={transport}>\r\n\
             Expires: {expires}\r\nUser-Agent: switchboard-e2e\r\n{auth}Content-Length: 0\r\n\r\n"
        )
    }

    /// REGISTER, answer the challenge for `algorithm` with `password`; the final response.
    fn register(
        &mut self,
        number: &str,
        password: &str,
        algorithm: Algorithm,
        cseq: u32,
    ) -> Response {
        let challenge = self.exchange(&self.register_text(number, cseq, 600, None));
        assert_eq!(challenge.status, 401);
        let challenge = challenge
            .headers
            .get_all(&HeaderName::WwwAuthenticate)
            .map(|value| Challenge::parse(value).unwrap())
            .find(|c| c.algorithm == algorithm)
            .expect("a challenge for the algorithm");
        let authorization = challenge.answer(
            number,
            password,
            "REGISTER",
            "sip:localhost",
            "e2e-cnonce",
            1,
        );
        self.exchange(&self.register_text(number, cseq + 1, 600, Some(&authorization)))
    }
}

fn response(bytes: &[u8]) -> Response {
    match Message::parse(bytes, &Limits::default()).expect("a valid SIP message") {
        Message::Response(response) => response,
        Message::Request(request) => panic!("expected a response, got {request:?}"),
    }
}

fn start(dir: &std::path::Path) -> Server {
    Server::start(dir, &[("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)])
}

#[tokio::test]
async fn phones_register_with_md5_and_sha256_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    api.extension("1001", "s3cret-pass").await;
    api.extension("1002", "other-pass").await;

    let mut alice = Phone::udp(server.sip_udp);
    let ok = alice.register("1001", "s3cret-pass", Algorithm::Sha256, 1);
    assert_eq!(ok.status, 200);
    let contact = ok.headers.get(&HeaderName::Contact).unwrap();
    assert!(contact.ends_with(";expires=600"), "{contact}");
    let mut bob = Phone::udp(server.sip_udp);
    assert_eq!(
        bob.register("1002", "other-pass", Algorithm::Md5, 1).status,
        200
    );

    let items = api.wait_for_registrations(2).await;
    let sources: Vec<&str> = items
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    assert!(
        sources.contains(&alice.local().to_string().as_str()),
        "{items:?}"
    );
    assert!(
        items
            .iter()
            .all(|r| r["transport"] == "UDP" && r["user_agent"] == "switchboard-e2e")
    );

    // A crash: no graceful shutdown. The registrations come back from the database.
    server.kill9();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    assert_eq!(api.wait_for_registrations(2).await.len(), 2);
    let metrics = switchboard_tests::http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_sip_bindings 2"),
        "the core restored both bindings:\n{metrics}"
    );
    // The restarted server has new nonces: the phone is simply challenged again.
    let mut alice = Phone::udp(server.sip_udp);
    assert_eq!(
        alice
            .register("1001", "s3cret-pass", Algorithm::Md5, 10)
            .status,
        200
    );
    assert!(server.terminate().success());
}

#[tokio::test]
async fn phones_register_over_tcp_with_keepalives() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    api.extension("2001", "tcp-secret-1").await;

    let mut phone = Phone::tcp(server.sip_tcp);
    // RFC 5626 §4.4.1: a double-CRLF ping is answered with a single CRLF pong.
    if let Phone::Stream(stream) = &mut phone {
        stream.writer.write_all(b"\r\n\r\n").unwrap();
        stream.fill(|pending| pending.len() >= 2);
        assert_eq!(stream.pending.drain(..2).as_slice(), b"\r\n");
    }
    let ok = phone.register("2001", "tcp-secret-1", Algorithm::Sha256, 1);
    assert_eq!(ok.status, 200);
    let via = ok.headers.get(&HeaderName::Via).unwrap();
    assert!(
        via.contains(&format!("rport={}", phone.local().port())),
        "{via}"
    );
    let items = api.wait_for_registrations(1).await;
    assert_eq!(items[0]["transport"], "TCP");
    assert!(server.terminate().success());
}

#[tokio::test]
async fn phones_register_over_tls_with_the_generated_certificate() {
    if !peer("openssl", "version", "Debian package openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    api.extension("2101", "tls-secret-1").await;
    // The development certificate the server generated, for localhost and its address.
    let ca = dir.path().join("data/tls/sip-self-signed.crt");
    let mut phone = Phone::tls(server.sip_tls, &ca);
    let ok = phone.register("2101", "tls-secret-1", Algorithm::Md5, 1);
    assert_eq!(ok.status, 200);
    let items = api.wait_for_registrations(1).await;
    assert_eq!(items[0]["transport"], "TLS");
    assert!(server.terminate().success());
}

#[tokio::test]
async fn the_directory_follows_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    let id = api.extension("3001", "first-secret").await;
    let mut phone = Phone::udp(server.sip_udp);
    assert_eq!(
        phone
            .register("3001", "first-secret", Algorithm::Md5, 1)
            .status,
        200
    );

    // The extension shows its registration state (once the binding is written).
    api.wait_for_registrations(1).await;
    let (_, extension) = api
        .call(reqwest::Method::GET, &format!("/extensions/{id}"), None)
        .await;
    assert_eq!(extension["registered_contacts"], 1, "{extension}");

    // A new password takes effect at once: the old one is refused, the new one works.
    let (status, _) = api
        .call(
            reqwest::Method::PATCH,
            &format!("/extensions/{id}"),
            Some(json!({"password": "second-secret"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        phone
            .register("3001", "first-secret", Algorithm::Md5, 10)
            .status,
        403
    );
    assert_eq!(
        phone
            .register("3001", "second-secret", Algorithm::Md5, 20)
            .status,
        200
    );

    // A deleted extension can no longer register, and its bindings are gone.
    let (status, _) = api
        .call(reqwest::Method::DELETE, &format!("/extensions/{id}"), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        phone
            .register("3001", "second-secret", Algorithm::Md5, 30)
            .status,
        403
    );
    api.wait_for_registrations(0).await;
    assert!(server.terminate().success());
}

#[tokio::test]
async fn sipp_registers_through_the_digest_challenge() {
    if sipp().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let api = Api::login(&server).await;
    api.extension("4001", "sipp-secret-1").await;

    let output = run_sipp_register(
        &server,
        dir.path(),
        ("4001", "sipp-secret-1"),
        free_udp_port(),
        20,
    );
    assert!(
        output.status.success(),
        "sipp failed: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let items = api.wait_for_registrations(1).await;
    assert_eq!(items[0]["user_agent"], "sipp-register");

    // The wrong password: every attempt is refused (SIPp exits non-zero), and counted.
    let output = run_sipp_register(
        &server,
        dir.path(),
        ("4001", "wrong-password"),
        free_udp_port(),
        3,
    );
    assert!(!output.status.success());
    let metrics = switchboard_tests::http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_sip_registers_total 20"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchboard_sip_auth_failures_total 3"),
        "{metrics}"
    );
    assert!(server.terminate().success());
}

/// `seconds` of a `frequency` Hz tone as an 8 kHz mono G.711 µ-law WAV file (format tag 7).
fn tone_wav(path: &std::path::Path, frequency: f64, seconds: u32) {
    let linear: Vec<i16> = (0..8000 * seconds)
        .map(|n| {
            let phase = 2.0 * std::f64::consts::PI * frequency * f64::from(n) / 8000.0;
            (phase.sin() * 8000.0).round() as i16
        })
        .collect();
    let mut samples = vec![0u8; linear.len()];
    Law::Ulaw.encode(&linear, &mut samples);
    let data_len = u32::try_from(samples.len()).unwrap();
    let mut wav = Vec::with_capacity(58 + samples.len());
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(50 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&18u32.to_le_bytes());
    wav.extend_from_slice(&7u16.to_le_bytes()); // µ-law
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&8000u32.to_le_bytes()); // samples per second
    wav.extend_from_slice(&8000u32.to_le_bytes()); // bytes per second
    wav.extend_from_slice(&1u16.to_le_bytes()); // block align
    wav.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(&0u16.to_le_bytes()); // no extension
    wav.extend_from_slice(b"fact");
    wav.extend_from_slice(&4u32.to_le_bytes());
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    wav.extend_from_slice(&samples);
    std::fs::write(path, wav).unwrap();
}

/// A server with two extensions, 5001 (the SIPp caller) and 5002 (a SIPp callee registered
/// from `callee_port`), for SIPp call scenarios.
struct CallBench {
    dir: tempfile::TempDir,
    server: Server,
    api: Api,
    callee: String,
    callee_port: u16,
    records: usize,
}

/// What the two SIPp processes printed.
struct CallRun {
    caller: std::process::Output,
    callee: Option<std::process::Output>,
}

impl CallRun {
    fn report(&self) -> String {
        let text = |o: &std::process::Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        format!(
            "caller:\n{}\ncallee:\n{}",
            text(&self.caller),
            self.callee.as_ref().map(text).unwrap_or_default()
        )
    }
}

impl CallBench {
    /// The server and the two extensions, the callee not registered yet.
    async fn new(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec![("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)];
        all.extend_from_slice(env);
        let server = Server::start(dir.path(), &all);
        let api = Api::login(&server).await;
        api.extension("5001", "caller-secret").await;
        let callee = api.extension("5002", "callee-secret").await;
        tone_wav(&dir.path().join("tone.wav"), 400.0, 1);
        Self {
            dir,
            server,
            api,
            callee,
            callee_port: free_udp_port(),
            records: 0,
        }
    }

    /// The callee registers from the port it then answers on.
    async fn register_callee(&self) {
        let output = run_sipp_register(
            &self.server,
            self.dir.path(),
            ("5002", "callee-secret"),
            self.callee_port,
            1,
        );
        assert!(
            output.status.success(),
            "register: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        self.api.wait_for_registrations(1).await;
    }

    async fn start(env: &[(&str, &str)]) -> Self {
        let bench = Self::new(env).await;
        bench.register_callee().await;
        bench
    }

    /// Runs caller scenario `uac` dialling `dialled` against callee scenario `uas` (which
    /// echoes RTP), both to completion. An INVITE sent before the callee listens is simply
    /// retransmitted.
    fn run(&self, uac: &str, uas: Option<&str>, dialled: &str) -> CallRun {
        let run = self.run_with(uac, uas.map(|uas| (uas, true)), dialled, &[]);
        assert!(run.caller.status.success(), "{}", run.report());
        assert!(
            run.callee.as_ref().is_none_or(|c| c.status.success()),
            "{}",
            run.report()
        );
        run
    }

    /// Like `run`, with more arguments for the caller, the callee echoing RTP or not (`uas`
    /// is the scenario and whether it echoes), and whatever the outcome.
    fn run_with(
        &self,
        uac: &str,
        uas: Option<(&str, bool)>,
        dialled: &str,
        args: &[&str],
    ) -> CallRun {
        let csv = credentials_csv(self.dir.path(), "5001", "caller-secret", "");
        let mut caller = sipp_command(&self.server, self.dir.path(), uac, free_udp_port());
        caller
            .args(["-inf", &csv, "-s", dialled, "-m", "1"])
            .args(args);
        self.run_pair(caller, uas)
    }

    /// A carrier (no credentials) at `ip` runs `uac` for `dialled` against callee scenario
    /// `uas` (echoing RTP), whatever the outcome.
    fn run_carrier(&self, ip: &str, uac: &str, uas: Option<&str>, dialled: &str) -> CallRun {
        let mut caller = sipp_command(&self.server, self.dir.path(), uac, free_udp_port());
        // A later `-i` replaces the one sipp_command set.
        caller.args(["-i", ip, "-s", dialled, "-m", "1"]);
        self.run_pair(caller, uas.map(|uas| (uas, true)))
    }

    /// Runs the callee scenario (if any) and the prepared caller command, both to completion.
    fn run_pair(&self, mut caller: Command, uas: Option<(&str, bool)>) -> CallRun {
        let callee = uas.map(|(uas, echo)| {
            let echo: &[&str] = if echo { &["-rtp_echo"] } else { &[] };
            sipp_command(&self.server, self.dir.path(), uas, self.callee_port)
                .args(["-m", "1", "-mp", &free_udp_port().to_string()])
                .args(echo)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("start the SIPp callee")
        });
        let caller = caller.output().expect("run the SIPp caller");
        let callee = callee.map(|c| c.wait_with_output().unwrap());
        CallRun { caller, callee }
    }

    /// Waits (bounded) for the next call record to be complete and returns it.
    async fn next_record(&mut self) -> Value {
        self.records += 1;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (_, page) = self.api.call(reqwest::Method::GET, "/calls", None).await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            let finished = items.iter().filter(|r| r["disposition"] != "in_progress");
            if finished.count() == self.records {
                // Newest first.
                return items[0].clone();
            }
            assert!(
                Instant::now() < deadline,
                "expected {} finished records: {page}",
                self.records
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Lets extension `number` call outside.
    async fn allow_outbound(&self, number: &str) {
        let (_, extensions) = self
            .api
            .call(reqwest::Method::GET, "/extensions", None)
            .await;
        let id = extensions["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["number"] == number)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, _) = self
            .api
            .call(
                reqwest::Method::PATCH,
                &format!("/extensions/{id}"),
                Some(json!({"outbound_allowed": true})),
            )
            .await;
        assert_eq!(status, 200);
    }

    /// Extension 5001 dials `number` (the callee hangs up) against a carrier already
    /// started; both must succeed.
    fn call_out(&self, number: &str, carrier: std::process::Child) -> CallRun {
        let csv = credentials_csv(self.dir.path(), "5001", "caller-secret", "");
        let phone = sipp_command(
            &self.server,
            self.dir.path(),
            "callee_hangup_uac.xml",
            free_udp_port(),
        )
        .args(["-inf", &csv, "-s", number, "-m", "1"])
        .output()
        .expect("run the SIPp phone");
        let run = CallRun {
            caller: phone,
            callee: Some(carrier.wait_with_output().unwrap()),
        };
        assert!(run.caller.status.success(), "{}", run.report());
        assert!(
            run.callee.as_ref().unwrap().status.success(),
            "{}",
            run.report()
        );
        run
    }

    fn assert_ended(record: &Value, disposition: &str, cause: &str, side: &str) {
        assert_eq!(
            (
                record["disposition"].as_str(),
                record["hangup_cause"].as_str(),
                record["hangup_side"].as_str()
            ),
            (Some(disposition), Some(cause), Some(side)),
            "{record}"
        );
    }
}

#[tokio::test]
async fn sipp_calls_through_the_b2bua_with_media_and_records() {
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::start(&[("SWITCHBOARD_MEDIA__RING_TIMEOUT", "2s")]).await;

    // Answered: the caller streams one second (50-51 packets of 20 ms), the callee echoes
    // every packet it gets; then hold and resume, and the caller hangs up. The echo proves the
    // callee received the audio; the relay counters show it went back to the caller.
    bench.run("call_uac.xml", Some("call_uas.xml"), "5002");
    let to_callee = r#"switchboard_media_rtp_forwarded_total{direction="to_callee"}"#;
    let to_caller = r#"switchboard_media_rtp_forwarded_total{direction="to_caller"}"#;
    for direction in [to_callee, to_caller] {
        let packets = metric(&bench.server, direction).await;
        assert!((49..=51).contains(&packets), "{direction}: {packets}");
    }
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "caller");
    assert_eq!(record["direction"], "internal", "{record}");
    assert_eq!(record["from_number"], "5001", "{record}");
    assert_eq!(record["to_number"], "5002", "{record}");
    assert_eq!(record["to_extension_id"], bench.callee.as_str(), "{record}");
    assert!(record["duration_ms"].as_i64().unwrap() >= 1000, "{record}");
    assert_eq!(record["legs"].as_array().unwrap().len(), 2, "{record}");

    // Answered, and the callee hangs up.
    bench.run(
        "callee_hangup_uac.xml",
        Some("callee_hangup_uas.xml"),
        "5002",
    );
    assert!(metric(&bench.server, to_caller).await >= 98);
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "callee");

    // Busy.
    bench.run("refused_uac.xml", Some("busy_uas.xml"), "5002");
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "busy", "user_busy", "callee");

    // The caller gives up while it rings: the callee's INVITE is cancelled too.
    bench.run("cancel_uac.xml", Some("ring_uas.xml"), "5002");
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "cancelled", "originator_cancel", "caller");

    // Nobody answers within the ring timeout (2 s here): 480 to the caller, CANCEL to the callee.
    bench.run("refused_uac.xml", Some("ring_uas.xml"), "5002");
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "no_answer", "no_answer", "system");

    // Numbers nobody has, and extensions with no phone registered, are refused with records.
    bench.api.extension("5003", "unused-secret").await;
    bench.run("refused_uac.xml", None, "5003");
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "failed", "user_not_registered", "system");
    assert_eq!(record["billsec"], 0, "{record}");

    assert_eq!(metric(&bench.server, "switchboard_calls_total").await, 5);
    assert_eq!(
        metric(&bench.server, "switchboard_calls_answered_total").await,
        2
    );
    assert_eq!(metric(&bench.server, "switchboard_calls_active").await, 0);
    assert_eq!(metric(&bench.server, "switchboard_media_sessions").await, 0);
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn carrier_calls_reach_their_number_through_an_ip_trunk() {
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::start(&[]).await;
    let (status, trunk) = bench
        .api
        .call(
            reqwest::Method::POST,
            "/trunks",
            Some(json!({"name": "carrier", "kind": "ip", "host": "127.0.0.1",
                        "allowed_sources": ["127.0.0.1/32"]})),
        )
        .await;
    assert_eq!(status, 201, "{trunk}");
    let (status, number) = bench
        .api
        .call(
            reqwest::Method::POST,
            "/numbers",
            Some(json!({"number": "+15551230002",
                        "target": {"type": "extension", "id": bench.callee}})),
        )
        .await;
    assert_eq!(status, 201, "{number}");

    // The carrier sends the number in national form; it rings 5002, which answers and echoes
    // one second of audio.
    let run = bench.run_carrier(
        "127.0.0.1",
        "carrier_uac.xml",
        Some("dtmf_uas.xml"),
        "5551230002",
    );
    assert!(run.caller.status.success(), "{}", run.report());
    assert!(
        run.callee.as_ref().unwrap().status.success(),
        "{}",
        run.report()
    );
    for direction in ["to_callee", "to_caller"] {
        let name = format!(r#"switchboard_media_rtp_forwarded_total{{direction="{direction}"}}"#);
        let packets = metric(&bench.server, &name).await;
        assert!((49..=51).contains(&packets), "{direction}: {packets}");
    }
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "caller");
    assert_eq!(record["direction"], "inbound", "{record}");
    assert_eq!(record["did"], "+15551230002", "{record}");
    assert_eq!(record["trunk_id"], trunk["id"], "{record}");
    assert_eq!(record["from_number"], "+15550001111", "{record}");
    assert_eq!(record["from_extension_id"], Value::Null, "{record}");
    assert_eq!(record["to_extension_id"], bench.callee.as_str(), "{record}");

    // A number we do not have: 404, with a record that says so.
    let run = bench.run_carrier("127.0.0.1", "carrier_refused_uac.xml", None, "+15559999999");
    assert!(run.caller.status.success(), "{}", run.report());
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "failed", "unallocated_number", "system");
    assert_eq!(record["trunk_id"], trunk["id"], "{record}");

    // Our number from an address the trunk does not list: 403, counted, no record.
    let run = bench.run_carrier("127.0.0.2", "carrier_refused_uac.xml", None, "+15551230002");
    assert!(run.caller.status.success(), "{}", run.report());
    assert_eq!(
        metric(&bench.server, "switchboard_trunk_refused_total").await,
        1
    );
    assert_eq!(
        metric(&bench.server, "switchboard_trunk_calls_total").await,
        2
    );
    let (_, page) = bench.api.call(reqwest::Method::GET, "/calls", None).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2, "{page}");

    // Disabling the trunk closes it at once.
    let path = format!("/trunks/{}", trunk["id"].as_str().unwrap());
    let (status, _) = bench
        .api
        .call(
            reqwest::Method::PATCH,
            &path,
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(status, 200);
    let run = bench.run_carrier("127.0.0.1", "carrier_refused_uac.xml", None, "+15551230002");
    assert!(run.caller.status.success(), "{}", run.report());
    assert_eq!(
        metric(&bench.server, "switchboard_trunk_refused_total").await,
        2
    );
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn an_ivr_flow_answers_a_carrier_call_takes_a_key_and_puts_it_through() {
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::start(&[]).await;
    let api = &bench.api;
    api.carrier_trunk().await;
    // The menu prompt: one second of tone, uploaded as a µ-law WAV.
    let wav = std::fs::read(bench.dir.path().join("tone.wav")).unwrap();
    let uploaded = api
        .client
        .post(format!("{}/prompts?name=menu", api.base))
        .bearer_auth(&api.token)
        .body(wav)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 201);
    let flow_id = api
        .flow_on_number(
            "main",
            json!({"entry": "menu", "nodes": {
                "menu": {"verb": "gather", "prompt": "menu", "transitions": {"match.2": "call"}},
                "call": {"verb": "dial", "extension": "5002", "transitions": {"answered": "bye"}},
                "bye": {"verb": "hangup"}
            }}),
            "+15551230004",
        )
        .await;
    let flow_id = flow_id.as_str();

    // The flow answers and plays the menu; the carrier presses 2 (RFC 4733) during it; the
    // flow dials 5002, which answers and echoes what the carrier then sends.
    let run = bench.run_carrier(
        "127.0.0.1",
        "ivr_carrier_uac.xml",
        Some("dtmf_uas.xml"),
        "+15551230004",
    );
    assert!(run.caller.status.success(), "{}", run.report());
    assert!(
        run.callee.as_ref().unwrap().status.success(),
        "{}",
        run.report()
    );
    let prompt = metric(&bench.server, "switchboard_media_prompt_packets_total").await;
    assert!(
        prompt >= 5,
        "the menu played until the key: {prompt} packets"
    );
    for direction in ["to_callee", "to_caller"] {
        let name = format!(r#"switchboard_media_rtp_forwarded_total{{direction="{direction}"}}"#);
        let packets = metric(&bench.server, &name).await;
        assert!(packets >= 30, "{direction}: {packets}");
    }
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "caller");
    assert_eq!(record["direction"], "inbound", "{record}");
    assert_eq!(record["did"], "+15551230004", "{record}");
    assert_eq!(record["to_extension_id"], bench.callee.as_str(), "{record}");
    let ivr = record["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|leg| leg["role"] == "ivr")
        .cloned()
        .unwrap_or_else(|| panic!("no IVR in {record}"));
    assert_eq!(ivr["flow_id"], flow_id, "{record}");
    assert_eq!(ivr["path"], json!(["menu", "call"]), "{record}");
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn an_ivr_flow_looks_up_the_caller_over_http_and_dials_what_it_says() {
    if sipp().is_none() {
        return;
    }
    // A CRM on loopback (a thread of its own: the SIPp runs below block this runtime): it
    // names the extension for the caller, and tells us what it was asked.
    let crm = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let crm_address = crm.local_addr().unwrap();
    let (asked_tx, asked) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let (mut stream, _) = crm.accept().unwrap();
        let mut buffer = vec![0u8; 4096];
        let n = stream.read(&mut buffer).unwrap();
        let _ = asked_tx.send(String::from_utf8_lossy(&buffer[..n]).into_owned());
        let body = r#"{"customer": {"extension": "5002"}}"#;
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(reply.as_bytes()).unwrap();
    });
    let mut bench = CallBench::start(&[("SWITCHBOARD_IVR__HTTP_ALLOW_PRIVATE", "true")]).await;
    let api = &bench.api;
    api.carrier_trunk().await;
    api
        .flow_on_number(
            "crm",
            json!({"entry": "lookup", "nodes": {
                "lookup": {"verb": "http", "url": format!("http://{crm_address}/route?from=${{caller}}"),
                           "save": {"ext": "/customer/extension"},
                           "transitions": {"success": "menu", "error": "bye"}},
                "menu": {"verb": "gather", "transitions": {"match.2": "call"}},
                "call": {"verb": "dial", "extension": "${ext}", "transitions": {"answered": "bye"}},
                "bye": {"verb": "hangup"}
            }}),
            "+15551230009",
        )
        .await;
    let run = bench.run_carrier(
        "127.0.0.1",
        "ivr_carrier_uac.xml",
        Some("dtmf_uas.xml"),
        "+15551230009",
    );
    assert!(run.caller.status.success(), "{}", run.report());
    assert!(
        run.callee.as_ref().unwrap().status.success(),
        "{}",
        run.report()
    );
    let request = asked.recv_timeout(TIMEOUT).unwrap();
    assert!(
        request.starts_with("GET /route?from=%2B15550001111 HTTP/1.1"),
        "{request}"
    );
    let record = bench.next_record().await;
    let ivr = ivr_leg(&record);
    assert_eq!(ivr["path"], json!(["lookup", "menu", "call"]), "{record}");
    assert_eq!(record["to_extension_id"], bench.callee.as_str(), "{record}");
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn a_voicemail_left_through_a_flow_is_in_the_box_and_downloadable() {
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::new(&[]).await;
    let api = &bench.api;
    api.carrier_trunk().await;
    api.flow_on_number(
        "voicemail",
        json!({"entry": "vm", "nodes": {
            "vm": {"verb": "record", "mailbox": "5002", "max_seconds": 15,
                   "silence_seconds": 1.5, "beep": true, "next": "bye",
                   "transitions": {"no_input": "bye"}},
            "bye": {"verb": "hangup"}
        }}),
        "+15551230005",
    )
    .await;

    // The caller speaks for a second (a 400 Hz tone), then says nothing: 1.5 s of silence
    // ends the voicemail and the flow hangs up.
    let run = bench.run_carrier(
        "127.0.0.1",
        "voicemail_carrier_uac.xml",
        None,
        "+15551230005",
    );
    assert!(run.caller.status.success(), "{}", run.report());
    let record = bench.next_record().await;
    let api = &bench.api;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "system");
    let ivr = ivr_leg(&record);
    assert_eq!(ivr["path"], json!(["vm", "bye"]), "{record}");
    assert_eq!(ivr["ended"], "completed", "{record}");
    assert!(
        metric(&bench.server, "switchboard_media_prompt_packets_total").await >= 10,
        "the beep"
    );

    // The box of 5002 lists it; it is a mono WAV with the tone at the start.
    let path = format!("/recordings?kind=voicemail&extension_id={}", bench.callee);
    let (_, page) = api.call(reqwest::Method::GET, &path, None).await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    let id = items[0]["id"].as_str().unwrap();
    let voicemail = api.wait_for_recording(id, "complete").await;
    assert_eq!(voicemail["kind"], "voicemail", "{voicemail}");
    assert_eq!(voicemail["channels"], 1, "{voicemail}");
    assert_eq!(voicemail["call_id"], record["id"], "{voicemail}");
    let (spec, samples) = api.wav(id).await;
    assert_eq!((spec.channels, spec.sample_rate), (1, 8000));
    let seconds = samples.len() as f64 / 8000.0;
    assert!((2.0..4.5).contains(&seconds), "{seconds} s");
    let (first, last, _) = tone_span(&samples, 400.0);
    assert!(
        last - first >= 40,
        "the tone is there: frames {first}..{last}"
    );
    let (_, calls) = api.call(reqwest::Method::GET, "/calls", None).await;
    assert_eq!(calls["items"][0]["recording_id"], id, "{calls}");
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn a_held_party_hears_music_while_the_holder_is_silent() {
    if sipp().is_none() {
        return;
    }
    let bench = CallBench::start(&[]).await;
    // The caller streams a second of tone, holds for a second sending nothing, resumes and
    // hangs up; the callee echoes every packet it gets.
    let run = bench.run_with(
        "call_uac.xml",
        Some(("call_uas.xml", true)),
        "5002",
        &["-d", "1000"],
    );
    assert!(run.caller.status.success(), "{}", run.report());
    let music = metric(&bench.server, "switchboard_media_hold_music_packets_total").await;
    // A second of hold, less the moment the holder gets to start its own music.
    assert!((35..=50).contains(&music), "{music}");
    // The callee got the music: its echo came back and went on to the caller.
    let to_caller = r#"switchboard_media_rtp_forwarded_total{direction="to_caller"}"#;
    let echoed = metric(&bench.server, to_caller).await;
    assert!(
        echoed >= 49 + music - 2,
        "{echoed} forwarded for {music} of music"
    );
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn a_call_out_through_a_credential_trunk_answers_the_407() {
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::new(&[]).await;
    // The carrier is at 127.0.0.2: a credential trunk trusts its proxy as a source, and the
    // phone calls from 127.0.0.1.
    let carrier_port = free_udp_port();
    let api = &bench.api;
    let trunk = api
        .create(
            "/trunks",
            json!({"name": "telnyx", "kind": "credential", "host": "127.0.0.2", "port": carrier_port,
                   "username": "acme", "password": "trunk-pass",
                   "custom_headers": {"X-Telnyx-Username": "acme"}}),
        )
        .await;
    api.create(
        "/outbound-routes",
        json!({"name": "north-america", "prefix": "1", "trunk_id": trunk["id"]}),
    )
    .await;
    bench.allow_outbound("5001").await;

    let carrier = sipp_command(
        &bench.server,
        bench.dir.path(),
        "carrier_auth_uas.xml",
        carrier_port,
    )
    .args([
        "-i",
        "127.0.0.2",
        // Answer the OPTIONS we qualify proxies with, as carriers do.
        "-aa",
        "-m",
        "1",
        "-mp",
        &free_udp_port().to_string(),
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start the SIPp carrier");
    bench.call_out("+15551234567", carrier);
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "callee");
    assert_eq!(record["direction"], "outbound", "{record}");
    assert_eq!(record["trunk_id"], trunk["id"], "{record}");
    assert_eq!(record["to_number"], "+15551234567", "{record}");
    assert!(bench.server.terminate().success());
}

/// A SIPp carrier at 127.0.0.2 on TCP `port` running `carrier_compact_uas.xml` once (no
/// remote host: over TCP, SIPp would connect to one at start), listening when this returns.
fn tcp_carrier(dir: &std::path::Path, port: u16) -> std::process::Child {
    let scenario = format!(
        "{}/sipp/carrier_compact_uas.xml",
        env!("CARGO_MANIFEST_DIR")
    );
    let carrier = Command::new("sipp")
        .args(["-sf", &scenario, "-t", "t1", "-i", "127.0.0.2"])
        .args(["-p", &port.to_string(), "-mp", &free_udp_port().to_string()])
        .args(["-m", "1", "-timeout", "20s", "-timeout_error", "-nostdin"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the SIPp carrier");
    wait_for_socket(SocketAddrV4::new([127, 0, 0, 2].into(), port), false);
    carrier
}

#[tokio::test]
async fn a_call_out_finds_its_carrier_through_dns_srv_over_tcp_and_tls_past_a_dead_route() {
    if sipp().is_none()
        || !peer("dnsmasq", "--version", "Debian package dnsmasq-base")
        || !peer("socat", "-V", "Debian package socat")
    {
        return;
    }
    let peers = tempfile::tempdir().unwrap();
    let (sip_tcp, sip_tls, dns_port) = (free_tcp_port(), free_tcp_port(), free_udp_port());
    // dnsmasq answers for carrier.test: SRV records for SIP over TCP and over TLS (RFC 3263
    // §4.2), both at proxy.carrier.test, which is 127.0.0.2.
    let _dns = PeerProcess(
        Command::new("dnsmasq")
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
            .args([
                "--conf-file=/dev/null",
                "--bind-interfaces",
                "--local=/test/",
            ])
            .arg("--listen-address=127.0.0.1")
            .arg(format!("--port={dns_port}"))
            .arg(format!(
                "--pid-file={}",
                peers.path().join("dnsmasq.pid").display()
            ))
            .arg(format!("--user={}", whoami()))
            .arg(format!(
                "--srv-host=_sip._tcp.carrier.test,proxy.carrier.test,{sip_tcp},10,0"
            ))
            .arg(format!(
                "--srv-host=_sips._tcp.carrier.test,proxy.carrier.test,{sip_tls},10,0"
            ))
            .args(["--host-record=proxy.carrier.test,127.0.0.2"])
            .args(["--host-record=carrier.test,127.0.0.2"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start dnsmasq"),
    );
    wait_for_socket(SocketAddrV4::new([127, 0, 0, 1].into(), dns_port), true);
    // The carrier's TLS certificate, for carrier.test; the server is told to trust it.
    let certified = rcgen::generate_simple_self_signed(vec!["carrier.test".to_owned()]).unwrap();
    let (cert, key) = (
        peers.path().join("carrier.crt"),
        peers.path().join("carrier.key"),
    );
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();

    let dns_servers = format!("[\"127.0.0.1:{dns_port}\"]");
    let mut bench = CallBench::new(&[
        ("SWITCHBOARD_SIP__DNS_SERVERS", &dns_servers),
        ("SWITCHBOARD_SIP__TLS_TRUST", cert.to_str().unwrap()),
    ])
    .await;
    bench.allow_outbound("5001").await;
    let api = &bench.api;
    // The first route's trunk is a proxy nothing listens on: its connection is refused.
    let dead = api
        .create(
            "/trunks",
            json!({"name": "dead", "kind": "credential", "host": "127.0.0.3",
                   "port": free_tcp_port(), "transport": "tcp",
                   "username": "acme", "password": "trunk-pass"}),
        )
        .await;
    // The second's host has no port: its proxy is found through SRV.
    let carrier = api
        .create(
            "/trunks",
            json!({"name": "carrier", "kind": "credential", "host": "carrier.test",
                   "transport": "tcp", "username": "acme", "password": "trunk-pass"}),
        )
        .await;
    for (trunk, priority) in [(&dead, 1), (&carrier, 2)] {
        api.create(
            "/outbound-routes",
            json!({"name": format!("route-{priority}"), "prefix": "1",
                   "trunk_id": trunk["id"], "priority": priority}),
        )
        .await;
    }

    // Over TCP: the dead route fails at once, the call goes out through the second.
    bench.call_out("+15551234567", tcp_carrier(bench.dir.path(), sip_tcp));
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "callee");
    assert_eq!(record["trunk_id"], carrier["id"], "{record}");

    // Over TLS: socat (a TLS front nobody here wrote) holds the certificate for carrier.test
    // and passes the connection on to a carrier on a port of its own (the first one's may
    // still be held by its closed connections).
    let behind_front = free_tcp_port();
    let (status, _) = bench
        .api
        .call(
            reqwest::Method::PATCH,
            &format!("/trunks/{}", carrier["id"].as_str().unwrap()),
            Some(json!({"transport": "tls"})),
        )
        .await;
    assert_eq!(status, 200);
    let _front = PeerProcess(
        Command::new("socat")
            .arg(format!(
                "OPENSSL-LISTEN:{sip_tls},bind=127.0.0.2,reuseaddr,fork,verify=0,cert={},key={}",
                cert.display(),
                key.display()
            ))
            .arg(format!("TCP:127.0.0.2:{behind_front}"))
            .spawn()
            .expect("start socat"),
    );
    wait_for_socket(SocketAddrV4::new([127, 0, 0, 2].into(), sip_tls), false);
    bench.call_out("+15551234567", tcp_carrier(bench.dir.path(), behind_front));
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "callee");
    assert_eq!(record["trunk_id"], carrier["id"], "{record}");
    assert!(bench.server.terminate().success());
}

/// The user this test runs as (dnsmasq would otherwise switch to `nobody`).
fn whoami() -> String {
    let output = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn a_trunk_registers_with_its_carrier_and_refreshes_before_expiry() {
    if sipp().is_none() {
        return;
    }
    let bench = CallBench::new(&[]).await;
    let carrier_port = free_udp_port();
    let carrier = sipp_command(
        &bench.server,
        bench.dir.path(),
        "carrier_register_uas.xml",
        carrier_port,
    )
    // -aa: answer the OPTIONS we qualify proxies with, as carriers do.
    .args(["-i", "127.0.0.2", "-m", "1", "-aa"])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("start the SIPp registrar");
    let trunk = bench
        .api
        .create(
            "/trunks",
            json!({"name": "telnyx", "kind": "credential", "host": "127.0.0.2", "port": carrier_port,
                   "username": "acme", "password": "trunk-pass", "register": true}),
        )
        .await;
    // The registrar challenges, checks the answer, grants 4 s, and takes the refresh.
    let output = carrier.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let path = format!("/trunks/{}/registration", trunk["id"].as_str().unwrap());
    let (status, registration) = bench.api.call(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(registration["state"], "registered", "{registration}");
    assert_eq!(registration["expires"], 4, "{registration}");
    assert_eq!(
        metric(&bench.server, "switchboard_trunks_registered").await,
        1
    );
    assert!(bench.server.terminate().success());
}

/// The `ivr` entry of a call record's legs.
fn ivr_leg(record: &Value) -> Value {
    record["legs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|leg| leg["role"] == "ivr")
        .cloned()
        .unwrap_or_else(|| panic!("no IVR in {record}"))
}

#[tokio::test]
async fn live_events_follow_registrations_and_calls() {
    use futures_util::SinkExt as _;
    use tokio_tungstenite::tungstenite::Message;
    if sipp().is_none() {
        return;
    }
    let bench = CallBench::new(&[]).await;

    // Without credentials, the socket is closed after a bad first message.
    let url = format!("ws://{}/api/v1/events", bench.server.http);
    let (mut anonymous, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    anonymous
        .send(Message::Text(r#"{"token": "forged"}"#.into()))
        .await
        .unwrap();
    let closed = expect_close(&mut anonymous).await;
    assert_eq!(closed, 1008, "policy violation");

    // A browser-style client: the token as the first message.
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello = json!({"token": bench.api.token}).to_string();
    socket.send(Message::Text(hello.into())).await.unwrap();
    expect_events(&mut socket, &["events.ready"]).await;

    bench.register_callee().await;
    let up = expect_events(&mut socket, &["registration.up"]).await;
    assert_eq!(up[0]["extension_id"], bench.callee.as_str(), "{up:?}");
    assert_eq!(up[0]["transport"], "UDP");

    bench.run("call_uac.xml", Some("call_uas.xml"), "5002");
    let call = expect_events(
        &mut socket,
        &[
            "call.started",
            "call.ringing",
            "call.answered",
            "call.held",
            "call.resumed",
            "call.ended",
        ],
    )
    .await;
    let id = call[0]["call_id"].as_str().unwrap();
    assert!(call.iter().all(|e| e["call_id"] == id), "{call:?}");
    assert_eq!(call[0]["from_number"], "5001");
    assert_eq!(call[0]["to_extension_id"], bench.callee.as_str());
    assert_eq!(call[5]["disposition"], "answered");
    assert_eq!(call[5]["hangup_side"], "caller");
    // The record named by the events is the call's CDR.
    let (status, record) = bench
        .api
        .call(reqwest::Method::GET, &format!("/calls/{id}"), None)
        .await;
    assert_eq!(status, 200, "{record}");
    assert!(bench.server.terminate().success());
}

/// Waits (bounded) for the server to close the socket; returns the close code.
async fn expect_close<S>(socket: &mut S) -> u16
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt as _;
    loop {
        let message = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .expect("the server closes the socket");
        match message {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame)))) => {
                return frame.code.into();
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// How much of a window's energy is at `frequency` (Goertzel; 1.0 for a pure tone, 0 for
/// silence).
fn tone_share(window: &[i16], frequency: f64) -> f64 {
    let k = 2.0 * (2.0 * std::f64::consts::PI * frequency / 8000.0).cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &x in window {
        let x = f64::from(x);
        (s1, s2) = (x + k * s1 - s2, s1);
        energy += x * x;
    }
    let power = s1 * s1 + s2 * s2 - k * s1 * s2;
    if energy == 0.0 {
        0.0
    } else {
        power / (energy * window.len() as f64 / 2.0)
    }
}

/// The 20 ms windows of `channel` that carry `frequency`: (first, last) and whether every
/// window in between does too.
fn tone_span(channel: &[i16], frequency: f64) -> (usize, usize, bool) {
    let active: Vec<bool> = channel
        .chunks(160)
        .map(|w| tone_share(w, frequency) > 0.5)
        .collect();
    let first = active.iter().position(|&a| a).expect("the tone is there");
    let last = active.iter().rposition(|&a| a).unwrap();
    (first, last, active[first..=last].iter().all(|&a| a))
}

impl CallBench {
    /// A bench whose callee's extension records its calls, with the tones the recording
    /// scenarios stream: 2 s of 1 kHz from the caller, 2 s of 440 Hz from the callee.
    async fn recorded() -> Self {
        let bench = Self::start(&[]).await;
        tone_wav(&bench.dir.path().join("tone-caller.wav"), 1000.0, 2);
        tone_wav(&bench.dir.path().join("tone-callee.wav"), 440.0, 2);
        let (status, body) = bench
            .api
            .call(
                reqwest::Method::PATCH,
                &format!("/extensions/{}", bench.callee),
                Some(json!({"record_calls": true})),
            )
            .await;
        assert_eq!(
            (status, &body["record_calls"]),
            (200, &json!(true)),
            "{body}"
        );
        bench
    }
}

#[tokio::test]
async fn recorded_calls_are_stereo_wavs_with_each_side_on_its_channel() {
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::recorded().await;

    // The caller streams 2 s of 1 kHz and hangs up 3 s after its ACK; the callee answers
    // with 2 s of 440 Hz.
    let run = bench.run_with(
        "record_uac.xml",
        Some(("record_uas.xml", false)),
        "5002",
        &["-d", "3000"],
    );
    assert!(run.caller.status.success(), "{}", run.report());
    assert!(
        run.callee.as_ref().is_some_and(|c| c.status.success()),
        "{}",
        run.report()
    );
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "caller");
    let id = record["recording_id"]
        .as_str()
        .expect("a recording")
        .to_owned();
    let row = bench.api.wait_for_recording(&id, "complete").await;
    let (spec, samples) = bench.api.wav(&id).await;
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    let frames = samples.len() / 2;
    assert_eq!(
        row["duration_ms"].as_u64(),
        Some(frames as u64 / 8),
        "{row}"
    );
    // The recording runs from the answer to the BYE: 3 s after the ACK.
    let duration_ms = frames as i64 / 8;
    assert!((duration_ms - 3_000).abs() <= 40, "{duration_ms} ms");
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    for (channel, frequency, other) in [(&left, 1000.0, 440.0), (&right, 440.0, 1000.0)] {
        let (first, last, continuous) = tone_span(channel, frequency);
        let pattern: String = channel
            .chunks(160)
            .map(|w| {
                let share = tone_share(w, frequency);
                if share > 0.5 {
                    '#'
                } else if w.iter().all(|&s| s == 0) {
                    '.'
                } else {
                    '?'
                }
            })
            .collect();
        assert!(continuous, "a gap in the {frequency} Hz channel: {pattern}");
        // 2 s is 100 windows; a window cut by the tone's edges may fall below the threshold.
        assert!(
            (98..=103).contains(&(last - first + 1)),
            "{frequency} Hz: {first}..{last}"
        );
        // Both streams start right after the answer.
        assert!(first <= 10, "{frequency} Hz starts at window {first}");
        assert!(
            channel.chunks(160).all(|w| tone_share(w, other) < 0.2),
            "{other} Hz leaked into the {frequency} Hz channel"
        );
    }
    assert_eq!(
        metric(&bench.server, "switchboard_recordings_completed_total").await,
        1
    );
    assert_eq!(
        metric(&bench.server, "switchboard_recording_packets_dropped_total").await,
        0
    );

    // The control plane records an unrecorded call on demand: here, refused while no call is
    // live, and for unknown calls.
    let (status, body) = bench
        .api
        .call(
            reqwest::Method::POST,
            &format!("/calls/{}/recording", record["id"].as_str().unwrap()),
            Some(json!({"action": "start"})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("call_not_live")),
        "{body}"
    );

    // The record carries each leg's media statistics (written when the media session ends).
    let path = format!("/calls/{}", record["id"].as_str().unwrap());
    let deadline = Instant::now() + TIMEOUT;
    let stats = loop {
        let (_, call) = bench.api.call(reqwest::Method::GET, &path, None).await;
        if call["media_stats"]["caller"].is_object() {
            break call["media_stats"].clone();
        }
        assert!(Instant::now() < deadline, "no media statistics: {call}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for leg in ["caller", "callee"] {
        let leg = &stats[leg];
        // 2 s of 20 ms packets each way, none lost on loopback, a good MOS.
        assert!(
            (99..=101).contains(&leg["packets_received"].as_u64().unwrap()),
            "{stats}"
        );
        assert_eq!(leg["packets_lost"], 0, "{stats}");
        assert!(leg["mos"].as_f64().unwrap() > 4.0, "{stats}");
    }
    assert!(stats["mos"].as_f64().unwrap() > 4.0, "{stats}");
    assert!(bench.server.terminate().success());
}

#[tokio::test]
async fn a_kill_mid_recording_leaves_a_playable_file_and_a_closed_record() {
    if sipp().is_none() {
        return;
    }
    let bench = CallBench::recorded().await;
    // A long call, in the background.
    let mut callee = sipp_command(
        &bench.server,
        bench.dir.path(),
        "record_uas.xml",
        bench.callee_port,
    )
    .args(["-m", "1"])
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let csv = credentials_csv(bench.dir.path(), "5001", "caller-secret", "");
    let mut caller = sipp_command(
        &bench.server,
        bench.dir.path(),
        "record_uac.xml",
        free_udp_port(),
    )
    .args(["-inf", &csv, "-s", "5002", "-m", "1", "-d", "30000"])
    .stdout(std::process::Stdio::null())
    .spawn()
    .unwrap();
    // Wait for the recording to be open and to have audio past its first checkpoint (1 s).
    let deadline = Instant::now() + TIMEOUT;
    let id = loop {
        let (_, page) = bench
            .api
            .call(reqwest::Method::GET, "/recordings", None)
            .await;
        if let Some(id) = page["items"][0]["id"].as_str() {
            break id.to_owned();
        }
        assert!(Instant::now() < deadline, "no recording started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let CallBench { dir, server, .. } = bench;
    server.kill9();
    for child in [&mut caller, &mut callee] {
        let _ = child.kill();
        let _ = child.wait();
    }

    // The next start repairs the file and closes the records.
    let server = Server::start(
        dir.path(),
        &[("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD)],
    );
    let api = Api::login(&server).await;
    let row = api.wait_for_recording(&id, "interrupted").await;
    let (spec, samples) = api.wav(&id).await;
    assert_eq!((spec.channels, spec.sample_rate), (2, 8000));
    let frames = samples.len() as u64 / 2;
    assert_eq!(row["duration_ms"].as_u64(), Some(frames / 8), "{row}");
    // At least the first checkpoint (1 s) survived; at most what was recorded (2.5 s).
    assert!((8_000..=2_600 * 8).contains(&frames), "{frames} frames");
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    assert!(tone_span(&left, 1000.0).2, "the caller's tone is intact");
    let (_, calls) = api.call(reqwest::Method::GET, "/calls", None).await;
    let call = &calls["items"][0];
    assert_eq!(call["disposition"], "interrupted", "{call}");
    assert_eq!(call["recording_id"], id.as_str(), "{call}");
    assert!(server.terminate().success());
}

#[tokio::test]
async fn dtmf_from_rtp_and_info_reaches_the_event_stream_and_is_converted() {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    if sipp().is_none() {
        return;
    }
    let mut bench = CallBench::start(&[]).await;
    let url = format!("ws://{}/api/v1/events", bench.server.http);
    let (mut socket, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let hello = json!({"token": bench.api.token}).to_string();
    socket.send(Message::Text(hello.into())).await.unwrap();
    expect_events(&mut socket, &["events.ready"]).await;

    // The caller presses 1 as RFC 4733 events, then 5 as a SIP INFO. Both sides negotiated
    // telephone-event, so the INFO is answered by Switchboard and sent on to the callee as
    // RFC 4733 events; the callee (SIPp with -rtp_echo) echoes every packet back, so both
    // keys come back from the callee's side too.
    bench.run("dtmf_uac.xml", Some("dtmf_uas.xml"), "5002");
    let mut keys = Vec::new();
    loop {
        let message = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .expect("events until the call ends")
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        match event["type"].as_str() {
            Some("call.dtmf") => keys.push(format!(
                "{}:{}",
                event["side"].as_str().unwrap(),
                event["digit"].as_str().unwrap()
            )),
            Some("call.ended") => break,
            _ => {}
        }
    }
    keys.sort();
    assert_eq!(keys, ["callee:1", "callee:5", "caller:1", "caller:5"]);
    let record = bench.next_record().await;
    CallBench::assert_ended(&record, "answered", "normal_clearing", "caller");
    assert!(bench.server.terminate().success());
}
