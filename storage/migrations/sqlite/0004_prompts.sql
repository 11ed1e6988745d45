-- IVR prompts: uploaded audio converted to 8 kHz mono 16-bit little-endian PCM, per tenant.
-- The audio lives in the row so every node of a cluster can play it.
CREATE TABLE prompts (
    id BLOB PRIMARY KEY,
    tenant_id BLOB NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    source TEXT NOT NULL,
    duration_ms BIGINT NOT NULL,
    audio BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);
