//! Entries a projection refused: a `dead_letters` row in the batch's transaction and a
//! message on `<p>:deadletters`; never applied.

use std::collections::HashMap;

use serval_streams::read::{self};
use serval_streams::EntryId;
use sqlx::PgConnection;

use crate::projection::Projection;

use super::{Runner, RunnerError};

pub(super) struct DeadLetter {
    pub(super) stream: String,
    pub(super) entry_id: EntryId,
    pub(super) reason: &'static str,
    pub(super) detail: String,
    pub(super) raw: serde_json::Value,
}

pub(super) fn raw_fields_json(fields: &HashMap<String, redis::Value>) -> serde_json::Value {
    let map = fields
        .iter()
        .map(|(k, v)| {
            let text = match read::field_bytes(fields, k) {
                Some(b) => match std::str::from_utf8(b) {
                    Ok(s) if !s.contains('\0') => serde_json::Value::String(s.to_owned()),
                    _ => serde_json::json!({ "hex": hex::encode(b) }),
                },
                None => serde_json::Value::String(format!("{v:?}")),
            };
            (k.clone(), text)
        })
        .collect();
    serde_json::Value::Object(map)
}

impl<P: Projection> Runner<P> {
    pub(super) async fn record_dead_letters(
        &self,
        tx: &mut PgConnection,
        dead: &[DeadLetter],
    ) -> Result<(), RunnerError> {
        let name = self.name();
        let mut conn = self.redis.connect().await?;
        for d in dead {
            tracing::error!(projection = name, stream = %d.stream, entry = %d.entry_id, reason = d.reason, detail = %d.detail, "refused a log entry");
            sqlx::query(
                "INSERT INTO dead_letters (projection, stream, entry_id, reason, detail, raw_fields)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(name)
            .bind(&d.stream)
            .bind(d.entry_id.to_string())
            .bind(d.reason)
            .bind(&d.detail)
            .bind(&d.raw)
            .execute(&mut *tx)
            .await?;
            // Written before the commit: a crash here re-sends it (duplicates carry the same
            // stream and entry id) rather than losing it.
            let _: String = redis::cmd("XADD")
                .arg(self.cfg.keys.dead_letters())
                .arg("*")
                .arg("projection")
                .arg(name)
                .arg("stream")
                .arg(&d.stream)
                .arg("entry_id")
                .arg(d.entry_id.to_string())
                .arg("reason")
                .arg(d.reason)
                .arg("detail")
                .arg(&d.detail)
                .arg("fields")
                .arg(d.raw.to_string())
                .query_async(&mut conn)
                .await?;
        }
        Ok(())
    }
}
