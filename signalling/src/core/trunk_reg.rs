//! Registering with carriers: a credential trunk with `register` on keeps a binding at its
//! proxy (RFC 3261 §10.2). The first REGISTER goes out at the next timer run after the trunk
//! appears; a 401/407 is answered once per attempt with the trunk's credentials (§22.2); a 423
//! retries with the Min-Expires asked for (§10.2.8); a 2xx is refreshed at half the granted
//! time; a failure retries after 30 s, doubling to 15 minutes. A trunk that goes away or stops
//! registering is unregistered (Expires: 0) if it was registered.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngExt as _;
use switchboard_sip::digest::Challenge;
use switchboard_sip::header::NameAddr;
use switchboard_sip::message::{HeaderName, Headers, Method, Request, Response};
use switchboard_sip::transaction::ClientKey;
use switchboard_sip::uri::Uri;
use uuid::Uuid;

use super::{Core, Output};
use crate::directory::Trunk;
use crate::peer::Peer;
use crate::stats::SipStats;

/// The binding time we ask for.
const REQUESTED: u32 = 3600;
/// The first retry after a failure; doubles each time.
const RETRY_FIRST: Duration = Duration::from_secs(30);
/// The longest wait between retries.
const RETRY_MAX: Duration = Duration::from_secs(900);

/// Where a trunk's registration stands (for the API and metrics).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrunkRegState {
    /// A REGISTER is on its way.
    Registering,
    /// Registered for `expires` seconds from the 2xx.
    Registered {
        /// Seconds granted.
        expires: u32,
    },
    /// The last attempt failed; another follows.
    Failed {
        /// Why: the status and reason, or `timeout`.
        reason: String,
    },
    /// Not registered any more (the trunk was removed or stopped registering).
    Unregistered,
}

/// A trunk's registration changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkRegChange {
    /// The trunk.
    pub trunk: Uuid,
    /// Its new state.
    pub state: TrunkRegState,
}

/// One trunk's registration.
#[derive(Debug)]
struct Registration {
    /// `user@host` of the address of record.
    user: String,
    host: String,
    proxy: Peer,
    auth: (String, String),
    call_id: String,
    from_tag: String,
    cseq: u32,
    /// When to send the next REGISTER; `None`: at the next timer run.
    next: Option<Instant>,
    /// The REGISTER in flight, and whether it carries credentials already.
    pending: Option<(ClientKey, Request, bool)>,
    registered: bool,
    failures: u32,
    expires: u32,
}

/// Every trunk registration.
#[derive(Debug, Default)]
pub(super) struct TrunkRegs {
    regs: HashMap<Uuid, Registration>,
    by_key: HashMap<ClientKey, Uuid>,
}

impl TrunkRegs {
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.regs.values().filter_map(|r| r.next).min()
    }
}

impl Core {
    /// A trunk appeared, changed or went: start, keep or stop its registration.
    pub(super) fn trunk_changed(&mut self, trunk: Option<&Trunk>, id: Uuid) {
        let wanted = trunk.and_then(|t| {
            let outbound = t.outbound.as_ref()?;
            let user = outbound.register.clone()?;
            let proxy = outbound.peer(*outbound.proxies.first()?);
            Some((
                user,
                outbound.host.clone(),
                proxy,
                outbound.credentials.clone()?,
            ))
        });
        match (wanted, self.trunk_regs.regs.contains_key(&id)) {
            (Some((user, host, peer, auth)), _) => {
                let same = self.trunk_regs.regs.get(&id).is_some_and(|r| {
                    r.user == user && r.host == host && r.proxy == peer && r.auth == auth
                });
                if same {
                    return;
                }
                // A REGISTER of the old settings still in flight no longer counts.
                if let Some((key, _, _)) = self
                    .trunk_regs
                    .regs
                    .get_mut(&id)
                    .and_then(|r| r.pending.take())
                {
                    self.trunk_regs.by_key.remove(&key);
                }
                let call_id = format!("{}@switchboard", self.random_hex());
                let from_tag = self.random_hex();
                self.trunk_regs.regs.insert(
                    id,
                    Registration {
                        user,
                        host,
                        proxy: peer,
                        auth,
                        call_id,
                        from_tag,
                        cseq: 0,
                        next: None,
                        pending: None,
                        registered: false,
                        failures: 0,
                        expires: REQUESTED,
                    },
                );
            }
            (None, true) => {
                if let Some(mut reg) = self.trunk_regs.regs.remove(&id) {
                    if let Some((key, _, _)) = reg.pending.take() {
                        self.trunk_regs.by_key.remove(&key);
                    }
                    if reg.registered {
                        // Expires: 0 removes our binding (§10.2.2); its answer is not awaited.
                        let now = self.last_now;
                        if let Some(now) = now {
                            let request = self.register_request(&mut reg, 0, None);
                            let _ = self
                                .transactions
                                .send_request(now, request, reg.proxy, false);
                        }
                    }
                    self.trunk_reg_changed(id, TrunkRegState::Unregistered);
                }
            }
            (None, false) => {}
        }
    }

    fn random_hex(&mut self) -> String {
        let value: u64 = self.rng.random();
        format!("{value:016x}")
    }

    fn trunk_reg_changed(&mut self, trunk: Uuid, state: TrunkRegState) {
        let registered = self
            .trunk_regs
            .regs
            .values()
            .filter(|r| r.registered)
            .count();
        SipStats::set(&self.stats.trunks_registered, registered as u64);
        self.outputs
            .push_back(Output::TrunkRegistration(TrunkRegChange { trunk, state }));
    }

    /// A REGISTER of ours for `reg` asking for `expires` seconds.
    fn register_request(
        &mut self,
        reg: &mut Registration,
        expires: u32,
        authorization: Option<(HeaderName, String)>,
    ) -> Request {
        reg.cseq += 1;
        let aor = format!("sip:{}@{}", reg.user, reg.host);
        let mut headers = Headers::new();
        headers.push(HeaderName::Via, self.our_via(reg.proxy));
        headers.push(HeaderName::MaxForwards, "70");
        headers.push(HeaderName::From, format!("<{aor}>;tag={}", reg.from_tag));
        headers.push(HeaderName::To, format!("<{aor}>"));
        headers.push(HeaderName::CallId, reg.call_id.clone());
        headers.push(
            HeaderName::CSeq,
            format!("{} {}", reg.cseq, Method::Register.as_str()),
        );
        let contact = format!("<sip:{}@{}>", reg.user, self.local_for(reg.proxy.transport));
        headers.push(HeaderName::Contact, contact);
        headers.push(HeaderName::Expires, expires.to_string());
        headers.push(HeaderName::UserAgent, self.config.server_name.clone());
        if let Some((name, value)) = authorization {
            headers.push(name, value);
        }
        Request {
            method: Method::Register,
            uri: Uri::parse(&format!("sip:{}", reg.host))
                .unwrap_or_else(|_| Uri::parse("sip:invalid").expect("a valid URI")),
            version: (2, 0),
            headers,
            body: Bytes::new(),
        }
    }

    /// Sends the REGISTERs that are due.
    pub(super) fn trunk_reg_timers(&mut self, now: Instant) {
        let due: Vec<Uuid> = self
            .trunk_regs
            .regs
            .iter()
            .filter(|(_, r)| r.pending.is_none() && r.next.is_none_or(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.send_register(now, id, None);
        }
    }

    fn send_register(
        &mut self,
        now: Instant,
        id: Uuid,
        authorization: Option<(HeaderName, String)>,
    ) {
        let Some(mut reg) = self.trunk_regs.regs.remove(&id) else {
            return;
        };
        let with_auth = authorization.is_some();
        // A refresh keeps the state `registered`: the binding holds until it expires.
        let announce = !with_auth && !reg.registered;
        let expires = reg.expires;
        let request = self.register_request(&mut reg, expires, authorization);
        reg.next = Some(now + Duration::from_secs(3600));
        match self
            .transactions
            .send_request(now, request.clone(), reg.proxy, false)
        {
            Ok(key) => {
                self.trunk_regs.by_key.insert(key.clone(), id);
                reg.pending = Some((key, request, with_auth));
                self.trunk_regs.regs.insert(id, reg);
                if announce {
                    self.trunk_reg_changed(id, TrunkRegState::Registering);
                }
            }
            Err(error) => {
                self.trunk_regs.regs.insert(id, reg);
                self.trunk_reg_failed(now, id, format!("could not send: {error}"));
            }
        }
    }

    fn trunk_reg_failed(&mut self, now: Instant, id: Uuid, reason: String) {
        let Some(reg) = self.trunk_regs.regs.get_mut(&id) else {
            return;
        };
        reg.registered = false;
        reg.pending = None;
        let backoff = RETRY_FIRST
            .saturating_mul(1 << reg.failures.min(5))
            .min(RETRY_MAX);
        reg.failures += 1;
        reg.next = Some(now + backoff);
        SipStats::inc(&self.stats.trunk_register_failures);
        tracing::warn!(trunk = %id, %reason, retry_in = ?backoff, "trunk registration failed");
        self.trunk_reg_changed(id, TrunkRegState::Failed { reason });
    }

    /// A response to one of our REGISTERs; false if it is not one.
    pub(super) fn trunk_reg_response(
        &mut self,
        now: Instant,
        key: &ClientKey,
        response: &Response,
    ) -> bool {
        let Some(&id) = self.trunk_regs.by_key.get(key) else {
            return false;
        };
        if response.status < 200 {
            return true;
        }
        self.trunk_regs.by_key.remove(key);
        let Some(reg) = self.trunk_regs.regs.get_mut(&id) else {
            return true;
        };
        let Some((_, request, with_auth)) = reg.pending.take() else {
            return true;
        };
        match response.status {
            200..=299 => {
                let granted = granted_expires(response, &request).unwrap_or(reg.expires);
                reg.registered = granted > 0;
                reg.failures = 0;
                reg.next = Some(now + Duration::from_secs(u64::from(granted.max(2)) / 2));
                self.trunk_reg_changed(id, TrunkRegState::Registered { expires: granted });
            }
            401 | 407 if !with_auth => {
                let (challenge_header, answer_header) = if response.status == 407 {
                    (
                        HeaderName::ProxyAuthenticate,
                        HeaderName::ProxyAuthorization,
                    )
                } else {
                    (HeaderName::WwwAuthenticate, HeaderName::Authorization)
                };
                let challenge = response
                    .headers
                    .get_all(&challenge_header)
                    .find_map(|v| Challenge::parse(v).ok());
                let Some(challenge) = challenge else {
                    self.trunk_reg_failed(
                        now,
                        id,
                        format!("{} without a challenge", response.status),
                    );
                    return true;
                };
                let (user, password) = reg.auth.clone();
                let uri = request.uri.to_string();
                let cnonce = self.random_hex();
                let answer = challenge.answer(&user, &password, "REGISTER", &uri, &cnonce, 1);
                self.send_register(now, id, Some((answer_header, answer)));
            }
            423 => {
                let min = response
                    .headers
                    .get(&HeaderName::MinExpires)
                    .and_then(|v| v.trim().parse::<u32>().ok());
                match min {
                    Some(min) if min > reg.expires => {
                        reg.expires = min;
                        reg.next = None;
                    }
                    _ => self.trunk_reg_failed(now, id, "423 without a usable Min-Expires".into()),
                }
            }
            status => {
                let reason = format!("{status} {}", response.reason);
                self.trunk_reg_failed(now, id, reason);
            }
        }
        true
    }

    /// One of our REGISTERs got no answer; false if it is not one.
    pub(super) fn trunk_reg_timeout(&mut self, now: Instant, key: &ClientKey) -> bool {
        let Some(id) = self.trunk_regs.by_key.remove(key) else {
            return false;
        };
        self.trunk_reg_failed(now, id, "timeout".into());
        true
    }
}

/// The binding time a 2xx grants our contact: its Contact's `expires`, else `Expires`.
fn granted_expires(response: &Response, request: &Request) -> Option<u32> {
    let ours = request.headers.get(&HeaderName::Contact)?;
    let ours = NameAddr::parse(ours).ok()?.uri.to_owned();
    let from_contact = response
        .headers
        .get_all(&HeaderName::Contact)
        .flat_map(|v| v.split(','))
        .filter_map(|v| NameAddr::parse(v.trim()).ok())
        .find(|c| c.uri == ours)
        .and_then(|c| c.params.get("expires").flatten()?.parse().ok());
    from_contact.or_else(|| {
        response
            .headers
            .get(&HeaderName::Expires)?
            .trim()
            .parse()
            .ok()
    })
}
