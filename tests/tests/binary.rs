//! The `switchboard` binary as a user meets it: zero-config start, the printed admin password,
//! the API over real sockets, graceful shutdown, restart, configuration errors, PostgreSQL.

use serde_json::{Value, json};
use switchboard_tests::{Server, run};

/// Logs in and returns the access token.
async fn login(client: &reqwest::Client, server: &Server, email: &str, password: &str) -> String {
    let response = client
        .post(server.url("/api/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("login request");
    assert_eq!(response.status(), 200, "login of {email}");
    let body: Value = response.json().await.expect("login JSON");
    body["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// Creates extension `number` and returns the extension list.
async fn create_and_list(
    client: &reqwest::Client,
    server: &Server,
    token: &str,
    number: &str,
) -> Value {
    let created = client
        .post(server.url("/api/v1/extensions"))
        .bearer_auth(token)
        .json(&json!({"number": number, "display_name": "Alice", "password": "s3cret-pass"}))
        .send()
        .await
        .expect("create extension");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("extension JSON");
    assert!(
        created.get("password").is_none(),
        "the SIP password must never be returned"
    );
    let listed = client
        .get(server.url("/api/v1/extensions"))
        .bearer_auth(token)
        .send()
        .await
        .expect("list");
    assert_eq!(listed.status(), 200);
    listed.json().await.expect("list JSON")
}

fn numbers(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| e["number"].as_str().expect("number"))
        .collect()
}

#[tokio::test]
async fn zero_config_start_login_restart_and_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let client = switchboard_tests::http();

    // First start in an empty directory: data goes to ./data, the admin password is printed.
    let mut server = Server::start(dir.path(), &[]);
    let line = server.wait_for_line("password: ");
    let password = line
        .trim()
        .strip_prefix("password: ")
        .expect("password line")
        .to_owned();
    assert!(
        password.len() >= 20,
        "generated password too short: {password:?}"
    );
    assert!(dir.path().join("data/switchboard.db").exists());
    assert!(dir.path().join("data/secret.key").exists());

    let token = login(&client, &server, "admin@localhost", &password).await;
    let list = create_and_list(&client, &server, &token, "1001").await;
    assert_eq!(numbers(&list), ["1001"]);
    let ready = client.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let calls = client
        .get(server.url("/api/v1/calls"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(calls.status(), 200);

    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM should exit cleanly, got {status}"
    );

    // Second start: nothing new is printed, the same password works, the data is still there,
    // and access tokens issued before the restart stay valid (the JWT secret persisted).
    let mut server = Server::start(dir.path(), &[]);
    assert!(
        !server.stdout.iter().any(|l| l.contains("password")),
        "{:?}",
        server.stdout
    );
    let old_token_works = client
        .get(server.url("/api/v1/auth/me"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(old_token_works.status(), 200);
    let token = login(&client, &server, "admin@localhost", &password).await;
    let list = create_and_list(&client, &server, &token, "1002").await;
    assert_eq!(numbers(&list), ["1001", "1002"]);
    server.wait_for_line("HTTP listening");
    assert!(server.terminate().success());
}

#[tokio::test]
async fn admin_password_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        dir.path(),
        &[
            ("SWITCHBOARD_ADMIN_PASSWORD", "chosen-by-the-operator"),
            ("SWITCHBOARD_BOOTSTRAP__ADMIN_EMAIL", "ops@example.com"),
            ("SWITCHBOARD_NETWORK__ADVERTISED_ADDRESS", "203.0.113.7"),
        ],
    );
    let line = server.wait_for_line("password: ");
    assert!(line.contains("SWITCHBOARD_ADMIN_PASSWORD"), "{line}");
    // The advertised address is separate from the bind address.
    let api = server.wait_for_line("API: ");
    assert!(
        api.contains(&format!("http://203.0.113.7:{}/api/v1", server.http.port())),
        "{api}"
    );
    assert!(server.http.ip().is_loopback());
    login(
        &switchboard_tests::http(),
        &server,
        "ops@example.com",
        "chosen-by-the-operator",
    )
    .await;
    assert!(server.terminate().success());
}

#[test]
fn bad_configuration_is_refused_with_the_key_name() {
    let (status, _, stderr) = run(&["serve"], &[("SWITCHBOARD_HTTP__BIND", "not-an-address")]);
    assert_eq!(status.code(), Some(2));
    assert!(
        stderr.contains("`http.bind`") && stderr.contains("SWITCHBOARD_HTTP__BIND"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(&file, "[auth]\nlockout_treshold = 3\n").unwrap();
    let (status, _, stderr) = run(&["serve", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("lockout_treshold"), "{stderr}");

    let (status, _, stderr) = run(&["config", "--check"], &[("SWITCHBOARD_NOT__A_KEY", "1")]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("not"), "{stderr}");
}

#[test]
fn config_commands() {
    let (status, defaults, _) = run(&["config", "--print-default"], &[]);
    assert!(status.success());
    let parsed: toml::Table = toml::from_str(&defaults).expect("the printed defaults are TOML");
    assert_eq!(parsed["http"]["bind"].as_str(), Some("0.0.0.0:8080"));
    assert!(
        defaults.contains("# secret_key = "),
        "optional keys are documented"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.toml");
    std::fs::write(
        &file,
        "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef\"\n",
    )
    .unwrap();
    let (status, effective, _) = run(
        &["config", "--check", "--config", file.to_str().unwrap()],
        &[("SWITCHBOARD_HTTP__BIND", "127.0.0.1:9999")],
    );
    assert!(status.success());
    assert!(
        effective.contains("bind = \"127.0.0.1:9999\""),
        "{effective}"
    );
    assert!(
        effective.contains("<redacted>") && !effective.contains("0123456789abcdef"),
        "{effective}"
    );

    let (status, help, _) = run(&["--help"], &[]);
    assert!(status.success());
    for command in ["serve", "config", "openapi"] {
        assert!(help.contains(command), "{help}");
    }
    let (status, doc, _) = run(&["openapi"], &[]);
    assert!(status.success());
    let doc: Value = serde_json::from_str(&doc).expect("openapi prints JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
}

/// The same start-up on PostgreSQL: `database.url = postgres://...` (from the throwaway server
/// that the README test command starts).
#[tokio::test]
async fn runs_on_postgres() {
    let Ok(admin_url) = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL") else {
        assert!(
            std::env::var_os("SWITCHBOARD_TEST_REQUIRE_POSTGRES").is_none(),
            "SWITCHBOARD_TEST_REQUIRE_POSTGRES is set but SWITCHBOARD_TEST_POSTGRES_URL is not"
        );
        return;
    };
    let name = format!("sbe2e_{}", uuid::Uuid::new_v4().simple());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    let (server_part, _) = admin_url.rsplit_once('/').unwrap();
    let url = format!("{server_part}/{name}");

    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SWITCHBOARD_DATABASE__URL", url.as_str()),
        ("SWITCHBOARD_ADMIN_PASSWORD", "postgres-admin-pw"),
    ];
    let server = Server::start(dir.path(), &env);
    let client = switchboard_tests::http();
    let token = login(&client, &server, "admin@localhost", "postgres-admin-pw").await;
    let list = create_and_list(&client, &server, &token, "2001").await;
    assert_eq!(numbers(&list), ["2001"]);
    assert!(
        !dir.path().join("data/switchboard.db").exists(),
        "no SQLite file when PostgreSQL is configured"
    );
    assert!(server.terminate().success());

    // After a restart the data is read back from PostgreSQL.
    let server = Server::start(dir.path(), &env);
    let token = login(&client, &server, "admin@localhost", "postgres-admin-pw").await;
    let listed: Value = client
        .get(server.url("/api/v1/extensions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(numbers(&listed), ["2001"]);
    assert!(server.terminate().success());
}
