//! Interop with Caracal's official Python admin client (`caracalai-admin`, installed from
//! PyPI into `.venv` by scripts/test): tests/interop/*.py drive a running Serval.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{python, Options, Server};

fn run(server: &Server, script: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("interop")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .env("CARACAL_API_URL", server.api())
        .env("CARACAL_ADMIN_TOKEN", server.token())
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{script} failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn official_admin_client_drives_policies_and_policy_sets() {
    let server = Server::start(Options::default()).await;
    run(&server, "admin_policies.py");
}

#[tokio::test(flavor = "multi_thread")]
async fn official_admin_client_drives_the_catalog_and_admin_audit() {
    let server = Server::start(Options::default()).await;
    run(&server, "admin_catalog.py");
}
