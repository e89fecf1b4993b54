-- Live Sessions (coordinator.md §4.1 step 7, §15): one narrow row per Session still active
-- or suspended, written by the catalog projection in the transaction that writes the
-- Session's object. A start counts its zone's and application's live Sessions and its
-- parent's open children here instead of filtering every Session document of the zone.
-- `live_until`: when the Session stops counting unless renewed (a task's TTL end, an active
-- service's lease deadline); NULL counts while it lasts (a suspended service, a task
-- without TTL), as `SessionData::counts_until` decides. Existing Sessions get their rows
-- from the repair every process runs when it starts (`sessions::reconcile_live`), which
-- also mends what a projector of an earlier version leaves out during a rolling upgrade.
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
