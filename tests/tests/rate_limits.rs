//! Rate limits (management-api.md §3.5): fixed one-minute windows on Redis server time.

mod common;

use std::time::Duration;

use common::{Admin, Options, Server};
use serde_json::{json, Value};

/// Waits out the end of a minute, so a burst does not straddle two windows.
async fn fresh_window(server: &Server) {
    let store = server.store().await;
    let mut conn = store.connection();
    let (secs, _): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let into = secs % 60;
    if into >= 45 {
        tokio::time::sleep(Duration::from_secs(60 - into) + Duration::from_millis(200)).await;
    }
}

fn limited(v1: &str, fails: &str, ready: &str) -> Options {
    Options {
        env: vec![
            ("API_V1_RATE_LIMIT_PER_MIN".into(), v1.into()),
            ("ADMIN_AUTH_FAIL_LIMIT_PER_MIN".into(), fails.into()),
            ("READY_RATE_LIMIT_PER_MIN".into(), ready.into()),
        ],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_requests_beyond_the_budget_get_429() {
    let server = Server::start(limited("5", "0", "0")).await;
    let admin = Admin::new(&server);
    fresh_window(&server).await;
    for i in 0..5 {
        let (s, _) = admin.get("/v1/zones").await;
        assert_eq!(s, 200, "request {i}");
    }
    let (s, body) = admin.get("/v1/zones").await;
    assert_eq!((s, body), (429, json!({"error": "rate_limited"})));
    // Health is not a /v1 route.
    let r = reqwest::get(format!("{}/health", server.api()))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_authentications_turn_into_429_once_the_budget_is_spent() {
    let server = Server::start(limited("0", "3", "0")).await;
    fresh_window(&server).await;
    let bad = Admin::new(&server).with_token("not-a-token");
    for _ in 0..3 {
        let (s, body) = bad.get("/v1/zones").await;
        assert_eq!((s, body), (401, json!({"error": "invalid_admin_token"})));
    }
    let (s, body) = bad.get("/v1/zones").await;
    assert_eq!((s, body), (429, json!({"error": "rate_limited"})));
    // A valid token is not a failure and is still served.
    let (s, _) = Admin::new(&server).get("/v1/zones").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_has_its_own_budget() {
    let server = Server::start(limited("0", "0", "2")).await;
    fresh_window(&server).await;
    let get = || async {
        let r = reqwest::get(format!("{}/ready", server.api()))
            .await
            .unwrap();
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    assert_ne!(get().await.0, 429);
    assert_ne!(get().await.0, 429);
    assert_eq!(get().await, (429, json!({"error": "rate_limited"})));
}
