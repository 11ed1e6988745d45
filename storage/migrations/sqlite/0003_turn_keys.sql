-- TURN long-term credential keys of users (RFC 8489 §9.2.2), sealed: MD5 and SHA-256 of
-- "email:realm:password", derived when the password is set or used, for the realm named.
ALTER TABLE users ADD COLUMN turn_key BLOB;
ALTER TABLE users ADD COLUMN turn_realm TEXT;
