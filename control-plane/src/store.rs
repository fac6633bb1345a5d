//! The control plane's durable state: one SQLite file (WAL, `synchronous=FULL`) through sqlx.
//!
//! Tables: `audit` (append-only, hash-chained; triggers refuse UPDATE and DELETE) and
//! `approvals` (HITL requests). Every state change and its audit entry are written in one
//! `BEGIN IMMEDIATE` transaction, so the audit trail never misses a change and two writers never
//! fork the chain. **Architecture invariant:** only this module writes the `audit` table.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::hitl::{ApprovalError, ApprovalRequest, ApprovalStatus, NewApproval};
use crate::identity::Principal;

/// Schema version stored in `PRAGMA user_version`; a file with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// `prev_hash` of the first audit entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const SCHEMA: &str = r#"
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

CREATE TABLE IF NOT EXISTS approvals (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms   INTEGER NOT NULL,
    tenant          TEXT    NOT NULL,
    requester       TEXT    NOT NULL,
    requester_roles TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    step_id         TEXT    NOT NULL,
    traceparent     TEXT    NOT NULL,
    skill_id        TEXT    NOT NULL,
    skill_version   TEXT    NOT NULL,
    skill_digest    TEXT    NOT NULL,
    input_digest    TEXT    NOT NULL,
    request_json    TEXT    NOT NULL,
    policy_version  TEXT    NOT NULL,
    reviewer_role   TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    decided_by      TEXT,
    decided_at_ms   INTEGER,
    decision_reason TEXT,
    consumed_at_ms  INTEGER
);
CREATE INDEX IF NOT EXISTS approvals_by_tenant_status ON approvals (tenant, status);
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
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    path: PathBuf,
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
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(open_error)?;
        sqlx::raw_sql(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .execute(&pool)
            .await
            .map_err(open_error)?;
        Ok(Store {
            pool,
            path: path.to_owned(),
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
        let entry = append_in(&mut transaction, kind, principal, payload).await?;
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

    /// Walks the chain from the first entry and names the first one that does not verify.
    ///
    /// # Errors
    ///
    /// [`StoreError`] only when the entries cannot be read; a broken chain is
    /// [`ChainVerification::Broken`].
    pub async fn verify_audit(&self) -> Result<ChainVerification, StoreError> {
        let entries = self.audit_entries().await?;
        Ok(verify_chain(&entries))
    }

    /// Stores a new pending approval request and audits it, atomically.
    ///
    /// # Errors
    ///
    /// [`StoreError`]; nothing is stored then.
    pub async fn create_approval(
        &self,
        request: &NewApproval,
        audit_payload: &serde_json::Value,
    ) -> Result<ApprovalRequest, StoreError> {
        let mut transaction = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO approvals (created_at_ms, tenant, requester, requester_roles, run_id, step_id, traceparent, skill_id, skill_version,
                 skill_digest, input_digest, request_json, policy_version, reviewer_role, status)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending') RETURNING id",
        )
        .bind(now_ms())
        .bind(&request.requester.tenant)
        .bind(&request.requester.subject)
        .bind(serde_json::to_string(&request.requester.roles).map_err(|error| StoreError::Corrupt(error.to_string()))?)
        .bind(&request.run_id)
        .bind(&request.step_id)
        .bind(&request.traceparent)
        .bind(&request.skill_id)
        .bind(&request.skill_version)
        .bind(&request.skill_digest)
        .bind(&request.input_digest)
        .bind(&request.request_json)
        .bind(&request.policy_version)
        .bind(request.reviewer_role.as_str())
        .fetch_one(&mut *transaction)
        .await?;
        let mut payload = audit_payload.clone();
        payload["approval_id"] = id.into();
        append_in(&mut transaction, "approval-requested", &request.requester, &payload).await?;
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
        let rows = sqlx::query(&format!(
            "{APPROVAL_COLUMNS} WHERE tenant = ? AND (? IS NULL OR status = ?) ORDER BY id DESC"
        ))
        .bind(tenant)
        .bind(status.map(ApprovalStatus::as_str))
        .bind(status.map(ApprovalStatus::as_str))
        .fetch_all(&mut *connection)
        .await?;
        rows.iter().map(approval_from_row).collect()
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

    /// Records a reviewer's decision on a pending request, exactly once, with its audit entry.
    ///
    /// The transition is a compare-and-set on `status = 'pending'`, so of two concurrent
    /// reviewers exactly one succeeds. Separation of duties: the reviewer must hold the request's
    /// reviewer role, act in its tenant, and not be its requester.
    ///
    /// # Errors
    ///
    /// [`ApprovalError`] naming the broken rule; the stored request is unchanged then.
    pub async fn decide_approval(
        &self,
        id: i64,
        reviewer: &Principal,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let request = fetch_approval(&mut transaction, id)
            .await?
            .filter(|request| request.tenant == reviewer.tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        if !reviewer.has_role(request.reviewer_role) {
            return Err(ApprovalError::NotAReviewer {
                id,
                required: request.reviewer_role,
            });
        }
        if reviewer.subject == request.requester {
            return Err(ApprovalError::SelfApproval { id });
        }
        let status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Denied
        };
        let updated = sqlx::query(
            "UPDATE approvals SET status = ?, decided_by = ?, decided_at_ms = ?, decision_reason = ? WHERE id = ? AND status = 'pending'",
        )
        .bind(status.as_str())
        .bind(&reviewer.subject)
        .bind(now_ms())
        .bind(reason)
        .bind(id)
        .execute(&mut *transaction)
        .await
        .map_err(StoreError::from)?;
        if updated.rows_affected() != 1 {
            return Err(ApprovalError::AlreadyDecided {
                id,
                status: request.status,
                decided_by: request.decided_by.unwrap_or_default(),
            });
        }
        let payload = serde_json::json!({
            "approval_id": id,
            "decision": status.as_str(),
            "reviewer": reviewer.subject,
            "requester": request.requester,
            "reason": reason,
            "run_id": request.run_id,
            "step_id": request.step_id,
            "traceparent": request.traceparent,
            "skill_id": request.skill_id,
            "skill_version": request.skill_version,
            "skill_digest": request.skill_digest,
            "input_digest": request.input_digest,
            "policy_version": request.policy_version,
        });
        append_in(&mut transaction, "approval-decision", reviewer, &payload).await?;
        let decided = fetch_approval(&mut transaction, id)
            .await?
            .ok_or(ApprovalError::NotFound { id })?;
        transaction.commit().await.map_err(StoreError::from)?;
        Ok(decided)
    }

    /// Consumes an approved request for the dispatch it was granted for, exactly once.
    ///
    /// The approval binds the tenant, skill digest, input digest and policy version; any
    /// difference, or a second consumption, is refused.
    ///
    /// # Errors
    ///
    /// [`ApprovalError::NotApproved`], [`ApprovalError::BindingMismatch`] or
    /// [`ApprovalError::NotFound`].
    pub async fn consume_approval(
        &self,
        id: i64,
        tenant: &str,
        skill_digest: &str,
        input_digest: &str,
        policy_version: &str,
    ) -> Result<ApprovalRequest, ApprovalError> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(StoreError::from)?;
        let request = fetch_approval(&mut transaction, id)
            .await?
            .filter(|request| request.tenant == tenant)
            .ok_or(ApprovalError::NotFound { id })?;
        if request.status != ApprovalStatus::Approved {
            return Err(ApprovalError::NotApproved {
                id,
                status: request.status,
            });
        }
        for (what, bound, offered) in [
            ("skill digest", &request.skill_digest, skill_digest),
            ("input digest", &request.input_digest, input_digest),
            ("policy version", &request.policy_version, policy_version),
        ] {
            if bound != offered {
                return Err(ApprovalError::BindingMismatch {
                    id,
                    what,
                    bound: bound.clone(),
                    offered: offered.to_owned(),
                });
            }
        }
        let updated = sqlx::query(
            "UPDATE approvals SET status = 'consumed', consumed_at_ms = ? WHERE id = ? AND status = 'approved'",
        )
        .bind(now_ms())
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
}

const APPROVAL_COLUMNS: &str = "SELECT id, created_at_ms, tenant, requester, requester_roles, run_id, step_id, traceparent, skill_id, skill_version, skill_digest,
    input_digest, request_json, policy_version, reviewer_role, status, decided_by, decided_at_ms, decision_reason, consumed_at_ms FROM approvals";

async fn fetch_approval(connection: &mut SqliteConnection, id: i64) -> Result<Option<ApprovalRequest>, StoreError> {
    let row = sqlx::query(&format!("{APPROVAL_COLUMNS} WHERE id = ?"))
        .bind(id)
        .fetch_optional(connection)
        .await?;
    row.as_ref().map(approval_from_row).transpose()
}

fn approval_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<ApprovalRequest, StoreError> {
    let status: String = row.try_get("status")?;
    let reviewer_role: String = row.try_get("reviewer_role")?;
    let requester_roles: String = row.try_get("requester_roles")?;
    Ok(ApprovalRequest {
        id: row.try_get("id")?,
        created_at_ms: row.try_get("created_at_ms")?,
        tenant: row.try_get("tenant")?,
        requester: row.try_get("requester")?,
        requester_roles: serde_json::from_str(&requester_roles)
            .map_err(|_| StoreError::Corrupt(format!("requester roles `{requester_roles}`")))?,
        run_id: row.try_get("run_id")?,
        step_id: row.try_get("step_id")?,
        traceparent: row.try_get("traceparent")?,
        skill_id: row.try_get("skill_id")?,
        skill_version: row.try_get("skill_version")?,
        skill_digest: row.try_get("skill_digest")?,
        input_digest: row.try_get("input_digest")?,
        request_json: row.try_get("request_json")?,
        policy_version: row.try_get("policy_version")?,
        reviewer_role: reviewer_role
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("reviewer role `{reviewer_role}`")))?,
        status: status
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("approval status `{status}`")))?,
        decided_by: row.try_get("decided_by")?,
        decided_at_ms: row.try_get("decided_at_ms")?,
        decision_reason: row.try_get("decision_reason")?,
        consumed_at_ms: row.try_get("consumed_at_ms")?,
    })
}

/// Appends an entry inside an open `BEGIN IMMEDIATE` transaction: reads the head, links to it.
async fn append_in(
    connection: &mut SqliteConnection,
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
