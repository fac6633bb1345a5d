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
