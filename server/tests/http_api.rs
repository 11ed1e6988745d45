//! The HTTP control plane, driven in-process: every test builds its own router over a fresh
//! SQLite database in a temporary data directory and sends requests with
//! `tower::ServiceExt::oneshot`.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use switchboard_server::auth::tokens::TokenKeys;
use switchboard_server::auth::totp;
use switchboard_server::config::Config;
use switchboard_server::http::{AppState, router};
use switchboard_storage::calls::{self, Call, Direction, Disposition, HangupSide};
use switchboard_storage::crypto::SecretBox;
use switchboard_storage::recordings::{self, Recording, RecordingKind, RecordingStatus};
use switchboard_storage::users::{self, Role};
use switchboard_storage::{Db, Timestamp, Uuid};
use tempfile::TempDir;
use tower::ServiceExt as _;

const ADMIN_EMAIL: &str = "admin@localhost";
const ADMIN_PASSWORD: &str = "a long password";
/// The password of every user the tests create.
const PASSWORD: &str = "user password 1";
const JWT_SECRET: &[u8; 32] = b"test-jwt-secret-of-32-bytes-long";

/// Every operation of the API, as `switchboard openapi` lists it.
const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/audit-log"),
    ("POST", "/api/v1/auth/login"),
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/logout-all"),
    ("GET", "/api/v1/auth/me"),
    ("POST", "/api/v1/auth/password"),
    ("POST", "/api/v1/auth/refresh"),
    ("POST", "/api/v1/auth/totp/disable"),
    ("POST", "/api/v1/auth/totp/enroll"),
    ("POST", "/api/v1/auth/totp/verify"),
    ("GET", "/api/v1/calls"),
    ("GET", "/api/v1/calls/{id}"),
    ("POST", "/api/v1/calls/{id}/recording"),
    ("GET", "/api/v1/events"),
    ("GET", "/api/v1/extensions"),
    ("POST", "/api/v1/extensions"),
    ("GET", "/api/v1/extensions/{id}"),
    ("DELETE", "/api/v1/extensions/{id}"),
    ("PATCH", "/api/v1/extensions/{id}"),
    ("GET", "/api/v1/ivr-flows"),
    ("POST", "/api/v1/ivr-flows"),
    ("GET", "/api/v1/ivr-flows/{id}"),
    ("DELETE", "/api/v1/ivr-flows/{id}"),
    ("PATCH", "/api/v1/ivr-flows/{id}"),
    ("POST", "/api/v1/ivr-flows/{id}/publish"),
    ("GET", "/api/v1/ivr-flows/{id}/versions"),
    ("GET", "/api/v1/ivr-flows/{id}/versions/{version}"),
    ("GET", "/api/v1/numbers"),
    ("POST", "/api/v1/numbers"),
    ("GET", "/api/v1/numbers/{id}"),
    ("DELETE", "/api/v1/numbers/{id}"),
    ("PATCH", "/api/v1/numbers/{id}"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/outbound-routes"),
    ("POST", "/api/v1/outbound-routes"),
    ("GET", "/api/v1/outbound-routes/{id}"),
    ("DELETE", "/api/v1/outbound-routes/{id}"),
    ("PATCH", "/api/v1/outbound-routes/{id}"),
    ("GET", "/api/v1/prompts"),
    ("POST", "/api/v1/prompts"),
    ("GET", "/api/v1/prompts/{id}"),
    ("DELETE", "/api/v1/prompts/{id}"),
    ("PATCH", "/api/v1/prompts/{id}"),
    ("GET", "/api/v1/prompts/{id}/audio"),
    ("PUT", "/api/v1/prompts/{id}/audio"),
    ("GET", "/api/v1/recordings"),
    ("GET", "/api/v1/recordings/{id}"),
    ("DELETE", "/api/v1/recordings/{id}"),
    ("GET", "/api/v1/recordings/{id}/download"),
    ("GET", "/api/v1/ice-servers"),
    ("GET", "/api/v1/registrations"),
    ("GET", "/api/v1/ring-groups"),
    ("POST", "/api/v1/sip/credentials"),
    ("POST", "/api/v1/ring-groups"),
    ("GET", "/api/v1/ring-groups/{id}"),
    ("DELETE", "/api/v1/ring-groups/{id}"),
    ("PATCH", "/api/v1/ring-groups/{id}"),
    ("GET", "/api/v1/tenants"),
    ("POST", "/api/v1/tenants"),
    ("GET", "/api/v1/tenants/{id}"),
    ("DELETE", "/api/v1/tenants/{id}"),
    ("PATCH", "/api/v1/tenants/{id}"),
    ("GET", "/api/v1/trunks"),
    ("POST", "/api/v1/trunks"),
    ("GET", "/api/v1/trunks/{id}"),
    ("DELETE", "/api/v1/trunks/{id}"),
    ("PATCH", "/api/v1/trunks/{id}"),
    ("GET", "/api/v1/trunks/{id}/registration"),
    ("GET", "/api/v1/users"),
    ("POST", "/api/v1/users"),
    ("GET", "/api/v1/users/{id}"),
    ("DELETE", "/api/v1/users/{id}"),
    ("PATCH", "/api/v1/users/{id}"),
    ("DELETE", "/api/v1/users/{id}/totp"),
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/readyz"),
    ("GET", "/sip"),
];

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// One application over its own database and data directory, with the bootstrap superadmin.
struct TestApp {
    router: Router,
    db: Db,
    config: Arc<Config>,
    _dir: TempDir,
}

/// A whole response.
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

/// The tokens of one login.
struct Tokens {
    access: String,
    refresh: String,
}

impl Reply {
    /// The body as JSON (`null` if empty). Errors must have a body
    /// `{"error":{"code","message"}}`.
    fn json(&self) -> Value {
        let error = self.status.is_client_error() || self.status.is_server_error();
        if self.body.is_empty() && !error {
            return Value::Null;
        }
        let value: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answered non-JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        });
        if error {
            assert_error_shape(&value);
        }
        value
    }

    fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn status_json(&self) -> (StatusCode, Value) {
        (self.status, self.json())
    }
}

#[track_caller]
fn assert_error_shape(body: &Value) {
    let object = body.as_object().expect("error body is an object");
    assert_eq!(object.len(), 1, "only `error` at the top: {body}");
    let error = body["error"].as_object().expect("`error` is an object");
    assert_eq!(error.len(), 2, "`error` has `code` and `message`: {body}");
    assert!(
        error["code"].is_string() && error["message"].is_string(),
        "{body}"
    );
}

impl TestApp {
    async fn new() -> Self {
        Self::with_config(|_| {}).await
    }

    /// An app whose default configuration (with `data_dir` in a temporary directory) `adjust`
    /// may change.
    async fn with_config(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let db = Db::connect(&url, &Default::default()).await.unwrap();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        adjust(&mut config);
        let secret_box = SecretBox::new(&SecretBox::generate_key());
        switchboard_server::app::bootstrap(&db, &config, &secret_box, Some(ADMIN_PASSWORD.into()))
            .await
            .unwrap();
        let config = Arc::new(config);
        let state = AppState::new(db.clone(), config.clone(), JWT_SECRET, secret_box);
        Self {
            router: router(state),
            db,
            config,
            _dir: dir,
        }
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let what = format!("{} {}", request.method(), request.uri());
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_ne!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        Reply {
            status,
            headers,
            body: body.to_vec(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(request(method, path, token, body.as_ref()))
            .await
            .status_json()
    }

    async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// A login attempt, without a client address.
    async fn try_login(&self, body: Value) -> Reply {
        self.send(request(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(&body),
        ))
        .await
    }

    /// A login attempt from `ip`.
    async fn try_login_from(&self, ip: [u8; 4], body: Value) -> Reply {
        let request = request(Method::POST, "/api/v1/auth/login", None, Some(&body));
        self.send(from_address(request, ip)).await
    }

    /// Logs in, which must succeed.
    async fn login(&self, email: &str, password: &str) -> Tokens {
        let body = json!({"email": email, "password": password});
        let reply = expect(self.try_login(body).await.status_json(), StatusCode::OK);
        tokens(&reply)
    }

    /// An access token of the bootstrap superadmin.
    async fn superadmin(&self) -> String {
        self.login(ADMIN_EMAIL, ADMIN_PASSWORD).await.access
    }

    async fn me(&self, token: &str) -> Value {
        expect(self.get("/api/v1/auth/me", token).await, StatusCode::OK)
    }

    /// The caller's tenant.
    async fn tenant_of(&self, token: &str) -> Uuid {
        self.me(token).await["tenant_id"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    async fn create_tenant(&self, token: &str, name: &str, domain: &str) -> Uuid {
        let body = json!({"name": name, "sip_domain": domain});
        id(&expect(
            self.post("/api/v1/tenants", token, body).await,
            StatusCode::CREATED,
        ))
    }

    /// Creates a user with [`PASSWORD`]; `tenant` only for superadmins.
    async fn create_user(
        &self,
        token: &str,
        email: &str,
        role: &str,
        tenant: Option<Uuid>,
    ) -> Uuid {
        let mut body = json!({"email": email, "password": PASSWORD, "role": role});
        if let Some(tenant) = tenant {
            body["tenant_id"] = json!(tenant);
        }
        id(&expect(
            self.post("/api/v1/users", token, body).await,
            StatusCode::CREATED,
        ))
    }

    /// Creates extension `number`; `extra` adds or overrides fields of the body.
    async fn create_extension(&self, token: &str, number: &str, extra: Value) -> Uuid {
        let body = merge(
            json!({
                "number": number,
                "display_name": format!("Ext {number}"),
                "password": "sip-secret-1"
            }),
            extra,
        );
        id(&expect(
            self.post("/api/v1/extensions", token, body).await,
            StatusCode::CREATED,
        ))
    }

    async fn create_number(&self, token: &str, number: &str, target: (&str, Uuid)) -> Uuid {
        let body = json!({"number": number, "target": {"type": target.0, "id": target.1}});
        id(&expect(
            self.post("/api/v1/numbers", token, body).await,
            StatusCode::CREATED,
        ))
    }

    fn recordings_dir(&self) -> std::path::PathBuf {
        self.config.data_dir.join("recordings")
    }
}

fn request(method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    match body {
        Some(body) => builder
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

/// `request` as if it came from `ip` (what `into_make_service_with_connect_info` provides).
fn from_address(mut request: Request<Body>, ip: [u8; 4]) -> Request<Body> {
    let address = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), 40000);
    request.extensions_mut().insert(ConnectInfo(address));
    request
}

/// The body of a reply that must have `status`.
#[track_caller]
fn expect(reply: (StatusCode, Value), status: StatusCode) -> Value {
    assert_eq!(reply.0, status, "body: {}", reply.1);
    reply.1
}

/// The message of an error reply that must have `status` and `code`.
#[track_caller]
fn expect_error(reply: (StatusCode, Value), status: StatusCode, code: &str) -> String {
    assert_eq!(reply.0, status, "body: {}", reply.1);
    assert_eq!(reply.1["error"]["code"], code, "body: {}", reply.1);
    reply.1["error"]["message"].as_str().unwrap().to_owned()
}

/// A 422 `validation_failed` whose message names `field`.
#[track_caller]
fn expect_invalid(reply: (StatusCode, Value), field: &str) {
    let message = expect_error(reply, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert!(
        message.contains(&format!("`{field}`")),
        "`{field}` not named in: {message}"
    );
}

fn tokens(body: &Value) -> Tokens {
    Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

fn id(body: &Value) -> Uuid {
    body["id"].as_str().expect("an `id`").parse().unwrap()
}

/// The ids of a page's items.
fn ids(page: &Value) -> BTreeSet<Uuid> {
    page["items"]
        .as_array()
        .expect("a page")
        .iter()
        .map(id)
        .collect()
}

fn set<const N: usize>(ids: [Uuid; N]) -> BTreeSet<Uuid> {
    ids.into_iter().collect()
}

/// `base` with the fields of `extra` added or replaced.
fn merge(mut base: Value, extra: Value) -> Value {
    if let Value::Object(extra) = extra {
        for (key, value) in extra {
            base[key] = value;
        }
    }
    base
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RFC 4648 base32 (A-Z, 2-7) without padding.
fn base32_decode(text: &str) -> Vec<u8> {
    let (mut out, mut buffer, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {text}"),
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// The TOTP code of time step `step`.
fn totp_code(secret: &[u8], step: u64) -> String {
    format!("{:06}", totp::code_at(secret, step * totp::STEP_SECS))
}

/// The current TOTP time step.
fn current_step() -> u64 {
    unix_now() / totp::STEP_SECS
}

/// Six digits that are not the code of any step the server could accept in this test.
fn wrong_code(secret: &[u8], step: u64) -> String {
    let valid: Vec<String> = (step - 1..=step + 3)
        .map(|s| totp_code(secret, s))
        .collect();
    (0..)
        .map(|n| format!("{n:06}"))
        .find(|code| !valid.contains(code))
        .unwrap()
}

/// A finished call record of tenant `tenant_id`, started `minutes_ago`; tests override fields.
fn call_record(tenant_id: Uuid, minutes_ago: i64) -> Call {
    let started = Timestamp(Timestamp::now().as_millis() - minutes_ago * 60_000);
    Call {
        id: Uuid::now_v7(),
        tenant_id,
        sip_call_id: Uuid::new_v4().to_string(),
        direction: Direction::Internal,
        from_uri: "sip:1001@localhost".into(),
        to_uri: "sip:1002@localhost".into(),
        from_number: "1001".into(),
        to_number: "1002".into(),
        did: None,
        from_extension_id: None,
        to_extension_id: None,
        trunk_id: None,
        legs: json!([]),
        started_at: started,
        answered_at: None,
        ended_at: Some(started.after(Duration::from_secs(30))),
        duration_ms: Some(30_000),
        billsec: Some(0),
        disposition: Disposition::Answered,
        hangup_cause: Some("normal_clearing".into()),
        hangup_side: Some(HangupSide::Caller),
        recording_id: None,
        media_stats: json!({}),
    }
}

/// A complete call recording of tenant `tenant_id` stored at `path` (relative to the
/// recordings directory).
fn recording_record(tenant_id: Uuid, call_id: Option<Uuid>, path: String, size: i64) -> Recording {
    let now = Timestamp::now();
    Recording {
        id: Uuid::now_v7(),
        tenant_id,
        call_id,
        extension_id: None,
        kind: RecordingKind::Call,
        status: RecordingStatus::Complete,
        path,
        duration_ms: 1_000,
        channels: 2,
        sample_rate: 8_000,
        size_bytes: size,
        created_at: now,
        completed_at: Some(now),
    }
}

/// A minimal valid IVR graph.
fn simple_graph() -> Value {
    json!({
        "entry": "welcome",
        "nodes": {
            "welcome": {"verb": "answer", "next": "bye"},
            "bye": {"verb": "hangup"}
        }
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Authentication
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn login_issues_tokens_and_refuses_bad_credentials() {
    let app = TestApp::new().await;

    let reply = app
        .try_login(json!({"email": " Admin@LOCALHOST ", "password": ADMIN_PASSWORD}))
        .await;
    let body = expect(reply.status_json(), StatusCode::OK);
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(access.split('.').count(), 3, "a JWT: {access}");
    assert!(!body["refresh_token"].as_str().unwrap().is_empty());
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 900);
    assert_eq!(body.as_object().unwrap().len(), 4, "{body}");

    let wrong = app
        .try_login(json!({"email": ADMIN_EMAIL, "password": "not the password"}))
        .await;
    assert_eq!(wrong.header(header::WWW_AUTHENTICATE), Some("Bearer"));
    let wrong_message = expect_error(
        wrong.status_json(),
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );

    // An unknown email is indistinguishable from a wrong password.
    let unknown = app
        .try_login(json!({"email": "nobody@localhost", "password": ADMIN_PASSWORD}))
        .await;
    let unknown_message = expect_error(
        unknown.status_json(),
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    assert_eq!(wrong_message, unknown_message);

    let missing_password = app.try_login(json!({"email": ADMIN_EMAIL})).await;
    expect_error(
        missing_password.status_json(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
}

#[tokio::test]
async fn protected_routes_need_a_valid_bearer_token() {
    let app = TestApp::new().await;
    let token = app.superadmin().await;
    let me = app.me(&token).await;
    assert_eq!(me["email"], ADMIN_EMAIL);
    assert_eq!(me["role"], "superadmin");
    assert_eq!(me["status"], "active");
    assert_eq!(me["totp_enabled"], false);
    assert!(me.get("password_hash").is_none() && me.get("password").is_none());

    let with_authorization = |value: Option<String>| {
        let mut builder = Request::builder().uri("/api/v1/auth/me");
        if let Some(value) = value {
            builder = builder.header(header::AUTHORIZATION, value);
        }
        builder.body(Body::empty()).unwrap()
    };
    let refused = |reply: Reply, code: &str| {
        assert_eq!(reply.header(header::WWW_AUTHENTICATE), Some("Bearer"));
        expect_error(reply.status_json(), StatusCode::UNAUTHORIZED, code);
    };

    refused(app.send(with_authorization(None)).await, "missing_token");
    refused(
        app.send(with_authorization(Some("Bearer garbage".into())))
            .await,
        "invalid_token",
    );
    refused(
        app.send(with_authorization(Some(format!("Basic {token}"))))
            .await,
        "invalid_token",
    );

    // Tokens for the same claims: signed now (valid), an hour ago (expired), with another key.
    let (user, tenant) = (id(&me), me["tenant_id"].as_str().unwrap().parse().unwrap());
    let version = users::get_auth(&app.db, user).await.unwrap().token_version;
    let keys = TokenKeys::new(JWT_SECRET, Duration::from_secs(900));
    let now = unix_now();
    let fresh = keys.issue(user, tenant, Role::Superadmin, version, now);
    let expired = keys.issue(user, tenant, Role::Superadmin, version, now - 3600);
    let foreign = TokenKeys::new(&[9; 32], Duration::from_secs(900)).issue(
        user,
        tenant,
        Role::Superadmin,
        version,
        now,
    );
    let reply = app
        .send(with_authorization(Some(format!("Bearer {fresh}"))))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    refused(
        app.send(with_authorization(Some(format!("Bearer {expired}"))))
            .await,
        "invalid_token",
    );
    refused(
        app.send(with_authorization(Some(format!("Bearer {foreign}"))))
            .await,
        "invalid_token",
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Refresh tokens and logout
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ice_servers_are_empty_without_a_turn_server() {
    let app = TestApp::new().await;
    let token = app.superadmin().await;
    let body = expect(app.get("/api/v1/ice-servers", &token).await, StatusCode::OK);
    assert_eq!(body["iceServers"], json!([]));
    assert_eq!(body["ttl"], 86_400);
    // The bootstrap superadmin's TURN key was derived from the password it was created with,
    // and the login refreshed it.
    let keys = switchboard_storage::users::turn_keys(&app.db)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].email, ADMIN_EMAIL);
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = TestApp::new().await;
    let first = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let refresh = |token: &str| {
        app.call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": token})),
        )
    };

    let second = tokens(&expect(refresh(&first.refresh).await, StatusCode::OK));
    assert_ne!(second.refresh, first.refresh);
    app.me(&second.access).await;

    expect_error(
        refresh(&first.refresh).await,
        StatusCode::UNAUTHORIZED,
        "refresh_token_reused",
    );
    // The reuse revoked the whole family, including the token issued by the rotation.
    expect_error(
        refresh(&second.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    );
    expect_error(
        refresh("not-a-token").await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    );
}

#[tokio::test]
async fn logout_and_logout_all_end_sessions() {
    let app = TestApp::new().await;
    let logout = |token: &str| {
        app.call(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({"refresh_token": token})),
        )
    };
    let refresh = |token: &str| {
        app.call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": token})),
        )
    };

    let session = app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(logout(&session.refresh).await.0, StatusCode::NO_CONTENT);
    expect_error(
        refresh(&session.refresh).await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    );
    // Logging out with an unknown token reveals nothing.
    assert_eq!(logout("unknown").await.0, StatusCode::NO_CONTENT);

    let (a, b) = (
        app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await,
        app.login(ADMIN_EMAIL, ADMIN_PASSWORD).await,
    );
    expect_error(
        app.call(Method::POST, "/api/v1/auth/logout-all", None, None)
            .await,
        StatusCode::UNAUTHORIZED,
        "missing_token",
    );
    let (status, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/logout-all",
            Some(&a.access),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for session in [&a, &b] {
        expect_error(
            app.get("/api/v1/auth/me", &session.access).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        );
        expect_error(
            refresh(&session.refresh).await,
            StatusCode::UNAUTHORIZED,
            "invalid_refresh_token",
        );
    }
    app.me(&app.superadmin().await).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Lockout and rate limits
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn repeated_failures_lock_the_account() {
    let app = TestApp::with_config(|c| c.auth.lockout_threshold = 3).await;
    let root = app.superadmin().await;
    app.create_user(&root, "other@localhost", "user", None)
        .await;
    let wrong = json!({"email": ADMIN_EMAIL, "password": "wrong password"});

    for _ in 0..2 {
        expect_error(
            app.try_login(wrong.clone()).await.status_json(),
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
        );
    }
    // The third failure locks the account and says so.
    expect_error(
        app.try_login(wrong).await.status_json(),
        StatusCode::LOCKED,
        "account_locked",
    );
    let locked = app
        .try_login(json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}))
        .await;
    let retry: u64 = locked
        .header(header::RETRY_AFTER)
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    expect_error(locked.status_json(), StatusCode::LOCKED, "account_locked");

    // Other accounts are not affected.
    app.login("other@localhost", PASSWORD).await;
}

#[tokio::test]
async fn logins_are_rate_limited_per_client_address() {
    let app = TestApp::with_config(|c| c.auth.login_attempts_per_ip_per_minute = 2).await;
    let good = json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD});
    let ip = [192, 0, 2, 1];

    assert_eq!(
        app.try_login_from(ip, good.clone()).await.status,
        StatusCode::OK
    );
    // Failed attempts and unknown accounts count too.
    let unknown = json!({"email": "nobody@localhost", "password": "whatever"});
    assert_eq!(
        app.try_login_from(ip, unknown).await.status,
        StatusCode::UNAUTHORIZED
    );
    let limited = app.try_login_from(ip, good.clone()).await;
    let retry: u64 = limited
        .header(header::RETRY_AFTER)
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=31).contains(&retry), "Retry-After {retry}");
    expect_error(
        limited.status_json(),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );

    assert_eq!(
        app.try_login_from([192, 0, 2, 2], good).await.status,
        StatusCode::OK,
        "another address has its own budget"
    );
}

#[tokio::test]
async fn logins_are_rate_limited_per_account() {
    let app = TestApp::with_config(|c| c.auth.login_attempts_per_account_per_minute = 2).await;
    let root = app.superadmin().await;
    app.create_user(&root, "other@localhost", "user", None)
        .await;

    let good = json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD});
    assert_eq!(
        app.try_login_from([192, 0, 2, 1], good.clone())
            .await
            .status,
        StatusCode::OK
    );
    // Changing address does not help, nor does changing the case of the email.
    let limited = app.try_login_from([192, 0, 2, 2], good).await;
    assert!(limited.header(header::RETRY_AFTER).is_some());
    expect_error(
        limited.status_json(),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );
    let shouted = json!({"email": "ADMIN@localhost", "password": ADMIN_PASSWORD});
    expect_error(
        app.try_login(shouted).await.status_json(),
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
    );

    app.login("other@localhost", PASSWORD).await;
}

// ---------------------------------------------------------------------------------------------
// 4. TOTP
// ---------------------------------------------------------------------------------------------

/// Enrols the caller and returns the decoded secret.
async fn enroll_totp(app: &TestApp, token: &str, email: &str) -> Vec<u8> {
    let enrolment = expect(
        app.post("/api/v1/auth/totp/enroll", token, json!({})).await,
        StatusCode::OK,
    );
    let secret = enrolment["secret"].as_str().unwrap();
    let uri = enrolment["otpauth_uri"].as_str().unwrap();
    assert!(
        uri.starts_with(&format!(
            "otpauth://totp/Switchboard:{email}?secret={secret}&"
        )),
        "{uri}"
    );
    let secret = base32_decode(secret);
    assert_eq!(secret.len(), 20);
    secret
}

#[tokio::test]
async fn totp_enrolment_login_and_replay_protection() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let email = "totp@localhost";
    let user = app.create_user(&root, email, "user", None).await;
    let token = app.login(email, PASSWORD).await.access;
    let login = |code: Option<String>| {
        let mut body = json!({"email": email, "password": PASSWORD});
        if let Some(code) = code {
            body["totp_code"] = json!(code);
        }
        app.try_login(body)
    };

    expect_error(
        app.post(
            "/api/v1/auth/totp/verify",
            &token,
            json!({"code": "123456"}),
        )
        .await,
        StatusCode::CONFLICT,
        "totp_not_enrolled",
    );
    let secret = enroll_totp(&app, &token, email).await;
    // Not enforced until verified.
    assert_eq!(app.me(&token).await["totp_enabled"], false);

    let step = current_step();
    expect_error(
        app.post(
            "/api/v1/auth/totp/verify",
            &token,
            json!({"code": wrong_code(&secret, step)}),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_totp",
    );
    let (status, _) = app
        .post(
            "/api/v1/auth/totp/verify",
            &token,
            json!({"code": totp_code(&secret, step)}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(app.me(&token).await["totp_enabled"], true);
    expect_error(
        app.post("/api/v1/auth/totp/enroll", &token, json!({}))
            .await,
        StatusCode::CONFLICT,
        "totp_already_enabled",
    );

    expect_error(
        login(None).await.status_json(),
        StatusCode::UNAUTHORIZED,
        "totp_required",
    );
    expect_error(
        login(Some(wrong_code(&secret, step))).await.status_json(),
        StatusCode::UNAUTHORIZED,
        "invalid_totp",
    );
    // The code of `step` was spent by the verification; the next step's is within the drift
    // the server accepts.
    let next = totp_code(&secret, step + 1);
    assert_eq!(login(Some(next.clone())).await.status, StatusCode::OK);
    expect_error(
        login(Some(next)).await.status_json(),
        StatusCode::UNAUTHORIZED,
        "invalid_totp",
    );

    // A user cannot reset their own factor; an admin can, for a user who lost the device.
    let reset = format!("/api/v1/users/{user}/totp");
    expect_error(
        app.delete(&reset, &token).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    assert_eq!(app.delete(&reset, &root).await.0, StatusCode::NO_CONTENT);
    assert_eq!(app.me(&token).await["totp_enabled"], false);
    assert_eq!(login(None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn totp_can_be_disabled_with_a_current_code() {
    let app = TestApp::new().await;
    let token = app.superadmin().await;
    let login = || app.try_login(json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}));
    expect_error(
        app.post(
            "/api/v1/auth/totp/disable",
            &token,
            json!({"code": "123456"}),
        )
        .await,
        StatusCode::CONFLICT,
        "totp_not_enabled",
    );

    let secret = enroll_totp(&app, &token, ADMIN_EMAIL).await;
    let step = current_step();
    let verify = json!({"code": totp_code(&secret, step)});
    assert_eq!(
        app.post("/api/v1/auth/totp/verify", &token, verify.clone())
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    expect_error(
        app.post("/api/v1/auth/totp/verify", &token, verify).await,
        StatusCode::CONFLICT,
        "totp_already_enabled",
    );
    expect_error(
        login().await.status_json(),
        StatusCode::UNAUTHORIZED,
        "totp_required",
    );

    let disable =
        |code: String| app.post("/api/v1/auth/totp/disable", &token, json!({"code": code}));
    expect_error(
        disable(wrong_code(&secret, step)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_totp",
    );
    // The verification spent `step`'s code.
    expect_error(
        disable(totp_code(&secret, step)).await,
        StatusCode::UNAUTHORIZED,
        "invalid_totp",
    );
    assert_eq!(
        disable(totp_code(&secret, step + 1)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.me(&token).await["totp_enabled"], false);
    assert_eq!(login().await.status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// 5. Password change
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn password_change_ends_other_sessions() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let email = "pat@localhost";
    app.create_user(&root, email, "user", None).await;
    let old = app.login(email, PASSWORD).await;
    let change = |current: &str, new: &str| {
        app.post(
            "/api/v1/auth/password",
            &old.access,
            json!({"current_password": current, "new_password": new}),
        )
    };

    expect_error(
        change("not my password", "a brand new password").await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    expect_invalid(change(PASSWORD, "short").await, "new_password");

    let new = tokens(&expect(
        change(PASSWORD, "a brand new password").await,
        StatusCode::OK,
    ));
    expect_error(
        app.get("/api/v1/auth/me", &old.access).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    expect_error(
        app.call(
            Method::POST,
            "/api/v1/auth/refresh",
            None,
            Some(json!({"refresh_token": old.refresh})),
        )
        .await,
        StatusCode::UNAUTHORIZED,
        "invalid_refresh_token",
    );
    assert_eq!(app.me(&new.access).await["email"], email);

    let old_password = app
        .try_login(json!({"email": email, "password": PASSWORD}))
        .await;
    expect_error(
        old_password.status_json(),
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    app.login(email, "a brand new password").await;
}

// ---------------------------------------------------------------------------------------------
// 6. CRUD and validation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tenants_are_managed_by_superadmins() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let home = app.tenant_of(&root).await;

    let list = expect(app.get("/api/v1/tenants", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([home]));
    assert_eq!(list["items"][0]["sip_domain"], "localhost");
    assert_eq!(list["next_cursor"], Value::Null);

    let created = expect(
        app.post(
            "/api/v1/tenants",
            &root,
            json!({"name": " Acme ", "sip_domain": "Acme.Example"}),
        )
        .await,
        StatusCode::CREATED,
    );
    let acme = id(&created);
    assert_eq!(created["name"], "Acme");
    assert_eq!(created["sip_domain"], "acme.example");
    expect_invalid(
        app.post(
            "/api/v1/tenants",
            &root,
            json!({"name": "  ", "sip_domain": "x.example"}),
        )
        .await,
        "name",
    );
    expect_invalid(
        app.post(
            "/api/v1/tenants",
            &root,
            json!({"name": "X", "sip_domain": "not a domain"}),
        )
        .await,
        "sip_domain",
    );
    expect_error(
        app.post(
            "/api/v1/tenants",
            &root,
            json!({"name": "Dup", "sip_domain": "acme.example"}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let path = format!("/api/v1/tenants/{acme}");
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    // The tenant's caller ID: normalised to E.164, refused with the key's name, removed by null.
    assert_eq!(created["caller_id_number"], Value::Null);
    let numbered = expect(
        app.patch(
            &path,
            &root,
            json!({"caller_id_number": "1 (555) 000-1000"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(numbered["caller_id_number"], "+15550001000");
    expect_invalid(
        app.patch(&path, &root, json!({"caller_id_number": "call me"}))
            .await,
        "caller_id_number",
    );
    let cleared = expect(
        app.patch(&path, &root, json!({"caller_id_number": null}))
            .await,
        StatusCode::OK,
    );
    assert_eq!(cleared["caller_id_number"], Value::Null);
    // Its own limits on calls out.
    let limited = expect(
        app.patch(
            &path,
            &root,
            json!({"max_outbound_calls": 5, "daily_outbound_minutes": 600}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(
        (
            &limited["max_outbound_calls"],
            &limited["daily_outbound_minutes"]
        ),
        (&json!(5), &json!(600))
    );
    expect_invalid(
        app.patch(&path, &root, json!({"max_outbound_calls": -1}))
            .await,
        "max_outbound_calls",
    );
    let created = expect(
        app.patch(
            &path,
            &root,
            json!({"max_outbound_calls": null, "daily_outbound_minutes": null}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(created["max_outbound_calls"], Value::Null);
    let renamed = expect(
        app.patch(&path, &root, json!({"name": "Acme Corp"})).await,
        StatusCode::OK,
    );
    assert_eq!(renamed["name"], "Acme Corp");
    assert_eq!(renamed["sip_domain"], "acme.example");
    expect_error(
        app.patch(&path, &root, json!({"sip_domain": "localhost"}))
            .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect_error(
        app.get(&format!("/api/v1/tenants/{}", Uuid::now_v7()), &root)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // A tenant admin reads only their own tenant and manages none.
    app.create_user(&root, "ops@localhost", "admin", None).await;
    let admin = app.login("ops@localhost", PASSWORD).await.access;
    for reply in [
        app.get("/api/v1/tenants", &admin).await,
        app.post(
            "/api/v1/tenants",
            &admin,
            json!({"name": "Mine", "sip_domain": "mine.example"}),
        )
        .await,
        app.patch(
            &format!("/api/v1/tenants/{home}"),
            &admin,
            json!({"name": "X"}),
        )
        .await,
        app.delete(&path, &admin).await,
    ] {
        expect_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(
        id(&expect(
            app.get(&format!("/api/v1/tenants/{home}"), &admin).await,
            StatusCode::OK
        )),
        home
    );
    expect_error(
        app.get(&path, &admin).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    // Only empty tenants other than one's own can be deleted.
    expect_error(
        app.delete(&format!("/api/v1/tenants/{home}"), &root).await,
        StatusCode::CONFLICT,
        "in_use",
    );
    let resident = app
        .create_user(&root, "resident@acme.example", "user", Some(acme))
        .await;
    expect_error(
        app.delete(&path, &root).await,
        StatusCode::CONFLICT,
        "in_use",
    );
    assert_eq!(
        app.delete(&format!("/api/v1/users/{resident}"), &root)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    expect_error(
        app.get(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let list = expect(app.get("/api/v1/tenants", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([home]));
}

#[tokio::test]
async fn users_crud_and_validation() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let me = app.me(&root).await;

    let created = expect(
        app.post(
            "/api/v1/users",
            &root,
            json!({"email": " Alice@Example.COM ", "password": PASSWORD, "display_name": "Alice"}),
        )
        .await,
        StatusCode::CREATED,
    );
    let alice = id(&created);
    assert_eq!(created["email"], "alice@example.com");
    assert_eq!(created["role"], "user", "the default role");
    assert_eq!(created["status"], "active");
    assert_eq!(created["tenant_id"], me["tenant_id"]);
    assert!(created.get("password").is_none() && created.get("password_hash").is_none());

    let new_user = |extra: Value| {
        app.post(
            "/api/v1/users",
            &root,
            merge(
                json!({"email": "bob@example.com", "password": PASSWORD}),
                extra,
            ),
        )
    };
    expect_error(
        new_user(json!({"email": "ALICE@example.com"})).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect_invalid(new_user(json!({"email": "bob"})).await, "email");
    expect_invalid(new_user(json!({"password": "short"})).await, "password");
    expect_invalid(
        new_user(json!({"tenant_id": Uuid::now_v7()})).await,
        "tenant_id",
    );
    expect_error(
        new_user(json!({"role": "owner"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );

    let path = format!("/api/v1/users/{alice}");
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    let list = expect(app.get("/api/v1/users", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([id(&me), alice]));
    let renamed = expect(
        app.patch(&path, &root, json!({"display_name": "Alice A."}))
            .await,
        StatusCode::OK,
    );
    assert_eq!(renamed["display_name"], "Alice A.");
    expect_invalid(
        app.patch(&path, &root, json!({"email": "no at sign"}))
            .await,
        "email",
    );

    // A user reads only themselves and changes nothing.
    let session = app.login("alice@example.com", PASSWORD).await.access;
    assert_eq!(
        id(&expect(app.get(&path, &session).await, StatusCode::OK)),
        alice
    );
    expect_error(
        app.get(&format!("/api/v1/users/{}", id(&me)), &session)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        app.get("/api/v1/users", &session).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect_error(
        app.patch(&path, &session, json!({"display_name": "Me"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    // An admin-set password ends the user's sessions.
    expect_invalid(
        app.patch(&path, &root, json!({"password": "short"})).await,
        "password",
    );
    let reset = expect(
        app.patch(&path, &root, json!({"password": "a reset password"}))
            .await,
        StatusCode::OK,
    );
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), reset);
    expect_error(
        app.get("/api/v1/auth/me", &session).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    let session = app
        .login("alice@example.com", "a reset password")
        .await
        .access;

    // Disabling ends sessions and refuses logins.
    let disabled = expect(
        app.patch(&path, &root, json!({"status": "disabled"})).await,
        StatusCode::OK,
    );
    assert_eq!(disabled["status"], "disabled");
    assert_eq!(
        expect(app.get(&path, &root).await, StatusCode::OK),
        disabled
    );
    expect_error(
        app.get("/api/v1/auth/me", &session).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    let refused = app
        .try_login(json!({"email": "alice@example.com", "password": "a reset password"}))
        .await;
    expect_error(refused.status_json(), StatusCode::FORBIDDEN, "forbidden");

    // Deleting frees the email.
    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    expect_error(
        app.get(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        app.delete(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let list = expect(app.get("/api/v1/users", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([id(&me)]));
    app.create_user(&root, "alice@example.com", "user", None)
        .await;
}

#[tokio::test]
async fn extensions_crud_and_validation() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let home = app.me(&root).await["tenant_id"].clone();
    let bob = app.create_user(&root, "bob@localhost", "user", None).await;

    let body = json!({
        "number": "1001",
        "display_name": "Reception",
        "password": "sip-secret-1",
        "user_id": bob,
        "caller_id_name": "Front desk",
        "caller_id_number": "(555) 123-4567",
        "outbound_allowed": true
    });
    let created = expect(
        app.post("/api/v1/extensions", &root, body.clone()).await,
        StatusCode::CREATED,
    );
    let ext = id(&created);
    assert_eq!(created["number"], "1001");
    assert_eq!(created["tenant_id"], home);
    assert_eq!(created["user_id"], json!(bob));
    assert_eq!(created["caller_id_number"], "+15551234567");
    assert_eq!(created["outbound_allowed"], true);
    assert_eq!(created["voicemail_enabled"], false);
    assert!(created.get("password").is_none(), "{created}");

    let create_with =
        |extra: Value| app.post("/api/v1/extensions", &root, merge(body.clone(), extra));
    expect_invalid(create_with(json!({"number": "1"})).await, "number");
    expect_invalid(create_with(json!({"number": "10a1"})).await, "number");
    expect_invalid(
        create_with(json!({"display_name": " "})).await,
        "display_name",
    );
    expect_invalid(create_with(json!({"password": "short"})).await, "password");
    expect_invalid(
        create_with(json!({"caller_id_number": "call me"})).await,
        "caller_id_number",
    );
    expect_invalid(
        create_with(json!({"user_id": Uuid::now_v7()})).await,
        "user_id",
    );
    expect_error(
        create_with(json!({})).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let path = format!("/api/v1/extensions/{ext}");
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    let changed = expect(
        app.patch(
            &path,
            &root,
            json!({
                "display_name": "Front",
                "caller_id_number": null,
                "user_id": null,
                "password": "new-sip-secret"
            }),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(changed["display_name"], "Front");
    assert_eq!(changed["caller_id_number"], Value::Null);
    assert_eq!(changed["user_id"], Value::Null);
    assert_eq!(
        changed["caller_id_name"], "Front desk",
        "absent fields stay"
    );
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), changed);
    expect_invalid(
        app.patch(&path, &root, json!({"number": "1"})).await,
        "number",
    );
    expect_invalid(
        app.patch(&path, &root, json!({"password": "short"})).await,
        "password",
    );
    // Call forwarding: to an extension or a number outside; never to itself; null removes it.
    let forwarded = expect(
        app.patch(
            &path,
            &root,
            json!({"forward_busy": " 1002 ", "forward_no_answer": "+15557654321"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(forwarded["forward_busy"], "1002");
    assert_eq!(forwarded["forward_no_answer"], "+15557654321");
    assert_eq!(forwarded["forward_always"], Value::Null);
    expect_invalid(
        app.patch(&path, &root, json!({"forward_always": "1001"}))
            .await,
        "forward_always",
    );
    expect_invalid(
        app.patch(&path, &root, json!({"forward_busy": "my mobile"}))
            .await,
        "forward_busy",
    );
    let cleared = expect(
        app.patch(&path, &root, json!({"forward_busy": null})).await,
        StatusCode::OK,
    );
    assert_eq!(cleared["forward_busy"], Value::Null);
    assert_eq!(cleared["forward_no_answer"], "+15557654321");

    let other = app.create_extension(&root, "1002", json!({})).await;
    expect_error(
        app.patch(&path, &root, json!({"number": "1002"})).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let other_path = format!("/api/v1/extensions/{other}");
    assert_eq!(
        app.delete(&other_path, &root).await.0,
        StatusCode::NO_CONTENT
    );
    expect_error(
        app.get(&other_path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        app.delete(&other_path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let list = expect(app.get("/api/v1/extensions", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([ext]));
}

#[tokio::test]
async fn lists_paginate_with_cursors() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let mut all = BTreeSet::new();
    for number in ["2001", "2002", "2003"] {
        all.insert(app.create_extension(&root, number, json!({})).await);
    }

    let first = expect(
        app.get("/api/v1/extensions?limit=2", &root).await,
        StatusCode::OK,
    );
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a next_cursor");
    let second = expect(
        app.get(
            &format!("/api/v1/extensions?limit=2&cursor={cursor}"),
            &root,
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_cursor"], Value::Null);
    let (first, second) = (ids(&first), ids(&second));
    assert!(first.is_disjoint(&second));
    assert_eq!(&first | &second, all);

    let whole = expect(
        app.get("/api/v1/extensions?limit=500", &root).await,
        StatusCode::OK,
    );
    assert_eq!(ids(&whole), all);
    assert_eq!(whole["next_cursor"], Value::Null);

    for query in [
        "limit=0",
        "limit=501",
        "limit=-1",
        "cursor=not-a-uuid",
        "colour=red",
    ] {
        expect_error(
            app.get(&format!("/api/v1/extensions?{query}"), &root).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        );
    }
}

#[tokio::test]
async fn trunks_crud_and_validation() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let credential = json!({
        "name": "Telnyx",
        "kind": "credential",
        "host": "SIP.Telnyx.com",
        "username": "acme",
        "password": "trunk-secret",
        "register": true,
        "custom_headers": {"X-Telnyx-Username": "acme"}
    });
    let ip = json!({
        "name": "Carrier",
        "kind": "ip",
        "host": "192.0.2.10",
        "allowed_sources": ["192.0.2.0/24", "sip.carrier.example"]
    });

    let created = expect(
        app.post("/api/v1/trunks", &root, credential.clone()).await,
        StatusCode::CREATED,
    );
    let trunk = id(&created);
    assert_eq!(created["host"], "sip.telnyx.com");
    assert_eq!(created["password_set"], true);
    assert_eq!(created["transport"], "udp");
    assert_eq!(created["enabled"], true);
    assert_eq!(
        created["custom_headers"],
        json!({"X-Telnyx-Username": "acme"})
    );
    assert!(created.get("password").is_none(), "{created}");

    let with = |base: &Value, extra: Value| {
        let mut body = merge(base.clone(), extra);
        body["name"] = json!("Other");
        app.post("/api/v1/trunks", &root, body)
    };
    let without = |base: &Value, field: &str| {
        let mut body = base.clone();
        body.as_object_mut().unwrap().remove(field);
        body["name"] = json!("Other");
        app.post("/api/v1/trunks", &root, body)
    };
    expect_invalid(without(&credential, "password").await, "password");
    expect_invalid(without(&credential, "username").await, "username");
    expect_invalid(without(&ip, "allowed_sources").await, "allowed_sources");
    expect_invalid(
        with(&ip, json!({"allowed_sources": ["192.0.2.0/33"]})).await,
        "allowed_sources",
    );
    expect_invalid(with(&ip, json!({"register": true})).await, "register");
    expect_invalid(
        with(
            &credential,
            json!({"custom_headers": {"Via": "SIP/2.0/UDP evil"}}),
        )
        .await,
        "custom_headers",
    );
    expect_invalid(
        with(
            &credential,
            json!({"custom_headers": {"X-Ok": "a\r\nVia: evil"}}),
        )
        .await,
        "custom_headers",
    );
    expect_invalid(with(&credential, json!({"port": 0})).await, "port");
    expect_invalid(with(&credential, json!({"host": "bad host"})).await, "host");
    expect_invalid(
        with(&credential, json!({"tech_prefix": "12a"})).await,
        "tech_prefix",
    );
    expect_error(
        with(&credential, json!({"kind": "pigeon"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    expect_error(
        app.post("/api/v1/trunks", &root, credential.clone()).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let ip_trunk = expect(
        app.post("/api/v1/trunks", &root, ip).await,
        StatusCode::CREATED,
    );
    assert_eq!(ip_trunk["password_set"], false);
    let list = expect(app.get("/api/v1/trunks", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([trunk, id(&ip_trunk)]));

    let path = format!("/api/v1/trunks/{trunk}");
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    let changed = expect(
        app.patch(
            &path,
            &root,
            json!({"port": 5061, "transport": "tls", "password": "new-trunk-secret"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(changed["port"], 5061);
    assert_eq!(changed["transport"], "tls");
    assert_eq!(changed["password_set"], true);
    assert!(changed.get("password").is_none(), "{changed}");
    // A credential trunk cannot lose its password.
    expect_invalid(
        app.patch(&path, &root, json!({"password": null})).await,
        "password",
    );
    expect_invalid(
        app.patch(&path, &root, json!({"custom_headers": {"Call-ID": "x"}}))
            .await,
        "custom_headers",
    );
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), changed);

    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    expect_error(
        app.get(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn numbers_crud_validation_and_references() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let ext = app.create_extension(&root, "1001", json!({})).await;
    let elsewhere = app
        .create_tenant(&root, "Elsewhere", "elsewhere.example")
        .await;
    let foreign_ext = app
        .create_extension(&root, "1001", json!({"tenant_id": elsewhere}))
        .await;

    let created = expect(
        app.post(
            "/api/v1/numbers",
            &root,
            json!({
                "number": "+1 (555) 123-4567",
                "target": {"type": "extension", "id": ext},
                "description": "Main line"
            }),
        )
        .await,
        StatusCode::CREATED,
    );
    let number = id(&created);
    assert_eq!(created["e164"], "+15551234567");
    assert_eq!(created["target_type"], "extension");
    assert_eq!(created["target_id"], json!(ext));
    assert_eq!(created["description"], "Main line");

    let add = |number: &str, kind: &str, target: Uuid| {
        app.post(
            "/api/v1/numbers",
            &root,
            json!({"number": number, "target": {"type": kind, "id": target}}),
        )
    };
    expect_invalid(add("12", "extension", ext).await, "number");
    expect_invalid(add("+0123456789", "extension", ext).await, "number");
    expect_error(
        add("5551234567", "extension", ext).await,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect_error(
        add("+15550000001", "extension", foreign_ext).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reference",
    );
    expect_error(
        add("+15550000001", "extension", Uuid::now_v7()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reference",
    );
    expect_error(
        add("+15550000001", "ring_group", ext).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reference",
    );
    expect_error(
        add("+15550000001", "fax", ext).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );

    let ext_path = format!("/api/v1/extensions/{ext}");
    expect_error(
        app.delete(&ext_path, &root).await,
        StatusCode::CONFLICT,
        "in_use",
    );

    let path = format!("/api/v1/numbers/{number}");
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    let group = id(&expect(
        app.post(
            "/api/v1/ring-groups",
            &root,
            json!({"name": "All", "members": [ext]}),
        )
        .await,
        StatusCode::CREATED,
    ));
    let changed = expect(
        app.patch(
            &path,
            &root,
            json!({"number": "+44 20 7946 0000", "target": {"type": "ring_group", "id": group}}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(changed["e164"], "+442079460000");
    assert_eq!(changed["target_type"], "ring_group");
    assert_eq!(changed["description"], "Main line");
    expect_error(
        app.patch(
            &path,
            &root,
            json!({"target": {"type": "extension", "id": foreign_ext}}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reference",
    );
    expect_invalid(
        app.patch(&path, &root, json!({"number": "12"})).await,
        "number",
    );
    expect_error(
        app.delete(&format!("/api/v1/ring-groups/{group}"), &root)
            .await,
        StatusCode::CONFLICT,
        "in_use",
    );
    let list = expect(app.get("/api/v1/numbers", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([number]));

    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    expect_error(
        app.get(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_eq!(app.delete(&ext_path, &root).await.0, StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn ring_groups_crud_and_validation() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let e1 = app.create_extension(&root, "1001", json!({})).await;
    let e2 = app.create_extension(&root, "1002", json!({})).await;
    let elsewhere = app
        .create_tenant(&root, "Elsewhere", "elsewhere.example")
        .await;
    let foreign = app
        .create_extension(&root, "1001", json!({"tenant_id": elsewhere}))
        .await;

    let created = expect(
        app.post(
            "/api/v1/ring-groups",
            &root,
            json!({
                "name": "Sales",
                "strategy": "sequential",
                "ring_timeout_secs": 20,
                "members": [e2, e1]
            }),
        )
        .await,
        StatusCode::CREATED,
    );
    let group = id(&created);
    assert_eq!(created["strategy"], "sequential");
    assert_eq!(created["ring_timeout_secs"], 20);
    assert_eq!(created["members"], json!([e2, e1]), "ringing order is kept");

    let defaults = expect(
        app.post(
            "/api/v1/ring-groups",
            &root,
            json!({"name": "Support", "members": []}),
        )
        .await,
        StatusCode::CREATED,
    );
    assert_eq!(defaults["strategy"], "simultaneous");
    assert_eq!(defaults["ring_timeout_secs"], 30);

    let add = |extra: Value| {
        app.post(
            "/api/v1/ring-groups",
            &root,
            merge(json!({"name": "Other", "members": [e1]}), extra),
        )
    };
    expect_invalid(
        add(json!({"ring_timeout_secs": 4})).await,
        "ring_timeout_secs",
    );
    expect_invalid(
        add(json!({"ring_timeout_secs": 301})).await,
        "ring_timeout_secs",
    );
    expect_invalid(add(json!({"name": ""})).await, "name");
    for members in [json!([Uuid::now_v7()]), json!([e1, e1]), json!([foreign])] {
        expect_error(
            add(json!({"members": members})).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_reference",
        );
    }
    expect_error(
        add(json!({"strategy": "random"})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    expect_error(
        add(json!({"name": "Sales"})).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let path = format!("/api/v1/ring-groups/{group}");
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    let changed = expect(
        app.patch(
            &path,
            &root,
            json!({"members": [e1], "strategy": "simultaneous"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(changed["members"], json!([e1]));
    assert_eq!(changed["name"], "Sales");
    expect_invalid(
        app.patch(&path, &root, json!({"ring_timeout_secs": 0}))
            .await,
        "ring_timeout_secs",
    );
    expect_error(
        app.patch(&path, &root, json!({"members": [foreign]})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reference",
    );
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), changed);
    let list = expect(app.get("/api/v1/ring-groups", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([group, id(&defaults)]));

    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    expect_error(
        app.get(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn ivr_flows_drafts_publish_and_versions() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let v1 = simple_graph();
    let v2 = json!({"entry": "start", "nodes": {"start": {"verb": "hangup"}}});

    let created = expect(
        app.post(
            "/api/v1/ivr-flows",
            &root,
            json!({"name": "Main menu", "graph": v1}),
        )
        .await,
        StatusCode::CREATED,
    );
    let flow = id(&created);
    assert_eq!(created["draft"], v1);
    assert_eq!(created["published_version"], Value::Null);

    let add = |graph: Value| {
        app.post(
            "/api/v1/ivr-flows",
            &root,
            json!({"name": "Other", "graph": graph}),
        )
    };
    let missing_target =
        json!({"entry": "welcome", "nodes": {"welcome": {"verb": "answer", "next": "nowhere"}}});
    let missing_entry = json!({"entry": "start", "nodes": {"bye": {"verb": "hangup"}}});
    let unknown_verb = json!({"entry": "a", "nodes": {"a": {"verb": "explode"}}});
    let bad_timezone =
        json!({"entry": "a", "nodes": {"a": {"verb": "schedule", "timezone": "Mars/Olympus"}}});
    let misspelt = json!({"entry": "a", "nodes": {"a": {"verb": "gather", "max_digit": 2}}});
    for graph in [
        missing_target,
        missing_entry,
        unknown_verb,
        bad_timezone,
        misspelt,
        json!("not a graph"),
    ] {
        expect_invalid(add(graph).await, "graph");
    }
    expect_error(
        app.post(
            "/api/v1/ivr-flows",
            &root,
            json!({"name": "Main menu", "graph": v1}),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let path = format!("/api/v1/ivr-flows/{flow}");
    let versions = format!("{path}/versions");
    assert_eq!(
        expect(app.get(&versions, &root).await, StatusCode::OK),
        json!([])
    );

    let published = expect(
        app.post(&format!("{path}/publish"), &root, json!({})).await,
        StatusCode::CREATED,
    );
    assert_eq!(published["version"], 1);
    assert_eq!(published["graph"], v1);
    assert_eq!(published["flow_id"], json!(flow));
    assert_eq!(published["published_by"], app.me(&root).await["id"]);
    assert_eq!(
        expect(app.get(&path, &root).await, StatusCode::OK)["published_version"],
        1
    );

    // Editing the draft leaves the published version alone.
    let edited = expect(
        app.patch(&path, &root, json!({"graph": v2, "name": "Night menu"}))
            .await,
        StatusCode::OK,
    );
    assert_eq!(edited["draft"], v2);
    assert_eq!(edited["name"], "Night menu");
    expect_invalid(
        app.patch(
            &path,
            &root,
            json!({"graph": {"entry": "x", "nodes": {"x": {"verb": "goto"}}}}),
        )
        .await,
        "graph",
    );
    assert_eq!(
        expect(app.get(&path, &root).await, StatusCode::OK)["draft"],
        v2
    );
    let version_1 = expect(
        app.get(&format!("{versions}/1"), &root).await,
        StatusCode::OK,
    );
    assert_eq!(version_1, published);

    let second = expect(
        app.post(&format!("{path}/publish"), &root, json!({})).await,
        StatusCode::CREATED,
    );
    assert_eq!(second["version"], 2);
    assert_eq!(second["graph"], v2);
    let listed = expect(app.get(&versions, &root).await, StatusCode::OK);
    let numbers: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [2, 1], "newest first");
    assert_eq!(listed[1], version_1);
    expect_error(
        app.get(&format!("{versions}/3"), &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        app.get(&format!("{versions}/latest"), &root).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    let list = expect(app.get("/api/v1/ivr-flows", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([flow]));

    let number = app
        .create_number(&root, "+15557654321", ("ivr_flow", flow))
        .await;
    expect_error(
        app.delete(&path, &root).await,
        StatusCode::CONFLICT,
        "in_use",
    );
    let number_path = format!("/api/v1/numbers/{number}");
    assert_eq!(
        app.delete(&number_path, &root).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    for gone in [&path, &versions] {
        expect_error(
            app.get(gone, &root).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Malformed requests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_requests_get_json_errors() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let raw = |content_type: Option<&str>, body: &str| {
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/extensions")
            .header(header::AUTHORIZATION, format!("Bearer {root}"));
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder.body(Body::from(body.to_owned())).unwrap()
    };
    let json_type = Some("application/json");
    let valid = r#"{"number": "1001", "display_name": "Desk", "password": "sip-secret-1"}"#;

    expect_error(
        app.send(raw(json_type, r#"{"number": "#))
            .await
            .status_json(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    expect_error(
        app.send(raw(json_type, "")).await.status_json(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );
    expect_error(
        app.send(raw(
            json_type,
            r#"{"number": 1001, "display_name": "Desk", "password": "sip-secret-1"}"#,
        ))
        .await
        .status_json(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    let message = expect_error(
        app.send(raw(
            json_type,
            r#"{"number": "1001", "display_name": "Desk", "password": "sip-secret-1", "colour": "red"}"#,
        ))
        .await.status_json(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    assert!(message.contains("colour"), "{message}");
    expect_error(
        app.send(raw(json_type, r#"{"number": "1001"}"#))
            .await
            .status_json(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    expect_error(
        app.send(raw(json_type, "[1, 2]")).await.status_json(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    expect_error(
        app.send(raw(None, valid)).await.status_json(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    expect_error(
        app.send(raw(Some("text/plain"), valid)).await.status_json(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Nothing above was created.
    let list = expect(app.get("/api/v1/extensions", &root).await, StatusCode::OK);
    assert_eq!(list["items"], json!([]));

    let login = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/auth/login")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{email"))
        .unwrap();
    expect_error(
        app.send(login).await.status_json(),
        StatusCode::BAD_REQUEST,
        "invalid_json",
    );

    expect_error(
        app.get("/api/v1/extensions/not-a-uuid", &root).await,
        StatusCode::BAD_REQUEST,
        "invalid_path",
    );
    for query in ["direction=sideways", "since=yesterday", "disposition=1"] {
        expect_error(
            app.get(&format!("/api/v1/calls?{query}"), &root).await,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        );
    }

    for token in [Some(root.as_str()), None] {
        let message = expect_error(
            app.call(Method::GET, "/api/v1/nothing-here", token, None)
                .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_eq!(message, "no route for /api/v1/nothing-here");
    }
    expect_error(
        app.call(
            Method::PUT,
            "/api/v1/extensions",
            Some(&root),
            Some(json!({})),
        )
        .await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    expect_error(
        app.delete("/api/v1/auth/me", &root).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

#[tokio::test]
async fn oversized_bodies_are_refused() {
    let app = TestApp::with_config(|c| c.http.max_body_bytes = 2048).await;
    let root = app.superadmin().await;
    let body = |name_length: usize| {
        json!({
            "number": "1001",
            "display_name": "x".repeat(name_length),
            "password": "sip-secret-1"
        })
    };
    // Under the limit the body is read (and refused for its content) ...
    expect_invalid(
        app.post("/api/v1/extensions", &root, body(1500)).await,
        "display_name",
    );
    // ... over it, it is not.
    expect_error(
        app.post("/api/v1/extensions", &root, body(3000)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
    let login = json!({"email": ADMIN_EMAIL, "password": "p".repeat(3000)});
    expect_error(
        app.try_login(login).await.status_json(),
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    );
}

// ---------------------------------------------------------------------------------------------
// 8. Roles and tenant isolation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn tenant_admins_see_nothing_of_other_tenants() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let tenant_b = app.create_tenant(&root, "B", "b.example").await;
    app.create_user(&root, "admin-a@localhost", "admin", None)
        .await;
    app.create_user(&root, "admin-b@b.example", "admin", Some(tenant_b))
        .await;
    let admin_a = app.login("admin-a@localhost", PASSWORD).await.access;
    let admin_b = app.login("admin-b@b.example", PASSWORD).await.access;

    // Tenant B's objects, made by B's admin.
    let ext_b = app.create_extension(&admin_b, "1001", json!({})).await;
    let user_b = app
        .create_user(&admin_b, "user-b@b.example", "user", None)
        .await;
    let trunk_b = id(&expect(
        app.post(
            "/api/v1/trunks",
            &admin_b,
            json!({
                "name": "T",
                "kind": "ip",
                "host": "192.0.2.1",
                "allowed_sources": ["192.0.2.1"]
            }),
        )
        .await,
        StatusCode::CREATED,
    ));
    let group_b = id(&expect(
        app.post(
            "/api/v1/ring-groups",
            &admin_b,
            json!({"name": "G", "members": [ext_b]}),
        )
        .await,
        StatusCode::CREATED,
    ));
    let flow_b = id(&expect(
        app.post(
            "/api/v1/ivr-flows",
            &admin_b,
            json!({"name": "F", "graph": simple_graph()}),
        )
        .await,
        StatusCode::CREATED,
    ));
    let number_b = app
        .create_number(&admin_b, "+15550000002", ("extension", ext_b))
        .await;
    let call_b = Call {
        from_extension_id: Some(ext_b),
        ..call_record(tenant_b, 5)
    };
    calls::insert(&app.db, &call_b).await.unwrap();
    let recording_b = recording_record(tenant_b, Some(call_b.id), "b.wav".into(), 4);
    recordings::insert(&app.db, &recording_b).await.unwrap();

    // Tenant A's own objects, including the same extension number.
    let ext_a = app.create_extension(&admin_a, "1001", json!({})).await;
    let call_a = Call {
        from_extension_id: Some(ext_a),
        ..call_record(app.tenant_of(&root).await, 5)
    };
    calls::insert(&app.db, &call_a).await.unwrap();

    for path in [
        format!("/api/v1/tenants/{tenant_b}"),
        format!("/api/v1/extensions/{ext_b}"),
        format!("/api/v1/users/{user_b}"),
        format!("/api/v1/trunks/{trunk_b}"),
        format!("/api/v1/numbers/{number_b}"),
        format!("/api/v1/ring-groups/{group_b}"),
        format!("/api/v1/ivr-flows/{flow_b}"),
        format!("/api/v1/ivr-flows/{flow_b}/versions"),
        format!("/api/v1/calls/{}", call_b.id),
        format!("/api/v1/recordings/{}", recording_b.id),
        format!("/api/v1/recordings/{}/download", recording_b.id),
    ] {
        let reply = app.get(&path, &admin_a).await;
        assert_eq!(reply.0, StatusCode::NOT_FOUND, "GET {path}: {}", reply.1);
        assert_eq!(reply.1["error"]["code"], "not_found", "GET {path}");
    }
    // Writes are refused the same way and change nothing.
    let ext_b_path = format!("/api/v1/extensions/{ext_b}");
    for reply in [
        app.patch(&ext_b_path, &admin_a, json!({"display_name": "Mine"}))
            .await,
        app.delete(&ext_b_path, &admin_a).await,
        app.delete(&format!("/api/v1/users/{user_b}"), &admin_a)
            .await,
        app.delete(&format!("/api/v1/recordings/{}", recording_b.id), &admin_a)
            .await,
        app.post(
            &format!("/api/v1/ivr-flows/{flow_b}/publish"),
            &admin_a,
            json!({}),
        )
        .await,
        app.post(
            &format!("/api/v1/calls/{}/recording", call_b.id),
            &admin_a,
            json!({"action": "start"}),
        )
        .await,
    ] {
        expect_error(reply, StatusCode::NOT_FOUND, "not_found");
    }
    // B's own call: without call control running (this router has no SIP), 503; a bad action
    // is a 4xx naming the field.
    let recording_path = format!("/api/v1/calls/{}/recording", call_b.id);
    expect_error(
        app.post(&recording_path, &admin_b, json!({"action": "start"}))
            .await,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
    );
    let bad = app
        .post(&recording_path, &admin_b, json!({"action": "rewind"}))
        .await;
    assert!(bad.0.is_client_error(), "{bad:?}");
    assert!(bad.1.to_string().contains("action"), "{bad:?}");
    assert_eq!(
        expect(app.get(&ext_b_path, &admin_b).await, StatusCode::OK)["display_name"],
        "Ext 1001"
    );

    // Lists show A's objects and none of B's.
    let b_objects = set([
        ext_b,
        user_b,
        trunk_b,
        number_b,
        group_b,
        flow_b,
        call_b.id,
        recording_b.id,
    ]);
    for list in [
        "/api/v1/extensions",
        "/api/v1/users",
        "/api/v1/trunks",
        "/api/v1/numbers",
        "/api/v1/ring-groups",
        "/api/v1/ivr-flows",
        "/api/v1/calls",
        "/api/v1/recordings",
    ] {
        let page = expect(app.get(list, &admin_a).await, StatusCode::OK);
        assert!(ids(&page).is_disjoint(&b_objects), "{list}: {page}");
    }
    let extensions = expect(
        app.get("/api/v1/extensions", &admin_a).await,
        StatusCode::OK,
    );
    assert_eq!(ids(&extensions), set([ext_a]));
    let calls = expect(app.get("/api/v1/calls", &admin_a).await, StatusCode::OK);
    assert_eq!(ids(&calls), set([call_a.id]));
    let by_number = expect(
        app.get("/api/v1/calls?extension=1001", &admin_a).await,
        StatusCode::OK,
    );
    assert_eq!(ids(&by_number), set([call_a.id]));

    // A's admin can neither create in B nor point at B's objects.
    expect_error(
        app.post(
            "/api/v1/extensions",
            &admin_a,
            json!({
                "number": "1002",
                "display_name": "X",
                "password": "sip-secret-1",
                "tenant_id": tenant_b
            }),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect_error(
        app.post(
            "/api/v1/ring-groups",
            &admin_a,
            json!({"name": "G", "members": [ext_b]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_reference",
    );
    expect_invalid(
        app.post(
            "/api/v1/extensions",
            &admin_a,
            json!({
                "number": "1002",
                "display_name": "X",
                "password": "sip-secret-1",
                "user_id": user_b
            }),
        )
        .await,
        "user_id",
    );

    // The superadmin sees both tenants.
    let everything = expect(app.get("/api/v1/extensions", &root).await, StatusCode::OK);
    assert_eq!(ids(&everything), set([ext_a, ext_b]));
}

#[tokio::test]
async fn users_see_only_their_own_extensions_and_calls() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let tenant = app.tenant_of(&root).await;
    let carol = app
        .create_user(&root, "carol@localhost", "user", None)
        .await;
    let session = app.login("carol@localhost", PASSWORD).await.access;
    let own = app
        .create_extension(&root, "1001", json!({"user_id": carol}))
        .await;
    let other = app.create_extension(&root, "1002", json!({})).await;

    let list = expect(
        app.get("/api/v1/extensions", &session).await,
        StatusCode::OK,
    );
    assert_eq!(ids(&list), set([own]));
    expect(
        app.get(&format!("/api/v1/extensions/{own}"), &session)
            .await,
        StatusCode::OK,
    );
    expect_error(
        app.get(&format!("/api/v1/extensions/{other}"), &session)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    for path in [
        "/api/v1/trunks",
        "/api/v1/numbers",
        "/api/v1/ring-groups",
        "/api/v1/ivr-flows",
        "/api/v1/users",
        "/api/v1/tenants",
        "/api/v1/audit-log",
    ] {
        expect_error(
            app.get(path, &session).await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
    }
    for reply in [
        app.post(
            "/api/v1/extensions",
            &session,
            json!({"number": "1003", "display_name": "Mine", "password": "sip-secret-1"}),
        )
        .await,
        app.patch(
            &format!("/api/v1/extensions/{own}"),
            &session,
            json!({"display_name": "Mine"}),
        )
        .await,
        app.delete(&format!("/api/v1/extensions/{own}"), &session)
            .await,
        app.post(
            "/api/v1/ring-groups",
            &session,
            json!({"name": "G", "members": [own]}),
        )
        .await,
    ] {
        expect_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }

    let internal = Call {
        from_extension_id: Some(own),
        to_extension_id: Some(other),
        ..call_record(tenant, 30)
    };
    let outbound = Call {
        direction: Direction::Outbound,
        from_extension_id: Some(own),
        to_number: "+15559998888".into(),
        ..call_record(tenant, 20)
    };
    let not_mine = Call {
        direction: Direction::Inbound,
        from_number: "+15550001111".into(),
        to_extension_id: Some(other),
        ..call_record(tenant, 10)
    };
    for call in [&internal, &outbound, &not_mine] {
        calls::insert(&app.db, call).await.unwrap();
    }
    let mine = expect(app.get("/api/v1/calls", &session).await, StatusCode::OK);
    assert_eq!(ids(&mine), set([internal.id, outbound.id]));
    let filtered = expect(
        app.get("/api/v1/calls?direction=outbound", &session).await,
        StatusCode::OK,
    );
    assert_eq!(ids(&filtered), set([outbound.id]));
    expect(
        app.get(&format!("/api/v1/calls/{}", internal.id), &session)
            .await,
        StatusCode::OK,
    );
    expect_error(
        app.get(&format!("/api/v1/calls/{}", not_mine.id), &session)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let everyone = expect(app.get("/api/v1/calls", &root).await, StatusCode::OK);
    assert_eq!(ids(&everyone), set([internal.id, outbound.id, not_mine.id]));

    // Recordings follow the calls.
    let visible = recording_record(tenant, Some(internal.id), "mine.wav".into(), 4);
    let hidden = recording_record(tenant, Some(not_mine.id), "theirs.wav".into(), 4);
    for recording in [&visible, &hidden] {
        recordings::insert(&app.db, recording).await.unwrap();
    }
    let listed = expect(
        app.get("/api/v1/recordings", &session).await,
        StatusCode::OK,
    );
    assert_eq!(ids(&listed), set([visible.id]));
    expect_error(
        app.get(&format!("/api/v1/recordings/{}", hidden.id), &session)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    expect_error(
        app.delete(&format!("/api/v1/recordings/{}", visible.id), &session)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
}

#[tokio::test]
async fn admins_cannot_touch_superadmins_and_nobody_deletes_themselves() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let root_id = id(&app.me(&root).await);
    let admin_id = app.create_user(&root, "ops@localhost", "admin", None).await;
    let user_id = app.create_user(&root, "user@localhost", "user", None).await;
    let admin = app.login("ops@localhost", PASSWORD).await.access;
    let user = app.login("user@localhost", PASSWORD).await.access;
    let root_path = format!("/api/v1/users/{root_id}");

    for reply in [
        app.post(
            "/api/v1/users",
            &admin,
            json!({"email": "boss@localhost", "password": PASSWORD, "role": "superadmin"}),
        )
        .await,
        app.patch(&root_path, &admin, json!({"display_name": "Demoted"}))
            .await,
        app.patch(&root_path, &admin, json!({"status": "disabled"}))
            .await,
        app.delete(&root_path, &admin).await,
        app.delete(&format!("{root_path}/totp"), &admin).await,
        app.patch(
            &format!("/api/v1/users/{user_id}"),
            &admin,
            json!({"role": "superadmin"}),
        )
        .await,
        app.patch(
            &format!("/api/v1/users/{admin_id}"),
            &admin,
            json!({"role": "user"}),
        )
        .await,
    ] {
        expect_error(reply, StatusCode::FORBIDDEN, "forbidden");
    }
    assert_eq!(
        expect(app.get(&root_path, &root).await, StatusCode::OK)["display_name"],
        "Administrator"
    );

    // Admins manage ordinary users and admins of their tenant.
    let promoted = expect(
        app.patch(
            &format!("/api/v1/users/{user_id}"),
            &admin,
            json!({"role": "admin"}),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(promoted["role"], "admin");
    expect(
        app.post(
            "/api/v1/users",
            &root,
            json!({"email": "boss@localhost", "password": PASSWORD, "role": "superadmin"}),
        )
        .await,
        StatusCode::CREATED,
    );

    expect_error(
        app.delete(&format!("/api/v1/users/{admin_id}"), &admin)
            .await,
        StatusCode::CONFLICT,
        "in_use",
    );
    expect_error(
        app.delete(&root_path, &root).await,
        StatusCode::CONFLICT,
        "in_use",
    );
    expect_error(
        app.patch(&root_path, &root, json!({"status": "disabled"}))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    // A plain user may delete nobody; `user`, promoted to admin (effective at once), still
    // cannot delete themselves.
    let plain = app
        .create_user(&root, "plain@localhost", "user", None)
        .await;
    let plain_token = app.login("plain@localhost", PASSWORD).await.access;
    expect_error(
        app.delete(&format!("/api/v1/users/{plain}"), &plain_token)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect_error(
        app.delete(&format!("/api/v1/users/{user_id}"), &user).await,
        StatusCode::CONFLICT,
        "in_use",
    );
    for who in [root_id, admin_id, user_id, plain] {
        expect(
            app.get(&format!("/api/v1/users/{who}"), &root).await,
            StatusCode::OK,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 9. Calls and recordings
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn call_history_filters() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let tenant = app.tenant_of(&root).await;
    let e1 = app.create_extension(&root, "1001", json!({})).await;
    let e2 = app.create_extension(&root, "1002", json!({})).await;

    let internal = Call {
        from_extension_id: Some(e1),
        to_extension_id: Some(e2),
        ..call_record(tenant, 180)
    };
    let inbound = Call {
        direction: Direction::Inbound,
        from_number: "+15550001111".into(),
        to_number: "1002".into(),
        did: Some("+15551234567".into()),
        to_extension_id: Some(e2),
        disposition: Disposition::NoAnswer,
        ..call_record(tenant, 120)
    };
    let outbound = Call {
        direction: Direction::Outbound,
        from_extension_id: Some(e1),
        to_number: "+15559998888".into(),
        disposition: Disposition::Failed,
        ..call_record(tenant, 60)
    };
    for call in [&internal, &inbound, &outbound] {
        calls::insert(&app.db, call).await.unwrap();
    }
    let boundary = Timestamp(Timestamp::now().as_millis() - 150 * 60_000).to_rfc3339();
    let recent = Timestamp(Timestamp::now().as_millis() - 90 * 60_000).to_rfc3339();

    let cases = [
        (String::new(), set([internal.id, inbound.id, outbound.id])),
        (format!("since={boundary}"), set([inbound.id, outbound.id])),
        (format!("until={boundary}"), set([internal.id])),
        (
            format!("since={boundary}&until={recent}"),
            set([inbound.id]),
        ),
        ("extension=1001".to_owned(), set([internal.id, outbound.id])),
        ("extension=1002".to_owned(), set([internal.id, inbound.id])),
        ("extension=1003".to_owned(), set([])),
        ("number=%2B15551234567".to_owned(), set([inbound.id])),
        ("number=%2B15559998888".to_owned(), set([outbound.id])),
        ("number=1002".to_owned(), set([internal.id, inbound.id])),
        ("direction=inbound".to_owned(), set([inbound.id])),
        ("direction=internal".to_owned(), set([internal.id])),
        ("disposition=answered".to_owned(), set([internal.id])),
        ("disposition=busy".to_owned(), set([])),
        (
            "direction=outbound&extension=1001".to_owned(),
            set([outbound.id]),
        ),
        ("direction=outbound&extension=1002".to_owned(), set([])),
    ];
    for (query, expected) in cases {
        let page = expect(
            app.get(&format!("/api/v1/calls?{query}"), &root).await,
            StatusCode::OK,
        );
        assert_eq!(ids(&page), expected, "?{query}");
    }

    let first = expect(
        app.get("/api/v1/calls?limit=2", &root).await,
        StatusCode::OK,
    );
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = expect(
        app.get(&format!("/api/v1/calls?limit=2&cursor={cursor}"), &root)
            .await,
        StatusCode::OK,
    );
    assert_eq!(
        &ids(&first) | &ids(&rest),
        set([internal.id, inbound.id, outbound.id])
    );
    assert_eq!(rest["next_cursor"], Value::Null);

    let one = expect(
        app.get(&format!("/api/v1/calls/{}", inbound.id), &root)
            .await,
        StatusCode::OK,
    );
    assert_eq!(one["direction"], "inbound");
    assert_eq!(one["disposition"], "no_answer");
    assert_eq!(one["did"], "+15551234567");
    assert_eq!(one["to_extension_id"], json!(e2));
    assert_eq!(one["started_at"], inbound.started_at.to_rfc3339());
    expect_error(
        app.get(&format!("/api/v1/calls/{}", Uuid::now_v7()), &root)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

/// A WAV file of a 440 Hz tone.
fn tone_wav(rate: u32, channels: u16, millis: u32) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
    for i in 0..rate * millis / 1000 {
        let v = (f64::from(i) * 440.0 * std::f64::consts::TAU / f64::from(rate)).sin();
        for _ in 0..channels {
            writer.write_sample((v * 10_000.0) as i16).unwrap();
        }
    }
    writer.finalize().unwrap();
    out.into_inner()
}

#[tokio::test]
async fn prompts_are_converted_stored_and_served() {
    let app = TestApp::with_config(|c| c.http.max_upload_bytes = 64 * 1024).await;
    let root = app.superadmin().await;
    let upload = |method: Method, path: String, body: Vec<u8>| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {root}"))
            .header(header::CONTENT_TYPE, "audio/wav")
            .body(Body::from(body))
            .unwrap();
        async { app.send(request).await.status_json() }
    };

    // Half a second of 16 kHz stereo becomes half a second of 8 kHz mono.
    let created = expect(
        upload(
            Method::POST,
            "/api/v1/prompts?name=main-menu&description=Welcome".into(),
            tone_wav(16_000, 2, 500),
        )
        .await,
        StatusCode::CREATED,
    );
    assert_eq!(created["name"], "main-menu");
    assert_eq!(created["description"], "Welcome");
    assert_eq!(created["source"], "pcm16 16000 Hz stereo");
    assert_eq!(created["duration_ms"], 500);
    let path = format!("/api/v1/prompts/{}", id(&created));
    assert_eq!(expect(app.get(&path, &root).await, StatusCode::OK), created);
    let list = expect(app.get("/api/v1/prompts", &root).await, StatusCode::OK);
    assert_eq!(list["items"], json!([created]));

    let download = app
        .send(
            Request::builder()
                .uri(format!("{path}/audio"))
                .header(header::AUTHORIZATION, format!("Bearer {root}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(download.status, StatusCode::OK);
    assert_eq!(download.header(header::CONTENT_TYPE), Some("audio/wav"));
    let reader = hound::WavReader::new(std::io::Cursor::new(download.body)).unwrap();
    assert_eq!(
        (
            reader.spec().sample_rate,
            reader.spec().channels,
            reader.spec().bits_per_sample
        ),
        (8000, 1, 16)
    );
    let samples: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
    assert_eq!(samples.len(), 4000);
    let peak = samples[100..3900]
        .iter()
        .map(|s| s.unsigned_abs())
        .max()
        .unwrap();
    assert!(
        (9_500..=10_500).contains(&peak),
        "the tone keeps its level: {peak}"
    );

    // Refusals name what is wrong.
    expect_error(
        upload(
            Method::POST,
            "/api/v1/prompts?name=main-menu".into(),
            tone_wav(8000, 1, 100),
        )
        .await,
        StatusCode::CONFLICT,
        "conflict",
    );
    expect_invalid(
        upload(
            Method::POST,
            "/api/v1/prompts?name=has%20space".into(),
            tone_wav(8000, 1, 100),
        )
        .await,
        "name",
    );
    let message = expect_error(
        upload(
            Method::POST,
            "/api/v1/prompts?name=mp3".into(),
            b"ID3\x04 not a wav".to_vec(),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_audio",
    );
    assert!(message.contains("not a WAV"), "{message}");
    let message = expect_error(
        upload(
            Method::POST,
            "/api/v1/prompts?name=long".into(),
            tone_wav(48_000, 2, 1000),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    );
    assert!(message.contains("http.max_upload_bytes"), "{message}");

    // Rename, replace the audio, then delete.
    let renamed = expect(
        app.patch(&path, &root, json!({"name": "menu"})).await,
        StatusCode::OK,
    );
    assert_eq!(renamed["name"], "menu");
    let replaced = expect(
        upload(
            Method::PUT,
            format!("{path}/audio"),
            tone_wav(8000, 1, 1000),
        )
        .await,
        StatusCode::OK,
    );
    assert_eq!(
        (
            &replaced["name"],
            &replaced["duration_ms"],
            &replaced["source"]
        ),
        (&json!("menu"), &json!(1000), &json!("pcm16 8000 Hz mono"))
    );

    // Users other than admins see nothing of it.
    let tenant = app.tenant_of(&root).await;
    app.create_user(&root, "plain@example.com", "user", Some(tenant))
        .await;
    let user = app.login("plain@example.com", PASSWORD).await.access;
    expect_error(
        app.get(&path, &user).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );

    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    expect_error(
        app.get(&path, &root).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn recordings_metadata_ranges_and_deletion() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let tenant = app.tenant_of(&root).await;
    let call = call_record(tenant, 5);
    calls::insert(&app.db, &call).await.unwrap();

    let audio: Vec<u8> = (0u8..32).collect();
    let dir = app.recordings_dir().join(tenant.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("call.wav");
    std::fs::write(&file, &audio).unwrap();
    let recording = recording_record(
        tenant,
        Some(call.id),
        format!("{tenant}/call.wav"),
        audio.len() as i64,
    );
    recordings::insert(&app.db, &recording).await.unwrap();
    let missing = recording_record(tenant, None, format!("{tenant}/gone.wav"), 10);
    recordings::insert(&app.db, &missing).await.unwrap();

    let list = expect(app.get("/api/v1/recordings", &root).await, StatusCode::OK);
    assert_eq!(ids(&list), set([recording.id, missing.id]));
    let of_call = expect(
        app.get(&format!("/api/v1/recordings?call_id={}", call.id), &root)
            .await,
        StatusCode::OK,
    );
    assert_eq!(ids(&of_call), set([recording.id]));
    let path = format!("/api/v1/recordings/{}", recording.id);
    let metadata = expect(app.get(&path, &root).await, StatusCode::OK);
    assert_eq!(metadata["kind"], "call");
    assert_eq!(metadata["status"], "complete");
    assert_eq!(metadata["call_id"], json!(call.id));
    assert_eq!(metadata["size_bytes"], 32);
    assert!(
        metadata.get("path").is_none(),
        "the server path stays private"
    );

    let download = |range: Option<&str>| {
        let mut builder = Request::builder()
            .uri(format!("{path}/download"))
            .header(header::AUTHORIZATION, format!("Bearer {root}"));
        if let Some(range) = range {
            builder = builder.header(header::RANGE, range);
        }
        app.send(builder.body(Body::empty()).unwrap())
    };

    let whole = download(None).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.header(header::ACCEPT_RANGES), Some("bytes"));
    assert_eq!(whole.header(header::CONTENT_TYPE), Some("audio/wav"));
    assert_eq!(whole.header(header::CONTENT_LENGTH), Some("32"));
    assert_eq!(whole.header(header::CONTENT_RANGE), None);
    assert_eq!(whole.body, audio);

    for (range, content_range, bytes) in [
        ("bytes=4-9", "bytes 4-9/32", &audio[4..10]),
        ("bytes=-4", "bytes 28-31/32", &audio[28..]),
        ("bytes=30-", "bytes 30-31/32", &audio[30..]),
        ("bytes=31-100", "bytes 31-31/32", &audio[31..]),
    ] {
        let part = download(Some(range)).await;
        assert_eq!(part.status, StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(part.header(header::CONTENT_RANGE), Some(content_range));
        assert_eq!(part.header(header::ACCEPT_RANGES), Some("bytes"));
        assert_eq!(part.body, bytes, "{range}");
    }
    for unsatisfiable in ["bytes=32-", "bytes=-0"] {
        let refused = download(Some(unsatisfiable)).await;
        assert_eq!(refused.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(refused.header(header::CONTENT_RANGE), Some("bytes */32"));
    }
    // Headers we don't serve (several ranges, other units) get the whole file.
    for ignored in ["bytes=0-1,4-5", "items=0-1"] {
        let reply = download(Some(ignored)).await;
        assert_eq!(reply.status, StatusCode::OK, "{ignored}");
        assert_eq!(reply.body, audio);
    }

    expect_error(
        app.get(
            &format!("/api/v1/recordings/{}/download", missing.id),
            &root,
        )
        .await,
        StatusCode::NOT_FOUND,
        "file_missing",
    );

    assert_eq!(app.delete(&path, &root).await.0, StatusCode::NO_CONTENT);
    assert!(!file.exists(), "the file is removed");
    for gone in [path.clone(), format!("{path}/download")] {
        expect_error(
            app.get(&gone, &root).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
    }
    // A recording whose file is already gone can still be deleted.
    assert_eq!(
        app.delete(&format!("/api/v1/recordings/{}", missing.id), &root)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
}

// ---------------------------------------------------------------------------------------------
// 10. Audit log
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn audit_log_records_changes_per_tenant() {
    let app = TestApp::new().await;
    let root = app.superadmin().await;
    let tenant = app.me(&root).await["tenant_id"].clone();
    let tenant_b = app.create_tenant(&root, "B", "b.example").await;
    let admin_id = app.create_user(&root, "ops@localhost", "admin", None).await;
    app.create_user(&root, "admin-b@b.example", "admin", Some(tenant_b))
        .await;
    app.create_user(&root, "user@localhost", "user", None).await;
    let admin = app.login("ops@localhost", PASSWORD).await.access;
    let admin_b = app.login("admin-b@b.example", PASSWORD).await.access;
    let user = app.login("user@localhost", PASSWORD).await.access;

    let create = request(
        Method::POST,
        "/api/v1/extensions",
        Some(&admin),
        Some(&json!({"number": "1001", "display_name": "Desk", "password": "sip-secret-1"})),
    );
    let reply = app.send(from_address(create, [192, 0, 2, 7])).await;
    let ext = id(&expect(reply.status_json(), StatusCode::CREATED));

    let entries_about = |page: &Value| -> Vec<Value> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["object_id"] == json!(ext))
            .cloned()
            .collect()
    };
    let log = expect(app.get("/api/v1/audit-log", &admin).await, StatusCode::OK);
    let entries = entries_about(&log);
    assert_eq!(entries.len(), 1, "{log}");
    let entry = &entries[0];
    assert_eq!(entry["action"], "create");
    assert_eq!(entry["object_type"], "extension");
    assert_eq!(entry["actor_user_id"], json!(admin_id));
    assert_eq!(entry["tenant_id"], tenant);
    assert_eq!(entry["source_ip"], "192.0.2.7");
    assert_eq!(entry["details"]["number"], "1001");
    assert!(
        log["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] == tenant),
        "{log}"
    );

    let everything = expect(app.get("/api/v1/audit-log", &root).await, StatusCode::OK);
    assert_eq!(entries_about(&everything).len(), 1);

    let other = expect(app.get("/api/v1/audit-log", &admin_b).await, StatusCode::OK);
    assert!(entries_about(&other).is_empty(), "{other}");
    assert!(
        other["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] == json!(tenant_b)),
        "{other}"
    );

    expect_error(
        app.get("/api/v1/audit-log", &user).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    );
    expect_error(
        app.get("/api/v1/audit-log?limit=0", &admin).await,
        StatusCode::BAD_REQUEST,
        "invalid_query",
    );
}

// ---------------------------------------------------------------------------------------------
// 11. Operational endpoints
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = TestApp::new().await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = app.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(body, json!({"status": "ok"}));
    }

    app.superadmin().await;
    let metrics = app.send(request(Method::GET, "/metrics", None, None)).await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics
            .header(header::CONTENT_TYPE)
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(text.contains("switchboard_http_requests_total{"), "{text}");
    assert!(
        text.contains(r#"switchboard_auth_logins_total{result="success"} 1"#),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// 12. OpenAPI
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn openapi_document_describes_exactly_the_routes() {
    let app = TestApp::new().await;
    let reply = app
        .send(request(Method::GET, "/api/v1/openapi.json", None, None))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.header(header::CONTENT_TYPE), Some("application/json"));
    let doc = reply.json();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );

    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "put", "post", "delete", "options", "head", "patch", "trace",
            ]
            .contains(&method.as_str())
            {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(
        expected.difference(&documented).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "routes missing from the document"
    );
    assert_eq!(
        documented.difference(&expected).collect::<Vec<_>>(),
        Vec::<&(String, String)>::new(),
        "documented routes this test does not know"
    );
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let app = TestApp::new().await;
    let mut token = app.superadmin().await;
    let unknown = Uuid::now_v7();

    for (method, template) in ROUTES {
        let path = template
            .replace("{id}", &unknown.to_string())
            .replace("{version}", "1");
        let method: Method = method.parse().unwrap();
        let body = [Method::POST, Method::PATCH]
            .contains(&method)
            .then(|| json!({}));
        let reply = app
            .send(request(method.clone(), &path, Some(&token), body.as_ref()))
            .await;
        let what = format!("{method} {path}");
        assert_ne!(reply.status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
        if reply.status == StatusCode::NOT_FOUND {
            // Our handler's "no such object", not the router's fallback.
            let body = reply.json();
            assert_eq!(body["error"]["code"], "not_found", "{what}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(!message.starts_with("no route for"), "{what}: {message}");
        }
        if *template == "/api/v1/auth/logout-all" {
            assert_eq!(reply.status, StatusCode::NO_CONTENT);
            token = app.superadmin().await;
        }
    }
}
