//! The `autonomy_certificates`, `autonomy_outcomes` and `autonomy_demotions` tables.

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteUnit, classify, count};
use crate::autonomy::{AutonomyCertificate, StepResult};
use crate::error::StoreError;
use crate::storage::AutonomyRows;

#[async_trait]
impl AutonomyRows for SqliteUnit {
    async fn insert_certificate(
        &mut self,
        certificate: &AutonomyCertificate,
        token: &str,
        issued_at_ms: i64,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO autonomy_certificates (tenant, agent, skill, token, issued_at_ms) VALUES (?, ?, ?, ?, ?)
             RETURNING id",
        )
        .bind(&certificate.tenant)
        .bind(&certificate.agent)
        .bind(&certificate.skill)
        .bind(token)
        .bind(issued_at_ms)
        .fetch_one(&mut *self.transaction)
        .await
        .map_err(classify)
    }

    async fn certificates(&mut self, tenant: &str, agent: &str, skill: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT token, issued_at_ms FROM autonomy_certificates
             WHERE tenant = ? AND agent = ? AND (skill = ? OR skill = '*') AND revoked_at_ms IS NULL
             ORDER BY skill = '*', id DESC",
        )
        .bind(tenant)
        .bind(agent)
        .bind(skill)
        .fetch_all(&mut *self.transaction)
        .await
        .map_err(classify)?;
        rows.iter()
            .map(|row| Ok((row.try_get("token")?, row.try_get("issued_at_ms")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(classify)
    }

    async fn insert_step_result(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        at_ms: i64,
        result: StepResult,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO autonomy_outcomes (tenant, agent, skill, at_ms, kind) VALUES (?, ?, ?, ?, ?)")
            .bind(tenant)
            .bind(agent)
            .bind(skill)
            .bind(at_ms)
            .bind(result.as_str())
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn bad_results_since(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        since_ms: i64,
    ) -> Result<u32, StoreError> {
        self.count_since(
            "SELECT COUNT(*) FROM autonomy_outcomes WHERE tenant = ? AND agent = ? AND skill = ? AND at_ms >= ?
             AND kind IN ('failure', 'escalation')",
            (tenant, agent, skill, since_ms),
        )
        .await
    }

    async fn last_demotion(&mut self, tenant: &str, agent: &str, skill: &str) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar("SELECT MAX(at_ms) FROM autonomy_demotions WHERE tenant = ? AND agent = ? AND skill = ?")
            .bind(tenant)
            .bind(agent)
            .bind(skill)
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn demotions_since(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        since_ms: i64,
    ) -> Result<u32, StoreError> {
        self.count_since(
            "SELECT COUNT(*) FROM autonomy_demotions WHERE tenant = ? AND agent = ? AND skill = ? AND at_ms >= ?",
            (tenant, agent, skill, since_ms),
        )
        .await
    }

    async fn insert_demotion(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO autonomy_demotions (tenant, agent, skill, at_ms, reason) VALUES (?, ?, ?, ?, ?)")
            .bind(tenant)
            .bind(agent)
            .bind(skill)
            .bind(at_ms)
            .bind(reason)
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

impl SqliteUnit {
    /// Runs a `COUNT(*)` over one agent's rows for one skill at or after a time.
    async fn count_since(
        &mut self,
        sql: &str,
        (tenant, agent, skill, since_ms): (&str, &str, &str, i64),
    ) -> Result<u32, StoreError> {
        let rows: i64 = sqlx::query_scalar(sql)
            .bind(tenant)
            .bind(agent)
            .bind(skill)
            .bind(since_ms)
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(count(rows))
    }
}
