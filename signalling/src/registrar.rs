//! The registrar's location service (RFC 3261 §10.3): which contacts each extension is
//! reachable at, until when, and over which connection.
//!
//! A REGISTER is applied all or nothing: every Contact is checked first (Expires bounds,
//! Call-ID/CSeq ordering), and only then are bindings added, refreshed or removed. Bindings
//! carrying RFC 5626 `+sip.instance` and `reg-id` are identified by that pair, so a browser
//! that reconnects with a new Contact replaces its old binding instead of adding one. Each
//! extension keeps at most `max_contacts` bindings; a new one beyond that evicts the binding
//! closest to expiry (as Asterisk's `remove_existing` does).
//!
//! Calls are delivered to the address a REGISTER came from (the NAT-facing source and, for
//! stream transports, its connection), not to the private address a phone puts in Contact.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use switchboard_sip::header::{NameAddr, parse_number};
use switchboard_sip::message::{HeaderName, Request};
use switchboard_sip::uri::Uri;
use uuid::Uuid;

use crate::peer::Peer;

/// Registrar limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Shortest registration accepted (shorter ones get 423 with Min-Expires).
    pub min_expires: u32,
    /// Longest registration granted (longer requests are shortened to it).
    pub max_expires: u32,
    /// Lifetime when the REGISTER names none.
    pub default_expires: u32,
    /// Bindings per extension.
    pub max_contacts: usize,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 10,
        }
    }
}

/// One contact of one extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Storage id of the binding.
    pub id: Uuid,
    /// The Contact URI as registered.
    pub contact: String,
    /// RFC 5626 instance id (`+sip.instance`), if given.
    pub instance: Option<String>,
    /// RFC 5626 `reg-id`, if given.
    pub reg_id: Option<u32>,
    /// Where the REGISTER came from: where requests for this contact go.
    pub peer: Peer,
    /// Call-ID of the registering dialog.
    pub call_id: String,
    /// Highest CSeq seen for that Call-ID.
    pub cseq: u32,
    /// When the binding lapses.
    pub expires_at: Instant,
    /// User-Agent of the phone.
    pub user_agent: String,
}

/// A change of bindings, to persist and to announce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A binding was added or refreshed.
    Upsert {
        /// Tenant.
        tenant_id: Uuid,
        /// Extension.
        extension_id: Uuid,
        /// The binding after the change.
        binding: Binding,
        /// Whether the contact is new (rather than a refresh of a binding that existed).
        new: bool,
    },
    /// A binding was removed (un-REGISTER, replacement, eviction or expiry).
    Remove {
        /// Tenant.
        tenant_id: Uuid,
        /// Extension.
        extension_id: Uuid,
        /// Its Contact URI.
        contact: String,
        /// Whether it lapsed (rather than being removed by a request).
        expired: bool,
    },
}

/// Why a REGISTER was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// A requested lifetime is shorter than the minimum: answer 423 with `Min-Expires`.
    #[error("interval too brief")]
    IntervalTooBrief {
        /// The minimum to advertise.
        min_expires: u32,
    },
    /// The Contact or Expires headers are malformed: answer 400.
    #[error("{0}")]
    Invalid(&'static str),
    /// A CSeq not above the last one of the same Call-ID: answer 500 (§10.3 step 7).
    #[error("REGISTER out of order")]
    OutOfOrder,
}

struct Entry {
    tenant_id: Uuid,
    bindings: Vec<Binding>,
}

/// The location service.
pub struct Registrar {
    config: RegistrarConfig,
    entries: HashMap<Uuid, Entry>,
    expiries: BinaryHeap<Reverse<(Instant, Uuid)>>,
    /// Extensions that registered over each open stream connection (some may have moved
    /// since: checked when the connection closes).
    by_conn: HashMap<u64, Vec<Uuid>>,
}

/// One Contact of a REGISTER, checked.
struct Requested {
    contact: String,
    instance: Option<String>,
    reg_id: Option<u32>,
    expires: u32,
}

fn same_contact(a: &str, b: &str) -> bool {
    match (Uri::parse(a), Uri::parse(b)) {
        (Ok(Uri::Sip(a)), Ok(Uri::Sip(b))) => a.equivalent(&b),
        _ => a == b,
    }
}

impl Registrar {
    /// An empty location service.
    pub fn new(config: RegistrarConfig) -> Self {
        Self {
            config,
            entries: HashMap::new(),
            expiries: BinaryHeap::new(),
            by_conn: HashMap::new(),
        }
    }

    /// The live bindings of an extension.
    pub fn bindings(&self, extension_id: Uuid) -> &[Binding] {
        self.entries.get(&extension_id).map_or(&[], |e| &e.bindings)
    }

    /// All extensions with bindings, and their bindings.
    pub fn all(&self) -> impl Iterator<Item = (Uuid, Uuid, &Binding)> {
        self.entries.iter().flat_map(|(ext, entry)| {
            entry
                .bindings
                .iter()
                .map(move |b| (entry.tenant_id, *ext, b))
        })
    }

    /// Number of bindings.
    pub fn len(&self) -> usize {
        self.entries.values().map(|e| e.bindings.len()).sum()
    }

    /// Whether there are no bindings.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Re-installs a binding loaded from storage at start-up.
    pub fn restore(&mut self, tenant_id: Uuid, extension_id: Uuid, binding: Binding) {
        self.expiries
            .push(Reverse((binding.expires_at, extension_id)));
        let entry = self.entries.entry(extension_id).or_insert_with(|| Entry {
            tenant_id,
            bindings: Vec::new(),
        });
        entry
            .bindings
            .retain(|b| !same_contact(&b.contact, &binding.contact));
        entry.bindings.push(binding);
    }

    /// Forgets every binding of a deleted extension.
    pub fn remove_extension(&mut self, extension_id: Uuid) {
        self.entries.remove(&extension_id);
    }

    /// Applies an authenticated REGISTER for `extension_id` that came from `peer`. `new_id`
    /// gives ids to new bindings. Returns the changes; on error nothing changed.
    pub fn register(
        &mut self,
        now: Instant,
        tenant_id: Uuid,
        extension_id: Uuid,
        request: &Request,
        peer: Peer,
        mut new_id: impl FnMut() -> Uuid,
    ) -> Result<Vec<Change>, RegisterError> {
        let headers = &request.headers;
        let call_id = headers
            .get(&HeaderName::CallId)
            .unwrap_or_default()
            .to_owned();
        // Parsed messages have a valid CSeq.
        let cseq = headers
            .get(&HeaderName::CSeq)
            .and_then(|c| switchboard_sip::header::CSeq::parse(c).ok())
            .map_or(0, |c| c.seq);
        let user_agent = headers
            .get(&HeaderName::UserAgent)
            .unwrap_or_default()
            .to_owned();
        let default = match headers.get(&HeaderName::Expires) {
            Some(value) => u32::try_from(
                parse_number(value, u64::from(u32::MAX))
                    .map_err(|_| RegisterError::Invalid("bad Expires"))?,
            )
            .unwrap_or(u32::MAX),
            None => self.config.default_expires,
        };
        let contacts: Vec<&str> = headers.get_all(&HeaderName::Contact).collect();
        let existing = self
            .entries
            .get(&extension_id)
            .map(|e| e.bindings.clone())
            .unwrap_or_default();
        let out_of_order = |b: &Binding| b.call_id == call_id && cseq <= b.cseq;

        // `Contact: *` removes everything (§10.3 step 6), only with Expires: 0 and alone.
        if contacts.contains(&"*") {
            if contacts.len() != 1 || default != 0 {
                return Err(RegisterError::Invalid(
                    "Contact: * needs Expires: 0 and no other Contact",
                ));
            }
            if existing.iter().any(out_of_order) {
                return Err(RegisterError::OutOfOrder);
            }
            let removed = self
                .entries
                .remove(&extension_id)
                .map(|e| e.bindings)
                .unwrap_or_default();
            return Ok(removed
                .into_iter()
                .map(|b| Change::Remove {
                    tenant_id,
                    extension_id,
                    contact: b.contact,
                    expired: false,
                })
                .collect());
        }

        let mut requested = Vec::with_capacity(contacts.len());
        for value in contacts {
            let addr = NameAddr::parse(value).map_err(|_| RegisterError::Invalid("bad Contact"))?;
            let expires = match addr.params.get("expires") {
                Some(Some(v)) => u32::try_from(
                    parse_number(v, u64::from(u32::MAX))
                        .map_err(|_| RegisterError::Invalid("bad expires"))?,
                )
                .unwrap_or(u32::MAX),
                Some(None) => return Err(RegisterError::Invalid("bad expires")),
                None => default,
            };
            if expires != 0 && expires < self.config.min_expires {
                return Err(RegisterError::IntervalTooBrief {
                    min_expires: self.config.min_expires,
                });
            }
            let instance = addr
                .params
                .get("+sip.instance")
                .flatten()
                .map(|v| v.trim_matches('"').to_owned());
            let reg_id = addr
                .params
                .get("reg-id")
                .flatten()
                .and_then(|v| v.parse().ok());
            requested.push(Requested {
                contact: addr.uri.to_owned(),
                instance,
                reg_id,
                expires: expires.min(self.config.max_expires),
            });
        }

        // Check ordering against every binding a contact would touch before changing anything.
        let matches =
            |b: &Binding, r: &Requested| match (&r.instance, r.reg_id, &b.instance, b.reg_id) {
                (Some(i), Some(id), Some(bi), Some(bid)) => i == bi && id == bid,
                _ => same_contact(&b.contact, &r.contact),
            };
        for r in &requested {
            if existing.iter().any(|b| matches(b, r) && out_of_order(b)) {
                return Err(RegisterError::OutOfOrder);
            }
        }

        let mut bindings = existing;
        let mut changes = Vec::new();
        for r in requested {
            let position = bindings.iter().position(|b| matches(b, &r));
            if r.expires == 0 {
                if let Some(at) = position {
                    let removed = bindings.remove(at);
                    changes.push(Change::Remove {
                        tenant_id,
                        extension_id,
                        contact: removed.contact,
                        expired: false,
                    });
                }
                continue;
            }
            let expires_at = now + Duration::from_secs(u64::from(r.expires));
            let (binding, new) = match position {
                Some(at) => {
                    let old = bindings.remove(at);
                    let moved = !same_contact(&old.contact, &r.contact);
                    if moved {
                        // RFC 5626: the same instance came back with a new Contact.
                        changes.push(Change::Remove {
                            tenant_id,
                            extension_id,
                            contact: old.contact.clone(),
                            expired: false,
                        });
                    }
                    let binding = Binding {
                        id: old.id,
                        contact: r.contact,
                        instance: r.instance,
                        reg_id: r.reg_id,
                        peer,
                        call_id: call_id.clone(),
                        cseq,
                        expires_at,
                        user_agent: user_agent.clone(),
                    };
                    (binding, moved)
                }
                None => {
                    if bindings.len() >= self.config.max_contacts
                        && let Some(at) = bindings
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, b)| b.expires_at)
                            .map(|(i, _)| i)
                    {
                        let evicted = bindings.remove(at);
                        changes.push(Change::Remove {
                            tenant_id,
                            extension_id,
                            contact: evicted.contact,
                            expired: false,
                        });
                    }
                    let binding = Binding {
                        id: new_id(),
                        contact: r.contact,
                        instance: r.instance,
                        reg_id: r.reg_id,
                        peer,
                        call_id: call_id.clone(),
                        cseq,
                        expires_at,
                        user_agent: user_agent.clone(),
                    };
                    (binding, true)
                }
            };
            self.expiries.push(Reverse((expires_at, extension_id)));
            changes.push(Change::Upsert {
                tenant_id,
                extension_id,
                binding: binding.clone(),
                new,
            });
            bindings.push(binding);
        }
        if let Some(conn) = peer.conn {
            let extensions = self.by_conn.entry(conn).or_default();
            if !extensions.contains(&extension_id) {
                extensions.push(extension_id);
            }
        }
        if bindings.is_empty() {
            self.entries.remove(&extension_id);
        } else {
            self.entries.insert(
                extension_id,
                Entry {
                    tenant_id,
                    bindings,
                },
            );
        }
        Ok(changes)
    }

    /// Removes the bindings registered over stream connection `conn`, which closed: requests
    /// cannot reach them any more (RFC 5626 §5.2: the flow failed; the client registers again
    /// over a new one).
    pub fn connection_closed(&mut self, conn: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for extension_id in self.by_conn.remove(&conn).unwrap_or_default() {
            self.drop_bindings(
                extension_id,
                |b| b.peer.conn == Some(conn),
                false,
                &mut changes,
            );
        }
        changes
    }

    /// When the next binding may lapse.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.expiries.peek().map(|Reverse((at, _))| *at)
    }

    /// Removes bindings that lapsed by `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(Reverse((at, extension_id))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            self.drop_bindings(extension_id, |b| b.expires_at <= now, true, &mut changes);
        }
        changes
    }

    /// Removes the bindings of `extension_id` that `gone` picks, noting each in `changes`.
    fn drop_bindings(
        &mut self,
        extension_id: Uuid,
        gone: impl Fn(&Binding) -> bool,
        expired: bool,
        changes: &mut Vec<Change>,
    ) {
        let Some(entry) = self.entries.get_mut(&extension_id) else {
            return;
        };
        let tenant_id = entry.tenant_id;
        entry.bindings.retain(|b| {
            if !gone(b) {
                return true;
            }
            changes.push(Change::Remove {
                tenant_id,
                extension_id,
                contact: b.contact.clone(),
                expired,
            });
            false
        });
        if entry.bindings.is_empty() {
            self.entries.remove(&extension_id);
        }
    }
}

#[cfg(test)]
mod tests {
    // Virtual time needs one real origin.
    #![allow(clippy::disallowed_methods)]

    use std::net::SocketAddr;

    use switchboard_sip::message::{Limits, Message};

    use super::*;
    use crate::peer::Transport;

    fn register(call_id: &str, cseq: u32, contacts: &[&str], expires: Option<u32>) -> Request {
        let mut text = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bK{cseq}\r\n\
             From: <sip:1001@example.com>;tag=f\r\nTo: <sip:1001@example.com>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nUser-Agent: test-phone\r\n"
        );
        for contact in contacts {
            text.push_str(&format!("Contact: {contact}\r\n"));
        }
        if let Some(expires) = expires {
            text.push_str(&format!("Expires: {expires}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        match Message::parse(text.as_bytes(), &Limits::default()).unwrap() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        }
    }

    fn peer() -> Peer {
        Peer {
            transport: Transport::Udp,
            addr: SocketAddr::from(([198, 51, 100, 7], 40_000)),
            conn: None,
        }
    }

    fn setup(config: RegistrarConfig) -> (Registrar, Instant, Uuid, Uuid) {
        (
            Registrar::new(config),
            Instant::now(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        )
    }

    #[test]
    fn register_refresh_and_unregister() {
        let (mut r, now, tenant, ext) = setup(RegistrarConfig::default());
        let changes = r
            .register(
                now,
                tenant,
                ext,
                &register("c1", 1, &["<sip:1001@192.168.1.5:5060>"], Some(600)),
                peer(),
                Uuid::new_v4,
            )
            .unwrap();
        assert!(
            matches!(&changes[..], [Change::Upsert { binding, .. }] if binding.expires_at == now + Duration::from_secs(600))
        );
        assert_eq!(r.bindings(ext)[0].peer, peer());
        // A refresh keeps the binding id and extends it; the contact param overrides Expires.
        let id = r.bindings(ext)[0].id;
        r.register(
            now,
            tenant,
            ext,
            &register(
                "c1",
                2,
                &["<sip:1001@192.168.1.5:5060>;expires=1200"],
                Some(600),
            ),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        assert_eq!(
            (r.bindings(ext)[0].id, r.bindings(ext)[0].expires_at),
            (id, now + Duration::from_secs(1200))
        );
        // Longer than allowed is shortened.
        r.register(
            now,
            tenant,
            ext,
            &register("c1", 3, &["<sip:1001@192.168.1.5:5060>"], Some(99_999)),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        assert_eq!(
            r.bindings(ext)[0].expires_at,
            now + Duration::from_secs(3600)
        );
        // Expires: 0 removes it.
        let changes = r
            .register(
                now,
                tenant,
                ext,
                &register("c1", 4, &["<sip:1001@192.168.1.5:5060>"], Some(0)),
                peer(),
                Uuid::new_v4,
            )
            .unwrap();
        assert!(matches!(
            &changes[..],
            [Change::Remove { expired: false, .. }]
        ));
        assert!(r.is_empty());
    }

    #[test]
    fn several_contacts_star_and_out_of_order() {
        let (mut r, now, tenant, ext) = setup(RegistrarConfig::default());
        r.register(
            now,
            tenant,
            ext,
            &register("c1", 5, &["<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>"], None),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        assert_eq!(r.bindings(ext).len(), 2);
        // Equivalent URIs (§19.1.4) are the same binding.
        r.register(
            now,
            tenant,
            ext,
            &register("c1", 6, &["<sip:a@192.0.2.1;foo=bar>"], None),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        assert_eq!(r.bindings(ext).len(), 2);
        // Same Call-ID with an old CSeq fails and changes nothing.
        let stale = register("c1", 6, &["<sip:c@192.0.2.3>", "<sip:a@192.0.2.1>"], None);
        assert_eq!(
            r.register(now, tenant, ext, &stale, peer(), Uuid::new_v4),
            Err(RegisterError::OutOfOrder)
        );
        assert_eq!(r.bindings(ext).len(), 2);
        // Contact: * needs Expires: 0.
        assert!(matches!(
            r.register(
                now,
                tenant,
                ext,
                &register("c1", 7, &["*"], None),
                peer(),
                Uuid::new_v4
            ),
            Err(RegisterError::Invalid(_))
        ));
        let changes = r
            .register(
                now,
                tenant,
                ext,
                &register("c1", 8, &["*"], Some(0)),
                peer(),
                Uuid::new_v4,
            )
            .unwrap();
        assert_eq!(changes.len(), 2);
        assert!(r.is_empty());
    }

    #[test]
    fn too_brief_and_malformed_change_nothing() {
        let (mut r, now, tenant, ext) = setup(RegistrarConfig::default());
        let brief = register(
            "c1",
            1,
            &["<sip:a@192.0.2.1>", "<sip:b@192.0.2.2>;expires=30"],
            None,
        );
        assert_eq!(
            r.register(now, tenant, ext, &brief, peer(), Uuid::new_v4),
            Err(RegisterError::IntervalTooBrief { min_expires: 60 })
        );
        assert!(r.is_empty());
        let bad = register("c1", 2, &["<sip:a@192.0.2.1>;expires=soon"], None);
        assert!(matches!(
            r.register(now, tenant, ext, &bad, peer(), Uuid::new_v4),
            Err(RegisterError::Invalid(_))
        ));
    }

    #[test]
    fn instance_replaces_and_contacts_are_bounded() {
        let config = RegistrarConfig {
            max_contacts: 2,
            ..RegistrarConfig::default()
        };
        let (mut r, now, tenant, ext) = setup(config);
        let browser = |host: &str, cseq| {
            register(
                "ws1",
                cseq,
                &[&format!(
                    "<sip:x@{host};transport=ws>;+sip.instance=\"<urn:uuid:1>\";reg-id=1"
                )],
                Some(600),
            )
        };
        r.register(
            now,
            tenant,
            ext,
            &browser("a.invalid", 1),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        let changes = r
            .register(
                now,
                tenant,
                ext,
                &browser("b.invalid", 2),
                peer(),
                Uuid::new_v4,
            )
            .unwrap();
        assert!(
            matches!(&changes[..], [Change::Remove { contact, .. }, Change::Upsert { .. }] if contact.contains("a.invalid"))
        );
        assert_eq!(r.bindings(ext).len(), 1);
        assert_eq!(r.bindings(ext)[0].instance.as_deref(), Some("<urn:uuid:1>"));
        // Two more plain contacts: the one closest to expiry is evicted.
        r.register(
            now,
            tenant,
            ext,
            &register("p1", 1, &["<sip:desk@192.0.2.9>"], Some(3000)),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        let changes = r
            .register(
                now,
                tenant,
                ext,
                &register("p2", 1, &["<sip:soft@192.0.2.8>"], Some(3000)),
                peer(),
                Uuid::new_v4,
            )
            .unwrap();
        assert!(
            matches!(&changes[0], Change::Remove { contact, .. } if contact.contains("b.invalid"))
        );
        assert_eq!(r.bindings(ext).len(), 2);
    }

    #[test]
    fn a_closed_connection_takes_its_bindings_with_it() {
        let (mut r, now, tenant, ext) = setup(RegistrarConfig::default());
        let over = |conn| Peer {
            transport: Transport::Ws,
            conn: Some(conn),
            ..peer()
        };
        let browser = |call_id: &str, host: &str, instance: u32| {
            register(
                call_id,
                1,
                &[&format!(
                    "<sip:x@{host};transport=ws>;+sip.instance=\"<urn:uuid:{instance}>\";reg-id=1"
                )],
                Some(600),
            )
        };
        r.register(
            now,
            tenant,
            ext,
            &browser("a", "a.invalid", 1),
            over(7),
            Uuid::new_v4,
        )
        .unwrap();
        r.register(
            now,
            tenant,
            ext,
            &browser("b", "b.invalid", 2),
            over(8),
            Uuid::new_v4,
        )
        .unwrap();
        r.register(
            now,
            tenant,
            ext,
            &register("p", 1, &["<sip:desk@192.0.2.9>"], Some(600)),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        // The first browser came back over connection 9 before 7 was noticed closed.
        let mut again = browser("a", "c.invalid", 1);
        again.headers.set(HeaderName::CSeq, "2 REGISTER");
        r.register(now, tenant, ext, &again, over(9), Uuid::new_v4)
            .unwrap();
        assert_eq!(r.connection_closed(7), vec![]);
        let changes = r.connection_closed(8);
        assert!(
            matches!(&changes[..], [Change::Remove { contact, expired: false, .. }] if contact.contains("b.invalid")),
            "{changes:?}"
        );
        let left: Vec<_> = r.bindings(ext).iter().map(|b| b.contact.clone()).collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert_eq!(r.connection_closed(8), vec![]);
        r.connection_closed(9);
        r.connection_closed(0);
        assert_eq!(r.bindings(ext).len(), 1);
        assert!(r.by_conn.is_empty());
    }

    #[test]
    fn expiry_on_virtual_time() {
        let (mut r, now, tenant, ext) = setup(RegistrarConfig::default());
        r.register(
            now,
            tenant,
            ext,
            &register("c1", 1, &["<sip:a@192.0.2.1>"], Some(60)),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        r.register(
            now,
            tenant,
            ext,
            &register("c2", 1, &["<sip:b@192.0.2.2>"], Some(120)),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        assert_eq!(r.poll_timeout(), Some(now + Duration::from_secs(60)));
        assert!(r.expire(now + Duration::from_secs(59)).is_empty());
        let lapsed = r.expire(now + Duration::from_secs(60));
        assert!(
            matches!(&lapsed[..], [Change::Remove { expired: true, contact, .. }] if contact == "sip:a@192.0.2.1")
        );
        // A refresh moves the expiry: the stale heap entry for 120 s finds nothing to do.
        r.register(
            now,
            tenant,
            ext,
            &register("c2", 2, &["<sip:b@192.0.2.2>"], Some(600)),
            peer(),
            Uuid::new_v4,
        )
        .unwrap();
        assert!(r.expire(now + Duration::from_secs(120)).is_empty());
        assert_eq!(r.expire(now + Duration::from_secs(600)).len(), 1);
        assert!(r.is_empty());
    }
}
