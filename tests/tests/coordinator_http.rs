//! The Coordinator (coordinator.md) against the real binary: STS session mandates verified
//! in process, Sessions and their cascades, service leases, Delegations with narrowing and
//! revocation, invocations, `/v1/verify`, the flat `/v1` façade, and the topics the relay
//! publishes from the log.

mod common;

use std::collections::HashMap;

use common::runtime::{bootstrap, claims, exchange, server_with, zone, Zone, RESOURCE};
use common::{eventually, Admin, Server};
use serde_json::{json, Value};

const OPERATOR: &str = "coordinator-operator-token-for-tests";

/// A client of the Coordinator with one bearer.
struct Coord {
    base: String,
    bearer: Option<String>,
}

impl Coord {
    fn new(server: &Server, bearer: &str) -> Coord {
        Coord {
            base: server.url("coordinator").to_owned(),
            bearer: Some(bearer.to_owned()),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, HashMap<String, String>, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.base));
        if let Some(b) = &self.bearer {
            req = req.header("authorization", format!("Bearer {b}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let hdrs = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect();
        let text = resp.text().await.unwrap();
        (
            status,
            hdrs,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call(reqwest::Method::GET, path, None, &[]).await;
        (s, v)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let (s, _, v) = self
            .call(reqwest::Method::POST, path, Some(body), &[])
            .await;
        (s, v)
    }

    async fn patch(&self, path: &str) -> (u16, Value) {
        let (s, _, v) = self.call(reqwest::Method::PATCH, path, None, &[]).await;
        (s, v)
    }

    async fn delete(&self, path: &str, body: Option<Value>) -> (u16, Value) {
        let (s, _, v) = self.call(reqwest::Method::DELETE, path, body, &[]).await;
        (s, v)
    }
}

async fn coordinator_server() -> (Server, String) {
    server_with(&[("CARACAL_COORDINATOR_TOKEN", OPERATOR)]).await
}

/// A lifecycle mandate for the zone's application (sts.md §4.2).
async fn mandate(issuer: &str, z: &Zone) -> String {
    let (s, _, body) = eventually(20, || async {
        let r = exchange(issuer, &bootstrap(z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// `n` root Sessions of the zone's application, started by `c`.
async fn start_sessions(c: &Coord, z: &Zone, n: usize) -> Vec<String> {
    let mut sessions = Vec::new();
    for _ in 0..n {
        let (s, v) = c
            .post(
                &format!("/zones/{}/agents", z.id),
                json!({"application_id": z.app}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        sessions.push(v["agent_session_id"].as_str().unwrap().to_owned());
    }
    sessions
}

/// Every message of a topic, as field maps.
async fn topic(server: &Server, name: &str) -> Vec<HashMap<String, String>> {
    let key = server.key_space().topic(name);
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    reply
        .ids
        .into_iter()
        .map(|e| {
            e.map
                .into_iter()
                .map(|(k, v)| (k, redis::from_redis_value::<String>(&v).unwrap()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_authenticate_start_list_and_end_with_their_cascades() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let token = mandate(&issuer, &z).await;
    let sid = claims(&token)["sid"].as_str().unwrap().to_owned();
    let c = Coord::new(&server, &token);
    let agents = format!("/zones/{}/agents", z.id);

    // §2.1 in order: no bearer, a bad token, another zone's path, a bad path id.
    let anon = Coord {
        base: c.base.clone(),
        bearer: None,
    };
    assert_eq!(
        anon.get(&agents).await,
        (401, json!({"error": "missing_token"}))
    );
    let junk = Coord::new(&server, "not.a.jwt");
    assert_eq!(
        junk.get(&agents).await,
        (401, json!({"error": "invalid_token"}))
    );
    assert_eq!(
        c.get("/zones/other-zone/agents").await,
        (403, json!({"error": "zone_mismatch"}))
    );
    let (s, v) = c.get(&format!("{agents}/bad%20id")).await;
    assert_eq!((s, &v["error"]), (400, &json!("invalid_params")), "{v}");
    // The operator token is a JWT anywhere off its allowlist.
    let op = Coord::new(&server, OPERATOR);
    let (s, v) = op.post(&agents, json!({"application_id": z.app})).await;
    assert_eq!((s, &v["error"]), (401, &json!("invalid_token")));

    // Start a root task.
    let (s, root) = c
        .post(
            &agents,
            json!({"application_id": z.app, "labels": [" researcher "]}),
        )
        .await;
    assert_eq!(s, 201, "{root}");
    assert_eq!(root["lifecycle"], "task");
    assert_eq!(root["ttl_seconds"], 3600);
    assert_eq!(root["lease_generation"], 0);
    assert_eq!(root["depth"], 0);
    assert_eq!(root["labels"], json!(["researcher"]));
    assert_eq!(root["subject_authority_record_id"], sid.as_str());
    assert_eq!(root["parent_id"], Value::Null);
    assert_eq!(root["delegation_edge_id"], Value::Null);
    let root_id = root["agent_session_id"].as_str().unwrap().to_owned();

    // Validation and ownership.
    let (s, v) = c
        .post(
            &agents,
            json!({"application_id": z.app, "lifecycle": "service", "ttl_seconds": 5}),
        )
        .await;
    assert_eq!((s, &v["error"]), (400, &json!("invalid_body")), "{v}");
    assert_eq!(v["details"]["issues"][0]["path"], json!(["ttl_seconds"]));
    assert!(v["requestId"].is_string());
    let (s, v) = c
        .post(&agents, json!({"application_id": "someone-else"}))
        .await;
    assert_eq!(
        (s, v),
        (403, json!({"error": "application_ownership_required"}))
    );
    let (s, v) = c
        .post(
            &agents,
            json!({"application_id": z.app, "parent_id": "nope"}),
        )
        .await;
    assert_eq!((s, v), (404, json!({"error": "parent_not_found"})));
    let (s, v) = c
        .post(
            &agents,
            json!({"application_id": z.app, "subject_session_id": "nope"}),
        )
        .await;
    assert_eq!((s, &v["error"]), (404, &json!("session_not_found")));

    // Idempotent start: a replay answers the first body; another request is a conflict.
    let key = [
        ("idempotency-key", "0123456789abcdef0123456789abcdef"),
        ("idempotency-key-kind", "generated"),
    ];
    let body = json!({"application_id": z.app, "parent_id": root_id});
    let (s1, _, first) = c
        .call(reqwest::Method::POST, &agents, Some(body.clone()), &key)
        .await;
    assert_eq!(s1, 201, "{first}");
    let (s2, h2, again) = c
        .call(reqwest::Method::POST, &agents, Some(body), &key)
        .await;
    assert_eq!((s2, &again), (201, &first));
    assert_eq!(
        h2.get("idempotency-replayed").map(String::as_str),
        Some("true")
    );
    let (s3, _, v) = c
        .call(
            reqwest::Method::POST,
            &agents,
            Some(json!({"application_id": z.app})),
            &key,
        )
        .await;
    assert_eq!((s3, &v["error"]), (409, &json!("idempotency_key_conflict")));
    let (s, _, v) = c
        .call(
            reqwest::Method::POST,
            &agents,
            Some(json!({"application_id": z.app})),
            &[("idempotency-key", &"k".repeat(256))],
        )
        .await;
    assert_eq!((s, &v["error"]), (400, &json!("idempotency_key_invalid")));
    let child = first["agent_session_id"].as_str().unwrap().to_owned();
    assert_eq!(first["depth"], 1);
    assert_eq!(first["parent_id"], root_id.as_str());

    // Reads: get, list with filters, children; the operator reads too.
    let (s, v) = c.get(&format!("{agents}/{child}")).await;
    assert_eq!((s, &v["status"]), (200, &json!("active")));
    assert_eq!(v["lease_generation"], 0);
    assert_eq!(v["metadata"], json!({}));
    let (s, v) = c.get(&format!("{agents}?label=researcher")).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1);
    let (s, v) = op.get(&format!("{agents}/{root_id}/children")).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["agent_session_id"], child.as_str());
    assert_eq!(c.get(&format!("{agents}?status=bogus")).await.0, 400);
    let (s, v) = c.get(&format!("{agents}?limit=1")).await;
    assert_eq!(s, 200);
    let cursor = v["next_cursor"].as_str().unwrap().to_owned();
    let (s, v) = c.get(&format!("{agents}?limit=1&cursor={cursor}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        c.get(&format!("{agents}?cursor=unknown")).await,
        (400, json!({"error": "invalid_cursor"}))
    );

    // Suspend and resume a subtree.
    assert_eq!(
        c.patch(&format!("{agents}/{root_id}/suspend")).await,
        (200, json!({"suspended": 2}))
    );
    assert_eq!(
        c.patch(&format!("{agents}/{root_id}/suspend")).await,
        (409, json!({"error": "session_not_found_or_not_active"}))
    );
    assert_eq!(
        c.get(&format!("{agents}/{child}")).await.1["status"],
        "suspended"
    );
    assert_eq!(
        c.patch(&format!("{agents}/{root_id}/resume")).await,
        (200, json!({"resumed": 2}))
    );
    assert_eq!(
        c.patch(&format!("{agents}/{root_id}/resume")).await,
        (409, json!({"error": "session_not_found_or_not_suspended"}))
    );

    // Terminate the subtree: both end, a repeat is 404.
    let (s, _) = c
        .delete(&format!("{agents}/{root_id}?reason=done"), None)
        .await;
    assert_eq!(s, 204);
    let (_, v) = c.get(&format!("{agents}/{root_id}")).await;
    assert_eq!(
        (v["status"].as_str(), v["termination_reason"].as_str()),
        (Some("terminated"), Some("done"))
    );
    assert!(v["terminated_at"].is_string());
    assert_eq!(
        c.get(&format!("{agents}/{child}")).await.1["termination_reason"],
        "parent_terminated"
    );
    assert_eq!(
        c.delete(&format!("{agents}/{root_id}"), None).await,
        (404, json!({"error": "session_not_found"}))
    );
    // A replay of a start whose Session ended is no longer served.
    let (s, _, v) = c
        .call(
            reqwest::Method::POST,
            &agents,
            Some(json!({"application_id": z.app, "parent_id": root_id})),
            &key,
        )
        .await;
    assert_eq!(
        (s, &v["error"]),
        (409, &json!("idempotency_result_inactive"))
    );

    // The topics: spawn, suspend, resume, terminate (with the literal `null` parent).
    let lifecycle = eventually(20, || async {
        let t = topic(&server, "caracal.agents.lifecycle").await;
        (t.iter().filter(|m| m["event"] == "terminate").count() >= 2).then_some(t)
    })
    .await;
    let of_root: Vec<&str> = lifecycle
        .iter()
        .filter(|m| m["agent_session_id"] == root_id)
        .map(|m| m["event"].as_str())
        .collect();
    assert_eq!(of_root, ["spawn", "suspend", "resume", "terminate"]);
    let spawn = lifecycle.iter().find(|m| m["event"] == "spawn").unwrap();
    assert_eq!(spawn["parent_id"], "null");
    assert!(spawn.contains_key("_sig") && spawn.contains_key("outbox_id"));
    // The lifecycle mandate's record is application-typed: ending Sessions does not revoke it.
    let revokes = topic(&server, "caracal.sessions.revoke").await;
    assert!(
        revokes.iter().all(|m| m["session_id"] != sid),
        "{revokes:?}"
    );

    // Mutations and refusals of authenticated callers are on the zone's admin-audit chain;
    // refusals before authentication are not.
    let (s, v) = admin
        .get(&format!("/v1/zones/{}/admin-audit?limit=500", z.id))
        .await;
    assert_eq!(s, 200, "{v}");
    let items = v["items"].as_array().unwrap();
    let start = items
        .iter()
        .find(|r| r["method"] == "POST" && r["status_code"] == 201 && r["path"] == agents.as_str())
        .unwrap_or_else(|| panic!("no start record in {v}"));
    assert_eq!(start["actor_name"], z.app.as_str());
    assert_eq!(start["entity_type"], "session");
    assert!(
        items
            .iter()
            .any(|r| r["status_code"] == 403 && r["method"] == "POST"),
        "{v}"
    );
    assert!(
        items
            .iter()
            .any(|r| r["method"] == "DELETE" && r["status_code"] == 204),
        "{v}"
    );
    assert!(!items.iter().any(|r| r["status_code"] == 401), "{v}");

    // One source of truth: the Management API lists the Coordinator's Sessions.
    let (s, v) = admin.get(&format!("/v1/zones/{}/sessions", z.id)).await;
    assert_eq!(s, 200, "{v}");
    let listed = v.to_string();
    assert!(listed.contains(&root_id) && listed.contains(&child), "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn service_sessions_lease_heartbeat_and_fence() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let c = Coord::new(&server, &mandate(&issuer, &z).await);
    let agents = format!("/zones/{}/agents", z.id);
    let (s, svc) = c
        .post(
            &agents,
            json!({"application_id": z.app, "lifecycle": "service"}),
        )
        .await;
    assert_eq!(s, 201, "{svc}");
    assert_eq!(svc["lease_generation"], 1);
    assert_eq!(svc["ttl_seconds"], Value::Null);
    assert!(svc["heartbeat_deadline_at"].is_string());
    let id = svc["agent_session_id"].as_str().unwrap();

    let beat = format!("{agents}/{id}/heartbeat");
    let (s, v) = c.post(&beat, json!({"lease_generation": 1})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["agent"]["lease_generation"], 1);
    assert_eq!(v["agent"]["status"], "active");
    assert_eq!(v["service"], Value::Null);
    assert_eq!(c.post(&beat, json!({})).await.1["error"], "invalid_body");
    assert_eq!(
        c.post(&beat, json!({"lease_generation": 7})).await,
        (409, json!({"error": "session_lease_fenced"}))
    );

    // A new lease generation fences the old holder.
    let (s, v) = c.post(&format!("{agents}/{id}/lease"), json!(null)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["lease_generation"], 2);
    assert_eq!(c.post(&beat, json!({"lease_generation": 1})).await.0, 409);

    // Registration and a heartbeat that names it.
    let (s, reg) = c
        .post(&format!("/zones/{}/agent-services", z.id), json!({"application_id": z.app, "endpoint_url": "https://svc.example/a2a", "framework": {"name": "x"}}))
        .await;
    assert_eq!(s, 201, "{reg}");
    assert_eq!(reg["health"], "starting");
    let (s, again) = c
        .post(&format!("/zones/{}/agent-services", z.id), json!({"application_id": z.app, "endpoint_url": "https://svc.example/a2a", "capabilities": ["chat"]}))
        .await;
    assert_eq!((s, &again["id"]), (201, &reg["id"]));
    assert_eq!(again["capabilities"], json!(["chat"]));
    let (s, v) = c
        .post(
            &beat,
            json!({"lease_generation": 2, "status": "degraded", "service_id": reg["id"]}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["service"]["health"], "degraded");
    assert_eq!(
        c.post(&beat, json!({"lease_generation": 2, "service_id": "nope"}))
            .await
            .1["error"],
        "agent_service_not_found"
    );

    // Terminating a service needs the current generation.
    assert_eq!(
        c.delete(&format!("{agents}/{id}"), None).await,
        (400, json!({"error": "lease_generation_required"}))
    );
    assert_eq!(
        c.delete(
            &format!("{agents}/{id}"),
            Some(json!({"lease_generation": 1}))
        )
        .await,
        (409, json!({"error": "session_lease_fenced"}))
    );
    assert_eq!(
        c.delete(
            &format!("{agents}/{id}"),
            Some(json!({"lease_generation": 2}))
        )
        .await
        .0,
        204
    );
    assert_eq!(
        c.post(&beat, json!({"lease_generation": 2})).await,
        (409, json!({"error": "session_not_live"}))
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread")]
async fn delegations_narrow_refuse_cycles_and_revoke_with_their_cascade() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let c = Coord::new(&server, &mandate(&issuer, &z).await);
    let op = Coord::new(&server, OPERATOR);
    let zp = format!("/zones/{}", z.id);
    let sessions = start_sessions(&c, &z, 4).await;
    let (a, b, cc, d) = (&sessions[0], &sessions[1], &sessions[2], &sessions[3]);
    // Each edge lives shorter than the one before it: a child may not outlive its parent.
    let ttl = std::cell::Cell::new(900);
    let edge = |from: &str, to: &str, scopes: Value, constraints: Value| {
        ttl.set(ttl.get() - 10);
        json!({"source_session_id": from, "target_session_id": to,
               "issuer_application_id": z.app, "receiver_application_id": z.app,
               "scopes": scopes, "constraints": constraints, "ttl_seconds": ttl.get()})
    };
    let dz = format!("{zp}/delegations");

    // Refusals before anything is written.
    let (s, v) = c
        .post(&dz, edge(a, b, json!(["tickets:read"]), json!({})))
        .await;
    assert_eq!(
        (s, v),
        (
            403,
            json!({"error": "broad_delegation_permission_required"})
        )
    );
    let (s, v) = c
        .post(&dz, edge(a, a, json!([]), json!({"resources": [RESOURCE]})))
        .await;
    assert_eq!((s, v), (400, json!({"error": "self_delegation_denied"})));
    let (s, v) = c
        .post(
            &dz,
            edge(
                a,
                b,
                json!([]),
                json!({"resources": [RESOURCE], "colour": 1}),
            ),
        )
        .await;
    assert_eq!(
        (s, v),
        (400, json!({"error": "invalid_delegation_constraint"}))
    );
    let (s, v) = c
        .post(
            &dz,
            edge(
                a,
                b,
                json!(["tickets:write"]),
                json!({"resources": [RESOURCE]}),
            ),
        )
        .await;
    assert_eq!(
        (s, v),
        (403, json!({"error": "delegation_scopes_exceed_resource"}))
    );
    let (s, v) = c
        .post(
            &dz,
            edge(
                a,
                b,
                json!([]),
                json!({"resources": ["resource://missing"]}),
            ),
        )
        .await;
    assert_eq!((s, v), (404, json!({"error": "resource_not_found"})));
    let mut no_expiry = edge(a, b, json!([]), json!({"resources": [RESOURCE]}));
    no_expiry.as_object_mut().unwrap().remove("ttl_seconds");
    assert_eq!(
        c.post(&dz, no_expiry).await,
        (400, json!({"error": "delegation_expiry_required"}))
    );

    // A root edge A → B, then B → C narrowing it.
    let (s, ab) = c
        .post(
            &dz,
            edge(
                a,
                b,
                json!(["tickets:read"]),
                json!({"resources": [RESOURCE], "max_hops": 3}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{ab}");
    assert_eq!(ab["allow_reason"][2], "source_authority_root");
    assert_eq!(ab["effective_authority"]["max_hops"], 3);
    assert_eq!(ab["edge_version"], 0);
    let ab_id = ab["delegation_edge_id"].as_str().unwrap().to_owned();
    let (s, v) = c
        .post(
            &dz,
            edge(
                b,
                cc,
                json!(["tickets:read"]),
                json!({"resources": [RESOURCE], "max_hops": 3}),
            ),
        )
        .await;
    assert_eq!(
        (s, &v["error"]),
        (403, &json!("delegation_exceeds_parent_authority")),
        "{v}"
    );
    let (s, bc) = c
        .post(
            &dz,
            edge(
                b,
                cc,
                json!(["tickets:read"]),
                json!({"resources": [RESOURCE], "max_hops": 2}),
            ),
        )
        .await;
    assert_eq!(s, 201, "{bc}");
    assert_eq!(bc["parent_edge_id"], ab_id.as_str());
    assert_eq!(bc["allow_reason"][2], "parent_authority_narrowed");
    let bc_id = bc["delegation_edge_id"].as_str().unwrap().to_owned();
    // C → A would close a cycle.
    let (s, v) = c
        .post(
            &dz,
            edge(
                cc,
                a,
                json!(["tickets:read"]),
                json!({"resources": [RESOURCE], "max_hops": 1}),
            ),
        )
        .await;
    assert_eq!((s, v), (409, json!({"error": "delegation_cycle_denied"})));

    // A retry whose first attempt died between the append and the answer: the receipt has no
    // recorded answer, and the replay is answered from the entry the append wrote.
    let key = [("idempotency-key", "edge-retry-1")];
    let body = edge(
        a,
        d,
        json!(["tickets:read"]),
        json!({"resources": [RESOURCE]}),
    );
    let (s, _, first) = c
        .call(reqwest::Method::POST, &dz, Some(body.clone()), &key)
        .await;
    assert_eq!(s, 201, "{first}");
    let client = serval_streams::RedisClient::open(&common::redis_url()).unwrap();
    let mut conn = client.connect().await.unwrap();
    let pattern = format!("{}:{{z:{}}}:idem:*", server.prefix, z.id);
    let records: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!records.is_empty(), "no receipt under {pattern}");
    for r in &records {
        let _: i64 = redis::cmd("HDEL")
            .arg(r)
            .arg("status")
            .arg("body")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let (s, h, again) = c.call(reqwest::Method::POST, &dz, Some(body), &key).await;
    assert_eq!(s, 201, "{again}");
    assert_eq!(again["delegation_edge_id"], first["delegation_edge_id"]);
    assert_eq!(
        h.get("idempotency-replayed").map(String::as_str),
        Some("true")
    );
    let (s, v) = c
        .patch(&format!(
            "{dz}/{}/revoke",
            first["delegation_edge_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{v}");

    // Reads.
    let (s, v) = c.get(&format!("{dz}/inbound/{cc}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["items"][0]["id"], bc_id.as_str());
    assert_eq!(
        c.get(&format!("{dz}/inbound/{cc}/{bc_id}")).await,
        (200, json!({"id": bc_id, "status": "active"}))
    );
    assert_eq!(
        c.get(&format!("{dz}/inbound/{d}/{bc_id}")).await,
        (404, json!({"error": "delegation_not_found"}))
    );
    assert_eq!(
        c.get(&format!("{dz}/active")).await.1["items"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (s, v) = c
        .get(&format!("{zp}/agents/{cc}/effective-authority"))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["effective_scopes"], json!(["tickets:read"]));
    assert_eq!(v["effective_max_hops"], 2);
    assert_eq!(v["effective_resources"], json!([RESOURCE]));
    assert_eq!(
        c.get(&format!("{dz}/{ab_id}/traverse")).await,
        (403, json!({"error": "coordinator_admin_required"}))
    );
    let (s, v) = op.get(&format!("{dz}/{ab_id}/traverse")).await;
    assert_eq!(s, 200);
    assert_eq!(
        v.as_array()
            .unwrap()
            .iter()
            .map(|h| h["depth"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let (s, imp) = op.get(&format!("{dz}/{ab_id}/impact")).await;
    assert_eq!(s, 200);
    assert_eq!(imp["affected_sessions"], json!([b, cc]));

    // Revoke A → B: both edges end, B and C are terminated.
    let (s, v) = c.patch(&format!("{dz}/{ab_id}/revoke")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["revoked_edges"], 2);
    assert_eq!(v["terminated_sessions"], 2);
    assert_eq!(
        c.get(&format!("{zp}/agents/{cc}")).await.1["status"],
        "terminated"
    );
    assert_eq!(
        c.get(&format!("{zp}/agents/{a}")).await.1["status"],
        "active"
    );
    assert_eq!(
        c.patch(&format!("{dz}/{ab_id}/revoke")).await,
        (404, json!({"error": "delegation_not_found"}))
    );
    let (_, v) = c.get(&format!("{dz}/inbound/{b}")).await;
    assert_eq!(v["items"][0]["status"], "revoked");
    assert_eq!(v["items"][0]["edge_version"], 1);
    assert!(op
        .get(&format!("{dz}/{ab_id}/traverse"))
        .await
        .1
        .as_array()
        .unwrap()
        .is_empty());

    // The graph's topic carries monotonic epochs; the revocation names its subjects.
    let inv = eventually(20, || async {
        let t = topic(&server, "caracal.delegations.invalidate").await;
        t.iter()
            .any(|m| {
                m["event"] == "edge_revoke"
                    && m.contains_key("affected_edges")
                    && m["edge_id"] == ab_id
            })
            .then_some(t)
    })
    .await;
    let epochs: Vec<u64> = inv.iter().map(|m| m["epoch"].parse().unwrap()).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    assert_eq!(inv[0]["event"], "edge_create");
    let named = inv
        .iter()
        .find(|m| m.get("affected_edges").is_some() && m["edge_id"] == ab_id)
        .unwrap();
    assert_eq!(
        (named["edge_id"].as_str(), named["affected_edges"].as_str()),
        (ab_id.as_str(), "2")
    );
    let revokes = eventually(20, || async {
        let t = topic(&server, "caracal.sessions.revoke").await;
        t.iter()
            .any(|m| m.get("delegation_edge_id") == Some(&ab_id))
            .then_some(t)
    })
    .await;
    let r = revokes
        .iter()
        .find(|m| m.get("delegation_edge_id") == Some(&ab_id))
        .unwrap();
    assert_eq!(r["reason"], "delegation_revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn invocations_verify_and_the_flat_v1_facade() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let token = mandate(&issuer, &z).await;
    let c = Coord::new(&server, &token);
    let zp = format!("/zones/{}", z.id);

    // Invocations.
    let (_, reg) = c
        .post(
            &format!("{zp}/agent-services"),
            json!({"application_id": z.app, "endpoint_url": "https://svc.example"}),
        )
        .await;
    let (s, v) = c
        .post(
            &format!("{zp}/invocations"),
            json!({"service_id": reg["id"], "method": "run"}),
        )
        .await;
    assert_eq!((s, &v["error"]), (400, &json!("invalid_body")));
    let create = json!({"service_id": reg["id"], "method": "run", "idempotency_key": "inv-1", "timeout_ms": 5000});
    let (s, inv) = c.post(&format!("{zp}/invocations"), create.clone()).await;
    assert_eq!(s, 201, "{inv}");
    assert_eq!(inv["status"], "pending");
    assert_eq!(
        inv["retry_policy_json"],
        json!({"max_attempts": 3, "backoff_ms": 1000})
    );
    let (s, h, again) = c
        .call(
            reqwest::Method::POST,
            &format!("{zp}/invocations"),
            Some(create),
            &[],
        )
        .await;
    assert_eq!((s, &again), (201, &inv));
    assert_eq!(
        h.get("idempotency-replayed").map(String::as_str),
        Some("true")
    );
    let id = inv["id"].as_str().unwrap();
    assert_eq!(
        c.patch(&format!("{zp}/invocations/{id}/complete")).await.1["error"],
        "invalid_body"
    );
    let (s, v) = c.patch(&format!("{zp}/invocations/{id}/start")).await;
    assert_eq!(
        (s, &v["status"], &v["attempts"]),
        (200, &json!("running"), &json!(1))
    );
    let (s, _, v) = c
        .call(
            reqwest::Method::PATCH,
            &format!("{zp}/invocations/{id}/complete"),
            Some(json!({"status": "succeeded"})),
            &[],
        )
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("succeeded")));
    assert_eq!(
        c.patch(&format!("{zp}/invocations/{id}/cancel")).await,
        (409, json!({"error": "invocation_not_cancelable"}))
    );
    let (_, list) = c.get(&format!("{zp}/invocations?status=succeeded")).await;
    assert_eq!(list["items"][0]["id"], id);
    assert!(list["items"][0].get("retry_policy_json").is_none());
    let events = eventually(20, || async {
        let t = topic(&server, "caracal.invocations.lifecycle").await;
        (t.len() >= 3).then_some(t)
    })
    .await;
    let names: Vec<&str> = events.iter().map(|m| m["event"].as_str()).collect();
    assert_eq!(
        names,
        [
            "invocation.created",
            "invocation.started",
            "invocation.succeeded"
        ]
    );

    // /v1/verify: public, strict, camelCase claims.
    let anon = Coord {
        base: c.base.clone(),
        bearer: None,
    };
    let (s, v) = anon
        .post(
            "/v1/verify",
            json!({"zone_id": z.id, "token": token, "required_scope": "agent:lifecycle"}),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["valid"], true);
    assert_eq!(v["claims"]["clientId"], z.app.as_str());
    assert_eq!(v["claims"]["use"], "session");
    assert_eq!(v["claims"]["scope"], "agent:lifecycle");
    let (s, v) = anon.post("/v1/verify", json!({"zone_id": z.id, "authorization": format!("Bearer {token}"), "require_session": true})).await;
    assert_eq!(
        (s, v),
        (401, json!({"valid": false, "error": "token_invalid"}))
    );
    assert_eq!(
        anon.post("/v1/verify", json!({"zone_id": z.id, "extra": 1}))
            .await,
        (400, json!({"valid": false, "error": "invalid_request"}))
    );
    assert_eq!(
        anon.post("/v1/verify", json!({"zone_id": z.id})).await,
        (400, json!({"valid": false, "error": "missing_token"}))
    );
    assert_eq!(
        anon.post("/v1/verify", json!({"zone_id": "other", "token": token}))
            .await
            .0,
        401
    );

    // The flat façade: begin, spawn-child, end.
    let sid = claims(&token)["sid"].as_str().unwrap().to_owned();
    let (s, v) = c
        .post(
            "/v1/begin",
            json!({"zone_id": z.id, "application_id": z.app, "subject_session_id": sid}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let root = v["agent_session_id"].as_str().unwrap().to_owned();
    let (s, v) = c.post("/v1/spawn-child", json!({"zone_id": z.id, "application_id": z.app, "subject_session_id": sid, "parent_agent_session_id": root})).await;
    assert_eq!((s, &v["parent_id"]), (201, &json!(root)));
    assert_eq!(
        c.post("/v1/begin", json!({"application_id": z.app}))
            .await
            .1["error"],
        "invalid_body"
    );
    assert_eq!(
        anon.post(
            "/v1/begin",
            json!({"zone_id": z.id, "application_id": z.app, "subject_session_id": sid})
        )
        .await
        .0,
        401
    );
    let (s, _) = c
        .post(
            "/v1/end",
            json!({"zone_id": z.id, "agent_session_id": root, "reason": "all done"}),
        )
        .await;
    assert_eq!(s, 204);
    let (_, v) = c.get(&format!("{zp}/agents/{root}")).await;
    assert_eq!(v["termination_reason"], "all done");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_sdk_drives_sessions_delegations_and_revocation() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    mandate(&issuer, &z).await;
    let topics = format!("{}:", server.prefix);
    common::run_interop(
        &server,
        "coordinator_sdk.py",
        &[
            ("STS_URL", &issuer),
            ("COORDINATOR_URL", server.url("coordinator")),
            ("ZONE_ID", &z.id),
            ("APPLICATION_ID", &z.app),
            ("CLIENT_SECRET", &z.secret),
            ("RESOURCE", RESOURCE),
            ("REDIS_URL", &server.redis_url),
            ("TOPIC_PREFIX", &topics),
            ("STREAMS_HMAC_KEY", &server.keys.streams),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_official_admin_client_makes_its_coordinator_calls() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let c = Coord::new(&server, &mandate(&issuer, &z).await);
    let zp = format!("/zones/{}", z.id);
    let (_, root) = c
        .post(&format!("{zp}/agents"), json!({"application_id": z.app}))
        .await;
    let root = root["agent_session_id"].as_str().unwrap().to_owned();
    let (s, child) = c
        .post(
            &format!("{zp}/agents"),
            json!({"application_id": z.app, "parent_id": root, "parent_authority": "none"}),
        )
        .await;
    assert_eq!(s, 201, "{child}");
    let child = child["agent_session_id"].as_str().unwrap().to_owned();
    let (s, edge) = c
        .post(
            &format!("{zp}/delegations"),
            json!({"source_session_id": root, "target_session_id": child,
                   "issuer_application_id": z.app, "receiver_application_id": z.app,
                   "scopes": ["tickets:read"], "resource_id": RESOURCE, "ttl_seconds": 600}),
        )
        .await;
    assert_eq!(s, 201, "{edge}");
    let coord = server.url("coordinator").to_owned();
    common::run_interop(
        &server,
        "coordinator_admin.py",
        &[
            ("COORDINATOR_URL", &coord),
            ("COORDINATOR_TOKEN", OPERATOR),
            ("ZONE_ID", &z.id),
            ("ROOT", &root),
            ("CHILD", &child),
            ("EDGE", edge["delegation_edge_id"].as_str().unwrap()),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotency_receipts_are_found_under_the_previous_key_after_a_rotation() {
    const ONE: &str = "idempotency-key-one-0123456789abcdef";
    const TWO: &str = "idempotency-key-two-0123456789abcdef";
    let (mut server, issuer) = server_with(&[("IDEMPOTENCY_HMAC_KEY", ONE)]).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let token = mandate(&issuer, &z).await;
    let agents = format!("/zones/{}/agents", z.id);
    let key = [("idempotency-key", "rotation-1")];
    let body = json!({"application_id": z.app});
    let c = Coord::new(&server, &token);
    let (s, _, first) = c
        .call(reqwest::Method::POST, &agents, Some(body.clone()), &key)
        .await;
    assert_eq!(s, 201, "{first}");

    // The same deployment restarted with the key rotated (the STS where the issuer says).
    let port = issuer.rsplit(':').next().unwrap().to_owned();
    let restart = |keys: Vec<(&str, &str)>| common::Options {
        db_url: Some(server.db_url.clone()),
        redis_url: Some(server.redis_url.clone()),
        prefix: Some(server.prefix.clone()),
        keys: server.keys.clone(),
        env: [
            ("SERVAL_STS_PORT", port.as_str()),
            ("ISSUER_URL", issuer.as_str()),
        ]
        .into_iter()
        .chain(keys)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        ..Default::default()
    };
    let rotated = restart(vec![
        ("IDEMPOTENCY_HMAC_KEY", TWO),
        ("IDEMPOTENCY_HMAC_KEY_PREVIOUS", ONE),
    ]);
    server.kill();
    let server = Server::start(rotated).await;
    let c = Coord::new(&server, &token);
    let (s, h, again) = c
        .call(reqwest::Method::POST, &agents, Some(body.clone()), &key)
        .await;
    assert_eq!((s, &again), (201, &first));
    assert_eq!(
        h.get("idempotency-replayed").map(String::as_str),
        Some("true")
    );
    let (s, _, v) = c
        .call(
            reqwest::Method::POST,
            &agents,
            Some(json!({"application_id": z.app, "labels": ["x"]})),
            &key,
        )
        .await;
    assert_eq!((s, &v["error"]), (409, &json!("idempotency_key_conflict")));
}

/// The Coordinator decides graph writes on the zone's graph kept in memory; another
/// process's graph event (appended here straight into the log, as a second Coordinator
/// would) must be in the next decision: the edge it created closes a cycle the next
/// creation is refused for, and the epoch goes on from it.
#[tokio::test]
async fn a_graph_event_written_elsewhere_is_in_the_next_decision() {
    use serval_domain::delegation::{graph_id, DelegationEvent, Edge, EdgeCreated};
    use serval_streams::{AppendOutcome, AppendRequest, LogStream};

    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let c = Coord::new(&server, &mandate(&issuer, &z).await);
    let zp = format!("/zones/{}", z.id);
    let sessions = start_sessions(&c, &z, 3).await;
    let (a, b, cc) = (&sessions[0], &sessions[1], &sessions[2]);
    let dz = format!("{zp}/delegations");
    // Each later edge lives shorter: one whose source has a live inbound edge narrows it.
    let edge = |from: &str, to: &str, ttl: u32| {
        json!({"source_session_id": from, "target_session_id": to,
               "issuer_application_id": z.app, "receiver_application_id": z.app,
               "scopes": ["tickets:read"],
               "constraints": {"resources": [RESOURCE], "max_hops": 2}, "ttl_seconds": ttl})
    };
    // A → B through the Coordinator: its graph is now kept at epoch 1.
    let (s, v) = c.post(&dz, edge(a, b, 900)).await;
    assert_eq!(s, 201, "{v}");
    let store = server.store().await;
    let stream = LogStream::Zone(z.id.clone());
    assert_eq!(store.version(&stream, &graph_id(&z.id)).await.unwrap(), 1);

    // B → C by another writer, at epoch 1 → 2.
    let now = chrono::Utc::now();
    let elsewhere = Edge {
        id: uuid::Uuid::now_v7().to_string(),
        zone_id: z.id.clone(),
        source_session_id: b.clone(),
        target_session_id: cc.clone(),
        issuer_application_id: z.app.clone(),
        receiver_application_id: z.app.clone(),
        parent_edge_id: None,
        resource_id: None,
        resource_identifier: None,
        scopes: vec!["tickets:read".into()],
        constraints_json: json!({"resources": [RESOURCE], "max_hops": 3, "ttl_seconds": 600}),
        status: "active".into(),
        expires_at: now + chrono::Duration::seconds(600),
        edge_version: 0,
        revoked_at: None,
        created_at: now,
        end_reason: None,
    };
    let req = AppendRequest::new(
        stream.clone(),
        Some(z.id.clone()),
        graph_id(&z.id),
        1,
        vec![serval_domain::Event::Delegation(
            DelegationEvent::EdgeCreated(EdgeCreated { edge: elsewhere }),
        )],
        "test:another-coordinator".to_owned(),
    );
    assert!(matches!(
        store.append(&req).await.expect("append"),
        AppendOutcome::Appended { .. }
    ));

    // C → A would close A → B → C → A: refused, though the kept graph never saw B → C.
    let (s, v) = c.post(&dz, edge(cc, a, 300)).await;
    assert_eq!((s, v), (409, json!({"error": "delegation_cycle_denied"})));
    // And a creation that is allowed goes on from the other writer's epoch.
    let (s, v) = c.post(&dz, edge(a, cc, 300)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(store.version(&stream, &graph_id(&z.id)).await.unwrap(), 3);
}

/// §4.1 step 7 and §15: a start counts the zone's live Sessions and its parent's open
/// children; an ended Session or a task past its TTL no longer counts. The narrow rows the
/// projection keeps for those counts are the ones the repair derives from the documents, and
/// the repair puts back what a projector of an earlier version left out.
#[tokio::test(flavor = "multi_thread")]
async fn capacity_counts_only_live_sessions() {
    let (server, issuer) = server_with(&[
        ("CARACAL_COORDINATOR_TOKEN", OPERATOR),
        ("MAX_AGENTS_PER_ZONE", "12"),
        ("MAX_AGENTS_PER_APP", "13"),
        // Only the TTL, not a sweep, may stop the brief task counting.
        ("SERVAL_COORDINATOR_SWEEP_INTERVAL_SECS", "0"),
    ])
    .await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let token = mandate(&issuer, &z).await;
    let c = Coord::new(&server, &token);
    let agents = format!("/zones/{}/agents", z.id);
    let start = |body: Value| {
        let (c, agents) = (&c, &agents);
        async move { c.post(agents, body).await }
    };

    let (s, root) = start(json!({"application_id": z.app})).await;
    assert_eq!(s, 201, "{root}");
    let root_id = root["agent_session_id"].as_str().unwrap().to_owned();
    let mut children = Vec::new();
    for _ in 0..10 {
        let (s, v) = start(json!({"application_id": z.app, "parent_id": root_id})).await;
        assert_eq!(s, 201, "{v}");
        children.push(v["agent_session_id"].as_str().unwrap().to_owned());
    }
    let (s, v) = start(json!({"application_id": z.app, "parent_id": root_id})).await;
    assert_eq!(
        (s, v),
        (429, json!({"error": "session_children_limit_exceeded"}))
    );
    let (s, v) = start(json!({"application_id": z.app})).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = start(json!({"application_id": z.app})).await;
    assert_eq!(
        (s, v),
        (429, json!({"error": "session_zone_limit_exceeded"}))
    );

    // An ended child frees a place in the zone and under its parent.
    let (s, _) = c
        .delete(&format!("{agents}/{}?reason=done", children[0]), None)
        .await;
    assert_eq!(s, 204);
    let (s, brief) =
        start(json!({"application_id": z.app, "parent_id": root_id, "ttl_seconds": 2})).await;
    assert_eq!(s, 201, "{brief}");
    let (s, v) = start(json!({"application_id": z.app})).await;
    assert_eq!(
        (s, v),
        (429, json!({"error": "session_zone_limit_exceeded"}))
    );

    // Past its TTL the brief task no longer counts in the zone (it is still open under
    // its parent until it is swept).
    let pool = common::pool(&server.db_url).await;
    let brief_id = brief["agent_session_id"].as_str().unwrap().to_owned();
    let until: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT live_until FROM live_sessions WHERE id = $1")
            .bind(&brief_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let wait = until.unwrap() - chrono::Utc::now() + chrono::Duration::milliseconds(100);
    tokio::time::sleep(wait.to_std().unwrap_or_default()).await;
    let (s, v) = start(json!({"application_id": z.app})).await;
    assert_eq!(s, 201, "{v}");

    // What the projection wrote is what the repair derives from the documents.
    let rows = |pool: sqlx::PgPool, zone: String| async move {
        sqlx::query_as::<
            _,
            (
                String,
                String,
                Option<String>,
                Option<chrono::DateTime<chrono::Utc>>,
            ),
        >(
            "SELECT id, application_id, parent_id, live_until FROM live_sessions
              WHERE zone_id = $1 ORDER BY id",
        )
        .bind(zone)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    // The root, ten children, two more roots.
    let written = eventually(10, || async {
        let r = rows(pool.clone(), z.id.clone()).await;
        (r.len() == 13).then_some(r)
    })
    .await;
    assert_eq!(
        serval_projector::sessions::reconcile_live(&pool)
            .await
            .unwrap(),
        0
    );
    // A row left out and a row left behind are repaired.
    sqlx::query("DELETE FROM live_sessions WHERE id = $1")
        .bind(&root_id)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO live_sessions (zone_id, id, application_id) VALUES ($1, $2, $3)")
        .bind(&z.id)
        .bind(&children[0])
        .bind(&z.app)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        serval_projector::sessions::reconcile_live(&pool)
            .await
            .unwrap(),
        2
    );
    assert_eq!(rows(pool.clone(), z.id.clone()).await, written);
}

/// Graph writes keep the rows they read (the caller's identity, the endpoints, the
/// resource) from one write to the next while only graph events and admin-audit records
/// come between, and read them again once a catalog row changed: an ended endpoint, an
/// archived resource and an archived application are refused on the very next write.
#[tokio::test(flavor = "multi_thread")]
async fn graph_writes_read_rows_again_once_a_catalog_row_changed() {
    let (server, issuer) = coordinator_server().await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let c = Coord::new(&server, &mandate(&issuer, &z).await);
    let zp = format!("/zones/{}", z.id);
    let sessions = start_sessions(&c, &z, 3).await;
    let (a, b, d) = (&sessions[0], &sessions[1], &sessions[2]);
    let dz = format!("{zp}/delegations");
    let edge = |to: &str, resource: bool| {
        let mut e = json!({"source_session_id": a, "target_session_id": to,
               "issuer_application_id": z.app, "receiver_application_id": z.app,
               "scopes": ["tickets:read"], "ttl_seconds": 600});
        if resource {
            e["resource_id"] = json!(RESOURCE);
        } else {
            e["constraints"] = json!({"resources": ["resource://missing"]});
        }
        e
    };
    for _ in 0..3 {
        let (s, v) = c.post(&dz, edge(b, true)).await;
        assert_eq!(s, 201, "{v}");
    }

    let (s, v) = c.delete(&format!("{zp}/agents/{b}"), None).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = c.post(&dz, edge(b, true)).await;
    assert_eq!(
        (s, v),
        (404, json!({"error": "delegation_endpoint_not_found"}))
    );
    let (s, v) = c.post(&dz, edge(d, true)).await;
    assert_eq!(s, 201, "{v}");

    let (s, list) = admin.get(&format!("/v1/zones/{}/resources", z.id)).await;
    assert_eq!(s, 200, "{list}");
    let resource = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["identifier"] == RESOURCE)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, v) = admin
        .delete(&format!("/v1/zones/{}/resources/{resource}", z.id))
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = c.post(&dz, edge(d, true)).await;
    assert_eq!((s, v), (404, json!({"error": "resource_not_found"})));

    // Writes that fail before appending leave the kept identity as it was read.
    let (s, v) = c.post(&dz, edge(d, false)).await;
    assert_eq!((s, v), (404, json!({"error": "resource_not_found"})));
    let (s, v) = admin
        .delete(&format!("/v1/zones/{}/applications/{}", z.id, z.app))
        .await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = c.post(&dz, edge(d, false)).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"], "identity_revoked", "{v}");
}
