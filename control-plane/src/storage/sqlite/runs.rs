//! The `run_events` table.

use async_trait::async_trait;

use super::{SqliteUnit, classify};
use crate::error::StoreError;
use crate::run::{RequestKey, RunEvent, RunRecord};
use crate::storage::RunRows;
use crate::storage::columns::{self, RUN_COLUMNS, RUN_EVENT_COLUMNS, signed as token};

#[async_trait]
impl RunRows for SqliteUnit {
    async fn run_events(&mut self, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
        let rows = sqlx::query(&format!("{RUN_EVENT_COLUMNS} WHERE run_id = ? ORDER BY lamport"))
            .bind(run_id)
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)?;
        rows.iter().map(columns::run_event).collect()
    }

    async fn insert_run_event(&mut self, event: &RunEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_events (run_id, lamport, event_id, node_id, traceparent, schema_version, recorded_at_ms,
                 event_type, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&event.run_id)
        .bind(token(event.lamport))
        .bind(&event.event_id)
        .bind(&event.node_id)
        .bind(&event.traceparent)
        .bind(i64::from(event.schema_version))
        .bind(event.recorded_at_ms)
        .bind(event.payload.name())
        .bind(serde_json::to_string(&event.payload).map_err(StoreError::corrupt)?)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        self.inserted.push(event.clone());
        Ok(())
    }

    async fn run_ids(&mut self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT DISTINCT run_id FROM run_events ORDER BY run_id")
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn run_record(&mut self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(&format!("{RUN_COLUMNS} WHERE run_id = ?"))
            .bind(run_id)
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        row.as_ref().map(columns::run_record).transpose()
    }

    async fn put_run_record(&mut self, record: &RunRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO runs (run_id, tenant, state, owner, lease_expires_at_ms, fencing_token, deadline_ms, approval_id)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (run_id) DO UPDATE SET state = excluded.state, owner = excluded.owner,
                 lease_expires_at_ms = excluded.lease_expires_at_ms, fencing_token = excluded.fencing_token,
                 deadline_ms = excluded.deadline_ms, approval_id = excluded.approval_id",
        )
        .bind(&record.run_id)
        .bind(&record.tenant)
        .bind(record.state.as_str())
        .bind(&record.owner)
        .bind(record.lease_expires_at_ms)
        .bind(token(record.fencing_token))
        .bind(record.deadline_ms)
        .bind(record.approval_id)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn replace_run_record(&mut self, record: &RunRecord, expected_token: u64) -> Result<bool, StoreError> {
        let updated = sqlx::query(
            "UPDATE runs SET state = ?, owner = ?, lease_expires_at_ms = ?, fencing_token = ?, deadline_ms = ?,
                 approval_id = ?
             WHERE run_id = ? AND fencing_token = ?",
        )
        .bind(record.state.as_str())
        .bind(&record.owner)
        .bind(record.lease_expires_at_ms)
        .bind(token(record.fencing_token))
        .bind(record.deadline_ms)
        .bind(record.approval_id)
        .bind(&record.run_id)
        .bind(token(expected_token))
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(updated.rows_affected() == 1)
    }

    async fn runs_needing_attention(&mut self, now_ms: i64, limit: u32) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.run_id, r.tenant, r.state, r.owner, r.lease_expires_at_ms, r.fencing_token, r.deadline_ms,
                    r.approval_id
             FROM runs r LEFT JOIN approvals a ON a.id = r.approval_id
             WHERE r.state NOT IN ('succeeded', 'failed', 'cancelled', 'timed-out')
               AND (
                 (r.owner IS NOT NULL AND r.lease_expires_at_ms < ?1)
                 OR (r.owner IS NULL AND r.state IN ('pending', 'running'))
                 OR (r.owner IS NULL AND r.state IN ('awaiting-approval', 'escalated')
                     AND (a.id IS NULL OR a.status != 'pending' OR a.expires_at_ms <= ?1))
               )
             ORDER BY r.lease_expires_at_ms, r.run_id LIMIT ?2",
        )
        .bind(now_ms)
        .bind(i64::from(limit))
        .fetch_all(&mut *self.transaction)
        .await
        .map_err(classify)?;
        rows.iter().map(columns::run_record).collect()
    }

    async fn run_records(&mut self, tenant: &str) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(&format!("{RUN_COLUMNS} WHERE tenant = ? ORDER BY run_id"))
            .bind(tenant)
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)?;
        rows.iter().map(columns::run_record).collect()
    }

    async fn run_request(&mut self, tenant: &str, key: &str) -> Result<Option<(String, String)>, StoreError> {
        sqlx::query_as("SELECT request_digest, run_id FROM run_requests WHERE tenant = ? AND idempotency_key = ?")
            .bind(tenant)
            .bind(key)
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn insert_run_request(
        &mut self,
        tenant: &str,
        key: &RequestKey,
        run_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_requests (tenant, idempotency_key, request_digest, run_id, created_at_ms)
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(tenant)
        .bind(&key.key)
        .bind(&key.request_digest)
        .bind(run_id)
        .bind(now_ms)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }
}
