//! The `audit` and `audit_anchor` tables.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteUnit, classify};
use crate::audit::merkle::Frontier;
use crate::audit::{Anchor, AuditEntry, LogState};
use crate::error::StoreError;
use crate::storage::AuditRows;

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
        sqlx::query(
            "INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(entry.seq)
        .bind(entry.recorded_at_ms)
        .bind(&entry.kind)
        .bind(&entry.tenant)
        .bind(&entry.principal)
        .bind(&entry.payload)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn audit_entries(&mut self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash FROM audit ORDER BY seq",
        )
        .fetch_all(&mut *self.transaction)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(AuditEntry {
                    seq: row.try_get("seq")?,
                    recorded_at_ms: row.try_get("recorded_at_ms")?,
                    kind: row.try_get("kind")?,
                    tenant: row.try_get("tenant")?,
                    principal: row.try_get("principal")?,
                    payload: row.try_get("payload")?,
                    prev_hash: row.try_get("prev_hash")?,
                    hash: row.try_get("hash")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
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
