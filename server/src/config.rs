//! Configuration: one TOML file, every key optional, overridable by `SWITCHBOARD_*` environment
//! variables.
//!
//! An environment variable names a key by its path, sections joined by a double underscore:
//! `SWITCHBOARD_HTTP__BIND=127.0.0.1:9000` sets `http.bind`, `SWITCHBOARD_DATA_DIR=/var/lib/sb`
//! sets `data_dir`. Values are read as TOML (`30`, `true`, `["a"]`) where the key is not a
//! string. Unknown keys and bad values, in the file or the environment, are refused with the
//! key's name. `switchboard config --print-default` prints every key with its default and what
//! it does ([`DEFAULT_TOML`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The annotated default configuration, printed by `switchboard config --print-default`.
pub const DEFAULT_TOML: &str = include_str!("default-config.toml");

/// Environment variables with the `SWITCHBOARD_` prefix that are not configuration keys.
const NOT_KEYS: &[&str] = &["SWITCHBOARD_ADMIN_PASSWORD", "SWITCHBOARD_CONFIG"];
/// Prefix of variables the test harness uses; never configuration.
const TEST_PREFIX: &str = "SWITCHBOARD_TEST_";

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Directory for the SQLite database, the secret key and recordings.
    pub data_dir: PathBuf,
    /// Logging.
    pub log: LogConfig,
    /// Addresses others use to reach us.
    pub network: NetworkConfig,
    /// The HTTP listener (REST API, WebSockets, metrics).
    pub http: HttpConfig,
    /// SIP transports, timers, registrar and authentication limits.
    pub sip: SipConfig,
    /// The media plane: RTP ports, workers, latching, timeouts; call limits.
    pub media: MediaConfig,
    /// The TURN server: listeners, relay ports, credentials, quotas, peer policy.
    pub turn: TurnConfig,
    /// Calls out through trunks: toll-fraud limits.
    pub outbound: OutboundConfig,
    /// IVR flows.
    pub ivr: IvrConfig,
    /// The database.
    pub database: DatabaseConfig,
    /// Logins and tokens.
    pub auth: AuthConfig,
    /// Encryption of secrets at rest.
    pub security: SecurityConfig,
    /// What is created on the first start.
    pub bootstrap: BootstrapConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
            log: LogConfig::default(),
            network: NetworkConfig::default(),
            http: HttpConfig::default(),
            sip: SipConfig::default(),
            media: MediaConfig::default(),
            turn: TurnConfig::default(),
            outbound: OutboundConfig::default(),
            ivr: IvrConfig::default(),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            security: SecurityConfig::default(),
            bootstrap: BootstrapConfig::default(),
        }
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `info,switchboard_server=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[network]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// The public address peers reach us at (put in SIP and SDP, and in the URLs we print).
    /// Unset: `media.bind_ip` if it is a specific address, else the address of the interface
    /// that routes to the internet, else 127.0.0.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised_address: Option<IpAddr>,
}

/// `[http]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port the HTTP listener binds (port 0 picks a free one).
    pub bind: SocketAddr,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Largest audio upload accepted (`/prompts`), in bytes.
    pub max_upload_bytes: usize,
    /// Longest a request may take before it is answered 408.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Live-event WebSocket connections (`GET /api/v1/events`) at most.
    pub max_event_connections: usize,
    /// Also serve HTTPS (the same routes: the web phone and SIP over secure WebSocket), with
    /// the SIP TLS certificate (`sip.tls_cert`, or the generated self-signed one).
    pub tls: bool,
    /// HTTPS address and port (port 0 picks a free one).
    pub tls_bind: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_body_bytes: 1024 * 1024,
            max_upload_bytes: 64 * 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_event_connections: 1000,
            tls: true,
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 8443)),
        }
    }
}

/// `[sip]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Listen for SIP over UDP.
    pub udp: bool,
    /// UDP address and port (port 0 picks a free one).
    pub udp_bind: SocketAddr,
    /// Listen for SIP over TCP.
    pub tcp: bool,
    /// TCP address and port (port 0 picks a free one).
    pub tcp_bind: SocketAddr,
    /// Listen for SIP over TLS.
    pub tls: bool,
    /// TLS address and port (port 0 picks a free one).
    pub tls_bind: SocketAddr,
    /// PEM certificate chain for TLS. Unset (with `tls_key`): a self-signed certificate is
    /// generated once into `<data_dir>/tls/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// RFC 3261 T1: round-trip estimate, base of the retransmission timers.
    #[serde(with = "humantime_serde")]
    pub t1: Duration,
    /// RFC 3261 T2: longest retransmission interval.
    #[serde(with = "humantime_serde")]
    pub t2: Duration,
    /// RFC 3261 T4: longest time a message lives in the network.
    #[serde(with = "humantime_serde")]
    pub t4: Duration,
    /// Largest SIP message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Live SIP transactions at most; beyond it new requests get 503.
    pub max_transactions: usize,
    /// Shortest registration accepted (shorter: 423 with Min-Expires).
    pub min_expires: u32,
    /// Longest registration granted.
    pub max_expires: u32,
    /// Registration lifetime when a phone names none.
    pub default_expires: u32,
    /// Contacts per extension; a new one beyond it replaces the one closest to expiry.
    pub max_contacts_per_extension: usize,
    /// Failed authentications from one IP address within `auth_failure_window` that block it.
    pub max_auth_failures_per_source: u32,
    /// Failed authentications for one extension within the window that make it answer 403.
    pub max_auth_failures_per_extension: u32,
    /// The window failures are counted in.
    #[serde(with = "humantime_serde")]
    pub auth_failure_window: Duration,
    /// How long a blocked IP address stays blocked.
    #[serde(with = "humantime_serde")]
    pub block_duration: Duration,
    /// Digest algorithms offered in challenges, most preferred first: `MD5`, `SHA-256`,
    /// `SHA-512-256`.
    pub digest_algorithms: Vec<String>,
    /// A TCP connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most (TCP and TLS each; SIP WebSocket connections apart).
    pub max_tcp_connections: usize,
    /// Kernel receive and send buffer of the SIP UDP socket, in bytes.
    pub udp_buffer_bytes: usize,
    /// How long the SIP credentials of `POST /api/v1/sip/credentials` stay valid.
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// Name servers (`address:port`) that resolve trunk hosts (SRV, A, AAAA). Empty: the
    /// system's (`/etc/resolv.conf`).
    pub dns_servers: Vec<SocketAddr>,
    /// How often trunk hosts are resolved again (besides whenever a trunk is saved).
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// PEM file of certificates trusted for TLS towards trunks, besides the system's trust
    /// store (a carrier with a private CA, or a self-signed certificate in a lab).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_trust: Option<PathBuf>,
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            udp: true,
            udp_bind: SocketAddr::from(([0, 0, 0, 0], 5060)),
            tcp: true,
            tcp_bind: SocketAddr::from(([0, 0, 0, 0], 5060)),
            tls: true,
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 5061)),
            tls_cert: None,
            tls_key: None,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            max_message_bytes: 65_535,
            max_transactions: 100_000,
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts_per_extension: 10,
            max_auth_failures_per_source: 20,
            max_auth_failures_per_extension: 10,
            auth_failure_window: Duration::from_secs(60),
            block_duration: Duration::from_secs(600),
            digest_algorithms: vec!["MD5".into(), "SHA-256".into()],
            tcp_idle_timeout: Duration::from_secs(600),
            max_tcp_connections: 10_000,
            udp_buffer_bytes: 4 << 20,
            credential_ttl: Duration::from_secs(12 * 3600),
            dns_servers: Vec::new(),
            dns_refresh: Duration::from_secs(300),
            tls_trust: None,
        }
    }
}

/// How strictly media legs accept packets from addresses other than their SDP's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatchingMode {
    /// Latch to the first source (phones behind NAT).
    FirstSource,
    /// Latch to the first source with the SDP's IP address.
    SameAddress,
    /// Only the SDP's address and port.
    Strict,
}

/// `[ivr]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IvrConfig {
    /// Let `http` nodes reach loopback, private, link-local (cloud metadata) and other
    /// special-purpose addresses. Off: a flow cannot probe the server's own network.
    pub http_allow_private: bool,
}

/// `[outbound]`: limits on calls out through trunks, per tenant (toll-fraud guards).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// E.164 digit prefixes (without `+`) calls may go to; empty allows every number.
    pub allowed_prefixes: Vec<String>,
    /// Calls out at once per tenant.
    pub max_concurrent_per_tenant: usize,
    /// Answered minutes out per tenant per UTC day (0: no cap).
    pub daily_minutes_per_tenant: u32,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self {
            allowed_prefixes: Vec::new(),
            max_concurrent_per_tenant: 100,
            daily_minutes_per_tenant: 0,
        }
    }
}

/// `[media]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Address RTP sockets bind to.
    pub bind_ip: IpAddr,
    /// Lowest RTP port (RTP on even ports, RTCP on the next odd one).
    pub rtp_port_min: u16,
    /// Highest RTP port.
    pub rtp_port_max: u16,
    /// Media worker threads; 0 means one per CPU.
    pub workers: usize,
    /// Latching policy against RTP injection.
    pub latching: LatchingMode,
    /// A call whose media stopped for this long (not on hold) is hung up.
    #[serde(with = "humantime_serde")]
    pub inactivity_timeout: Duration,
    /// How long a call rings before the caller gets 480.
    #[serde(with = "humantime_serde")]
    pub ring_timeout: Duration,
    /// Calls at most, server-wide (beyond: 503 with Retry-After).
    pub max_calls: usize,
    /// Calls at most per tenant.
    pub max_calls_per_tenant: usize,
    /// New calls a second at most, server-wide; 0 means no limit.
    pub max_calls_per_second: u32,
    /// New calls a second at most per tenant; 0 means no limit.
    pub max_calls_per_second_per_tenant: u32,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            rtp_port_min: 20_000,
            rtp_port_max: 39_999,
            workers: 0,
            latching: LatchingMode::FirstSource,
            inactivity_timeout: Duration::from_secs(60),
            ring_timeout: Duration::from_secs(60),
            max_calls: 10_000,
            max_calls_per_tenant: 10_000,
            max_calls_per_second: 1_000,
            max_calls_per_second_per_tenant: 200,
        }
    }
}

/// `[turn]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the TURN server.
    pub enabled: bool,
    /// Listen for TURN over UDP.
    pub udp: bool,
    /// UDP address and port (port 0 picks a free one).
    pub udp_bind: SocketAddr,
    /// Listen for TURN over TCP.
    pub tcp: bool,
    /// TCP address and port (port 0 picks a free one).
    pub tcp_bind: SocketAddr,
    /// Listen for TURN over TLS (with the SIP TLS certificate).
    pub tls: bool,
    /// TLS address and port (port 0 picks a free one).
    pub tls_bind: SocketAddr,
    /// A second TLS listener, typically on port 443 for clients behind strict firewalls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_extra_bind: Option<SocketAddr>,
    /// The REALM of long-term credentials. Changing it invalidates users' TURN keys until
    /// they next log in or set their password.
    pub realm: String,
    /// Address relay sockets bind to. Unspecified (0.0.0.0): relays bind every interface
    /// and clients are told the advertised address.
    pub relay_ip: IpAddr,
    /// Lowest relay port.
    pub relay_port_min: u16,
    /// Highest relay port.
    pub relay_port_max: u16,
    /// Worker threads, each owning its clients' allocations; 0 means one per CPU.
    pub workers: usize,
    /// Shared secret of coturn-compatible REST credentials (`use-auth-secret`). Unset:
    /// generated on first start and kept (encrypted) in the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shared_secret: Option<String>,
    /// Lifetime of the credentials `GET /api/v1/ice-servers` hands out.
    #[serde(with = "humantime_serde")]
    pub credential_ttl: Duration,
    /// Allocation lifetime when a client asks for none or less (RFC 8656: 10 minutes).
    #[serde(with = "humantime_serde")]
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    /// Allocations at most, server-wide (beyond: 508); 0 means no limit.
    pub max_allocations: u32,
    /// Allocations at most per user (beyond: 486); 0 means no limit.
    pub max_allocations_per_user: u32,
    /// Bytes a second one allocation may relay; 0 means no limit.
    pub max_bandwidth_per_allocation: u64,
    /// Permissions (peer addresses) per allocation at most.
    pub max_permissions_per_allocation: usize,
    /// Channels per allocation at most.
    pub max_channels_per_allocation: usize,
    /// Peer ranges relays may reach even though they are special-purpose (loopback, private,
    /// link-local...), e.g. `["10.0.0.0/8"]`.
    pub allow_peers: Vec<String>,
    /// Peer ranges relays may never reach, on top of the special-purpose ones; wins over
    /// `allow_peers`.
    pub deny_peers: Vec<String>,
    /// Open TCP and TLS connections at most.
    pub max_tcp_connections: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            udp: true,
            udp_bind: SocketAddr::from(([0, 0, 0, 0], 3478)),
            tcp: true,
            tcp_bind: SocketAddr::from(([0, 0, 0, 0], 3478)),
            tls: true,
            tls_bind: SocketAddr::from(([0, 0, 0, 0], 5349)),
            tls_extra_bind: None,
            realm: "switchboard".into(),
            relay_ip: IpAddr::from([0, 0, 0, 0]),
            relay_port_min: 40_000,
            relay_port_max: 49_999,
            workers: 0,
            shared_secret: None,
            credential_ttl: Duration::from_secs(24 * 3600),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_allocations: 10_000,
            max_allocations_per_user: 10,
            max_bandwidth_per_allocation: 1_000_000,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            max_tcp_connections: 10_000,
        }
    }
}

/// `[database]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path` or `postgres://user:pass@host/db`. Unset: `<data_dir>/switchboard.db`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Largest number of pooled connections.
    pub max_connections: u32,
    /// How long a query waits for a free connection.
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// `[auth]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing secret for access tokens (at least 32 bytes). Unset: generated on first
    /// start and kept (encrypted) in the database, shared by every node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt_secret: Option<String>,
    /// Lifetime of access tokens.
    #[serde(with = "humantime_serde")]
    pub access_token_ttl: Duration,
    /// Lifetime of refresh tokens.
    #[serde(with = "humantime_serde")]
    pub refresh_token_ttl: Duration,
    /// Login attempts allowed per client IP per minute.
    pub login_attempts_per_ip_per_minute: u32,
    /// Login attempts allowed per account per minute.
    pub login_attempts_per_account_per_minute: u32,
    /// Consecutive failed logins that lock an account.
    pub lockout_threshold: u32,
    /// How long a locked account stays locked.
    #[serde(with = "humantime_serde")]
    pub lockout_duration: Duration,
    /// Shortest password accepted for users.
    pub min_password_length: usize,
    /// Issuer shown in authenticator apps for TOTP.
    pub totp_issuer: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            login_attempts_per_ip_per_minute: 30,
            login_attempts_per_account_per_minute: 10,
            lockout_threshold: 5,
            lockout_duration: Duration::from_secs(15 * 60),
            min_password_length: 10,
            totp_issuer: "Switchboard".into(),
        }
    }
}

/// `[security]`
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// Base64 of 32 random bytes: the AES-256-GCM key that encrypts SIP and trunk passwords,
    /// TOTP seeds and the JWT secret in the database. Unset: read from `<data_dir>/secret.key`,
    /// generated on first start. Every node sharing a database needs the same key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
}

/// `[bootstrap]`
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Email of the superadmin created on first start. Its password comes from
    /// `SWITCHBOARD_ADMIN_PASSWORD`, or is generated and printed once.
    pub admin_email: String,
    /// Name of the tenant created on first start.
    pub tenant_name: String,
    /// SIP domain of that tenant.
    pub tenant_domain: String,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        Self {
            admin_email: "admin@localhost".into(),
            tenant_name: "Default".into(),
            tenant_domain: "localhost".into(),
        }
    }
}

/// A configuration that can't be used. The message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then `SWITCHBOARD_*` variables
    /// from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str::<toml::Table>(&text).map_err(|e| {
                    ConfigError(format!("config file {}: {}", path.display(), e.message()))
                        .with_span(&text, e.span())
                })?
            }
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Self::default())
            .map_err(|e| ConfigError(format!("default config does not serialise: {e}")))?;
        let mut from_env = BTreeMap::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("SWITCHBOARD_") else {
                continue;
            };
            if NOT_KEYS.contains(&name.as_str()) || name.starts_with(TEST_PREFIX) {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(ConfigError(format!("{name}: malformed variable name")));
            }
            let value = env_value(&defaults, &path, &value);
            insert(&mut table, &path, value)
                .map_err(|()| ConfigError(format!("{name}: `{}` is not a section", path[0])))?;
            from_env.insert(path.join("."), name);
        }
        let config: Self =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                // The failing key is a variable's own key, or a section it tried to create.
                let source = from_env
                    .iter()
                    .find(|(k, _)| **k == key || k.starts_with(&format!("{key}.")))
                    .map(|(_, v)| format!(" (from {v})"))
                    .unwrap_or_default();
                let inner = e.into_inner().to_string().replace('\n', " ");
                if key == "." {
                    ConfigError(format!("config: {inner}"))
                } else {
                    ConfigError(format!("config key `{key}`{source}: {inner}"))
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks rules that types alone don't express.
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, why: &str| Err(ConfigError(format!("config key `{key}`: {why}")));
        if self.http.max_body_bytes < 1024 {
            return fail("http.max_body_bytes", "must be at least 1024");
        }
        let bad_prefix = self
            .outbound
            .allowed_prefixes
            .iter()
            .any(|p| p.is_empty() || p.len() > 15 || !p.bytes().all(|b| b.is_ascii_digit()));
        if bad_prefix {
            return fail(
                "outbound.allowed_prefixes",
                "entries are 1-15 digits, the start of E.164 numbers without `+` (e.g. \"1\", \"44\")",
            );
        }
        if self.outbound.max_concurrent_per_tenant == 0 {
            return fail("outbound.max_concurrent_per_tenant", "must be at least 1");
        }
        if self.http.max_upload_bytes < 1024 {
            return fail("http.max_upload_bytes", "must be at least 1024");
        }
        if self.http.request_timeout < Duration::from_secs(1) {
            return fail("http.request_timeout", "must be at least 1s");
        }
        let sip = &self.sip;
        if sip.t1 < Duration::from_millis(10) || sip.t1 > Duration::from_secs(10) {
            return fail("sip.t1", "must be between 10ms and 10s");
        }
        if sip.t2 < sip.t1 {
            return fail("sip.t2", "must be at least sip.t1");
        }
        if !(1_500..=65_535).contains(&sip.max_message_bytes) {
            return fail("sip.max_message_bytes", "must be between 1500 and 65535");
        }
        if sip.max_transactions == 0 {
            return fail("sip.max_transactions", "must be at least 1");
        }
        if sip.min_expires == 0
            || sip.min_expires > sip.default_expires
            || sip.default_expires > sip.max_expires
        {
            return fail(
                "sip.default_expires",
                "must satisfy 0 < min_expires <= default_expires <= max_expires",
            );
        }
        if sip.max_contacts_per_extension == 0 {
            return fail("sip.max_contacts_per_extension", "must be at least 1");
        }
        if sip.max_auth_failures_per_source == 0 || sip.max_auth_failures_per_extension == 0 {
            return fail(
                "sip.max_auth_failures_per_source",
                "failure limits must be at least 1",
            );
        }
        if sip.digest_algorithms.is_empty() {
            return fail("sip.digest_algorithms", "must name at least one algorithm");
        }
        for (i, name) in sip.digest_algorithms.iter().enumerate() {
            if switchboard_sip::digest::Algorithm::parse(name).is_none() {
                return fail(
                    "sip.digest_algorithms",
                    "each must be MD5, SHA-256 or SHA-512-256",
                );
            }
            if sip.digest_algorithms[..i]
                .iter()
                .any(|other| other.eq_ignore_ascii_case(name))
            {
                return fail("sip.digest_algorithms", "an algorithm is listed twice");
            }
        }
        if sip.max_tcp_connections == 0 {
            return fail("sip.max_tcp_connections", "must be at least 1");
        }
        if sip.tls_cert.is_some() != sip.tls_key.is_some() {
            return fail(
                "sip.tls_cert",
                "sip.tls_cert and sip.tls_key are set together (or neither, for a self-signed one)",
            );
        }
        let media = &self.media;
        if media.rtp_port_min < 1024
            || media.rtp_port_max <= media.rtp_port_min
            || media.rtp_port_max - media.rtp_port_min < 3
        {
            return fail(
                "media.rtp_port_max",
                "the RTP range must be above 1023 and hold at least two port pairs",
            );
        }
        if media.inactivity_timeout < Duration::from_secs(5) {
            return fail("media.inactivity_timeout", "must be at least 5s");
        }
        if media.ring_timeout < Duration::from_secs(1) {
            return fail("media.ring_timeout", "must be at least 1s");
        }
        if media.max_calls == 0 || media.max_calls_per_tenant == 0 {
            return fail("media.max_calls", "call limits must be at least 1");
        }
        let turn = &self.turn;
        if turn.relay_port_min < 1024 || turn.relay_port_max < turn.relay_port_min {
            return fail(
                "turn.relay_port_max",
                "the relay range must be above 1023 and not empty",
            );
        }
        if turn.realm.is_empty() || turn.realm.len() > 127 {
            return fail("turn.realm", "must be 1 to 127 characters");
        }
        if turn.default_lifetime < Duration::from_secs(60)
            || turn.max_lifetime < turn.default_lifetime
        {
            return fail(
                "turn.max_lifetime",
                "must satisfy 60s <= default_lifetime <= max_lifetime",
            );
        }
        if self.sip.dns_refresh < Duration::from_secs(1) {
            return fail("sip.dns_refresh", "must be at least 1s");
        }
        if turn.credential_ttl < Duration::from_secs(60) {
            return fail("turn.credential_ttl", "must be at least 60s");
        }
        if turn.max_permissions_per_allocation == 0 || turn.max_channels_per_allocation == 0 {
            return fail(
                "turn.max_permissions_per_allocation",
                "permission and channel limits must be at least 1",
            );
        }
        if turn.max_tcp_connections == 0 {
            return fail("turn.max_tcp_connections", "must be at least 1");
        }
        if turn.shared_secret.as_ref().is_some_and(|s| s.len() < 8) {
            return fail("turn.shared_secret", "must be at least 8 bytes");
        }
        for (key, ranges) in [
            ("turn.allow_peers", &turn.allow_peers),
            ("turn.deny_peers", &turn.deny_peers),
        ] {
            for range in ranges {
                if let Err(error) = range.parse::<switchboard_turn::policy::Cidr>() {
                    return fail(key, &error.to_string());
                }
            }
        }
        if self.database.max_connections == 0 {
            return fail("database.max_connections", "must be at least 1");
        }
        if let Some(url) = &self.database.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return fail("database.url", "must start with `sqlite:` or `postgres://`");
        }
        let auth = &self.auth;
        if let Some(secret) = &auth.jwt_secret
            && secret.len() < 32
        {
            return fail("auth.jwt_secret", "must be at least 32 bytes");
        }
        if auth.access_token_ttl < Duration::from_secs(60)
            || auth.access_token_ttl > Duration::from_secs(24 * 3600)
        {
            return fail("auth.access_token_ttl", "must be between 1m and 24h");
        }
        if auth.refresh_token_ttl < auth.access_token_ttl {
            return fail(
                "auth.refresh_token_ttl",
                "must be at least auth.access_token_ttl",
            );
        }
        for (key, value) in [
            (
                "auth.login_attempts_per_ip_per_minute",
                auth.login_attempts_per_ip_per_minute,
            ),
            (
                "auth.login_attempts_per_account_per_minute",
                auth.login_attempts_per_account_per_minute,
            ),
            ("auth.lockout_threshold", auth.lockout_threshold),
        ] {
            if value == 0 {
                return fail(key, "must be at least 1");
            }
        }
        if !(8..=128).contains(&auth.min_password_length) {
            return fail("auth.min_password_length", "must be between 8 and 128");
        }
        if let Some(key) = &self.security.secret_key
            && crate::secrets::decode_key(key).is_none()
        {
            return fail("security.secret_key", "must be base64 of exactly 32 bytes");
        }
        if !self.bootstrap.admin_email.contains('@') {
            return fail("bootstrap.admin_email", "must be an email address");
        }
        if self.bootstrap.tenant_domain.is_empty() {
            return fail("bootstrap.tenant_domain", "must not be empty");
        }
        Ok(())
    }

    /// The database URL, defaulting to SQLite under the data directory.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join("switchboard.db").display()
            )
        })
    }

    /// This configuration as TOML with secrets replaced by `"<redacted>"`.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        let redact = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some("<redacted>".into());
            }
        };
        redact(&mut shown.auth.jwt_secret);
        redact(&mut shown.security.secret_key);
        if let Some(url) = &mut shown.database.url
            && let Some((scheme, rest)) = url.split_once("://")
            && let Some((credentials, host)) = rest.split_once('@')
            && let Some((user, _password)) = credentials.split_once(':')
        {
            *url = format!("{scheme}://{user}:<redacted>@{host}");
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }
}

impl ConfigError {
    /// Appends the line and column of `span` in `text`.
    fn with_span(self, text: &str, span: Option<std::ops::Range<usize>>) -> Self {
        let Some(span) = span else { return self };
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        Self(format!("{} (line {line}, column {column})", self.0))
    }
}

/// Reads an environment value as a string where the default at `path` is a string (or the key
/// is unknown), else as a TOML value.
fn env_value(defaults: &toml::Table, path: &[String], raw: &str) -> toml::Value {
    let mut node = defaults;
    for (i, key) in path.iter().enumerate() {
        match node.get(key) {
            Some(toml::Value::Table(table)) if i + 1 < path.len() => node = table,
            Some(toml::Value::String(_)) => return toml::Value::String(raw.to_owned()),
            _ => break,
        }
    }
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sets `path` in `table`, creating sections. Fails if a section name is taken by a value.
fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), ()> {
    let (last, sections) = path.split_last().ok_or(())?;
    let mut node = table;
    for section in sections {
        node = match node
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
        {
            toml::Value::Table(table) => table,
            _ => return Err(()),
        };
    }
    node.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn error(file_text: Option<&str>, vars: &[(&str, &str)]) -> String {
        let f = file_text.map(file);
        Config::load(f.as_ref().map(|f| f.path()), env(vars))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn no_file_no_env_is_the_default() {
        assert_eq!(Config::load(None, env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn printed_default_matches_the_code() {
        // Every line of DEFAULT_TOML, uncommented, parses to the defaults...
        let parsed: Config = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(parsed, Config::default());
        // ...and every optional key is documented as a commented-out line.
        for key in [
            "advertised_address",
            "url",
            "jwt_secret",
            "secret_key",
            "tls_extra_bind",
            "shared_secret",
            "tls_trust",
        ] {
            assert!(
                DEFAULT_TOML.contains(&format!("# {key} = ")),
                "{key} undocumented"
            );
        }
        // Every key the code knows is in the file.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (section, value) in &defaults {
            match value {
                toml::Value::Table(keys) => {
                    assert!(
                        DEFAULT_TOML.contains(&format!("[{section}]")),
                        "[{section}] missing"
                    );
                    for key in keys.keys() {
                        assert!(
                            DEFAULT_TOML.contains(&format!("\n{key} = ")),
                            "{section}.{key} missing"
                        );
                    }
                }
                _ => assert!(
                    DEFAULT_TOML.contains(&format!("\n{section} = ")),
                    "{section} missing"
                ),
            }
        }
    }

    #[test]
    fn file_and_env_override_in_order() {
        let f = file(
            "data_dir = \"/srv/sb\"\n[http]\nbind = \"127.0.0.1:9000\"\n[auth]\nlockout_threshold = 3\n",
        );
        let config = Config::load(
            Some(f.path()),
            env(&[
                ("SWITCHBOARD_HTTP__BIND", "127.0.0.1:9100"),
                ("SWITCHBOARD_AUTH__ACCESS_TOKEN_TTL", "5m"),
                ("SWITCHBOARD_DATABASE__MAX_CONNECTIONS", "4"),
                ("SWITCHBOARD_BOOTSTRAP__TENANT_DOMAIN", "12345"),
                ("SWITCHBOARD_NETWORK__ADVERTISED_ADDRESS", "203.0.113.7"),
                ("SWITCHBOARD_ADMIN_PASSWORD", "not a key"),
                ("SWITCHBOARD_TEST_POSTGRES_URL", "ignored"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/sb"));
        assert_eq!(config.http.bind, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(config.auth.lockout_threshold, 3);
        assert_eq!(config.auth.access_token_ttl, Duration::from_secs(300));
        assert_eq!(config.database.max_connections, 4);
        assert_eq!(
            config.bootstrap.tenant_domain, "12345",
            "string keys stay strings"
        );
        assert_eq!(
            config.network.advertised_address,
            Some("203.0.113.7".parse().unwrap())
        );
        assert_eq!(config.database_url(), "sqlite:///srv/sb/switchboard.db");
    }

    #[test]
    fn errors_name_the_key() {
        let e = error(Some("[http]\nbindd = \"x\"\n"), &[]);
        assert!(e.contains("http") && e.contains("bindd"), "{e}");
        let e = error(Some("[http]\nbind = \"not an address\"\n"), &[]);
        assert!(e.contains("`http.bind`"), "{e}");
        let e = error(Some("colour = \"blue\"\n"), &[]);
        assert!(e.contains("colour"), "{e}");
        let e = error(Some("[auth]\naccess_token_ttl = \"soon\"\n"), &[]);
        assert!(e.contains("`auth.access_token_ttl`"), "{e}");
        let e = error(Some("[auth]\nlockout_threshold = 0\n"), &[]);
        assert!(e.contains("`auth.lockout_threshold`"), "{e}");
        let e = error(Some("[http\nbind = 1"), &[]);
        assert!(e.contains("line 1"), "{e}");
        let e = error(None, &[("SWITCHBOARD_HTTP__BIND", "nope")]);
        assert!(
            e.contains("`http.bind`") && e.contains("SWITCHBOARD_HTTP__BIND"),
            "{e}"
        );
        let e = error(None, &[("SWITCHBOARD_HTTP__COLOUR", "red")]);
        assert!(e.contains("colour"), "{e}");
        let e = error(None, &[("SWITCHBOARD_SECURITY__SECRET_KEY", "c2hvcnQ=")]);
        assert!(e.contains("`security.secret_key`"), "{e}");
        let e = error(None, &[("SWITCHBOARD_DATABASE__URL", "mysql://x")]);
        assert!(e.contains("`database.url`"), "{e}");
        let e = error(None, &[("SWITCHBOARD_DATA_DIR__X", "1")]);
        assert!(e.contains("SWITCHBOARD_DATA_DIR__X"), "{e}");
        let e = error(
            Some("[http]\nbind = \"127.0.0.1:1\"\n"),
            &[("SWITCHBOARD_HTTP__MAX_BODY_BYTES", "12")],
        );
        assert!(e.contains("`http.max_body_bytes`"), "{e}");
    }

    #[test]
    fn redacts_secrets() {
        let mut config = Config::default();
        config.auth.jwt_secret = Some("x".repeat(40));
        config.database.url = Some("postgres://sb:hunter2@db.internal/sb".into());
        let shown = config.to_redacted_toml();
        assert!(
            !shown.contains("hunter2") && !shown.contains(&"x".repeat(40)),
            "{shown}"
        );
        assert!(shown.contains("postgres://sb:<redacted>@db.internal/sb"));
    }
}
