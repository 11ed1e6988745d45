//! Keeping the signalling core's directory in step with the database: a full load at start,
//! and one update per change made through the control plane.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context as _;
use switchboard_signalling::directory::{
    Extension, Forwarding, Network, Number, NumberTarget, Outbound, PublishedFlow, RingGroup,
    Route, Tenant, Trunk, Update,
};
use switchboard_signalling::ivr::Flow;
use switchboard_signalling::peer::Transport;
use switchboard_storage::crypto::SecretBox;
use switchboard_storage::ivr_flows;
use switchboard_storage::numbers::{self, TargetType};
use switchboard_storage::outbound_routes;
use switchboard_storage::ring_groups::{self, Strategy};
use switchboard_storage::trunks::{self, TrunkKind};

use super::dns::Dns;
use switchboard_storage::{Db, Scope, Uuid, extensions, tenants};

fn extension_update(
    secret_box: &SecretBox,
    extension: extensions::Extension,
    sealed: &[u8],
) -> anyhow::Result<Update> {
    let secret = secret_box
        .open_string(&extensions::secret_context(extension.id), sealed)
        .with_context(|| {
            format!(
                "decrypting the SIP secret of extension {}",
                extension.number
            )
        })?;
    Ok(Update::ExtensionUpsert(Extension {
        id: extension.id,
        tenant_id: extension.tenant_id,
        number: extension.number,
        display_name: extension.display_name,
        secret,
        record_calls: extension.record_calls,
        outbound_allowed: extension.outbound_allowed,
        caller_id: extension.caller_id_number,
        forward: Forwarding {
            always: extension.forward_always,
            busy: extension.forward_busy,
            no_answer: extension.forward_no_answer,
        },
    }))
}

/// A stored tenant as call control sees it.
fn tenant_update(tenant: tenants::Tenant) -> Update {
    Update::TenantUpsert(Tenant {
        id: tenant.id,
        domain: tenant.sip_domain,
        record_calls: tenant.record_calls,
        caller_id: tenant.caller_id_number,
        max_outbound_calls: tenant
            .max_outbound_calls
            .and_then(|n| usize::try_from(n).ok()),
        daily_outbound_minutes: tenant
            .daily_outbound_minutes
            .and_then(|n| u32::try_from(n).ok()),
    })
}

/// Every tenant and extension, as updates for an empty directory.
pub(super) async fn load(
    db: &Db,
    secret_box: &SecretBox,
    dns: &Dns,
) -> anyhow::Result<Vec<Update>> {
    let mut updates = Vec::new();
    for tenant in tenants::all(db).await? {
        updates.push(tenant_update(tenant));
    }
    for (extension, sealed) in extensions::all_with_secrets(db).await? {
        updates.push(extension_update(secret_box, extension, &sealed)?);
    }
    for trunk in trunks::all(db).await? {
        let sealed = trunks::sealed_password(db, trunk.id).await?;
        updates.push(trunk_update((secret_box, dns), trunk, sealed.as_deref()).await?);
    }
    for route in outbound_routes::all(db).await? {
        updates.push(route_update(route));
    }
    for group in ring_groups::all(db).await? {
        updates.push(ring_group_update(group));
    }
    for number in numbers::all(db).await? {
        updates.push(number_update(number));
    }
    for published in ivr_flows::all_published(db).await? {
        updates.push(flow_update(published));
    }
    Ok(updates)
}

/// A published flow, compiled. One that no longer compiles (published before a check that
/// now refuses it) is left out, and calls to it are refused until it is published again.
fn flow_update(published: ivr_flows::Published) -> Update {
    match Flow::parse(&published.graph) {
        Ok(flow) => Update::FlowUpsert(PublishedFlow {
            id: published.flow_id,
            tenant_id: published.tenant_id,
            version: published.version,
            flow: std::sync::Arc::new(flow),
        }),
        Err(error) => {
            tracing::warn!(%error, flow = %published.flow_id, "published IVR flow does not compile");
            Update::FlowRemove(published.flow_id)
        }
    }
}

/// The published state of one flow: its latest version, or a removal.
pub(super) async fn flow(db: &Db, id: Uuid) -> anyhow::Result<Update> {
    Ok(match ivr_flows::published(db, id).await? {
        Some(published) => flow_update(published),
        None => Update::FlowRemove(id),
    })
}

/// `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or range, or a host name (resolved now; every
/// address it has). An entry that is none of these, or does not resolve, adds nothing.
async fn networks(dns: &Dns, entry: &str) -> Vec<Network> {
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, prefix.parse::<u8>().ok()),
        None => (entry, None),
    };
    if let Ok(addr) = address.parse::<IpAddr>() {
        let full = if addr.is_ipv4() { 32 } else { 128 };
        return match prefix.unwrap_or(full) {
            prefix if prefix <= full => vec![Network { addr, prefix }],
            _ => Vec::new(),
        };
    }
    dns.addresses(entry, 0)
        .await
        .into_iter()
        .map(|a| host(a.ip()))
        .collect()
}

/// One address as a network.
fn host(addr: IpAddr) -> Network {
    Network {
        addr,
        prefix: if addr.is_ipv4() { 32 } else { 128 },
    }
}

/// A trunk as the core needs it: where its INVITEs may come from (an IP trunk lists them; a
/// credential trunk's calls come from its proxies), and how calls go out through it: its
/// transport, and its proxies resolved as RFC 3263 says (DNS SRV unless a port is set),
/// the primary's first.
async fn trunk_update(
    (secret_box, dns): (&SecretBox, &Dns),
    trunk: trunks::Trunk,
    sealed: Option<&[u8]>,
) -> anyhow::Result<Update> {
    if !trunk.enabled {
        return Ok(Update::TrunkRemove(trunk.id));
    }
    let password = sealed
        .map(|sealed| secret_box.open_string(&trunks::password_context(trunk.id), sealed))
        .transpose()
        .with_context(|| format!("decrypting the password of trunk {}", trunk.name))?;
    let transport = match trunk.transport {
        trunks::Transport::Udp => Transport::Udp,
        trunks::Transport::Tcp => Transport::Tcp,
        trunks::Transport::Tls => Transport::Tls,
    };
    let mut proxies = Vec::new();
    for name in std::iter::once(&trunk.host).chain(&trunk.secondary_host) {
        for proxy in dns.proxies(name, trunk.port, transport).await {
            if !proxies.contains(&proxy) {
                proxies.push(proxy);
            }
        }
    }
    let username = trunk.auth_username.clone().or(trunk.username.clone());
    let outbound = Outbound {
        proxies: proxies.clone(),
        transport,
        host: trunk.host.clone(),
        credentials: username.zip(password),
        tech_prefix: trunk.tech_prefix.clone(),
        headers: trunk.custom_headers.clone().into_iter().collect(),
        register: trunk.register.then(|| trunk.username.clone()).flatten(),
    };
    let mut sources = Vec::new();
    if trunk.kind == TrunkKind::Credential {
        // A credential trunk's calls come from its proxies (found through SRV, maybe) and
        // from the addresses of its host names.
        sources.extend(proxies.iter().map(|p| host(p.ip())));
        for name in std::iter::once(&trunk.host).chain(&trunk.secondary_host) {
            sources.extend(networks(dns, name).await);
        }
    }
    for entry in &trunk.allowed_sources {
        sources.extend(networks(dns, entry).await);
    }
    sources.dedup();
    Ok(Update::TrunkUpsert(Trunk {
        id: trunk.id,
        tenant_id: trunk.tenant_id,
        name: trunk.name,
        sources,
        outbound: Some(Box::new(outbound)),
    }))
}

fn ring_group_update(group: ring_groups::RingGroup) -> Update {
    Update::RingGroupUpsert(RingGroup {
        id: group.id,
        tenant_id: group.tenant_id,
        name: group.name,
        members: group.members,
        sequential: group.strategy == Strategy::Sequential,
        ring_timeout: Duration::from_secs(u64::from(group.ring_timeout_secs)),
    })
}

/// The current state of one ring group: an upsert, or a removal if it is gone.
pub(super) async fn ring_group(db: &Db, id: Uuid) -> anyhow::Result<Update> {
    match ring_groups::get(db, Scope::All, id).await {
        Ok(group) => Ok(ring_group_update(group)),
        Err(switchboard_storage::Error::NotFound) => Ok(Update::RingGroupRemove(id)),
        Err(error) => Err(error.into()),
    }
}

fn route_update(route: outbound_routes::OutboundRoute) -> Update {
    Update::RouteUpsert(Route {
        id: route.id,
        tenant_id: route.tenant_id,
        prefix: route.prefix,
        trunk_id: route.trunk_id,
        priority: route.priority,
    })
}

/// The current state of one outbound route: an upsert, or a removal if it is gone.
pub(super) async fn route(db: &Db, id: Uuid) -> anyhow::Result<Update> {
    match outbound_routes::get(db, Scope::All, id).await {
        Ok(route) => Ok(route_update(route)),
        Err(switchboard_storage::Error::NotFound) => Ok(Update::RouteRemove(id)),
        Err(error) => Err(error.into()),
    }
}

fn number_update(number: numbers::Number) -> Update {
    let target = match number.target_type {
        TargetType::Extension => NumberTarget::Extension(number.target_id),
        TargetType::RingGroup => NumberTarget::RingGroup(number.target_id),
        TargetType::IvrFlow => NumberTarget::IvrFlow(number.target_id),
    };
    Update::NumberUpsert(Number {
        id: number.id,
        tenant_id: number.tenant_id,
        e164: number.e164,
        target,
    })
}

/// The current state of one trunk: an upsert, or a removal if it is gone or disabled.
pub(super) async fn trunk(
    db: &Db,
    (secret_box, dns): (&SecretBox, &Dns),
    id: Uuid,
) -> anyhow::Result<Update> {
    match trunks::get(db, Scope::All, id).await {
        Ok(trunk) => {
            let sealed = trunks::sealed_password(db, id).await?;
            trunk_update((secret_box, dns), trunk, sealed.as_deref()).await
        }
        Err(switchboard_storage::Error::NotFound) => Ok(Update::TrunkRemove(id)),
        Err(error) => Err(error.into()),
    }
}

/// The current state of one number: an upsert, or a removal if it is gone.
pub(super) async fn number(db: &Db, id: Uuid) -> anyhow::Result<Update> {
    match numbers::get(db, Scope::All, id).await {
        Ok(number) => Ok(number_update(number)),
        Err(switchboard_storage::Error::NotFound) => Ok(Update::NumberRemove(id)),
        Err(error) => Err(error.into()),
    }
}

/// The current state of one extension: an upsert, or a removal if it is gone.
pub(super) async fn extension(db: &Db, secret_box: &SecretBox, id: Uuid) -> anyhow::Result<Update> {
    match extensions::get(db, Scope::All, id).await {
        Ok(extension) => {
            let sealed = extensions::sealed_secret(db, id).await?;
            extension_update(secret_box, extension, &sealed)
        }
        Err(switchboard_storage::Error::NotFound) => Ok(Update::ExtensionRemove(id)),
        Err(error) => Err(error.into()),
    }
}

/// The current state of one tenant: an upsert, or a removal if it is gone.
pub(super) async fn tenant(db: &Db, id: Uuid) -> anyhow::Result<Update> {
    match tenants::get(db, id).await {
        Ok(tenant) => Ok(tenant_update(tenant)),
        Err(switchboard_storage::Error::NotFound) => Ok(Update::TenantRemove(id)),
        Err(error) => Err(error.into()),
    }
}
