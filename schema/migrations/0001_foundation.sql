-- Serval foundation: projection checkpoints, the verbatim event archive, dead letters,
-- and the first read models (zones, admin tokens).
--
-- Invariant: only projectors (and these migrations) write these tables.

CREATE TABLE projection_checkpoints (
    projection     text        NOT NULL,
    stream         text        NOT NULL,
    last_ms        bigint      NOT NULL DEFAULT 0,
    last_seq       bigint      NOT NULL DEFAULT 0,
    events_applied bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, stream)
);

-- Every event, byte for byte, with its signature: the second durable copy of the log.
CREATE TABLE event_archive (
    stream            text        NOT NULL,
    entry_ms          bigint      NOT NULL,
    entry_seq         bigint      NOT NULL,
    event_id          text        NOT NULL UNIQUE,
    event_type        text        NOT NULL,
    schema_version    integer     NOT NULL,
    zone_id           text,
    aggregate_kind    text        NOT NULL,
    aggregate_id      text        NOT NULL,
    aggregate_version bigint      NOT NULL,
    occurred_at       timestamptz NOT NULL,
    key_id            text        NOT NULL,
    envelope          bytea       NOT NULL,
    sig               bytea       NOT NULL,
    archived_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, entry_ms, entry_seq)
);
CREATE INDEX event_archive_aggregate ON event_archive (aggregate_kind, aggregate_id, aggregate_version);

CREATE FUNCTION serval_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'table % is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER event_archive_append_only BEFORE UPDATE OR DELETE ON event_archive
    FOR EACH ROW EXECUTE FUNCTION serval_append_only();
CREATE TRIGGER event_archive_no_truncate BEFORE TRUNCATE ON event_archive
    FOR EACH STATEMENT EXECUTE FUNCTION serval_append_only();

-- Entries a projection refused (bad signature, undecodable, wrong stream). Never applied.
CREATE TABLE dead_letters (
    id          bigserial   PRIMARY KEY,
    projection  text        NOT NULL,
    stream      text        NOT NULL,
    entry_id    text        NOT NULL,
    reason      text        NOT NULL,
    detail      text        NOT NULL,
    raw_fields  jsonb       NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (projection, stream, entry_id)
);

CREATE TABLE zones (
    id                      text        PRIMARY KEY,
    name                    text        NOT NULL,
    slug                    text        NOT NULL,
    dcr_enabled             boolean     NOT NULL,
    operator_coauthor_badge boolean     NOT NULL,
    operator_governed       boolean     NOT NULL,
    created_by              text        NOT NULL,
    created_via_operator    boolean     NOT NULL,
    updated_by              text        NOT NULL,
    updated_via_operator    boolean     NOT NULL,
    created_at              timestamptz NOT NULL,
    updated_at              timestamptz NOT NULL,
    archived_at             timestamptz,
    is_system               boolean     NOT NULL,
    version                 bigint      NOT NULL
);
-- Keyset pagination of the default list: (created_at, id) descending, live non-system zones.
CREATE INDEX zones_list ON zones (created_at DESC, id DESC) WHERE archived_at IS NULL AND NOT is_system;
-- Slug uniqueness is enforced by the append's reservation, not here: a projection must never
-- wedge on a constraint the log already guarantees.
CREATE INDEX zones_slug ON zones (slug);

CREATE TABLE admin_tokens (
    id           text        PRIMARY KEY,
    name         text        NOT NULL,
    scope        text        NOT NULL,
    zone_id      text,
    capability   text        NOT NULL,
    token_sha256 text        NOT NULL,
    created_by   text        NOT NULL,
    created_at   timestamptz NOT NULL,
    revoked_at   timestamptz,
    version      bigint      NOT NULL
);
CREATE INDEX admin_tokens_digest ON admin_tokens (token_sha256) WHERE revoked_at IS NULL;
CREATE INDEX admin_tokens_list ON admin_tokens (created_at DESC, id DESC);

-- The application read model's columns that zone routes query (dcr-status, DCR shutdown).
-- Its projection and the remaining columns arrive with the applications aggregate.
CREATE TABLE applications (
    id                  text        PRIMARY KEY,
    zone_id             text        NOT NULL,
    registration_method text        NOT NULL,
    expires_at          timestamptz,
    archived_at         timestamptz,
    created_at          timestamptz NOT NULL
);
CREATE INDEX applications_live_dcr ON applications (zone_id)
    WHERE registration_method = 'dcr' AND archived_at IS NULL;
