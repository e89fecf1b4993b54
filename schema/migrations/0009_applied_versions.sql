-- The last aggregate version each projection applied (issue 14 item 1). The signature of a
-- log entry covers its envelope, not its place in the log: a byte-identical copy of an old
-- entry added to the log again verifies. A projection refuses (dead-letters as `replayed`)
-- an event whose aggregate version is not above the last one it applied of that aggregate
-- *and* whose event id (UUIDv7, ordered by time) is not newer than the last one applied: a
-- copy never rolls a read model back, nor re-publishes a topic. A genuinely new event at an
-- old version (Redis failed over behind Postgres) is applied, with a warning. Written in the
-- batch's transaction, beside the checkpoints. Single-event aggregates (admin-audit records,
-- audit frames) and the archive are not tracked: their tables refuse a second copy by id.
CREATE TABLE applied_versions (
    projection text NOT NULL,
    aggregate text NOT NULL, -- '<stream key>|<aggregate_kind>/<aggregate_id>'
    version bigint NOT NULL,
    event_id text NOT NULL,
    PRIMARY KEY (projection, aggregate)
);
