-- IVR prompts: uploaded audio converted to 8 kHz mono 16-bit little-endian PCM, per tenant.
-- The audio lives in the row so every node of a cluster can play it.
CREATE TABLE prompts (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    source TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    audio BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
