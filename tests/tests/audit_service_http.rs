//! The Audit service's routes (events-and-audit.md §12) against the real binary: the ledger
//! search in chain order with Caracal's field names, the dead-letter queue, and the
//! `AUDIT_ADMIN_TOKEN` gate.

mod common;

use common::runtime::{bootstrap, exchange, server_with, zone};
use common::{eventually, Admin, Server};
use serde_json::Value;

const TOKEN: &str = "audit-admin-token-for-tests";

async fn get(server: &Server, path: &str, bearer: Option<&str>) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new().get(format!("{}{path}", server.url("audit")));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    (
        status,
        challenge,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn search_and_the_dead_letter_queue_behind_the_audit_admin_token() {
    let (server, issuer) = server_with(&[("AUDIT_ADMIN_TOKEN", TOKEN)]).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    // Two bootstrap mints: two `token_exchange` allows in the zone's ledger.
    for _ in 0..2 {
        eventually(20, || async {
            let r = exchange(&issuer, &bootstrap(&z, "agent:lifecycle")).await;
            (r.0 == 200).then_some(())
        })
        .await;
    }

    // The gate.
    let search = format!("/api/audit/search?zone_id={}", z.id);
    let (s, challenge, _) = get(&server, &search, None).await;
    assert_eq!(s, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"caracal-audit\""));
    let (s, _, _) = get(&server, &search, Some("wrong")).await;
    assert_eq!(s, 401);
    let (s, _, v) = get(&server, "/api/audit/search", Some(TOKEN)).await;
    assert_eq!(s, 400, "{v}");

    // Chain order, Caracal's field names, the cursor.
    let events = eventually(20, || async {
        let (s, _, v) = get(&server, &search, Some(TOKEN)).await;
        assert_eq!(s, 200, "{v}");
        let n = v["events"].as_array().map_or(0, Vec::len);
        (n >= 2).then_some(v)
    })
    .await;
    let list = events["events"].as_array().unwrap();
    let seqs: Vec<i64> = list
        .iter()
        .map(|e| e["ChainSeq"].as_i64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for w in list.windows(2) {
        assert_eq!(w[1]["PrevContentSHA256"], w[0]["ContentSHA256"]);
    }
    let first = &list[0];
    assert_eq!(first["Event"]["zone_id"], z.id.as_str());
    assert!(first["Event"]["event_type"].is_string());
    assert!(first["IngestedAt"].is_string() && first["ContentSHA256"].is_string());
    assert_eq!(
        events["next_cursor"],
        list.last().unwrap()["ChainSeq"].to_string()
    );
    let allows = list
        .iter()
        .filter(|e| e["Event"]["event_type"] == "token_exchange")
        .count();
    assert!(allows >= 2, "{events}");
    let (s, _, after) = get(
        &server,
        &format!(
            "{search}&cursor={}",
            events["next_cursor"].as_str().unwrap()
        ),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(after["events"], Value::Null);
    assert_eq!(after["next_cursor"], "");
    let (_, _, denied) = get(&server, &format!("{search}&decision=deny"), Some(TOKEN)).await;
    assert!(denied["events"]
        .as_array()
        .is_none_or(|l| l.iter().all(|e| e["Event"]["decision"] == "deny")));

    // A frame with a bad signature lands in the DLQ, not replayable.
    let topic = server.key_space().topic("caracal.audit.events");
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&topic)
        .arg("*")
        .arg("id")
        .arg("forged")
        .arg("data")
        .arg(format!(
            "{{\"id\":\"forged-1\",\"zone_id\":\"{}\",\"event_type\":\"token_exchange\",\"request_id\":\"r\",\"decision\":\"allow\",\"occurred_at\":\"2026-01-01T00:00:00Z\"}}",
            z.id
        ))
        .arg("sig")
        .arg("00")
        .query_async(&mut conn)
        .await
        .unwrap();
    let dlq = eventually(20, || async {
        let (s, _, v) = get(&server, "/api/audit/dlq", Some(TOKEN)).await;
        assert_eq!(s, 200, "{v}");
        (!v["entries"].as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    let entry = &dlq["entries"][0];
    assert_eq!(entry["reason"], "hmac_verify_failed");
    assert_eq!(entry["replayable"], false);
    assert_eq!(entry["event_id"], "forged-1");
    assert_eq!(entry["zone_id"], z.id.as_str());
    let id = entry["id"].as_str().unwrap();
    let (s, _, one) = get(&server, &format!("/api/audit/dlq/{id}"), Some(TOKEN)).await;
    assert_eq!(s, 200);
    assert_eq!(one["source_event"]["id"], "forged-1");
    let (s, _, _) = get(&server, "/api/audit/dlq/not-an-id", Some(TOKEN)).await;
    assert_eq!(s, 404);
    let (s, _, _) = get(&server, "/api/audit/dlq?limit=0", Some(TOKEN)).await;
    assert_eq!(s, 400);
    let resp = reqwest::Client::new()
        .post(format!("{}/api/audit/dlq/replay", server.url("audit")))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let replay: Value = resp.json().await.unwrap();
    assert_eq!(replay["replayed"], 0, "{replay}");
    assert_eq!(replay["skipped"], 1, "{replay}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_audit_admin_token_the_routes_do_not_exist() {
    let server = Server::shared().await;
    let (s, _, _) = get(server, "/api/audit/search?zone_id=z", Some("anything")).await;
    assert_eq!(s, 404);
    let (s, _, _) = get(server, "/api/audit/dlq", None).await;
    assert_eq!(s, 404);
}
