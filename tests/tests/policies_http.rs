//! Policies, validation, templates and policy sets over HTTP against the real binary
//! (management-api.md §9–§11), including the engine cache following the log.

mod common;

use common::{eventually, Admin, Options, Server};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn doc(body: &str) -> String {
    format!("# caracal:data-document\npackage caracal.authz\n\nimport rego.v1\n\n{body}\n")
}

fn sha(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn zone(admin: &Admin, name: &str) -> String {
    let (s, z) = admin.post("/v1/zones", json!({ "name": name })).await;
    assert_eq!(s, 201, "{z}");
    z["id"].as_str().unwrap().to_owned()
}

/// Creates a policy; returns (policy id, version id).
async fn policy(admin: &Admin, zone: &str, name: &str, content: &str) -> (String, String) {
    let (s, p) = admin
        .post(
            &format!("/v1/zones/{zone}/policies"),
            json!({ "name": name, "content": content }),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    (
        p["id"].as_str().unwrap().to_owned(),
        p["version_id"].as_str().unwrap().to_owned(),
    )
}

async fn set_with_version(
    admin: &Admin,
    zone: &str,
    name: &str,
    versions: &[&str],
) -> (String, String) {
    let (s, set) = admin
        .post(
            &format!("/v1/zones/{zone}/policy-sets"),
            json!({ "name": name }),
        )
        .await;
    assert_eq!(s, 201, "{set}");
    let set_id = set["id"].as_str().unwrap().to_owned();
    let manifest: Vec<Value> = versions
        .iter()
        .map(|v| json!({ "policy_version_id": v }))
        .collect();
    let (s, v) = admin
        .post(
            &format!("/v1/zones/{zone}/policy-sets/{set_id}/versions"),
            json!({ "manifest": manifest }),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    (set_id, v["version_id"].as_str().unwrap().to_owned())
}

fn mint_input(
    zone: &str,
    app: &str,
    labels: &[&str],
    scopes: &[&str],
    edge_scopes: &[&str],
) -> Value {
    json!({
        "schema_version": "2026-05-20",
        "principal": { "type": "Application", "id": app, "zone_id": zone,
                       "agent_session_id": "s-1", "lifecycle": "task", "labels": labels },
        "resource": { "type": "Resource", "id": "r1", "identifier": "resource://ledger",
                      "scopes": ["ledger:read", "ledger:write"] },
        "action": { "id": "TokenExchange" },
        "session": { "id": "ar-1" },
        "delegation_edge": { "id": "e1", "scopes": edge_scopes },
        "context": { "actor_claims": {}, "challenge_resolved": false,
                     "requested_scopes": scopes, "agent_session_id": "s-1",
                     "delegation_edge_id": "e1", "trace_id": "t" }
    })
}

const APP_ID: &str = "0198c2d5-0b7a-7f10-8e2c-5a1d3c9b7e01";

fn bindings_doc() -> String {
    doc(&format!("app_ids := {{\"ledger-bot\": \"{APP_ID}\"}}"))
}

fn grants_doc(scopes: &str) -> String {
    doc(&format!(
        "grants := {{\"resource://ledger\": {{\"application\": \"ledger-bot\", \"roles\": {{\"clerk\": [{scopes}]}}}}}}"
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_and_templates() {
    let server = Server::shared().await;
    let admin = Admin::new(server);

    let (s, r) = admin
        .post(
            "/v1/policies/validate",
            json!({ "content": bindings_doc() }),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["valid"], true);
    assert_eq!(r["schema_version"], "2026-05-20");
    assert_eq!(r["output_contract"]["rule"], "result");
    assert_eq!(r["preview"]["rules"], json!(["app_ids"]));
    assert_eq!(r["preview"]["default_result"], false);

    let cases = [
        ("", None),
        (
            "package caracal.authz\napp_ids := {}",
            Some("must_be_data_document"),
        ),
        (
            &doc("result := {\"decision\": \"allow\"}"),
            Some("data_document_must_not_define_result"),
        ),
        (
            &doc("app_ids := {\"a\": http.send({\"url\": \"x\"})}"),
            Some("forbidden_builtin:http.send"),
        ),
        (
            &doc("x := rand.intn(\"a\", 3)"),
            Some("forbidden_builtin:rand.intn"),
        ),
        (
            &doc("allow if true"),
            Some("data_document_rule_not_allowed:allow"),
        ),
        (&doc("app_ids := {"), Some("unbalanced_delimiters")),
        (&doc("app_ids := \"oops"), Some("unterminated_string")),
        (
            "# caracal:data-document\npackage other\napp_ids := {}",
            Some("must_use_package_caracal_authz"),
        ),
    ];
    for (content, reason) in cases {
        let (s, r) = admin
            .post("/v1/policies/validate", json!({ "content": content }))
            .await;
        match reason {
            None => {
                assert_eq!(s, 400, "{r}");
                assert_eq!(r["error"], "invalid_body");
                assert_eq!(r["error_description"], "Request body failed validation");
                assert_eq!(r["details"]["issues"][0]["path"], json!(["content"]));
                assert!(r["requestId"].is_string(), "{r}");
            }
            Some(reason) => {
                assert_eq!(s, 422, "{content}: {r}");
                assert_eq!(
                    r,
                    json!({"valid": false, "error": "invalid_rego", "error_description": reason})
                );
            }
        }
    }
    // Invalid Rego that balances its delimiters is still refused by the parser.
    let (s, r) = admin
        .post(
            "/v1/policies/validate",
            json!({ "content": doc("app_ids := := {}") }),
        )
        .await;
    assert_eq!(s, 422, "{r}");
    assert!(r["error_description"]
        .as_str()
        .unwrap()
        .starts_with("rego_parse_error:"));

    let (s, t) = admin.get("/v1/policy-templates").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "application-bindings",
            "resource-grants",
            "label-confinement",
            "zone-restriction"
        ]
    );
    for t in t.as_array().unwrap() {
        let (s, r) = admin
            .post("/v1/policies/validate", json!({ "content": t["content"] }))
            .await;
        assert_eq!(s, 200, "template {} must validate: {r}", t["id"]);
    }

    // A read-only token may validate but not create.
    let (s, tok) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "ro", "scope": "global", "capability": "read"}),
        )
        .await;
    assert_eq!(s, 201, "{tok}");
    let ro = admin.with_token(tok["token"].as_str().unwrap());
    let (s, _) = ro
        .post(
            "/v1/policies/validate",
            json!({ "content": bindings_doc() }),
        )
        .await;
    assert_eq!(s, 200);
    let z = zone(&admin, "Validate").await;
    let (s, r) = ro
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({"name": "x", "content": bindings_doc()}),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (403, Some("admin_token_read_only"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_lifecycle_versions_and_errors() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let z = zone(&admin, "Policies").await;

    let content = bindings_doc();
    let (s, p) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({ "name": "bindings", "description": "who is who", "content": content }),
        )
        .await;
    assert_eq!(s, 201, "{p}");
    let id = p["id"].as_str().unwrap().to_owned();
    assert_eq!(p["zone_id"], z);
    assert_eq!(p["name"], "bindings");
    assert_eq!(p["version"]["version"], 1);
    assert_eq!(p["version"]["policy_id"], id);
    assert_eq!(p["version"]["content_sha256"], sha(&content));
    assert_eq!(p["version"]["schema_version"], "2026-05-20");
    assert_eq!(p["version_id"], p["version"]["id"]);

    // New version: numbered, hashed, newest first in GET.
    let content2 = doc(&format!(
        "app_ids := {{\"ledger-bot\": \"{APP_ID}\", \"alias\": \"{APP_ID}\"}}"
    ));
    let (s, v2) = admin
        .post(
            &format!("/v1/zones/{z}/policies/{id}/versions"),
            json!({ "content": content2 }),
        )
        .await;
    assert_eq!(s, 201, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["policy_id"], id);
    assert_eq!(v2["content_sha256"], sha(&content2));
    assert_eq!(v2["version_id"], v2["id"]);

    let (s, got) = admin.get(&format!("/v1/zones/{z}/policies/{id}")).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["description"], "who is who");
    let versions = got["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["version"], 2);
    assert_eq!(versions[0]["content"], content2);
    assert_eq!(versions[1]["content_sha256"], sha(&content));
    assert!(versions[0]["archived_at"].is_null());

    let (s, list) = admin.get(&format!("/v1/zones/{z}/policies")).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert!(list["next_cursor"].is_null());
    assert!(list["items"][0].get("versions").is_none());

    // Errors.
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({ "name": "bindings", "content": content }),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (409, Some("policy_name_conflict")),
        "{r}"
    );
    // Only the bootstrap token may use the reserved namespace.
    let (s, tok) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "w", "scope": "global", "capability": "write"}),
        )
        .await;
    assert_eq!(s, 201, "{tok}");
    let writer = admin.with_token(tok["token"].as_str().unwrap());
    let (s, r) = writer
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({ "name": "CARACAL.SYS/x", "content": content }),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (409, Some("reserved_namespace")),
        "{r}"
    );
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({ "name": "caracal.sys/x", "content": content }),
        )
        .await;
    assert_eq!(s, 201, "{r}");
    admin
        .delete(&format!(
            "/v1/zones/{z}/policies/{}",
            r["id"].as_str().unwrap()
        ))
        .await;
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({ "name": "bad", "content": doc("result := 1") }),
        )
        .await;
    assert_eq!((s, r["error"].as_str()), (422, Some("invalid_rego")), "{r}");
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policies"),
            json!({ "content": content }),
        )
        .await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")), "{r}");
    assert_eq!(r["details"]["issues"][0]["path"], json!(["name"]));
    let (s, r) = admin
        .post(
            "/v1/zones/no-such-zone/policies",
            json!({ "name": "x", "content": content }),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("zone_not_found")),
        "{r}"
    );
    // Content is checked before existence.
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policies/nope/versions"),
            json!({ "content": "package x" }),
        )
        .await;
    assert_eq!((s, r["error"].as_str()), (422, Some("invalid_rego")), "{r}");
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policies/nope/versions"),
            json!({ "content": content }),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("policy_not_found")),
        "{r}"
    );
    let (s, r) = admin.get(&format!("/v1/zones/{z}/policies/a%2Fb")).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (400, Some("invalid_params")),
        "{r}"
    );

    // Archive: gone from GET and list; the name is free again; a second DELETE is 404.
    let (s, _) = admin.delete(&format!("/v1/zones/{z}/policies/{id}")).await;
    assert_eq!(s, 204);
    let (s, r) = admin.get(&format!("/v1/zones/{z}/policies/{id}")).await;
    assert_eq!((s, r["error"].as_str()), (404, Some("policy_not_found")));
    let (s, _) = admin.delete(&format!("/v1/zones/{z}/policies/{id}")).await;
    assert_eq!(s, 404);
    let (_, list) = admin.get(&format!("/v1/zones/{z}/policies")).await;
    assert!(list["items"].as_array().unwrap().is_empty());
    policy(&admin, &z, "bindings", &content).await;

    // Pagination walks to the end.
    for i in 0..5 {
        policy(&admin, &z, &format!("p{i}"), &content).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/zones/{z}/policies?limit=2&cursor={c}"),
            None => format!("/v1/zones/{z}/policies?limit=2"),
        };
        let (s, page) = admin.get(&path).await;
        assert_eq!(s, 200, "{page}");
        for item in page["items"].as_array().unwrap() {
            seen.push(item["name"].as_str().unwrap().to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["p4", "p3", "p2", "p1", "p0", "bindings"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_sets_versions_activation_and_simulation() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "Sets").await;
    let other = zone(&admin, "Other").await;

    let (_, bind_v) = policy(&admin, &z, "bindings", &bindings_doc()).await;
    let (grants_id, grants_v1) = policy(&admin, &z, "grants", &grants_doc("\"ledger:read\"")).await;
    let (_, foreign_v) = policy(&admin, &other, "foreign", &bindings_doc()).await;
    let (_, dup_v) = policy(&admin, &z, "bindings-again", &bindings_doc()).await;

    // Set create and its errors.
    let (s, set) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets"),
            json!({ "name": "main", "description": "d" }),
        )
        .await;
    assert_eq!(s, 201, "{set}");
    assert!(set.get("active_version_id").is_none(), "{set}");
    let set_a = set["id"].as_str().unwrap().to_owned();
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets"),
            json!({ "name": "main" }),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (409, Some("policy_set_name_conflict")),
        "{r}"
    );
    let (s, r) = admin
        .post(&format!("/v1/zones/{z}/policy-sets"), json!({}))
        .await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")), "{r}");
    let (s, r) = admin
        .post("/v1/zones/nope/policy-sets", json!({ "name": "x" }))
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("zone_not_found")),
        "{r}"
    );

    // Version create: the manifest contract and bundle compilation.
    let versions = format!("/v1/zones/{z}/policy-sets/{set_a}/versions");
    let m = |ids: &[&str]| json!({ "manifest": ids.iter().map(|i| json!({"policy_version_id": i})).collect::<Vec<_>>() });
    let (s, r) = admin.post(&versions, json!({ "manifest": [] })).await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")), "{r}");
    let (s, r) = admin.post(&versions, json!({ "manifest": [{}] })).await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")), "{r}");
    assert_eq!(
        r["details"]["issues"][0]["path"],
        json!(["manifest", "0", "policy_version_id"])
    );
    let (s, r) = admin.post(&versions, m(&["no-such-version"])).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (422, Some("invalid_policy_contract")),
        "{r}"
    );
    let (s, r) = admin.post(&versions, m(&[&bind_v, &foreign_v])).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (422, Some("invalid_policy_contract")),
        "{r}"
    );
    assert!(
        r["error_description"]
            .as_str()
            .unwrap()
            .contains("another zone"),
        "{r}"
    );
    let (s, r) = admin.post(&versions, m(&[&bind_v, &bind_v])).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (422, Some("invalid_policy_contract")),
        "{r}"
    );
    let (s, r) = admin.post(&versions, m(&[&bind_v, &dup_v])).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (422, Some("invalid_policy_bundle")),
        "{r}"
    );
    assert!(
        r["error_description"]
            .as_str()
            .unwrap()
            .contains("duplicate_rule:app_ids"),
        "{r}"
    );
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/nope/versions"),
            m(&[&bind_v]),
        )
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("policy_set_not_found")),
        "{r}"
    );

    let (s, v1) = admin.post(&versions, m(&[&bind_v, &grants_v1])).await;
    assert_eq!(s, 201, "{v1}");
    assert_eq!(v1["version"], 1);
    assert_eq!(v1["policy_set_id"], set_a);
    let expected_sha = sha(&format!(
        "[{{\"policy_version_id\":\"{bind_v}\"}},{{\"policy_version_id\":\"{grants_v1}\"}}]"
    ));
    assert_eq!(v1["manifest_sha256"], expected_sha);
    let a_v1 = v1["version_id"].as_str().unwrap().to_owned();

    let (s, got) = admin.get(&format!("{versions}/{a_v1}")).await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(got["policies"], json!([bind_v, grants_v1]));
    assert_eq!(
        got["manifest_json"],
        json!([{"policy_version_id": bind_v}, {"policy_version_id": grants_v1}])
    );
    let (s, r) = admin.get(&format!("{versions}/nope")).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("policy_set_version_not_found"))
    );
    let (s, list) = admin.get(&versions).await;
    assert_eq!(s, 200);
    assert_eq!(list["items"][0]["id"], a_v1);

    // Simulation: allow, deny diagnostics, shape warnings; nothing is activated.
    let sim = format!("/v1/zones/{z}/policy-sets/{set_a}/simulate");
    let (s, r) = admin
        .post(&sim, json!({ "version_id": a_v1, "input": mint_input(&z, APP_ID, &["clerk"], &["ledger:read"], &["ledger:read"]) }))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["would_activate"], true);
    assert_eq!(r["result"]["decision"], "allow");
    assert_eq!(
        r["result"]["determining_policies"],
        json!([{"policy": "caracal-ledger-bot-mint"}])
    );
    assert_eq!(r["explanation"]["evaluation"], "executed");
    assert_eq!(r["manifest_sha256"], expected_sha);
    assert_eq!(r["policies"], json!([bind_v, grants_v1]));
    let (_, r) = admin
        .post(&sim, json!({ "version_id": a_v1, "input": mint_input(&z, APP_ID, &["clerk"], &["ledger:write"], &["ledger:write"]) }))
        .await;
    assert_eq!(
        r["result"]["diagnostics"],
        json!([{"reason": "role_scope_mismatch"}]),
        "{r}"
    );
    let mut wrong = mint_input(
        "elsewhere",
        APP_ID,
        &["clerk"],
        &["ledger:read"],
        &["ledger:read"],
    );
    wrong["schema_version"] = json!("2020-01-01");
    wrong.as_object_mut().unwrap().remove("action");
    let (_, r) = admin
        .post(&sim, json!({ "version_id": a_v1, "input": wrong }))
        .await;
    assert_eq!(r["would_activate"], false);
    assert_eq!(
        r["warnings"],
        json!([
            "input_schema_mismatch:2020-01-01",
            "principal_zone_mismatch",
            "missing_action"
        ])
    );
    let (_, r) = admin.post(&sim, json!({ "version_id": a_v1 })).await;
    assert_eq!(r["explanation"]["evaluation"], "not_executed");
    assert!(r["result"].is_null());
    let (s, r) = admin.post(&sim, json!({ "version_id": "nope" })).await;
    assert_eq!((s, r["error"].as_str()), (404, Some("version_not_found")));
    let (_, set_now) = admin
        .get(&format!("/v1/zones/{z}/policy-sets/{set_a}"))
        .await;
    assert!(set_now["active_version_id"].is_null());

    // Activation-status before activation.
    let status = format!("/v1/zones/{z}/policy-sets/{set_a}/activation-status");
    let (s, r) = admin.get(&status).await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("active_policy_set_version_not_found")),
        "{r}"
    );
    let (s, r) = admin.get(&format!("{status}?version_id={a_v1}")).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["propagation_status"], "waiting_for_activation");

    // Activate: 202, status_url, propagation reaches `loaded` through the log.
    let (s, act) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_a}/activate"),
            json!({ "version_id": a_v1 }),
        )
        .await;
    assert_eq!(s, 202, "{act}");
    assert_eq!(act["activated"], true);
    let outbox = act["outbox_id"].as_str().unwrap().to_owned();
    let url = act["status_url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("/v1/zones/{z}/policy-sets/{set_a}/activation-status?version_id={a_v1}&outbox_id={outbox}"));
    let r = eventually(15, || async {
        let (_, r) = admin.get(&url).await;
        (r["propagation_status"] == "loaded").then_some(r)
    })
    .await;
    assert_eq!(r["active"], true);
    assert_eq!(r["outbox"]["state"], "dispatched");
    assert_eq!(r["outbox"]["id"], outbox);
    assert_eq!(r["sts"]["policy_set_version_id"], a_v1);
    assert_eq!(r["manifest_sha256"], expected_sha);
    let (_, r) = admin
        .get(&format!("{status}?version_id={a_v1}&outbox_id=unknown"))
        .await;
    assert_eq!(r["outbox"]["state"], "missing");
    let (s, r) = admin.get(&format!("{status}?version_id=a%2Fb")).await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")));
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_a}/activate"),
            json!({ "version_id": "nope" }),
        )
        .await;
    assert_eq!((s, r["error"].as_str()), (404, Some("version_not_found")));

    // The invalidation was published on Caracal's topic with a valid `_sig`.
    let topic = format!("{}:caracal.policy.invalidate", server.prefix);
    let store = server.store().await;
    let mut conn = store.connection();
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&topic)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let fields = |i: usize| -> Vec<(String, Option<String>)> {
        entries.ids[i]
            .map
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    Some(redis::from_redis_value::<String>(v).unwrap()),
                )
            })
            .collect()
    };
    assert_eq!(entries.ids.len(), 1);
    let f = fields(0);
    let get = |k: &str| f.iter().find(|(n, _)| n == k).and_then(|(_, v)| v.clone());
    assert_eq!(get("zone_id").as_deref(), Some(z.as_str()));
    assert_eq!(get("policy_set_version_id").as_deref(), Some(a_v1.as_str()));
    assert_eq!(get("outbox_id").as_deref(), Some(outbox.as_str()));
    let key = hex::decode(&server.keys.streams).unwrap();
    assert!(serval_streams::topics::verify(&key, &topic, &f));

    // Activating another set flips the first off; a new version of a policy changes nothing
    // until a set version references it.
    let (grants_v2_status, g2) = admin
        .post(
            &format!("/v1/zones/{z}/policies/{grants_id}/versions"),
            json!({ "content": grants_doc("\"ledger:read\", \"ledger:write\"") }),
        )
        .await;
    assert_eq!(grants_v2_status, 201);
    let grants_v2 = g2["version_id"].as_str().unwrap().to_owned();
    let (set_b, b_v1) = set_with_version(&admin, &z, "wider", &[&bind_v, &grants_v2]).await;
    let (s, act_b) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_b}/activate"),
            json!({ "version_id": b_v1 }),
        )
        .await;
    assert_eq!(s, 202, "{act_b}");
    let (_, a_now) = admin
        .get(&format!("/v1/zones/{z}/policy-sets/{set_a}"))
        .await;
    assert!(a_now["active_version_id"].is_null(), "{a_now}");
    let (_, b_now) = admin
        .get(&format!("/v1/zones/{z}/policy-sets/{set_b}"))
        .await;
    assert_eq!(b_now["active_version_id"], b_v1);
    let (_, r) = admin.get(&format!("{status}?version_id={a_v1}")).await;
    assert_eq!(r["active"], false);
    assert_eq!(r["propagation_status"], "waiting_for_activation");
    let b_status = act_b["status_url"].as_str().unwrap().to_owned();
    eventually(15, || async {
        let (_, r) = admin.get(&b_status).await;
        (r["propagation_status"] == "loaded").then_some(())
    })
    .await;
    // Re-activating the active version is allowed and re-emits.
    let (s, again) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_b}/activate"),
            json!({ "version_id": b_v1 }),
        )
        .await;
    assert_eq!(s, 202);
    assert_ne!(again["outbox_id"], act_b["outbox_id"]);

    // Deleting the active set clears the binding and publishes an invalidation without a
    // version; the set and its status are gone.
    let (s, _) = admin
        .delete(&format!("/v1/zones/{z}/policy-sets/{set_b}"))
        .await;
    assert_eq!(s, 204);
    let (s, r) = admin
        .get(&format!("/v1/zones/{z}/policy-sets/{set_b}"))
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("policy_set_not_found"))
    );
    let (s, r) = admin
        .get(&format!(
            "/v1/zones/{z}/policy-sets/{set_b}/activation-status"
        ))
        .await;
    assert_eq!(
        (s, r["error"].as_str()),
        (404, Some("policy_set_binding_not_found"))
    );
    let (s, _) = admin
        .delete(&format!("/v1/zones/{z}/policy-sets/{set_b}"))
        .await;
    assert_eq!(s, 404);
    let last = eventually(15, || async {
        let mut conn = store.connection();
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&topic)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        (entries.ids.len() == 4).then(|| entries.ids[3].clone())
    })
    .await;
    assert!(last.map.contains_key("policy_set_id"));
    assert!(!last.map.contains_key("policy_set_version_id"));
    let (_, list) = admin.get(&format!("/v1/zones/{z}/policy-sets")).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["main"]);

    // Set A can be activated again (rollback).
    let (s, _) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_a}/activate"),
            json!({ "version_id": a_v1 }),
        )
        .await;
    assert_eq!(s, 202);
}

fn audit_event(
    key: &[u8],
    zone: &str,
    request_id: &str,
    decision: &str,
    reason: Option<&str>,
    input: Option<Value>,
) -> Vec<(String, String)> {
    let mut metadata = json!({ "application_id": APP_ID });
    if let Some(i) = input {
        metadata["policy_input"] = i;
    }
    let id = uuid::Uuid::now_v7().to_string();
    let data = json!({
        "id": id, "zone_id": zone, "event_type": "token_exchange", "request_id": request_id,
        "decision": decision, "evaluation_status": "complete",
        "determining_policies_json": [],
        "diagnostics_json": reason.map(|r| json!([{"reason": r}])).unwrap_or(json!([])),
        "metadata_json": metadata, "occurred_at": chrono::Utc::now().to_rfc3339(),
    })
    .to_string();
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    vec![
        ("id".into(), id),
        ("data".into(), data),
        ("sig".into(), sig),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn simulate_against_recorded_decisions() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "History").await;
    let (_, bind_v) = policy(&admin, &z, "bindings", &bindings_doc()).await;
    let (_, narrow_v) = policy(&admin, &z, "grants", &grants_doc("\"ledger:read\"")).await;
    let (set, version) = set_with_version(&admin, &z, "candidate", &[&bind_v, &narrow_v]).await;

    let key = hex::decode(&server.keys.audit).unwrap();
    let topic = format!("{}:caracal.audit.events", server.prefix);
    let store = server.store().await;
    let mut conn = store.connection();
    let read_in = mint_input(&z, APP_ID, &["clerk"], &["ledger:read"], &["ledger:read"]);
    let write_in = mint_input(&z, APP_ID, &["clerk"], &["ledger:write"], &["ledger:write"]);
    let events = vec![
        // Unchanged: allowed then, allowed now.
        audit_event(&key, &z, "req-read", "allow", None, Some(read_in.clone())),
        // Changed: allowed then, the candidate's narrower grant denies it.
        audit_event(&key, &z, "req-write", "allow", None, Some(write_in.clone())),
        // Changed: denied then, allowed now.
        audit_event(
            &key,
            &z,
            "req-was-denied",
            "deny",
            Some("restriction_active"),
            Some(read_in.clone()),
        ),
        // Not evidence: no recorded input, another zone, a forged signature.
        audit_event(&key, &z, "req-no-input", "allow", None, None),
        audit_event(
            &key,
            "other-zone",
            "req-other",
            "allow",
            None,
            Some(write_in.clone()),
        ),
        {
            let mut e = audit_event(
                &key,
                &z,
                "req-forged",
                "allow",
                None,
                Some(write_in.clone()),
            );
            e[2].1 = "00".repeat(32);
            e
        },
    ];
    for e in events {
        let _: String = redis::cmd("XADD")
            .arg(&topic)
            .arg("*")
            .arg(
                e.iter()
                    .flat_map(|(k, v)| [k.clone(), v.clone()])
                    .collect::<Vec<_>>(),
            )
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/simulate"),
            json!({ "version_id": version, "history": { "limit": 100 } }),
        )
        .await;
    assert_eq!(s, 200, "{r}");
    let h = &r["history"];
    assert_eq!(h["evaluated"], 3, "{h}");
    assert_eq!(h["unchanged"], 1);
    assert_eq!(h["changed"], 2);
    assert_eq!(h["allow_to_deny"], 1);
    assert_eq!(h["deny_to_allow"], 1);
    assert_eq!(h["skipped"]["no_policy_input"], 1);
    assert_eq!(h["skipped"]["bad_signature"], 1);
    let diffs = h["differences"].as_array().unwrap();
    // Newest first.
    assert_eq!(diffs[0]["request_id"], "req-was-denied");
    assert_eq!(
        diffs[0]["old"],
        json!({"decision": "deny", "reason": "restriction_active"})
    );
    assert_eq!(diffs[0]["new"]["decision"], "allow");
    assert_eq!(diffs[1]["request_id"], "req-write");
    assert_eq!(diffs[1]["new"]["reason"], "role_scope_mismatch");

    // Bounded: limit and max_differences.
    let (_, r) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/simulate"),
            json!({ "version_id": version, "history": { "limit": 1, "max_differences": 0 } }),
        )
        .await;
    assert_eq!(r["history"]["evaluated"], 1);
    assert_eq!(r["history"]["truncated"], true);
    assert_eq!(r["history"]["differences"], json!([]));
    let (s, r) = admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set}/simulate"),
            json!({ "version_id": version, "history": { "limit": 0 } }),
        )
        .await;
    assert_eq!((s, r["error"].as_str()), (400, Some("invalid_body")), "{r}");
}

/// Rebuilding the policy projections from the log answers every GET the same way.
#[tokio::test(flavor = "multi_thread")]
async fn rebuilding_policy_projections_reproduces_every_answer() {
    let server = Server::start(Options::default()).await;
    let admin = Admin::new(&server);
    let z = zone(&admin, "Rebuild").await;
    let (pid, bind_v) = policy(&admin, &z, "bindings", &bindings_doc()).await;
    let (gid, grants_v) = policy(&admin, &z, "grants", &grants_doc("\"ledger:read\"")).await;
    admin
        .post(
            &format!("/v1/zones/{z}/policies/{gid}/versions"),
            json!({ "content": grants_doc("\"ledger:write\"") }),
        )
        .await;
    let (_, old) = policy(&admin, &z, "old", &bindings_doc()).await;
    let _ = old;
    let (archived, _) = policy(&admin, &z, "archived", &bindings_doc()).await;
    admin
        .delete(&format!("/v1/zones/{z}/policies/{archived}"))
        .await;
    let (set_a, a1) = set_with_version(&admin, &z, "a", &[&bind_v, &grants_v]).await;
    let (set_b, b1) = set_with_version(&admin, &z, "b", &[&bind_v]).await;
    admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_a}/activate"),
            json!({ "version_id": a1 }),
        )
        .await;
    admin
        .post(
            &format!("/v1/zones/{z}/policy-sets/{set_b}/activate"),
            json!({ "version_id": b1 }),
        )
        .await;
    let (set_c, _) = set_with_version(&admin, &z, "c", &[&grants_v]).await;
    admin
        .delete(&format!("/v1/zones/{z}/policy-sets/{set_c}"))
        .await;

    let paths = vec![
        format!("/v1/zones/{z}/policies"),
        format!("/v1/zones/{z}/policies/{pid}"),
        format!("/v1/zones/{z}/policies/{gid}"),
        format!("/v1/zones/{z}/policies/{archived}"),
        format!("/v1/zones/{z}/policy-sets"),
        format!("/v1/zones/{z}/policy-sets/{set_a}"),
        format!("/v1/zones/{z}/policy-sets/{set_b}"),
        format!("/v1/zones/{z}/policy-sets/{set_c}"),
        format!("/v1/zones/{z}/policy-sets/{set_a}/versions"),
        format!("/v1/zones/{z}/policy-sets/{set_a}/versions/{a1}"),
        format!("/v1/zones/{z}/policy-sets/{set_b}/activation-status?version_id={b1}"),
    ];
    let snapshot = |admin: &Admin, paths: &[String]| {
        let admin = admin.clone();
        let paths = paths.to_vec();
        async move {
            let mut out = Vec::new();
            for p in &paths {
                let (s, mut body) = admin.get(p).await;
                // Wall-clock fields of the STS load are not read-model state.
                if let Some(sts) = body.get_mut("sts").and_then(Value::as_object_mut) {
                    sts.remove("loaded_at");
                    sts.remove("age_seconds");
                }
                out.push((p.clone(), s, body));
            }
            out
        }
    };
    // Let the relay publish so the outbox state is settled before the snapshot.
    eventually(15, || async {
        let (_, r) = admin.get(&paths[10]).await;
        (r["propagation_status"] == "loaded").then_some(())
    })
    .await;
    let before = snapshot(&admin, &paths).await;
    let (ok, out, err) = server.replay(&["rebuild", "--projection", "policies"]);
    assert!(ok, "rebuild failed:\n{out}\n{err}");
    let after = snapshot(&admin, &paths).await;
    assert_eq!(before, after);
}

#[tokio::test(flavor = "multi_thread")]
async fn zone_tokens_stay_in_their_zone() {
    let server = Server::shared().await;
    let admin = Admin::new(server);
    let mine = zone(&admin, "Mine").await;
    let theirs = zone(&admin, "Theirs").await;
    let (pid, _) = policy(&admin, &theirs, "bindings", &bindings_doc()).await;
    let (s, tok) = admin
        .post(
            "/v1/admin-tokens",
            json!({"name": "zt", "scope": "zone", "zone_id": mine, "capability": "write"}),
        )
        .await;
    assert_eq!(s, 201, "{tok}");
    let zt = admin.with_token(tok["token"].as_str().unwrap());
    for (method, path) in [
        ("GET", format!("/v1/zones/{theirs}/policies")),
        ("GET", format!("/v1/zones/{theirs}/policies/{pid}")),
        ("POST", format!("/v1/zones/{theirs}/policies")),
        ("GET", format!("/v1/zones/{theirs}/policy-sets")),
        ("POST", format!("/v1/zones/{theirs}/policy-sets")),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (s, r) = zt
            .call(
                m,
                &path,
                Some(json!({"name": "x", "content": bindings_doc()})),
            )
            .await;
        assert_eq!(
            (s, r["error"].as_str()),
            (403, Some("admin_token_zone_mismatch")),
            "{method} {path}"
        );
    }
    let (s, _) = zt
        .post(
            "/v1/policies/validate",
            json!({ "content": bindings_doc() }),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = zt.get("/v1/policy-templates").await;
    assert_eq!(s, 200);
    let (s, _) = zt
        .post(
            &format!("/v1/zones/{mine}/policies"),
            json!({"name": "mine", "content": bindings_doc()}),
        )
        .await;
    assert_eq!(s, 201);
}
