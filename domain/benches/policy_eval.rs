//! Policy evaluation of a realistic bundle: 10 applications, 50 resources (3 roles each),
//! confinement, risk and approval tiers, for allow and deny inputs.
//!
//! `cargo bench -p serval-domain --bench policy_eval` prints per-call percentiles (20,000
//! single evaluations per input) and then runs the criterion groups.

use std::time::Instant;

use criterion::{black_box, criterion_group, Criterion};
use serde_json::{json, Value};
use serval_domain::policy::{Bundle, BundleDocument};

// The allocator the `serval` binary runs with: evaluation allocates, and the figure is
// meant to be the one the STS pays.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn app(i: usize) -> String {
    format!("0198c2d5-0b7a-7f10-8e2c-5a1d3c9b7e{i:02}")
}

fn documents() -> Vec<String> {
    let head = "# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n";
    let app_ids: serde_json::Map<String, Value> = (0..10)
        .map(|i| (format!("bot-{i}"), json!(app(i))))
        .collect();
    let grants: serde_json::Map<String, Value> = (0..50)
        .map(|r| {
            (
                format!("resource://svc-{r}"),
                json!({
                    "application": format!("bot-{}", r % 10),
                    "roles": {
                        "reader": [format!("svc{r}:read")],
                        "writer": [format!("svc{r}:read"), format!("svc{r}:write")],
                        "admin": [format!("svc{r}:read"), format!("svc{r}:write"), format!("svc{r}:admin")],
                    }
                }),
            )
        })
        .collect();
    let confinement: Vec<Value> = (0..5)
        .map(
            |i| json!({"label_prefix": format!("tenant-{i}:"), "scopes": [format!("svc{i}:read")]}),
        )
        .collect();
    let risk: Vec<Value> = (0..20)
        .map(|r| json!({"scope": format!("svc{r}:admin"), "tier": if r % 2 == 0 { "high" } else { "critical" }}))
        .collect();
    let tiers = json!([
        {"tier": "high", "approver": "operator", "ttl_seconds": 900},
        {"tier": "critical", "approver": "subject", "privacy": "pseudonymous"},
        {"tier": "low", "approver": "any"}
    ]);
    vec![
        format!("{head}app_ids := {}\n", Value::Object(app_ids)),
        format!("{head}grants := {}\n", Value::Object(grants)),
        format!("{head}confinement := {}\n", json!(confinement)),
        format!("{head}risk := {}\n", json!(risk)),
        format!("{head}approval_tiers := {tiers}\n"),
    ]
}

fn mint(resource: usize, owner: usize, labels: &[&str], scopes: &[String]) -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Application", "id": app(owner), "zone_id": "z",
                       "registration_method": "managed", "agent_session_id": "s-b",
                       "lifecycle": "task", "labels": labels },
        "resource": { "type": "Resource", "id": format!("res-{resource}"),
                      "identifier": format!("resource://svc-{resource}"), "scopes": scopes },
        "action": { "id": "TokenExchange" },
        "session": { "id": "ar-1" },
        "delegation_edge": { "id": "e1", "source_session_id": "s-a", "target_session_id": "s-b",
                             "issuer_application_id": app(9), "receiver_application_id": app(owner),
                             "resource_id": format!("res-{resource}"), "scopes": scopes,
                             "edge_version": 1, "path": ["e1"], "graph_epoch": 3,
                             "constraints_json": {} },
        "context": { "actor_claims": { "caracal_client_id": app(owner) }, "subject_claims": {},
                     "trace_id": "t", "session_id": "ar-1", "agent_session_id": "s-b",
                     "delegation_edge_id": "e1", "challenge_resolved": false,
                     "requested_scopes": scopes }
    })
}

fn inputs() -> Vec<(&'static str, Value)> {
    let s = |r: usize, what: &[&str]| {
        what.iter()
            .map(|w| format!("svc{r}:{w}"))
            .collect::<Vec<_>>()
    };
    vec![
        (
            "allow_mint",
            mint(23, 3, &["writer", "tenant-9:x"], &s(23, &["read", "write"])),
        ),
        ("allow_step_up", mint(12, 2, &["admin"], &s(12, &["admin"]))),
        (
            "deny_role_scope_mismatch",
            mint(23, 3, &["reader"], &s(23, &["read", "write"])),
        ),
        (
            "deny_resource_not_granted",
            mint(23, 4, &["writer"], &s(23, &["read"])),
        ),
        (
            "deny_confinement",
            mint(2, 2, &["admin", "tenant-2:acme"], &s(2, &["write"])),
        ),
    ]
}

fn compile(docs: &[String]) -> Bundle {
    let refs: Vec<BundleDocument<'_>> = docs
        .iter()
        .enumerate()
        .map(|(i, c)| BundleDocument {
            policy_version_id: ["pv0", "pv1", "pv2", "pv3", "pv4"][i],
            content: c,
        })
        .collect();
    Bundle::compile(&refs).expect("realistic bundle compiles")
}

fn percentiles(bundle: &Bundle) {
    println!("per-call evaluation latency (20000 calls each, after 2000 warm-up calls):");
    for (name, input) in inputs() {
        for _ in 0..2_000 {
            black_box(bundle.evaluate(&input).unwrap());
        }
        let mut t: Vec<u128> = (0..20_000)
            .map(|_| {
                let start = Instant::now();
                black_box(bundle.evaluate(black_box(&input)).unwrap());
                start.elapsed().as_nanos()
            })
            .collect();
        t.sort_unstable();
        let p = |q: f64| t[((t.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
        let decision = bundle.evaluate(&input).unwrap()["decision"].clone();
        println!(
            "  {name:<28} {decision:<8} p50 {:>6.1} µs  p90 {:>6.1} µs  p99 {:>6.1} µs",
            p(0.50),
            p(0.90),
            p(0.99)
        );
    }
}

fn bench(c: &mut Criterion) {
    let docs = documents();
    let bundle = compile(&docs);
    percentiles(&bundle);
    let mut g = c.benchmark_group("policy_eval");
    for (name, input) in inputs() {
        g.bench_function(name, |b| {
            b.iter(|| bundle.evaluate(black_box(&input)).unwrap())
        });
    }
    g.finish();
    c.bench_function("bundle_compile", |b| b.iter(|| compile(black_box(&docs))));
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
