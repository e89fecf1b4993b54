//! The atomic conditional append (ARCHITECTURE.md §3 step 4).
//!
//! One script call appends a command's events to the log, conditioned on the aggregate's
//! expected version, on uniqueness reservations and on an idempotency record. Nothing is
//! ever trimmed from the log.

use std::collections::HashMap;
use std::sync::Arc;

use crate::connection::RedisConn;
use chrono::{DateTime, SubsecRound, Utc};
use redis::{AsyncCommands, Script};
use serval_domain::Event;
use uuid::Uuid;

use crate::codec::{self, CodecError};
use crate::entry_id::EntryId;
use crate::envelope::{Envelope, EnvelopeError};
use crate::keys::{KeySpace, LogStream};
use crate::signing::Signer;

const APPEND_LUA: &str = include_str!("append.lua");

/// How long an idempotency record is kept (Caracal's Coordinator default is 7 days for
/// explicit keys; one day bounds Redis memory while covering any sane client retry).
pub const IDEMPOTENCY_TTL_SECS: u64 = 86_400;

/// A uniqueness reservation such as a zone slug: `(kind, value)` in the append's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub kind: &'static str,
    pub value: String,
}

#[derive(Debug, Clone)]
pub struct Idempotency {
    /// Digest of (actor, key); names the record.
    pub key_digest: String,
    /// Digest of the request (method, path, body); a retry must match it.
    pub fingerprint: String,
    /// How long the record is kept; `None` = [`IDEMPOTENCY_TTL_SECS`].
    pub ttl_secs: Option<u64>,
}

/// Everything one command appends.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream: LogStream,
    pub zone_id: Option<String>,
    pub aggregate_id: String,
    pub expected_version: u64,
    pub events: Vec<Event>,
    pub actor: String,
    pub request_id: Option<String>,
    pub correlation_id: Option<String>,
    pub causation_id: Option<String>,
    pub reserve: Vec<Reservation>,
    pub release: Vec<Reservation>,
    pub idempotency: Option<Idempotency>,
    /// A single-event aggregate whose id is fresh (an admin-audit record, an audit frame):
    /// appended at version 1 without a versions-index entry, so the index does not grow by
    /// one field per record forever. Deduplication, where needed, is the idempotency
    /// record's (it expires).
    pub one_shot: bool,
    /// Single-event aggregates of fresh ids appended after `events` in the same atomic
    /// call, only if the command's events are (they share its fsync).
    pub riders: Vec<Rider>,
}

/// A single-event aggregate that rides along with a command's append (see
/// [`AppendRequest::riders`]); it lands on the same stream, at version 1, untracked.
#[derive(Debug, Clone)]
pub struct Rider {
    pub aggregate_id: String,
    pub event: Event,
}

impl AppendRequest {
    /// A request with no reservations, no idempotency key and no tracing ids.
    pub fn new(
        stream: LogStream,
        zone_id: Option<String>,
        aggregate_id: impl Into<String>,
        expected_version: u64,
        events: Vec<Event>,
        actor: impl Into<String>,
    ) -> Self {
        AppendRequest {
            stream,
            zone_id,
            aggregate_id: aggregate_id.into(),
            expected_version,
            events,
            actor: actor.into(),
            request_id: None,
            correlation_id: None,
            causation_id: None,
            reserve: Vec::new(),
            release: Vec::new(),
            idempotency: None,
            one_shot: false,
            riders: Vec::new(),
        }
    }

    /// Marks the request as a single-event aggregate (see [`AppendRequest::one_shot`]).
    pub fn one_shot(mut self) -> Self {
        self.one_shot = true;
        self
    }

    /// Records the HTTP request id as request and correlation id.
    pub fn with_request_id(mut self, request_id: &str) -> Self {
        self.request_id = Some(request_id.to_owned());
        self.correlation_id = Some(request_id.to_owned());
        self
    }
}

/// A stored idempotency record: what the first request appended, plus (once the handler
/// stored it) the first answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub fields: HashMap<String, String>,
}

impl IdempotencyRecord {
    pub fn fingerprint(&self) -> Option<&str> {
        self.fields.get("fingerprint").map(String::as_str)
    }
    pub fn aggregate_id(&self) -> Option<&str> {
        self.fields.get("aggregate_id").map(String::as_str)
    }
    pub fn last_entry_id(&self) -> Option<EntryId> {
        self.fields.get("last_entry_id")?.parse().ok()
    }
    /// The first answer, when it was recorded: `(status, body)`.
    pub fn response(&self) -> Option<(u16, &str)> {
        let status = self.fields.get("status")?.parse().ok()?;
        Some((status, self.fields.get("body")?.as_str()))
    }
}

#[derive(Debug, Clone)]
pub enum AppendOutcome {
    Appended {
        entry_ids: Vec<EntryId>,
        envelopes: Vec<Envelope>,
    },
    /// The idempotency key was seen before; nothing was appended.
    Duplicate(IdempotencyRecord),
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("version conflict: expected {expected}, log is at {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("reservation taken: {key}")]
    ReservationTaken { key: String },
    #[error("nothing to append")]
    Empty,
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected script reply: {0}")]
    Protocol(String),
}

/// The event store: appends signed events and hands out the key space.
#[derive(Clone)]
pub struct EventStore {
    /// Appends spread over several connections: with `appendfsync always` Redis fsyncs once
    /// per event-loop turn, and it reads at most one buffer per client per turn, so more
    /// connections mean more appends share each fsync.
    conns: Arc<[RedisConn]>,
    next: Arc<std::sync::atomic::AtomicUsize>,
    keys: KeySpace,
    signer: Arc<Signer>,
    script: Arc<Script>,
}

impl EventStore {
    pub fn new(conn: RedisConn, keys: KeySpace, signer: Arc<Signer>) -> Self {
        Self::with_connections(vec![conn], keys, signer)
    }

    /// An event store over several connections (at least one).
    pub fn with_connections(conns: Vec<RedisConn>, keys: KeySpace, signer: Arc<Signer>) -> Self {
        assert!(!conns.is_empty(), "an event store needs a connection");
        EventStore {
            conns: conns.into(),
            next: Arc::default(),
            keys,
            signer,
            script: Arc::new(Script::new(APPEND_LUA)),
        }
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    pub fn signer(&self) -> &Arc<Signer> {
        &self.signer
    }

    /// One of the store's connections (round robin).
    pub fn connection(&self) -> RedisConn {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.conns[i % self.conns.len()].clone()
    }

    /// Builds and signs the envelopes of a request (no I/O).
    pub fn seal(
        &self,
        req: &AppendRequest,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Envelope, Vec<u8>, String)>, AppendError> {
        let correlation = req.correlation_id.clone();
        let own = req
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| (e, &req.aggregate_id, req.expected_version + i as u64 + 1));
        let riders = req.riders.iter().map(|r| (&r.event, &r.aggregate_id, 1));
        own.chain(riders)
            .map(|(event, aggregate_id, version)| {
                let (event_type, schema_version, payload) = codec::encode(event)?;
                let envelope = Envelope {
                    event_id: Uuid::now_v7().to_string(),
                    event_type: event_type.to_owned(),
                    schema_version,
                    zone_id: req.zone_id.clone(),
                    aggregate_kind: event.aggregate_kind().as_str().to_owned(),
                    aggregate_id: aggregate_id.clone(),
                    aggregate_version: version,
                    occurred_at: now,
                    actor: req.actor.clone(),
                    request_id: req.request_id.clone(),
                    causation_id: req.causation_id.clone(),
                    correlation_id: correlation.clone(),
                    payload,
                };
                let body = envelope.encode()?;
                let sig = hex::encode(self.signer.sign(&body));
                Ok((envelope, body, sig))
            })
            .collect()
    }

    pub async fn append(&self, req: &AppendRequest) -> Result<AppendOutcome, AppendError> {
        if req.events.is_empty() {
            return Err(AppendError::Empty);
        }
        // Microseconds: what Postgres keeps, so evolve over the log and the read model agree.
        let sealed = self.seal(req, Utc::now().trunc_subsecs(6))?;
        let stream = &req.stream;
        let mut inv = self.script.prepare_invoke();
        inv.key(self.keys.log(stream))
            .key(self.keys.versions(stream));
        let (idem_key, idem_ttl, fingerprint) = match &req.idempotency {
            Some(i) => (
                self.keys.idempotency(stream, &i.key_digest),
                i.ttl_secs.unwrap_or(IDEMPOTENCY_TTL_SECS).max(1),
                i.fingerprint.as_str(),
            ),
            // An unused key of the same slot keeps the KEYS layout fixed.
            None => (self.keys.idempotency(stream, "-"), 0, ""),
        };
        inv.key(idem_key);
        for r in &req.reserve {
            inv.key(self.keys.reservation(stream, r.kind, &r.value));
        }
        for r in &req.release {
            inv.key(self.keys.reservation(stream, r.kind, &r.value));
        }
        let expected = if req.one_shot {
            -1
        } else {
            i64::try_from(req.expected_version).unwrap_or(i64::MAX)
        };
        inv.arg(&req.aggregate_id)
            .arg(expected)
            .arg(req.events.len())
            .arg(req.reserve.len())
            .arg(req.release.len())
            .arg(&req.aggregate_id)
            .arg(idem_ttl)
            .arg(fingerprint)
            .arg(req.riders.len());
        for (_, body, sig) in &sealed {
            inv.arg(body.as_slice()).arg(self.signer.key_id()).arg(sig);
        }
        let mut conn = self.connection();
        let reply: Vec<String> = inv.invoke_async(&mut conn).await?;
        let (tag, rest) = reply
            .split_first()
            .ok_or_else(|| AppendError::Protocol("empty reply".into()))?;
        match tag.as_str() {
            "ok" => {
                conn.wake(&self.keys.log(stream));
                // The command's own entries; the riders' follow and are not reported.
                let n = req.events.len();
                let entry_ids = rest
                    .iter()
                    .take(n)
                    .map(|s| s.parse().map_err(|_| AppendError::Protocol(s.clone())))
                    .collect::<Result<Vec<EntryId>, _>>()?;
                Ok(AppendOutcome::Appended {
                    entry_ids,
                    envelopes: sealed.into_iter().take(n).map(|(e, _, _)| e).collect(),
                })
            }
            "conflict" => Err(AppendError::VersionConflict {
                expected: req.expected_version,
                actual: rest.first().and_then(|s| s.parse().ok()).unwrap_or(0),
            }),
            "taken" => Err(AppendError::ReservationTaken {
                key: rest.first().cloned().unwrap_or_default(),
            }),
            "duplicate" => {
                let fields = rest
                    .chunks_exact(2)
                    .map(|kv| (kv[0].clone(), kv[1].clone()))
                    .collect();
                Ok(AppendOutcome::Duplicate(IdempotencyRecord { fields }))
            }
            other => Err(AppendError::Protocol(other.to_owned())),
        }
    }

    /// Records the first answer of an idempotent request, so a retry gets it verbatim.
    pub async fn record_response(
        &self,
        stream: &LogStream,
        key_digest: &str,
        status: u16,
        body: &str,
    ) -> Result<(), redis::RedisError> {
        let key = self.keys.idempotency(stream, key_digest);
        let mut conn = self.connection();
        let _: () = conn
            .hset_multiple(
                &key,
                &[("status", status.to_string().as_str()), ("body", body)],
            )
            .await?;
        Ok(())
    }

    /// Whether a uniqueness reservation is currently held (a hint for choosing a
    /// candidate; the append re-checks atomically).
    pub async fn reservation_holder(
        &self,
        stream: &LogStream,
        kind: &str,
        value: &str,
    ) -> Result<Option<String>, redis::RedisError> {
        let mut conn = self.connection();
        conn.get(self.keys.reservation(stream, kind, value)).await
    }

    /// The current version of an aggregate according to the log.
    pub async fn version(
        &self,
        stream: &LogStream,
        aggregate_id: &str,
    ) -> Result<u64, redis::RedisError> {
        let mut conn = self.connection();
        let v: Option<u64> = conn.hget(self.keys.versions(stream), aggregate_id).await?;
        Ok(v.unwrap_or(0))
    }

    /// The newest entry id of a stream (`0-0` when empty).
    /// Publishes an activity hint for `stream` (see [`KeySpace::activity`]).
    pub async fn hint_activity(&self, stream: &LogStream) -> Result<(), redis::RedisError> {
        let key = self.keys().activity();
        let log = self.keys().log(stream);
        let _: String = self
            .connection()
            .xadd_maxlen(
                &key,
                redis::streams::StreamMaxlen::Approx(10_000),
                "*",
                &[("stream", log.as_str())],
            )
            .await?;
        Ok(())
    }

    pub async fn last_entry_id(&self, stream_key: &str) -> Result<EntryId, redis::RedisError> {
        crate::read::last_entry_id(&mut self.connection(), stream_key).await
    }

    /// The last entry id of each stream (zero for an empty one), in one round trip per node.
    pub async fn last_entry_ids(&self, keys: &[String]) -> Result<Vec<EntryId>, redis::RedisError> {
        crate::read::last_entry_ids(&mut self.connection(), keys).await
    }
}
