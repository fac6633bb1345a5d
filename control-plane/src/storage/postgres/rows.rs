//! The audit rows on PostgreSQL; every other table's rows are the shared ones
//! ([`crate::storage::rows`]).

use async_trait::async_trait;

use super::{PostgresUnit, classify};
use crate::audit::merkle::Frontier;
use crate::audit::{Anchor, AuditEntry, LogState};
use crate::error::StoreError;
use crate::storage::{AppendContext, AuditRows};

/// Binds `entry`'s eight columns, in `audit`'s column order, as `$1` to `$8` of `query`.
fn bind_entry<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    entry: &'q AuditEntry,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(entry.seq)
        .bind(entry.recorded_at_ms)
        .bind(&entry.kind)
        .bind(&entry.tenant)
        .bind(&entry.principal)
        .bind(&entry.payload)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
}
use crate::storage::columns::{self, AUDIT_COLUMNS};

#[async_trait]
impl AuditRows for PostgresUnit {
    async fn audit_head(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        sqlx::query_as("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        bind_entry(
            sqlx::query(
                "INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            ),
            entry,
        )
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn audit_entries(&mut self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(&format!("{AUDIT_COLUMNS} ORDER BY seq"))
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)?;
        rows.iter().map(columns::audit_entry).collect()
    }

    async fn anchor(&mut self) -> Result<Option<Anchor>, StoreError> {
        let row: Option<(i64, String, String)> = sqlx::query_as("SELECT seq, hash, mac FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(row.map(|(seq, hash, mac)| Anchor { seq, hash, mac }))
    }

    async fn put_anchor(&mut self, anchor: &Anchor) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_anchor (id, seq, hash, mac) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
        )
        .bind(anchor.seq)
        .bind(&anchor.hash)
        .bind(&anchor.mac)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn log_state(&mut self) -> Result<Option<LogState>, StoreError> {
        let row: Option<(String, Vec<u8>)> = sqlx::query_as("SELECT origin, frontier FROM audit_log WHERE id = 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        let Some((origin, frontier)) = row else { return Ok(None) };
        Ok(Some(LogState {
            origin,
            frontier: Frontier::from_bytes(&frontier).map_err(StoreError::corrupt)?,
        }))
    }

    /// Takes the audit log's lock first (the single ordered appender, held to the commit), then
    /// reads head, anchor and tree in one round trip.
    async fn append_context(&mut self) -> Result<AppendContext, StoreError> {
        self.lock_audit().await?;
        let row = sqlx::query(columns::APPEND_CONTEXT)
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)?;
        columns::append_context(&row)
    }

    /// The entry, the tree and the anchor in one statement (one round trip under the lock).
    async fn append_rows(&mut self, entry: &AuditEntry, state: &LogState, anchor: &Anchor) -> Result<(), StoreError> {
        bind_entry(
            sqlx::query(
                "WITH entry AS (
                 INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ), tree AS (
                 INSERT INTO audit_log (id, origin, frontier) VALUES (1, $9, $10)
                 ON CONFLICT (id) DO UPDATE SET origin = excluded.origin, frontier = excluded.frontier
             )
             INSERT INTO audit_anchor (id, seq, hash, mac) VALUES (1, $11, $12, $13)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, mac = excluded.mac",
            ),
            entry,
        )
        .bind(&state.origin)
        .bind(state.frontier.to_bytes())
        .bind(anchor.seq)
        .bind(&anchor.hash)
        .bind(&anchor.mac)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn put_log_state(&mut self, state: &LogState) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (id, origin, frontier) VALUES (1, $1, $2)
             ON CONFLICT (id) DO UPDATE SET origin = excluded.origin, frontier = excluded.frontier",
        )
        .bind(&state.origin)
        .bind(state.frontier.to_bytes())
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }
}

crate::storage::rows::impl_rows!(PostgresUnit);
