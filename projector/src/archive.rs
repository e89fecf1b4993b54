//! The archiver: every verified event, verbatim (envelope bytes and signature), in the
//! append-only `event_archive` table. A second durable copy of the log that Redis can be
//! restored from.

use sqlx::PgConnection;

use crate::projection::{Applied, Projection};

pub struct ArchiveProjection;

impl Projection for ArchiveProjection {
    fn name(&self) -> &'static str {
        serval_schema::projections::ARCHIVE
    }

    /// No read waits for the archive (it is the rebuilds' copy): under a steady stream of
    /// writes one transaction per 50 ms instead of one per write, 4 round trips of the 15
    /// a create-provider costs the projections.
    fn pace(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_millis(50))
    }

    async fn apply_batch(
        &self,
        tx: &mut PgConnection,
        batch: &[Applied],
    ) -> Result<(), sqlx::Error> {
        if batch.is_empty() {
            return Ok(());
        }
        // One multi-row insert per batch: arrays bound once, unnested server-side.
        let mut stream = Vec::with_capacity(batch.len());
        let mut ms = Vec::with_capacity(batch.len());
        let mut seq = Vec::with_capacity(batch.len());
        let mut event_id = Vec::with_capacity(batch.len());
        let mut event_type = Vec::with_capacity(batch.len());
        let mut schema_version = Vec::with_capacity(batch.len());
        let mut zone_id: Vec<Option<String>> = Vec::with_capacity(batch.len());
        let mut kind = Vec::with_capacity(batch.len());
        let mut agg = Vec::with_capacity(batch.len());
        let mut ver = Vec::with_capacity(batch.len());
        let mut at = Vec::with_capacity(batch.len());
        let mut kid = Vec::with_capacity(batch.len());
        let mut body = Vec::with_capacity(batch.len());
        let mut sig = Vec::with_capacity(batch.len());
        for a in batch {
            let r = &a.recorded;
            let e = &r.envelope;
            stream.push(r.stream_key.clone());
            ms.push(r.entry_id.ms as i64);
            seq.push(r.entry_id.seq as i64);
            event_id.push(e.event_id.clone());
            event_type.push(e.event_type.clone());
            schema_version.push(i32::from(e.schema_version));
            zone_id.push(e.zone_id.clone());
            kind.push(e.aggregate_kind.clone());
            agg.push(e.aggregate_id.clone());
            ver.push(e.aggregate_version as i64);
            at.push(e.occurred_at);
            kid.push(r.kid.clone());
            body.push(r.body.clone());
            sig.push(r.sig.clone());
        }
        sqlx::query(
            "INSERT INTO event_archive (stream, entry_ms, entry_seq, event_id, event_type,
                 schema_version, zone_id, aggregate_kind, aggregate_id, aggregate_version,
                 occurred_at, key_id, envelope, sig)
             SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::text[], $5::text[],
                 $6::int[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::timestamptz[],
                 $12::text[], $13::bytea[], $14::bytea[])
             ON CONFLICT DO NOTHING",
        )
        .bind(stream)
        .bind(ms)
        .bind(seq)
        .bind(event_id)
        .bind(event_type)
        .bind(schema_version)
        .bind(zone_id)
        .bind(kind)
        .bind(agg)
        .bind(ver)
        .bind(at)
        .bind(kid)
        .bind(body)
        .bind(sig)
        .execute(tx)
        .await?;
        Ok(())
    }
}
