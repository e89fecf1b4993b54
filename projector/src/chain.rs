//! Per-chain heads of the tamper-evident tables (`admin_audit`, `audit_events`): the last
//! `chain_seq` and `content_sha256` of each chain, read once per batch and advanced as rows
//! are inserted.

use std::collections::HashMap;

use serval_domain::admin_audit::chain_hmac;
use sqlx::PgConnection;

pub struct ChainHeads {
    table: &'static str,
    column: &'static str,
    heads: HashMap<String, (i64, String)>,
}

impl ChainHeads {
    /// Heads of `table`'s chains, named by `column`.
    pub fn new(table: &'static str, column: &'static str) -> Self {
        ChainHeads {
            table,
            column,
            heads: HashMap::new(),
        }
    }

    /// `(chain_seq, content_sha256)` of the chain's last row; `(0, "")` for an empty chain.
    pub async fn head(
        &mut self,
        tx: &mut PgConnection,
        chain: &str,
    ) -> Result<(i64, String), sqlx::Error> {
        if let Some(h) = self.heads.get(chain) {
            return Ok(h.clone());
        }
        let row: Option<(i64, String)> = sqlx::query_as(&format!(
            "SELECT chain_seq, content_sha256 FROM {} WHERE {} = $1
             ORDER BY chain_seq DESC LIMIT 1",
            self.table, self.column
        ))
        .bind(chain)
        .fetch_optional(&mut *tx)
        .await?;
        let h = row.unwrap_or((0, String::new()));
        self.heads.insert(chain.to_owned(), h.clone());
        Ok(h)
    }

    /// The next position of `chain` for a row with digest `content`: its `chain_seq`, the
    /// previous row's digest and, under `key`, the HMAC linking both. The head moves there.
    pub async fn take_next(
        &mut self,
        tx: &mut PgConnection,
        chain: &str,
        content: &str,
        key: Option<&[u8]>,
    ) -> Result<(i64, String, Option<String>), sqlx::Error> {
        let (seq, prev) = self.head(tx, chain).await?;
        let hmac = key.map(|k| chain_hmac(k, content, &prev));
        self.heads
            .insert(chain.to_owned(), (seq + 1, content.to_owned()));
        Ok((seq + 1, prev, hmac))
    }
}

/// Checks a batch insert of `expected` chained rows that wrote `inserted`: when another
/// writer (a projector handing over, a rebuild swapping in) took an id or a chain position
/// between the batch's read and its insert, nothing of the batch may stand; the runner
/// retries it and then sees those rows, or its checkpoint moved.
pub fn all_inserted(table: &str, inserted: u64, expected: usize) -> Result<(), sqlx::Error> {
    if inserted == expected as u64 {
        return Ok(());
    }
    Err(sqlx::Error::Protocol(format!(
        "{table}: {inserted} of {expected} rows inserted"
    )))
}
