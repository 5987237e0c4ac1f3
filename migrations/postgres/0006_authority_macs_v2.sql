-- Authority MACs, second version (PostgreSQL). A scoped token records the token that minted it
-- (`parent_id`), so revoking that token revokes it too, in the same transaction. Tokens' MACs now
-- also cover expiry, revocation and parent, and invitations' MACs acceptance and revocation,
-- so a database writer can no longer un-revoke or extend a token or re-open an invitation.
-- Existing rows are re-bound at the first unseal after this migration: the data key's wrap (which
-- only the master password can write) says which MACs the rows carry, so no marker row is needed
-- and none a database writer inserts is obeyed. migrations/sqlite/0006 is the same change.

ALTER TABLE tokens ADD COLUMN parent_id TEXT;
CREATE INDEX tokens_parent ON tokens (parent_id);
