//! Serval's Postgres schema: embedded migrations for the read models and the archive.
//!
//! Migrations are applied by `serval migrate` and at every start (sqlx takes an advisory
//! lock, so concurrent starts are safe).
#![forbid(unsafe_code)]

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::PgPool;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Projection names and their schema versions. Bump a version when a projection's tables
/// change shape; the replay tool rebuilds a projection whose version moved.
pub mod projections {
    pub const ZONES: &str = "zones";
    pub const ADMIN_TOKENS: &str = "admin_tokens";
    pub const ARCHIVE: &str = "archive";
    pub const RELAY: &str = "relay";
    pub const POLICIES: &str = "policies";
    pub const CATALOG: &str = "catalog";
    pub const ADMIN_AUDIT: &str = "admin_audit";
    pub const AUDIT: &str = "audit";

    pub const VERSIONS: &[(&str, u32)] = &[
        (ZONES, 1),
        (ADMIN_TOKENS, 1),
        (ARCHIVE, 1),
        (RELAY, 1),
        (POLICIES, 1),
        (CATALOG, 1),
        (ADMIN_AUDIT, 1),
        (AUDIT, 1),
    ];
}

pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}
