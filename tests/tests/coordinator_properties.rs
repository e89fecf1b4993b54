//! Properties of the Coordinator over random sequences of Session and Delegation operations,
//! black-box against the real binary: a terminated subtree has no live Session, no active
//! edge touches an ended Session, authority only narrows along `parent_edge_id`, no cycle
//! ever forms, a revocation ends exactly the edges `impact` predicted — and rebuilding the
//! catalog projection from the log reproduces the graph and the Sessions row for row.

mod common;

use std::collections::{HashMap, HashSet};

use common::runtime::{bootstrap, exchange, server_with, zone, RESOURCE};
use common::{eventually, Admin};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

const OPERATOR: &str = "coordinator-operator-token-for-properties";

#[derive(Debug, Clone)]
enum Op {
    Start(Option<u8>),
    Suspend(u8),
    Resume(u8),
    Terminate(u8),
    Delegate {
        from: u8,
        to: u8,
        hops: u8,
        parent: Option<u8>,
    },
    Revoke(u8),
    /// Delegate onwards from the target of an existing edge (a child edge, when it is live).
    Extend {
        edge: u8,
        to: u8,
        hops: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::option::of(0u8..16).prop_map(Op::Start),
        1 => (0u8..16).prop_map(Op::Suspend),
        1 => (0u8..16).prop_map(Op::Resume),
        2 => (0u8..16).prop_map(Op::Terminate),
        6 => (0u8..16, 0u8..16, 1u8..5, proptest::option::weighted(0.2, 0u8..16))
            .prop_map(|(from, to, hops, parent)| Op::Delegate { from, to, hops, parent }),
        2 => (0u8..16).prop_map(Op::Revoke),
        4 => (0u8..16, 0u8..16, 1u8..5).prop_map(|(edge, to, hops)| Op::Extend { edge, to, hops }),
    ]
}

struct Ctx {
    base: String,
    token: String,
    zone: String,
    app: String,
    secret: String,
    sts: String,
    pool: sqlx::PgPool,
    /// Delegated mints that succeeded, and mints refused on an ended edge or Session.
    minted: std::sync::atomic::AtomicUsize,
    refused_ended: std::sync::atomic::AtomicUsize,
}

/// A revoked, expired or ended Delegation or Session is never the basis of a new mandate
/// once its change is acknowledged: right after the operation, a delegated mint over every
/// edge of the zone succeeds only if the edge is active and both its Sessions are active.
async fn check_mints(ctx: &Ctx) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    let sessions = ctx.sessions().await;
    for e in ctx.edges().await {
        let (id, target) = (
            e["id"].as_str().unwrap_or_default(),
            e["target_session_id"].as_str().unwrap_or_default(),
        );
        let form = [
            ("grant_type", common::runtime::GRANT),
            ("zone_id", ctx.zone.as_str()),
            ("application_id", ctx.app.as_str()),
            ("client_secret", ctx.secret.as_str()),
            ("resource", RESOURCE),
            ("scope", "tickets:read"),
            ("agent_session_id", target),
            ("delegation_edge_id", id),
        ];
        let (s, _, v) = exchange(&ctx.sts, &form).await;
        let ended = e["status"] != "active"
            || ["source_session_id", "target_session_id"]
                .iter()
                .any(|end| sessions[e[*end].as_str().unwrap_or_default()].1 != "active");
        match (s, ended) {
            (200, true) => return Err(format!("minted over ended edge or Session {id}: {e}")),
            (200, false) => {
                ctx.minted.fetch_add(1, Ordering::Relaxed);
            }
            (403, true) => {
                ctx.refused_ended.fetch_add(1, Ordering::Relaxed);
            }
            (403, false) => {}
            other => return Err(format!("mint over {id}: {other:?} {v}")),
        }
    }
    Ok(())
}

impl Ctx {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        bearer: &str,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}/zones/{}{path}", self.base, self.zone))
            .header("authorization", format!("Bearer {bearer}"));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let s = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Sessions of the zone: id → (parent, status).
    /// Writes answer at their durable append; a request through the Coordinator reads a
    /// catalog that has passed them. One such read first, before Postgres is read directly.
    async fn settle(&self) {
        let (s, v) = self
            .call(reqwest::Method::GET, "/agents?limit=1", None, &self.token)
            .await;
        assert_eq!(s, 200, "{v}");
    }

    async fn sessions(&self) -> HashMap<String, (Option<String>, String)> {
        self.settle().await;
        let rows: Vec<(String, Option<String>, String)> = sqlx::query_as(
            "SELECT id, doc #>> '{data,session,parent_session_id}', doc #>> '{data,session,status}'
               FROM catalog_objects WHERE zone_id = $1 AND kind = 'session'",
        )
        .bind(&self.zone)
        .fetch_all(&self.pool)
        .await
        .unwrap();
        rows.into_iter().map(|(id, p, s)| (id, (p, s))).collect()
    }

    async fn edges(&self) -> Vec<Value> {
        self.settle().await;
        sqlx::query_scalar("SELECT doc FROM delegation_edges WHERE zone_id = $1 ORDER BY id")
            .bind(&self.zone)
            .fetch_all(&self.pool)
            .await
            .unwrap()
    }
}

fn open(status: &str) -> bool {
    status == "active" || status == "suspended"
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[i as usize % v.len()].clone())
}

/// Another element than `not` when there is one (self-delegations teach little).
fn pick_other(v: &[String], i: u8, not: &str) -> Option<String> {
    let others: Vec<String> = v.iter().filter(|x| *x != not).cloned().collect();
    pick(&others, i).or_else(|| pick(v, i))
}

/// Every invariant, read straight from the read model.
async fn check(ctx: &Ctx) -> Result<(), String> {
    let sessions = ctx.sessions().await;
    for (id, (_, status)) in &sessions {
        if !open(status) {
            continue;
        }
        let mut at = sessions[id].0.clone();
        while let Some(p) = at {
            let (pp, ps) = &sessions[&p];
            if !open(ps) {
                return Err(format!("{id} is {status} under ended ancestor {p}"));
            }
            at = pp.clone();
        }
    }
    let edges = ctx.edges().await;
    let by_id: HashMap<&str, &Value> = edges
        .iter()
        .map(|e| (e["id"].as_str().unwrap(), e))
        .collect();
    let hops = |e: &Value| e["constraints_json"]["max_hops"].as_u64().unwrap_or(1);
    let mut adjacency: HashMap<String, Vec<String>> = HashMap::new();
    for e in edges.iter().filter(|e| e["status"] == "active") {
        for end in ["source_session_id", "target_session_id"] {
            let s = e[end].as_str().unwrap();
            if !open(&sessions[s].1) {
                return Err(format!("active edge {} touches ended session {s}", e["id"]));
            }
        }
        if let Some(p) = e["parent_edge_id"].as_str() {
            let parent = by_id[p];
            let ps: HashSet<&str> = parent["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            if !e["scopes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| ps.contains(s.as_str().unwrap()))
            {
                return Err(format!("edge {} widens the scopes of {p}", e["id"]));
            }
            if hops(e) >= hops(parent) {
                return Err(format!("edge {} does not narrow the hops of {p}", e["id"]));
            }
        }
        adjacency
            .entry(e["source_session_id"].as_str().unwrap().to_owned())
            .or_default()
            .push(e["target_session_id"].as_str().unwrap().to_owned());
    }
    // No cycle: depth-first search for a back edge.
    fn cyclic(
        n: &str,
        adj: &HashMap<String, Vec<String>>,
        on: &mut HashSet<String>,
        done: &mut HashSet<String>,
    ) -> bool {
        if on.contains(n) {
            return true;
        }
        if !done.insert(n.to_owned()) {
            return false;
        }
        on.insert(n.to_owned());
        let found = adj
            .get(n)
            .into_iter()
            .flatten()
            .any(|m| cyclic(m, adj, on, done));
        on.remove(n);
        found
    }
    let mut done = HashSet::new();
    for n in adjacency.keys() {
        if cyclic(n, &adjacency, &mut HashSet::new(), &mut done) {
            return Err("a cycle formed".into());
        }
    }
    Ok(())
}

enum OpKind {
    Ending,
    Other,
}

async fn run_case(ctx: &Ctx, ops: Vec<Op>) -> Result<(), String> {
    use reqwest::Method;
    let mut ids: Vec<String> = Vec::new();
    let mut edges: Vec<String> = Vec::new();
    for op in ops {
        let op_kind = match op {
            Op::Suspend(_) | Op::Terminate(_) | Op::Revoke(_) => OpKind::Ending,
            _ => OpKind::Other,
        };
        match op {
            Op::Start(parent) => {
                let mut body = json!({"application_id": ctx.app, "parent_authority": "none",
                                      "labels": ["agent"]});
                if let Some(p) = parent.and_then(|i| pick(&ids, i)) {
                    body["parent_id"] = json!(p);
                }
                let (s, v) = ctx
                    .call(Method::POST, "/agents", Some(body), &ctx.token)
                    .await;
                if s == 201 {
                    ids.push(v["agent_session_id"].as_str().unwrap().to_owned());
                } else if ![404, 429].contains(&s) {
                    return Err(format!("start: {s} {v}"));
                }
            }
            Op::Suspend(i) | Op::Resume(i) | Op::Terminate(i) => {
                let Some(id) = pick(&ids, i) else { continue };
                let (m, path) = match op {
                    Op::Suspend(_) => (Method::PATCH, format!("/agents/{id}/suspend")),
                    Op::Resume(_) => (Method::PATCH, format!("/agents/{id}/resume")),
                    _ => (Method::DELETE, format!("/agents/{id}")),
                };
                let (s, v) = ctx.call(m, &path, None, &ctx.token).await;
                if ![200, 204, 404, 409].contains(&s) {
                    return Err(format!("{path}: {s} {v}"));
                }
            }
            Op::Delegate {
                from,
                to,
                hops,
                parent,
            } => {
                let sessions = ctx.sessions().await;
                let live: Vec<String> = ids
                    .iter()
                    .filter(|i| sessions[*i].1 == "active")
                    .cloned()
                    .collect();
                let Some(a) = pick(&live, from) else { continue };
                let Some(b) = pick_other(&live, to, &a) else {
                    continue;
                };
                let mut body = json!({"source_session_id": a, "target_session_id": b,
                    "issuer_application_id": ctx.app, "receiver_application_id": ctx.app,
                    "scopes": ["tickets:read"], "resource_id": RESOURCE,
                    "constraints": {"max_hops": hops}, "ttl_seconds": 3000 - 10 * edges.len()});
                if let Some(p) = parent.and_then(|i| pick(&edges, i)) {
                    body["parent_edge_id"] = json!(p);
                }
                let (s, v) = ctx
                    .call(Method::POST, "/delegations", Some(body), &ctx.token)
                    .await;
                match s {
                    201 => edges.push(v["delegation_edge_id"].as_str().unwrap().to_owned()),
                    400 | 403 | 404 | 409 => {}
                    _ => return Err(format!("delegate: {s} {v}")),
                }
            }
            Op::Extend { edge, to, hops } => {
                let Some(e) = pick(&edges, edge) else {
                    continue;
                };
                let all = ctx.edges().await;
                let Some(from) = all
                    .iter()
                    .find(|x| x["id"] == e.as_str())
                    .and_then(|x| x["target_session_id"].as_str().map(str::to_owned))
                else {
                    continue;
                };
                let sessions = ctx.sessions().await;
                let live: Vec<String> = ids
                    .iter()
                    .filter(|i| sessions[*i].1 == "active")
                    .cloned()
                    .collect();
                let Some(b) = pick_other(&live, to, &from) else {
                    continue;
                };
                let body = json!({"source_session_id": from, "target_session_id": b,
                    "issuer_application_id": ctx.app, "receiver_application_id": ctx.app,
                    "scopes": ["tickets:read"], "resource_id": RESOURCE,
                    "constraints": {"max_hops": hops}, "ttl_seconds": 3000 - 10 * edges.len()});
                let (s, v) = ctx
                    .call(Method::POST, "/delegations", Some(body), &ctx.token)
                    .await;
                match s {
                    201 => edges.push(v["delegation_edge_id"].as_str().unwrap().to_owned()),
                    400 | 403 | 404 | 409 => {}
                    _ => return Err(format!("extend: {s} {v}")),
                }
            }
            Op::Revoke(i) => {
                let Some(e) = pick(&edges, i) else { continue };
                let (si, impact) = ctx
                    .call(
                        Method::GET,
                        &format!("/delegations/{e}/impact"),
                        None,
                        OPERATOR,
                    )
                    .await;
                let (s, v) = ctx
                    .call(
                        Method::PATCH,
                        &format!("/delegations/{e}/revoke"),
                        None,
                        &ctx.token,
                    )
                    .await;
                match (si, s) {
                    (200, 200) => {
                        let predicted: Vec<&str> = impact["affected_edges"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|h| h["id"].as_str().unwrap())
                            .collect();
                        if v["revoked_edges"].as_u64() != Some(predicted.len() as u64) {
                            return Err(format!("revoke {e}: {v} vs impact {impact}"));
                        }
                        let now: HashMap<String, String> = ctx
                            .edges()
                            .await
                            .into_iter()
                            .map(|x| {
                                (
                                    x["id"].as_str().unwrap().to_owned(),
                                    x["status"].as_str().unwrap().to_owned(),
                                )
                            })
                            .collect();
                        if let Some(p) = predicted.iter().find(|p| now[**p] != "revoked") {
                            return Err(format!(
                                "impact named {p}, which the revocation left {}",
                                now[*p]
                            ));
                        }
                    }
                    (404, 404) => {}
                    other => return Err(format!("revoke {e}: {other:?} {v} / impact {impact}")),
                }
            }
        }
        check(ctx).await?;
        if matches!(op_kind, OpKind::Ending) {
            check_mints(ctx).await?;
        }
    }
    // Leave capacity for the next case.
    for id in &ids {
        ctx.call(Method::DELETE, &format!("/agents/{id}"), None, &ctx.token)
            .await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn random_sequences_keep_every_invariant_and_replay_reproduces_the_graph() {
    // No sweeper: the rebuild below must compare against a read model nothing else changes.
    let (server, issuer) = server_with(&[
        ("CARACAL_COORDINATOR_TOKEN", OPERATOR),
        ("SERVAL_COORDINATOR_SWEEP_INTERVAL_SECS", "0"),
        ("STS_MINT_RATE_LIMIT_PER_MIN", "0"),
    ])
    .await;
    let admin = Admin::new(&server);
    let z = zone(&admin, true).await;
    let (s, _, body) = eventually(20, || async {
        let r = exchange(&issuer, &bootstrap(&z, "agent:lifecycle")).await;
        (r.0 == 200).then_some(r)
    })
    .await;
    assert_eq!(s, 200);
    let ctx = Ctx {
        base: server.url("coordinator").to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        zone: z.id.clone(),
        app: z.app.clone(),
        secret: z.secret.clone(),
        sts: issuer.clone(),
        pool: common::pool(&server.db_url).await,
        minted: Default::default(),
        refused_ended: Default::default(),
    };
    let handle = tokio::runtime::Handle::current();
    // A fixed seed: the sequences (and so the sanity check below that they exercised
    // narrowing and revocation) are the same on every run.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 24,
            ..Config::default()
        },
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let result = tokio::task::block_in_place(|| {
        runner.run(&proptest::collection::vec(op(), 1..40), |ops| {
            handle
                .block_on(run_case(&ctx, ops))
                .map_err(proptest::test_runner::TestCaseError::fail)
        })
    });
    if let Err(e) = result {
        panic!("{e}\nserver log:\n{}", server.logs());
    }
    // The mint property was exercised both ways.
    let (minted, refused) = (
        ctx.minted.load(std::sync::atomic::Ordering::Relaxed),
        ctx.refused_ended.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert!(
        minted > 0 && refused > 0,
        "minted {minted}, refused on ended {refused}"
    );

    // Replaying the log rebuilds the same rows.
    let snapshot = |pool: sqlx::PgPool| async move {
        let edges: Vec<(String, Value)> =
            sqlx::query_as("SELECT id, doc FROM delegation_edges ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let graphs: Vec<(String, i64)> =
            sqlx::query_as("SELECT zone_id, epoch FROM delegation_graphs ORDER BY zone_id")
                .fetch_all(&pool)
                .await
                .unwrap();
        let objects: Vec<(String, i64, Value)> =
            sqlx::query_as("SELECT id, version, doc FROM catalog_objects ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap();
        (edges, graphs, objects)
    };
    ctx.settle().await;
    let before = snapshot(ctx.pool.clone()).await;
    let revoked = before
        .0
        .iter()
        .filter(|(_, d)| d["status"] == "revoked")
        .count();
    let narrowed = before
        .0
        .iter()
        .filter(|(_, d)| !d["parent_edge_id"].is_null())
        .count();
    eprintln!(
        "{} edges ({revoked} revoked, {narrowed} narrowing a parent), {} catalog objects",
        before.0.len(),
        before.2.len()
    );
    // The sequences must have exercised what the properties speak of.
    assert!(
        revoked > 0 && narrowed > 0,
        "too little happened: {} edges",
        before.0.len()
    );
    let (ok, out, err) = server.replay(&["rebuild", "--projection", "catalog"]);
    assert!(ok, "{out}{err}");

    let after = snapshot(ctx.pool.clone()).await;
    assert_eq!(before.0, after.0, "delegation_edges after a rebuild");
    assert_eq!(before.1, after.1, "delegation_graphs after a rebuild");
    assert_eq!(before.2, after.2, "catalog_objects after a rebuild");
}
