//! IVR `http` nodes: the fetch the signalling core asks for ([`Output::Http`]), done by a task
//! of its own so the signalling task never waits on the network.
//!
//! The destination is checked before anything is sent: unless `ivr.http_allow_private`, a
//! host that resolves to a loopback, private, link-local (cloud metadata), multicast or other
//! special-purpose address is refused (the TURN server's peer policy decides), and the
//! connection goes to the address that was checked, so DNS cannot change it in between. The
//! answer must be a 2xx with a JSON body of at most 64 KiB; redirects are not followed.
//!
//! [`Output::Http`]: switchboard_signalling::core::Output::Http

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_signalling::ivr::{HttpRequest, Method};
use switchboard_signalling::media::SessionId;
use switchboard_turn::policy::PeerPolicy;
use tokio::sync::mpsc;

use super::Command;

/// Largest JSON answer read.
const MAX_BODY: usize = 64 * 1024;

/// Fetches `request` for `session` and sends the answer to the signalling task.
pub(super) fn spawn(
    session: SessionId,
    request: HttpRequest,
    allow_private: bool,
    commands: mpsc::Sender<Command>,
) {
    tokio::spawn(async move {
        let id = request.id;
        let result = tokio::time::timeout(request.timeout, fetch(&request, allow_private))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        if let Err(error) = &result {
            tracing::info!(session, url = %request.url, %error, "IVR http node failed");
        }
        let _ = commands
            .send(Command::HttpDone {
                session,
                id,
                result,
            })
            .await;
    });
}

async fn fetch(request: &HttpRequest, allow_private: bool) -> Result<serde_json::Value, String> {
    let url = reqwest::Url::parse(&request.url).map_err(|e| format!("bad URL: {e}"))?;
    let host = url.host_str().ok_or("the URL has no host")?.to_owned();
    let port = url.port_or_known_default().ok_or("the URL has no port")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    let policy = PeerPolicy::default();
    let address = addresses
        .into_iter()
        .find(|a| allow_private || policy.permits(a.ip()))
        .ok_or_else(|| format!("{host} resolves only to addresses flows may not reach"))?;
    // reqwest's rustls uses the process's default provider: ring, as the SIP and TURN
    // servers do (installing it again is a no-op).
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .resolve(bare, address)
        .redirect(reqwest::redirect::Policy::none())
        // A proxy from the environment would connect elsewhere than the address checked.
        .no_proxy()
        .timeout(request.timeout.max(Duration::from_millis(100)))
        .build()
        .map_err(|e| e.to_string())?;
    let builder = match request.method {
        Method::Get => client.get(url),
        Method::Post => client.post(url).json(&request.body),
    };
    let mut response = builder.send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("the answer is larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("the answer is not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    /// A server on loopback answering every connection with `status` and `body`.
    async fn server(status: &'static str, body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let reply = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            }
        });
        address
    }

    fn request(url: String) -> HttpRequest {
        HttpRequest {
            id: 1,
            method: Method::Get,
            url,
            body: None,
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn fetches_json_and_refuses_what_flows_may_not_reach() {
        let ok = server("200 OK", r#"{"tier": "gold"}"#).await;
        let url = format!("http://{ok}/lookup");
        assert_eq!(
            fetch(&request(url.clone()), true).await,
            Ok(serde_json::json!({"tier": "gold"}))
        );
        // Loopback is the server's own network: refused unless allowed.
        let refused = fetch(&request(url), false).await.unwrap_err();
        assert!(refused.contains("may not reach"), "{refused}");
        let failing = server("500 Internal Server Error", "{}").await;
        assert_eq!(
            fetch(&request(format!("http://{failing}/")), true).await,
            Err("HTTP 500".into())
        );
        let not_json = server("200 OK", "hello").await;
        let error = fetch(&request(format!("http://{not_json}/")), true)
            .await
            .unwrap_err();
        assert!(error.contains("not JSON"), "{error}");
    }
}
