//! Table upkeep for a server that does not do it: the read models are updated in place at
//! the write rate (a Session is inserted and then updated on every state change), so their
//! tables collect dead row versions and their statistics go stale. Postgres' autovacuum
//! handles that; where it is switched off (`autovacuum = off`, as on some shared or test
//! servers), lists and cascades slow down by orders of magnitude within minutes (a count of
//! 41 open Sessions visited 6,000 dead rows; a plan chosen from empty-table statistics
//! walked a whole zone). This loop then vacuums and analyzes the projector's tables itself,
//! with autovacuum's own thresholds. With autovacuum on it does nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::watch;

/// How often the statistics are read.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Autovacuum's defaults: a table is vacuumed past `50 + 20 %` dead rows and analyzed past
/// `50 + 10 %` changed rows.
const VACUUM_BASE: i64 = 50;
const VACUUM_SCALE: f64 = 0.2;
const ANALYZE_BASE: i64 = 50;
const ANALYZE_SCALE: f64 = 0.1;

/// What one table needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    VacuumAnalyze,
    Analyze,
}

/// Autovacuum's rule for a table of `live` rows with `dead` dead rows and `changed` rows
/// changed since its last analyze.
pub fn need(live: i64, dead: i64, changed: i64) -> Option<Need> {
    let live = live.max(0) as f64;
    if dead as f64 > VACUUM_BASE as f64 + VACUUM_SCALE * live {
        Some(Need::VacuumAnalyze)
    } else if changed as f64 > ANALYZE_BASE as f64 + ANALYZE_SCALE * live {
        Some(Need::Analyze)
    } else {
        None
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A table is worked on at most this often (dead rows an old transaction still holds back
/// cannot be removed, and must not cost a VACUUM every pass).
const PER_TABLE: Duration = Duration::from_secs(60);

/// One pass: every table of the current schema owned by the current role and past its
/// threshold, when the server's autovacuum is off. `last` remembers when each table was
/// last worked on. Returns the tables worked on; a table that fails is logged and skipped.
pub async fn pass(
    pool: &PgPool,
    last: &mut HashMap<String, Instant>,
) -> Result<Vec<String>, sqlx::Error> {
    let autovacuum: String = sqlx::query_scalar("SELECT current_setting('autovacuum')")
        .fetch_one(pool)
        .await?;
    if autovacuum != "off" {
        return Ok(Vec::new());
    }
    let tables: Vec<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT s.schemaname::text, s.relname::text, s.n_live_tup, s.n_dead_tup,
                s.n_mod_since_analyze
           FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
          WHERE s.schemaname = current_schema() AND pg_has_role(c.relowner, 'USAGE')",
    )
    .fetch_all(pool)
    .await?;
    let mut done = Vec::new();
    for (schema, table, live, dead, changed) in tables {
        let Some(need) = need(live, dead, changed) else {
            continue;
        };
        if last.get(&table).is_some_and(|t| t.elapsed() < PER_TABLE) {
            continue;
        }
        last.insert(table.clone(), Instant::now());
        let name = format!("{}.{}", quote_ident(&schema), quote_ident(&table));
        let sql = match need {
            Need::VacuumAnalyze => format!("VACUUM (ANALYZE, SKIP_LOCKED) {name}"),
            Need::Analyze => format!("ANALYZE (SKIP_LOCKED) {name}"),
        };
        // The simple protocol: VACUUM cannot run inside the implicit transaction of an
        // extended-protocol exchange.
        match sqlx::raw_sql(&sql).execute(pool).await {
            Ok(_) => done.push(table),
            Err(e) => tracing::warn!(error = %e, table, "table upkeep failed"),
        }
    }
    Ok(done)
}

/// Runs [`pass`] every [`INTERVAL`] until `stop`.
pub async fn run(pool: PgPool, mut stop: watch::Receiver<bool>) {
    let mut last = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        match pass(&pool, &mut last).await {
            Ok(tables) if !tables.is_empty() => {
                tracing::debug!(?tables, "vacuumed or analyzed (autovacuum is off)");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "table upkeep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_autovacuums() {
        assert_eq!(need(1000, 250, 0), None);
        assert_eq!(need(1000, 251, 0), Some(Need::VacuumAnalyze));
        assert_eq!(need(1000, 0, 151), Some(Need::Analyze));
        assert_eq!(need(0, 51, 0), Some(Need::VacuumAnalyze));
        assert_eq!(need(0, 0, 50), None);
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
