//! The decision contract, table-driven: data documents + input → expected `result`
//! (management-api.md §9, sts.md §6). Every case is evaluated on the virtual machine and on
//! the tree-walking interpreter, and both must agree.

#[path = "support/policy_fixtures.rs"]
mod fixtures;

use fixtures::*;
use serde_json::{json, Value};
use serval_domain::policy::Bundle;

fn deny(reason: &str) -> Value {
    json!({ "decision": "deny", "evaluation_status": "complete",
            "determining_policies": [], "diagnostics": [{ "reason": reason }] })
}

fn allow(policy: &str, diagnostics: Value) -> Value {
    json!({ "decision": "allow", "evaluation_status": "complete",
            "determining_policies": [{ "policy": policy }], "diagnostics": diagnostics })
}

fn check(bundle: &Bundle, name: &str, input: &Value, expected: &Value) {
    let vm = bundle
        .evaluate(input)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let interpreted = bundle
        .evaluate_interpreted(input)
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(&vm, expected, "case {name}");
    assert_eq!(vm, interpreted, "case {name}: VM and interpreter disagree");
}

/// Sets the member a JSON pointer names, creating it when absent.
fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    let mut at = &mut v;
    for part in pointer.trim_start_matches('/').split('/') {
        at = &mut at[part];
    }
    *at = value;
    v
}

#[test]
fn every_allow_path_and_deny_diagnostic() {
    let b = compile(&base_docs());
    let step_up = json!([
        { "step_up_required": { "type": "human_approval",
            "tiers": [{ "tier": "high", "approver": "operator", "ttl_seconds": 600 }] } },
        { "risk": [{ "scope": "ledger:export", "tier": "high" }] }
    ]);
    let read = &["ledger:read"];
    let table: Vec<(&str, Value, Value)> = vec![
        // Bootstrap.
        (
            "bootstrap allow",
            bootstrap(APP),
            allow("caracal-bootstrap", json!([])),
        ),
        (
            "bootstrap by a non-owner",
            bootstrap(APP2),
            deny("resource_not_granted"),
        ),
        (
            "bootstrap with an agent session",
            with(bootstrap(APP), "/principal/agent_session_id", json!("s-1")),
            deny("no_rule_matched"),
        ),
        (
            "bootstrap with subject claims",
            with(
                bootstrap(APP),
                "/context/subject_claims",
                json!({"sub": "u"}),
            ),
            deny("no_rule_matched"),
        ),
        (
            "bootstrap with a delegation",
            with(
                bootstrap(APP),
                "/delegation_edge",
                json!({"id": "e1", "scopes": []}),
            ),
            deny("no_rule_matched"),
        ),
        // Delegated mint.
        (
            "mint allow",
            mint(&["clerk"], read, read),
            allow("caracal-ledger-bot-mint", json!([])),
        ),
        (
            "mint under a second matching role",
            mint(&["guest", "auditor"], read, read),
            allow("caracal-ledger-bot-mint", json!([])),
        ),
        (
            "mint of a gated tier raises step-up",
            mint(&["auditor"], &["ledger:export"], &["ledger:export"]),
            allow("caracal-ledger-bot-mint", step_up.clone()),
        ),
        (
            "mint of a gated tier after approval",
            with(
                mint(&["auditor"], &["ledger:export"], &["ledger:export"]),
                "/context/challenge_resolved",
                json!(true),
            ),
            allow(
                "caracal-ledger-bot-mint",
                json!([{ "risk": [{ "scope": "ledger:export", "tier": "high" }] }]),
            ),
        ),
        (
            "mint beyond the delegation",
            mint(&["admin"], &["ledger:write"], read),
            deny("delegation_scope_exceeded"),
        ),
        (
            "mint outside the role",
            mint(&["clerk"], &["ledger:write"], &["ledger:write"]),
            deny("role_scope_mismatch"),
        ),
        (
            "mint with no label",
            mint(&[], read, read),
            deny("role_scope_mismatch"),
        ),
        (
            "confinement narrows an admin",
            mint(
                &["admin", "customer:42"],
                &["ledger:write"],
                &["ledger:write"],
            ),
            deny("confinement_violation"),
        ),
        (
            "confinement still allows its scopes",
            mint(&["admin", "customer:42"], read, read),
            allow("caracal-ledger-bot-mint", json!([])),
        ),
        (
            "mint for an unknown resource",
            with(
                mint(&["clerk"], read, read),
                "/resource/identifier",
                json!("resource://nope"),
            ),
            deny("resource_not_granted"),
        ),
        (
            "mint of a resource another application owns",
            with(
                mint(&["clerk"], &["payroll:read"], &["payroll:read"]),
                "/resource/identifier",
                json!("resource://payroll"),
            ),
            deny("resource_not_granted"),
        ),
        (
            "mint with subject claims",
            with(
                mint(&["clerk"], read, read),
                "/context/subject_claims",
                json!({"sub": "u"}),
            ),
            deny("no_rule_matched"),
        ),
        (
            "mint with no scopes",
            mint(&["clerk"], &[], read),
            deny("no_rule_matched"),
        ),
        (
            "mint mixing agent:lifecycle",
            mint(&["clerk"], &["ledger:read", "agent:lifecycle"], read),
            deny("no_rule_matched"),
        ),
        (
            "mint without a delegation",
            with(
                with(
                    mint(&["clerk"], read, read),
                    "/delegation_edge",
                    Value::Null,
                ),
                "/context/delegation_edge_id",
                Value::Null,
            ),
            deny("no_rule_matched"),
        ),
        (
            "mint without an agent session",
            with(
                with(
                    mint(&["clerk"], read, read),
                    "/principal/agent_session_id",
                    Value::Null,
                ),
                "/context/agent_session_id",
                Value::Null,
            ),
            deny("no_rule_matched"),
        ),
        // Workload mint.
        (
            "workload allow",
            workload(),
            allow("caracal-workload-mint", json!([])),
        ),
        (
            "workload with a delegation",
            with(
                workload(),
                "/context/requested_scopes",
                json!(["ledger:read"]),
            )
            .tap_insert("delegation_edge", json!({"id": "e1"})),
            deny("no_rule_matched"),
        ),
        (
            "workload with subject claims",
            workload().tap_insert_ctx("subject_claims", json!({"sub": "u"})),
            deny("no_rule_matched"),
        ),
        (
            "workload of a gated tier raises step-up",
            with(
                workload(),
                "/context/requested_scopes",
                json!(["ledger:export"]),
            ),
            allow("caracal-workload-mint", step_up.clone()),
        ),
        // Mandate use at the Gateway.
        (
            "use allow",
            mandate_use(&["clerk"], "ledger:read", json!("resource://ledger")),
            allow("caracal-ledger-bot-use", json!([])),
        ),
        (
            "use with an audience list",
            mandate_use(
                &["clerk"],
                "ledger:read",
                json!(["resource://a", "resource://ledger"]),
            ),
            allow("caracal-ledger-bot-use", json!([])),
        ),
        (
            "use of another target",
            mandate_use(&["clerk"], "ledger:read", json!("resource://other")),
            deny("mandate_target_mismatch"),
        ),
        (
            "use after the role narrowed",
            mandate_use(
                &["clerk"],
                "ledger:read ledger:write",
                json!("resource://ledger"),
            ),
            deny("role_scope_mismatch"),
        ),
        (
            "use with no scope",
            mandate_use(&["clerk"], "", json!("resource://ledger")),
            deny("no_rule_matched"),
        ),
        (
            "use with requested scopes",
            with(
                mandate_use(&["clerk"], "ledger:read", json!("resource://ledger")),
                "/context/requested_scopes",
                json!(["ledger:read"]),
            ),
            deny("no_rule_matched"),
        ),
        (
            "use by a non-owner",
            with(
                mandate_use(&["clerk"], "ledger:read", json!("resource://ledger")),
                "/principal/id",
                json!(APP2),
            ),
            deny("resource_not_granted"),
        ),
        // Nothing matches.
        ("an empty input", json!({}), deny("no_rule_matched")),
        (
            "a non-object input",
            json!("hello"),
            deny("no_rule_matched"),
        ),
    ];
    for (name, input, expected) in &table {
        check(&b, name, input, expected);
    }
}

trait Tap {
    fn tap_insert(self, key: &str, v: Value) -> Value;
    fn tap_insert_ctx(self, key: &str, v: Value) -> Value;
}

impl Tap for Value {
    fn tap_insert(mut self, key: &str, v: Value) -> Value {
        self[key] = v;
        self
    }
    fn tap_insert_ctx(mut self, key: &str, v: Value) -> Value {
        self["context"][key] = v;
        self
    }
}

#[test]
fn restrict_denies_everything() {
    let mut docs = base_docs();
    docs.push(doc(r#"restrict := [{"reason": "incident 42"}]"#));
    let b = compile(&docs);
    for (name, input) in [
        ("bootstrap", bootstrap(APP)),
        ("mint", mint(&["clerk"], &["ledger:read"], &["ledger:read"])),
        ("workload", workload()),
        (
            "use",
            mandate_use(&["clerk"], "ledger:read", json!("resource://ledger")),
        ),
    ] {
        check(&b, name, &input, &deny("restriction_active"));
    }
    // An empty restrict (the template) restricts nothing.
    let mut docs = base_docs();
    docs.push(doc("restrict := []"));
    check(
        &compile(&docs),
        "empty restrict",
        &bootstrap(APP),
        &allow("caracal-bootstrap", json!([])),
    );
    // A non-empty object is a non-empty collection too.
    let mut docs = base_docs();
    docs.push(doc(r#"restrict := {"all": true}"#));
    check(
        &compile(&docs),
        "object restrict",
        &workload(),
        &deny("restriction_active"),
    );
}

#[test]
fn malformed_risk_and_approval_data_fail_closed() {
    let cases = [
        (
            r#"risk := [{"scope": 1, "tier": "high"}]"#,
            "malformed_risk_data",
        ),
        (r#"risk := {"scope": "x"}"#, "malformed_risk_data"),
        (
            r#"risk := [{"scope": "ledger:read"}]"#,
            "malformed_risk_data",
        ),
        (
            r#"approval_tiers := [{"tier": "high", "ttl_seconds": -5}]"#,
            "malformed_approval_data",
        ),
        (
            r#"approval_tiers := [{"tier": "high", "ttl_seconds": 1.5}]"#,
            "malformed_approval_data",
        ),
        (
            r#"approval_tiers := [{"tier": "high", "approver": "boss"}]"#,
            "malformed_approval_data",
        ),
        (
            r#"approval_tiers := [{"tier": "high", "privacy": "public"}]"#,
            "malformed_approval_data",
        ),
        (
            r#"approval_tiers := [{"approver": "any"}]"#,
            "malformed_approval_data",
        ),
    ];
    for (body, reason) in cases {
        let mut docs = base_docs();
        let rule = body.split_whitespace().next().unwrap_or_default();
        docs.retain(|d| !d.contains(&format!("{rule} :=")));
        docs.push(doc(body));
        let b = compile(&docs);
        check(
            &b,
            body,
            &mint(&["clerk"], &["ledger:read"], &["ledger:read"]),
            &deny(reason),
        );
        check(&b, body, &workload(), &deny(reason));
        // The bootstrap and use paths do not read risk data.
        check(
            &b,
            body,
            &bootstrap(APP),
            &allow("caracal-bootstrap", json!([])),
        );
    }
    // Defaults are well-formed: approver, ttl and privacy may be left out.
    let mut docs = base_docs();
    docs.retain(|d| !d.contains("approval_tiers :="));
    docs.push(doc(
        r#"approval_tiers := [{"tier": "high", "approver": "any", "privacy": "anonymous"}]"#,
    ));
    let b = compile(&docs);
    let r = b
        .evaluate(&mint(&["auditor"], &["ledger:export"], &["ledger:export"]))
        .unwrap();
    assert_eq!(r["decision"], "allow");
    assert_eq!(
        r["diagnostics"][0]["step_up_required"]["tiers"][0]["approver"],
        "any"
    );
}

#[test]
fn a_zone_with_no_grants_denies_every_application() {
    let b = compile(&[doc("confinement := []")]);
    check(
        &b,
        "bootstrap",
        &bootstrap(APP),
        &deny("resource_not_granted"),
    );
    check(
        &b,
        "mint",
        &mint(&["clerk"], &["ledger:read"], &["ledger:read"]),
        &deny("resource_not_granted"),
    );
    check(
        &b,
        "use",
        &mandate_use(&["clerk"], "ledger:read", json!("resource://ledger")),
        &deny("resource_not_granted"),
    );
}

#[test]
fn computed_documents_are_evaluated_once_at_compilation() {
    // Documents may compute their data (comprehensions, partial rules).
    let docs = vec![
        doc(&format!("app_ids[k] := v if {{\n\tsome k, v in {{\"ledger-bot\": \"{APP}\"}}\n}}")),
        doc("grants[\"resource://ledger\"] := {\"application\": \"ledger-bot\", \"roles\": {r: [\"ledger:read\"] | some r in [\"clerk\", \"reader\"]}}"),
    ];
    let b = compile(&docs);
    assert_eq!(
        b.documents()["grants"]["resource://ledger"]["roles"]["reader"],
        json!(["ledger:read"])
    );
    check(
        &b,
        "computed",
        &mint(&["reader"], &["ledger:read"], &["ledger:read"]),
        &allow("caracal-ledger-bot-mint", json!([])),
    );
}

#[test]
fn bundle_compilation_failures() {
    use serval_domain::policy::{BundleDocument, BundleError};
    let compile_err = |docs: &[&str]| {
        let refs: Vec<BundleDocument<'_>> = docs
            .iter()
            .map(|c| BundleDocument {
                policy_version_id: "pv",
                content: c,
            })
            .collect();
        Bundle::compile(&refs).unwrap_err()
    };
    let a = doc("app_ids := {}");
    assert!(
        matches!(compile_err(&[&a, &a]), BundleError::Bundle(m) if m.starts_with("duplicate_rule:app_ids"))
    );
    assert!(matches!(
        compile_err(&["package x"]),
        BundleError::Contract { .. }
    ));
    let input = doc("app_ids := {\"a\": input.principal.id}");
    assert!(
        matches!(compile_err(&[&input]), BundleError::Bundle(m) if m.contains("must not read input"))
    );
    let conflict = doc("app_ids[\"a\"] := \"x\"\napp_ids[\"a\"] := \"y\"");
    assert!(matches!(compile_err(&[&conflict]), BundleError::Bundle(_)));
}

#[test]
fn bundles_are_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Bundle>();
    let b = std::sync::Arc::new(compile(&base_docs()));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let b = b.clone();
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let r = b
                        .evaluate(&mint(&["clerk"], &["ledger:read"], &["ledger:read"]))
                        .unwrap();
                    assert_eq!(r["decision"], "allow");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}
