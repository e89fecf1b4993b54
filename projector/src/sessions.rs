//! Coordinator queries over the Sessions in `catalog_objects` (kind `session`): capacity
//! counts, children and subtrees (one recursive query each, never one query per node).

use chrono::{DateTime, Utc};
use serval_domain::catalog::Entity;
use sqlx::PgExecutor;

type Doc = sqlx::types::Json<Entity>;

/// A Session counts against capacity while live (§4.1 step 7): tasks inside their TTL,
/// services with a future lease deadline, and suspended services.
const LIVE_SQL: &str = "doc #>> '{data,session,status}' IN ('active', 'suspended')
   AND CASE WHEN doc #>> '{data,session,lifecycle}' = 'service'
            THEN doc #>> '{data,session,status}' = 'suspended'
                 OR (doc #>> '{data,session,heartbeat_deadline_at}')::timestamptz > $2
            ELSE doc #>> '{data,session,ttl_seconds}' IS NULL
                 OR COALESCE((doc #>> '{data,session,started_at}')::timestamptz, created_at)
                    + make_interval(secs => (doc #>> '{data,session,ttl_seconds}')::double precision) > $2
       END";

/// Live Sessions of the zone, and of `application` among them.
pub async fn live_counts<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    application: &str,
    now: DateTime<Utc>,
) -> Result<(i64, i64), sqlx::Error> {
    let sql = format!(
        "SELECT count(*), count(*) FILTER (WHERE doc #>> '{{data,session,application_id}}' = $3)
           FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'session'
            AND doc #>> '{{data,session,status}}' IN ('active', 'suspended') AND {LIVE_SQL}"
    );
    sqlx::query_as(&sql)
        .bind(zone_id)
        .bind(now)
        .bind(application)
        .fetch_one(db)
        .await
}

/// Children of `parent` still active or suspended.
pub async fn open_children<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    parent: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'session'
            AND doc #>> '{data,session,parent_session_id}' = $2
            AND doc #>> '{data,session,status}' IN ('active', 'suspended')",
    )
    .bind(zone_id)
    .bind(parent)
    .fetch_one(db)
    .await
}

/// One page of the direct children of `parent`, id descending, after `cursor`.
pub async fn children<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    parent: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Entity>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT doc FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'session'
            AND doc #>> '{data,session,parent_session_id}' = $2
            AND ($3::text IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4",
    )
    .bind(zone_id)
    .bind(parent)
    .bind(cursor)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// A Session and every descendant reachable through Sessions whose status is one of
/// `through` (the root whatever its status), root first, then by depth.
pub async fn subtree<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    root: &str,
    through: &[&str],
) -> Result<Vec<Entity>, sqlx::Error> {
    let through: Vec<String> = through.iter().map(|s| s.to_string()).collect();
    // Rows found by their primary key alone (zone and kind tested on the row, outside an
    // `OFFSET 0` fence) and each step a LATERAL probe of the parent index (the status tested
    // outside it). Left to itself, the planner found the root through a zone index when the
    // statistics were a small table's (a cached generic plan: the whole zone per call,
    // 5–10 ms at 6,000 Sessions), and scanned the zone's open Sessions through their
    // partial index, which between two vacuums still lists every Session ever opened
    // (0.5 ms and 170 buffers per cascade, against 0.1 ms and 14).
    let docs: Vec<Doc> = sqlx::query_scalar(
        "WITH RECURSIVE tree(id, depth) AS (
            SELECT r.id, 0 FROM (SELECT id, zone_id, kind FROM catalog_objects
                                  WHERE id = $2 OFFSET 0) r
             WHERE r.zone_id = $1 AND r.kind = 'session'
            UNION
            SELECT n.id, t.depth + 1 FROM tree t CROSS JOIN LATERAL (
                   SELECT c.id, c.doc #>> '{data,session,status}' AS status
                     FROM catalog_objects c
                    WHERE c.zone_id = $1 AND c.kind = 'session'
                      AND c.doc #>> '{data,session,parent_session_id}' = t.id OFFSET 0) n
             WHERE n.status = ANY($3) AND t.depth < 64)
         SELECT c.doc FROM tree t CROSS JOIN LATERAL (
                SELECT o.id, o.zone_id, o.kind, o.doc FROM catalog_objects o
                 WHERE o.id = t.id OFFSET 0) c
          WHERE c.zone_id = $1 AND c.kind = 'session'
          ORDER BY t.depth, c.id",
    )
    .bind(zone_id)
    .bind(root)
    .bind(&through)
    .fetch_all(db)
    .await?;
    // The statement already refuses a root outside the zone; kept as the last word.
    if docs.first().is_none_or(|d| d.0.id != root) {
        return Ok(Vec::new());
    }
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// One page of a zone's Sessions, id descending, with the list filters of §4.2.
pub async fn page<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    filters: &SessionFilters,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Entity>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT doc FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'session'
            AND ($2::text IS NULL OR doc #>> '{data,session,status}' = $2)
            AND ($3::text IS NULL OR doc #>> '{data,session,lifecycle}' = $3)
            AND ($4::text IS NULL OR doc #>> '{data,session,application_id}' = $4)
            AND ($5::jsonb IS NULL OR doc #> '{data,session,labels}' @> $5)
            AND ($6::text IS NULL OR id < $6)
          ORDER BY id DESC LIMIT $7",
    )
    .bind(zone_id)
    .bind(&filters.status)
    .bind(&filters.lifecycle)
    .bind(&filters.application_id)
    .bind(filters.label.as_ref().map(|l| serde_json::json!([l])))
    .bind(cursor)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

#[derive(Debug, Clone, Default)]
pub struct SessionFilters {
    pub status: Option<String>,
    pub lifecycle: Option<String>,
    pub application_id: Option<String>,
    pub label: Option<String>,
}

/// Sessions due for a sweep: tasks past their TTL (active or suspended) and active services
/// past their lease deadline, at most `limit`: `(zone_id, id, is_service)`.
pub async fn due<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, id, doc #>> '{data,session,lifecycle}' = 'service' FROM catalog_objects
          WHERE kind = 'session' AND doc #>> '{data,session,status}' IN ('active', 'suspended')
            AND CASE WHEN doc #>> '{data,session,lifecycle}' = 'service'
                     THEN doc #>> '{data,session,status}' = 'active'
                          AND (doc #>> '{data,session,heartbeat_deadline_at}')::timestamptz <= $1
                     ELSE doc #>> '{data,session,ttl_seconds}' IS NOT NULL
                          AND COALESCE((doc #>> '{data,session,started_at}')::timestamptz, created_at)
                              + make_interval(secs => (doc #>> '{data,session,ttl_seconds}')::double precision) <= $1
                END
          ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Open Sessions (other than `except`) attributed to `record`: a revocation of the record
/// is then exempt (§12.1).
pub async fn others_on_record<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    record: &str,
    except: &[String],
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM catalog_objects
          WHERE zone_id = $1 AND kind = 'session'
            AND doc #>> '{data,session,subject_authority_record_id}' = $2
            AND doc #>> '{data,session,status}' IN ('active', 'suspended')
            AND NOT (id = ANY($3))",
    )
    .bind(zone_id)
    .bind(record)
    .bind(except)
    .fetch_one(db)
    .await
}

/// One page of a zone's objects of `kind`, id descending after `cursor`, where every
/// `(field, value)` of `eq` matches `doc.data.<kind>.<field>` and, with `either`, one of
/// its two fields equals its value.
pub async fn kind_page<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    kind: serval_domain::catalog::CatalogKind,
    eq: &[(&'static str, String)],
    either: Option<(&'static str, &'static str, String)>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Entity>, sqlx::Error> {
    let k = kind.as_str();
    let mut sql = format!(
        "SELECT doc FROM catalog_objects WHERE zone_id = $1 AND kind = '{k}' AND ($2::text IS NULL OR id < $2)"
    );
    let mut n = 3;
    for (field, _) in eq {
        sql.push_str(&format!(" AND doc #>> '{{data,{k},{field}}}' = ${n}"));
        n += 1;
    }
    if let Some((a, b, _)) = &either {
        sql.push_str(&format!(
            " AND (doc #>> '{{data,{k},{a}}}' = ${n} OR doc #>> '{{data,{k},{b}}}' = ${n})"
        ));
    }
    sql.push_str(" ORDER BY id DESC LIMIT ");
    sql.push_str(&limit.max(0).to_string());
    let mut q = sqlx::query_scalar::<_, Doc>(&sql)
        .bind(zone_id)
        .bind(cursor);
    for (_, v) in eq {
        q = q.bind(v.clone());
    }
    if let Some((_, _, v)) = either {
        q = q.bind(v);
    }
    Ok(q.fetch_all(db).await?.into_iter().map(|d| d.0).collect())
}

/// Running invocations past their deadline: `(zone_id, id)`, at most `limit`.
pub async fn invocations_due<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT zone_id, id FROM catalog_objects
          WHERE kind = 'invocation' AND doc #>> '{data,invocation,status}' = 'running'
            AND (doc #>> '{data,invocation,deadline_at}')::timestamptz <= $1
          ORDER BY id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Active edges with an ended Session at either end (a cascade a crash interrupted):
/// `(zone_id, ended session id)` pairs, at most `limit`. The ends of active edges are
/// listed first and joined by key: a join on `s.id IN (source, target)` cannot use an
/// index and took 21 s in a zone of 7,400 active edges and 4,000 Sessions (now 29 ms).
pub async fn orphaned_edge_ends<'e>(
    db: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT x.zone_id, x.id FROM (
            SELECT zone_id, source_session_id AS id FROM delegation_edges WHERE status = 'active'
            UNION
            SELECT zone_id, target_session_id FROM delegation_edges WHERE status = 'active'
         ) x
         JOIN catalog_objects s ON s.id = x.id AND s.zone_id = x.zone_id AND s.kind = 'session'
         WHERE s.doc #>> '{data,session,status}' IN ('terminated', 'expired')
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Counts by status for the Coordinator's `/stats`.
pub struct CoordinatorCounts {
    pub sessions: serde_json::Value,
    pub invocations: serde_json::Value,
    pub delegations: serde_json::Value,
}

pub async fn coordinator_counts(pool: &sqlx::PgPool) -> Result<CoordinatorCounts, sqlx::Error> {
    let by = |rows: Vec<(String, i64)>| {
        serde_json::Value::Object(rows.into_iter().map(|(k, v)| (k, v.into())).collect())
    };
    let sessions: Vec<(String, i64)> = sqlx::query_as(
        "SELECT doc #>> '{data,session,status}', count(*) FROM catalog_objects
          WHERE kind = 'session' GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    let invocations: Vec<(String, i64)> = sqlx::query_as(
        "SELECT doc #>> '{data,invocation,status}', count(*) FROM catalog_objects
          WHERE kind = 'invocation' GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    let delegations: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM delegation_edges GROUP BY 1")
            .fetch_all(pool)
            .await?;
    Ok(CoordinatorCounts {
        sessions: by(sessions),
        invocations: by(invocations),
        delegations: by(delegations),
    })
}

/// Open Sessions a cascade left behind (a crash or a race with a start): those whose parent
/// has ended, and those that are the target of an edge the revoke route revoked —
/// `(zone_id, id)`, at most `limit`.
pub async fn stranded<'e>(
    db: impl PgExecutor<'e>,
    limit: i64,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.zone_id, c.id FROM catalog_objects c
           JOIN catalog_objects p ON p.zone_id = c.zone_id AND p.kind = 'session'
            AND p.id = c.doc #>> '{data,session,parent_session_id}'
          WHERE c.kind = 'session'
            AND c.doc #>> '{data,session,status}' IN ('active', 'suspended')
            AND p.doc #>> '{data,session,status}' IN ('terminated', 'expired')
         UNION
         SELECT s.zone_id, s.id FROM delegation_edges e
           JOIN catalog_objects s ON s.zone_id = e.zone_id AND s.kind = 'session'
            AND s.id = e.target_session_id
          WHERE e.status = 'revoked' AND e.doc ->> 'end_reason' = 'delegation_revoked'
            AND s.doc #>> '{data,session,status}' IN ('active', 'suspended')
         LIMIT $1",
    )
    .bind(limit)
    .fetch_all(db)
    .await
}
