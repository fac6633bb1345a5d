//! The `records` table.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteUnit, classify};
use crate::error::StoreError;
use crate::records::{Insertion, Record};
use crate::storage::RecordRows;

#[async_trait]
impl RecordRows for SqliteUnit {
    async fn insert_record(&mut self, record: &Record, recorded_at_ms: i64) -> Result<Insertion, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO records (tenant, trace_id, span_id, event_type, run_id, content_hash, idempotency_key, content,
                 cost_micro_eur, cost_status, pricing_version, recorded_at_ms)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT DO NOTHING",
        )
        .bind(&record.tenant)
        .bind(&record.trace_id)
        .bind(&record.span_id)
        .bind(&record.event_type)
        .bind(&record.run_id)
        .bind(record.content_hash())
        .bind(record.idempotency_key())
        .bind(record.canonical_content())
        .bind(record.cost.as_ref().and_then(|cost| cost.micro_eur))
        .bind(record.cost.as_ref().map(|cost| cost.status.as_str()))
        .bind(record.cost.as_ref().map(|cost| cost.pricing_version.as_str()))
        .bind(recorded_at_ms)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        if inserted.rows_affected() == 1 {
            return Ok(Insertion::Inserted {
                id: inserted.last_insert_rowid(),
            });
        }
        let existing = sqlx::query(
            "SELECT id, content_hash FROM records WHERE tenant = ? AND trace_id = ? AND span_id = ? AND event_type = ?",
        )
        .bind(&record.tenant)
        .bind(&record.trace_id)
        .bind(&record.span_id)
        .bind(&record.event_type)
        .fetch_optional(&mut *self.transaction)
        .await
        .map_err(classify)?
        .ok_or_else(|| StoreError::corrupt("a conflicting record vanished"))?;
        Ok(Insertion::Existing {
            id: existing.try_get("id").map_err(classify)?,
            content_hash: existing.try_get("content_hash").map_err(classify)?,
        })
    }

    async fn record_count(&mut self, tenant: &str) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE tenant = ?")
            .bind(tenant)
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn spent_micro_eur(&mut self, tenant: &str, run_id: Option<&str>) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "SELECT COALESCE(SUM(cost_micro_eur), 0) FROM records
             WHERE tenant = ? AND (? IS NULL OR run_id = ?) AND cost_status = 'calculated'",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(run_id)
        .fetch_one(&mut *self.transaction)
        .await
        .map_err(classify)
    }
}
