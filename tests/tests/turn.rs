//! TURN against the real binary with third-party clients: coturn's `turnutils_uclient`
//! relaying to `turnutils_peer` over UDP, TCP and TLS with long-term (a user's email and
//! password) and REST credentials; wrong credentials and denied peers refused; and headless
//! Chromium connecting two RTCPeerConnections through relay candidates only.

use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use switchboard_tests::{ADMIN_PASSWORD, Server, TIMEOUT, TurnAddresses, metric, peer};

const ADMIN: &str = "admin@localhost";
const SECRET: &str = "a-turn-shared-secret";
/// Messages each uclient session sends (and expects echoed back).
const MESSAGES: u32 = 20;
/// uclient sessions (allocations) per run.
const SESSIONS: u32 = 2;

/// A server whose relays may reach 127.0.0.1 only (not the rest of 127.0.0.0/8).
fn start(dir: &std::path::Path) -> Server {
    Server::start(
        dir,
        &[
            ("SWITCHBOARD_ADMIN_PASSWORD", ADMIN_PASSWORD),
            ("SWITCHBOARD_TURN__ALLOW_PEERS", r#"["127.0.0.1/32"]"#),
            ("SWITCHBOARD_TURN__SHARED_SECRET", SECRET),
        ],
    )
}

fn turn(server: &Server) -> TurnAddresses {
    server.turn.expect("TURN is enabled")
}

/// A started server, its TURN addresses and an echo peer on 127.0.0.1, when coturn's tools
/// are installed.
fn with_coturn_tools() -> Option<(tempfile::TempDir, Server, TurnAddresses, EchoPeer)> {
    if !peer("turnutils_uclient", "-h", "Debian package coturn") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let addresses = turn(&server);
    let echo = EchoPeer::start("127.0.0.1");
    Some((dir, server, addresses, echo))
}

/// `turnutils_peer`, a UDP echo, killed when dropped.
struct EchoPeer {
    child: Child,
    address: SocketAddr,
}

impl EchoPeer {
    fn start(ip: &str) -> Self {
        let port = std::net::UdpSocket::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("turnutils_peer")
            .args(["-L", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer");
        let address = SocketAddr::new(ip.parse().unwrap(), port);
        Self { child, address }
    }
}

impl Drop for EchoPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `turnutils_uclient` (bounded by `timeout`) against `server` with `args` before the
/// usual ones; its output, stdout and stderr together.
fn uclient(server: SocketAddr, peer: SocketAddr, args: &[&str]) -> (bool, String) {
    let output: Output = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(args)
        .args(["-e", &peer.ip().to_string(), "-r", &peer.port().to_string()])
        .args([
            "-c",
            "-m",
            &SESSIONS.to_string(),
            "-n",
            &MESSAGES.to_string(),
        ])
        .args(["-z", "5", "-l", "120", "-p", &server.port().to_string()])
        .arg(server.ip().to_string())
        .output()
        .expect("run turnutils_uclient");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

/// The last `name=<number>` in uclient's output.
fn figure(output: &str, name: &str) -> Option<u64> {
    output
        .rsplit(&format!("{name}="))
        .next()
        .filter(|_| output.contains(name))?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Polls a counter until it reaches `at_least` (workers publish counters once a second).
async fn wait_for_metric(server: &Server, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = metric(server, name).await;
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn turnutils_uclient_relays_both_ways_over_udp_tcp_and_tls() {
    let Some((_dir, server, addresses, echo)) = with_coturn_tools() else {
        return;
    };
    let long_term = ["-u", ADMIN, "-w", ADMIN_PASSWORD];
    // uclient mints `<expiry>:bench` and its HMAC itself from the shared secret.
    let rest = ["-u", "bench", "-W", SECRET];
    let runs: [(&str, SocketAddr, &[&str], &[&str]); 5] = [
        ("UDP, long-term", addresses.udp, &[], &long_term),
        ("UDP, REST", addresses.udp, &[], &rest),
        ("TCP, long-term", addresses.tcp, &["-t"], &long_term),
        ("TCP, REST", addresses.tcp, &["-t"], &rest),
        ("TLS, long-term", addresses.tls, &["-t", "-S"], &long_term),
    ];
    let expected = u64::from(SESSIONS * MESSAGES);
    for (name, address, transport, credentials) in runs {
        let args: Vec<&str> = transport.iter().chain(credentials).copied().collect();
        let (ok, output) = uclient(address, echo.address, &args);
        let sent = figure(&output, "tot_send_msgs");
        let received = figure(&output, "tot_recv_msgs");
        assert!(
            ok && sent == Some(expected) && received == Some(expected),
            "{name}: sent {sent:?}, received {received:?} of {expected}:\n{output}"
        );
        assert!(
            output.contains("Total lost packets 0 (0.000000%)"),
            "{name}: loss reported:\n{output}"
        );
    }
    // The traffic went through Switchboard's relays, both ways.
    let total = 5 * expected;
    for direction in ["to_peer", "to_client"] {
        let name = format!("switchboard_turn_relayed_packets_total{{direction=\"{direction}\"}}");
        assert!(
            wait_for_metric(&server, &name, total).await >= total,
            "{name}"
        );
    }
    assert!(wait_for_metric(&server, "switchboard_turn_allocations_created_total", 10).await >= 10);
    assert!(server.terminate().success());
}

#[tokio::test]
async fn wrong_credentials_and_denied_peers_are_refused() {
    let Some((_dir, server, addresses, echo)) = with_coturn_tools() else {
        return;
    };
    for credentials in [
        ["-u", ADMIN, "-w", "not-the-password"],
        ["-u", "bench", "-W", "not-the-secret"],
    ] {
        let (ok, output) = uclient(addresses.udp, echo.address, &credentials);
        assert!(!ok, "{credentials:?} accepted:\n{output}");
        assert!(
            output.contains("Cannot complete Allocation"),
            "{credentials:?}:\n{output}"
        );
    }
    assert!(wait_for_metric(&server, "switchboard_turn_auth_failures_total", 2).await >= 2);
    assert_eq!(
        metric(&server, "switchboard_turn_allocations_created_total").await,
        0
    );

    // 127.0.0.2 is loopback too, but only 127.0.0.1 is allowed.
    let denied = EchoPeer::start("127.0.0.2");
    let (ok, output) = uclient(
        addresses.udp,
        denied.address,
        &["-u", ADMIN, "-w", ADMIN_PASSWORD],
    );
    assert!(!ok, "denied peer reached:\n{output}");
    assert!(output.contains("error 403"), "{output}");
    assert!(wait_for_metric(&server, "switchboard_turn_policy_denials_total", 1).await >= 1);
    assert_eq!(
        metric(
            &server,
            "switchboard_turn_relayed_packets_total{direction=\"to_peer\"}"
        )
        .await,
        0
    );
    assert!(server.terminate().success());
}

/// The admin's access token.
async fn login(server: &Server) -> String {
    switchboard_tests::login(server, ADMIN, ADMIN_PASSWORD).await
}

#[tokio::test]
async fn chromium_connects_through_the_relay_with_ice_servers_from_the_api() {
    let Some(script) = switchboard_tests::browser_script("turn_relay.mjs") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let client = switchboard_tests::http();
    let unauthenticated = client
        .get(server.url("/api/v1/ice-servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let token = login(&server).await;
    let answer: Value = client
        .get(server.url("/api/v1/ice-servers"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let servers = answer["iceServers"].as_array().expect("iceServers");
    assert_eq!(servers[0]["urls"][0], format!("stun:{}", turn(&server).udp));
    let relay = &servers[1];
    assert!(relay["username"].as_str().unwrap().contains(':'));
    // One transport per run: given both, Chromium gathers only the UDP relay candidate.
    for transport in ["udp", "tcp"] {
        let urls: Vec<&Value> = relay["urls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|url| {
                url.as_str()
                    .unwrap()
                    .ends_with(&format!("?transport={transport}"))
            })
            .filter(|url| url.as_str().unwrap().starts_with("turn:"))
            .collect();
        assert_eq!(urls.len(), 1, "{answer}");
        let ice = json!([{
            "urls": urls,
            "username": relay["username"],
            "credential": relay["credential"],
        }]);
        let output = Command::new("node")
            .arg(&script)
            .arg(ice.to_string())
            .output()
            .expect("run node");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{transport}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(result["relay_protocol"]["pc1"], transport, "{result}");
    }
    let relayed = "switchboard_turn_relayed_packets_total{direction=\"to_client\"}";
    assert!(wait_for_metric(&server, relayed, 1).await >= 1);
    assert!(server.terminate().success());
}
