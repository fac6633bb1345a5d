//! The `approvals` and `approval_votes` tables.

use async_trait::async_trait;
use sqlx::SqliteConnection;

use super::{SqliteUnit, classify};
use crate::error::StoreError;
use crate::hitl::{ApprovalRequest, ApprovalStatus, ApprovalTransition, NewApproval, Vote, decisions_text};
use crate::storage::ApprovalRows;
use crate::storage::columns::{self, APPROVAL_COLUMNS};

#[async_trait]
impl ApprovalRows for SqliteUnit {
    async fn insert_approval(&mut self, request: &NewApproval, created_at_ms: i64) -> Result<i64, StoreError> {
        let json = |value: serde_json::Result<String>| value.map_err(StoreError::corrupt);
        sqlx::query_scalar(
            "INSERT INTO approvals (created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id,
                 traceparent, skill_json, skill_id, skill_digest, input_digest, request_json, policy_version, reviewer_role,
                 quorum_required, deny_threshold, expires_at_ms, allowed_decisions, parent_id, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') RETURNING id",
        )
        .bind(created_at_ms)
        .bind(&request.requester.tenant)
        .bind(&request.requester.subject)
        .bind(json(serde_json::to_string(&request.requester.roles))?)
        .bind(&request.acting_agent)
        .bind(&request.run_id)
        .bind(&request.step_id)
        .bind(&request.traceparent)
        .bind(json(serde_json::to_string(&request.skill))?)
        .bind(&request.skill.id)
        .bind(&request.skill.digest)
        .bind(&request.input_digest)
        .bind(&request.request_json)
        .bind(&request.policy_version)
        .bind(request.reviewer_role.as_str())
        .bind(i64::from(request.quorum.required.max(1)))
        .bind(i64::from(request.quorum.deny_threshold.max(1)))
        .bind(request.expires_at_ms)
        .bind(decisions_text(&request.allowed_decisions))
        .bind(request.parent_id)
        .fetch_one(&mut *self.transaction)
        .await
        .map_err(classify)
    }

    async fn approval(&mut self, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
        fetch_approval(&mut self.transaction, id).await
    }

    async fn approval_ids(&mut self, tenant: &str, status: Option<ApprovalStatus>) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar("SELECT id FROM approvals WHERE tenant = ? AND (? IS NULL OR status = ?) ORDER BY id DESC")
            .bind(tenant)
            .bind(status.map(ApprovalStatus::as_str))
            .bind(status.map(ApprovalStatus::as_str))
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn count_approvals(&mut self, status: ApprovalStatus) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM approvals WHERE status = ?")
            .bind(status.as_str())
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    async fn due_approval_ids(&mut self, now_ms: i64) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "SELECT id FROM approvals WHERE status IN ('pending', 'approved') AND expires_at_ms <= ? ORDER BY id",
        )
        .bind(now_ms)
        .fetch_all(&mut *self.transaction)
        .await
        .map_err(classify)
    }

    async fn insert_vote(&mut self, id: i64, vote: &Vote) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO approval_votes (approval_id, reviewer, decision, reason, at_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(&vote.reviewer)
        .bind(vote.decision.as_str())
        .bind(&vote.reason)
        .bind(vote.at_ms)
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }

    async fn apply_transition(&mut self, transition: &ApprovalTransition) -> Result<bool, StoreError> {
        let updated = match &transition.decided {
            Some(decided) => sqlx::query(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at_ms = ?, decision_reason = ?,
                     modified_request_json = COALESCE(?, modified_request_json) WHERE id = ? AND status = ?",
            )
            .bind(transition.to.as_str())
            .bind(&decided.by)
            .bind(transition.at_ms)
            .bind(&decided.reason)
            .bind(&decided.modified_request_json)
            .bind(transition.id)
            .bind(transition.from.as_str()),
            None => sqlx::query("UPDATE approvals SET status = ?, consumed_at_ms = ? WHERE id = ? AND status = ?")
                .bind(transition.to.as_str())
                .bind(transition.at_ms)
                .bind(transition.id)
                .bind(transition.from.as_str()),
        }
        .execute(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(updated.rows_affected() == 1)
    }
}

async fn fetch_approval(connection: &mut SqliteConnection, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
    let row = sqlx::query(&format!("{APPROVAL_COLUMNS} WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *connection)
        .await
        .map_err(classify)?;
    let Some(row) = row else { return Ok(None) };
    let mut request = columns::approval(&row)?;
    let votes = sqlx::query(
        "SELECT reviewer, decision, reason, at_ms FROM approval_votes WHERE approval_id = ? ORDER BY at_ms, reviewer",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await
    .map_err(classify)?;
    request.votes = votes.iter().map(columns::vote).collect::<Result<_, _>>()?;
    Ok(Some(request))
}
