//! The directory: tenants, extensions, trunks and numbers as call control needs them, in
//! memory.
//!
//! The signalling task never waits on the database. The shell loads the directory at start and
//! sends a [`Update`] after every change committed through the control plane; lookups are
//! hash-map reads. Extension SIP secrets are held in plaintext here (decrypted once, by the
//! shell) because digest verification needs them for every algorithm and realm.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

/// A tenant as call control sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    /// Id.
    pub id: Uuid,
    /// SIP domain (digest realm).
    pub domain: String,
    /// Whether its answered calls are recorded.
    pub record_calls: bool,
    /// The number its extensions present on calls out when they have none of their own.
    pub caller_id: Option<String>,
    /// Calls out at once, instead of the server's `max_concurrent_per_tenant`.
    pub max_outbound_calls: Option<usize>,
    /// Answered minutes out per UTC day, instead of the server's `daily_minutes_per_tenant`.
    pub daily_outbound_minutes: Option<u32>,
}

/// An extension as call control sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Extension {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Dialable number, also the digest username.
    pub number: String,
    /// Display name.
    pub display_name: String,
    /// SIP password.
    pub secret: String,
    /// Whether its answered calls (made or received) are recorded.
    pub record_calls: bool,
    /// Whether it may call numbers outside through trunks.
    pub outbound_allowed: bool,
    /// The number presented on its outbound calls (else the tenant's, else the extension's
    /// own number).
    pub caller_id: Option<String>,
    /// Where its calls are forwarded.
    pub forward: Forwarding,
}

/// An extension's call forwarding: each target is an extension number of its tenant or a
/// number outside (as the extension would dial it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Every call goes there instead.
    pub always: Option<String>,
    /// Calls go there when every phone of the extension is busy.
    pub busy: Option<String>,
    /// Calls go there when nobody answers in the ring time, or no phone is registered.
    pub no_answer: Option<String>,
}

impl std::fmt::Debug for Extension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extension")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("number", &self.number)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An IP network: an address and a prefix length (a host is /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    /// The network's address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Network {
    /// Whether `ip` is inside. An IPv4-mapped IPv6 address matches its IPv4 network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, width) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(n.to_bits()), u128::from(i.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (n.to_bits(), i.to_bits(), 128),
            _ => return false,
        };
        let prefix = u32::from(self.prefix).min(width);
        let shift = width - prefix;
        shift == width || (net >> shift) == (ip >> shift)
    }
}

/// A trunk as call control sees it: who may send us calls through it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trunk {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name (for logs).
    pub name: String,
    /// Sources inbound INVITEs are accepted from: an IP trunk's allowed sources, a credential
    /// trunk's proxies (host names resolved by the shell).
    pub sources: Vec<Network>,
    /// How calls go out through it.
    pub outbound: Option<Box<Outbound>>,
}

/// How calls leave through a trunk.
#[derive(Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The proxy's addresses, in order of preference (resolved by the shell: DNS SRV, else
    /// A/AAAA, RFC 3263 §4.2).
    pub proxies: Vec<std::net::SocketAddr>,
    /// The transport every proxy is reached over (a stream transport's connection is opened
    /// by the shell on the first message).
    pub transport: crate::peer::Transport,
    /// The host our Request-URI and To name (the proxy's name).
    pub host: String,
    /// Digest credentials for 401/407 challenges: username and password.
    pub credentials: Option<(String, String)>,
    /// Digits put in front of the number.
    pub tech_prefix: String,
    /// Extra headers on every INVITE (e.g. `X-Telnyx-Username`).
    pub headers: Vec<(String, String)>,
    /// Register with the carrier as this user (its address of record is `user@host`).
    pub register: Option<String>,
}

impl Outbound {
    /// Proxy `addr` as a peer to send to.
    pub fn peer(&self, addr: std::net::SocketAddr) -> crate::peer::Peer {
        crate::peer::Peer {
            transport: self.transport,
            addr,
            conn: None,
        }
    }
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("proxies", &self.proxies)
            .field("transport", &self.transport)
            .field("host", &self.host)
            .field("username", &self.credentials.as_ref().map(|c| &c.0))
            .finish()
    }
}

/// An outbound route: numbers starting with `prefix` (E.164 digits, no `+`) leave through
/// `trunk`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Leading digits; empty matches every number.
    pub prefix: String,
    /// The trunk.
    pub trunk_id: Uuid,
    /// Lower goes first among equally long prefixes.
    pub priority: i32,
}

/// Where a number routes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NumberTarget {
    /// An extension.
    Extension(Uuid),
    /// A ring group.
    RingGroup(Uuid),
    /// An IVR flow.
    IvrFlow(Uuid),
}

/// A number (DID) as call control sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// E.164 form, e.g. `+15551234567`.
    pub e164: String,
    /// Where calls to it go.
    pub target: NumberTarget,
}

/// A ring group: members rung together, or one after another for `ring_timeout` each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingGroup {
    /// Id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Name (IVR `dial` nodes name groups).
    pub name: String,
    /// Member extensions, in ringing order.
    pub members: Vec<Uuid>,
    /// One member at a time, in order.
    pub sequential: bool,
    /// How long to ring (each member, when sequential).
    pub ring_timeout: std::time::Duration,
}

/// The published version of an IVR flow, compiled.
#[derive(Clone, Debug)]
pub struct PublishedFlow {
    /// Flow id.
    pub id: Uuid,
    /// Tenant.
    pub tenant_id: Uuid,
    /// Version number.
    pub version: u32,
    /// The compiled graph.
    pub flow: Arc<crate::ivr::Flow>,
}

impl PartialEq for PublishedFlow {
    fn eq(&self, other: &Self) -> bool {
        (self.id, self.tenant_id, self.version) == (other.id, other.tenant_id, other.version)
    }
}

impl Eq for PublishedFlow {}

/// A change to the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// A tenant was created or changed.
    TenantUpsert(Tenant),
    /// A tenant was deleted.
    TenantRemove(Uuid),
    /// An extension was created or changed.
    ExtensionUpsert(Extension),
    /// An extension was deleted.
    ExtensionRemove(Uuid),
    /// A trunk was created or changed (a disabled trunk is removed instead).
    TrunkUpsert(Trunk),
    /// A trunk was deleted or disabled.
    TrunkRemove(Uuid),
    /// A number was created or changed.
    NumberUpsert(Number),
    /// A number was deleted.
    NumberRemove(Uuid),
    /// A flow was published.
    FlowUpsert(PublishedFlow),
    /// A flow was deleted.
    FlowRemove(Uuid),
    /// An outbound route was created or changed.
    RouteUpsert(Route),
    /// An outbound route was deleted.
    RouteRemove(Uuid),
    /// A ring group was created or changed.
    RingGroupUpsert(RingGroup),
    /// A ring group was deleted.
    RingGroupRemove(Uuid),
}

/// Tenants and extensions, indexed for call control.
#[derive(Debug, Default)]
pub struct Directory {
    tenants: HashMap<Uuid, Tenant>,
    by_domain: HashMap<String, Uuid>,
    default_tenant: Option<Uuid>,
    extensions: HashMap<Uuid, Extension>,
    by_number: HashMap<(Uuid, String), Uuid>,
    trunks: HashMap<Uuid, Trunk>,
    numbers: HashMap<Uuid, Number>,
    by_e164: HashMap<String, Uuid>,
    flows: HashMap<Uuid, PublishedFlow>,
    routes: HashMap<Uuid, Route>,
    ring_groups: HashMap<Uuid, RingGroup>,
}

impl Directory {
    /// An empty directory; requests for unknown domains go to `default_domain`'s tenant.
    pub fn new() -> Self {
        Self::default()
    }

    /// The tenant whose domain takes requests addressed to unknown hosts (phones often
    /// register to an IP address rather than a domain).
    pub fn set_default_domain(&mut self, domain: &str) {
        self.default_tenant = self.by_domain.get(&domain.to_ascii_lowercase()).copied();
    }

    /// Applies a change.
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::TenantUpsert(tenant) => {
                if let Some(old) = self.tenants.get(&tenant.id) {
                    self.by_domain.remove(&old.domain.to_ascii_lowercase());
                }
                self.by_domain
                    .insert(tenant.domain.to_ascii_lowercase(), tenant.id);
                self.tenants.insert(tenant.id, tenant);
            }
            Update::TenantRemove(id) => {
                if let Some(old) = self.tenants.remove(&id) {
                    self.by_domain.remove(&old.domain.to_ascii_lowercase());
                }
                if self.default_tenant == Some(id) {
                    self.default_tenant = None;
                }
            }
            Update::ExtensionUpsert(extension) => {
                if let Some(old) = self.extensions.get(&extension.id) {
                    self.by_number.remove(&(old.tenant_id, old.number.clone()));
                }
                self.by_number.insert(
                    (extension.tenant_id, extension.number.clone()),
                    extension.id,
                );
                self.extensions.insert(extension.id, extension);
            }
            Update::ExtensionRemove(id) => {
                if let Some(old) = self.extensions.remove(&id) {
                    self.by_number.remove(&(old.tenant_id, old.number));
                }
            }
            Update::TrunkUpsert(trunk) => {
                self.trunks.insert(trunk.id, trunk);
            }
            Update::TrunkRemove(id) => {
                self.trunks.remove(&id);
            }
            Update::NumberUpsert(number) => {
                if let Some(old) = self.numbers.get(&number.id) {
                    self.by_e164.remove(&old.e164);
                }
                self.by_e164.insert(number.e164.clone(), number.id);
                self.numbers.insert(number.id, number);
            }
            Update::NumberRemove(id) => {
                if let Some(old) = self.numbers.remove(&id) {
                    self.by_e164.remove(&old.e164);
                }
            }
            Update::FlowUpsert(flow) => {
                self.flows.insert(flow.id, flow);
            }
            Update::FlowRemove(id) => {
                self.flows.remove(&id);
            }
            Update::RouteUpsert(route) => {
                self.routes.insert(route.id, route);
            }
            Update::RouteRemove(id) => {
                self.routes.remove(&id);
            }
            Update::RingGroupUpsert(group) => {
                self.ring_groups.insert(group.id, group);
            }
            Update::RingGroupRemove(id) => {
                self.ring_groups.remove(&id);
            }
        }
    }

    /// A ring group by id.
    pub fn ring_group(&self, id: Uuid) -> Option<&RingGroup> {
        self.ring_groups.get(&id)
    }

    /// A ring group of `tenant` by name.
    pub fn ring_group_by_name(&self, tenant: Uuid, name: &str) -> Option<&RingGroup> {
        self.ring_groups
            .values()
            .find(|g| g.tenant_id == tenant && g.name == name)
    }

    /// Every trunk.
    pub fn trunks(&self) -> impl Iterator<Item = &Trunk> + '_ {
        self.trunks.values()
    }

    /// A trunk of `tenant` by name.
    pub fn trunk_by_name(&self, tenant: Uuid, name: &str) -> Option<&Trunk> {
        self.trunks
            .values()
            .find(|t| t.tenant_id == tenant && t.name == name)
    }

    /// A trunk by id.
    pub fn trunk(&self, id: Uuid) -> Option<&Trunk> {
        self.trunks.get(&id)
    }

    /// The trunk whose sources include `ip`, if any.
    pub fn trunk_for_source(&self, ip: IpAddr) -> Option<&Trunk> {
        self.trunks
            .values()
            .find(|t| t.sources.iter().any(|n| n.contains(ip)))
    }

    /// The route and trunk a number of `tenant` leaves through: the longest prefix of `digits`
    /// (E.164 without `+`), then the lowest priority, among routes whose trunk can place calls.
    pub fn route(&self, tenant: Uuid, digits: &str) -> Option<(&Route, &Trunk)> {
        self.routes(tenant, digits).into_iter().next()
    }

    /// Every route a number of `tenant` may leave through, best first (as [`Self::route`]
    /// orders them), one per trunk: a call fails over from one to the next.
    pub fn routes(&self, tenant: Uuid, digits: &str) -> Vec<(&Route, &Trunk)> {
        let mut routes: Vec<(&Route, &Trunk)> = self
            .routes
            .values()
            .filter(|r| r.tenant_id == tenant && digits.starts_with(&r.prefix))
            .filter_map(|r| {
                let trunk = self.trunks.get(&r.trunk_id)?;
                trunk
                    .outbound
                    .as_ref()
                    .is_some_and(|o| !o.proxies.is_empty())
                    .then_some((r, trunk))
            })
            .collect();
        routes.sort_by_key(|(r, _)| (std::cmp::Reverse(r.prefix.len()), r.priority, r.id));
        let mut seen = std::collections::HashSet::new();
        routes.retain(|(_, trunk)| seen.insert(trunk.id));
        routes
    }

    /// The published version of flow `id`.
    pub fn flow(&self, id: Uuid) -> Option<&PublishedFlow> {
        self.flows.get(&id)
    }

    /// The number `e164` (already normalised).
    pub fn number(&self, e164: &str) -> Option<&Number> {
        self.by_e164.get(e164).and_then(|id| self.numbers.get(id))
    }

    /// The tenant that owns requests for `host`: the tenant with that domain, else the default.
    pub fn tenant_for_host(&self, host: &str) -> Option<&Tenant> {
        let id = self
            .by_domain
            .get(&host.to_ascii_lowercase())
            .or(self.default_tenant.as_ref())?;
        self.tenants.get(id)
    }

    /// A tenant by id.
    pub fn tenant(&self, id: Uuid) -> Option<&Tenant> {
        self.tenants.get(&id)
    }

    /// The extension `number` of `tenant`.
    pub fn extension_by_number(&self, tenant: Uuid, number: &str) -> Option<&Extension> {
        self.by_number
            .get(&(tenant, number.to_owned()))
            .and_then(|id| self.extensions.get(id))
    }

    /// An extension by id.
    pub fn extension(&self, id: Uuid) -> Option<&Extension> {
        self.extensions.get(&id)
    }

    /// Number of extensions known.
    pub fn extension_count(&self) -> usize {
        self.extensions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(tenant: Uuid, number: &str) -> Extension {
        Extension {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            number: number.into(),
            display_name: String::new(),
            secret: "pw".into(),
            record_calls: false,
            outbound_allowed: false,
            caller_id: None,
            forward: Forwarding::default(),
        }
    }

    #[test]
    fn lookups_follow_updates() {
        let mut directory = Directory::new();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        directory.apply(Update::TenantUpsert(Tenant {
            id: a,
            domain: "A.example".into(),
            record_calls: false,
            caller_id: None,
            max_outbound_calls: None,
            daily_outbound_minutes: None,
        }));
        directory.apply(Update::TenantUpsert(Tenant {
            id: b,
            domain: "b.example".into(),
            record_calls: false,
            caller_id: None,
            max_outbound_calls: None,
            daily_outbound_minutes: None,
        }));
        directory.set_default_domain("a.example");
        assert_eq!(
            directory.tenant_for_host("a.EXAMPLE").map(|t| t.id),
            Some(a)
        );
        assert_eq!(
            directory.tenant_for_host("192.0.2.10").map(|t| t.id),
            Some(a),
            "unknown hosts go to the default"
        );
        assert_eq!(
            directory.tenant_for_host("b.example").map(|t| t.id),
            Some(b)
        );

        let e = ext(a, "1001");
        directory.apply(Update::ExtensionUpsert(e.clone()));
        assert_eq!(directory.extension_by_number(a, "1001"), Some(&e));
        assert_eq!(directory.extension_by_number(b, "1001"), None);
        let renumbered = Extension {
            number: "1002".into(),
            ..e.clone()
        };
        directory.apply(Update::ExtensionUpsert(renumbered.clone()));
        assert_eq!(directory.extension_by_number(a, "1001"), None);
        assert_eq!(directory.extension_by_number(a, "1002"), Some(&renumbered));
        directory.apply(Update::ExtensionRemove(e.id));
        assert_eq!(directory.extension_count(), 0);

        directory.apply(Update::TenantUpsert(Tenant {
            id: b,
            domain: "c.example".into(),
            record_calls: false,
            caller_id: None,
            max_outbound_calls: None,
            daily_outbound_minutes: None,
        }));
        assert_eq!(
            directory.tenant_for_host("b.example").map(|t| t.id),
            Some(a),
            "old domain released"
        );
        directory.apply(Update::TenantRemove(a));
        assert_eq!(directory.tenant_for_host("192.0.2.10"), None);
        assert!(!format!("{e:?}").contains("pw"), "secrets stay out of logs");
    }

    fn net(text: &str) -> Network {
        let (addr, prefix) = text.split_once('/').unwrap();
        Network {
            addr: addr.parse().unwrap(),
            prefix: prefix.parse().unwrap(),
        }
    }

    #[test]
    fn networks_contain_their_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("192.0.2.0/24").contains(ip("192.0.2.200")));
        assert!(!net("192.0.2.0/24").contains(ip("192.0.3.1")));
        assert!(net("192.0.2.7/32").contains(ip("192.0.2.7")));
        assert!(!net("192.0.2.7/32").contains(ip("192.0.2.8")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(
            net("192.0.2.0/24").contains(ip("::ffff:192.0.2.1")),
            "mapped IPv4"
        );
        assert!(!net("192.0.2.0/24").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!net("2001:db8::/32").contains(ip("2001:db9::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn trunks_and_numbers_follow_updates() {
        let mut directory = Directory::new();
        let tenant = Uuid::new_v4();
        let trunk = Trunk {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            name: "carrier".into(),
            sources: vec![net("192.0.2.0/28"), net("198.51.100.5/32")],
            outbound: None,
        };
        directory.apply(Update::TrunkUpsert(trunk.clone()));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(directory.trunk_for_source(ip("198.51.100.5")), Some(&trunk));
        assert_eq!(directory.trunk_for_source(ip("192.0.2.16")), None);
        directory.apply(Update::TrunkRemove(trunk.id));
        assert_eq!(directory.trunk_for_source(ip("198.51.100.5")), None);

        let number = Number {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            e164: "+15551230001".into(),
            target: NumberTarget::Extension(Uuid::new_v4()),
        };
        directory.apply(Update::NumberUpsert(number.clone()));
        assert_eq!(directory.number("+15551230001"), Some(&number));
        let moved = Number {
            e164: "+15551230002".into(),
            ..number.clone()
        };
        directory.apply(Update::NumberUpsert(moved.clone()));
        assert_eq!(
            directory.number("+15551230001"),
            None,
            "old number released"
        );
        assert_eq!(directory.number("+15551230002"), Some(&moved));
        directory.apply(Update::NumberRemove(number.id));
        assert_eq!(directory.number("+15551230002"), None);
    }
}
