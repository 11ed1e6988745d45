-- Per-tenant toll-fraud limits, overriding [outbound] max_concurrent_per_tenant and
-- daily_minutes_per_tenant for one tenant (NULL: the server's value).
ALTER TABLE tenants ADD COLUMN max_outbound_calls INTEGER;
ALTER TABLE tenants ADD COLUMN daily_outbound_minutes INTEGER;
