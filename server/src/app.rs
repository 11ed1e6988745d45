//! Start-up and shutdown of the whole server.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::json;
use switchboard_storage::users::{NewUser, Role};
use switchboard_storage::{
    ConnectOptions, Db, Timestamp, audit, registrations, tenants, tokens, users,
};
use tokio_util::sync::CancellationToken;

use crate::auth::password;
use crate::config::Config;
use crate::http::{self, AppState};
use crate::secrets;
use switchboard_storage::crypto::SecretBox;

/// How long in-flight requests may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often expired refresh tokens and registrations are purged.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);

/// Runs the server until `shutdown` is cancelled.
pub async fn serve(
    config: Config,
    admin_password: Option<String>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let secret_box = secrets::load_secret_box(&config)?;
    let options = ConnectOptions {
        max_connections: config.database.max_connections,
        acquire_timeout: config.database.acquire_timeout,
    };
    let url = config.database_url();
    let db = Db::connect(&url, &options)
        .await
        .with_context(|| format!("opening database {}", redact_url(&url)))?;
    tracing::info!(engine = ?db.engine(), "database ready");
    let jwt_secret = secrets::jwt_secret(&config, &db, &secret_box).await?;
    bootstrap(&db, &config, &secret_box, admin_password).await?;

    // What SDP and SIP headers carry: the configured address, else the media bind address if
    // it is a specific one, else the address of the default route.
    let media_ip = Some(config.media.bind_ip).filter(|ip| !ip.is_unspecified());
    let advertised = config
        .network
        .advertised_address
        .or(media_ip)
        .unwrap_or_else(detect_address);
    let events = crate::events::EventHub::new();
    // The HTTP listeners are bound first: SIP over WebSocket advertises their ports.
    let listener = tokio::net::TcpListener::bind(config.http.bind)
        .await
        .with_context(|| {
            format!(
                "binding the HTTP listener to {} (config key http.bind)",
                config.http.bind
            )
        })?;
    let bound = listener.local_addr()?;
    let https = if config.http.tls {
        let listener = tokio::net::TcpListener::bind(config.http.tls_bind)
            .await
            .with_context(|| {
                format!(
                    "binding the HTTPS listener to {} (config key http.tls_bind)",
                    config.http.tls_bind
                )
            })?;
        let acceptor = crate::sip::tls::https_acceptor(&config, advertised)?;
        Some(crate::https::TlsListener::new(
            listener,
            acceptor,
            shutdown.clone(),
        )?)
    } else {
        None
    };
    let https_bound = https
        .as_ref()
        .map(axum::serve::Listener::local_addr)
        .transpose()?;
    let websockets = crate::sip::WebSockets {
        ws_port: Some(bound.port()),
        wss_port: https_bound.map(|a| a.port()),
        credential_key: credential_key(&jwt_secret),
    };
    let sip = crate::sip::start(
        &config,
        &db,
        &secret_box,
        advertised,
        websockets,
        events.clone(),
        shutdown.clone(),
    )
    .await?;
    let turn = crate::turn::start(&config, &db, &secret_box, advertised, shutdown.clone()).await?;
    let mut state = AppState::new(db.clone(), config.clone(), &jwt_secret, secret_box)
        .with_sip(sip.handle.clone())
        .with_events(events);
    let mut turn_threads = Vec::new();
    if let Some((handle, threads)) = turn {
        state = state.with_turn(handle);
        turn_threads = threads;
    }
    let router = http::router(state.clone());
    let https_server = https.map(|listener| {
        let app = router
            .clone()
            .layer(axum::Extension(crate::https::Secure))
            .into_make_service_with_connect_info::<SocketAddr>();
        // `tap_io` gives the TLS listener the remote address as `ConnectInfo`.
        let listener = axum::serve::ListenerExt::tap_io(listener, |_| {});
        let server =
            axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
        tokio::spawn(server.into_future())
    });
    let app = router.into_make_service_with_connect_info::<SocketAddr>();
    // Printed on stdout so operators (and tests) can find the port when it was 0.
    println!(
        "switchboard {}: HTTP listening on {bound}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(https) = https_bound {
        println!("  HTTPS listening on {https}");
    }
    println!(
        "  API: http://{}/api/v1  (advertised address {advertised})",
        SocketAddr::new(advertised, bound.port())
    );
    if let Some(udp) = sip.udp {
        println!("  SIP: UDP listening on {udp}");
    }
    if let Some(tcp) = sip.tcp {
        println!("  SIP: TCP listening on {tcp}");
    }
    if let Some(tls) = sip.tls {
        println!("  SIP: TLS listening on {tls}");
    }
    if let Some(turn) = &state.turn {
        if let Some(udp) = turn.udp {
            println!("  TURN: UDP listening on {udp}");
        }
        if let Some(tcp) = turn.tcp {
            println!("  TURN: TCP listening on {tcp}");
        }
        for tls in &turn.tls {
            println!("  TURN: TLS listening on {tls}");
        }
    }
    tracing::info!(%bound, %advertised, sip_udp = ?sip.udp, sip_tcp = ?sip.tcp, sip_tls = ?sip.tls, "listening");

    let maintenance = tokio::spawn(maintain(db.clone(), shutdown.clone()));
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let mut server = tokio::spawn(server.into_future());
    let result = tokio::select! {
        finished = &mut server => finished,
        () = shutdown.cancelled() => {
            tracing::info!("shutting down: finishing requests in flight");
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
                Ok(finished) => finished,
                Err(_) => {
                    tracing::warn!("requests still running after {SHUTDOWN_GRACE:?}; stopping anyway");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    maintenance.abort();
    shutdown.cancel();
    if let Some(https) = https_server {
        match tokio::time::timeout(SHUTDOWN_GRACE, https).await {
            Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTPS server"),
            Ok(_) => {}
            Err(_) => tracing::warn!("HTTPS requests still running; stopping anyway"),
        }
    }
    sip.stopped().await;
    for thread in turn_threads {
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
    db.close().await;
    result.context("HTTP server task")?.context("HTTP server")?;
    tracing::info!("stopped");
    Ok(())
}

/// The key of browser SIP credentials, derived from the JWT secret (shared by every node of
/// one database, kept across restarts): a credential outlives neither a new JWT secret nor
/// its extension's password.
fn credential_key(jwt_secret: &[u8]) -> [u8; 32] {
    use hmac::{KeyInit as _, Mac as _};
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(jwt_secret).expect("HMAC takes any key length");
    mac.update(b"switchboard sip credentials v1");
    mac.finalize().into_bytes().into()
}

/// On first start (no superadmin), creates the first tenant and a superadmin. The password is
/// `admin_password` if given, else generated and printed once.
pub async fn bootstrap(
    db: &Db,
    config: &Config,
    secret_box: &SecretBox,
    admin_password: Option<String>,
) -> anyhow::Result<()> {
    if users::any_superadmin(db).await? {
        return Ok(());
    }
    let boot = &config.bootstrap;
    let tenant = match tenants::find_by_domain(db, &boot.tenant_domain).await? {
        Some(tenant) => tenant,
        None => tenants::create(db, &boot.tenant_name, &boot.tenant_domain).await?,
    };
    let (password, generated) = match admin_password {
        Some(password) => {
            let min = config.auth.min_password_length;
            anyhow::ensure!(
                password.chars().count() >= min,
                "SWITCHBOARD_ADMIN_PASSWORD must be at least {min} characters (config key auth.min_password_length)"
            );
            (password, false)
        }
        None => {
            let mut bytes = [0u8; 15];
            rand::fill(&mut bytes);
            (URL_SAFE_NO_PAD.encode(bytes), true)
        }
    };
    let user = users::create(
        db,
        NewUser {
            tenant_id: tenant.id,
            email: boot.admin_email.clone(),
            display_name: "Administrator".into(),
            password_hash: password::hash(password.clone()).await?,
            role: Role::Superadmin,
        },
    )
    .await
    .context("creating the bootstrap superadmin (config key bootstrap.admin_email)")?;
    crate::turn::store_user_key(
        db,
        secret_box,
        &config.turn.realm,
        user.id,
        &user.email,
        &password,
    )
    .await?;
    audit::record(
        db,
        audit::NewEntry {
            tenant_id: Some(tenant.id),
            actor_user_id: None,
            action: "bootstrap",
            object_type: "user",
            object_id: user.id.to_string(),
            details: json!({"email": user.email, "tenant": tenant.name}),
            source_ip: None,
        },
    )
    .await?;
    println!(
        "Created superadmin {} in tenant \"{}\" (SIP domain {}).",
        user.email, tenant.name, tenant.sip_domain
    );
    if generated {
        println!("  password: {password}");
        println!("  (shown once; set SWITCHBOARD_ADMIN_PASSWORD on first start to choose it)");
    } else {
        println!("  password: from SWITCHBOARD_ADMIN_PASSWORD");
    }
    Ok(())
}

/// Purges expired refresh tokens and registrations every [`MAINTENANCE_INTERVAL`].
async fn maintain(db: Db, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Timestamp::now();
        match tokens::purge_expired(&db, now).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired refresh tokens removed"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "purging refresh tokens failed"),
        }
        match registrations::purge_expired(&db, now).await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "expired registrations removed"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "purging registrations failed"),
        }
    }
}

/// The address of the interface holding the default route (no packet is sent: connecting a
/// UDP socket only picks a route), else loopback.
pub fn detect_address() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect((Ipv4Addr::new(192, 0, 2, 1), 9))?;
        Ok(socket.local_addr()?.ip())
    };
    probe()
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

/// `url` with any password replaced, for logs and errors.
fn redact_url(url: &str) -> String {
    match url
        .split_once("://")
        .and_then(|(scheme, rest)| Some((scheme, rest.split_once('@')?)))
    {
        Some((scheme, (credentials, host))) => {
            let user = credentials
                .split_once(':')
                .map_or(credentials, |(user, _)| user);
            format!("{scheme}://{user}:<redacted>@{host}")
        }
        None => url.to_owned(),
    }
}

/// Resolves when the process gets SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_in_urls() {
        assert_eq!(
            redact_url("postgres://sb:secret@db:5432/sb"),
            "postgres://sb:<redacted>@db:5432/sb"
        );
        assert_eq!(
            redact_url("sqlite://./data/switchboard.db"),
            "sqlite://./data/switchboard.db"
        );
    }

    #[tokio::test]
    async fn bootstrap_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(
            &format!("sqlite://{}/t.db", dir.path().display()),
            &ConnectOptions::default(),
        )
        .await
        .unwrap();
        let config = Config::default();
        let secret_box = SecretBox::new(&SecretBox::generate_key());
        assert!(
            bootstrap(&db, &config, &secret_box, Some("short".into()))
                .await
                .is_err()
        );
        bootstrap(
            &db,
            &config,
            &secret_box,
            Some("a long enough password".into()),
        )
        .await
        .unwrap();
        bootstrap(&db, &config, &secret_box, None).await.unwrap();
        assert_eq!(users::turn_keys(&db).await.unwrap().len(), 1);
        let auth = users::get_auth_by_email(&db, "admin@localhost")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(auth.user.role, Role::Superadmin);
        assert!(password::verify("a long enough password".into(), auth.password_hash).await);
        let tenant = tenants::find_by_domain(&db, "localhost")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(tenant.id, auth.user.tenant_id);
    }
}
