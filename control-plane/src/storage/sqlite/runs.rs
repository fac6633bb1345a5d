//! The `run_events` table.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteUnit, classify};
use crate::error::StoreError;
use crate::run::{RequestKey, RunEvent, RunRecord, RunState};
use crate::storage::RunRows;

#[async_trait]
impl RunRows for SqliteUnit {
    async fn run_events(&mut self, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT run_id, lamport, event_id, node_id, traceparent, schema_version, recorded_at_ms, payload
             FROM run_events WHERE run_id = ? ORDER BY lamport",
        )
        .bind(run_id)
        .fetch_all(&mut *self.transaction)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                let payload: String = row.try_get("payload").map_err(classify)?;
                let lamport: i64 = row.try_get("lamport").map_err(classify)?;
                let schema_version: i64 = row.try_get("schema_version").map_err(classify)?;
                Ok(RunEvent {
                    event_id: row.try_get("event_id").map_err(classify)?,
                    run_id: row.try_get("run_id").map_err(classify)?,
                    lamport: u64::try_from(lamport).map_err(|_| StoreError::corrupt(format!("lamport {lamport}")))?,
                    node_id: row.try_get("node_id").map_err(classify)?,
                    traceparent: row.try_get("traceparent").map_err(classify)?,
                    schema_version: u32::try_from(schema_version)
                        .map_err(|_| StoreError::corrupt(format!("schema version {schema_version}")))?,
                    recorded_at_ms: row.try_get("recorded_at_ms").map_err(classify)?,
                    payload: serde_json::from_str(&payload)
                        .map_err(|error| StoreError::corrupt(format!("run event payload: {error}")))?,
                })
            })
            .collect()
    }

    async fn insert_run_event(&mut self, event: &RunEvent) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO run_events (run_id, lamport, event_id, node_id, traceparent, schema_version, recorded_at_ms,
                 event_type, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&event.run_id)
        .bind(i64::try_from(event.lamport).unwrap_or(i64::MAX))
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
        row.as_ref().map(record_from_row).transpose()
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
        rows.iter().map(record_from_row).collect()
    }

    async fn run_records(&mut self, tenant: &str) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(&format!("{RUN_COLUMNS} WHERE tenant = ? ORDER BY run_id"))
            .bind(tenant)
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)?;
        rows.iter().map(record_from_row).collect()
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

const RUN_COLUMNS: &str = "SELECT run_id, tenant, state, owner, lease_expires_at_ms, fencing_token, deadline_ms,
    approval_id FROM runs";

fn record_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<RunRecord, StoreError> {
    let state: String = row.try_get("state").map_err(classify)?;
    let token: i64 = row.try_get("fencing_token").map_err(classify)?;
    Ok(RunRecord {
        run_id: row.try_get("run_id").map_err(classify)?,
        tenant: row.try_get("tenant").map_err(classify)?,
        state: state
            .parse::<RunState>()
            .map_err(|_| StoreError::corrupt(format!("run state `{state}`")))?,
        owner: row.try_get("owner").map_err(classify)?,
        lease_expires_at_ms: row.try_get("lease_expires_at_ms").map_err(classify)?,
        fencing_token: u64::try_from(token).map_err(|_| StoreError::corrupt(format!("fencing token {token}")))?,
        deadline_ms: row.try_get("deadline_ms").map_err(classify)?,
        approval_id: row.try_get("approval_id").map_err(classify)?,
    })
}

/// A fencing token as stored (SQLite integers are signed).
fn token(token: u64) -> i64 {
    i64::try_from(token).unwrap_or(i64::MAX)
}
