//! [`StoreError`]: why the durable state could not be read or written, classified by cause so
//! that callers switch on the kind (and [`StoreError::is_retryable`]), never on a backend's
//! message text.
//!
//! It lives below every module that stores something (approvals, runs, records, the audit log)
//! and below the storage backends that produce it, so none of them has to import another.

use std::fmt;

/// What went wrong with the durable state. Verdicts and approval rules are never errors of this
/// kind: they are values, or an [`ApprovalError`](crate::ApprovalError) naming the rule.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is locked by another writer, or no connection came free in time. Retryable.
    #[error("the state store is busy: {detail}")]
    Busy {
        /// What the backend said.
        detail: String,
    },
    /// The disk (or the database's size limit) is full. Free space, then retry.
    #[error(
        "the state store's disk is full ({detail}); free space on its file system and retry: nothing stored was lost"
    )]
    Full {
        /// What the backend said.
        detail: String,
    },
    /// The database or its directory is read-only. Not retryable: open it writable.
    #[error(
        "the state store is read-only ({detail}); commands that change state need write access \
         to the file and its directory, while `audit verify`, `audit checkpoint`, `runs list`, \
         `runs show` and `hitl list` also work on a read-only copy"
    )]
    ReadOnly {
        /// What the backend said.
        detail: String,
    },
    /// The database file is damaged, is not a database, or holds a row this build cannot read.
    /// Not retryable.
    #[error(
        "the state store is corrupt ({detail}); restore it from a backup (`agentd audit verify` on \
         the damaged file says what it can still read)"
    )]
    Corrupt {
        /// What is wrong.
        detail: String,
    },
    /// An I/O error below the database. Retryable: it may be transient.
    #[error("state store I/O error: {detail}")]
    Io {
        /// What the backend said.
        detail: String,
    },
    /// The database refused a write that breaks one of its constraints (a unique key, a
    /// trigger such as the audit log's append-only guard). Not retryable.
    #[error("the state store refused the write: {detail}")]
    Constraint {
        /// What the backend said.
        detail: String,
    },
    /// The state was written by a newer agentd.
    #[error("the state store {location} has schema version {found}; this agentd understands up to {supported}")]
    NewerSchema {
        /// Where the state is.
        location: String,
        /// The version found.
        found: i64,
        /// The newest version this build reads.
        supported: i64,
    },
    /// The state store could not be opened; `cause` says why. The cause is part of this
    /// message and deliberately not an error `source`, so a report that prints the chain
    /// (`{:#}`) names it once, not twice.
    #[error("cannot open the state store {location}: {cause}")]
    Open {
        /// Where the state is.
        location: String,
        /// Why.
        cause: Box<StoreError>,
    },
    /// The audit anchor key could not be read or created.
    #[error(transparent)]
    AnchorKey(#[from] crate::keys::KeyFileError),
    /// The audit evidence (the anchor, its key, or the Merkle tree state) does not match the
    /// log, so nothing more is appended: an append would bury the tampering under a fresh
    /// head. Not retryable; `agentd audit verify` says what is wrong.
    #[error("the audit evidence does not check out, so nothing is appended: {detail}; run `agentd audit verify`")]
    Evidence {
        /// What does not check out.
        detail: String,
    },
    /// Any other backend failure.
    #[error("state store error: {detail}")]
    Backend {
        /// What the backend said.
        detail: String,
    },
}

impl StoreError {
    /// Whether retrying the same operation can help: a busy database or an I/O error may clear;
    /// a full disk, a read-only file, corruption, a constraint or a newer schema will not clear
    /// by themselves.
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Busy { .. } | StoreError::Io { .. } => true,
            StoreError::Open { cause, .. } => cause.is_retryable(),
            StoreError::AnchorKey(error) => error.is_retryable(),
            StoreError::Full { .. }
            | StoreError::ReadOnly { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Constraint { .. }
            | StoreError::NewerSchema { .. }
            | StoreError::Evidence { .. }
            | StoreError::Backend { .. } => false,
        }
    }

    /// A stored value that does not have the shape this build expects.
    pub(crate) fn corrupt(detail: impl fmt::Display) -> Self {
        StoreError::Corrupt {
            detail: detail.to_string(),
        }
    }
}

/// Why `agentd migrate` (copying a SQLite state into PostgreSQL,
/// [`migrate_sqlite_to_postgres`](crate::migrate_sqlite_to_postgres)) refused or failed. In
/// every case nothing was committed to the target: it holds what it held before.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The source's audit evidence does not verify, so it is not copied: a copy would launder
    /// a broken log into one that verifies under a new anchor.
    #[error(
        "the source {location} does not verify at audit entry {seq} ({reason}), so nothing was copied; \
         `agentd audit verify` says more"
    )]
    SourceBroken {
        /// The source state file.
        location: String,
        /// The first entry that does not verify.
        seq: i64,
        /// Why.
        reason: String,
    },
    /// The target already holds state: migrating only ever fills an empty database.
    #[error(
        "the target {location} is not empty (table `{table}` holds {rows} rows); migrate only into an empty \
         database or schema"
    )]
    TargetNotEmpty {
        /// The target database.
        location: String,
        /// The first table found holding rows.
        table: String,
        /// How many.
        rows: u64,
    },
    /// A key file at the target's key path differs from the source's: the copied log would be
    /// anchored or signed by a key it was not made with.
    #[error(
        "the key file {} differs from the source's {}; the copied log needs the source's key \
         (move {0} away if no node has used it)",
        found.display(), expected.display()
    )]
    KeyMismatch {
        /// The source's key file.
        expected: std::path::PathBuf,
        /// The key file found at the target's key path.
        found: std::path::PathBuf,
    },
    /// The two schemas do not line up (a table or column on one side only, or of a type this
    /// build does not copy): nothing is guessed.
    #[error("the source and target schemas differ: {detail}")]
    SchemaMismatch {
        /// What differs.
        detail: String,
    },
    /// The copy, read back inside its own transaction, does not verify as the source did; it
    /// was rolled back.
    #[error("the copy does not verify as the source did ({detail}); it was rolled back")]
    CopyDiffers {
        /// What differs.
        detail: String,
    },
    /// A key file could not be read or written.
    #[error(transparent)]
    Key(#[from] crate::keys::KeyFileError),
    /// Either database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl MigrateError {
    /// Whether running the migration again can help: only a busy or failing database or an
    /// I/O error on a key file.
    pub fn is_retryable(&self) -> bool {
        match self {
            MigrateError::Key(error) => error.is_retryable(),
            MigrateError::Store(error) => error.is_retryable(),
            MigrateError::SourceBroken { .. }
            | MigrateError::TargetNotEmpty { .. }
            | MigrateError::KeyMismatch { .. }
            | MigrateError::SchemaMismatch { .. }
            | MigrateError::CopyDiffers { .. } => false,
        }
    }
}
