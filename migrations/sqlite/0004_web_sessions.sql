-- Browser sessions get a token kind of their own ('web'), so the admin API and the proxy can
-- refuse them: browsers send the session cookie to every port of the host. SQLite cannot alter
-- a CHECK constraint, so the table is rebuilt with the same columns (0001's, and 0003's `mac`) and indexes
-- (migrations/postgres/0004_web_sessions.sql replaces the constraint instead). No table
-- references tokens, so dropping the old one cascades nothing.

CREATE TABLE tokens_new (
    id           TEXT PRIMARY KEY,
    hash         BLOB NOT NULL UNIQUE,
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'web', 'agent', 'scoped')),
    user_id      TEXT REFERENCES users (id) ON DELETE CASCADE,
    agent_id     TEXT REFERENCES agents (id) ON DELETE CASCADE,
    vault_id     TEXT REFERENCES vaults (id) ON DELETE CASCADE,
    vault_role   TEXT CHECK (vault_role IN ('proxy', 'member', 'admin')),
    label        TEXT NOT NULL DEFAULT '',
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL,
    mac          BLOB
);
INSERT INTO tokens_new (id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, mac)
    SELECT id, hash, kind, user_id, agent_id, vault_id, vault_role, label, expires_at, revoked_at, created_at, mac FROM tokens;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
CREATE INDEX tokens_agent ON tokens (agent_id);
CREATE INDEX tokens_user ON tokens (user_id);

-- Web logins before this version were ordinary sessions labelled 'web', usable as API bearers;
-- the browsers that hold them would keep exposing that to any page on another port of the host
-- until they expire. Revoke them: their people log in again and get a web-only session.
UPDATE tokens SET revoked_at = CAST(strftime('%s', 'now') AS INTEGER) * 1000
    WHERE kind = 'session' AND label = 'web' AND revoked_at IS NULL;
