-- Credentials become typed, versioned objects, each version sealed under its own data key
-- (SQLite; migrations/postgres/0005 is the same change).
--
-- `credentials` keeps one row per credential: its type, state, active version, the data key that
-- seals its metadata (version 0: wrapped_key + key_version, wrapped by the instance key), the
-- sealed metadata, expiry, who made and changed it, revocation, and a MAC over its authority
-- columns. `version` now counts the versions ever made, so a new one never reuses a number.
-- `credential_versions` holds every retained version's value, sealed under that version's own
-- data key with AAD (vault, key, version); deleting a row destroys its key (crypto-shredding).
--
-- Rows written before this migration keep their value in the old `sealed_value` column (sealed
-- directly under the instance key) until the first unsealed start re-seals each one under a key
-- of its own, as version `version`, and empties the old column; the marker below asks for it.
-- New rows leave `sealed_value` empty.

ALTER TABLE credentials ADD COLUMN type TEXT NOT NULL DEFAULT 'api_key';
ALTER TABLE credentials ADD COLUMN state TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked'));
ALTER TABLE credentials ADD COLUMN active_version INTEGER;
ALTER TABLE credentials ADD COLUMN wrapped_key BLOB;
ALTER TABLE credentials ADD COLUMN key_version INTEGER;
ALTER TABLE credentials ADD COLUMN sealed_meta BLOB;
ALTER TABLE credentials ADD COLUMN expires_at INTEGER;
ALTER TABLE credentials ADD COLUMN created_by TEXT;
ALTER TABLE credentials ADD COLUMN updated_by TEXT;
ALTER TABLE credentials ADD COLUMN revoked_at INTEGER;
ALTER TABLE credentials ADD COLUMN revoked_reason TEXT;
ALTER TABLE credentials ADD COLUMN mac BLOB;

CREATE TABLE credential_versions (
    vault_id     TEXT NOT NULL,
    key          TEXT NOT NULL,
    version      INTEGER NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('active', 'rotated', 'revoked')),
    wrapped_key  BLOB NOT NULL,
    key_version  INTEGER NOT NULL,
    sealed_value BLOB NOT NULL,
    expires_at   INTEGER,
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    rotated_at   INTEGER,
    PRIMARY KEY (vault_id, key, version),
    FOREIGN KEY (vault_id, key) REFERENCES credentials (vault_id, key) ON DELETE CASCADE
);
CREATE INDEX credential_versions_rotated ON credential_versions (state, rotated_at);

INSERT INTO instance_state (key, value, updated_at) VALUES ('credential_keys_pending', '1', 0)
    ON CONFLICT (key) DO NOTHING;
