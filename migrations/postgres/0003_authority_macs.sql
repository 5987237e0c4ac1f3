-- Authority rows (grants, users, invites, agents, tokens) carry a MAC keyed from the DEK
-- (PostgreSQL), so a database writer cannot grant a role, change a password hash, re-point a token
-- or move a row to another id. migrations/sqlite/0003 is the same change. Rows that exist now
-- get their MAC at the first unseal after this migration, which the marker below asks for.

ALTER TABLE vault_grants ADD COLUMN mac BYTEA;
ALTER TABLE users ADD COLUMN mac BYTEA;
ALTER TABLE invites ADD COLUMN mac BYTEA;
ALTER TABLE agents ADD COLUMN mac BYTEA;
ALTER TABLE tokens ADD COLUMN mac BYTEA;

INSERT INTO instance_state (key, value, updated_at) VALUES ('authority_macs_pending', '1', 0)
    ON CONFLICT (key) DO NOTHING;
