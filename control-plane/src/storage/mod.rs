//! The storage interface: what the control plane needs from a database, and nothing more.
//!
//! Every read and write happens inside a [`UnitOfWork`] (one database transaction) begun by
//! [`Storage::begin`]; it is stored together on [`UnitOfWork::commit`], or not at all when the
//! unit is dropped. A write unit is serialised against every other writer (SQLite `BEGIN
//! IMMEDIATE`; row or advisory locks on a server database), so a status read inside it is
//! still the status when the unit's compare-and-set runs.
//!
//! The interface is split by area (audit, approvals, runs, records, autonomy); its signatures
//! use the control plane's own values and [`StoreError`], never a backend's types, so another
//! backend plugs in without touching a caller. Storage holds no rules: which transition is
//! legal, which hash comes next, when an agent is demoted is decided above it (the `hitl`,
//! `audit`, `run`, `records` and `autonomy` modules) and handed down as values to store.
//!
//! **Architecture invariant:** storage never imports governance, the policy engine or the
//! control plane (guardrails rule `storage-holds-no-rules`).

mod columns;
pub(crate) mod copy;
pub(crate) mod postgres;
mod rows;
pub(crate) mod sqlite;
pub(crate) mod table;

use std::fmt;

use async_trait::async_trait;

use crate::audit::{Anchor, AuditEntry, LogState};
use crate::autonomy::{AutonomyCertificate, StepResult};
use crate::error::StoreError;
use crate::hitl::{ApprovalRequest, ApprovalStatus, ApprovalTransition, NewApproval, Vote};
use crate::records::{Insertion, Record};
use crate::run::{RequestKey, RunEvent, RunRecord};

/// Classifies a sqlx error: a database error by `database(message, code)` (each backend knows
/// its own codes), an I/O error by its OS code, and the rest alike for every backend (a pool
/// timeout is busy; a value that does not decode is corruption).
pub(crate) fn classify_with(error: sqlx::Error, database: impl FnOnce(String, &str) -> StoreError) -> StoreError {
    match error {
        sqlx::Error::Database(error) => {
            let code = error.code().map(|code| code.into_owned()).unwrap_or_default();
            database(error.message().to_owned(), &code)
        }
        sqlx::Error::Io(io) => {
            let detail = io.to_string();
            match io.raw_os_error() {
                Some(28) => StoreError::Full { detail },     // ENOSPC
                Some(30) => StoreError::ReadOnly { detail }, // EROFS
                _ => StoreError::Io { detail },
            }
        }
        sqlx::Error::PoolTimedOut => StoreError::Busy {
            detail: "no database connection came free in time".to_owned(),
        },
        error @ (sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }) => StoreError::Corrupt {
            detail: error.to_string(),
        },
        other => StoreError::Backend {
            detail: other.to_string(),
        },
    }
}

/// What a unit of work may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Reads only: a consistent snapshot, never blocked by writers for long.
    Read,
    /// Reads and writes, serialised against every other writer that locks what it locks
    /// ([`UnitOfWork::lock`]).
    Write,
    /// Reads and writes, serialised against every other writer whatever it locks: for units
    /// that touch many runs or approvals at once (expiring every due approval), or fill an
    /// empty state. Rare: every other writer waits.
    Exclusive,
}

/// How a write unit's commit is made durable before it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Concurrent commits share one fsync of the WAL (SQLite `synchronous=NORMAL` plus a
    /// group-commit barrier): a commit returns after an fsync that started after it.
    #[default]
    GroupCommit,
    /// Every COMMIT fsyncs by itself, under SQLite's write lock (`synchronous=FULL`). Write
    /// units that queue meanwhile still share the writer's transaction (ADR 0019), so this is
    /// one fsync per transaction, not per unit.
    FsyncEachCommit,
}

/// How a store's write commits were made durable, counted since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommitStats {
    /// Write units committed and made durable.
    pub commits: u64,
    /// Database transactions that held them. On SQLite the units that queue while one is open
    /// join it (ADR 0019); on PostgreSQL each unit is one transaction.
    pub transactions: u64,
    /// fsyncs that made them durable (on PostgreSQL: counted as one WAL flush per commit).
    pub fsyncs: u64,
}

/// A database the control plane keeps its state in.
#[async_trait]
pub(crate) trait Storage: Send + Sync + fmt::Debug {
    /// Begins a unit of work.
    async fn begin(&self, access: Access) -> Result<Box<dyn UnitOfWork>, StoreError>;

    /// Where the state is, for messages: a file path or a URL without credentials.
    fn location(&self) -> &str;

    /// The feed on which committed run events are published.
    fn feed(&self) -> &RunFeed;

    /// Durable write commits, the database transactions and the fsyncs that held them since
    /// the store was opened: how well concurrent commits share both.
    fn commit_stats(&self) -> CommitStats;

    /// Closes every connection and waits until they are closed. SQLite then folds its
    /// write-ahead log into the database file, so a read-only (immutable) open of the file
    /// afterwards sees every committed transaction. Units begun after this fail.
    async fn close(&self);
}

/// Run events as their units of work commit, to whoever listens (`agentd serve`'s event
/// streams). A listener that falls more than [`RunFeed::CAPACITY`] events behind is told it
/// lagged and reads the store instead; nothing here is a record: the store is.
#[derive(Debug, Clone)]
pub(crate) struct RunFeed {
    sender: tokio::sync::broadcast::Sender<RunEvent>,
    /// How many times the feed may have missed committed events (on PostgreSQL: the listener
    /// for other nodes' events lost its connection, and has listened again since).
    gaps: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl RunFeed {
    /// Events kept for slow listeners.
    pub(crate) const CAPACITY: usize = 4096;

    /// Publishes the events of a unit that committed (no-op without listeners).
    pub(crate) fn publish(&self, events: Vec<RunEvent>) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        for event in events {
            // An error only means every listener left meanwhile.
            let _ = self.sender.send(event);
        }
    }

    /// A new listener, receiving events committed from now on.
    pub(crate) fn subscribe(&self) -> tokio::sync::broadcast::Receiver<RunEvent> {
        self.sender.subscribe()
    }

    /// Says the feed may have missed committed events: listeners read the store again.
    pub(crate) fn gap(&self) {
        self.gaps.send_modify(|gaps| *gaps += 1);
    }

    /// The count of [`gap`](Self::gap)s, for a listener to watch.
    pub(crate) fn gaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.gaps.subscribe()
    }
}

impl Default for RunFeed {
    fn default() -> Self {
        RunFeed {
            sender: tokio::sync::broadcast::channel(Self::CAPACITY).0,
            gaps: std::sync::Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

/// One transaction over every table.
#[async_trait]
pub(crate) trait UnitOfWork: AuditRows + ApprovalRows + RunRows + RecordRows + AutonomyRows + Send {
    /// Makes everything done in this unit durable, atomically: first the audit appends handed
    /// to [`at_commit`](Self::at_commit), then the commit.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Serialises this write unit, until it ends, against every other write unit that locks
    /// `key` (ADR 0020). A unit locks what it reads to decide before it reads it, so the
    /// compare-and-set that follows acts on what it read. Locks are taken in [`LockKey`]'s
    /// order (a run before its approval), at most one of each kind unless the unit is
    /// [`Access::Exclusive`]; the audit log's lock comes last, at commit. Units of one
    /// process are serialised whole already (SQLite's write lock): there it only checks the
    /// order.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] for a lock out of order (a bug: it could deadlock across
    /// nodes); the store's error when the lock cannot be taken.
    async fn lock(&mut self, key: LockKey<'_>) -> Result<(), StoreError>;

    /// Locks run `run_id` as [`lock`](Self::lock) does unless another unit holds it now:
    /// `false` then, without waiting (PostgreSQL `FOR UPDATE SKIP LOCKED`). For claims: a run
    /// somebody is writing is not free to take over.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    async fn try_lock_run(&mut self, run_id: &str) -> Result<bool, StoreError>;

    /// Runs `append` (an audit append: it reads the log's head and writes the next entry) at
    /// commit, after every other statement of the unit, or now where units are serialised
    /// whole anyway. On a shared database the audit log's lock is then held only from the
    /// append to the commit, and is the last lock the unit takes.
    ///
    /// # Errors
    ///
    /// `append`'s error when it runs now; otherwise it comes from [`commit`](Self::commit).
    async fn at_commit(&mut self, append: CommitHook) -> Result<(), StoreError>;
}

/// An audit append deferred to commit: [`UnitOfWork::at_commit`].
pub(crate) type CommitHook = Box<
    dyn for<'u> FnOnce(
            &'u mut dyn UnitOfWork,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'u>>
        + Send,
>;

/// What a write unit locks before it reads to decide (ADR 0020), in the order a unit must
/// take them: a unit may lock a kind only before any later kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LockKey<'a> {
    /// An idempotency key of a tenant (its binding may not exist yet).
    RequestKey {
        /// The tenant.
        tenant: &'a str,
        /// The key.
        key: &'a str,
    },
    /// A run: its events and its record (lease, fencing token).
    Run(&'a str),
    /// An approval request and its votes.
    Approval(i64),
    /// An agent's autonomy for a skill: its step results and demotions.
    Autonomy {
        /// The tenant.
        tenant: &'a str,
        /// The agent.
        agent: &'a str,
        /// The skill.
        skill: &'a str,
    },
}

impl LockKey<'_> {
    /// The kind's place in the lock order.
    pub(crate) fn rank(&self) -> u8 {
        match self {
            LockKey::RequestKey { .. } => 0,
            LockKey::Run(_) => 1,
            LockKey::Approval(_) => 2,
            LockKey::Autonomy { .. } => 3,
        }
    }

    /// The key as text, for a lock table and messages.
    pub(crate) fn text(&self) -> String {
        match self {
            LockKey::RequestKey { tenant, key } => format!("{tenant}\u{1f}{key}"),
            LockKey::Run(run_id) => (*run_id).to_owned(),
            LockKey::Approval(id) => id.to_string(),
            LockKey::Autonomy { tenant, agent, skill } => format!("{tenant}\u{1f}{agent}\u{1f}{skill}"),
        }
    }
}

/// The locks a write unit holds, checked against the lock order (ADR 0020): a lock of a kind
/// ranked below one held, a second key of a kind held, or any lock after the audit log's, is
/// refused, since two units taking such locks in opposite orders could wait on each other.
#[derive(Debug, Default)]
pub(crate) struct LockOrder {
    /// `(rank, key text)` of every lock held, in the order taken.
    held: Vec<(u8, String)>,
    /// The audit log's lock is held.
    audit: bool,
    /// The unit holds every lock there is ([`Access::Exclusive`]): no order to keep.
    exclusive: bool,
}

impl LockOrder {
    /// For an [`Access::Exclusive`] unit.
    pub(crate) fn exclusive() -> Self {
        LockOrder {
            exclusive: true,
            ..LockOrder::default()
        }
    }

    /// Whether `key` must be locked now: `false` when it is held already (or the unit is
    /// exclusive).
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] naming both locks when `key` breaks the order.
    pub(crate) fn admit(&mut self, key: &LockKey<'_>) -> Result<bool, StoreError> {
        if self.exclusive {
            return Ok(false);
        }
        let (rank, text) = (key.rank(), key.text());
        if self
            .held
            .iter()
            .any(|(held, held_text)| *held == rank && *held_text == text)
        {
            return Ok(false);
        }
        let out_of_order = if self.audit {
            Some("the audit log".to_owned())
        } else {
            self.held
                .iter()
                .find(|(held, _)| *held >= rank)
                .map(|(_, held_text)| format!("`{held_text}`"))
        };
        if let Some(before) = out_of_order {
            return Err(StoreError::Backend {
                detail: format!(
                    "lock order broken: {key:?} was asked for after {before} was locked (ADR 0020); \
                     units locking in opposite orders could wait on each other"
                ),
            });
        }
        self.held.push((rank, text));
        Ok(true)
    }

    /// Whether the audit log's lock must be taken now (`false` when held, or exclusive).
    pub(crate) fn admit_audit(&mut self) -> bool {
        !self.exclusive && !std::mem::replace(&mut self.audit, true)
    }
}

/// The audit log and its anchor.
#[async_trait]
pub(crate) trait AuditRows {
    /// `(seq, hash)` of the last entry; `None` for an empty log.
    async fn audit_head(&mut self) -> Result<Option<(i64, String)>, StoreError>;
    /// Appends an entry (its seq, links and hash are the caller's).
    async fn insert_audit(&mut self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Every entry in `seq` order.
    async fn audit_entries(&mut self) -> Result<Vec<AuditEntry>, StoreError>;
    /// The stored anchor, if any.
    async fn anchor(&mut self) -> Result<Option<Anchor>, StoreError>;
    /// Replaces the anchor.
    async fn put_anchor(&mut self, anchor: &Anchor) -> Result<(), StoreError>;
    /// The log's identity and tree frontier, if stored.
    async fn log_state(&mut self) -> Result<Option<LogState>, StoreError>;
    /// Replaces the log's identity and tree frontier.
    async fn put_log_state(&mut self, state: &LogState) -> Result<(), StoreError>;

    /// What an append reads, `(head, anchor, tree state)`, as [`Self::audit_head`],
    /// [`Self::anchor`] and [`Self::log_state`] would return them. A backend may answer in one
    /// round trip; on any error the caller repeats the three reads to name the broken piece.
    async fn append_context(&mut self) -> Result<AppendContext, StoreError> {
        Ok((self.audit_head().await?, self.anchor().await?, self.log_state().await?))
    }

    /// What an append writes: `entry`, the grown tree `state` and the moved `anchor`, as
    /// [`Self::insert_audit`], [`Self::put_log_state`] and [`Self::put_anchor`] would. A
    /// backend may send them in one round trip.
    async fn append_rows(&mut self, entry: &AuditEntry, state: &LogState, anchor: &Anchor) -> Result<(), StoreError> {
        self.insert_audit(entry).await?;
        self.put_log_state(state).await?;
        self.put_anchor(anchor).await
    }
}

/// `(head, anchor, tree state)` of the audit log: [`AuditRows::append_context`].
pub(crate) type AppendContext = (Option<(i64, String)>, Option<Anchor>, Option<LogState>);

/// Approval requests and their votes.
#[async_trait]
pub(crate) trait ApprovalRows {
    /// Stores a new pending request; returns its id.
    async fn insert_approval(&mut self, request: &NewApproval, created_at_ms: i64) -> Result<i64, StoreError>;
    /// Request `id` with its votes (of any tenant: the caller checks the tenant).
    async fn approval(&mut self, id: i64) -> Result<Option<ApprovalRequest>, StoreError>;
    /// Ids of `tenant`'s requests, newest first, optionally only those in `status`.
    async fn approval_ids(&mut self, tenant: &str, status: Option<ApprovalStatus>) -> Result<Vec<i64>, StoreError>;
    /// Requests in `status` across every tenant.
    async fn count_approvals(&mut self, status: ApprovalStatus) -> Result<i64, StoreError>;
    /// Ids of pending or approved requests whose stored expiry is at or before `now_ms`.
    async fn due_approval_ids(&mut self, now_ms: i64) -> Result<Vec<i64>, StoreError>;
    /// Records one reviewer's vote on request `id`.
    async fn insert_vote(&mut self, id: i64, vote: &Vote) -> Result<(), StoreError>;
    /// Executes the compare-and-set: returns whether the request was still in
    /// `transition.from` (and so moved).
    async fn apply_transition(&mut self, transition: &ApprovalTransition) -> Result<bool, StoreError>;
}

/// Run events.
#[async_trait]
pub(crate) trait RunRows {
    /// The events of `run_id` in Lamport order.
    async fn run_events(&mut self, run_id: &str) -> Result<Vec<RunEvent>, StoreError>;
    /// Stores an event (its clock and id are the caller's; a duplicate clock is refused).
    async fn insert_run_event(&mut self, event: &RunEvent) -> Result<(), StoreError>;
    /// Every run id that has events, in order.
    async fn run_ids(&mut self) -> Result<Vec<String>, StoreError>;
    /// What the store keeps about `run_id` beside its events.
    async fn run_record(&mut self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Stores (inserts or replaces) a run's record.
    async fn put_run_record(&mut self, record: &RunRecord) -> Result<(), StoreError>;
    /// Replaces `record` if the stored one still has fencing token `expected_token` (a
    /// compare-and-set); `false` when it moved on.
    async fn replace_run_record(&mut self, record: &RunRecord, expected_token: u64) -> Result<bool, StoreError>;
    /// Candidates for a recovery pass, oldest lease first, at most `limit`: unfinished runs
    /// whose lease lapsed, that nobody owns while they are pending or running, or that wait on
    /// an approval no longer pending (or past its expiry). A pre-filter for an index; which
    /// action each needs is `run::lease::next_action`'s decision.
    async fn runs_needing_attention(&mut self, now_ms: i64, limit: u32) -> Result<Vec<RunRecord>, StoreError>;
    /// The records of `tenant`'s runs, in run id order.
    async fn run_records(&mut self, tenant: &str) -> Result<Vec<RunRecord>, StoreError>;
    /// The run `tenant` started with idempotency key `key`: `(request digest, run id)`.
    async fn run_request(&mut self, tenant: &str, key: &str) -> Result<Option<(String, String)>, StoreError>;
    /// Binds `key` of `tenant` to `run_id` and its request's digest (a key bound already is
    /// refused as a conflict).
    async fn insert_run_request(
        &mut self,
        tenant: &str,
        key: &RequestKey,
        run_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError>;
}

/// Kernel records.
#[async_trait]
pub(crate) trait RecordRows {
    /// Inserts `record` unless its logical identity exists; says which happened.
    async fn insert_record(&mut self, record: &Record, recorded_at_ms: i64) -> Result<Insertion, StoreError>;
    /// Records of `tenant`.
    async fn record_count(&mut self, tenant: &str) -> Result<i64, StoreError>;
    /// Calculated spend of `tenant` (or one run), micro-euros.
    async fn spent_micro_eur(&mut self, tenant: &str, run_id: Option<&str>) -> Result<i64, StoreError>;
}

/// Autonomy certificates, step results and demotions.
#[async_trait]
pub(crate) trait AutonomyRows {
    /// Stores a signed certificate; returns its id.
    async fn insert_certificate(
        &mut self,
        certificate: &AutonomyCertificate,
        token: &str,
        issued_at_ms: i64,
    ) -> Result<i64, StoreError>;
    /// Unrevoked certificate tokens for `agent` in `tenant` naming `skill` or `*` (specific
    /// first, then newest first), with their issue time (ms).
    async fn certificates(&mut self, tenant: &str, agent: &str, skill: &str) -> Result<Vec<(String, i64)>, StoreError>;
    /// Records a step result.
    async fn insert_step_result(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        at_ms: i64,
        result: StepResult,
    ) -> Result<(), StoreError>;
    /// Failures and escalations at or after `since_ms`.
    async fn bad_results_since(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        since_ms: i64,
    ) -> Result<u32, StoreError>;
    /// Time of the last demotion, if any.
    async fn last_demotion(&mut self, tenant: &str, agent: &str, skill: &str) -> Result<Option<i64>, StoreError>;
    /// Demotions at or after `since_ms`.
    async fn demotions_since(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        since_ms: i64,
    ) -> Result<u32, StoreError>;
    /// Records a demotion.
    async fn insert_demotion(
        &mut self,
        tenant: &str,
        agent: &str,
        skill: &str,
        at_ms: i64,
        reason: &str,
    ) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::{LockKey, LockOrder};

    #[test]
    fn locks_are_admitted_only_in_the_lock_order() {
        let mut order = LockOrder::default();
        assert!(order.admit(&LockKey::Run("run-1")).unwrap());
        // The same lock again: held already, nothing to take.
        assert!(!order.admit(&LockKey::Run("run-1")).unwrap());
        assert!(order.admit(&LockKey::Approval(7)).unwrap());
        // A run after an approval, a second run, a second approval: each could meet a unit
        // that takes the two in the other order.
        for key in [
            LockKey::Run("run-2"),
            LockKey::Approval(8),
            LockKey::RequestKey {
                tenant: "acme",
                key: "k",
            },
        ] {
            let error = order.admit(&key).unwrap_err().to_string();
            assert!(error.contains("lock order broken"), "{error}");
        }
        assert!(
            order
                .admit(&LockKey::Autonomy {
                    tenant: "acme",
                    agent: "alice",
                    skill: "s"
                })
                .unwrap()
        );
        // The audit log's lock comes last: nothing after it.
        assert!(order.admit_audit());
        assert!(!order.admit_audit());
        let error = order.admit(&LockKey::Approval(9)).unwrap_err().to_string();
        assert!(error.contains("after the audit log"), "{error}");
        // An exclusive unit holds everything: any order.
        let mut exclusive = LockOrder::exclusive();
        assert!(!exclusive.admit(&LockKey::Approval(1)).unwrap());
        assert!(!exclusive.admit(&LockKey::Run("run-1")).unwrap());
        assert!(!exclusive.admit_audit());
    }
}
