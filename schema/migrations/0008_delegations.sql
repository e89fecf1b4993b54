-- The Delegation graph of each zone (coordinator.md §7, §11–§13), written by the catalog
-- projection from the zone graph's events. `epoch` is the graph aggregate's version.
CREATE TABLE delegation_graphs (
    zone_id text PRIMARY KEY,
    epoch bigint NOT NULL
);

CREATE TABLE delegation_edges (
    id text PRIMARY KEY,
    zone_id text NOT NULL,
    source_session_id text NOT NULL,
    target_session_id text NOT NULL,
    issuer_application_id text NOT NULL,
    receiver_application_id text NOT NULL,
    status text NOT NULL,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    -- serval_domain::delegation::Edge as JSON.
    doc jsonb NOT NULL
);

-- Walks follow active edges by source; parents and inbound lists by target.
CREATE INDEX delegation_edges_active_source
    ON delegation_edges (zone_id, source_session_id) WHERE status = 'active';
CREATE INDEX delegation_edges_target ON delegation_edges (zone_id, target_session_id, id DESC);
CREATE INDEX delegation_edges_source ON delegation_edges (zone_id, source_session_id, id DESC);
CREATE INDEX delegation_edges_active ON delegation_edges (zone_id, id DESC) WHERE status = 'active';

-- Coordinator Session lookups: live counts per zone and application.
CREATE INDEX catalog_objects_session_app
    ON catalog_objects (zone_id, (doc #>> '{data,session,application_id}'))
    WHERE kind = 'session';
CREATE INDEX catalog_objects_session_open
    ON catalog_objects (zone_id)
    WHERE kind = 'session' AND doc #>> '{data,session,status}' IN ('active', 'suspended');
