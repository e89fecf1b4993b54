-- The last aggregate version each projection applied (issue 14 item 1). The signature of a
-- log entry covers its envelope, not its place in the log: a byte-identical copy of an old
-- entry added to the log again verifies. A projection refuses (dead-letters as `replayed`)
-- an event whose aggregate version is not above the last one it applied of that aggregate,
-- so such a copy never rolls a read model back, nor re-publishes a topic, nor stops the
-- archiver. Written in the batch's transaction, beside the checkpoints.
CREATE TABLE applied_versions (
    projection text NOT NULL,
    aggregate text NOT NULL, -- '<aggregate_kind>/<aggregate_id>'
    version bigint NOT NULL,
    PRIMARY KEY (projection, aggregate)
);
