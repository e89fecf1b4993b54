//! The process's shared log feed changes where a runner's entries come from, never what it
//! applies: through bursts longer than the feed holds, a feed outage and its return, the read
//! model equals a rebuild from the log by a runner without a feed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serval_domain::zone::{self, ZoneCommand, ZoneContext};
use serval_domain::{Actor, Event};
use serval_projector::runner::Feed;
use serval_projector::zones::ZonesProjection;
use serval_projector::{ProjectorConfig, Runner, Visibility};
use serval_schema::projections::ZONES;
use serval_streams::{AppendRequest, EventStore, KeySpace, LogStream};
use tokio::sync::watch;

async fn create_zones(store: &EventStore, n: usize, tag: &str) {
    let ctx = ZoneContext {
        actor: Actor {
            id: "admin:feed".into(),
            is_bootstrap: false,
            via_operator_header: false,
        },
        live_dcr_applications: 0,
    };
    for i in 0..n {
        let name = format!("{tag} {i}");
        let cmd = ZoneCommand::Create {
            slug: zone::slug_base(&name),
            name,
            dcr_enabled: false,
        };
        let events = zone::decide(None, &cmd, &ctx).expect("a create is decided");
        let id = uuid::Uuid::now_v7().to_string();
        let req = AppendRequest::new(
            LogStream::System,
            Some(id.clone()),
            id,
            0,
            events.into_iter().map(Event::Zone).collect(),
            ctx.actor.id.clone(),
        );
        store.append(&req).await.expect("append");
    }
}

fn zone_names(zones: Vec<serval_domain::zone::Zone>) -> Vec<(String, String, u64)> {
    let mut v: Vec<_> = zones
        .into_iter()
        .map(|z| (z.id, z.name, z.version))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_fed_by_the_shared_reader_apply_exactly_what_a_rebuild_applies() {
    let keys = common::Keys::default();
    let prefix = common::unique(common::KEY_PREFIX);
    let space = KeySpace::new(prefix.clone(), "");
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let conn = client.connect().await.unwrap();
    let store = EventStore::new(conn, space.clone(), keys.signer());
    let db = common::fresh_db().await;
    let pool = common::pool(&db).await;
    serval_schema::migrate(&pool).await.unwrap();

    let feed = Feed::new(space.clone(), keys.signer());
    let (feed_stop, feed_rx) = watch::channel(false);
    let feed_task = tokio::spawn(feed.clone().run(client.clone(), feed_rx));
    let cfg = Arc::new(ProjectorConfig {
        feed: Some(feed.clone()),
        ..ProjectorConfig::new(space.clone(), keys.signer())
    });
    let visibility = Visibility::new();
    let (stop, stop_rx) = watch::channel(false);
    let runner = Runner::new(
        ZonesProjection,
        pool.clone(),
        client.clone(),
        cfg,
        visibility.clone(),
    );
    let runner_task = tokio::spawn(runner.run(stop_rx));

    // One at a time (what the feed serves), then a burst longer than it keeps per stream.
    create_zones(&store, 40, "steady").await;
    // Eight writers at once, so the runner falls behind the feed's tail.
    futures::future::join_all((0..8).map(|w| {
        let store = store.clone();
        async move { create_zones(&store, 110, &format!("burst {w}")).await }
    }))
    .await;
    // The feed goes away: the runner reads Redis itself; then it comes back.
    feed_stop.send(true).unwrap();
    feed_task.await.unwrap();
    create_zones(&store, 40, "no feed").await;
    let (_feed_stop2, feed_rx2) = watch::channel(false);
    let feed_task2 = tokio::spawn(feed.clone().run(client.clone(), feed_rx2));
    create_zones(&store, 40, "feed back").await;

    let system = space.log(&LogStream::System);
    let mut c = client.connect().await.unwrap();
    let head = serval_streams::read::last_entry_id(&mut c, &system)
        .await
        .unwrap();
    let start = Instant::now();
    while visibility.current(ZONES, &system) < head {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the runner did not reach the log head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        feed.served() > 0,
        "the runner never took entries from the feed"
    );
    stop.send(true).unwrap();
    runner_task.await.unwrap();
    feed_task2.abort();

    let fed = zone_names(serval_projector::zones::all(&pool).await.unwrap());
    assert_eq!(fed.len(), 40 + 8 * 110 + 40 + 40);

    // The same log rebuilt by a runner that reads Redis alone.
    let db2 = common::fresh_db().await;
    let pool2 = common::pool(&db2).await;
    serval_schema::migrate(&pool2).await.unwrap();
    let mut rebuild = Runner::new(
        ZonesProjection,
        pool2.clone(),
        client.clone(),
        Arc::new(ProjectorConfig::new(space.clone(), keys.signer())),
        Visibility::new(),
    );
    rebuild.catch_up().await.unwrap();
    let rebuilt = zone_names(serval_projector::zones::all(&pool2).await.unwrap());
    assert_eq!(fed, rebuilt);
    pool.close().await;
    pool2.close().await;
}
