//! End-to-end tests of the `switchboard` binary: each test starts the real server on free
//! loopback ports with a temporary working directory and talks to it over the network, as users
//! and third-party peers do.
//!
//! The binary must be built first (`cargo build --workspace` or the README test command);
//! [`binary`] finds it next to the test executable.

#![forbid(unsafe_code)]

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Everything the server printed on stdout so far.
    pub stdout: Vec<String>,
    /// Where its HTTP listener is.
    pub http: SocketAddr,
    /// Where SIP over UDP listens.
    pub sip_udp: SocketAddr,
    /// Where SIP over TCP listens.
    pub sip_tcp: SocketAddr,
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
        command.env("SWITCHBOARD_SIP__UDP_BIND", "127.0.0.1:0");
        command.env("SWITCHBOARD_SIP__TCP_BIND", "127.0.0.1:0");
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("start switchboard");
        let lines = forward_lines(child.stdout.take().expect("piped stdout"));
        // Drain stderr (logs) so the server never blocks on a full pipe.
        let stderr = forward_lines(child.stderr.take().expect("piped stderr"));
        std::thread::spawn(move || for _ in stderr {});
        let unset = SocketAddr::from(([0, 0, 0, 0], 0));
        let mut server = Self {
            child,
            lines,
            stdout: Vec::new(),
            http: unset,
            sip_udp: unset,
            sip_tcp: unset,
        };
        server.http = server.address_after("HTTP listening on ");
        server.sip_udp = server.address_after("SIP: UDP listening on ");
        server.sip_tcp = server.address_after("SIP: TCP listening on ");
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
