-- Recording policy: a call is recorded when its tenant, its caller's extension or its
-- callee's extension says so.
ALTER TABLE tenants ADD COLUMN record_calls BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE extensions ADD COLUMN record_calls BOOLEAN NOT NULL DEFAULT FALSE;
