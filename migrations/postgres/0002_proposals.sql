-- Proposals: agent-raised change sets a human approves through a link (PostgreSQL).
-- migrations/sqlite/0002_proposals.sql is the same schema.

CREATE TABLE proposals (
    id                  TEXT PRIMARY KEY,
    vault_id            TEXT NOT NULL REFERENCES vaults (id) ON DELETE CASCADE,
    seq                 BIGINT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'applied', 'rejected', 'expired')),
    created_by_kind     TEXT NOT NULL,
    created_by_id       TEXT NOT NULL,
    creator_token_id    TEXT,
    message             TEXT NOT NULL DEFAULT '',
    content             TEXT NOT NULL,
    content_hash        TEXT NOT NULL,
    approval_token_hash BYTEA NOT NULL UNIQUE,
    expires_at          BIGINT NOT NULL,
    reviewed_by         TEXT,
    reviewed_at         BIGINT,
    review_note         TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (vault_id, seq)
);
CREATE INDEX proposals_pending ON proposals (status, expires_at);

-- Values an agent supplied with its proposal, sealed with AAD (proposal id, key).
CREATE TABLE proposal_values (
    proposal_id  TEXT NOT NULL REFERENCES proposals (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    sealed_value BYTEA NOT NULL,
    PRIMARY KEY (proposal_id, key)
);
