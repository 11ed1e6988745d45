//! Trunk proxies' health: every proxy of a trunk calls can leave through is sent an OPTIONS
//! every [`QUALIFY`] (RFC 3261 §11), the first one [`QUALIFY`] after the trunk appears. Any response marks it up; no response (the transaction
//! times out) marks it down. Calls out go to the first proxy that is up, and a proxy that
//! answers an INVITE with 503 or not at all hands the call to the next one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_sip::message::{HeaderName, Headers, Method, Request};
use switchboard_sip::transaction::ClientKey;
use switchboard_sip::uri::Uri;

use super::Core;
use crate::peer::{Peer, Transport};
use crate::stats::SipStats;

/// How often each proxy is asked.
pub(super) const QUALIFY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Proxy {
    /// The host its OPTIONS names.
    host: String,
    transport: Transport,
    up: bool,
    next: Option<Instant>,
    pending: Option<ClientKey>,
    cseq: u32,
}

/// Every trunk proxy's health.
#[derive(Debug, Default)]
pub(super) struct TrunkHealth {
    proxies: HashMap<SocketAddr, Proxy>,
    by_key: HashMap<ClientKey, SocketAddr>,
}

impl TrunkHealth {
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.proxies
            .values()
            .filter(|p| p.pending.is_none())
            .filter_map(|p| p.next)
            .min()
    }

    /// Whether `proxy` answered its last OPTIONS (one never asked counts as up).
    pub(super) fn is_up(&self, proxy: SocketAddr) -> bool {
        self.proxies.get(&proxy).is_none_or(|p| p.up)
    }
}

impl Core {
    /// Asks about the proxies of every trunk calls can leave through, and forgets the others.
    pub(super) fn trunk_proxies_changed(&mut self) {
        let wanted: Vec<(SocketAddr, String, Transport)> = self
            .directory
            .trunks()
            .filter_map(|t| t.outbound.as_deref())
            .flat_map(|o| o.proxies.iter().map(|p| (*p, o.host.clone(), o.transport)))
            .collect();
        let health = &mut self.trunk_health;
        health
            .proxies
            .retain(|address, _| wanted.iter().any(|(a, ..)| a == address));
        health
            .by_key
            .retain(|_, address| wanted.iter().any(|(a, ..)| a == address));
        for (address, host, transport) in wanted {
            let proxy = health.proxies.entry(address).or_insert(Proxy {
                host: String::new(),
                transport,
                up: true,
                next: None,
                pending: None,
                cseq: 0,
            });
            proxy.host = host;
            proxy.transport = transport;
        }
        self.count_down();
    }

    fn count_down(&mut self) {
        let down = self.trunk_health.proxies.values().filter(|p| !p.up).count();
        SipStats::set(&self.stats.trunk_proxies_down, down as u64);
    }

    /// Sends the OPTIONS that are due.
    pub(super) fn trunk_health_timers(&mut self, now: Instant) {
        for proxy in self.trunk_health.proxies.values_mut() {
            // A new proxy is first asked one period from now.
            proxy.next.get_or_insert(now + QUALIFY);
        }
        let due: Vec<(SocketAddr, Transport)> = self
            .trunk_health
            .proxies
            .iter()
            .filter(|(_, p)| p.pending.is_none() && p.next.is_none_or(|at| at <= now))
            .map(|(a, p)| (*a, p.transport))
            .collect();
        for (address, transport) in due {
            let peer = Peer {
                transport,
                addr: address,
                conn: None,
            };
            let via = self.our_via(peer);
            let from_tag = self.random_token();
            let call_id = format!("{}@switchboard", self.random_token());
            let Some(proxy) = self.trunk_health.proxies.get_mut(&address) else {
                continue;
            };
            proxy.cseq += 1;
            let mut headers = Headers::new();
            headers.push(HeaderName::Via, via);
            headers.push(HeaderName::MaxForwards, "70");
            headers.push(
                HeaderName::From,
                format!("<sip:switchboard@{}>;tag={from_tag}", proxy.host),
            );
            headers.push(HeaderName::To, format!("<sip:{}>", proxy.host));
            headers.push(HeaderName::CallId, call_id);
            headers.push(HeaderName::CSeq, format!("{} OPTIONS", proxy.cseq));
            headers.push(HeaderName::UserAgent, self.config.server_name.clone());
            let Ok(uri) = Uri::parse(&format!("sip:{}", proxy.host)) else {
                continue;
            };
            let request = Request {
                method: Method::Options,
                uri,
                version: (2, 0),
                headers,
                body: Bytes::new(),
            };
            match self.transactions.send_request(now, request, peer, false) {
                Ok(key) => {
                    proxy.pending = Some(key.clone());
                    self.trunk_health.by_key.insert(key, address);
                }
                Err(error) => {
                    tracing::debug!(%error, %address, "could not send OPTIONS");
                    proxy.next = Some(now + QUALIFY);
                }
            }
        }
    }

    /// A response to one of our OPTIONS (any final response: the proxy is there); false if
    /// it is not one.
    pub(super) fn trunk_health_response(
        &mut self,
        now: Instant,
        key: &ClientKey,
        status: u16,
    ) -> bool {
        if status < 200 {
            return self.trunk_health.by_key.contains_key(key);
        }
        self.qualified(now, key, true)
    }

    /// One of our OPTIONS got no answer; false if it is not one.
    pub(super) fn trunk_health_timeout(&mut self, now: Instant, key: &ClientKey) -> bool {
        self.qualified(now, key, false)
    }

    fn qualified(&mut self, now: Instant, key: &ClientKey, up: bool) -> bool {
        let Some(address) = self.trunk_health.by_key.remove(key) else {
            return false;
        };
        if let Some(proxy) = self.trunk_health.proxies.get_mut(&address) {
            if proxy.up != up {
                if up {
                    tracing::info!(%address, "trunk proxy is up");
                } else {
                    tracing::warn!(%address, "trunk proxy is down: no answer to OPTIONS");
                }
            }
            proxy.up = up;
            proxy.pending = None;
            proxy.next = Some(now + QUALIFY);
        }
        self.count_down();
        true
    }
}
