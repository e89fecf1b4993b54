//! In-process cost of the write path's CPU work: encoding + signing a zone event, and
//! verifying + decoding it on the projector side. `cargo bench -p serval-streams`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use serval_domain::zone::{ZoneEvent, ZoneUpdated};
use serval_domain::Event;
use serval_streams::codec::{self, Upcasters};
use serval_streams::{Envelope, Signer};

fn envelope() -> Envelope {
    let event = Event::Zone(ZoneEvent::Updated(ZoneUpdated {
        name: Some("Payments".into()),
        slug: None,
        dcr_enabled: Some(false),
        operator_coauthor_badge: None,
        operator_governed: Some(true),
        dcr_shutdown: None,
        updated_by: "admin:0198c2d4-5e1f-7a30-9c11-2b7d4e6f8a90".into(),
        updated_via_operator: false,
    }));
    let (event_type, schema_version, payload) = codec::encode(&event).unwrap();
    Envelope {
        event_id: "0198c2d4-5e1f-7a30-9c11-2b7d4e6f8a91".into(),
        event_type: event_type.into(),
        schema_version,
        zone_id: Some("0198c2d4-5e1f-7a30-9c11-2b7d4e6f8a92".into()),
        aggregate_kind: "zone".into(),
        aggregate_id: "0198c2d4-5e1f-7a30-9c11-2b7d4e6f8a92".into(),
        aggregate_version: 7,
        occurred_at: chrono::Utc::now(),
        actor: "admin:0198c2d4-5e1f-7a30-9c11-2b7d4e6f8a90".into(),
        request_id: Some("req-1".into()),
        causation_id: None,
        correlation_id: Some("req-1".into()),
        payload,
    }
}

fn bench(c: &mut Criterion) {
    let signer = Signer::new(vec![0x5a; 32], None).unwrap();
    let env = envelope();
    c.bench_function("encode+sign", |b| {
        b.iter(|| {
            let body = black_box(&env).encode().unwrap();
            black_box(signer.sign(&body))
        })
    });
    let body = env.encode().unwrap();
    let sig = signer.sign(&body);
    let up = Upcasters::default();
    c.bench_function("verify+decode", |b| {
        b.iter(|| {
            assert!(signer.verify(signer.key_id(), black_box(&body), &sig));
            let e = Envelope::decode(&body).unwrap();
            black_box(
                up.decode(&e.event_type, e.schema_version, &e.payload)
                    .unwrap(),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
