//! Interop with Caracal's official Python admin client (`caracalai-admin`, installed from
//! PyPI into `.venv` by scripts/test): tests/interop/*.py drive a running Serval.

mod common;

use common::{run_interop, Options, Server};

fn run(server: &Server, script: &str) {
    run_interop(server, script, &[]);
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

#[tokio::test(flavor = "multi_thread")]
async fn official_admin_client_reads_records_sessions_and_decides_approvals() {
    use chrono::Utc;
    use serval_domain::catalog::runtime::{ApprovalData, AuthorityRecordData, SessionData};
    use serval_domain::catalog::{CatalogEvent, Created, EntityData, Stamp};

    let server = Server::start(Options::default()).await;
    let admin = common::Admin::new(&server);
    let (_, z) = admin
        .post("/v1/zones", serde_json::json!({"name": "runtime"}))
        .await;
    let z = z["id"].as_str().unwrap().to_owned();
    let hour = Utc::now() + chrono::Duration::hours(1);
    let record = |kind: &str, subject: &str| {
        EntityData::AuthorityRecord(AuthorityRecordData {
            record_type: kind.into(),
            subject_id: subject.into(),
            application_id: Some("app-1".into()),
            federated_user_issuer: (kind == "user").then(|| "https://idp.example".into()),
            parent_id: None,
            status: "active".into(),
            expires_at: hour,
            authenticated_at: Utc::now(),
            revoked_at: None,
            revoked_reason: None,
            revoked_by_grant: None,
        })
    };
    let session = |parent: Option<&str>, lifecycle: &str, labels: &[&str]| {
        EntityData::Session(SessionData {
            application_id: "app-1".into(),
            parent_session_id: parent.map(str::to_owned),
            status: "active".into(),
            lifecycle: lifecycle.into(),
            labels: labels.iter().map(|l| l.to_string()).collect(),
            depth: u32::from(parent.is_some()),
            subject_authority_record_id: Some("ar-1".into()),
            subject_id: Some("alice".into()),
            federated_user_id: None,
            federated_user_issuer: None,
            last_active_at: Utc::now(),
            terminated_at: None,
            termination_reason: None,
            ttl_seconds: None,
            ..Default::default()
        })
    };
    let hold = |class: &str, binding: &str| {
        EntityData::Approval(ApprovalData {
            session_id: "ar-1".into(),
            principal_id: "app-1".into(),
            application_id: Some("app-1".into()),
            approval_type: "human_approval".into(),
            tier: "high".into(),
            approver_class: class.into(),
            privacy_mode: "standard".into(),
            subject_anchor: None,
            binding: binding.into(),
            metadata_json: serde_json::json!({}),
            decision_reason: None,
            expires_at: hour,
            satisfied_at: None,
            rejected_at: None,
            consumed_at: None,
            approver_subject_id: None,
            principal_federated: false,
            agent_labels: Vec::new(),
            consumed_record_id: None,
            approver_session_id: None,
        })
    };
    let seeds = [
        ("ar-1", record("user", "alice")),
        ("ar-2", record("application", "app-1")),
        ("s-root", session(None, "service", &["team:a"])),
        ("s-child", session(Some("s-root"), "task", &[])),
        ("h-1", hold("operator", "b-1")),
        ("h-2", hold("operator", "b-2")),
        ("h-3", hold("subject", "b-3")),
    ];
    let n = seeds.len();
    for (id, data) in seeds {
        let event = CatalogEvent::Created(Created {
            zone_id: z.clone(),
            data,
            stamp: Stamp {
                by: "sts".into(),
                via_operator: false,
            },
        });
        common::produce(&server, &z, id, 0, event, "sts").await;
    }
    // Every seeded record is readable before the client runs.
    common::eventually(10, || async {
        let (_, a) = admin.get(&format!("/v1/zones/{z}/approvals")).await;
        let (_, r) = admin.get(&format!("/v1/zones/{z}/authority-records")).await;
        let (_, s) = admin.get(&format!("/v1/zones/{z}/sessions")).await;
        let count = |v: &serde_json::Value| v["items"].as_array().map(Vec::len).unwrap_or(0);
        (count(&a) + count(&r) + count(&s) == n).then_some(())
    })
    .await;
    run_interop(&server, "admin_runtime.py", &[("ZONE_ID", z.as_str())]);
}
