-- Policies, policy sets and the zone's active binding (the `policies` projection), and
-- the relay's dispatch record (what `activation-status` reports as the outbox state).

CREATE TABLE policies (
    id                   text        PRIMARY KEY,
    zone_id              text        NOT NULL,
    name                 text        NOT NULL,
    description          text,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    archived_at          timestamptz,
    latest_version       bigint      NOT NULL,
    version              bigint      NOT NULL
);
CREATE INDEX policies_list ON policies (zone_id, created_at DESC, id DESC) WHERE archived_at IS NULL;

-- Immutable: written once from the event that records the version.
CREATE TABLE policy_versions (
    id                   text        PRIMARY KEY,
    policy_id            text        NOT NULL,
    zone_id              text        NOT NULL,
    version              bigint      NOT NULL,
    content              text        NOT NULL,
    content_sha256       text        NOT NULL,
    schema_version       text        NOT NULL,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    UNIQUE (policy_id, version)
);

CREATE TABLE policy_sets (
    id                   text        PRIMARY KEY,
    zone_id              text        NOT NULL,
    name                 text        NOT NULL,
    description          text,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    updated_by           text        NOT NULL,
    updated_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL,
    archived_at          timestamptz,
    active_version_id    text,
    latest_version       bigint      NOT NULL DEFAULT 0
);
CREATE INDEX policy_sets_list ON policy_sets (zone_id, created_at DESC, id DESC) WHERE archived_at IS NULL;

CREATE TABLE policy_set_versions (
    id                   text        PRIMARY KEY,
    policy_set_id        text        NOT NULL,
    zone_id              text        NOT NULL,
    version              bigint      NOT NULL,
    manifest             jsonb       NOT NULL,
    manifest_sha256      text        NOT NULL,
    schema_version       text        NOT NULL,
    created_by           text        NOT NULL,
    created_via_operator boolean     NOT NULL,
    created_at           timestamptz NOT NULL,
    UNIQUE (policy_set_id, version)
);
CREATE INDEX policy_set_versions_list ON policy_set_versions (policy_set_id, created_at DESC, id DESC);

-- The per-zone catalog aggregate's log version. (The active binding is the set row whose
-- `active_version_id` is set: at most one per zone.)
CREATE TABLE policy_catalogs (
    zone_id text   PRIMARY KEY,
    version bigint NOT NULL
);
CREATE INDEX policy_sets_active ON policy_sets (zone_id) WHERE active_version_id IS NOT NULL;

-- Every binding change (activation, or clearing by deleting the active set), by event id:
-- the event id is the `outbox_id` of its `caracal.policy.invalidate` message.
CREATE TABLE policy_activations (
    event_id      text        PRIMARY KEY,
    zone_id       text        NOT NULL,
    policy_set_id text        NOT NULL,
    version_id    text,
    stream        text        NOT NULL,
    entry_ms      bigint      NOT NULL,
    entry_seq     bigint      NOT NULL,
    occurred_at   timestamptz NOT NULL
);
CREATE INDEX policy_activations_by_set ON policy_activations (zone_id, policy_set_id, occurred_at DESC);

-- Written by the relay in its batch transaction: the topic entry each message became.
CREATE TABLE relay_dispatches (
    outbox_id      text        PRIMARY KEY,
    event_id       text        NOT NULL,
    topic          text        NOT NULL,
    topic_entry_id text        NOT NULL,
    dispatched_at  timestamptz NOT NULL
);
