-- Switchboard schema, SQLite dialect. Keep in step with ../postgres/0001_initial.sql:
-- the storage test `schemas_match` compares the two.
-- Times are milliseconds since the Unix epoch (INTEGER); ids are UUIDv7.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE tenants (
    id BLOB PRIMARY KEY,
    name TEXT NOT NULL,
    sip_domain TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE UNIQUE INDEX tenants_sip_domain ON tenants (sip_domain) WHERE deleted_at IS NULL;

CREATE TABLE users (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    email TEXT NOT NULL,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    totp_secret BLOB,
    totp_enabled BOOLEAN NOT NULL,
    totp_last_step INTEGER,
    failed_logins INTEGER NOT NULL,
    locked_until INTEGER,
    token_version INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE UNIQUE INDEX users_email ON users (email) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant ON users (tenant_id);

CREATE TABLE extensions (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    number TEXT NOT NULL,
    display_name TEXT NOT NULL,
    user_id BLOB REFERENCES users (id),
    sip_secret BLOB NOT NULL,
    caller_id_name TEXT,
    caller_id_number TEXT,
    outbound_allowed BOOLEAN NOT NULL,
    voicemail_enabled BOOLEAN NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, number)
);
CREATE INDEX extensions_user ON extensions (user_id);

CREATE TABLE trunks (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER,
    transport TEXT NOT NULL,
    secondary_host TEXT,
    username TEXT,
    auth_username TEXT,
    password BLOB,
    register BOOLEAN NOT NULL,
    allowed_sources TEXT NOT NULL,
    tech_prefix TEXT NOT NULL,
    custom_headers TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE ring_groups (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    strategy TEXT NOT NULL,
    ring_timeout_secs INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE ring_group_members (
    ring_group_id BLOB NOT NULL REFERENCES ring_groups (id) ON DELETE CASCADE,
    extension_id BLOB NOT NULL REFERENCES extensions (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (ring_group_id, extension_id)
);
CREATE INDEX ring_group_members_extension ON ring_group_members (extension_id);

CREATE TABLE ivr_flows (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    draft TEXT NOT NULL,
    published_version INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE ivr_flow_versions (
    flow_id BLOB NOT NULL REFERENCES ivr_flows (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    graph TEXT NOT NULL,
    published_at INTEGER NOT NULL,
    published_by BLOB,
    PRIMARY KEY (flow_id, version)
);

CREATE TABLE numbers (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    e164 TEXT NOT NULL UNIQUE,
    target_type TEXT NOT NULL,
    target_id BLOB NOT NULL,
    description TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX numbers_target ON numbers (target_id);

CREATE TABLE recordings (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    call_id BLOB,
    extension_id BLOB,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    sample_rate INTEGER NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    completed_at INTEGER
);
CREATE INDEX recordings_tenant ON recordings (tenant_id, id);
CREATE INDEX recordings_call ON recordings (call_id);

-- CDRs. No foreign keys to extensions or trunks: a call record outlives what it names.
CREATE TABLE calls (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    sip_call_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_uri TEXT NOT NULL,
    to_uri TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    did TEXT,
    from_extension_id BLOB,
    to_extension_id BLOB,
    trunk_id BLOB,
    legs TEXT NOT NULL,
    started_at INTEGER NOT NULL,
    answered_at INTEGER,
    ended_at INTEGER,
    duration_ms INTEGER,
    billsec INTEGER,
    disposition TEXT NOT NULL,
    hangup_cause TEXT,
    hangup_side TEXT,
    recording_id BLOB,
    media_stats TEXT NOT NULL
);
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at);
CREATE INDEX calls_from_extension ON calls (from_extension_id);
CREATE INDEX calls_to_extension ON calls (to_extension_id);
CREATE INDEX calls_open ON calls (ended_at);

CREATE TABLE registrations (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    extension_id BLOB NOT NULL REFERENCES extensions (id) ON DELETE CASCADE,
    contact TEXT NOT NULL,
    instance_id TEXT,
    reg_id INTEGER,
    transport TEXT NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (extension_id, contact)
);
CREATE INDEX registrations_expires ON registrations (expires_at);

CREATE TABLE refresh_tokens (
    id BLOB PRIMARY KEY,
    family_id BLOB NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id),
    token_hash BLOB NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at INTEGER,
    revoked_at INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE audit_log (
    id BLOB PRIMARY KEY,
    tenant_id BLOB,
    actor_user_id BLOB,
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    details TEXT NOT NULL,
    source_ip TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
