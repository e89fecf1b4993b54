//! `replay --as-of`: the read models as they stood at a point in time, built from the log
//! into a separate schema for forensics. The live schema is never touched.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serval_projector::admin_audit::AdminAuditProjection;
use serval_projector::admin_tokens::AdminTokensProjection;
use serval_projector::catalog::CatalogProjection;
use serval_projector::policies::PoliciesProjection;
use serval_projector::zones::ZonesProjection;
use serval_projector::{Projection, ProjectorConfig, Runner, Visibility};
use serval_streams::EntryId;
use sqlx::PgPool;

use crate::context::Context;

#[derive(Debug, Clone)]
pub enum AsOf {
    Entry(EntryId),
    Time(DateTime<Utc>),
}

impl std::str::FromStr for AsOf {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(id) = s.parse::<EntryId>() {
            return Ok(AsOf::Entry(id));
        }
        DateTime::parse_from_rfc3339(s)
            .map(|t| AsOf::Time(t.with_timezone(&Utc)))
            .map_err(|_| format!("{s:?} is neither an entry id (<ms>-<seq>) nor an RFC 3339 time"))
    }
}

impl AsOf {
    /// The last entry id included. Entry ids carry Redis's append time in milliseconds.
    pub fn bound(&self) -> EntryId {
        match self {
            AsOf::Entry(id) => *id,
            AsOf::Time(t) => EntryId::new(t.timestamp_millis().max(0) as u64, u64::MAX),
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// An entry id (`<ms>-<seq>`, inclusive) or an RFC 3339 time.
    #[arg(long)]
    pub as_of: AsOf,
    /// The schema to build into (created; must not exist).
    #[arg(long)]
    pub schema: String,
}

pub fn valid_schema_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s != "public"
}

pub async fn create_schema(ctx: &Context, schema: &str) -> anyhow::Result<PgPool> {
    anyhow::ensure!(
        valid_schema_name(schema),
        "schema name must match ^[a-z_][a-z0-9_]{{0,62}}$ and not be public"
    );
    let admin = ctx.pool().await?;
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await?;
    admin.close().await;
    let pool = ctx.pool_in(Some(schema)).await?;
    serval_schema::migrate(&pool).await?;
    Ok(pool)
}

pub async fn project<P: Projection>(
    ctx: &Context,
    pool: &PgPool,
    p: P,
    until: Option<EntryId>,
    batch: usize,
) -> anyhow::Result<u64> {
    let mut cfg = ProjectorConfig::new(ctx.keys.clone(), ctx.signer.clone());
    cfg.until = until;
    cfg.batch_size = batch;
    let mut runner = Runner::new(
        p,
        pool.clone(),
        ctx.redis.clone(),
        Arc::new(cfg),
        Visibility::new(),
    );
    Ok(runner.catch_up().await?)
}

pub async fn run(ctx: &Context, args: &ReplayArgs) -> anyhow::Result<u64> {
    let pool = create_schema(ctx, &args.schema).await?;
    let bound = Some(args.as_of.bound());
    let mut n = project(ctx, &pool, ZonesProjection, bound, 5_000).await?;
    n += project(ctx, &pool, AdminTokensProjection, bound, 5_000).await?;
    n += project(ctx, &pool, PoliciesProjection, bound, 5_000).await?;
    n += project(ctx, &pool, CatalogProjection, bound, 5_000).await?;
    let audit = AdminAuditProjection::new(ctx.audit_key.clone());
    n += project(ctx, &pool, audit, bound, 5_000).await?;
    let ledger = serval_projector::audit::AuditProjection::new(ctx.audit_key.clone());
    n += project(ctx, &pool, ledger, bound, 5_000).await?;
    pool.close().await;
    eprintln!(
        "replayed the read models as of {} into schema {}",
        args.as_of.bound(),
        args.schema
    );
    Ok(n)
}
