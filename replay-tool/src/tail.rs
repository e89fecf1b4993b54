//! `tail`: follow a public topic, a zone's log, or every log as JSON lines, each decoded and
//! with its signature checked; optionally through a named consumer group, so an auditor
//! resumes where they left off (entries are acknowledged after they are printed).

use std::io::Write;

use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use serde_json::{json, Map, Value as Json};
use serval_streams::codec::Upcasters;
use serval_streams::read::{field_bytes, verify_entry};
use serval_streams::topics;

use crate::context::Context;
use crate::source;

#[derive(Debug, Clone, clap::Args)]
pub struct TailArgs {
    /// A public topic, e.g. `caracal.sessions.revoke`.
    #[arg(long, conflicts_with_all = ["zone", "all"])]
    pub topic: Option<String>,
    #[arg(long)]
    pub zone: Option<String>,
    /// Every log stream known when the tail starts.
    #[arg(long)]
    pub all: bool,
    /// Read through this consumer group (created at the start of the stream if missing).
    #[arg(long)]
    pub group: Option<String>,
    #[arg(long, default_value = "serval-replay")]
    pub consumer: String,
    /// Without a group: start at the beginning instead of only new entries.
    #[arg(long)]
    pub from_start: bool,
    /// Stop after this many entries.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop when nothing new arrives within this many milliseconds (default: follow forever).
    #[arg(long)]
    pub idle_exit_ms: Option<u64>,
}

fn log_line(
    ctx: &Context,
    stream: &str,
    id: &str,
    fields: &std::collections::HashMap<String, Value>,
) -> Json {
    let expected = ctx.keys.parse_log(stream);
    let parsed = id.parse().ok();
    let verified = match (expected, parsed) {
        (Some(s), Some(eid)) => {
            verify_entry(&ctx.signer, stream, &s, eid, fields).map_err(|e| e.to_string())
        }
        _ => Err("not a log entry".to_owned()),
    };
    match verified {
        Ok(rec) => {
            let payload = rec
                .decode(&Upcasters::default())
                .ok()
                .and_then(|e| serde_json::to_value(e).ok())
                .map(unwrap_variant)
                .unwrap_or(Json::Null);
            let e = &rec.envelope;
            json!({
                "stream": stream, "entry_id": id, "sig_ok": true, "kid": rec.kid,
                "event_id": e.event_id, "event_type": e.event_type, "schema_version": e.schema_version,
                "zone_id": e.zone_id, "aggregate_kind": e.aggregate_kind, "aggregate_id": e.aggregate_id,
                "aggregate_version": e.aggregate_version, "occurred_at": e.occurred_at,
                "actor": e.actor, "request_id": e.request_id, "causation_id": e.causation_id,
                "correlation_id": e.correlation_id, "payload": payload,
            })
        }
        Err(why) => json!({ "stream": stream, "entry_id": id, "sig_ok": false, "error": why }),
    }
}

/// `{"Zone":{"Created":{…}}}` → `{…}`: the event type already says which it is.
fn unwrap_variant(v: Json) -> Json {
    let mut v = v;
    for _ in 0..2 {
        v = match v {
            Json::Object(m) if m.len() == 1 => {
                m.into_iter().next().map(|(_, v)| v).unwrap_or(Json::Null)
            }
            other => return other,
        };
    }
    v
}

fn topic_line(
    ctx: &Context,
    stream: &str,
    id: &str,
    fields: &std::collections::HashMap<String, Value>,
) -> Json {
    let mut flat = Map::new();
    let mut pairs = Vec::new();
    for k in fields.keys() {
        let v = field_bytes(fields, k).map(|b| String::from_utf8_lossy(b).into_owned());
        if let Some(v) = &v {
            flat.insert(k.clone(), Json::String(v.clone()));
        }
        pairs.push((k.clone(), v));
    }
    let sig_ok = topics::verify(ctx.signer.current_key(), stream, &pairs);
    json!({ "stream": stream, "entry_id": id, "sig_ok": sig_ok, "fields": flat })
}

pub async fn run(ctx: &Context, args: &TailArgs) -> anyhow::Result<u64> {
    let (streams, is_topic) = match &args.topic {
        Some(t) => (vec![ctx.keys.topic(t)], true),
        None => (
            source::select_streams(ctx, args.zone.as_deref(), args.all).await?,
            false,
        ),
    };
    if ctx.redis.is_cluster() && args.group.is_some() && streams.len() > 1 {
        // XREADGROUP names one slot on a cluster; a group follows one stream there.
        anyhow::bail!("on a Redis Cluster, --group follows one stream: give --topic or --zone");
    }
    let mut conn = ctx
        .redis
        .connect_blocking(std::time::Duration::from_millis(
            args.idle_exit_ms.unwrap_or(5_000),
        ))
        .await?;
    if let Some(g) = &args.group {
        for s in &streams {
            let created: redis::RedisResult<()> = conn.xgroup_create_mkstream(s, g, "0").await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    return Err(e.into());
                }
            }
        }
    }
    // "New entries only" as the heads' concrete ids, read once: a `$` read again each round
    // would skip what arrives between rounds (a cluster reads in rounds).
    let heads = serval_streams::read::last_entry_ids(&mut conn, &streams).await?;
    let mut ids: Vec<String> = heads
        .iter()
        .map(|head| match (&args.group, args.from_start) {
            (Some(_), _) => "0".to_owned(), // our own pending entries first, then new ones
            (None, true) => "0".to_owned(),
            (None, false) => head.to_string(),
        })
        .collect();
    let mut printed = 0u64;
    let stdout = std::io::stdout();
    let block = args.idle_exit_ms.unwrap_or(5_000) as usize;
    loop {
        let mut opts = StreamReadOptions::default().count(100).block(block);
        if let Some(g) = &args.group {
            opts = opts.group(g, &args.consumer);
        }
        let keys = if args.group.is_some() {
            let reply: Option<StreamReadReply> = conn.xread_options(&streams, &ids, &opts).await?;
            reply.map(|r| r.keys).unwrap_or_default()
        } else {
            let positions: Vec<(String, String)> =
                streams.iter().cloned().zip(ids.iter().cloned()).collect();
            let block = std::time::Duration::from_millis(block as u64);
            serval_streams::connection::xread(&mut conn, &positions, 100, Some(block)).await?
        };
        let mut got = 0;
        let mut switched = false;
        for k in keys {
            let Some(pos) = streams.iter().position(|s| *s == k.key) else {
                continue;
            };
            if args.group.is_some() && k.ids.is_empty() && ids[pos] != ">" {
                ids[pos] = ">".to_owned(); // pending drained: switch to new entries
                switched = true;
                continue;
            }
            for entry in k.ids {
                let line = if is_topic {
                    topic_line(ctx, &k.key, &entry.id, &entry.map)
                } else {
                    log_line(ctx, &k.key, &entry.id, &entry.map)
                };
                {
                    let mut out = stdout.lock();
                    writeln!(out, "{line}")?;
                    out.flush()?;
                }
                if let Some(g) = &args.group {
                    let _: i64 = conn.xack(&k.key, g, &[&entry.id]).await?;
                } else {
                    ids[pos] = entry.id.clone();
                }
                got += 1;
                printed += 1;
                if args.count.is_some_and(|c| printed >= c) {
                    return Ok(printed);
                }
            }
        }
        if got == 0 && !switched {
            if args.group.is_some() && ids.iter().any(|i| i != ">") {
                ids.iter_mut().for_each(|i| *i = ">".to_owned());
                continue;
            }
            if args.idle_exit_ms.is_some() {
                return Ok(printed);
            }
        }
    }
}
