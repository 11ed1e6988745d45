-- Switchboard schema, PostgreSQL dialect. Keep in step with ../sqlite/0001_initial.sql:
-- the storage test `schemas_match` compares the two.
-- Times are milliseconds since the Unix epoch (BIGINT); ids are UUIDv7.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE tenants (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    sip_domain TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX tenants_sip_domain ON tenants (sip_domain) WHERE deleted_at IS NULL;

CREATE TABLE users (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    email TEXT NOT NULL,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    status TEXT NOT NULL,
    totp_secret BYTEA,
    totp_enabled BOOLEAN NOT NULL,
    totp_last_step BIGINT,
    failed_logins INTEGER NOT NULL,
    locked_until BIGINT,
    token_version INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    deleted_at BIGINT
);
CREATE UNIQUE INDEX users_email ON users (email) WHERE deleted_at IS NULL;
CREATE INDEX users_tenant ON users (tenant_id);

CREATE TABLE extensions (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    number TEXT NOT NULL,
    display_name TEXT NOT NULL,
    user_id UUID REFERENCES users (id),
    sip_secret BYTEA NOT NULL,
    caller_id_name TEXT,
    caller_id_number TEXT,
    outbound_allowed BOOLEAN NOT NULL,
    voicemail_enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, number)
);
CREATE INDEX extensions_user ON extensions (user_id);

CREATE TABLE trunks (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    port INTEGER,
    transport TEXT NOT NULL,
    secondary_host TEXT,
    username TEXT,
    auth_username TEXT,
    password BYTEA,
    register BOOLEAN NOT NULL,
    allowed_sources TEXT NOT NULL,
    tech_prefix TEXT NOT NULL,
    custom_headers TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE ring_groups (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    strategy TEXT NOT NULL,
    ring_timeout_secs INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE ring_group_members (
    ring_group_id UUID NOT NULL REFERENCES ring_groups (id) ON DELETE CASCADE,
    extension_id UUID NOT NULL REFERENCES extensions (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    PRIMARY KEY (ring_group_id, extension_id)
);
CREATE INDEX ring_group_members_extension ON ring_group_members (extension_id);

CREATE TABLE ivr_flows (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    draft TEXT NOT NULL,
    published_version INTEGER,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE ivr_flow_versions (
    flow_id UUID NOT NULL REFERENCES ivr_flows (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    graph TEXT NOT NULL,
    published_at BIGINT NOT NULL,
    published_by UUID,
    PRIMARY KEY (flow_id, version)
);

CREATE TABLE numbers (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    e164 TEXT NOT NULL UNIQUE,
    target_type TEXT NOT NULL,
    target_id UUID NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX numbers_target ON numbers (target_id);

CREATE TABLE recordings (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    call_id UUID,
    extension_id UUID,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    path TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    channels INTEGER NOT NULL,
    sample_rate INTEGER NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    completed_at BIGINT
);
CREATE INDEX recordings_tenant ON recordings (tenant_id, id);
CREATE INDEX recordings_call ON recordings (call_id);

-- CDRs. No foreign keys to extensions or trunks: a call record outlives what it names.
CREATE TABLE calls (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    sip_call_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    from_uri TEXT NOT NULL,
    to_uri TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    did TEXT,
    from_extension_id UUID,
    to_extension_id UUID,
    trunk_id UUID,
    legs TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT,
    duration_ms BIGINT,
    billsec BIGINT,
    disposition TEXT NOT NULL,
    hangup_cause TEXT,
    hangup_side TEXT,
    recording_id UUID,
    media_stats TEXT NOT NULL
);
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at);
CREATE INDEX calls_from_extension ON calls (from_extension_id);
CREATE INDEX calls_to_extension ON calls (to_extension_id);
CREATE INDEX calls_open ON calls (ended_at);

CREATE TABLE registrations (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    extension_id UUID NOT NULL REFERENCES extensions (id) ON DELETE CASCADE,
    contact TEXT NOT NULL,
    instance_id TEXT,
    reg_id INTEGER,
    transport TEXT NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (extension_id, contact)
);
CREATE INDEX registrations_expires ON registrations (expires_at);

CREATE TABLE refresh_tokens (
    id UUID PRIMARY KEY,
    family_id UUID NOT NULL,
    user_id UUID NOT NULL REFERENCES users (id),
    token_hash BYTEA NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE audit_log (
    id UUID PRIMARY KEY,
    tenant_id UUID,
    actor_user_id UUID,
    action TEXT NOT NULL,
    object_type TEXT NOT NULL,
    object_id TEXT NOT NULL,
    details TEXT NOT NULL,
    source_ip TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);
