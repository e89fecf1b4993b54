//! Properties of the decision contract (proptest):
//! * with no `grants`, every Application request is denied (default deny);
//! * adding a `confinement` or a `restrict` entry never turns a deny into an allow;
//! * the decision does not depend on the order of documents in a manifest;
//! * the virtual machine and the interpreter agree on every input.

#[path = "support/policy_fixtures.rs"]
mod fixtures;

use fixtures::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use serval_domain::policy::bundle::is_allow;

prop_compose! {
    /// Any request shape: bootstrap, delegated mint, workload, mandate use, or a mix.
    fn any_input()(
        app in prop::sample::select(vec![APP, APP2, "someone-else"]),
        workload in any::<bool>(),
        injection in any::<bool>(),
        labels in subset(&LABELS),
        requested in subset(&SCOPES),
        edge in prop::option::of(subset(&SCOPES)),
        session in any::<bool>(),
        subject in prop::option::of((subset(&SCOPES), prop::sample::select(vec!["resource://ledger", "resource://other"]), any::<bool>())),
        resolved in any::<bool>(),
        resource in prop::sample::select(vec!["resource://ledger", "resource://payroll", "resource://none"]),
    ) -> Value {
        let subject_claims = match subject {
            None => json!({}),
            Some((scopes, target, with_edge)) => {
                let mut c = json!({ "scope": scopes.join(" "), "target": target });
                if with_edge {
                    c["delegation_edge_id"] = json!("e1");
                }
                c
            }
        };
        json!({
            "schema_version": "2026-05-20",
            "principal": {
                "type": if workload { "Workload" } else { "Application" },
                "id": app, "zone_id": ZONE, "labels": labels,
                "agent_session_id": if session { json!("s-1") } else { Value::Null },
            },
            "resource": { "type": "Resource", "id": "r", "identifier": resource, "scopes": [] },
            "action": { "id": if injection { "CredentialInjection" } else { "TokenExchange" } },
            "delegation_edge": edge.as_ref().map(|s| json!({ "id": "e1", "scopes": s })).unwrap_or(Value::Null),
            "context": {
                "actor_claims": {}, "challenge_resolved": resolved, "requested_scopes": requested,
                "subject_claims": subject_claims,
            }
        })
    }
}

fn is_workload_launch(input: &Value) -> bool {
    input["principal"]["type"] == "Workload" && input["action"]["id"] == "CredentialInjection"
}

fn docs_without_grants() -> Vec<String> {
    base_docs()
        .into_iter()
        .filter(|d| !d.contains("grants :="))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn default_deny_without_grants(input in any_input()) {
        thread_local! {
            static NO_GRANTS: serval_domain::policy::Bundle = compile(&docs_without_grants());
            static NOTHING: serval_domain::policy::Bundle = compile(&[]);
        }
        for bundle in [&NO_GRANTS, &NOTHING] {
            let r = bundle.with(|b| b.evaluate(&input)).unwrap();
            // The workload binding is itself the grant (§9 path 3); everything else needs
            // a grant document.
            if !is_workload_launch(&input) {
                prop_assert!(!is_allow(&r), "{input} -> {r}");
            }
        }
    }

    #[test]
    fn confinement_and_restrict_only_narrow(
        input in any_input(),
        prefix in prop::sample::select(vec!["", "c", "customer:", "adm", "guest", "nobody"]),
        allowed in subset(&SCOPES),
        restriction in prop::sample::select(vec![json!([1]), json!({"k": "v"}), json!(["incident"]), json!(true)]),
    ) {
        thread_local! {
            static BASE: serval_domain::policy::Bundle = compile(&base_docs());
        }
        let before = BASE.with(|b| b.evaluate(&input)).unwrap();
        prop_assume!(!is_allow(&before));

        let mut confined = base_docs();
        confined.retain(|d| !d.contains("confinement :="));
        confined.push(doc(&format!(
            "confinement := [{{\"label_prefix\": \"customer:\", \"scopes\": [\"ledger:read\"]}}, {{\"label_prefix\": {}, \"scopes\": {}}}]",
            json!(prefix), json!(allowed)
        )));
        let after = compile(&confined).evaluate(&input).unwrap();
        prop_assert!(!is_allow(&after), "confinement turned {before} into {after} for {input}");

        let mut restricted = base_docs();
        restricted.push(doc(&format!("restrict := {restriction}")));
        let after = compile(&restricted).evaluate(&input).unwrap();
        prop_assert!(!is_allow(&after), "restrict turned {before} into {after} for {input}");
    }

    #[test]
    fn document_order_does_not_matter(
        input in any_input(),
        order in Just((0..5usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        thread_local! {
            static BASE: serval_domain::policy::Bundle = compile(&base_docs());
        }
        let docs = base_docs();
        let shuffled: Vec<String> = order.iter().map(|i| docs[*i].clone()).collect();
        let a = BASE.with(|b| b.evaluate(&input)).unwrap();
        let b = compile(&shuffled).evaluate(&input).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn vm_and_interpreter_agree(input in any_input()) {
        thread_local! {
            static BASE: serval_domain::policy::Bundle = compile(&base_docs());
        }
        BASE.with(|b| {
            let vm = b.evaluate(&input).unwrap();
            let interpreted = b.evaluate_interpreted(&input).unwrap();
            prop_assert_eq!(vm, interpreted);
            Ok(())
        })?;
    }
}
