//! The dependency rule (ARCHITECTURE.md, "Layers"), read from `cargo metadata`: a service
//! crate never depends on another service crate; the shared kit depends on no service; the
//! layers below depend on nothing above them; `domain` depends on nothing of ours and does
//! no I/O; only the layers allowed to touch Postgres depend on `sqlx`.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// One crate per service.
const SERVICES: [&str; 5] = [
    "serval-api",
    "serval-coordinator",
    "serval-sts",
    "serval-gateway",
    "serval-audit",
];

/// The crates each of our crates may depend on (normal, dev and build dependencies alike).
fn allowed(krate: &str) -> Option<&'static [&'static str]> {
    const BELOW: &[&str] = &[
        "serval-domain",
        "serval-streams",
        "serval-schema",
        "serval-projector",
    ];
    const SERVICE: &[&str] = &[
        "serval-kit",
        "serval-domain",
        "serval-streams",
        "serval-schema",
        "serval-projector",
    ];
    Some(match krate {
        "serval-domain" | "serval-schema" => &[],
        "serval-streams" => &["serval-domain"],
        "serval-projector" => &["serval-domain", "serval-streams", "serval-schema"],
        "serval-kit" => BELOW,
        s if SERVICES.contains(&s) => SERVICE,
        "serval" => &[
            "serval-kit",
            "serval-api",
            "serval-coordinator",
            "serval-sts",
            "serval-gateway",
            "serval-audit",
            "serval-domain",
            "serval-streams",
            "serval-schema",
            "serval-projector",
        ],
        "serval-replay" => BELOW,
        // Black-box tests start the binary; they link the layers below for fixtures only.
        "serval-tests" => BELOW,
        _ => return None,
    })
}

/// External crates that mean I/O, async or a clock source `domain` must not have.
const DOMAIN_FORBIDDEN: &[&str] = &[
    "tokio", "redis", "sqlx", "axum", "reqwest", "hyper", "futures",
];

/// Crates that may talk to Postgres: the projector writes it, `schema` migrates it, the kit
/// opens the pool and checks readiness, `serval-replay` rebuilds and restores, tests
/// inspect it. A service crate reads only through the projector's queries.
const SQLX_ALLOWED: &[&str] = &[
    "serval-projector",
    "serval-schema",
    "serval-kit",
    "serval-replay",
    "serval-tests",
];

/// Every forbidden edge in `metadata` (the JSON of `cargo metadata --no-deps`).
fn violations(metadata: &Value) -> Vec<String> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pkg in metadata["packages"].as_array().into_iter().flatten() {
        let name = pkg["name"].as_str().unwrap_or_default().to_owned();
        let deps = pkg["dependencies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
        graph.insert(name, deps);
    }
    let ours: BTreeSet<&str> = graph.keys().map(String::as_str).collect();
    let mut out = Vec::new();
    for (krate, deps) in &graph {
        let Some(ok) = allowed(krate) else {
            out.push(format!(
                "{krate}: a crate the dependency rule does not name"
            ));
            continue;
        };
        for dep in deps {
            if ours.contains(dep.as_str()) && !ok.contains(&dep.as_str()) {
                out.push(format!("{krate} -> {dep}: not allowed"));
            }
            if krate == "serval-domain" && DOMAIN_FORBIDDEN.contains(&dep.as_str()) {
                out.push(format!("serval-domain -> {dep}: domain does no I/O"));
            }
            if dep == "sqlx" && !SQLX_ALLOWED.contains(&krate.as_str()) {
                out.push(format!(
                    "{krate} -> sqlx: only the projector writes Postgres"
                ));
            }
        }
    }
    for s in SERVICES {
        if !graph.contains_key(s) {
            out.push(format!("{s}: missing (one crate per service)"));
        }
    }
    out
}

fn workspace_metadata() -> Value {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata answers JSON")
}

#[test]
fn the_workspace_keeps_the_dependency_rule() {
    let v = violations(&workspace_metadata());
    assert!(v.is_empty(), "forbidden dependencies:\n{}", v.join("\n"));
}

/// The rule itself can fail: the workspace's metadata with one forbidden edge added.
#[test]
fn a_service_depending_on_another_service_is_refused() {
    let mut meta = workspace_metadata();
    let gateway = meta["packages"]
        .as_array_mut()
        .expect("packages")
        .iter_mut()
        .find(|p| p["name"] == "serval-gateway")
        .expect("serval-gateway is a workspace member");
    gateway["dependencies"]
        .as_array_mut()
        .expect("dependencies")
        .push(serde_json::json!({ "name": "serval-api", "kind": null }));
    let v = violations(&meta);
    assert_eq!(v, ["serval-gateway -> serval-api: not allowed"]);
}

#[test]
fn domain_with_io_is_refused() {
    let mut meta = workspace_metadata();
    let domain = meta["packages"]
        .as_array_mut()
        .expect("packages")
        .iter_mut()
        .find(|p| p["name"] == "serval-domain")
        .expect("serval-domain is a workspace member");
    domain["dependencies"]
        .as_array_mut()
        .expect("dependencies")
        .extend([
            serde_json::json!({ "name": "tokio", "kind": null }),
            serde_json::json!({ "name": "serval-streams", "kind": null }),
        ]);
    let v = violations(&meta);
    assert_eq!(
        v,
        [
            "serval-domain -> serval-streams: not allowed",
            "serval-domain -> tokio: domain does no I/O",
        ]
    );
}
