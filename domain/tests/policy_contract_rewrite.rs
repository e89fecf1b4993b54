//! The decision contract was rewritten for the virtual machine's cost model (2026-12-07: no
//! helper functions, no alias rules). This property holds it to the contract it replaced
//! (`support/contract_2026_12_06.rego`): the same `result` for every input, malformed
//! shapes included, under bundles with and without each kind of document. A later change
//! that means to decide differently replaces the fixture with the contract it changes.

#[path = "support/policy_fixtures.rs"]
mod fixtures;

use fixtures::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use serval_domain::policy::Bundle;

const EARLIER: &str = include_str!("support/contract_2026_12_06.rego");

/// Values where an object, a string or an array is expected.
fn odd() -> impl Strategy<Value = Value> {
    prop::sample::select(vec![
        json!("x"),
        json!([]),
        json!(3),
        Value::Null,
        json!({}),
        json!(""),
    ])
}

fn maybe(v: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
    prop_oneof![4 => v, 1 => odd()]
}

prop_compose! {
    fn subject()(
        scopes in subset(&SCOPES),
        as_array in any::<bool>(),
        target in prop::sample::select(vec![json!("resource://ledger"), json!("resource://other resource://ledger"), json!(["resource://ledger"]), json!(7)]),
        edge in maybe(Just(json!("e1"))),
    ) -> Value {
        let scope = if as_array { json!(scopes) } else { json!(scopes.join(" ")) };
        json!({ "scope": scope, "target": target, "delegation_edge_id": edge })
    }
}

prop_compose! {
    fn any_input()(
        app in prop::sample::select(vec![APP, APP2, "someone-else"]),
        kind in prop::sample::select(vec!["Application", "Workload"]),
        action in prop::sample::select(vec!["TokenExchange", "CredentialInjection"]),
        labels in maybe(subset(&LABELS).prop_map(|l| json!(l))),
        session in maybe(Just(json!("s-1"))),
        resource in prop::sample::select(vec!["resource://ledger", "resource://payroll", "resource://none"]),
        edge in prop::option::of((maybe(Just(json!("e1"))), maybe(subset(&SCOPES).prop_map(|s| json!(s))))),
        requested in maybe(subset(&SCOPES).prop_map(|s| json!(s))),
        claims in prop_oneof![2 => Just(json!({})), 3 => subject(), 1 => odd()],
        context_edge in maybe(Just(json!("e1"))),
        context_session in maybe(Just(json!("s-1"))),
        resolved in any::<bool>(),
        broken in 0..12usize,
        broken_to in odd(),
    ) -> Value {
        let mut input = json!({
            "schema_version": "2026-05-20",
            "principal": { "type": kind, "id": app, "zone_id": ZONE, "labels": labels,
                           "agent_session_id": session },
            "resource": { "type": "Resource", "id": "r", "identifier": resource, "scopes": [] },
            "action": { "id": action },
            "delegation_edge": edge.map(|(id, s)| json!({ "id": id, "scopes": s })).unwrap_or(Value::Null),
            "context": { "actor_claims": {}, "challenge_resolved": resolved,
                         "requested_scopes": requested, "subject_claims": claims,
                         "delegation_edge_id": context_edge, "agent_session_id": context_session },
        });
        let parts = ["principal", "resource", "action", "delegation_edge", "context"];
        if let Some(part) = parts.get(broken) {
            input[*part] = broken_to;
        }
        input
    }
}

fn bundles(contract: &str) -> Vec<Bundle> {
    let compile = |docs: &[String]| compile_with(docs, contract);
    let without = |rule: &str| -> Vec<String> {
        base_docs()
            .into_iter()
            .filter(|d| !d.contains(&format!("{rule} :=")))
            .collect()
    };
    let with = |rule: &str, body: &str| {
        let mut d = without(rule);
        d.push(doc(&format!("{rule} := {body}")));
        d
    };
    vec![
        compile(&base_docs()),
        compile(&[]),
        compile(&with(
            "confinement",
            r#"[{"label_prefix": "customer:", "scopes": ["ledger:read"]}, {"label_prefix": "adm", "scopes": ["ledger:write", "ledger:read"]}]"#,
        )),
        compile(&with(
            "confinement",
            r#"[{"label_prefix": 3, "scopes": "x"}]"#,
        )),
        compile(&with("restrict", r#"["incident"]"#)),
        compile(&with("risk", r#"[{"scope": 1}]"#)),
        compile(&with("approval_tiers", r#"[{"tier": "high"}]"#)),
        compile(&with(
            "risk",
            r#"[{"scope": "ledger:read", "tier": "high"}, {"scope": "ledger:write", "tier": "low"}]"#,
        )),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_rewritten_contract_decides_as_the_one_it_replaced(input in any_input()) {
        thread_local! {
            static NOW: Vec<Bundle> = bundles(serval_domain::policy::bundle::CONTRACT_SOURCE);
            static EARLIER_BUNDLES: Vec<Bundle> = bundles(EARLIER);
        }
        let now: Vec<_> = NOW.with(|b| b.iter().map(|b| b.evaluate(&input).map_err(|e| e.to_string())).collect());
        let before: Vec<_> = EARLIER_BUNDLES.with(|b| b.iter().map(|b| b.evaluate(&input).map_err(|e| e.to_string())).collect());
        prop_assert_eq!(now, before, "{}", input);
    }
}
