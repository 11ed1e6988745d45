-- Outbound routes: numbers dialled by extensions go out through a trunk chosen by the longest
-- matching prefix of their E.164 digits, then the lowest priority.
CREATE TABLE outbound_routes (
    id UUID PRIMARY KEY,
    tenant_id UUID NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    trunk_id UUID NOT NULL REFERENCES trunks (id),
    priority INTEGER NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);
CREATE INDEX outbound_routes_trunk ON outbound_routes (trunk_id);
