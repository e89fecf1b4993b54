//! Caracal's public topics and their origin signature (events-and-audit.md §2, §4, §6).
//!
//! A message is a flat map of string fields. `_sig` = lowercase hex HMAC-SHA256 under
//! `STREAMS_HMAC_KEY` over: the stream key, `\n`, then for every field except `_sig`, sorted
//! by name (byte order), `name=value\n`. Null fields are skipped; values are verbatim.

use crate::connection::RedisConn;
use hmac::{Hmac, Mac};
use redis::streams::StreamMaxlen;
use redis::AsyncCommands;
use sha2::Sha256;

pub const AUDIT_EVENTS: &str = "caracal.audit.events";
pub const AUDIT_EVENTS_DLQ: &str = "caracal.audit.events.dlq";
pub const POLICY_INVALIDATE: &str = "caracal.policy.invalidate";
pub const SESSIONS_REVOKE: &str = "caracal.sessions.revoke";
pub const KEYS_INVALIDATE: &str = "caracal.keys.invalidate";
pub const AGENTS_LIFECYCLE: &str = "caracal.agents.lifecycle";
pub const INVOCATIONS_LIFECYCLE: &str = "caracal.invocations.lifecycle";
pub const DELEGATIONS_INVALIDATE: &str = "caracal.delegations.invalidate";

/// Approximate trim bound used by Caracal's publishers for these topics (§9). Topics are
/// propagation, not the source of truth: the log is never trimmed.
pub const TOPIC_MAXLEN: usize = 100_000;

/// A message for one public topic: `(name, value)` pairs; `None` values are omitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    pub topic: &'static str,
    pub fields: Vec<(String, Option<String>)>,
}

/// The canonical string that `_sig` covers.
pub fn canonical_string(stream: &str, fields: &[(String, Option<String>)]) -> String {
    let mut present: Vec<(&str, &str)> = fields
        .iter()
        .filter(|(k, _)| k != "_sig")
        .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_str(), v)))
        .collect();
    present.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut s = String::with_capacity(stream.len() + 1 + present.len() * 32);
    s.push_str(stream);
    s.push('\n');
    for (k, v) in present {
        s.push_str(k);
        s.push('=');
        s.push_str(v);
        s.push('\n');
    }
    s
}

/// `_sig` for a message on `stream`.
pub fn sign(key: &[u8], stream: &str, fields: &[(String, Option<String>)]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(canonical_string(stream, fields).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// `sig` of an audit frame (`caracal.audit.events`): hex HMAC-SHA256 of the exact `data`
/// bytes under `AUDIT_HMAC_KEY` (events-and-audit.md §4.2).
pub fn audit_frame_sig(audit_key: &[u8], data: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(audit_key).expect("HMAC takes any key length");
    mac.update(data.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of a received message's `_sig`.
pub fn verify(key: &[u8], stream: &str, fields: &[(String, Option<String>)]) -> bool {
    let Some(Some(sig)) = fields
        .iter()
        .find(|(k, _)| k == "_sig")
        .map(|(_, v)| v.clone())
    else {
        return false;
    };
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(canonical_string(stream, fields).as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// The fields of one message as XADD takes them: the present ones, then `_sig` when a key
/// is given (the signature covers the stream name as consumers see it, the topic key).
fn items<'a>(
    stream_key: &str,
    key: Option<&[u8]>,
    fields: &'a [(String, Option<String>)],
) -> Vec<(&'a str, String)> {
    let mut items: Vec<(&str, String)> = fields
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (k.as_str(), v.clone())))
        .collect();
    if let Some(key) = key {
        items.push(("_sig", sign(key, stream_key, fields)));
    }
    items
}

/// Signs (when a key is given) and XADDs one message to `stream_key`, trimming the topic
/// approximately. Returns the entry id.
pub async fn publish(
    conn: &mut RedisConn,
    stream_key: &str,
    key: Option<&[u8]>,
    fields: &[(String, Option<String>)],
) -> Result<String, redis::RedisError> {
    let items = items(stream_key, key, fields);
    let id = conn
        .xadd_maxlen(stream_key, StreamMaxlen::Approx(TOPIC_MAXLEN), "*", &items)
        .await?;
    conn.wake(stream_key);
    Ok(id)
}

/// A message's fields: name and value (`None`: omitted).
pub type Fields = Vec<(String, Option<String>)>;

/// [`publish`] for several messages `(stream_key, fields)` in one round trip, in order.
/// Returns their entry ids. On a cluster, one pipeline per topic's slot.
pub async fn publish_many(
    conn: &mut RedisConn,
    key: Option<&[u8]>,
    messages: &[(String, Fields)],
) -> Result<Vec<String>, redis::RedisError> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let cmds = messages
        .iter()
        .map(|(stream_key, fields)| {
            let items = items(stream_key, key, fields);
            let mut c = redis::cmd("XADD");
            c.arg(stream_key)
                .arg("MAXLEN")
                .arg("~")
                .arg(TOPIC_MAXLEN)
                .arg("*")
                .arg(&items);
            (stream_key.clone(), c)
        })
        .collect();
    let ids = crate::connection::by_slot(conn, cmds).await?;
    let mut woken = std::collections::BTreeSet::new();
    for (stream_key, _) in messages {
        if woken.insert(stream_key.as_str()) {
            conn.wake(stream_key);
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_owned)))
            .collect()
    }

    #[test]
    fn reproduces_caracal_interop_vector() {
        let key = hex::decode("0123456789abcdef".repeat(4)).unwrap();
        let fields = f(&[("amount", Some("100")), ("action", Some("transfer"))]);
        assert_eq!(
            canonical_string("audit:events", &fields),
            "audit:events\naction=transfer\namount=100\n"
        );
        assert_eq!(
            sign(&key, "audit:events", &fields),
            "c06ccc579e026c31a97a04f203981b236a3c88041712e9b46242e8762da23d75"
        );
    }

    #[test]
    fn reproduces_policy_invalidate_vector() {
        let key = vec![0x11; 32];
        let fields = f(&[
            ("outbox_id", Some("0190f5a2-7c1e-7b3a-9a10-3f2d1c0b9e88")),
            ("zone_id", Some("z-demo")),
            ("policy_set_id", Some("ps-demo")),
            ("policy_set_version_id", Some("psv-demo-3")),
        ]);
        assert_eq!(
            sign(&key, POLICY_INVALIDATE, &fields),
            "fec5967b72ad82163fde32e9bc6278c475f5add9974bdd5800d69e3bedff3612"
        );
    }

    #[test]
    fn sig_and_null_fields_are_excluded_and_empty_values_kept() {
        let key = vec![7; 32];
        let base = f(&[("a", Some("")), ("b", Some("x"))]);
        let mut noisy = base.clone();
        noisy.push(("_sig".into(), Some("ff".into())));
        noisy.push(("c".into(), None));
        assert_eq!(canonical_string("s", &base), "s\na=\nb=x\n");
        assert_eq!(sign(&key, "s", &base), sign(&key, "s", &noisy));
        let mut signed = base.clone();
        signed.push(("_sig".into(), Some(sign(&key, "s", &base))));
        assert!(verify(&key, "s", &signed));
        assert!(!verify(&key, "t", &signed));
    }
}
