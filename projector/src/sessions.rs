//! Coordinator queries over the Sessions in `catalog_objects` (kind `session`) and their
//! narrow `live_sessions` rows: capacity counts, children and subtrees (one recursive query
//! each, never one query per node).

use chrono::{DateTime, Utc};
use serval_domain::catalog::{Entity, EntityData};
use sqlx::{PgConnection, PgExecutor};

type Doc = sqlx::types::Json<Entity>;

/// Live Sessions of the zone, and of `application` among them (`live_sessions`, kept by the
/// catalog projection: §4.1 step 7 counts tasks inside their TTL, services with a future
/// lease deadline, and suspended services).
pub async fn live_counts<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    application: &str,
    now: DateTime<Utc>,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE application_id = $3) FROM live_sessions
          WHERE zone_id = $1 AND (live_until IS NULL OR live_until > $2)",
    )
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
    sqlx::query_scalar("SELECT count(*) FROM live_sessions WHERE zone_id = $1 AND parent_id = $2")
        .bind(zone_id)
        .bind(parent)
        .fetch_one(db)
        .await
}

/// Keeps `live_sessions` in step with the Sessions among `changed`, in the catalog
/// projection's transaction: a row while a Session counts, none once it has ended.
pub async fn store_live(tx: &mut PgConnection, changed: &[&Entity]) -> Result<(), sqlx::Error> {
    let mut ended: (Vec<&str>, Vec<&str>) = Default::default();
    let mut live = LiveRows::default();
    for e in changed {
        let EntityData::Session(s) = &e.data else {
            continue;
        };
        match s.counts_until(e.created_at) {
            None => {
                ended.0.push(&e.zone_id);
                ended.1.push(&e.id);
            }
            Some(until) => {
                live.zone_id.push(&e.zone_id);
                live.id.push(&e.id);
                live.application_id.push(&s.application_id);
                live.parent_id.push(s.parent_session_id.as_deref());
                live.live_until.push(until);
            }
        }
    }
    if !ended.0.is_empty() {
        sqlx::query(
            "DELETE FROM live_sessions l USING UNNEST($1::text[], $2::text[]) AS k(zone_id, id)
              WHERE l.zone_id = k.zone_id AND l.id = k.id",
        )
        .bind(ended.0)
        .bind(ended.1)
        .execute(&mut *tx)
        .await?;
    }
    if !live.id.is_empty() {
        sqlx::query(
            "INSERT INTO live_sessions (zone_id, id, application_id, parent_id, live_until)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                 $5::timestamptz[])
             ON CONFLICT (zone_id, id) DO UPDATE SET application_id = EXCLUDED.application_id,
                 parent_id = EXCLUDED.parent_id, live_until = EXCLUDED.live_until",
        )
        .bind(live.zone_id)
        .bind(live.id)
        .bind(live.application_id)
        .bind(live.parent_id)
        .bind(live.live_until)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// The `live_sessions` row of every Session document still active or suspended, in SQL: the
/// rule of `SessionData::counts_until` (as `0011_live_sessions.sql` backfilled it; fractions
/// of a second past the microsecond are cut, as a bound timestamp is).
const LIVE_ROWS: &str = r"SELECT zone_id, id,
       COALESCE(doc #>> '{data,session,application_id}', ''),
       doc #>> '{data,session,parent_session_id}',
       CASE
         WHEN doc #>> '{data,session,lifecycle}' = 'service' THEN
           CASE WHEN doc #>> '{data,session,status}' = 'suspended' THEN NULL
                ELSE COALESCE(regexp_replace(doc #>> '{data,session,heartbeat_deadline_at}',
                                             '(\.\d{6})\d+', '\1')::timestamptz,
                              'epoch'::timestamptz)
           END
         WHEN doc #>> '{data,session,ttl_seconds}' IS NULL
           OR (doc #>> '{data,session,ttl_seconds}')::numeric >= 300000000000 THEN NULL
         ELSE COALESCE(regexp_replace(doc #>> '{data,session,started_at}',
                                      '(\.\d{6})\d+', '\1')::timestamptz, created_at)
              + make_interval(secs => (doc #>> '{data,session,ttl_seconds}')::double precision)
       END
  FROM catalog_objects
 WHERE kind = 'session' AND doc #>> '{data,session,status}' IN ('active', 'suspended')";

/// Repairs `live_sessions` from the Session documents and returns how many rows it changed:
/// during a rolling upgrade a projector of an earlier version, sharing the streams, writes
/// Sessions without their rows. The table is locked against the projection's writes (not
/// its reads) meanwhile, so a batch committed after it still lands on top of the repair.
pub async fn reconcile_live(pool: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query("LOCK TABLE live_sessions IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    let removed = sqlx::query(
        "DELETE FROM live_sessions l WHERE NOT EXISTS (
             SELECT 1 FROM catalog_objects c
              WHERE c.id = l.id AND c.zone_id = l.zone_id AND c.kind = 'session'
                AND c.doc #>> '{data,session,status}' IN ('active', 'suspended'))",
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let written = sqlx::query(&format!(
        "INSERT INTO live_sessions (zone_id, id, application_id, parent_id, live_until)
         {LIVE_ROWS}
         ON CONFLICT (zone_id, id) DO UPDATE SET application_id = EXCLUDED.application_id,
             parent_id = EXCLUDED.parent_id, live_until = EXCLUDED.live_until
         WHERE (live_sessions.application_id, live_sessions.parent_id, live_sessions.live_until)
               IS DISTINCT FROM (EXCLUDED.application_id, EXCLUDED.parent_id,
                                 EXCLUDED.live_until)"
    ))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(removed + written)
}

/// How often [`reconcile_loop`] repairs `live_sessions`: an upgrade's drift lasts at most
/// this long after the last projector of the earlier version stops.
pub const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Runs [`reconcile_live`] a minute after start, then every [`RECONCILE_EVERY`], until `stop`.
pub async fn reconcile_loop(pool: sqlx::PgPool, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut wait = std::time::Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        wait = RECONCILE_EVERY;
        match reconcile_live(&pool).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                rows = n,
                "live_sessions repaired from the Session documents"
            ),
            Err(e) => tracing::warn!(error = %e, "live_sessions repair failed; will retry"),
        }
    }
}

/// `live_sessions` rows, column by column for one `UNNEST` insert.
#[derive(Default)]
struct LiveRows<'a> {
    zone_id: Vec<&'a str>,
    id: Vec<&'a str>,
    application_id: Vec<&'a str>,
    parent_id: Vec<Option<&'a str>>,
    live_until: Vec<Option<DateTime<Utc>>>,
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
