//! `serval-replay checkpoint`: verifies an audit-ledger export against signed checkpoints
//! offline, holding only the checkpoint public key (docs/auditors.md, "Signed checkpoints"):
//! both signatures, every row's digest and chain link (a changed row is named), the root,
//! and the consistency and inclusion proofs.

use std::path::PathBuf;

use anyhow::{bail, Context};
use chrono::DateTime;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde_json::Value;
use serval_domain::audit::{content_sha256, AuditRecord};
use serval_domain::merkle::{self, Hash};

#[derive(clap::Args, Debug)]
pub struct CheckpointArgs {
    /// The checkpoint public key (hex, 32 bytes).
    #[arg(long)]
    pub public_key: String,
    /// The export (`GET /api/audit/export`, JSON lines in chain order).
    #[arg(long)]
    pub export: PathBuf,
    /// The tree head to verify the export against.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An earlier tree head the checkpoint must extend (with --consistency-proof).
    #[arg(long, requires = "consistency_proof")]
    pub earlier_checkpoint: Option<PathBuf>,
    #[arg(long)]
    pub consistency_proof: Option<PathBuf>,
    /// An inclusion proof for --event-id in the checkpoint's tree.
    #[arg(long, requires = "event_id")]
    pub inclusion_proof: Option<PathBuf>,
    #[arg(long)]
    pub event_id: Option<String>,
}

fn read_json(p: &PathBuf) -> anyhow::Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

fn hash_of(v: &Value) -> anyhow::Result<Hash> {
    let s = v.as_str().context("a hash must be a hex string")?;
    hex::decode(s)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a hash must be 32 bytes"))
}

fn hashes(v: &Value) -> anyhow::Result<Vec<Hash>> {
    v.as_array()
        .context("a proof must be an array")?
        .iter()
        .map(hash_of)
        .collect()
}

/// Checks a head's signature; its size and root.
fn check_head(key: &VerifyingKey, head: &Value) -> anyhow::Result<(u64, Hash)> {
    let zone = head["zone_id"].as_str().context("zone_id")?;
    let size = head["tree_size"].as_u64().context("tree_size")?;
    let root = hash_of(&head["root_hash"])?;
    let ts = head["timestamp"].as_i64().context("timestamp")?;
    let sig: [u8; 64] = hex::decode(head["signature"].as_str().context("signature")?)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("a signature is 64 bytes"))?;
    let text = format!(
        "serval.checkpoint.v1\n{zone}\n{size}\n{}\n{ts}",
        hex::encode(root)
    );
    if key
        .verify(text.as_bytes(), &Signature::from_bytes(&sig))
        .is_err()
    {
        bail!("the checkpoint at size {size} is not signed by this key");
    }
    Ok((size, root))
}

fn field(row: &Value, k: &str) -> String {
    row[k].as_str().unwrap_or_default().to_owned()
}

/// A row's digest recomputed from its fields.
fn digest(row: &Value) -> anyhow::Result<String> {
    let nanos: i64 = field(row, "occurred_at_unix_nanos")
        .parse()
        .context("occurred_at_unix_nanos")?;
    let opt = |k: &str| Some(field(row, k)).filter(|s| !s.is_empty());
    let r = AuditRecord {
        id: field(row, "id"),
        zone_id: field(row, "zone_id"),
        event_type: field(row, "event_type"),
        request_id: field(row, "request_id"),
        decision: field(row, "decision"),
        policy_set_id: opt("policy_set_id"),
        policy_set_version_id: opt("policy_set_version_id"),
        manifest_sha: opt("manifest_sha"),
        evaluation_status: field(row, "evaluation_status"),
        determining_policies_json: field(row, "determining_policies_json"),
        diagnostics_json: field(row, "diagnostics_json"),
        metadata_json: field(row, "metadata_json"),
        occurred_at: DateTime::from_timestamp_nanos(nanos),
        ingest_signature: None,
    };
    Ok(content_sha256(&r))
}

/// Runs the checks; the first failure is the error (naming the row when it is one row's).
pub fn run(a: &CheckpointArgs) -> anyhow::Result<Vec<String>> {
    let raw: [u8; 32] = hex::decode(a.public_key.trim())?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the public key is 32 bytes"))?;
    let key = VerifyingKey::from_bytes(&raw)?;
    let mut ok = Vec::new();
    let head = read_json(&a.checkpoint)?;
    let (size, root) = check_head(&key, &head)?;
    ok.push(format!("checkpoint signature (size {size})"));
    let export = std::fs::read_to_string(&a.export)?;
    let mut leaves = Vec::new();
    let mut ids = Vec::new();
    let mut prev = String::new();
    for (i, line) in export.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        let row: Value =
            serde_json::from_str(line).with_context(|| format!("export line {}", i + 1))?;
        let where_ = format!(
            "ledger row chain_seq={} id={}",
            row["chain_seq"],
            field(&row, "id")
        );
        let d = digest(&row)?;
        if row["chain_seq"].as_u64() != Some(i as u64 + 1) {
            bail!("{where_}: expected chain_seq {}", i + 1);
        }
        if d != field(&row, "content_sha256") {
            bail!("{where_}: its fields do not hash to its content_sha256");
        }
        if field(&row, "prev_content_sha256") != prev {
            bail!("{where_}: does not follow the row before it");
        }
        leaves.push(merkle::leaf_hash(&hex::decode(&d)?));
        ids.push(field(&row, "id"));
        prev = d;
    }
    let n = usize::try_from(size)?;
    if leaves.len() < n {
        bail!(
            "the export holds {} rows, the checkpoint {size}",
            leaves.len()
        );
    }
    if merkle::root(&leaves[..n]) != root {
        bail!("the export's first {size} rows do not hash to the checkpoint's root");
    }
    ok.push(format!(
        "the export's first {size} rows hash to the signed root"
    ));
    if let (Some(old), Some(proof)) = (&a.earlier_checkpoint, &a.consistency_proof) {
        let (m, old_root) = check_head(&key, &read_json(old)?)?;
        let proof = hashes(&read_json(proof)?["proof"])?;
        if !merkle::verify_consistency(m, size, &old_root, &root, &proof) {
            bail!("the tree of size {size} does not extend the tree of size {m}");
        }
        ok.push(format!("consistency {m} -> {size}"));
    }
    if let (Some(p), Some(id)) = (&a.inclusion_proof, &a.event_id) {
        let p = read_json(p)?;
        let index = ids
            .iter()
            .position(|x| x == id)
            .with_context(|| format!("event {id} is not in the export"))?;
        let path = hashes(&p["audit_path"])?;
        if p["tree_size"].as_u64() != Some(size)
            || !merkle::verify_inclusion(index as u64, size, &leaves[index], &path, &root)
        {
            bail!("event {id} is not included in the checkpoint");
        }
        ok.push(format!("event {id} is included at index {index}"));
    }
    Ok(ok)
}
