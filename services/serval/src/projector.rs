//! The projection runners this process starts when it runs the projector: every read
//! model, the archiver and the topic relay, each in its own loop, all on a runtime of their
//! own.
//!
//! Why a runtime of their own: every write sets several runners to work (decode, SQL, commit)
//! right after it is answered. On the services' worker threads that work queued ahead of the
//! next request: back-to-back create-provider from one kept-alive client went from p50
//! 0.6 ms without a projector to 2.0-2.2 ms with one in process, 1.0-1.1 ms with the
//! projector in another process (scripts/bench-api's plain client, 2026-12-06). A separate
//! runtime gives the same separation inside one process; the OS schedules its thread beside
//! the services' threads instead of the services waiting behind it.

use std::sync::Arc;

use serval_kit::App;
use serval_projector::admin_audit::AdminAuditProjection;
use serval_projector::admin_tokens::AdminTokensProjection;
use serval_projector::archive::ArchiveProjection;
use serval_projector::audit::AuditProjection;
use serval_projector::catalog::CatalogProjection;
use serval_projector::policies::PoliciesProjection;
use serval_projector::relay::RelayProjection;
use serval_projector::runner::Feed;
use serval_projector::zones::ZonesProjection;
use serval_projector::PgPool;
use serval_projector::{Projection, ProjectorConfig, Runner};
use tokio::sync::watch;

/// Worker threads of the projector's runtime (one per core of this 2-core machine: one
/// thread measured a worse tail under load; the OS shares the cores with the services).
const THREADS: usize = 2;
/// Postgres connections of the projector's own pool: one per runner and a spare.
const POOL_MAX: u32 = 10;

fn spawn_runner<P: Projection>(
    app: &App,
    pool: &PgPool,
    client: &serval_streams::RedisClient,
    cfg: &Arc<ProjectorConfig>,
    p: P,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let runner = Runner::new(
        p,
        pool.clone(),
        client.clone(),
        cfg.clone(),
        app.visibility.clone(),
    );
    tokio::spawn(runner.run(stop.clone()))
}

/// Starts the runners on the projector's own runtime and thread; the handle returned (on the
/// caller's runtime) ends once they all stopped after `stop`.
pub async fn start(
    app: &App,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let (ready, started) = tokio::sync::oneshot::channel::<anyhow::Result<()>>();
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let (app, stop) = (app.clone(), stop.clone());
    // The runtime is built, driven and dropped on this thread only: dropping a runtime in an
    // async context panics, also on a start-up error.
    std::thread::Builder::new()
        .name("serval-projector-main".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(THREADS)
                .thread_name("serval-projector")
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready.send(Err(e.into()));
                    return;
                }
            };
            // Connections are made on the projector's runtime, so its reactor drives them.
            // Held (file locked) until this thread ends with the projector.
            let identity = WorkerIdentity::claim(&app.cfg.data_dir);
            rt.block_on(async {
                match spawn_all(&app, &stop, &identity.id).await {
                    Ok(runners) => {
                        let _ = ready.send(Ok(()));
                        for r in runners {
                            let _ = r.await;
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e));
                    }
                }
            });
            drop(rt);
            let _ = done.send(());
        })?;
    started
        .await
        .map_err(|_| anyhow::anyhow!("the projector's thread ended before it started"))??;
    Ok(vec![tokio::spawn(async move {
        let _ = finished.await;
    })])
}

/// This process's worker id in the projection share, kept in `SERVAL_DATA_DIR`: a process
/// restarted after a crash (`SIGKILL`, OOM, power) on the same data directory takes back
/// its streams at once, where a new id would leave them with the dead worker's lease for up
/// to 5 s and reads waiting on them would time out. The file is locked for the process's
/// life, so a second process on the same directory gets an id of its own. The lock is
/// released when the process ends, however it ends. The id is reused only within the boot
/// that wrote it (`/proc/sys/kernel/random/boot_id` is stored beside it): a data directory
/// copied to another host, or shared over a filesystem whose locks do not reach other hosts,
/// never gives two living processes one id. Any I/O failure falls back to a fresh id.
pub struct WorkerIdentity {
    pub id: String,
    _lock: Option<std::fs::File>,
}

impl WorkerIdentity {
    pub fn claim(data_dir: &std::path::Path) -> Self {
        match Self::persisted(data_dir) {
            Ok(Some(me)) => me,
            Ok(None) => Self::fresh(),
            Err(e) => {
                tracing::warn!(error = %e, dir = %data_dir.display(), "no persistent projector worker id; using a fresh one");
                Self::fresh()
            }
        }
    }

    fn fresh() -> Self {
        WorkerIdentity {
            id: uuid::Uuid::now_v7().to_string(),
            _lock: None,
        }
    }

    /// `None` when another living process holds the file.
    fn persisted(data_dir: &std::path::Path) -> std::io::Result<Option<Self>> {
        use std::io::{Read, Seek, Write};
        std::fs::create_dir_all(data_dir)?;
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(data_dir.join("projector-worker-id"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        let Ok(boot) = std::fs::read_to_string("/proc/sys/kernel/random/boot_id") else {
            return Ok(None);
        };
        let boot = boot.trim();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let text = String::from_utf8_lossy(&bytes);
        let mut parts = text.split_whitespace();
        let kept = match (parts.next().map(uuid::Uuid::parse_str), parts.next()) {
            (Some(Ok(id)), Some(b)) if b == boot => Some(id.to_string()),
            _ => None,
        };
        let id = match kept {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::now_v7().to_string();
                file.set_len(0)?;
                file.rewind()?;
                file.write_all(format!("{id} {boot}\n").as_bytes())?;
                file.sync_all()?;
                id
            }
        };
        Ok(Some(WorkerIdentity {
            id,
            _lock: Some(file),
        }))
    }
}

async fn spawn_all(
    app: &App,
    stop: &watch::Receiver<bool>,
    worker_id: &str,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut pg = app.cfg.clone();
    pg.db_pool_max = pg.db_pool_max.min(POOL_MAX);
    let pool = serval_kit::state::connect_pg(&pg).await?;
    let (client, relay_conn) = serval_kit::state::connect_redis(&app.cfg.redis_url).await?;
    // One live reader of the log for every runner of this process (see `Feed`).
    let feed = Feed::new(app.store.keys().clone(), app.store.signer().clone());
    // The streams are shared with the other processes' projectors (`share`); the first
    // lease is taken before any runner picks its streams.
    let share = serval_projector::share::WorkShare::with_id(app.store.keys(), worker_id.to_owned());
    let mut share_conn = relay_conn.clone();
    share.beat(&mut share_conn).await?;
    let cfg = Arc::new(ProjectorConfig {
        feed: Some(feed.clone()),
        share: Some(share.clone()),
        ..ProjectorConfig::new(app.store.keys().clone(), app.store.signer().clone())
    });
    let relay_key = Some(app.secrets.streams_key.clone());
    Ok(vec![
        tokio::spawn(feed.run(client.clone(), stop.clone())),
        tokio::spawn(share.run(client.clone(), stop.clone())),
        tokio::spawn(serval_projector::upkeep::run(pool.clone(), stop.clone())),
        tokio::spawn(serval_projector::sessions::reconcile_loop(
            pool.clone(),
            stop.clone(),
        )),
        spawn_runner(app, &pool, &client, &cfg, ZonesProjection, stop),
        spawn_runner(app, &pool, &client, &cfg, AdminTokensProjection, stop),
        spawn_runner(app, &pool, &client, &cfg, PoliciesProjection, stop),
        spawn_runner(app, &pool, &client, &cfg, CatalogProjection, stop),
        spawn_runner(
            app,
            &pool,
            &client,
            &cfg,
            AdminAuditProjection::new(Some(app.secrets.audit_key.clone())),
            stop,
        ),
        spawn_runner(
            app,
            &pool,
            &client,
            &cfg,
            AuditProjection::new(Some(app.secrets.audit_key.clone())),
            stop,
        ),
        spawn_runner(app, &pool, &client, &cfg, ArchiveProjection, stop),
        spawn_runner(
            app,
            &pool,
            &client,
            &cfg,
            RelayProjection::new(
                relay_conn,
                app.store.keys().clone(),
                relay_key,
                Some(app.secrets.audit_key.clone()),
            ),
            stop,
        ),
    ])
}
