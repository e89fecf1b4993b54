-- The audit ledger (projection `audit`, management-api.md §14.1): one row per frame the
-- Audit service ingested from `caracal.audit.events` (event `audit.ingested`). One chain per
-- zone; sequence, digest and link come from the log's order, computed when projected.
CREATE TABLE audit_events (
    zone_id                   text        NOT NULL,
    id                        text        NOT NULL,
    event_type                text        NOT NULL,
    request_id                text        NOT NULL,
    decision                  text        NOT NULL,
    policy_set_id             text,
    policy_set_version_id     text,
    manifest_sha              text,
    evaluation_status         text        NOT NULL,
    determining_policies_json text        NOT NULL,
    diagnostics_json          text        NOT NULL,
    metadata_json             text        NOT NULL,
    occurred_at               timestamptz NOT NULL,
    ingested_at               timestamptz NOT NULL,
    ingest_signature          text,
    chain_seq                 bigint      NOT NULL,
    content_sha256            text        NOT NULL,
    prev_content_sha256       text        NOT NULL,
    chain_hmac                text,
    PRIMARY KEY (zone_id, id)
);
CREATE UNIQUE INDEX audit_events_chain ON audit_events (zone_id, chain_seq);
CREATE INDEX audit_events_feed ON audit_events (zone_id, occurred_at DESC, id DESC);
CREATE INDEX audit_events_request ON audit_events (zone_id, request_id, occurred_at);
