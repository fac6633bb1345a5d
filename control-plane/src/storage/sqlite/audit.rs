//! The `audit` and `audit_anchor` tables.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteUnit, classify};
use crate::audit::merkle::Frontier;
use crate::audit::{Anchor, AuditEntry, LogState};
use crate::error::StoreError;
use crate::storage::columns::{self, AUDIT_COLUMNS};
use crate::storage::{AppendContext, AuditRows};

/// The statement inserting one audit entry, as a literal for `concat!`.
macro_rules! insert_entry {
    () => {
        "INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    };
}

/// Inserts one audit entry; its eight parameters are bound by [`bind_entry`].
const INSERT_ENTRY: &str = insert_entry!();

/// [`INSERT_ENTRY`], then the tree state and the anchor: an append's three writes in one
/// round trip (sqlx binds `?`s across statements, in order).
const APPEND_ROWS: &str = concat!(
    insert_entry!(),
    ";
     INSERT OR REPLACE INTO audit_log (id, origin, frontier) VALUES (1, ?, ?);
     INSERT OR REPLACE INTO audit_anchor (id, seq, hash, mac) VALUES (1, ?, ?, ?);"
);

/// Binds `entry`'s columns, in [`INSERT_ENTRY`]'s order, to `query`.
fn bind_entry<'q>(
    query: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    entry: &'q AuditEntry,
) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
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

#[async_trait]
impl AuditRows for SqliteUnit {
    async fn audit_head(&mut self) -> Result<Option<(i64, String)>, StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        row.map(|row| Ok((row.try_get("seq")?, row.try_get("hash")?)))
            .transpose()
            .map_err(classify)
    }

    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError> {
        bind_entry(sqlx::query(INSERT_ENTRY), entry)
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
        let row = sqlx::query("SELECT seq, hash, mac FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(Anchor {
                seq: row.try_get("seq")?,
                hash: row.try_get("hash")?,
                mac: row.try_get("mac")?,
            })
        })
        .transpose()
        .map_err(classify)
    }

    async fn put_anchor(&mut self, anchor: &Anchor) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO audit_anchor (id, seq, hash, mac) VALUES (1, ?, ?, ?)")
            .bind(anchor.seq)
            .bind(&anchor.hash)
            .bind(&anchor.mac)
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn log_state(&mut self) -> Result<Option<LogState>, StoreError> {
        let row = sqlx::query("SELECT origin, frontier FROM audit_log WHERE id = 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        let Some(row) = row else { return Ok(None) };
        let origin: String = row.try_get("origin").map_err(classify)?;
        let frontier: Vec<u8> = row.try_get("frontier").map_err(classify)?;
        Ok(Some(LogState {
            origin,
            frontier: Frontier::from_bytes(&frontier).map_err(StoreError::corrupt)?,
        }))
    }

    async fn append_context(&mut self) -> Result<AppendContext, StoreError> {
        // The audit log's lock, as on PostgreSQL: no lock may follow it in this unit.
        self.locks.admit_audit();
        // One statement instead of three: each statement is a round trip to sqlx's SQLite
        // worker thread, which costs more than the reads themselves.
        let row = sqlx::query(columns::APPEND_CONTEXT)
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)?;
        columns::append_context(&row)
    }

    async fn append_rows(&mut self, entry: &AuditEntry, state: &LogState, anchor: &Anchor) -> Result<(), StoreError> {
        bind_entry(sqlx::query(APPEND_ROWS), entry)
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
        sqlx::query("INSERT OR REPLACE INTO audit_log (id, origin, frontier) VALUES (1, ?, ?)")
            .bind(&state.origin)
            .bind(state.frontier.to_bytes())
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }
}
