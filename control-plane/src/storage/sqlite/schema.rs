//! The SQLite schema (version [`SCHEMA_VERSION`] in `PRAGMA user_version`) and its migrations.
//!
//! Tables: `audit` (append-only, hash-chained; triggers refuse UPDATE and DELETE) with its
//! `audit_anchor`, `approvals` and `approval_votes`, `run_events` (immutable; triggers refuse
//! UPDATE and DELETE), `records`, and the autonomy tables. A file with a newer version is
//! refused; an older one is migrated in place, in one transaction, when opened.
//!
//! Schema 3 adds `runs` (each run's derived state, owner, lease, fencing token, deadline and
//! the approval it waits on, kept with its events) and `audit_log` (the log's identity, the
//! origin of its checkpoints, and its Merkle tree frontier).
//!
//! Schema 4 adds `run_requests`: the idempotency keys runs were started with (IETF
//! httpapi-idempotency-key draft), each bound to its request's digest and its run.

/// Schema version stored in `PRAGMA user_version`.
pub(crate) const SCHEMA_VERSION: i64 = 5;

pub(super) const AUDIT_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS audit (
    seq            INTEGER PRIMARY KEY,
    recorded_at_ms INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    principal      TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL,
    hash           TEXT    NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TABLE IF NOT EXISTS audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL,
    mac  TEXT    NOT NULL
);
"#;

pub(super) const APPROVALS_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS approvals (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms         INTEGER NOT NULL,
    tenant                TEXT    NOT NULL,
    requester             TEXT    NOT NULL,
    requester_roles       TEXT    NOT NULL,
    acting_agent          TEXT    NOT NULL,
    run_id                TEXT    NOT NULL,
    step_id               TEXT    NOT NULL,
    traceparent           TEXT    NOT NULL,
    skill_json            TEXT    NOT NULL,
    skill_id              TEXT    NOT NULL,
    skill_digest          TEXT    NOT NULL,
    input_digest          TEXT    NOT NULL,
    request_json          TEXT    NOT NULL,
    policy_version        TEXT    NOT NULL,
    reviewer_role         TEXT    NOT NULL,
    quorum_required       INTEGER NOT NULL CHECK (quorum_required >= 1),
    deny_threshold        INTEGER NOT NULL CHECK (deny_threshold >= 1),
    expires_at_ms         INTEGER NOT NULL,
    allowed_decisions     TEXT    NOT NULL,
    parent_id             INTEGER REFERENCES approvals (id),
    status                TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'modified', 'expired', 'cancelled', 'consumed')),
    decided_by            TEXT,
    decided_at_ms         INTEGER,
    decision_reason       TEXT,
    modified_request_json TEXT,
    consumed_at_ms        INTEGER
);
CREATE INDEX IF NOT EXISTS approvals_by_tenant_status ON approvals (tenant, status);
CREATE INDEX IF NOT EXISTS approvals_by_expiry ON approvals (status, expires_at_ms);
CREATE TABLE IF NOT EXISTS run_events (
    run_id         TEXT    NOT NULL,
    lamport        INTEGER NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE,
    node_id        TEXT    NOT NULL,
    traceparent    TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    payload        TEXT    NOT NULL,
    PRIMARY KEY (run_id, lamport)
);
CREATE TRIGGER IF NOT EXISTS run_events_no_update BEFORE UPDATE ON run_events
BEGIN SELECT RAISE(ABORT, 'run events are immutable'); END;
CREATE TRIGGER IF NOT EXISTS run_events_no_delete BEFORE DELETE ON run_events
BEGIN SELECT RAISE(ABORT, 'run events are immutable'); END;
CREATE TABLE IF NOT EXISTS records (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant          TEXT    NOT NULL,
    trace_id        TEXT    NOT NULL,
    span_id         TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    run_id          TEXT,
    content_hash    TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL UNIQUE,
    content         TEXT    NOT NULL,
    cost_micro_eur  INTEGER,
    cost_status     TEXT CHECK (cost_status IS NULL OR cost_status IN ('pending', 'calculated', 'unavailable')),
    pricing_version TEXT,
    recorded_at_ms  INTEGER NOT NULL,
    UNIQUE (tenant, trace_id, span_id, event_type)
);
CREATE INDEX IF NOT EXISTS records_by_run ON records (tenant, run_id);
CREATE TABLE IF NOT EXISTS autonomy_certificates (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant        TEXT    NOT NULL,
    agent         TEXT    NOT NULL,
    skill         TEXT    NOT NULL,
    token         TEXT    NOT NULL,
    issued_at_ms  INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
CREATE INDEX IF NOT EXISTS certificates_by_agent ON autonomy_certificates (tenant, agent, skill);
CREATE TABLE IF NOT EXISTS autonomy_outcomes (
    tenant TEXT    NOT NULL,
    agent  TEXT    NOT NULL,
    skill  TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL,
    kind   TEXT    NOT NULL CHECK (kind IN ('success', 'failure', 'escalation'))
);
CREATE INDEX IF NOT EXISTS outcomes_by_agent ON autonomy_outcomes (tenant, agent, skill, at_ms);
CREATE TABLE IF NOT EXISTS autonomy_demotions (
    tenant TEXT    NOT NULL,
    agent  TEXT    NOT NULL,
    skill  TEXT    NOT NULL,
    at_ms  INTEGER NOT NULL,
    reason TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS approval_votes (
    approval_id INTEGER NOT NULL REFERENCES approvals (id),
    reviewer    TEXT    NOT NULL,
    decision    TEXT    NOT NULL CHECK (decision IN ('approve', 'deny', 'modify')),
    reason      TEXT,
    at_ms       INTEGER NOT NULL,
    PRIMARY KEY (approval_id, reviewer)
);
"#;

/// Schema 1 -> 2: approvals gain the acting agent, the governed skill, quorum, expiry, allowed
/// decisions, a parent link and per-reviewer votes. Existing requests keep their ids, status and
/// decision; they get the defaults of schema 1's behaviour (quorum 1 of 1, approve or deny) and
/// expire a day after creation, as the new default policy would have said.
pub(super) const MIGRATE_1_TO_2: &str = r#"
ALTER TABLE approvals RENAME TO approvals_v1;
DROP INDEX IF EXISTS approvals_by_tenant_status;
"#;

pub(super) const MIGRATE_1_TO_2_COPY: &str = r#"
INSERT INTO approvals (id, created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id, traceparent,
    skill_json, skill_id, skill_digest, input_digest, request_json, policy_version, reviewer_role, quorum_required,
    deny_threshold, expires_at_ms, allowed_decisions, parent_id, status, decided_by, decided_at_ms, decision_reason,
    modified_request_json, consumed_at_ms)
SELECT id, created_at_ms, tenant, requester, requester_roles, requester, run_id, step_id, traceparent,
    json_object('id', skill_id, 'version', skill_version, 'side_effect', 'effectful', 'capabilities', json('[]'),
        'digest', skill_digest),
    skill_id, skill_digest, input_digest, request_json, policy_version, reviewer_role, 1, 1, created_at_ms + 86400000,
    'approve,deny', NULL, status, decided_by, decided_at_ms, decision_reason, NULL, consumed_at_ms
FROM approvals_v1;
INSERT INTO approval_votes (approval_id, reviewer, decision, reason, at_ms)
SELECT id, decided_by, CASE status WHEN 'denied' THEN 'deny' ELSE 'approve' END, decision_reason, decided_at_ms
FROM approvals_v1 WHERE decided_by IS NOT NULL AND decided_at_ms IS NOT NULL;
DROP TABLE approvals_v1;
"#;

/// Schema 2 -> 3: run ownership and the audit log's tree. Both are filled from the existing
/// rows by the migration ([`super::SqliteStorage::open`]).
pub(super) const SCHEMA_3: &str = r#"
CREATE TABLE IF NOT EXISTS runs (
    run_id              TEXT    PRIMARY KEY,
    tenant              TEXT    NOT NULL,
    state               TEXT    NOT NULL,
    owner               TEXT,
    lease_expires_at_ms INTEGER NOT NULL,
    fencing_token       INTEGER NOT NULL CHECK (fencing_token >= 0),
    deadline_ms         INTEGER,
    approval_id         INTEGER
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state, lease_expires_at_ms);
CREATE INDEX IF NOT EXISTS runs_by_tenant ON runs (tenant, run_id);
CREATE TABLE IF NOT EXISTS audit_log (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    origin   TEXT    NOT NULL,
    frontier BLOB    NOT NULL
);
"#;

/// Schema 3 -> 4: the idempotency keys of started runs. One key per tenant names one run; the
/// row is written in the transaction that creates the run.
pub(super) const SCHEMA_4: &str = r#"
CREATE TABLE IF NOT EXISTS run_requests (
    tenant          TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    request_digest  TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (tenant, idempotency_key)
);
"#;

/// Schema 4 -> 5: each run event records the fencing token it was written under (earlier
/// events: 0).
pub(super) const SCHEMA_5: &str = r#"
ALTER TABLE run_events ADD COLUMN fencing_token INTEGER NOT NULL DEFAULT 0 CHECK (fencing_token >= 0);
"#;
