-- Live Sessions (coordinator.md §4.1 step 7, §15): one narrow row per Session still active
-- or suspended, written by the catalog projection in the transaction that writes the
-- Session's object. A start counts its zone's and application's live Sessions and its
-- parent's open children here instead of filtering every Session document of the zone.
-- `live_until`: when the Session stops counting unless renewed (a task's TTL end, an active
-- service's lease deadline); NULL counts while it lasts (a suspended service, a task
-- without TTL). Mirrors `SessionData::counts_until` (and `sessions::LIVE_ROWS`, which
-- repairs the table after a rolling upgrade).
CREATE TABLE live_sessions (
    zone_id        text        NOT NULL,
    id             text        NOT NULL,
    application_id text        NOT NULL,
    parent_id      text,
    live_until     timestamptz,
    PRIMARY KEY (zone_id, id)
);
CREATE INDEX live_sessions_parent ON live_sessions (zone_id, parent_id)
    WHERE parent_id IS NOT NULL;

INSERT INTO live_sessions (zone_id, id, application_id, parent_id, live_until)
SELECT zone_id, id,
       COALESCE(doc #>> '{data,session,application_id}', ''),
       doc #>> '{data,session,parent_session_id}',
       CASE
         WHEN doc #>> '{data,session,lifecycle}' = 'service' THEN
           CASE WHEN doc #>> '{data,session,status}' = 'suspended' THEN NULL
                ELSE COALESCE(regexp_replace(doc #>> '{data,session,heartbeat_deadline_at}',
                                             '(\.\d{6})\d+', '\1')::timestamptz,
                              'epoch'::timestamptz)
           END
         WHEN doc #>> '{data,session,ttl_seconds}' IS NULL
           OR (doc #>> '{data,session,ttl_seconds}')::numeric >= 300000000000 THEN NULL
         ELSE COALESCE(regexp_replace(doc #>> '{data,session,started_at}',
                                      '(\.\d{6})\d+', '\1')::timestamptz, created_at)
              + make_interval(secs => (doc #>> '{data,session,ttl_seconds}')::double precision)
       END
  FROM catalog_objects
 WHERE kind = 'session' AND doc #>> '{data,session,status}' IN ('active', 'suspended');

