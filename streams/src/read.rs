//! Reading log entries and checking them before anyone acts on them.

use std::collections::HashMap;

use redis::aio::ConnectionLike;
use redis::streams::StreamRangeReply;
use redis::{AsyncCommands, Value};
use serval_domain::{AggregateKind, Event, EventMeta};

use crate::codec::{CodecError, Upcasters};
use crate::connection::RedisConn;
use crate::entry_id::EntryId;
use crate::envelope::Envelope;
use crate::keys::LogStream;
use crate::signing::Signer;

/// One raw stream entry: its id and fields.
pub type RawEntry = (EntryId, HashMap<String, Value>);

/// A log entry whose signature checked out and whose envelope decoded.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub stream_key: String,
    pub entry_id: EntryId,
    pub envelope: Envelope,
    /// The exact signed bytes, kept for the archive.
    pub body: Vec<u8>,
    pub kid: String,
    pub sig: Vec<u8>,
}

impl RecordedEvent {
    pub fn meta(&self) -> EventMeta {
        EventMeta {
            event_id: self.envelope.event_id.clone(),
            aggregate_id: self.envelope.aggregate_id.clone(),
            aggregate_version: self.envelope.aggregate_version,
            occurred_at: self.envelope.occurred_at,
        }
    }

    pub fn decode(&self, upcasters: &Upcasters) -> Result<Event, CodecError> {
        upcasters.decode(
            &self.envelope.event_type,
            self.envelope.schema_version,
            &self.envelope.payload,
        )
    }
}

/// Why an entry was refused. Refused entries are never applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing field {0}")]
    MissingField(&'static str),
    #[error("signature is not hex")]
    SignatureNotHex,
    #[error("signature does not verify (kid {0})")]
    BadSignature(String),
    #[error("envelope does not decode: {0}")]
    Undecodable(String),
    #[error("event does not belong in this stream")]
    WrongStream,
}

impl VerifyError {
    /// A short stable reason code for dead letters and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::MissingField(_) => "missing_field",
            VerifyError::SignatureNotHex | VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::Undecodable(_) => "undecodable",
            VerifyError::WrongStream => "wrong_stream",
        }
    }
}

pub fn field_bytes<'a>(fields: &'a HashMap<String, Value>, name: &str) -> Option<&'a [u8]> {
    match fields.get(name)? {
        Value::BulkString(b) => Some(b.as_slice()),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A field as UTF-8 text (topic messages are flat string fields).
pub fn field_str(fields: &HashMap<String, Value>, name: &str) -> Option<String> {
    field_bytes(fields, name).and_then(|b| std::str::from_utf8(b).ok().map(str::to_owned))
}

/// Checks an entry's signature (constant time), then decodes its envelope and checks that
/// it belongs to the stream it was read from.
pub fn verify_entry(
    signer: &Signer,
    stream_key: &str,
    stream: &LogStream,
    entry_id: EntryId,
    fields: &HashMap<String, Value>,
) -> Result<RecordedEvent, VerifyError> {
    let body = field_bytes(fields, "env").ok_or(VerifyError::MissingField("env"))?;
    let kid = field_bytes(fields, "kid").ok_or(VerifyError::MissingField("kid"))?;
    let kid = String::from_utf8_lossy(kid).into_owned();
    let sig_hex = field_bytes(fields, "sig").ok_or(VerifyError::MissingField("sig"))?;
    let sig = hex::decode(sig_hex).map_err(|_| VerifyError::SignatureNotHex)?;
    verify_parts(
        signer,
        stream_key,
        stream,
        entry_id,
        body.to_vec(),
        kid,
        sig,
    )
}

/// Verifies an event given as its parts (from a stream entry or an archive row).
pub fn verify_parts(
    signer: &Signer,
    stream_key: &str,
    stream: &LogStream,
    entry_id: EntryId,
    body: Vec<u8>,
    kid: String,
    sig: Vec<u8>,
) -> Result<RecordedEvent, VerifyError> {
    if !signer.verify(&kid, &body, &sig) {
        return Err(VerifyError::BadSignature(kid));
    }
    let envelope = Envelope::decode(&body).map_err(|e| VerifyError::Undecodable(e.to_string()))?;
    let kind = AggregateKind::parse(&envelope.aggregate_kind);
    let belongs = match (stream, kind) {
        (LogStream::System, Some(k)) => {
            k.is_zone_less() || (k.zone_optional() && envelope.zone_id.is_none())
        }
        (LogStream::Zone(z), Some(k)) => {
            !k.is_zone_less() && envelope.zone_id.as_deref() == Some(z.as_str())
        }
        _ => false,
    };
    if !belongs {
        return Err(VerifyError::WrongStream);
    }
    Ok(RecordedEvent {
        stream_key: stream_key.to_owned(),
        entry_id,
        envelope,
        body,
        kid,
        sig,
    })
}

fn parse_entries(ids: Vec<redis::streams::StreamId>) -> Vec<RawEntry> {
    ids.into_iter()
        .filter_map(|s| s.id.parse().ok().map(|id| (id, s.map)))
        .collect()
}

/// Reads up to `count` entries after each given id, blocking up to `block_ms` when none
/// is there. Returns entries per stream key, in stream order. Works on a cluster too (see
/// [`crate::connection::xread`]).
pub async fn read_after(
    conn: &mut RedisConn,
    streams: &[(String, EntryId)],
    count: usize,
    block_ms: Option<usize>,
) -> Result<Vec<(String, Vec<RawEntry>)>, redis::RedisError> {
    let streams: Vec<(String, String)> = streams
        .iter()
        .map(|(k, id)| (k.clone(), id.to_string()))
        .collect();
    let block = block_ms.map(|ms| std::time::Duration::from_millis(ms as u64));
    let keys = crate::connection::xread(conn, &streams, count, block).await?;
    Ok(keys
        .into_iter()
        .map(|k| (k.key, parse_entries(k.ids)))
        .collect())
}

/// The newest entry id of each stream (zero for an empty one), in one round trip per node.
pub async fn last_entry_ids(
    conn: &mut RedisConn,
    keys: &[String],
) -> Result<Vec<EntryId>, redis::RedisError> {
    let cmds = keys
        .iter()
        .map(|k| {
            let mut c = redis::cmd("XREVRANGE");
            c.arg(k).arg("+").arg("-").arg("COUNT").arg(1);
            (k.clone(), c)
        })
        .collect();
    let replies: Vec<NewestId> = crate::connection::by_slot(conn, cmds).await?;
    Ok(replies.into_iter().map(|r| r.0).collect())
}

/// The id of the first entry of an `XREVRANGE … COUNT 1` reply (`0-0` for none). Decoded
/// without the entry's fields: every read request's freshness check reads these.
struct NewestId(EntryId);

impl redis::FromRedisValue for NewestId {
    fn from_redis_value(v: &Value) -> redis::RedisResult<Self> {
        let entries = match v {
            Value::Array(entries) => entries,
            Value::Nil => return Ok(NewestId(EntryId::ZERO)),
            other => {
                return Err(redis::RedisError::from((
                    redis::ErrorKind::TypeError,
                    "unexpected stream range reply",
                    format!("{other:?}"),
                )))
            }
        };
        let id = match entries.first() {
            None => EntryId::ZERO,
            Some(Value::Array(entry)) => match entry.first() {
                Some(Value::BulkString(b)) => std::str::from_utf8(b)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(EntryId::ZERO),
                Some(Value::SimpleString(s)) => s.parse().unwrap_or(EntryId::ZERO),
                _ => EntryId::ZERO,
            },
            Some(_) => EntryId::ZERO,
        };
        Ok(NewestId(id))
    }
}

/// Reads entries with ids in `[start, end]` (inclusive), oldest first.
pub async fn read_range<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
    start: &str,
    end: &str,
    count: usize,
) -> Result<Vec<RawEntry>, redis::RedisError> {
    let reply: StreamRangeReply = conn.xrange_count(key, start, end, count).await?;
    Ok(parse_entries(reply.ids))
}

/// The newest entry id of a stream (`0-0` when it is empty or missing).
pub async fn last_entry_id<C: ConnectionLike + Send + Sync>(
    conn: &mut C,
    key: &str,
) -> Result<EntryId, redis::RedisError> {
    let reply: StreamRangeReply = conn.xrevrange_count(key, "+", "-", 1).await?;
    Ok(reply
        .ids
        .first()
        .and_then(|s| s.id.parse().ok())
        .unwrap_or(EntryId::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::FromRedisValue;

    #[test]
    fn the_newest_id_is_read_from_the_first_entry_without_its_fields() {
        let entry = |id: &str| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"env".to_vec()),
                    Value::BulkString(vec![0; 32]),
                ]),
            ])
        };
        let newest = |v: Value| NewestId::from_redis_value(&v).map(|n| n.0);
        assert_eq!(
            newest(Value::Array(vec![entry("17-3")])).ok(),
            Some(EntryId::new(17, 3))
        );
        assert_eq!(newest(Value::Array(vec![])).ok(), Some(EntryId::ZERO));
        assert_eq!(newest(Value::Nil).ok(), Some(EntryId::ZERO));
        assert!(newest(Value::Int(3)).is_err());
    }
}
