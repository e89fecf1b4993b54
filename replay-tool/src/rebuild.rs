//! `rebuild`: rebuild a projection from the log into a shadow schema while the live one
//! keeps serving and advancing, catch up, then swap the tables in one transaction.
//!
//! The swap takes `ACCESS EXCLUSIVE` locks on the live tables and the projection's
//! checkpoint rows, checks the shadow has reached every live checkpoint (else it releases,
//! catches up and tries again), moves the live tables out and the shadow tables in, and
//! copies the shadow checkpoints. Readers block for the length of that transaction and then
//! see the complete new table; they never see a partial one. The live runner's next commit
//! fails its checkpoint guard, so it reloads positions from the new checkpoints and goes on.

use std::sync::{Arc, Mutex};

use serval_projector::admin_audit::AdminAuditProjection;
use serval_projector::admin_tokens::AdminTokensProjection;
use serval_projector::catalog::CatalogProjection;
use serval_projector::policies::PoliciesProjection;
use serval_projector::zones::ZonesProjection;
use serval_projector::{Projection, ProjectorConfig, Runner, Visibility};
use serval_streams::EntryId;
use sqlx::{PgPool, Row};

use crate::context::Context;
use crate::progress::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Rebuildable {
    Zones,
    AdminTokens,
    Policies,
    Catalog,
    AdminAudit,
    Audit,
}

impl Rebuildable {
    pub const ALL: [Rebuildable; 6] = [
        Rebuildable::Zones,
        Rebuildable::AdminTokens,
        Rebuildable::Policies,
        Rebuildable::Catalog,
        Rebuildable::AdminAudit,
        Rebuildable::Audit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Rebuildable::Zones => serval_schema::projections::ZONES,
            Rebuildable::AdminTokens => serval_schema::projections::ADMIN_TOKENS,
            Rebuildable::Policies => serval_schema::projections::POLICIES,
            Rebuildable::Catalog => serval_schema::projections::CATALOG,
            Rebuildable::AdminAudit => serval_schema::projections::ADMIN_AUDIT,
            Rebuildable::Audit => serval_schema::projections::AUDIT,
        }
    }

    /// The tables this projection owns (moved together at the swap).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Rebuildable::Zones => &["zones"],
            Rebuildable::AdminTokens => &["admin_tokens"],
            Rebuildable::Policies => &serval_projector::policies::TABLES,
            Rebuildable::Catalog => &serval_projector::catalog::TABLES,
            Rebuildable::AdminAudit => &serval_projector::admin_audit::TABLES,
            Rebuildable::Audit => &serval_projector::audit::TABLES,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RebuildArgs {
    /// The projection to rebuild; all when omitted.
    #[arg(long, value_enum)]
    pub projection: Option<Rebuildable>,
    /// Events per transaction while rebuilding.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Read history from the Postgres archive first (then catch up from the Redis log).
    #[arg(long)]
    pub from_archive: bool,
}

#[derive(Debug, Clone)]
pub struct Rebuilt {
    pub projection: &'static str,
    pub events: u64,
    pub seconds: f64,
}

async fn catch_up(
    ctx: &Context,
    pool: &PgPool,
    p: Rebuildable,
    batch: usize,
    progress: Arc<Mutex<Progress>>,
    archive: Option<&PgPool>,
) -> anyhow::Result<u64> {
    let mut cfg = ProjectorConfig::new(ctx.keys.clone(), ctx.signer.clone());
    cfg.batch_size = batch;
    cfg.on_batch = Some(Arc::new(move |n| {
        progress.lock().unwrap_or_else(|p| p.into_inner()).inc(n);
    }));
    let cfg = Arc::new(cfg);
    async fn go<P: Projection>(
        ctx: &Context,
        pool: &PgPool,
        cfg: Arc<ProjectorConfig>,
        p: P,
        archive: Option<&PgPool>,
    ) -> anyhow::Result<u64> {
        let mut r = Runner::new(p, pool.clone(), ctx.redis.clone(), cfg, Visibility::new());
        Ok(match archive {
            Some(a) => r.catch_up_from_archive(a).await?,
            None => r.catch_up().await?,
        })
    }
    match p {
        Rebuildable::Zones => go(ctx, pool, cfg, ZonesProjection, archive).await,
        Rebuildable::AdminTokens => go(ctx, pool, cfg, AdminTokensProjection, archive).await,
        Rebuildable::Policies => go(ctx, pool, cfg, PoliciesProjection, archive).await,
        Rebuildable::Catalog => go(ctx, pool, cfg, CatalogProjection, archive).await,
        Rebuildable::AdminAudit => {
            let p = AdminAuditProjection::new(ctx.audit_key.clone());
            go(ctx, pool, cfg, p, archive).await
        }
        Rebuildable::Audit => {
            let p = serval_projector::audit::AuditProjection::new(ctx.audit_key.clone());
            go(ctx, pool, cfg, p, archive).await
        }
    }
}

async fn checkpoints(
    db: &mut sqlx::PgConnection,
    schema: &str,
    projection: &str,
    lock: bool,
) -> anyhow::Result<Vec<(String, EntryId)>> {
    let rows = sqlx::query(&format!(
        "SELECT stream, last_ms, last_seq FROM {schema}.projection_checkpoints WHERE projection = $1 {}",
        if lock { "FOR UPDATE" } else { "" }
    ))
    .bind(projection)
    .fetch_all(&mut *db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                EntryId::new(r.get::<i64, _>(1) as u64, r.get::<i64, _>(2) as u64),
            )
        })
        .collect())
}

/// Attempts the swap; `Ok(false)` when the live projection is ahead of the shadow.
async fn swap(live: &PgPool, shadow: &str, retired: &str, p: Rebuildable) -> anyhow::Result<bool> {
    let mut tx = live.begin().await?;
    for t in p.tables() {
        sqlx::query(&format!("LOCK TABLE public.{t} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await?;
    }
    let live_cp = checkpoints(&mut tx, "public", p.name(), true).await?;
    let shadow_cp = checkpoints(&mut tx, shadow, p.name(), false).await?;
    let behind = live_cp.iter().any(|(stream, at)| {
        shadow_cp
            .iter()
            .find(|(s, _)| s == stream)
            .map(|(_, s)| s < at)
            .unwrap_or(*at > EntryId::ZERO)
    });
    if behind {
        tx.rollback().await?;
        return Ok(false);
    }
    for t in p.tables() {
        sqlx::query(&format!("ALTER TABLE public.{t} SET SCHEMA {retired}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("ALTER TABLE {shadow}.{t} SET SCHEMA public"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM public.projection_checkpoints WHERE projection = $1")
        .bind(p.name())
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO public.projection_checkpoints SELECT * FROM {shadow}.projection_checkpoints WHERE projection = $1"
    ))
    .bind(p.name())
    .execute(&mut *tx)
    .await?;
    // The versions the shadow applied go with its tables: the live runner goes on from them.
    sqlx::query("DELETE FROM public.applied_versions WHERE projection = $1")
        .bind(p.name())
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!(
        "INSERT INTO public.applied_versions SELECT * FROM {shadow}.applied_versions WHERE projection = $1"
    ))
    .bind(p.name())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

pub async fn rebuild_one(
    ctx: &Context,
    p: Rebuildable,
    batch: usize,
    from_archive: bool,
) -> anyhow::Result<Rebuilt> {
    let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S%f");
    let shadow = format!("serval_shadow_{}_{stamp}", p.name());
    let retired = format!("serval_retired_{}_{stamp}", p.name());
    let live = ctx.pool().await?;
    let shadow_pool = crate::replay::create_schema(ctx, &shadow).await?;
    sqlx::query(&format!("CREATE SCHEMA {retired}"))
        .execute(&live)
        .await?;

    let started = std::time::Instant::now();
    let progress = Arc::new(Mutex::new(Progress::new(
        &format!("rebuild {}", p.name()),
        None,
    )));
    let result = async {
        let archive = from_archive.then_some(&live);
        let mut events = catch_up(ctx, &shadow_pool, p, batch, progress.clone(), archive).await?;
        if from_archive {
            // Whatever the archiver has not copied yet is in the log.
            events += catch_up(ctx, &shadow_pool, p, batch, progress.clone(), None).await?;
        }
        let mut attempts = 0;
        while !swap(&live, &shadow, &retired, p).await? {
            attempts += 1;
            anyhow::ensure!(
                attempts < 100,
                "the live projection keeps moving ahead of the rebuild"
            );
            events += catch_up(ctx, &shadow_pool, p, batch, progress.clone(), None).await?;
        }
        anyhow::Ok(events)
    }
    .await;
    shadow_pool.close().await;
    if let Ok(m) = Arc::try_unwrap(progress) {
        m.into_inner().unwrap_or_else(|p| p.into_inner()).finish();
    }
    let events = match result {
        Ok(n) => n,
        Err(e) => {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {shadow} CASCADE"))
                .execute(&live)
                .await;
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {retired} CASCADE"))
                .execute(&live)
                .await;
            return Err(e);
        }
    };
    // The retired tables and the shadow schema's leftovers are no longer read by anyone.
    sqlx::query(&format!("DROP SCHEMA {retired} CASCADE"))
        .execute(&live)
        .await?;
    sqlx::query(&format!("DROP SCHEMA {shadow} CASCADE"))
        .execute(&live)
        .await?;
    live.close().await;
    Ok(Rebuilt {
        projection: p.name(),
        events,
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub async fn run(ctx: &Context, args: &RebuildArgs) -> anyhow::Result<Vec<Rebuilt>> {
    let targets: Vec<Rebuildable> = match args.projection {
        Some(p) => vec![p],
        None => Rebuildable::ALL.to_vec(),
    };
    // Refused up front: a rebuilt admin audit without the key would silently lose every
    // chain signature (`signed: false`), which reads as tampering.
    let chained =
        targets.contains(&Rebuildable::AdminAudit) || targets.contains(&Rebuildable::Audit);
    if chained && ctx.audit_key.is_none() {
        anyhow::bail!(
            "rebuilding admin_audit or audit needs AUDIT_HMAC_KEY (the key the deployment signs its \
             admin audit chains with); set it, or rebuild other projections with --projection"
        );
    }
    let mut out = Vec::new();
    for p in targets {
        let r = rebuild_one(ctx, p, args.batch, args.from_archive).await?;
        println!(
            "rebuilt {}: {} events in {:.2}s ({:.0} events/s), swapped in atomically",
            r.projection,
            r.events,
            r.seconds,
            r.events as f64 / r.seconds.max(1e-9)
        );
        out.push(r);
    }
    Ok(out)
}
