-- The zone catalog read model (projection `catalog`): applications, providers, resources,
-- grants and provider connections, one row per object. `doc` is the object as the domain's
-- `catalog::evolve` builds it (`serval_domain::catalog::Entity` as JSON); the columns beside
-- it are what lists and filters need indexed.
DROP TABLE IF EXISTS applications;

CREATE TABLE catalog_objects (
    id          text        PRIMARY KEY,
    kind        text        NOT NULL,
    zone_id     text        NOT NULL,
    created_at  timestamptz NOT NULL,
    archived_at timestamptz,
    version     bigint      NOT NULL,
    doc         jsonb       NOT NULL
);

-- Standard lists: (created_at, id) descending within a zone and kind, live or archived.
CREATE INDEX catalog_objects_live ON catalog_objects (zone_id, kind, created_at DESC, id DESC)
    WHERE archived_at IS NULL;
CREATE INDEX catalog_objects_archived ON catalog_objects (zone_id, kind, created_at DESC, id DESC)
    WHERE archived_at IS NOT NULL;
-- Grant revocation cascades and grant filters by subject.
CREATE INDEX catalog_objects_grant_user ON catalog_objects (zone_id, (doc #>> '{data,grant,user_id}'))
    WHERE kind = 'grant';
