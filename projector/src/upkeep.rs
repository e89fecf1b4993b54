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
    due(live, dead, changed, false, false)
}

/// [`need`] for a table vacuumed within [`PER_TABLE`] or analyzed within [`ANALYZE_EVERY`]
/// or not: a table vacuumed lately is only analyzed, when its changes call for it, and one
/// analyzed lately only vacuumed.
pub fn due(
    live: i64,
    dead: i64,
    changed: i64,
    vacuumed_lately: bool,
    analyzed_lately: bool,
) -> Option<Need> {
    if vacuum_due(live, dead) && !vacuumed_lately {
        Some(Need::VacuumAnalyze)
    } else if analyze_due(live, changed) && !analyzed_lately {
        Some(Need::Analyze)
    } else {
        None
    }
}

fn vacuum_due(live: i64, dead: i64) -> bool {
    dead as f64 > VACUUM_BASE as f64 + VACUUM_SCALE * live.max(0) as f64
}

fn analyze_due(live: i64, changed: i64) -> bool {
    changed as f64 > ANALYZE_BASE as f64 + ANALYZE_SCALE * live.max(0) as f64
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A table is vacuumed at most this often (dead rows an old transaction still holds back
/// cannot be removed, and must not cost a VACUUM every pass).
const PER_TABLE: Duration = Duration::from_secs(60);

/// A table is analyzed at most this often. Shorter than [`PER_TABLE`]: plans made from a
/// small table's statistics (cached ones included) can walk whole zones until the next
/// ANALYZE — the likely cause of traverses that took ~31 ms per call for tens of seconds
/// right after a zone was filled with 10,000 edges. Not every pass: an ANALYZE samples up
/// to 30,000 rows (~0.3 s for a large `catalog_objects` on 2 cores), invalidates the
/// table's cached plans in every session, and a migration's `ALTER TABLE` waits behind it.
const ANALYZE_EVERY: Duration = Duration::from_secs(20);

/// When each table was last vacuumed and last analyzed by this loop.
#[derive(Default)]
pub struct Worked {
    vacuumed: HashMap<String, Instant>,
    analyzed: HashMap<String, Instant>,
}

/// One pass: every table of the current schema owned by the current role and past its
/// threshold, when the server's autovacuum is off. `last` remembers when each table was
/// last vacuumed and analyzed. Returns the tables worked on; a table that fails is logged
/// and skipped.
pub async fn pass(pool: &PgPool, last: &mut Worked) -> Result<Vec<String>, sqlx::Error> {
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
        let within = |m: &HashMap<String, Instant>, d: Duration| {
            m.get(&table).is_some_and(|t| t.elapsed() < d)
        };
        let vacuumed_lately = within(&last.vacuumed, PER_TABLE);
        let analyzed_lately = within(&last.analyzed, ANALYZE_EVERY);
        let Some(need) = due(live, dead, changed, vacuumed_lately, analyzed_lately) else {
            continue;
        };
        if need == Need::VacuumAnalyze {
            last.vacuumed.insert(table.clone(), Instant::now());
        }
        last.analyzed.insert(table.clone(), Instant::now());
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
    let mut last = Worked::default();
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

    #[test]
    fn a_table_vacuumed_lately_is_still_analyzed_when_it_changed() {
        assert_eq!(due(1000, 251, 151, false, false), Some(Need::VacuumAnalyze));
        assert_eq!(due(1000, 251, 151, true, false), Some(Need::Analyze));
        assert_eq!(due(1000, 251, 150, true, false), None);
        assert_eq!(due(1000, 0, 151, true, false), Some(Need::Analyze));
        assert_eq!(due(1000, 0, 0, true, false), None);
        // Analyzed lately: vacuumed if due, not analyzed again.
        assert_eq!(due(1000, 251, 151, false, true), Some(Need::VacuumAnalyze));
        assert_eq!(due(1000, 251, 151, true, true), None);
        assert_eq!(due(1000, 0, 151, false, true), None);
    }
}
