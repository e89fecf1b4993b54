-- Where each zone's catalog last changed in a way a token exchange reads (issue 15, the
-- in-memory token path): the log entry id of the newest applied event that created or
-- changed an application, provider, resource, grant, Session, agent service, subject
-- issuer or Delegation, or updated an authority record. Authority-record creations,
-- approval holds, invocations, connections and signing keys — what every mint writes or
-- what has its own cache — do not move it. The STS keys what it keeps in memory by this
-- position: one indexed read per exchange instead of a read per object. An entry id (not
-- a counter) so a rebuilt read model names the same state with the same value.
CREATE TABLE catalog_config_positions (
    zone_id text PRIMARY KEY,
    entry_id text NOT NULL
);
