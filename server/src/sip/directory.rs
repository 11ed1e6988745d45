//! Keeping the signalling core's directory in step with the database: a full load at start,
//! and one update per change made through the control plane.

use anyhow::Context as _;
use switchboard_signalling::directory::{Extension, Tenant, Update};
use switchboard_storage::crypto::SecretBox;
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
    }))
}

/// Every tenant and extension, as updates for an empty directory.
pub(super) async fn load(db: &Db, secret_box: &SecretBox) -> anyhow::Result<Vec<Update>> {
    let mut updates = Vec::new();
    for tenant in tenants::all(db).await? {
        updates.push(Update::TenantUpsert(Tenant {
            id: tenant.id,
            domain: tenant.sip_domain,
            record_calls: tenant.record_calls,
        }));
    }
    for (extension, sealed) in extensions::all_with_secrets(db).await? {
        updates.push(extension_update(secret_box, extension, &sealed)?);
    }
    Ok(updates)
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
        Ok(tenant) => Ok(Update::TenantUpsert(Tenant {
            id: tenant.id,
            domain: tenant.sip_domain,
            record_calls: tenant.record_calls,
        })),
        Err(switchboard_storage::Error::NotFound) => Ok(Update::TenantRemove(id)),
        Err(error) => Err(error.into()),
    }
}
