-- Instance-key rotation: the master_key row records which version of the instance key (the DEK
-- of earlier releases, version 1) it wraps. A rotation overwrites the row with the next version,
-- which destroys the previous wrap. Numbered 0006 so that 0005 (credential versions) can land
-- beside it.
ALTER TABLE master_key ADD COLUMN key_version INTEGER NOT NULL DEFAULT 1;
