-- agent-vault schema, version 1 (SQLite). Ids are TEXT, times are integer milliseconds since the
-- Unix epoch, flags are integers. migrations/postgres/0001_initial.sql is the same schema.

CREATE TABLE instance_state (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

-- The data-encryption key, wrapped by a key derived from the master password.
CREATE TABLE master_key (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    kdf_salt        BLOB NOT NULL,
    kdf_memory_kib  INTEGER NOT NULL,
    kdf_iterations  INTEGER NOT NULL,
    kdf_parallelism INTEGER NOT NULL,
    wrapped_dek     BLOB NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);

-- The proxy's root CA; the private key is sealed with the DEK so replicas share it.
CREATE TABLE ca_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT NOT NULL,
    sealed_key BLOB NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE agents (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE vaults (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL UNIQUE,
    unmatched_host_policy TEXT NOT NULL DEFAULT 'tunnel' CHECK (unmatched_host_policy IN ('tunnel', 'deny')),
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);

CREATE TABLE vault_grants (
    vault_id       TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    principal_kind TEXT NOT NULL CHECK (principal_kind IN ('user', 'agent')),
    principal_id   TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('proxy', 'member', 'admin')),
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (vault_id, principal_kind, principal_id)
);
CREATE INDEX vault_grants_principal ON vault_grants (principal_kind, principal_id);

-- Values are AES-256-GCM sealed with AAD (vault id, key, version).
CREATE TABLE credentials (
    vault_id     TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    version      INTEGER NOT NULL,
    sealed_value BLOB NOT NULL,
    kind         TEXT NOT NULL DEFAULT 'static',
    description  TEXT NOT NULL DEFAULT '',
    use_count    INTEGER NOT NULL DEFAULT 0,
    last_used_at INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (vault_id, key)
);

-- One row per service; spec is its JSON definition, mac binds it to the vault and name.
CREATE TABLE services (
    vault_id   TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    position   INTEGER NOT NULL,
    spec       TEXT NOT NULL,
    mac        BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (vault_id, name)
);

-- Every bearer token, stored only as an HMAC keyed from the DEK.
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    hash         BLOB NOT NULL UNIQUE,
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'agent', 'scoped')),
    user_id      TEXT REFERENCES users (id) ON DELETE CASCADE,
    agent_id     TEXT REFERENCES agents (id) ON DELETE CASCADE,
    vault_id     TEXT REFERENCES vaults (id) ON DELETE CASCADE,
    vault_role   TEXT CHECK (vault_role IN ('proxy', 'member', 'admin')),
    label        TEXT NOT NULL DEFAULT '',
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL
);
CREATE INDEX tokens_agent ON tokens (agent_id);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE invites (
    id           TEXT PRIMARY KEY,
    token_hash   BLOB NOT NULL UNIQUE,
    email        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'member')),
    vault_grants TEXT NOT NULL DEFAULT '[]',
    created_by   TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    accepted_at  INTEGER,
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL
);

-- Metadata of proxied requests only: never values, query strings, header values or bodies.
CREATE TABLE request_logs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    vault_id        TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    actor_kind      TEXT NOT NULL,
    actor_id        TEXT NOT NULL,
    kind            TEXT NOT NULL,
    method          TEXT NOT NULL,
    host            TEXT NOT NULL,
    path            TEXT NOT NULL,
    service         TEXT,
    credential_keys TEXT NOT NULL DEFAULT '',
    status          INTEGER NOT NULL,
    bytes_in        INTEGER NOT NULL,
    bytes_out       INTEGER NOT NULL,
    latency_ms      INTEGER NOT NULL,
    error_code      TEXT,
    created_at      INTEGER NOT NULL
);
CREATE INDEX request_logs_vault ON request_logs (vault_id, id);
CREATE INDEX request_logs_created ON request_logs (created_at);

-- Control-plane events: who changed or revealed what, and when.
CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor_kind TEXT NOT NULL,
    actor_id   TEXT NOT NULL,
    action     TEXT NOT NULL,
    vault_id   TEXT,
    target     TEXT NOT NULL DEFAULT '',
    detail     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_vault ON audit_events (vault_id, id);
