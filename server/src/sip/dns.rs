//! Where a trunk's proxies are (RFC 3263 §4.2): an address is used as it is; a host name
//! with a port is looked up for A and AAAA records; a host name without one is first looked
//! up for SRV records of its transport (`_sip._udp`, `_sip._tcp`, `_sips._tcp`), tried by
//! priority, then weight (RFC 2782), each target looked up for A and AAAA; a name with no SRV
//! record is looked up for A and AAAA on the transport's default port (5060, 5061 for TLS).
//! NAPTR is not looked up: a trunk's transport is configured.
//!
//! The resolver is hickory's: the system's `/etc/resolv.conf`, or the name servers of
//! `sip.dns_servers`. Every lookup is bounded by [`TIMEOUT`]; a name that does not resolve
//! gives no address (the trunk has no proxy until it is saved again or re-resolved).
//!
//! Certificates of TLS proxies are checked against the trunk's host name (RFC 5922 §4: the
//! domain that was looked up, not the SRV target); [`Dns::tls_name`] keeps that name for each
//! address for the connection that the shell opens.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use switchboard_signalling::peer::Transport;

/// Longest one name may take to resolve.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(5);
/// Addresses at most one host name gives (SRV targets and their addresses together).
const MAX_ADDRESSES: usize = 16;

/// The resolver, and the TLS names of the proxies it resolved.
pub(crate) struct Dns {
    /// `None` when the system's configuration cannot be read (a container without
    /// `/etc/resolv.conf`): host names then go to the system's own lookup (A/AAAA, hosts
    /// file), without SRV.
    resolver: Option<TokioResolver>,
    tls_names: Mutex<HashMap<SocketAddr, String>>,
}

impl Dns {
    /// The system's resolver, or one that asks `servers` (address and port each) only.
    pub(crate) fn new(servers: &[SocketAddr]) -> anyhow::Result<Self> {
        let provider = TokioRuntimeProvider::default();
        let builder = if servers.is_empty() {
            match TokioResolver::builder(provider) {
                Ok(builder) => builder,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        "the system's DNS configuration cannot be read: trunk hosts are looked up \
                         without SRV (set sip.dns_servers)"
                    );
                    return Ok(Self {
                        resolver: None,
                        tls_names: Mutex::new(HashMap::new()),
                    });
                }
            }
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                provider,
            )
        };
        let mut builder = builder;
        builder.options_mut().timeout = Duration::from_secs(2);
        builder.options_mut().attempts = 2;
        let resolver = builder
            .build()
            .map_err(|e| anyhow::anyhow!("starting the DNS resolver (sip.dns_servers): {e}"))?;
        Ok(Self {
            resolver: Some(resolver),
            tls_names: Mutex::new(HashMap::new()),
        })
    }

    /// The name a TLS proxy's certificate must carry.
    pub(crate) fn tls_name(&self, addr: SocketAddr) -> Option<String> {
        self.tls_names.lock().ok()?.get(&addr).cloned()
    }

    /// The addresses of proxy `host` over `transport` (`port` if configured), best first.
    pub(crate) async fn proxies(
        &self,
        host: &str,
        port: Option<u16>,
        transport: Transport,
    ) -> Vec<SocketAddr> {
        let default_port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let found = if let Ok(ip) = bare.parse::<IpAddr>() {
            vec![SocketAddr::new(ip, port.unwrap_or(default_port))]
        } else if let Some(port) = port {
            self.addresses(host, port).await
        } else {
            match self.srv(host, transport).await {
                Some(targets) => {
                    let mut found = Vec::new();
                    for (target, port) in targets {
                        found.extend(self.addresses(&target, port).await);
                    }
                    found
                }
                None => self.addresses(host, default_port).await,
            }
        };
        let mut unique = Vec::with_capacity(found.len());
        for addr in found {
            if !unique.contains(&addr) && unique.len() < MAX_ADDRESSES {
                unique.push(addr);
            }
        }
        if transport == Transport::Tls
            && let Ok(mut names) = self.tls_names.lock()
        {
            for addr in &unique {
                names.insert(*addr, bare.to_owned());
            }
        }
        unique
    }

    /// The A and AAAA records of `host`, on `port`.
    pub(crate) async fn addresses(&self, host: &str, port: u16) -> Vec<SocketAddr> {
        let found = match &self.resolver {
            Some(resolver) => {
                let lookup = resolver.lookup_ip(fqdn(host));
                tokio::time::timeout(TIMEOUT, lookup).await.map(|found| {
                    found
                        .map(|found| found.iter().map(|ip| SocketAddr::new(ip, port)).collect())
                        .map_err(|e| e.to_string())
                })
            }
            None => {
                let lookup = tokio::net::lookup_host((host, port));
                tokio::time::timeout(TIMEOUT, lookup).await.map(|found| {
                    found
                        .map(Iterator::collect::<Vec<_>>)
                        .map_err(|e| e.to_string())
                })
            }
        };
        match found {
            Ok(Ok(mut found)) => {
                // Answers rotate (round robin): one order, so a re-resolution that found the
                // same addresses changes nothing.
                found.sort();
                found
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, host, "trunk host does not resolve");
                Vec::new()
            }
            Err(_) => {
                tracing::warn!(host, "trunk host took too long to resolve");
                Vec::new()
            }
        }
    }

    /// The SRV targets of `host` for `transport`, in the order to try them; `None` when it
    /// has no SRV record (or the lookup failed), so its A/AAAA records are used.
    async fn srv(&self, host: &str, transport: Transport) -> Option<Vec<(String, u16)>> {
        let service = match transport {
            Transport::Tls | Transport::Wss => "_sips._tcp",
            Transport::Tcp | Transport::Ws => "_sip._tcp",
            Transport::Udp => "_sip._udp",
        };
        let name = format!("{service}.{}", fqdn(host));
        let resolver = self.resolver.as_ref()?;
        let lookup = match tokio::time::timeout(TIMEOUT, resolver.srv_lookup(name)).await {
            Ok(Ok(lookup)) => lookup,
            Ok(Err(error)) => {
                tracing::debug!(%error, host, "no SRV record; using A/AAAA");
                return None;
            }
            Err(_) => {
                tracing::warn!(host, "SRV lookup took too long; using A/AAAA");
                return None;
            }
        };
        let mut records: Vec<(u16, u16, String, u16)> = lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::SRV(srv) => {
                    Some((srv.priority, srv.weight, srv.target.to_ascii(), srv.port))
                }
                _ => None,
            })
            .collect();
        // RFC 2782: lowest priority first; among equals the heavier first, then by name (a
        // deterministic order, so every node tries the same proxy first and a rotated answer
        // changes nothing).
        records.sort_by(|a, b| {
            (a.0, std::cmp::Reverse(a.1), &a.2, a.3).cmp(&(b.0, std::cmp::Reverse(b.1), &b.2, b.3))
        });
        // A target of "." says the service is not offered there.
        let targets: Vec<(String, u16)> = records
            .into_iter()
            .filter(|(_, _, target, _)| target != ".")
            .map(|(_, _, target, port)| (target, port))
            .collect();
        (!targets.is_empty()).then_some(targets)
    }
}

/// `host` as a fully qualified name (no search domains appended).
fn fqdn(host: &str) -> String {
    if host.ends_with('.') {
        host.to_owned()
    } else {
        format!("{host}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_looked_up_as_fully_qualified() {
        assert_eq!(fqdn("sip.telnyx.com"), "sip.telnyx.com.");
        assert_eq!(fqdn("sip.telnyx.com."), "sip.telnyx.com.");
    }

    #[tokio::test]
    async fn addresses_are_used_as_they_are_with_the_transports_default_port() {
        // A name server nobody answers on: an address literal never asks it.
        let dns = Dns::new(&[SocketAddr::from(([127, 0, 0, 1], 9))]).unwrap();
        assert_eq!(
            dns.proxies("192.0.2.7", None, Transport::Udp).await,
            [SocketAddr::from(([192, 0, 2, 7], 5060))]
        );
        assert_eq!(
            dns.proxies("192.0.2.7", None, Transport::Tls).await,
            [SocketAddr::from(([192, 0, 2, 7], 5061))]
        );
        assert_eq!(
            dns.proxies("[2001:db8::7]", Some(5080), Transport::Tcp)
                .await,
            ["[2001:db8::7]:5080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(
            dns.tls_name(SocketAddr::from(([192, 0, 2, 7], 5061))),
            Some("192.0.2.7".into())
        );
    }

    #[tokio::test]
    async fn without_a_resolver_names_go_to_the_systems_lookup() {
        let dns = Dns {
            resolver: None,
            tls_names: Mutex::new(HashMap::new()),
        };
        let found = dns.proxies("localhost", None, Transport::Tcp).await;
        assert!(
            found.contains(&SocketAddr::from(([127, 0, 0, 1], 5060))),
            "{found:?}"
        );
        assert!(
            dns.proxies("nothing.invalid", None, Transport::Udp)
                .await
                .is_empty()
        );
    }
}
