//! Background jobs (§18) append events like any writer: the DCR cleanup archives expired
//! DCR applications.

mod common;

use common::{Admin, Options, Server};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn dcr_cleanup_archives_expired_dcr_applications_only() {
    let server = Server::start(Options {
        env: vec![
            ("SERVAL_DCR_CLEANUP_INTERVAL_SECS".into(), "1".into()),
            ("SERVAL_DCR_CLEANUP_GRACE_SECS".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await;
    let admin = Admin::new(&server);
    let (_, z) = admin
        .post("/v1/zones", json!({"name": "dcr", "dcr_enabled": true}))
        .await;
    let z = z["id"].as_str().unwrap().to_owned();
    let apps = format!("/v1/zones/{z}/applications");
    let (s, short) = admin
        .post(
            &format!("{apps}/dcr"),
            json!({"name": "short", "expires_in": 1}),
        )
        .await;
    assert_eq!(s, 201, "{short}");
    let (_, long) = admin
        .post(
            &format!("{apps}/dcr"),
            json!({"name": "long", "expires_in": 3600}),
        )
        .await;
    let (_, managed) = admin
        .post(
            &apps,
            json!({"name": "managed", "registration_method": "managed"}),
        )
        .await;
    let short_id = short["id"].as_str().unwrap().to_owned();

    let archived = common::eventually(20, || async {
        let (_, list) = admin.get(&format!("{apps}?status=archived")).await;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        (!items.is_empty()).then_some(items)
    })
    .await;
    assert_eq!(archived.len(), 1);
    assert_eq!(archived[0]["id"], short_id.as_str());
    let (_, live) = admin.get(&apps).await;
    let mut ids: Vec<&str> = live["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut want = vec![
        long["id"].as_str().unwrap(),
        managed["id"].as_str().unwrap(),
    ];
    want.sort();
    assert_eq!(ids, want);
    let (_, status) = admin.get(&format!("/v1/zones/{z}/dcr-status")).await;
    assert_eq!(status["live_dcr_applications"], 1);

    // The archive is an event attributed to the job.
    let store = server.store().await;
    let key = store
        .keys()
        .log(&serval_streams::LogStream::Zone(z.clone()));
    let mut conn = store.connection();
    let entries = serval_streams::read::read_range(&mut conn, &key, "-", "+", 1000)
        .await
        .unwrap();
    let archive = entries
        .iter()
        .map(|(id, f)| {
            serval_streams::read::verify_entry(
                store.signer(),
                &key,
                &serval_streams::LogStream::Zone(z.clone()),
                *id,
                f,
            )
            .unwrap()
        })
        .find(|r| {
            r.envelope.aggregate_id == short_id && r.envelope.event_type == "application.archived"
        })
        .expect("an application.archived event");
    assert_eq!(archive.envelope.actor, "system:dcr-cleanup");
}
