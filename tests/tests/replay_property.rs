//! Property: for random sequences of zone commands, folding the events with
//! `domain::zone::evolve` equals the read model the projector builds from the log.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use serval_domain::zone::{self, DcrShutdownMode, Zone, ZoneCommand, ZoneContext, ZonePatch};
use serval_domain::{Actor, Event, EventMeta};
use serval_projector::zones::ZonesProjection;
use serval_projector::{ProjectorConfig, Runner, Visibility};
use serval_streams::{AppendOutcome, AppendRequest, EventStore, KeySpace, LogStream};

#[derive(Debug, Clone)]
enum Op {
    Create { name: String, dcr: bool },
    Update(ZonePatch),
    Archive,
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,12}",
        Just("caracal.sys/x".to_owned()),
        Just(" ".to_owned()),
        "[a-z]{121,125}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let patch = (
        proptest::option::of(name()),
        proptest::option::of("[a-z0-9-]{1,8}|[A-Z_]{1,3}"),
        proptest::option::of(any::<bool>()),
        proptest::option::of(prop_oneof![
            Just(DcrShutdownMode::KeepLive),
            Just(DcrShutdownMode::RevokeLive)
        ]),
        proptest::option::of(any::<bool>()),
        proptest::option::of(any::<bool>()),
    )
        .prop_map(
            |(name, slug, dcr_enabled, dcr_shutdown, badge, governed)| ZonePatch {
                name,
                slug,
                dcr_enabled,
                dcr_shutdown,
                operator_coauthor_badge: badge,
                operator_governed: governed,
            },
        );
    prop_oneof![
        (name(), any::<bool>()).prop_map(|(name, dcr)| Op::Create { name, dcr }),
        patch.prop_map(Op::Update),
        Just(Op::Archive),
    ]
}

async fn run_case(ops: Vec<(usize, Op, bool)>) -> Result<(), TestCaseError> {
    let keys = common::Keys::default();
    let prefix = common::unique(common::KEY_PREFIX);
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let conn = client.connect().await.unwrap();
    let store = EventStore::new(conn, KeySpace::new(prefix.clone(), ""), keys.signer());
    let ids: Vec<String> = (0..3).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let mut model: BTreeMap<String, Zone> = BTreeMap::new();
    for (z, op, bootstrap) in ops {
        let id = &ids[z];
        let ctx = ZoneContext {
            actor: Actor {
                id: "admin:prop".into(),
                is_bootstrap: bootstrap,
                via_operator_header: bootstrap,
            },
            live_dcr_applications: 0,
        };
        let state = model.get(id);
        let cmd = match op {
            Op::Create { name, dcr } => ZoneCommand::Create {
                slug: zone::slug_base(&name),
                name,
                dcr_enabled: dcr,
            },
            Op::Update(p) => ZoneCommand::Update(p),
            Op::Archive => ZoneCommand::Archive,
        };
        let Ok(events) = zone::decide(state, &cmd, &ctx) else {
            continue;
        };
        let expected = state.map(|s| s.version).unwrap_or(0);
        let req = AppendRequest::new(
            LogStream::System,
            Some(id.clone()),
            id.clone(),
            expected,
            events.iter().cloned().map(Event::Zone).collect(),
            ctx.actor.id.clone(),
        );
        let AppendOutcome::Appended { envelopes, .. } = store.append(&req).await.unwrap() else {
            panic!("no idempotency key, no duplicate");
        };
        let mut s = model.remove(id);
        for (e, env) in events.iter().zip(&envelopes) {
            let meta = EventMeta {
                event_id: env.event_id.clone(),
                aggregate_id: id.clone(),
                aggregate_version: env.aggregate_version,
                occurred_at: env.occurred_at,
            };
            s = zone::evolve(s, &meta, e);
        }
        if let Some(s) = s {
            model.insert(id.clone(), s);
        }
    }
    let db = common::fresh_db().await;
    let pool = common::pool(&db).await;
    serval_schema::migrate(&pool).await.unwrap();
    let cfg = Arc::new(ProjectorConfig {
        batch_size: 7, // small batches: many transactions, cache reuse across a batch
        ..ProjectorConfig::new(store.keys().clone(), keys.signer())
    });
    let mut runner = Runner::new(
        ZonesProjection,
        pool.clone(),
        client,
        cfg,
        Visibility::new(),
    );
    runner.catch_up().await.unwrap();
    let projected: BTreeMap<String, Zone> = serval_projector::zones::all(&pool)
        .await
        .unwrap()
        .into_iter()
        .map(|z| (z.id.clone(), z))
        .collect();
    pool.close().await;
    prop_assert_eq!(projected, model);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn folding_events_equals_the_projected_read_model(
        ops in proptest::collection::vec((0usize..3, op(), any::<bool>()), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_case(ops))?;
    }
}
