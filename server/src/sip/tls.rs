//! The TLS server configuration for SIP over TLS: the configured certificate and key
//! (`sip.tls_cert`, `sip.tls_key`, PEM), or a self-signed certificate for `localhost` and the
//! advertised address, generated once into `<data_dir>/tls/` and reused after, so phones
//! that were told to trust it keep trusting it. rustls with the *ring* provider, TLS 1.2
//! and 1.3 (RFC 3261 §26.3.1 asks for TLS; SIP phones in the field still speak 1.2).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::Config;

/// The certificate and key files inside `<data_dir>/tls/` when none are configured.
const SELF_SIGNED: (&str, &str) = ("sip-self-signed.crt", "sip-self-signed.key");

/// The acceptor for `config`, generating the development certificate if needed.
pub(crate) fn acceptor(config: &Config, advertised: IpAddr) -> anyhow::Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(Arc::new(server_config(
        config, advertised,
    )?)))
}

/// The acceptor of the HTTPS listener: the same certificate, HTTP/1.1 named in ALPN (the
/// WebSocket upgrades of `/sip` and `/api/v1/events` need HTTP/1.1).
pub(crate) fn https_acceptor(config: &Config, advertised: IpAddr) -> anyhow::Result<TlsAcceptor> {
    let mut server = server_config(config, advertised)?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The TLS server configuration with the configured or generated certificate.
fn server_config(config: &Config, advertised: IpAddr) -> anyhow::Result<ServerConfig> {
    let (cert, key) = match (&config.sip.tls_cert, &config.sip.tls_key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        _ => {
            let dir = config.data_dir.join("tls");
            let (cert, key) = (dir.join(SELF_SIGNED.0), dir.join(SELF_SIGNED.1));
            if !cert.exists() || !key.exists() {
                self_signed(&dir, &cert, &key, advertised)?;
            }
            (cert, key)
        }
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .with_context(|| format!("reading {} (config key sip.tls_cert)", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(&key)
        .with_context(|| format!("reading {} (config key sip.tls_key)", key.display()))?;
    let server = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("the SIP TLS certificate and key do not match (sip.tls_cert, sip.tls_key)")?;
    Ok(server)
}

/// Writes a self-signed certificate for `localhost` and `advertised`, the key readable by
/// the owner only.
fn self_signed(dir: &Path, cert: &Path, key: &Path, advertised: IpAddr) -> anyhow::Result<()> {
    let names = vec!["localhost".to_owned(), advertised.to_string()];
    let generated = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed SIP TLS certificate")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    write_private(key, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert, generated.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::warn!(
        cert = %cert.display(),
        "SIP over TLS uses a generated self-signed certificate (for development); set \
         sip.tls_cert and sip.tls_key for production"
    );
    Ok(())
}

/// The TLS client of connections we open to trunk proxies: the system's trust anchors and
/// the certificates of `sip.tls_trust`; the proxy's certificate must name the trunk's host.
pub(crate) fn connector(config: &Config) -> anyhow::Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system trust anchor could not be read");
    }
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = &config.sip.tls_trust {
        let extra = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .with_context(|| format!("reading {} (config key sip.tls_trust)", path.display()))?;
        for cert in extra {
            roots.add(cert).with_context(|| {
                format!(
                    "a certificate in {} is not usable (config key sip.tls_trust)",
                    path.display()
                )
            })?;
        }
    }
    if roots.is_empty() {
        tracing::warn!("no TLS trust anchors: TLS trunks will fail (set sip.tls_trust)");
    }
    tracing::debug!(
        system = added,
        total = roots.len(),
        "TLS trust anchors for trunks"
    );
    let client = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(client)))
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let advertised = IpAddr::from([192, 0, 2, 7]);
        acceptor(&config, advertised).unwrap();
        let cert = dir.path().join("tls").join(SELF_SIGNED.0);
        let first = std::fs::read(&cert).unwrap();
        acceptor(&config, advertised).unwrap();
        assert_eq!(
            std::fs::read(&cert).unwrap(),
            first,
            "reused, not regenerated"
        );
        let key = dir.path().join("tls").join(SELF_SIGNED.1);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_configured_certificate_that_is_missing_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            sip: crate::config::SipConfig {
                tls_cert: Some(dir.path().join("missing.crt")),
                tls_key: Some(dir.path().join("missing.key")),
                ..crate::config::SipConfig::default()
            },
            ..Config::default()
        };
        let Err(error) = acceptor(&config, IpAddr::from([127, 0, 0, 1])) else {
            panic!("a missing certificate is an error");
        };
        assert!(format!("{error:#}").contains("sip.tls_cert"), "{error:#}");
    }
}
