//! End-to-end tests of the `switchboard` binary: each test starts the real server on free
//! loopback ports with a temporary working directory and talks to it over the network, as users
//! and third-party peers do.
//!
//! The binary must be built first (`cargo build --workspace` or the README test command);
//! [`binary`] finds it next to the test executable.

#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a server may take to start or stop before a test fails.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The `switchboard` binary of this build.
pub fn binary() -> PathBuf {
    // The test executable is target/<profile>/deps/<name>; the binary is target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let path = profile_dir.join(format!("switchboard{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace)",
        path.display()
    );
    path
}

/// RTP ports per test server.
const RTP_BLOCK: u16 = 200;

/// A block of RTP ports for the next server of this test process: servers running at the same
/// time never share ports, and every block lies below the kernel's ephemeral range (32768+),
/// where SIPp and the tests' own sockets get their ports. A block another program uses right
/// now (say, a benchmark on the same machine) is skipped.
fn rtp_ports() -> (u16, u16) {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let blocks = (32_000 - 20_000) / RTP_BLOCK;
    let free = |first: u16| {
        (first..first + RTP_BLOCK)
            .all(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
    };
    let mut first = 0;
    for _ in 0..blocks {
        let block = NEXT.fetch_add(1, Ordering::Relaxed) % blocks;
        first = 20_000 + block * RTP_BLOCK;
        if free(first) {
            break;
        }
    }
    (first, first + RTP_BLOCK - 1)
}

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything the server printed on stdout so far.
    pub stdout: Vec<String>,
    /// Where its HTTP listener is.
    pub http: SocketAddr,
    /// Where its HTTPS listener is.
    pub https: SocketAddr,
    /// Where SIP over UDP listens.
    pub sip_udp: SocketAddr,
    /// Where SIP over TCP listens.
    pub sip_tcp: SocketAddr,
    /// Where SIP over TLS listens.
    pub sip_tls: SocketAddr,
    /// Where TURN listens over UDP, TCP and TLS (unset when `turn.enabled` is false).
    pub turn: Option<TurnAddresses>,
}

/// The TURN listeners of a [`Server`].
#[derive(Clone, Copy, Debug)]
pub struct TurnAddresses {
    /// UDP.
    pub udp: SocketAddr,
    /// TCP.
    pub tcp: SocketAddr,
    /// TLS.
    pub tls: SocketAddr,
}

impl Server {
    /// Starts `switchboard serve` in `dir` with `env` (on top of a clean environment: no
    /// inherited `SWITCHBOARD_*` variables) and waits until it listens.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary());
        command
            .arg("serve")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SWITCHBOARD_")) {
            command.env_remove(name);
        }
        command.env("SWITCHBOARD_HTTP__BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_HTTP__TLS_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_SIP__UDP_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_SIP__TCP_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_SIP__TLS_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_NETWORK__ADVERTISED_ADDRESS", "127.0.0.1");
        command.env("SWITCHBOARD_MEDIA__BIND_IP", "127.0.0.1");
        // The block's lower half carries RTP, its upper half TURN relays.
        let (first, last) = rtp_ports();
        let middle = first + RTP_BLOCK / 2;
        command.env("SWITCHBOARD_MEDIA__RTP_PORT_MIN", first.to_string());
        command.env("SWITCHBOARD_MEDIA__RTP_PORT_MAX", (middle - 1).to_string());
        command.env("SWITCHBOARD_TURN__UDP_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_TURN__TCP_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_TURN__TLS_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_TURN__RELAY_IP", "127.0.0.1");
        command.env("SWITCHBOARD_TURN__RELAY_PORT_MIN", middle.to_string());
        command.env("SWITCHBOARD_TURN__RELAY_PORT_MAX", last.to_string());
        let turn_enabled = !env
            .iter()
            .any(|(name, value)| *name == "SWITCHBOARD_TURN__ENABLED" && *value == "false");
        let log_level = std::env::var("SWITCHBOARD_TEST_SERVER_LOGS").ok();
        if let Some(level) = &log_level {
            command.env("SWITCHBOARD_LOG__LEVEL", level);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start switchboard");
        let lines = forward_lines(child.stdout.take().expect("piped stdout"));
        // Drain stderr (logs) so the server never blocks on a full pipe. With
        // SWITCHBOARD_TEST_SERVER_LOGS=<level> (e.g. `debug`), show them at that level (captured
        // per test by the test harness).
        let stderr = forward_lines(child.stderr.take().expect("piped stderr"));
        let show = log_level.is_some();
        std::thread::spawn(move || {
            for line in stderr {
                if show {
                    // Shown with the output of the test that started the server.
                    #[allow(clippy::print_stderr)]
                    {
                        eprintln!("server: {line}");
                    }
                }
            }
        });
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut server = Self {
            child,
            lines,
            stdout: Vec::new(),
            http: unset,
            https: unset,
            sip_udp: unset,
            sip_tcp: unset,
            sip_tls: unset,
            turn: None,
        };
        server.http = server.address_after("HTTP listening on ");
        server.https = server.address_after("HTTPS listening on ");
        server.sip_udp = server.address_after("SIP: UDP listening on ");
        server.sip_tcp = server.address_after("SIP: TCP listening on ");
        server.sip_tls = server.address_after("SIP: TLS listening on ");
        if turn_enabled {
            server.turn = Some(TurnAddresses {
                udp: server.address_after("TURN: UDP listening on "),
                tcp: server.address_after("TURN: TCP listening on "),
                tls: server.address_after("TURN: TLS listening on "),
            });
        }
        server
    }

    /// The address at the end of the stdout line containing `needle`.
    fn address_after(&mut self, needle: &str) -> SocketAddr {
        let line = self.wait_for_line(needle);
        let address = line
            .rsplit(' ')
            .next()
            .expect("address at the end of the line");
        address
            .parse()
            .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"))
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// Waits for a stdout line containing `needle` and returns it.
    pub fn wait_for_line(&mut self, needle: &str) -> String {
        if let Some(line) = self.stdout.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; stdout so far: {:#?}",
                    self.stdout
                ),
            }
        }
    }

    /// The base URL of the HTTP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for switchboard") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "switchboard did not exit within {TIMEOUT:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends each line read from `reader` down a channel, from a thread.
fn forward_lines(reader: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Runs the binary with `args` and a clean `SWITCHBOARD_*` environment plus `env`; returns its
/// exit status, stdout and stderr.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut command = Command::new(binary());
    command.args(args);
    for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("SWITCHBOARD_")) {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    let output = command.output().expect("run switchboard");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Whether a third-party peer program is installed. The README test command installs them
/// and sets `SWITCHBOARD_TEST_REQUIRE_PEERS=1`, which turns a missing one into a failure.
pub fn peer(program: &str, version_arg: &str, package: &str) -> bool {
    let found = Command::new(program).arg(version_arg).output().is_ok();
    assert!(
        found || std::env::var_os("SWITCHBOARD_TEST_REQUIRE_PEERS").is_none(),
        "{program} ({package}) is required"
    );
    found
}

/// An HTTP client. reqwest's rustls takes the process's crypto provider (the server
/// installs ring for its IVR fetches, and Cargo unifies the feature for every crate of the
/// workspace), so the tests install it too.
pub fn http() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The value of a metric, `name` with its labels as exposed (`x_total{a="b"}`).
pub async fn metric(server: &Server, name: &str) -> u64 {
    let text = http()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

/// The bootstrap admin's password the tests start servers with.
pub const ADMIN_PASSWORD: &str = "an-admin-password";

/// Logs in as `email` with `password`; the access token.
pub async fn login(server: &Server, email: &str, password: &str) -> String {
    let body: Value = http()
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["access_token"].as_str().expect("token").to_owned()
}

/// The control plane, logged in as the bootstrap admin.
pub struct Api {
    /// The HTTP client.
    pub client: reqwest::Client,
    /// `http://…/api/v1`.
    pub base: String,
    /// The admin's access token.
    pub token: String,
}

impl Api {
    /// Logs in as `admin@localhost` with [`ADMIN_PASSWORD`].
    pub async fn login(server: &Server) -> Self {
        let client = http();
        let base = server.url("/api/v1");
        let token = login(server, "admin@localhost", ADMIN_PASSWORD).await;
        Self {
            client,
            base,
            token,
        }
    }

    /// Sends `method path` with an optional JSON body; the status and the JSON answer.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs `body` and expects 201; returns the new object.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let (status, created) = self.call(reqwest::Method::POST, path, Some(body)).await;
        assert_eq!(status, 201, "{path}: {created}");
        created
    }

    /// An IP trunk for a carrier at 127.0.0.1.
    pub async fn carrier_trunk(&self) -> Value {
        self.create(
            "/trunks",
            json!({"name": "carrier", "kind": "ip", "host": "127.0.0.1", "allowed_sources": ["127.0.0.1"]}),
        )
        .await
    }

    /// Creates and publishes flow `name` and routes `number` to it; returns the flow's id.
    pub async fn flow_on_number(&self, name: &str, graph: Value, number: &str) -> String {
        let flow = self
            .create("/ivr-flows", json!({"name": name, "graph": graph}))
            .await;
        let id = flow["id"].as_str().unwrap().to_owned();
        self.create(&format!("/ivr-flows/{id}/publish"), json!({}))
            .await;
        self.create(
            "/numbers",
            json!({"number": number, "target": {"type": "ivr_flow", "id": id}}),
        )
        .await;
        id
    }

    /// Creates extension `number` with SIP password `password`; returns its id.
    pub async fn extension(&self, number: &str, password: &str) -> String {
        let body = json!({"number": number, "display_name": format!("Ext {number}"), "password": password});
        let (status, created) = self
            .call(reqwest::Method::POST, "/extensions", Some(body))
            .await;
        assert_eq!(status, 201, "{created}");
        created["id"].as_str().unwrap().to_owned()
    }

    /// Waits (bounded) until the registrations API lists `count` bindings.
    pub async fn wait_for_registrations(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (_, page) = self
                .call(reqwest::Method::GET, "/registrations", None)
                .await;
            let items = page["items"].as_array().cloned().unwrap_or_default();
            if items.len() == count {
                return items;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} registrations, have {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until recording `id` has `status`, and returns it.
    pub async fn wait_for_recording(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let (code, recording) = self
                .call(reqwest::Method::GET, &format!("/recordings/{id}"), None)
                .await;
            if code == 200 && recording["status"] == status {
                return recording;
            }
            assert!(Instant::now() < deadline, "recording {id}: {recording}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Downloads recording `id` and reads it as a WAV file.
    pub async fn wav(&self, id: &str) -> (hound::WavSpec, Vec<i16>) {
        let bytes = self
            .client
            .get(format!("{}/recordings/{id}/download", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let reader = hound::WavReader::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
        let spec = reader.spec();
        let samples = reader.into_samples().map(Result::unwrap).collect();
        (spec, samples)
    }
}

/// SIPp, if installed.
pub fn sipp() -> Option<&'static str> {
    peer("sipp", "-v", "Debian package sip-tester").then_some("sipp")
}

/// A free UDP port on loopback (released at once; SIPp binds it next).
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free TCP port on loopback (released at once; a peer binds it next).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (bounded) until something listens on TCP `addr`, or has UDP `addr` bound
/// (`udp`), as the kernel lists it in `/proc/net/{tcp,udp}`: a peer started as a process is
/// ready without a connection to it or a sleep.
pub fn wait_for_socket(addr: std::net::SocketAddrV4, udp: bool) {
    let (table, state) = if udp {
        ("/proc/net/udp", "07")
    } else {
        ("/proc/net/tcp", "0A")
    };
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let listed = std::fs::read_to_string(table).unwrap_or_default();
        let found = listed.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&state)
        });
        if found {
            return;
        }
        assert!(Instant::now() < deadline, "nothing on {addr} ({table})");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child process killed when dropped (a peer that would otherwise run forever).
pub struct PeerProcess(pub Child);

impl Drop for PeerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a SIPp injection file for `number` with its digest credentials (field 1) and
/// `extra` fields.
pub fn credentials_csv(dir: &std::path::Path, number: &str, password: &str, extra: &str) -> String {
    let csv = dir.join(format!("users-{number}-{password}.csv"));
    std::fs::write(
        &csv,
        format!(
            "SEQUENTIAL\n{number};[authentication username={number} password={password}]{extra}\n"
        ),
    )
    .unwrap();
    csv.to_str().unwrap().to_owned()
}

/// A SIPp command for `scenario` (in `tests/sipp`) on local port `port`, against `server`.
pub fn sipp_command(server: &Server, dir: &std::path::Path, scenario: &str, port: u16) -> Command {
    let scenario = format!("{}/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new("sipp");
    command
        .arg(server.sip_udp.to_string())
        .args(["-sf", &scenario, "-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-timeout", "20s", "-timeout_error", "-nostdin"])
        .current_dir(dir);
    command
}

/// Runs the SIPp REGISTER scenario `calls` times for `number` from local port `port`.
pub fn run_sipp_register(
    server: &Server,
    dir: &std::path::Path,
    (number, password): (&str, &str),
    port: u16,
    calls: u32,
) -> std::process::Output {
    let csv = credentials_csv(dir, number, password, "");
    sipp_command(server, dir, "register_auth.xml", port)
        .args(["-inf", &csv, "-m", &calls.to_string(), "-r", "50"])
        .output()
        .expect("run sipp")
}

/// Reads WebSocket messages (bounded in time) until `wanted` event types were seen in order;
/// returns the events of those types.
pub async fn expect_events<S>(socket: &mut S, wanted: &[&str]) -> Vec<Value>
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use futures_util::StreamExt as _;
    let mut seen = Vec::new();
    let mut found = Vec::new();
    while found.len() < wanted.len() {
        let message = tokio::time::timeout(TIMEOUT, socket.next())
            .await
            .unwrap_or_else(|_| panic!("waiting for {wanted:?}, saw {seen:?}"))
            .expect("the event stream is open")
            .expect("a WebSocket message");
        let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
            continue;
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        let kind = event["type"].as_str().unwrap_or_default().to_owned();
        if kind == wanted[found.len()] {
            found.push(event);
        }
        seen.push(kind);
    }
    found
}

/// The path of `tests/browser/<name>`, a playwright-core script for headless Chromium, when
/// Chromium, Node.js and the npm packages are installed (a failure under the README test
/// command, which installs them; `None` otherwise).
pub fn browser_script(name: &str) -> Option<PathBuf> {
    let browser = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser");
    let installed = browser.join("node_modules/playwright-core").exists();
    assert!(
        installed || std::env::var_os("SWITCHBOARD_TEST_REQUIRE_PEERS").is_none(),
        "tests/browser/node_modules is missing: run `npm ci` in tests/browser"
    );
    let ready = installed
        && peer("chromium", "--version", "Debian package chromium")
        && peer("node", "--version", "Node.js");
    ready.then(|| browser.join(name))
}
