//! Shared fixtures of the policy tests: documents and input builders.
#![allow(dead_code)]

use serde_json::{json, Value};
use serval_domain::policy::{Bundle, BundleDocument};

pub const APP: &str = "0198c2d5-0b7a-7f10-8e2c-5a1d3c9b7e01";
pub const APP2: &str = "0198c2d5-0b7a-7f10-8e2c-5a1d3c9b7e02";
pub const ZONE: &str = "z1";

pub fn doc(body: &str) -> String {
    format!("# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n{body}\n")
}

pub fn compile(docs: &[String]) -> Bundle {
    compile_with(docs, serval_domain::policy::bundle::CONTRACT_SOURCE)
}

/// `docs` compiled against the decision contract `contract`.
pub fn compile_with(docs: &[String], contract: &str) -> Bundle {
    let ids: Vec<String> = (0..docs.len()).map(|i| format!("pv{i}")).collect();
    let refs: Vec<BundleDocument<'_>> = docs
        .iter()
        .zip(&ids)
        .map(|(c, id)| BundleDocument {
            policy_version_id: id,
            content: c,
        })
        .collect();
    Bundle::compile_with_contract(&refs, contract).expect("bundle compiles")
}

/// Labels and scopes the generated inputs draw from.
pub const LABELS: [&str; 6] = [
    "clerk",
    "auditor",
    "admin",
    "customer:1",
    "customer:2",
    "guest",
];
pub const SCOPES: [&str; 5] = [
    "ledger:read",
    "ledger:write",
    "ledger:export",
    "payroll:read",
    "agent:lifecycle",
];

/// Any subsequence of `pool`.
pub fn subset(
    pool: &[&'static str],
) -> impl proptest::strategy::Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(pool.to_vec(), 0..=pool.len())
}

/// The base documents: bindings, grants, confinement, risk and approval tiers.
pub fn base_docs() -> Vec<String> {
    vec![
        doc(&format!(
            "app_ids := {{\"ledger-bot\": \"{APP}\", \"other-bot\": \"{APP2}\"}}"
        )),
        doc(r#"grants := {
	"resource://ledger": {"application": "ledger-bot", "roles": {
		"clerk": ["ledger:read"],
		"auditor": ["ledger:read", "ledger:export"],
		"admin": ["ledger:read", "ledger:write", "ledger:export"],
	}},
	"resource://payroll": {"application": "other-bot", "roles": {"clerk": ["payroll:read"]}},
}"#),
        doc(r#"confinement := [{"label_prefix": "customer:", "scopes": ["ledger:read"]}]"#),
        doc(r#"risk := [{"scope": "ledger:export", "tier": "high"}]"#),
        doc(r#"approval_tiers := [{"tier": "high", "approver": "operator", "ttl_seconds": 600}]"#),
    ]
}

/// A delegated mint request.
pub fn mint(labels: &[&str], requested: &[&str], edge_scopes: &[&str]) -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Application", "id": APP, "zone_id": ZONE,
                       "registration_method": "managed", "agent_session_id": "s-b",
                       "lifecycle": "task", "labels": labels },
        "resource": { "type": "Resource", "id": "r1", "identifier": "resource://ledger",
                      "scopes": ["ledger:read", "ledger:write", "ledger:export"] },
        "action": { "id": "TokenExchange" },
        "session": { "id": "ar-1" },
        "delegation_edge": { "id": "e1", "source_session_id": "s-a", "target_session_id": "s-b",
                             "issuer_application_id": APP2, "receiver_application_id": APP,
                             "resource_id": "r1", "scopes": edge_scopes, "edge_version": 1,
                             "path": ["e1"], "graph_epoch": 3, "constraints_json": {} },
        "context": { "actor_claims": { "caracal_client_id": APP }, "subject_claims": {},
                     "trace_id": "t", "session_id": "ar-1", "agent_session_id": "s-b",
                     "delegation_edge_id": "e1", "challenge_resolved": false,
                     "requested_scopes": requested }
    })
}

/// The bootstrap request: `agent:lifecycle`, no delegation, no session.
pub fn bootstrap(app: &str) -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Application", "id": app, "zone_id": ZONE, "labels": [] },
        "resource": { "type": "Resource", "id": "r1", "identifier": "resource://ledger",
                      "scopes": ["ledger:read"] },
        "action": { "id": "TokenExchange" },
        "session": null,
        "delegation_edge": null,
        "context": { "actor_claims": {}, "challenge_resolved": false,
                     "requested_scopes": ["agent:lifecycle"] }
    })
}

/// A workload launch.
pub fn workload() -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Workload", "id": "wl-1", "zone_id": ZONE },
        "resource": { "type": "Resource", "id": "r1", "identifier": "resource://ledger",
                      "scopes": ["ledger:read"] },
        "action": { "id": "CredentialInjection" },
        "context": { "actor_claims": {}, "challenge_resolved": false,
                     "requested_scopes": ["ledger:read"] }
    })
}

/// A mandate presented at the Gateway.
pub fn mandate_use(labels: &[&str], scope: &str, target: Value) -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Application", "id": APP, "zone_id": ZONE, "labels": labels },
        "resource": { "type": "Resource", "id": "r1", "identifier": "resource://ledger",
                      "scopes": ["ledger:read", "ledger:write"] },
        "action": { "id": "TokenExchange", "method": "GET", "path": "/entries" },
        "context": { "actor_claims": {}, "challenge_resolved": false, "requested_scopes": [],
                     "subject_claims": { "delegation_edge_id": "e1", "scope": scope,
                                         "target": target } }
    })
}
