-- The admin audit chains (projection `admin_audit`, management-api.md §14.2). One chain per
-- zone (`chain` = zone id) plus the global chain (`chain` = ''). The record is the event;
-- its sequence, digest and link come from the log's order, computed when projected.
CREATE TABLE admin_audit (
    id                  text        PRIMARY KEY,
    chain               text        NOT NULL,
    chain_seq           bigint      NOT NULL,
    zone_id             text,
    request_id          text        NOT NULL,
    actor_id            text,
    actor_name          text,
    actor_scope         text,
    action              text        NOT NULL,
    method              text        NOT NULL,
    path                text        NOT NULL,
    entity_type         text,
    entity_id           text,
    status_code         integer     NOT NULL,
    payload_json        text        NOT NULL,
    occurred_at         timestamptz NOT NULL,
    content_sha256      text        NOT NULL,
    prev_content_sha256 text        NOT NULL,
    chain_hmac          text
);
CREATE UNIQUE INDEX admin_audit_chain_seq ON admin_audit (chain, chain_seq);
-- The feed: (occurred_at, id) descending within a zone.
CREATE INDEX admin_audit_feed ON admin_audit (zone_id, occurred_at DESC, id DESC);
