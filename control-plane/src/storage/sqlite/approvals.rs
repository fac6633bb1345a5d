//! The `approvals` and `approval_votes` tables.

use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

use super::{SqliteUnit, classify, count};
use crate::error::StoreError;
use crate::hitl::{ApprovalRequest, ApprovalStatus, ApprovalTransition, NewApproval, Quorum, Vote, decisions_text};
use crate::storage::ApprovalRows;

const APPROVAL_COLUMNS: &str = "SELECT id, created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id,
    traceparent, skill_json, input_digest, request_json, policy_version, reviewer_role, quorum_required, deny_threshold,
    expires_at_ms, allowed_decisions, parent_id, status, decided_by, decided_at_ms, decision_reason, modified_request_json,
    consumed_at_ms FROM approvals";

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
    let mut request = approval_from_row(&row)?;
    let votes = sqlx::query(
        "SELECT reviewer, decision, reason, at_ms FROM approval_votes WHERE approval_id = ? ORDER BY at_ms, reviewer",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await
    .map_err(classify)?;
    for vote in votes {
        let decision: String = vote.try_get("decision").map_err(classify)?;
        request.votes.push(Vote {
            reviewer: vote.try_get("reviewer").map_err(classify)?,
            decision: decision
                .parse()
                .map_err(|_| StoreError::corrupt(format!("vote decision `{decision}`")))?,
            reason: vote.try_get("reason").map_err(classify)?,
            at_ms: vote.try_get("at_ms").map_err(classify)?,
        });
    }
    Ok(Some(request))
}

fn approval_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ApprovalRequest, StoreError> {
    let get_text = |column: &str| -> Result<String, StoreError> { row.try_get(column).map_err(classify) };
    let status = get_text("status")?;
    let reviewer_role = get_text("reviewer_role")?;
    let requester_roles = get_text("requester_roles")?;
    let skill_json = get_text("skill_json")?;
    let allowed = get_text("allowed_decisions")?;
    let number = |column: &str| -> Result<u32, StoreError> {
        let value: i64 = row.try_get(column).map_err(classify)?;
        if value < 0 {
            return Err(StoreError::corrupt(format!("{column} {value}")));
        }
        Ok(count(value))
    };
    Ok(ApprovalRequest {
        id: row.try_get("id").map_err(classify)?,
        created_at_ms: row.try_get("created_at_ms").map_err(classify)?,
        tenant: get_text("tenant")?,
        requester: get_text("requester")?,
        requester_roles: serde_json::from_str(&requester_roles)
            .map_err(|_| StoreError::corrupt(format!("requester roles `{requester_roles}`")))?,
        acting_agent: get_text("acting_agent")?,
        run_id: get_text("run_id")?,
        step_id: get_text("step_id")?,
        traceparent: get_text("traceparent")?,
        skill: serde_json::from_str(&skill_json)
            .map_err(|error| StoreError::corrupt(format!("skill `{skill_json}`: {error}")))?,
        input_digest: get_text("input_digest")?,
        request_json: get_text("request_json")?,
        policy_version: get_text("policy_version")?,
        reviewer_role: reviewer_role
            .parse()
            .map_err(|_| StoreError::corrupt(format!("reviewer role `{reviewer_role}`")))?,
        quorum: Quorum {
            required: number("quorum_required")?,
            deny_threshold: number("deny_threshold")?,
        },
        expires_at_ms: row.try_get("expires_at_ms").map_err(classify)?,
        allowed_decisions: allowed
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| StoreError::corrupt(format!("allowed decisions `{allowed}`")))?,
        parent_id: row.try_get("parent_id").map_err(classify)?,
        status: status
            .parse()
            .map_err(|_| StoreError::corrupt(format!("approval status `{status}`")))?,
        votes: Vec::new(),
        decided_by: row.try_get("decided_by").map_err(classify)?,
        decided_at_ms: row.try_get("decided_at_ms").map_err(classify)?,
        decision_reason: row.try_get("decision_reason").map_err(classify)?,
        modified_request_json: row.try_get("modified_request_json").map_err(classify)?,
        consumed_at_ms: row.try_get("consumed_at_ms").map_err(classify)?,
    })
}
