-- A tenant's caller ID: the number its extensions present on calls out when they have none
-- of their own.
ALTER TABLE tenants ADD COLUMN caller_id_number TEXT;
