-- Call forwarding of an extension: where its calls go always, when it is busy, and when it
-- does not answer (or has no phone registered). Each is an extension number of the tenant or
-- a number outside; NULL forwards nothing.
ALTER TABLE extensions ADD COLUMN forward_always TEXT;
ALTER TABLE extensions ADD COLUMN forward_busy TEXT;
ALTER TABLE extensions ADD COLUMN forward_no_answer TEXT;
