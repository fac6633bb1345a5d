//! Reading a row's columns the same way on every backend, so a row becomes a control-plane
//! value by one decoder ([`approval`], [`run_event`], [`run_record`]) whichever database it came
//! from. Each backend implements [`Columns`] for its row type with its own error classifier.

use crate::error::StoreError;
use crate::hitl::{ApprovalRequest, Quorum};
use crate::run::{RunEvent, RunRecord, RunState};

/// A row's columns by name, as the types the schema stores: text, 64-bit integers, bytes.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn text_or_null(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn int_or_null(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn bytes_or_null(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Implements [`Columns`] for a sqlx row type, classifying errors with `$classify`.
macro_rules! impl_columns {
    ($row:ty, $classify:path) => {
        impl $crate::storage::columns::Columns for $row {
            fn text(&self, column: &str) -> Result<String, StoreError> {
                sqlx::Row::try_get(self, column).map_err($classify)
            }
            fn text_or_null(&self, column: &str) -> Result<Option<String>, StoreError> {
                sqlx::Row::try_get(self, column).map_err($classify)
            }
            fn int(&self, column: &str) -> Result<i64, StoreError> {
                sqlx::Row::try_get(self, column).map_err($classify)
            }
            fn int_or_null(&self, column: &str) -> Result<Option<i64>, StoreError> {
                sqlx::Row::try_get(self, column).map_err($classify)
            }
            fn bytes_or_null(&self, column: &str) -> Result<Option<Vec<u8>>, StoreError> {
                sqlx::Row::try_get(self, column).map_err($classify)
            }
        }
    };
}
pub(crate) use impl_columns;

/// The columns of an approval request, in every backend's `approvals` table.
pub(crate) const APPROVAL_COLUMNS: &str = "SELECT id, created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id,
    traceparent, skill_json, input_digest, request_json, policy_version, reviewer_role, quorum_required, deny_threshold,
    expires_at_ms, allowed_decisions, parent_id, status, decided_by, decided_at_ms, decision_reason, modified_request_json,
    consumed_at_ms FROM approvals";

/// The columns of a run's record, in every backend's `runs` table.
pub(crate) const RUN_COLUMNS: &str =
    "SELECT run_id, tenant, state, owner, lease_expires_at_ms, fencing_token, deadline_ms,
    approval_id FROM runs";

/// The columns of an audit entry, in every backend's `audit` table.
pub(crate) const AUDIT_COLUMNS: &str =
    "SELECT seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash FROM audit";

/// What an audit append reads, in one statement both backends accept: the head, the anchor and
/// the tree state, each column NULL when its row is absent. Decoded by [`append_context`].
pub(crate) const APPEND_CONTEXT: &str = "SELECT h.seq AS head_seq, h.hash AS head_hash,
        a.seq AS anchor_seq, a.hash AS anchor_hash, a.mac AS anchor_mac,
        l.origin AS origin, l.frontier AS frontier
     FROM (SELECT 1) AS one
     LEFT JOIN (SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1) AS h ON 1 = 1
     LEFT JOIN audit_anchor AS a ON a.id = 1
     LEFT JOIN audit_log AS l ON l.id = 1";

/// `(head, anchor, tree state)` from the row of [`APPEND_CONTEXT`].
pub(crate) fn append_context(row: &impl Columns) -> Result<crate::storage::AppendContext, StoreError> {
    let head = row.int_or_null("head_seq")?.zip(row.text_or_null("head_hash")?);
    let anchor = match (
        row.int_or_null("anchor_seq")?,
        row.text_or_null("anchor_hash")?,
        row.text_or_null("anchor_mac")?,
    ) {
        (Some(seq), Some(hash), Some(mac)) => Some(crate::audit::Anchor { seq, hash, mac }),
        _ => None,
    };
    let state = match (row.text_or_null("origin")?, row.bytes_or_null("frontier")?) {
        (Some(origin), Some(frontier)) => Some(crate::audit::LogState {
            origin,
            frontier: crate::audit::merkle::Frontier::from_bytes(&frontier).map_err(StoreError::corrupt)?,
        }),
        _ => None,
    };
    Ok((head, anchor, state))
}

/// An audit entry from a row of [`AUDIT_COLUMNS`].
pub(crate) fn audit_entry(row: &impl Columns) -> Result<crate::audit::AuditEntry, StoreError> {
    Ok(crate::audit::AuditEntry {
        seq: row.int("seq")?,
        recorded_at_ms: row.int("recorded_at_ms")?,
        kind: row.text("kind")?,
        tenant: row.text("tenant")?,
        principal: row.text("principal")?,
        payload: row.text("payload")?,
        prev_hash: row.text("prev_hash")?,
        hash: row.text("hash")?,
    })
}

/// The columns of a run event, in every backend's `run_events` table.
pub(crate) const RUN_EVENT_COLUMNS: &str = "SELECT run_id, lamport, event_id, node_id, fencing_token, traceparent, schema_version, recorded_at_ms, payload FROM run_events";

/// A count as stored (never negative).
fn count(row: &impl Columns, column: &str) -> Result<u32, StoreError> {
    let value = row.int(column)?;
    u32::try_from(value).map_err(|_| StoreError::corrupt(format!("{column} {value}")))
}

/// An approval request from a row of [`APPROVAL_COLUMNS`] (without its votes).
pub(crate) fn approval(row: &impl Columns) -> Result<ApprovalRequest, StoreError> {
    let status = row.text("status")?;
    let reviewer_role = row.text("reviewer_role")?;
    let requester_roles = row.text("requester_roles")?;
    let skill_json = row.text("skill_json")?;
    let allowed = row.text("allowed_decisions")?;
    Ok(ApprovalRequest {
        id: row.int("id")?,
        created_at_ms: row.int("created_at_ms")?,
        tenant: row.text("tenant")?,
        requester: row.text("requester")?,
        requester_roles: serde_json::from_str(&requester_roles)
            .map_err(|_| StoreError::corrupt(format!("requester roles `{requester_roles}`")))?,
        acting_agent: row.text("acting_agent")?,
        run_id: row.text("run_id")?,
        step_id: row.text("step_id")?,
        traceparent: row.text("traceparent")?,
        skill: serde_json::from_str(&skill_json)
            .map_err(|error| StoreError::corrupt(format!("skill `{skill_json}`: {error}")))?,
        input_digest: row.text("input_digest")?,
        request_json: row.text("request_json")?,
        policy_version: row.text("policy_version")?,
        reviewer_role: reviewer_role
            .parse()
            .map_err(|_| StoreError::corrupt(format!("reviewer role `{reviewer_role}`")))?,
        quorum: Quorum {
            required: count(row, "quorum_required")?,
            deny_threshold: count(row, "deny_threshold")?,
        },
        expires_at_ms: row.int("expires_at_ms")?,
        allowed_decisions: allowed
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| StoreError::corrupt(format!("allowed decisions `{allowed}`")))?,
        parent_id: row.int_or_null("parent_id")?,
        status: status
            .parse()
            .map_err(|_| StoreError::corrupt(format!("approval status `{status}`")))?,
        votes: Vec::new(),
        decided_by: row.text_or_null("decided_by")?,
        decided_at_ms: row.int_or_null("decided_at_ms")?,
        decision_reason: row.text_or_null("decision_reason")?,
        modified_request_json: row.text_or_null("modified_request_json")?,
        consumed_at_ms: row.int_or_null("consumed_at_ms")?,
    })
}

/// A vote from a row of `reviewer, decision, reason, at_ms`.
pub(crate) fn vote(row: &impl Columns) -> Result<crate::hitl::Vote, StoreError> {
    let decision = row.text("decision")?;
    Ok(crate::hitl::Vote {
        reviewer: row.text("reviewer")?,
        decision: decision
            .parse()
            .map_err(|_| StoreError::corrupt(format!("vote decision `{decision}`")))?,
        reason: row.text_or_null("reason")?,
        at_ms: row.int("at_ms")?,
    })
}

/// A run event from a row of [`RUN_EVENT_COLUMNS`].
pub(crate) fn run_event(row: &impl Columns) -> Result<RunEvent, StoreError> {
    let payload = row.text("payload")?;
    let lamport = row.int("lamport")?;
    let schema_version = row.int("schema_version")?;
    Ok(RunEvent {
        event_id: row.text("event_id")?,
        run_id: row.text("run_id")?,
        lamport: u64::try_from(lamport).map_err(|_| StoreError::corrupt(format!("lamport {lamport}")))?,
        node_id: row.text("node_id")?,
        fencing_token: u64::try_from(row.int("fencing_token")?)
            .map_err(|_| StoreError::corrupt("a negative fencing token"))?,
        traceparent: row.text("traceparent")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|_| StoreError::corrupt(format!("schema version {schema_version}")))?,
        recorded_at_ms: row.int("recorded_at_ms")?,
        payload: serde_json::from_str(&payload)
            .map_err(|error| StoreError::corrupt(format!("run event payload: {error}")))?,
    })
}

/// A run's record from a row of [`RUN_COLUMNS`].
pub(crate) fn run_record(row: &impl Columns) -> Result<RunRecord, StoreError> {
    let state = row.text("state")?;
    let token = row.int("fencing_token")?;
    Ok(RunRecord {
        run_id: row.text("run_id")?,
        tenant: row.text("tenant")?,
        state: state
            .parse::<RunState>()
            .map_err(|_| StoreError::corrupt(format!("run state `{state}`")))?,
        owner: row.text_or_null("owner")?,
        lease_expires_at_ms: row.int("lease_expires_at_ms")?,
        fencing_token: u64::try_from(token).map_err(|_| StoreError::corrupt(format!("fencing token {token}")))?,
        deadline_ms: row.int_or_null("deadline_ms")?,
        approval_id: row.int_or_null("approval_id")?,
    })
}

/// A fencing token or Lamport clock as stored (SQL integers are signed 64-bit).
pub(crate) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
