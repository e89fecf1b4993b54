//! Per-chain heads of the tamper-evident tables (`admin_audit`, `audit_events`): the last
//! `chain_seq` and `content_sha256` of each chain, read once per batch and advanced as rows
//! are inserted.

use std::collections::HashMap;

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

    /// A row was inserted at `seq` with digest `content`.
    pub fn advance(&mut self, chain: &str, seq: i64, content: String) {
        self.heads.insert(chain.to_owned(), (seq, content));
    }
}
