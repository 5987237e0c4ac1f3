-- Browser sessions get a token kind of their own ('web'), so the admin API and the proxy can
-- refuse them: browsers send the session cookie to every port of the host.
-- migrations/sqlite/0004_web_sessions.sql rebuilds the table to the same effect.

ALTER TABLE tokens DROP CONSTRAINT IF EXISTS tokens_kind_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_kind_check CHECK (kind IN ('session', 'web', 'agent', 'scoped'));

-- Web logins before this version were ordinary sessions labelled 'web', usable as API bearers;
-- the browsers that hold them would keep exposing that to any page on another port of the host
-- until they expire. Revoke them: their people log in again and get a web-only session.
UPDATE tokens SET revoked_at = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
    WHERE kind = 'session' AND label = 'web' AND revoked_at IS NULL;
