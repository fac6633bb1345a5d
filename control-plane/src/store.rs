//! The control plane's durable state: one SQLite file (WAL, `synchronous=FULL`) through sqlx.
//!
//! Tables: `audit` (append-only, hash-chained; triggers refuse UPDATE and DELETE), `approvals`
//! (HITL requests) and `approval_votes` (one answer per reviewer and request). Every state change and its audit entry are written in one
//! `BEGIN IMMEDIATE` transaction, so the audit trail never misses a change and two writers never
//! fork the chain. **Architecture invariant:** only this module writes the `audit` table.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::emitter::{EmitError, Record, Recorded};
use crate::governance::{Quorum, ReviewDecisionKind};
use crate::hitl::{ApprovalBinding, ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval, Vote};
use crate::identity::Principal;
use crate::run::{RUN_EVENT_SCHEMA_VERSION, RunError, RunEvent, RunEventPayload, RunState, RunView, reduce};

/// Schema version stored in `PRAGMA user_version`; a file with a newer one is refused, an older
/// one is migrated in place (in one transaction) when opened.
pub const SCHEMA_VERSION: i64 = 2;

/// `prev_hash` of the first audit entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const AUDIT_SCHEMA: &str = r#"
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

const APPROVALS_SCHEMA: &str = r#"
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
const MIGRATE_1_TO_2: &str = r#"
ALTER TABLE approvals RENAME TO approvals_v1;
DROP INDEX IF EXISTS approvals_by_tenant_status;
"#;

const MIGRATE_1_TO_2_COPY: &str = r#"
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

/// A storage failure. Verdicts and approval rules are not errors of this kind.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The state directory or file could not be created or opened.
    #[error("cannot open the state file {path}: {source}")]
    Open {
        /// The SQLite file.
        path: PathBuf,
        /// The underlying error.
        source: sqlx::Error,
    },
    /// The file was written by a newer agentd.
    #[error("the state file {path} has schema version {found}; this agentd understands up to {SCHEMA_VERSION}")]
    NewerSchema {
        /// The SQLite file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A query failed.
    #[error("state store error: {0}")]
    Sqlite(#[from] sqlx::Error),
    /// The audit anchor key could not be read or created.
    #[error("audit anchor key {path}: {source}")]
    AnchorKey {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored row does not have the shape this build expects.
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether retrying can help: a busy or locked database, or an I/O error, may clear.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Sqlite(sqlx::Error::Database(error)) => {
                let message = error.message();
                message.contains("locked") || message.contains("busy")
            }
            StoreError::Sqlite(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut) => true,
            _ => false,
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_at_ms: i64,
    /// What happened, e.g. `verdict`, `approval-decision`, `dispatch`.
    pub kind: String,
    /// The tenant it concerns.
    pub tenant: String,
    /// Who acted, `subject@tenant`.
    pub principal: String,
    /// Every field of the event, as JSON text.
    pub payload: String,
    /// `hash` of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) over the fields above, see [`entry_hash`].
    pub hash: String,
}

/// The result of walking the audit chain. A broken chain is a finding, not an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ChainVerification {
    /// Every entry links to its predecessor and hashes to its stored hash.
    Intact {
        /// Entries checked.
        entries: u64,
        /// Hash of the last entry ([`GENESIS_HASH`] when empty).
        head: String,
    },
    /// The first entry that does not verify.
    Broken {
        /// Its sequence number.
        seq: i64,
        /// What is wrong with it.
        reason: String,
        /// Entries before it that verified.
        verified_before: u64,
    },
}

/// SHA-256 (hex) of an audit entry: every field length-prefixed (`<len>:<bytes>`), in order
/// `prev_hash, seq, recorded_at_ms, kind, tenant, principal, payload`, so no two different
/// entries share an encoding.
pub fn entry_hash(
    prev_hash: &str,
    seq: i64,
    recorded_at_ms: i64,
    kind: &str,
    tenant: &str,
    principal: &str,
    payload: &str,
) -> String {
    let mut hasher = Sha256::new();
    for field in [
        prev_hash,
        &seq.to_string(),
        &recorded_at_ms.to_string(),
        kind,
        tenant,
        principal,
        payload,
    ] {
        hasher.update(field.len().to_string().as_bytes());
        hasher.update(b":");
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

/// The SQLite-backed store.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
    anchor_key: std::sync::Arc<[u8; 32]>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 (RFC 2104) of the chain head `(seq, hash)` under the anchor key.
fn anchor_mac(key: &[u8; 32], seq: i64, hash: &str) -> String {
    use hmac::{Mac, digest::KeyInit};
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(seq.to_string().as_bytes());
    mac.update(b":");
    mac.update(hash.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Reads the anchor key at `path`, creating it (32 random bytes, mode 0600) when missing.
fn load_or_create_key(path: &Path) -> std::io::Result<[u8; 32]> {
    match std::fs::read(path) {
        Ok(bytes) => bytes.try_into().map_err(|bytes: Vec<u8>| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the audit anchor key must be 32 bytes, found {}", bytes.len()),
            )
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let mut key = [0u8; 32];
            getrandom::fill(&mut key).map_err(|error| std::io::Error::other(error.to_string()))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            use std::io::Write;
            let mut file = options.open(path)?;
            file.write_all(&key)?;
            file.sync_all()?;
            Ok(key)
        }
        Err(error) => Err(error),
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` in WAL mode with
    /// `synchronous=FULL`, and brings its schema up to [`SCHEMA_VERSION`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the file cannot be opened, [`StoreError::NewerSchema`] when a
    /// newer agentd wrote it.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.to_owned(),
            source,
        };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let found: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&pool)
            .await
            .map_err(open_error)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.to_owned(),
                found,
            });
        }
        // Create or migrate in one transaction: a crash leaves the old schema, never half of it.
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await.map_err(open_error)?;
        let found: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *transaction)
            .await
            .map_err(open_error)?;
        let version_pragma = format!("PRAGMA user_version = {SCHEMA_VERSION}");
        let mut statements: Vec<&str> = vec![AUDIT_SCHEMA];
        if found < SCHEMA_VERSION {
            let has_v1_approvals: bool = sqlx::query_scalar(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'approvals'",
            )
            .fetch_one(&mut *transaction)
            .await
            .map_err(open_error)?;
            let migrate = found == 1 && has_v1_approvals;
            if migrate {
                statements.push(MIGRATE_1_TO_2);
            }
            statements.push(APPROVALS_SCHEMA);
            if migrate {
                statements.push(MIGRATE_1_TO_2_COPY);
            }
            statements.push(&version_pragma);
        }
        for statement in statements {
            sqlx::raw_sql(statement)
                .execute(&mut *transaction)
                .await
                .map_err(open_error)?;
        }
        // The anchor: the chain head MAC'd with a key kept outside the database, so that an
        // attacker who can write the file cannot truncate the log or re-hash its tail unseen.
        // A log that predates the anchor is anchored where it stands (trust on first use).
        let key_path = PathBuf::from(format!("{}.audit-key", path.display()));
        let anchor_key = load_or_create_key(&key_path).map_err(|error| StoreError::AnchorKey {
            path: key_path.clone(),
            source: error,
        })?;
        let has_anchor: bool = sqlx::query_scalar("SELECT COUNT(*) > 0 FROM audit_anchor")
            .fetch_one(&mut *transaction)
            .await
            .map_err(open_error)?;
        if !has_anchor {
            let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
                .fetch_optional(&mut *transaction)
                .await
                .map_err(open_error)?;
            let (seq, hash) = match head {
                Some(row) => (
                    row.try_get::<i64, _>("seq").map_err(open_error)?,
                    row.try_get::<String, _>("hash").map_err(open_error)?,
                ),
                None => (0, GENESIS_HASH.to_owned()),
            };
            sqlx::query("INSERT INTO audit_anchor (id, seq, hash, mac) VALUES (1, ?, ?, ?)")
                .bind(seq)
                .bind(&hash)
                .bind(anchor_mac(&anchor_key, seq, &hash))
                .execute(&mut *transaction)
                .await
                .map_err(open_error)?;
        }
        transaction.commit().await.map_err(open_error)?;
        Ok(Store {
            pool,
            path: path.to_owned(),
            anchor_key: std::sync::Arc::new(anchor_key),
        })
    }

    /// The SQLite file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one audit entry in its own transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; nothing is appended then.
    pub async fn append_audit(
        &self,
        kind: &str,
        principal: &Principal,
        payload: &serde_json::Value,
    ) -> Result<AuditEntry, StoreError> {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let entry = append_in(&mut transaction, &self.anchor_key, kind, principal, payload).await?;
        transaction.commit().await?;
        Ok(entry)
    }

    /// All audit entries in chain order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the read fails.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash FROM audit ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await?;
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
            .map_err(StoreError::from)
    }

    /// Walks the chain from the first entry and names the first one that does not verify, then
    /// checks the head against the anchor (MAC'd with the key beside the database), which
    /// catches truncation and a re-hashed tail.
    ///
    /// # Errors
    ///
    /// [`StoreError`] only when the entries cannot be read; a broken chain is
    /// [`ChainVerification::Broken`].
    pub async fn verify_audit(&self) -> Result<ChainVerification, StoreError> {
        let entries = self.audit_entries().await?;
        let chain = verify_chain(&entries);
        let ChainVerification::Intact { entries: count, head } = &chain else {
            return Ok(chain);
        };
        let anchor = sqlx::query("SELECT seq, hash, mac FROM audit_anchor WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let last_seq = i64::try_from(*count).unwrap_or(i64::MAX);
        let broken = |seq: i64, reason: String| ChainVerification::Broken {
            seq,
            reason,
            verified_before: *count,
        };
        let Some(anchor) = anchor else {
            return Ok(broken(last_seq, "the head anchor is missing".into()));
        };
        let (anchor_seq, anchor_hash, mac): (i64, String, String) =
            (anchor.try_get("seq")?, anchor.try_get("hash")?, anchor.try_get("mac")?);
        if mac != anchor_mac(&self.anchor_key, anchor_seq, &anchor_hash) {
            return Ok(broken(
                anchor_seq,
                "the head anchor's MAC does not verify: the anchor was rewritten without the key".into(),
            ));
        }
        if anchor_seq > last_seq {
            return Ok(broken(
                last_seq + 1,
                format!("truncated: the anchor records {anchor_seq} entries, the log holds {last_seq}"),
            ));
        }
        if anchor_seq < last_seq {
            return Ok(broken(
                anchor_seq + 1,
                format!("entries after {anchor_seq} were appended without the anchor key"),
            ));
        }
        if &anchor_hash != head {
            return Ok(broken(
                last_seq,
                "the chain head differs from the anchored head: the tail was re-hashed".into(),
            ));
        }
        Ok(chain)
    }

    /// Stores a new pending approval request and audits it, atomically: the request exists
    /// before anyone can be told about it.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is stored then.
    pub async fn create_approval(
        &self,
        request: &NewApproval,
        audit_payload: &serde_json::Value,
    ) -> Result<ApprovalRequest, StoreError> {
        let corrupt = |error: serde_json::Error| StoreError::Corrupt(error.to_string());
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO approvals (created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id,
                 traceparent, skill_json, skill_id, skill_digest, input_digest, request_json, policy_version, reviewer_role,
                 quorum_required, deny_threshold, expires_at_ms, allowed_decisions, parent_id, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') RETURNING id",
        )
        .bind(now_ms())
        .bind(&request.requester.tenant)
        .bind(&request.requester.subject)
        .bind(serde_json::to_string(&request.requester.roles).map_err(corrupt)?)
        .bind(&request.acting_agent)
        .bind(&request.run_id)
        .bind(&request.step_id)
        .bind(&request.traceparent)
        .bind(serde_json::to_string(&request.skill).map_err(corrupt)?)
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
        .fetch_one(&mut *transaction)
        .await?;
        let mut payload = audit_payload.clone();
        payload["approval_id"] = id.into();
        append_in(
            &mut transaction,
            &self.anchor_key,
            "approval-requested",
            &request.requester,
            &payload,
        )
        .await?;
        let stored = fetch_approval(&mut transaction, id)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("approval {id} vanished")))?;
        transaction.commit().await?;
        Ok(stored)
    }

    /// Approval requests of `tenant`, newest first, optionally only those in `status`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the read fails.
    pub async fn list_approvals(
        &self,
        tenant: &str,
        status: Option<ApprovalStatus>,
    ) -> Result<Vec<ApprovalRequest>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM approvals WHERE tenant = ? AND (? IS NULL OR status = ?) ORDER BY id DESC",
        )
        .bind(tenant)
        .bind(status.map(ApprovalStatus::as_str))
        .bind(status.map(ApprovalStatus::as_str))
        .fetch_all(&mut *connection)
        .await?;
        let mut requests = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(request) = fetch_approval(&mut connection, id).await? {
                requests.push(request);
            }
        }
        Ok(requests)
    }

    /// One approval request of `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the read fails.
    pub async fn approval(&self, tenant: &str, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        Ok(fetch_approval(&mut connection, id)
            .await?
            .filter(|request| request.tenant == tenant))
    }

    /// Records one reviewer's answer to a pending request at `now_ms`, with its audit entry, and
    /// makes the transition the answer completes: approved once `quorum.required` distinct
    /// reviewers approved, denied once `quorum.deny_threshold` denied, modified at the first
    /// modification (`modified_request_json` is the edited request).
    ///
    /// Everything happens in one `BEGIN IMMEDIATE` transaction and the status change is a
    /// compare-and-set on `status = 'pending'`, so concurrent reviewers produce exactly one
    /// terminal transition. A request past its stored `expires_at_ms` becomes `expired`
    /// (audited) and the answer is refused. Separation of duties: the reviewer holds the
    /// request's role, acts in its tenant, and is neither the requester nor the acting agent;
    /// policy permission to review is checked by the caller
    /// ([`ControlPlane::review`](crate::ControlPlane::review)).
    ///
    /// # Errors
    ///
    /// [`ApprovalError`] naming the broken rule; the stored request is unchanged then (except
    /// for an expiry, which is recorded).
    pub async fn cast_vote(
        &self,
        id: i64,
        reviewer: &Principal,
        decision: ReviewDecisionKind,
        reason: Option<&str>,
        modified_request_json: Option<&str>,
        now_ms: i64,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let (mut transaction, request) = self
            .fetch_unexpired(id, &reviewer.tenant, ApprovalStatus::Pending, now_ms)
            .await?;
        if request.status != ApprovalStatus::Pending {
            return Err(ApprovalError::AlreadyDecided {
                id,
                status: request.status,
                decided_by: request.decided_by,
            });
        }
        if !reviewer.has_role(request.reviewer_role) {
            return Err(ApprovalError::NotAReviewer {
                id,
                required: request.reviewer_role,
            });
        }
        if reviewer.subject == request.requester {
            return Err(ApprovalError::SelfApproval { id, who: "requester" });
        }
        if reviewer.subject == request.acting_agent {
            return Err(ApprovalError::SelfApproval {
                id,
                who: "acting agent",
            });
        }
        if !request.allowed_decisions.contains(&decision) {
            return Err(ApprovalError::DecisionNotAllowed {
                id,
                decision,
                allowed: decisions_text(&request.allowed_decisions),
            });
        }
        match (decision, modified_request_json) {
            (ReviewDecisionKind::Modify, None) => {
                return Err(ApprovalError::BadModification {
                    id,
                    message: "a modification needs the edited request".into(),
                });
            }
            (ReviewDecisionKind::Approve | ReviewDecisionKind::Deny, Some(_)) => {
                return Err(ApprovalError::BadModification {
                    id,
                    message: "only a modification carries an edited request".into(),
                });
            }
            _ => {}
        }
        if let Some(earlier) = request.votes.iter().find(|vote| vote.reviewer == reviewer.subject) {
            return Err(ApprovalError::AlreadyVoted {
                id,
                decision: earlier.decision,
            });
        }
        sqlx::query(
            "INSERT INTO approval_votes (approval_id, reviewer, decision, reason, at_ms) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(&reviewer.subject)
        .bind(decision.as_str())
        .bind(reason)
        .bind(now_ms)
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::from)?;
        let approvals = request.approvals() + u32::from(decision == ReviewDecisionKind::Approve);
        let denials = request.denials() + u32::from(decision == ReviewDecisionKind::Deny);
        let next = match decision {
            ReviewDecisionKind::Modify => Some(ApprovalStatus::Modified),
            _ if denials >= request.quorum.deny_threshold => Some(ApprovalStatus::Denied),
            _ if approvals >= request.quorum.required => Some(ApprovalStatus::Approved),
            _ => None,
        };
        if let Some(next) = next {
            let updated = sqlx::query(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at_ms = ?, decision_reason = ?,
                     modified_request_json = ? WHERE id = ? AND status = 'pending'",
            )
            .bind(next.as_str())
            .bind(&reviewer.subject)
            .bind(now_ms)
            .bind(reason)
            .bind(modified_request_json)
            .bind(id)
            .execute(&mut *transaction)
            .await
            .map_err(StoreError::from)?;
            if updated.rows_affected() != 1 {
                return Err(ApprovalError::AlreadyDecided {
                    id,
                    status: request.status,
                    decided_by: request.decided_by,
                });
            }
        }
        let payload = serde_json::json!({
            "approval_id": id,
            "vote": decision.as_str(),
            "reviewer": reviewer.subject,
            "reviewer_roles": reviewer.roles,
            "reason": reason,
            "approvals": approvals,
            "denials": denials,
            "quorum": request.quorum,
            "status": next.unwrap_or(ApprovalStatus::Pending).as_str(),
            "modified_request_digest": modified_request_json.map(|text| format!("sha256:{}", hex::encode(Sha256::digest(text.as_bytes())))),
            "requester": request.requester,
            "acting_agent": request.acting_agent,
            "run_id": request.run_id,
            "step_id": request.step_id,
            "traceparent": request.traceparent,
            "skill_id": request.skill.id,
            "skill_version": request.skill.version.to_string(),
            "skill_digest": request.skill.digest,
            "input_digest": request.input_digest,
            "policy_version": request.policy_version,
        });
        let kind = if next.is_some() {
            "approval-decision"
        } else {
            "approval-vote"
        };
        append_in(&mut transaction, &self.anchor_key, kind, reviewer, &payload).await?;
        let decided = fetch_approval(&mut transaction, id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(decided)
    }

    /// Opens a `BEGIN IMMEDIATE` transaction and fetches request `id` of `tenant` in it. If it
    /// is `live` but its stored `expires_at_ms` has passed, the expiry is recorded and committed,
    /// and the result is [`ApprovalError::Expired`]: expiry is decided from the stored time,
    /// never the caller's.
    async fn fetch_unexpired(
        &self,
        id: i64,
        tenant: &str,
        live: ApprovalStatus,
        now_ms: i64,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Sqlite>, ApprovalRequest), ApprovalError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let request = fetch_approval(&mut transaction, id)
            .await?
            .filter(|request| request.tenant == tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        if request.status == live && now_ms >= request.expires_at_ms {
            expire_in(&mut transaction, &self.anchor_key, &request, now_ms).await?;
            transaction.commit().await.map_err(StoreError::from)?;
            return Err(ApprovalError::Expired {
                id,
                expires_at_ms: request.expires_at_ms,
            });
        }
        Ok((transaction, request))
    }

    /// Withdraws a pending request: only its requester or an admin of its tenant may.
    ///
    /// # Errors
    ///
    /// [`ApprovalError::NotAllowedToCancel`], [`ApprovalError::AlreadyDecided`],
    /// [`ApprovalError::NotFound`], or a store error.
    pub async fn cancel_approval(
        &self,
        id: i64,
        principal: &Principal,
        reason: Option<&str>,
        now_ms: i64,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let request = fetch_approval(&mut transaction, id)
            .await?
            .filter(|request| request.tenant == principal.tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        if principal.subject != request.requester && !principal.has_role(crate::identity::Role::Admin) {
            return Err(ApprovalError::NotAllowedToCancel { id });
        }
        let updated = sqlx::query(
            "UPDATE approvals SET status = 'cancelled', decided_by = ?, decided_at_ms = ?, decision_reason = ?
             WHERE id = ? AND status = 'pending'",
        )
        .bind(&principal.subject)
        .bind(now_ms)
        .bind(reason)
        .bind(id)
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::from)?;
        if updated.rows_affected() != 1 {
            return Err(ApprovalError::AlreadyDecided {
                id,
                status: request.status,
                decided_by: request.decided_by,
            });
        }
        let payload = serde_json::json!({
            "approval_id": id, "status": "cancelled", "reason": reason, "run_id": request.run_id,
            "step_id": request.step_id, "skill_id": request.skill.id, "input_digest": request.input_digest,
            "policy_version": request.policy_version,
        });
        append_in(
            &mut transaction,
            &self.anchor_key,
            "approval-decision",
            principal,
            &payload,
        )
        .await?;
        let cancelled = fetch_approval(&mut transaction, id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(cancelled)
    }

    /// Expires every pending or approved-but-unconsumed request whose stored `expires_at_ms`
    /// is at or before `now_ms` (each audited as decided by `system:approval-expiry`), and
    /// returns their ids.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; no request is expired then.
    pub async fn expire_due(&self, now_ms: i64) -> Result<Vec<i64>, StoreError> {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM approvals WHERE status IN ('pending', 'approved') AND expires_at_ms <= ? ORDER BY id",
        )
        .bind(now_ms)
        .fetch_all(&mut *transaction)
        .await?;
        for &id in &ids {
            if let Some(request) = fetch_approval(&mut transaction, id).await? {
                expire_in(&mut transaction, &self.anchor_key, &request, now_ms).await?;
            }
        }
        transaction.commit().await?;
        Ok(ids)
    }

    /// Consumes an approved request for the dispatch it was granted for, exactly once.
    ///
    /// The approval binds tenant, run id, step id, skill id, skill digest, input digest and
    /// policy version; any difference, a second consumption or an expired approval is refused.
    ///
    /// # Errors
    ///
    /// [`ApprovalError::NotApproved`], [`ApprovalError::BindingMismatch`],
    /// [`ApprovalError::Expired`] or [`ApprovalError::NotFound`].
    pub async fn consume_approval(
        &self,
        id: i64,
        binding: &ApprovalBinding,
        now_ms: i64,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let (mut transaction, request) = self
            .fetch_unexpired(id, &binding.tenant, ApprovalStatus::Approved, now_ms)
            .await?;
        if request.status != ApprovalStatus::Approved {
            return Err(ApprovalError::NotApproved {
                id,
                status: request.status,
            });
        }
        for (what, bound, offered) in [
            ("run id", &request.run_id, &binding.run_id),
            ("step id", &request.step_id, &binding.step_id),
            ("skill id", &request.skill.id, &binding.skill_id),
            ("skill digest", &request.skill.digest, &binding.skill_digest),
            ("input digest", &request.input_digest, &binding.input_digest),
            ("policy version", &request.policy_version, &binding.policy_version),
        ] {
            if bound != offered {
                return Err(ApprovalError::BindingMismatch {
                    id,
                    what,
                    bound: bound.clone(),
                    offered: offered.clone(),
                });
            }
        }
        let updated = sqlx::query(
            "UPDATE approvals SET status = 'consumed', consumed_at_ms = ? WHERE id = ? AND status = 'approved'",
        )
        .bind(now_ms)
        .bind(id)
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::from)?;
        if updated.rows_affected() != 1 {
            return Err(ApprovalError::NotApproved {
                id,
                status: ApprovalStatus::Consumed,
            });
        }
        let consumed = fetch_approval(&mut transaction, id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(consumed)
    }

    /// Appends a run event at the next Lamport clock of the run, in one transaction, only if
    /// the run's events with it still reduce ([`crate::run::reduce`]).
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] for an illegal transition or a bad creation (nothing is stored),
    /// [`RunStoreError::Store`] when the write fails.
    pub async fn append_run_event(
        &self,
        run_id: &str,
        node_id: &str,
        traceparent: &str,
        payload: RunEventPayload,
    ) -> Result<RunEvent, RunStoreError> {
        let mut committed = self
            .commit(Bundle {
                audit: None,
                records: Vec::new(),
                run_events: vec![RunEventDraft {
                    run_id: run_id.to_owned(),
                    node_id: node_id.to_owned(),
                    traceparent: traceparent.to_owned(),
                    payload,
                }],
            })
            .await?;
        committed
            .run_events
            .pop()
            .ok_or_else(|| RunStoreError::Store(StoreError::Corrupt("the run event was not returned".into())))
    }

    /// Writes an audit entry, run events and kernel records in one `BEGIN IMMEDIATE`
    /// transaction (one fsync), so a step's state change, its audit entry and its telemetry are
    /// either all stored or none. Run events are appended only if the run still reduces. A
    /// record whose logical identity already holds other content is skipped (it is a copy; the
    /// audit entry is the record of authority) and logged.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] for an illegal run event, [`RunStoreError::Store`] when a write
    /// fails; nothing of the bundle is stored then.
    pub async fn commit(&self, bundle: Bundle<'_>) -> Result<Committed, RunStoreError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let audit = match bundle.audit {
            Some((kind, principal, payload)) => {
                Some(append_in(&mut transaction, &self.anchor_key, kind, principal, payload).await?)
            }
            None => None,
        };
        let mut run_events = Vec::with_capacity(bundle.run_events.len());
        for draft in bundle.run_events {
            run_events.push(append_run_event_in(&mut transaction, draft).await?);
        }
        let mut records = Vec::with_capacity(bundle.records.len());
        for record in &bundle.records {
            match put_record_in(&mut transaction, record).await {
                Ok(recorded) => records.push(recorded),
                Err(EmitError::Store(error)) => return Err(error.into()),
                Err(error) => tracing::warn!(%error, "a kernel record in a bundle was skipped"),
            }
        }
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(Committed {
            audit,
            run_events,
            records,
        })
    }

    /// The events of `run_id` in Lamport order.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn run_events(&self, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        run_events_in(&mut connection, run_id).await
    }

    /// The run as [`crate::run::reduce`] derives it from its stored events.
    ///
    /// # Errors
    ///
    /// [`RunStoreError::Run`] when the run does not exist or its events do not reduce.
    pub async fn run(&self, run_id: &str) -> Result<RunView, RunStoreError> {
        let events = self.run_events(run_id).await?;
        if events.is_empty() {
            return Err(RunError::NotFound(run_id.to_owned()).into());
        }
        Ok(reduce(&events)?)
    }

    /// Ids of the runs of `tenant` currently in `state` (derived by reducing each run).
    ///
    /// # Errors
    ///
    /// [`RunStoreError`].
    pub async fn runs_in_state(&self, tenant: &str, state: RunState) -> Result<Vec<String>, RunStoreError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT DISTINCT run_id FROM run_events ORDER BY run_id")
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)?;
        let mut found = Vec::new();
        for id in ids {
            let view = self.run(&id).await?;
            if view.tenant == tenant && view.state == state {
                found.push(id);
            }
        }
        Ok(found)
    }

    /// Stores one kernel record idempotently (see [`crate::emitter`]).
    ///
    /// # Errors
    ///
    /// [`EmitError::IdempotencyConflict`] or [`EmitError::Store`].
    pub async fn put_record(&self, record: &Record) -> Result<Recorded, EmitError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let recorded = put_record_in(&mut transaction, record).await?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(recorded)
    }

    /// Stores several records in one transaction; the first conflict aborts the batch.
    ///
    /// # Errors
    ///
    /// As [`Store::put_record`].
    pub async fn put_records(&self, records: &[Record]) -> Result<Vec<Recorded>, EmitError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            out.push(put_record_in(&mut transaction, record).await?);
        }
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(out)
    }

    /// Number of stored kernel records of `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn record_count(&self, tenant: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE tenant = ?")
            .bind(tenant)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Calculated spend of `tenant` (or one run), micro-euros.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn spent_micro_eur(&self, tenant: &str, run_id: Option<&str>) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(SUM(cost_micro_eur), 0) FROM records
             WHERE tenant = ? AND (? IS NULL OR run_id = ?) AND cost_status = 'calculated'",
        )
        .bind(tenant)
        .bind(run_id)
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Stores a signed autonomy certificate with its audit entry (an enforcement change).
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is stored then.
    pub async fn put_certificate(
        &self,
        admin: &Principal,
        certificate: &crate::autonomy::AutonomyCertificate,
        token: &str,
    ) -> Result<i64, StoreError> {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO autonomy_certificates (tenant, agent, skill, token, issued_at_ms) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(&certificate.tenant)
        .bind(&certificate.agent)
        .bind(&certificate.skill)
        .bind(token)
        .bind(now_ms())
        .fetch_one(&mut *transaction)
        .await?;
        let payload = serde_json::json!({
            "change": "autonomy-certificate", "certificate_id": id, "agent": certificate.agent,
            "skill": certificate.skill, "level": certificate.level, "expires_at": certificate.expires_at,
        });
        append_in(
            &mut transaction,
            &self.anchor_key,
            "enforcement-change",
            admin,
            &payload,
        )
        .await?;
        transaction.commit().await?;
        Ok(id)
    }

    /// Unrevoked certificate tokens for `agent` in `tenant` that name `skill` or `*`, newest
    /// first, with their issue time (ms).
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn certificates(&self, tenant: &str, agent: &str, skill: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT token, issued_at_ms FROM autonomy_certificates
             WHERE tenant = ? AND agent = ? AND (skill = ? OR skill = '*') AND revoked_at_ms IS NULL
             ORDER BY skill = '*', id DESC",
        )
        .bind(tenant)
        .bind(agent)
        .bind(skill)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("token")?, row.try_get("issued_at_ms")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// Demotions of `agent` for `skill` in `tenant` at or after `since_ms`.
    ///
    /// # Errors
    ///
    /// [`StoreError`].
    pub async fn demotions_since(
        &self,
        tenant: &str,
        agent: &str,
        skill: &str,
        since_ms: i64,
    ) -> Result<u32, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM autonomy_demotions WHERE tenant = ? AND agent = ? AND skill = ? AND at_ms >= ?",
        )
        .bind(tenant)
        .bind(agent)
        .bind(skill)
        .bind(since_ms)
        .fetch_one(&self.pool)
        .await?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    /// Records a step outcome of `agent` for `skill` (`success`, `failure` or `escalation`) and,
    /// when failures and escalations since the window start (or the last demotion, if later)
    /// exceed `budget.allowed`, records a demotion (audited) and returns `true`.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is recorded then.
    pub async fn record_outcome(
        &self,
        agent: &Principal,
        skill: &str,
        kind: &str,
        budget: crate::autonomy::ErrorBudget,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("INSERT INTO autonomy_outcomes (tenant, agent, skill, at_ms, kind) VALUES (?, ?, ?, ?, ?)")
            .bind(&agent.tenant)
            .bind(&agent.subject)
            .bind(skill)
            .bind(now_ms)
            .bind(kind)
            .execute(&mut *transaction)
            .await?;
        let last_demotion: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(at_ms) FROM autonomy_demotions WHERE tenant = ? AND agent = ? AND skill = ?",
        )
        .bind(&agent.tenant)
        .bind(&agent.subject)
        .bind(skill)
        .fetch_one(&mut *transaction)
        .await?;
        let since = (now_ms - budget.window_ms).max(last_demotion.map_or(i64::MIN, |at| at + 1));
        let bad: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM autonomy_outcomes WHERE tenant = ? AND agent = ? AND skill = ? AND at_ms >= ?
             AND kind IN ('failure', 'escalation')",
        )
        .bind(&agent.tenant)
        .bind(&agent.subject)
        .bind(skill)
        .bind(since)
        .fetch_one(&mut *transaction)
        .await?;
        let demote = bad > i64::from(budget.allowed);
        if demote {
            let reason = format!(
                "{bad} failures and escalations within {} ms exceed the error budget of {}",
                budget.window_ms, budget.allowed
            );
            sqlx::query("INSERT INTO autonomy_demotions (tenant, agent, skill, at_ms, reason) VALUES (?, ?, ?, ?, ?)")
                .bind(&agent.tenant)
                .bind(&agent.subject)
                .bind(skill)
                .bind(now_ms)
                .bind(&reason)
                .execute(&mut *transaction)
                .await?;
            let system = crate::identity::with_system_identity(
                "autonomy-demotion",
                &agent.tenant,
                &[crate::identity::Role::Admin],
            )
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
            let payload = serde_json::json!({ "agent": agent.subject, "skill": skill, "reason": reason });
            append_in(
                &mut transaction,
                &self.anchor_key,
                "autonomy-demotion",
                &system,
                &payload,
            )
            .await?;
        }
        transaction.commit().await?;
        Ok(demote)
    }
}

/// A run event to append (its id, Lamport clock and time are assigned when it is stored).
#[derive(Debug, Clone)]
pub struct RunEventDraft {
    /// The run.
    pub run_id: String,
    /// The appending node.
    pub node_id: String,
    /// W3C `traceparent`.
    pub traceparent: String,
    /// What happened.
    pub payload: RunEventPayload,
}

/// What [`Store::commit`] writes in one transaction.
#[derive(Debug, Default)]
pub struct Bundle<'a> {
    /// An audit entry: kind, principal, payload.
    pub audit: Option<(&'a str, &'a Principal, &'a serde_json::Value)>,
    /// Kernel records (copies for telemetry; a conflicting one is skipped).
    pub records: Vec<Record>,
    /// Run events, appended in order.
    pub run_events: Vec<RunEventDraft>,
}

/// What [`Store::commit`] stored.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The audit entry.
    pub audit: Option<AuditEntry>,
    /// The run events, with their clocks.
    pub run_events: Vec<RunEvent>,
    /// The records.
    pub records: Vec<Recorded>,
}

async fn append_run_event_in(
    connection: &mut SqliteConnection,
    draft: RunEventDraft,
) -> Result<RunEvent, RunStoreError> {
    let mut events = run_events_in(&mut *connection, &draft.run_id).await?;
    let lamport = events.last().map_or(1, |event| event.lamport + 1);
    let event = RunEvent {
        event_id: crate::trace::random_id("evt"),
        run_id: draft.run_id,
        lamport,
        node_id: draft.node_id,
        traceparent: draft.traceparent,
        schema_version: RUN_EVENT_SCHEMA_VERSION,
        recorded_at_ms: now_ms(),
        payload: draft.payload,
    };
    if events.is_empty() && !matches!(event.payload, RunEventPayload::RunCreated { .. }) {
        return Err(RunError::NotFound(event.run_id.clone()).into());
    }
    events.push(event.clone());
    reduce(&events)?;
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
    .bind(serde_json::to_string(&event.payload).map_err(|e| StoreError::Corrupt(e.to_string()))?)
    .execute(&mut *connection)
    .await
    .map_err(StoreError::from)?;
    Ok(event)
}

/// Why a run event was not stored or a run cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RunStoreError {
    /// The run's rules refused it.
    #[error(transparent)]
    Run(#[from] RunError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RunStoreError {
    /// Whether retrying can help: only a store failure may clear.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RunStoreError::Store(error) if error.is_retryable())
    }
}

async fn run_events_in(connection: &mut SqliteConnection, run_id: &str) -> Result<Vec<RunEvent>, StoreError> {
    let rows = sqlx::query(
        "SELECT run_id, lamport, event_id, node_id, traceparent, schema_version, recorded_at_ms, payload
         FROM run_events WHERE run_id = ? ORDER BY lamport",
    )
    .bind(run_id)
    .fetch_all(&mut *connection)
    .await?;
    rows.iter()
        .map(|row| {
            let payload: String = row.try_get("payload")?;
            let lamport: i64 = row.try_get("lamport")?;
            let schema_version: i64 = row.try_get("schema_version")?;
            Ok(RunEvent {
                event_id: row.try_get("event_id")?,
                run_id: row.try_get("run_id")?,
                lamport: u64::try_from(lamport).map_err(|_| StoreError::Corrupt(format!("lamport {lamport}")))?,
                node_id: row.try_get("node_id")?,
                traceparent: row.try_get("traceparent")?,
                schema_version: u32::try_from(schema_version)
                    .map_err(|_| StoreError::Corrupt(format!("schema version {schema_version}")))?,
                recorded_at_ms: row.try_get("recorded_at_ms")?,
                payload: serde_json::from_str(&payload)
                    .map_err(|error| StoreError::Corrupt(format!("run event payload: {error}")))?,
            })
        })
        .collect()
}

async fn put_record_in(connection: &mut SqliteConnection, record: &Record) -> Result<Recorded, EmitError> {
    let content_hash = record.content_hash();
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
    .bind(&content_hash)
    .bind(record.idempotency_key())
    .bind(record.canonical_content())
    .bind(record.cost.as_ref().and_then(|cost| cost.micro_eur))
    .bind(record.cost.as_ref().map(|cost| cost.status.as_str()))
    .bind(record.cost.as_ref().map(|cost| cost.pricing_version.as_str()))
    .bind(now_ms())
    .execute(&mut *connection)
    .await
    .map_err(StoreError::from)?;
    if inserted.rows_affected() == 1 {
        return Ok(Recorded {
            id: inserted.last_insert_rowid(),
            replayed: false,
        });
    }
    let existing = sqlx::query(
        "SELECT id, content_hash FROM records WHERE tenant = ? AND trace_id = ? AND span_id = ? AND event_type = ?",
    )
    .bind(&record.tenant)
    .bind(&record.trace_id)
    .bind(&record.span_id)
    .bind(&record.event_type)
    .fetch_optional(&mut *connection)
    .await
    .map_err(StoreError::from)?
    .ok_or_else(|| StoreError::Corrupt("a conflicting record vanished".into()))?;
    let stored: String = existing.try_get("content_hash").map_err(StoreError::from)?;
    if stored == content_hash {
        Ok(Recorded {
            id: existing.try_get("id").map_err(StoreError::from)?,
            replayed: true,
        })
    } else {
        Err(EmitError::IdempotencyConflict(Box::new(crate::emitter::Conflict {
            tenant: record.tenant.clone(),
            trace_id: record.trace_id.clone(),
            span_id: record.span_id.clone(),
            event_type: record.event_type.clone(),
            stored,
            offered: content_hash,
        })))
    }
}

fn decisions_text(decisions: &[ReviewDecisionKind]) -> String {
    decisions.iter().map(|d| d.as_str()).collect::<Vec<_>>().join(",")
}

/// Moves a pending or approved request to `expired` inside an open transaction, audited as
/// decided by the system principal `system:approval-expiry`.
async fn expire_in(
    connection: &mut SqliteConnection,
    key: &[u8; 32],
    request: &ApprovalRequest,
    now_ms: i64,
) -> Result<(), StoreError> {
    let updated = sqlx::query(
        "UPDATE approvals SET status = 'expired', decided_by = ?, decided_at_ms = ?, decision_reason = ?
         WHERE id = ? AND status IN ('pending', 'approved')",
    )
    .bind("system:approval-expiry")
    .bind(now_ms)
    .bind("expired: counts as denied")
    .bind(request.id)
    .execute(&mut *connection)
    .await?;
    if updated.rows_affected() == 1 {
        let system =
            crate::identity::with_system_identity("approval-expiry", &request.tenant, &[crate::identity::Role::Admin])
                .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let payload = serde_json::json!({
            "approval_id": request.id, "status": "expired", "was": request.status.as_str(),
            "expires_at_ms": request.expires_at_ms, "run_id": request.run_id, "step_id": request.step_id,
            "skill_id": request.skill.id, "input_digest": request.input_digest, "policy_version": request.policy_version,
        });
        append_in(connection, key, "approval-decision", &system, &payload).await?;
    }
    Ok(())
}

const APPROVAL_COLUMNS: &str = "SELECT id, created_at_ms, tenant, requester, requester_roles, acting_agent, run_id, step_id,
    traceparent, skill_json, input_digest, request_json, policy_version, reviewer_role, quorum_required, deny_threshold,
    expires_at_ms, allowed_decisions, parent_id, status, decided_by, decided_at_ms, decision_reason, modified_request_json,
    consumed_at_ms FROM approvals";

async fn fetch_approval(connection: &mut SqliteConnection, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
    let row = sqlx::query(&format!("{APPROVAL_COLUMNS} WHERE id = ?"))
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let mut request = approval_from_row(&row)?;
    let votes = sqlx::query(
        "SELECT reviewer, decision, reason, at_ms FROM approval_votes WHERE approval_id = ? ORDER BY at_ms, reviewer",
    )
    .bind(id)
    .fetch_all(&mut *connection)
    .await?;
    for vote in votes {
        let decision: String = vote.try_get("decision")?;
        request.votes.push(Vote {
            reviewer: vote.try_get("reviewer")?,
            decision: decision
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("vote decision `{decision}`")))?,
            reason: vote.try_get("reason")?,
            at_ms: vote.try_get("at_ms")?,
        });
    }
    Ok(Some(request))
}

fn approval_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ApprovalRequest, StoreError> {
    let status: String = row.try_get("status")?;
    let reviewer_role: String = row.try_get("reviewer_role")?;
    let requester_roles: String = row.try_get("requester_roles")?;
    let skill_json: String = row.try_get("skill_json")?;
    let allowed: String = row.try_get("allowed_decisions")?;
    let count = |column: &str| -> Result<u32, StoreError> {
        let value: i64 = row.try_get(column)?;
        u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("{column} {value}")))
    };
    Ok(ApprovalRequest {
        id: row.try_get("id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        tenant: row.try_get("tenant")?,
        requester: row.try_get("requester")?,
        requester_roles: serde_json::from_str(&requester_roles)
            .map_err(|_| StoreError::Corrupt(format!("requester roles `{requester_roles}`")))?,
        acting_agent: row.try_get("acting_agent")?,
        run_id: row.try_get("run_id")?,
        step_id: row.try_get("step_id")?,
        traceparent: row.try_get("traceparent")?,
        skill: serde_json::from_str(&skill_json)
            .map_err(|error| StoreError::Corrupt(format!("skill `{skill_json}`: {error}")))?,
        input_digest: row.try_get("input_digest")?,
        request_json: row.try_get("request_json")?,
        policy_version: row.try_get("policy_version")?,
        reviewer_role: reviewer_role
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("reviewer role `{reviewer_role}`")))?,
        quorum: Quorum {
            required: count("quorum_required")?,
            deny_threshold: count("deny_threshold")?,
        },
        expires_at_ms: row.try_get("expires_at_ms")?,
        allowed_decisions: allowed
            .split(',')
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map_err(|_| StoreError::Corrupt(format!("allowed decisions `{allowed}`")))?,
        parent_id: row.try_get("parent_id")?,
        status: status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("approval status `{status}`")))?,
        votes: Vec::new(),
        decided_by: row.try_get("decided_by")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decision_reason: row.try_get("decision_reason")?,
        modified_request_json: row.try_get("modified_request_json")?,
        consumed_at_ms: row.try_get("consumed_at_ms")?,
    })
}

/// Appends an entry inside an open `BEGIN IMMEDIATE` transaction: reads the head, links to it.
async fn append_in(
    connection: &mut SqliteConnection,
    key: &[u8; 32],
    kind: &str,
    principal: &Principal,
    payload: &serde_json::Value,
) -> Result<AuditEntry, StoreError> {
    let head = sqlx::query("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *connection)
        .await?;
    let (seq, prev_hash) = match head {
        Some(row) => (row.try_get::<i64, _>("seq")? + 1, row.try_get::<String, _>("hash")?),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let recorded_at_ms = now_ms();
    let payload = payload.to_string();
    let principal_text = principal.to_string();
    let hash = entry_hash(
        &prev_hash,
        seq,
        recorded_at_ms,
        kind,
        &principal.tenant,
        &principal_text,
        &payload,
    );
    sqlx::query("INSERT INTO audit (seq, recorded_at_ms, kind, tenant, principal, payload, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        .bind(seq)
        .bind(recorded_at_ms)
        .bind(kind)
        .bind(&principal.tenant)
        .bind(&principal_text)
        .bind(&payload)
        .bind(&prev_hash)
        .bind(&hash)
        .execute(&mut *connection)
        .await?;
    sqlx::query("INSERT OR REPLACE INTO audit_anchor (id, seq, hash, mac) VALUES (1, ?, ?, ?)")
        .bind(seq)
        .bind(&hash)
        .bind(anchor_mac(key, seq, &hash))
        .execute(&mut *connection)
        .await?;
    Ok(AuditEntry {
        seq,
        recorded_at_ms,
        kind: kind.to_owned(),
        tenant: principal.tenant.clone(),
        principal: principal_text,
        payload,
        prev_hash,
        hash,
    })
}

/// Verifies a chain of entries given in `seq` order.
pub fn verify_chain(entries: &[AuditEntry]) -> ChainVerification {
    let mut head = GENESIS_HASH.to_owned();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as i64 + 1;
        let broken = |reason: String| ChainVerification::Broken {
            seq: entry.seq,
            reason,
            verified_before: index as u64,
        };
        if entry.seq != expected_seq {
            return broken(format!(
                "sequence gap: expected entry {expected_seq}, found {}",
                entry.seq
            ));
        }
        if entry.prev_hash != head {
            return broken(format!(
                "prev_hash {} does not match the previous entry's hash {head}",
                entry.prev_hash
            ));
        }
        let recomputed = entry_hash(
            &entry.prev_hash,
            entry.seq,
            entry.recorded_at_ms,
            &entry.kind,
            &entry.tenant,
            &entry.principal,
            &entry.payload,
        );
        if recomputed != entry.hash {
            return broken(format!(
                "content does not hash to the stored hash (stored {}, computed {recomputed})",
                entry.hash
            ));
        }
        head.clone_from(&entry.hash);
    }
    ChainVerification::Intact {
        entries: entries.len() as u64,
        head,
    }
}
