-- Browser sessions get a token kind of their own ('web'), so the admin API and the proxy can
-- refuse them: browsers send the session cookie to every port of the host.
-- migrations/sqlite/0004_web_sessions.sql rebuilds the table to the same effect.

ALTER TABLE tokens DROP CONSTRAINT IF EXISTS tokens_kind_check;
ALTER TABLE tokens ADD CONSTRAINT tokens_kind_check CHECK (kind IN ('session', 'web', 'agent', 'scoped'));
