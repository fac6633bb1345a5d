//! [`Store`]: the handle to the control plane's durable state, given to
//! [`ControlPlane::new`](crate::ControlPlane::new). It has no operations of its own: every read
//! and every audited write goes through the control plane.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::AnchorKey;
use crate::audit::checkpoint::CheckpointKey;
use crate::error::StoreError;
use crate::storage::Storage;
use crate::storage::postgres::PostgresStorage;
use crate::storage::sqlite::{Creation, SqliteStorage};
pub use crate::storage::{CommitStats, Durability};

/// The schema version the SQLite backend writes (in `PRAGMA user_version`); a file with a newer
/// one is refused, an older one migrated in place.
pub const SCHEMA_VERSION: i64 = crate::storage::sqlite::SCHEMA_VERSION;

/// An open state store: a database, the key that anchors its audit log and the seed of the key
/// that signs its checkpoints. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Storage>,
    anchor_key: Option<AnchorKey>,
    checkpoint_seed: Option<[u8; 32]>,
    key_paths: KeyPaths,
}

/// Where a store's keys live: beside the database, `<db>.audit-key` (HMAC anchor key, 32 bytes)
/// and `<db>.checkpoint-key` (Ed25519 seed, 32 bytes), both mode 0600.
/// For PostgreSQL, `<key_dir>/postgres.audit-key` and `<key_dir>/postgres.checkpoint-key`.
#[derive(Debug, Clone)]
pub(crate) struct KeyPaths {
    pub(crate) anchor: PathBuf,
    pub(crate) checkpoint: PathBuf,
}

impl KeyPaths {
    pub(crate) fn beside(path: &Path) -> Self {
        KeyPaths {
            anchor: PathBuf::from(format!("{}.audit-key", path.display())),
            checkpoint: PathBuf::from(format!("{}.checkpoint-key", path.display())),
        }
    }

    pub(crate) fn postgres(key_dir: &Path) -> Self {
        KeyPaths {
            anchor: key_dir.join("postgres.audit-key"),
            checkpoint: key_dir.join("postgres.checkpoint-key"),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.backend.location())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` in WAL mode and brings its schema
    /// up to [`SCHEMA_VERSION`]. A write unit's commit returns once it is durable; concurrent
    /// commits share fsyncs ([`Durability::GroupCommit`]).
    ///
    /// The audit anchor key (`<path>.audit-key`) and the checkpoint signing key
    /// (`<path>.checkpoint-key`) are created, mode 0600, only with a new database (or by the
    /// migration that introduces them); afterwards they are only read. A missing key, anchor or
    /// tree state is never repaired here: appends refuse with [`StoreError::Evidence`] and
    /// [`ControlPlane::verify_audit`](crate::ControlPlane::verify_audit) reports it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the cause when the file cannot be opened,
    /// [`StoreError::NewerSchema`] when a newer agentd wrote it, [`StoreError::AnchorKey`] when
    /// a key file exists but cannot be read (or, for a new database, created).
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, Durability::GroupCommit).await
    }

    /// [`open`](Self::open) with a chosen way of making commits durable (benchmarks compare
    /// the two; both are durable when a commit returns).
    ///
    /// # Errors
    ///
    /// As [`open`](Self::open).
    pub async fn open_with(path: &Path, durability: Durability) -> Result<Self, StoreError> {
        let key_paths = KeyPaths::beside(path);
        let backend = SqliteStorage::open(path, durability, |creation, (seq, hash)| {
            crate::keys::load_or_create_exact::<32>(&key_paths.checkpoint)?;
            match creation {
                Creation::Fresh | Creation::PreAnchor => {
                    let key = AnchorKey::new(crate::keys::load_or_create_exact::<32>(&key_paths.anchor)?);
                    Ok(Some(key.anchor(seq, &hash)))
                }
                Creation::Upgrade => Ok(None),
            }
        })
        .await?;
        Store::with_backend(Arc::new(backend), key_paths)
    }

    /// Opens the PostgreSQL database at `url` (`postgres://user@host:port/database`; libpq's
    /// `options` parameter may set a `search_path`), applying the migrations this build has
    /// (ADR 0016). Several agentd nodes may share it: writers are serialised by an advisory
    /// lock, the audit log stays one sequence.
    ///
    /// The anchor and checkpoint keys live in `key_dir` (`postgres.audit-key`,
    /// `postgres.checkpoint-key`, mode 0600). The node that finds the database empty creates
    /// them and anchors the log; every other node must be given copies (a secret mount), or
    /// its appends refuse with [`StoreError::Evidence`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the server cannot be reached or a migration fails,
    /// [`StoreError::NewerSchema`] when a newer agentd migrated the database,
    /// [`StoreError::AnchorKey`] when a key file exists but cannot be read (or created).
    pub async fn open_postgres(url: &str, key_dir: &Path) -> Result<Self, StoreError> {
        let key_paths = KeyPaths::postgres(key_dir);
        let backend = PostgresStorage::open(url, |(seq, hash)| {
            crate::keys::load_or_create_exact::<32>(&key_paths.checkpoint)?;
            let key = AnchorKey::new(crate::keys::load_or_create_exact::<32>(&key_paths.anchor)?);
            Ok(key.anchor(seq, &hash))
        })
        .await?;
        Store::with_backend(Arc::new(backend), key_paths)
    }

    /// Opens the SQLite file at `path` read-only, for verification and inspection: nothing is
    /// created, migrated or written (the file may sit on read-only storage), and every write
    /// through it fails with [`StoreError::ReadOnly`].
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] when the file is missing or cannot be read, or its schema is not
    /// [`SCHEMA_VERSION`]; [`StoreError::AnchorKey`] when a key file exists but is unreadable.
    pub async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let backend = SqliteStorage::open_read_only(path).await?;
        Store::with_backend(Arc::new(backend), KeyPaths::beside(path))
    }

    fn with_backend(backend: Arc<dyn Storage>, key_paths: KeyPaths) -> Result<Self, StoreError> {
        Ok(Store {
            backend,
            anchor_key: crate::keys::load_exact::<32>(&key_paths.anchor)?.map(AnchorKey::new),
            checkpoint_seed: crate::keys::load_exact::<32>(&key_paths.checkpoint)?,
            key_paths,
        })
    }

    /// Where the state is: a file path, or a URL without credentials.
    pub fn location(&self) -> &str {
        self.backend.location()
    }

    /// Closes the database's connections and waits for them (on SQLite, after folding the
    /// write-ahead log into the database file). Units begun afterwards fail.
    pub async fn close(&self) {
        self.backend.close().await;
    }

    pub(crate) fn backend(&self) -> &dyn Storage {
        self.backend.as_ref()
    }

    /// The anchor key, `None` when its file is missing.
    pub(crate) fn anchor_key(&self) -> Option<&AnchorKey> {
        self.anchor_key.as_ref()
    }

    /// Where the anchor key should be, for messages.
    pub(crate) fn anchor_key_path(&self) -> &Path {
        &self.key_paths.anchor
    }

    /// The checkpoint key of the log named `origin`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Evidence`] naming the missing key file.
    pub(crate) fn checkpoint_key(&self, origin: &str) -> Result<CheckpointKey, StoreError> {
        let seed = self.checkpoint_seed.as_ref().ok_or_else(|| StoreError::Evidence {
            detail: format!("the checkpoint key {} is missing", self.key_paths.checkpoint.display()),
        })?;
        Ok(CheckpointKey::from_seed(origin, seed))
    }
}
