//! What the Gateway refuses (gateway.md §10): the ids of revoked authority records, ended
//! Sessions and revoked or expired Delegations, as the read model holds them. Ended within
//! the last 24 h only: a mandate lives at most an hour, so anything older names nothing a
//! live mandate can still carry.

use sqlx::PgExecutor;

/// Every id a Gateway must refuse as a mandate anchor.
pub async fn snapshot<'e>(db: impl PgExecutor<'e>) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM catalog_objects
          WHERE kind = 'authority_record'
            AND doc #>> '{data,authority_record,status}' = 'revoked'
            AND (doc #>> '{data,authority_record,expires_at}')::timestamptz > now() - interval '24 hours'
         UNION ALL
         SELECT id FROM catalog_objects
          WHERE kind = 'session'
            AND doc #>> '{data,session,status}' IN ('terminated', 'expired')
            AND COALESCE((doc #>> '{data,session,terminated_at}')::timestamptz, now())
                > now() - interval '24 hours'
         UNION ALL
         SELECT id FROM delegation_edges
          WHERE status <> 'active' AND expires_at > now() - interval '24 hours'",
    )
    .fetch_all(db)
    .await
}
