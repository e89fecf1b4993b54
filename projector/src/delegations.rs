//! The Delegation graph read model: `delegation_edges` and `delegation_graphs` (writer and
//! queries). Applied by the catalog projection, so a graph change and the Sessions it
//! concerns become readable in the same kind of transaction.

use chrono::{DateTime, Utc};
use serval_domain::delegation::{self, DelegationEvent, Edge, Graph};
use sqlx::{PgConnection, PgExecutor};

pub const TABLES: [&str; 2] = ["delegation_edges", "delegation_graphs"];

type Doc = sqlx::types::Json<Edge>;

fn encode(e: &Edge) -> Result<serde_json::Value, sqlx::Error> {
    serde_json::to_value(e).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

async fn store(tx: &mut PgConnection, e: &Edge) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO delegation_edges (id, zone_id, source_session_id, target_session_id,
             issuer_application_id, receiver_application_id, status, expires_at, created_at, doc)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, doc = EXCLUDED.doc",
    )
    .bind(&e.id)
    .bind(&e.zone_id)
    .bind(&e.source_session_id)
    .bind(&e.target_session_id)
    .bind(&e.issuer_application_id)
    .bind(&e.receiver_application_id)
    .bind(&e.status)
    .bind(e.expires_at)
    .bind(e.created_at)
    .bind(encode(e)?)
    .execute(tx)
    .await?;
    Ok(())
}

/// Applies one graph event inside the projection's transaction.
pub async fn apply(
    tx: &mut PgConnection,
    zone_id: &str,
    meta: &serval_domain::EventMeta,
    event: &DelegationEvent,
) -> Result<(), sqlx::Error> {
    let ids: Vec<String> = match event {
        DelegationEvent::EdgeCreated(c) => vec![c.edge.id.clone()],
        DelegationEvent::EdgesRevoked(r) => r.edge_ids.clone(),
        DelegationEvent::EdgesExpired(x) => x.edge_ids.clone(),
    };
    let mut graph = Graph::from_edges(load_ids(&mut *tx, zone_id, &ids).await?);
    delegation::evolve(&mut graph, meta, event);
    for id in &ids {
        if let Some(e) = graph.get(id) {
            store(&mut *tx, e).await?;
        }
    }
    sqlx::query(
        "INSERT INTO delegation_graphs (zone_id, epoch) VALUES ($1, $2)
         ON CONFLICT (zone_id) DO UPDATE SET epoch = EXCLUDED.epoch",
    )
    .bind(zone_id)
    .bind(meta.aggregate_version as i64)
    .execute(tx)
    .await?;
    Ok(())
}

async fn load_ids<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    ids: &[String],
) -> Result<Vec<Edge>, sqlx::Error> {
    // Found by the primary key alone, the zone tested on the rows: with `zone_id` in the
    // condition, a generic plan made from an empty table's statistics walked the
    // `(zone_id, source_session_id)` index instead — the whole zone per lookup.
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT e.doc FROM (SELECT zone_id, doc FROM delegation_edges
                             WHERE id = ANY($2) OFFSET 0) e
          WHERE e.zone_id = $1",
    )
    .bind(zone_id)
    .bind(ids)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// The zone's graph epoch (0 before its first change).
pub async fn epoch<'e>(db: impl PgExecutor<'e>, zone_id: &str) -> Result<u64, sqlx::Error> {
    let v: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM delegation_graphs WHERE zone_id = $1")
            .bind(zone_id)
            .fetch_optional(db)
            .await?;
    Ok(v.unwrap_or(0).max(0) as u64)
}

pub async fn load<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Option<Edge>, sqlx::Error> {
    Ok(load_ids(db, zone_id, &[id.to_owned()]).await?.pop())
}

/// An edge and its ancestors by `parent_edge_id`, in one statement: at most
/// `WALK_LIMIT + 1` rows (one more than any lineage may hold, so an over-long one shows).
pub async fn lineage<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    id: &str,
) -> Result<Vec<Edge>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "WITH RECURSIVE up(doc, parent, n) AS (
             SELECT doc, doc->>'parent_edge_id', 1 FROM delegation_edges
              WHERE zone_id = $1 AND id = $2
             UNION ALL
             SELECT e.doc, e.doc->>'parent_edge_id', up.n + 1
               FROM up JOIN delegation_edges e ON e.zone_id = $1 AND e.id = up.parent
              WHERE up.n <= $3
         )
         SELECT doc FROM up",
    )
    .bind(zone_id)
    .bind(id)
    .bind(delegation::WALK_LIMIT as i32)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// Every `active` edge into `session` (expired ones included; callers apply the clock).
pub async fn active_inbound<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    session: &str,
) -> Result<Vec<Edge>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT doc FROM delegation_edges
          WHERE zone_id = $1 AND target_session_id = $2 AND status = 'active'",
    )
    .bind(zone_id)
    .bind(session)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// Every edge into `session`, any status.
pub async fn all_inbound<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    session: &str,
) -> Result<Vec<Edge>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT doc FROM delegation_edges WHERE zone_id = $1 AND target_session_id = $2",
    )
    .bind(zone_id)
    .bind(session)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// The `active` edges reachable from `session` by following active edges forward, to
/// `depth` edges (`None`: unbounded, set semantics make it terminate). One query.
pub async fn active_downstream<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    session: &str,
    depth: Option<u32>,
) -> Result<Vec<Edge>, sqlx::Error> {
    // LATERAL probes (kept apart by `OFFSET 0`, which stops the planner from flattening them)
    // keep every step an index lookup on (zone, source) whatever the planner believes about
    // the table (a zone that grew since the last ANALYZE). Unbounded, the
    // recursion is over sessions alone, so set semantics end it even on a cycle of active
    // edges that are past their expiry.
    let (reach, next) = match depth {
        Some(_) => ("reach(session, depth)", "n.target_session_id, r.depth + 1"),
        None => ("reach(session)", "n.target_session_id"),
    };
    let (seed, bound) = match depth {
        Some(_) => ("$2::text, 0", "WHERE r.depth < $3"),
        None => ("$2::text", ""),
    };
    let sql = format!(
        "WITH RECURSIVE {reach} AS (
            SELECT {seed}
            UNION
            SELECT {next}
              FROM reach r CROSS JOIN LATERAL (
                   SELECT e.target_session_id FROM delegation_edges e
                    WHERE e.zone_id = $1 AND e.source_session_id = r.session
                      AND e.status = 'active' OFFSET 0) n
             {bound})
         SELECT x.doc FROM (SELECT DISTINCT session FROM reach) s CROSS JOIN LATERAL (
                SELECT e.doc FROM delegation_edges e
                 WHERE e.zone_id = $1 AND e.source_session_id = s.session
                   AND e.status = 'active' OFFSET 0) x"
    );
    let mut q = sqlx::query_scalar::<_, Doc>(&sql)
        .bind(zone_id)
        .bind(session);
    if let Some(d) = depth {
        q = q.bind(i64::from(d));
    }
    let docs = q.fetch_all(db).await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// Whether any `active` edge has one of `sessions` at either end (a cascade's cheap test
/// before it loads a view and appends).
pub async fn any_active_touching<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    sessions: &[String],
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM delegation_edges
          WHERE zone_id = $1 AND status = 'active'
            AND (source_session_id = ANY($2) OR target_session_id = ANY($2)))",
    )
    .bind(zone_id)
    .bind(sessions)
    .fetch_one(db)
    .await
}

/// Every `active` edge with one of `sessions` at either end.
pub async fn active_touching<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    sessions: &[String],
) -> Result<Vec<Edge>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT doc FROM delegation_edges
          WHERE zone_id = $1 AND status = 'active'
            AND (source_session_id = ANY($2) OR target_session_id = ANY($2))",
    )
    .bind(zone_id)
    .bind(sessions)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// Active edges past their expiry (the cleaner's batch), at most `limit`.
pub async fn due<'e>(
    db: impl PgExecutor<'e>,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<Edge>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar(
        "SELECT doc FROM delegation_edges WHERE status = 'active' AND expires_at <= $1
          ORDER BY zone_id, id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// Which list a page walks.
#[derive(Debug, Clone)]
pub enum Listing {
    /// Live edges of the zone.
    Active,
    Inbound(String),
    Outbound(String),
}

/// One page, id descending, after `cursor` (an edge id), optionally only edges whose issuer
/// or receiver is `reader`.
pub async fn page<'e>(
    db: impl PgExecutor<'e>,
    zone_id: &str,
    listing: &Listing,
    reader: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Edge>, sqlx::Error> {
    let (filter, arg) = match listing {
        Listing::Active => ("status = 'active' AND expires_at > now()", None),
        Listing::Inbound(s) => ("target_session_id = $5", Some(s.clone())),
        Listing::Outbound(s) => ("source_session_id = $5", Some(s.clone())),
    };
    let sql = format!(
        "SELECT doc FROM delegation_edges
          WHERE zone_id = $1 AND {filter}
            AND ($2::text IS NULL OR issuer_application_id = $2 OR receiver_application_id = $2)
            AND ($3::text IS NULL OR id < $3)
          ORDER BY id DESC LIMIT $4"
    );
    let docs: Vec<Doc> = sqlx::query_scalar(&sql)
        .bind(zone_id)
        .bind(reader)
        .bind(cursor)
        .bind(limit)
        .bind(arg)
        .fetch_all(db)
        .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// Every edge (a rebuild comparison, tests).
pub async fn all<'e>(db: impl PgExecutor<'e>) -> Result<Vec<Edge>, sqlx::Error> {
    let docs: Vec<Doc> = sqlx::query_scalar("SELECT doc FROM delegation_edges ORDER BY id")
        .fetch_all(db)
        .await?;
    Ok(docs.into_iter().map(|d| d.0).collect())
}

/// The part of a zone's graph a decision looks at, at one epoch.
pub struct GraphView {
    pub epoch: u64,
    pub graph: Graph,
}

/// Which edges a decision loads with the epoch.
#[derive(Debug, Clone)]
pub enum Scope {
    /// A creation: the source's inbound edges and everything the target reaches.
    Create { source: String, target: String },
    /// A revocation walk from an edge.
    Revoke { edge: String },
    /// Edges touching ended Sessions.
    Touching(Vec<String>),
    /// Named edges.
    Edges(Vec<String>),
}

/// A zone's whole graph (every edge, any status) at one epoch, from one `REPEATABLE READ`
/// snapshot; `None` when the zone has more than `max` edges.
pub async fn whole_view(
    pool: &sqlx::PgPool,
    zone: &str,
    max: i64,
) -> Result<Option<GraphView>, sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let epoch = epoch(&mut *tx, zone).await?;
    let docs: Vec<Doc> =
        sqlx::query_scalar("SELECT doc FROM delegation_edges WHERE zone_id = $1 LIMIT $2")
            .bind(zone)
            .bind(max.saturating_add(1))
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    if docs.len() as i64 > max {
        return Ok(None);
    }
    Ok(Some(GraphView {
        epoch,
        graph: Graph::from_edges(docs.into_iter().map(|d| d.0)),
    }))
}

/// The epoch and the edges of `scope`, from one `REPEATABLE READ` snapshot.
pub async fn view(
    pool: &sqlx::PgPool,
    zone: &str,
    scope: &Scope,
) -> Result<GraphView, sqlx::Error> {
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let epoch = epoch(&mut *tx, zone).await?;
    let edges: Vec<Edge> = match scope {
        Scope::Create { source, target } => {
            let mut v = active_inbound(&mut *tx, zone, source).await?;
            v.extend(active_downstream(&mut *tx, zone, target, None).await?);
            v
        }
        Scope::Revoke { edge } => match load(&mut *tx, zone, edge).await? {
            Some(e) => {
                let mut v = active_downstream(
                    &mut *tx,
                    zone,
                    &e.target_session_id,
                    Some(delegation::WALK_LIMIT),
                )
                .await?;
                v.push(e);
                v
            }
            None => Vec::new(),
        },
        Scope::Touching(sessions) => active_touching(&mut *tx, zone, sessions).await?,
        Scope::Edges(ids) => load_ids(&mut *tx, zone, ids).await?,
    };
    tx.commit().await?;
    Ok(GraphView {
        epoch,
        graph: Graph::from_edges(edges),
    })
}
