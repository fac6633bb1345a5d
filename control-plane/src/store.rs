//! [`Store`]: the handle to the control plane's durable state, given to
//! [`ControlPlane::new`](crate::ControlPlane::new). It has no operations of its own: every read
//! and every audited write goes through the control plane.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::audit::AnchorKey;
use crate::error::StoreError;
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{Access, Storage};

/// The schema version the SQLite backend writes (in `PRAGMA user_version`); a file with a newer
/// one is refused, an older one migrated in place.
pub const SCHEMA_VERSION: i64 = crate::storage::sqlite::SCHEMA_VERSION;

/// An open state store: a database and the key that anchors its audit log. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Storage>,
    anchor_key: AnchorKey,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.backend.location())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the SQLite file at `path` in WAL mode with
    /// `synchronous=FULL`, brings its schema up to [`SCHEMA_VERSION`], and reads the audit
    /// anchor key at `<path>.audit-key` (created, mode 0600, on first use). A log that has no
    /// anchor yet is anchored where it stands (trust on first use).
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the cause when the file cannot be opened,
    /// [`StoreError::NewerSchema`] when a newer agentd wrote it, [`StoreError::AnchorKey`] when
    /// the key cannot be read or created.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let backend = SqliteStorage::open(path).await?;
        let key_path = PathBuf::from(format!("{}.audit-key", path.display()));
        let anchor_key = AnchorKey::new(crate::keys::load_or_create_exact::<32>(&key_path)?);
        let store = Store {
            backend: Arc::new(backend),
            anchor_key,
        };
        store.anchor_on_first_use().await?;
        Ok(store)
    }

    /// Where the state is: a file path, or a URL without credentials.
    pub fn location(&self) -> &str {
        self.backend.location()
    }

    pub(crate) fn backend(&self) -> &dyn Storage {
        self.backend.as_ref()
    }

    pub(crate) fn anchor_key(&self) -> &AnchorKey {
        &self.anchor_key
    }

    async fn anchor_on_first_use(&self) -> Result<(), StoreError> {
        let mut unit = self.backend.begin(Access::Write).await?;
        if unit.anchor().await?.is_none() {
            let (seq, hash) = unit
                .audit_head()
                .await?
                .unwrap_or_else(|| (0, crate::audit::GENESIS_HASH.to_owned()));
            unit.put_anchor(&self.anchor_key.anchor(seq, &hash)).await?;
        }
        unit.commit().await
    }
}
