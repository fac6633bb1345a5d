//! The `run_events` table.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteUnit, classify};
use crate::error::StoreError;
use crate::run::RunEvent;
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
        Ok(())
    }

    async fn run_ids(&mut self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT DISTINCT run_id FROM run_events ORDER BY run_id")
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)
    }
}
