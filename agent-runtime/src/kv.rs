//! The durable key-value store behind the `kv-get` and `kv-set` host functions.
//!
//! One namespace per (tenant, skill id): a skill never sees another skill's keys, nor another
//! tenant's. Values are committed (SQLite WAL, `synchronous=FULL`) before `kv-set` returns, so
//! a value a guest was told is stored survives a crash of the host.
//!
//! The same file holds the **effects journal**: what each invocation's idempotency key already
//! did, one row per effectful host call (`(idempotency key, seq)`, seq counting the
//! invocation's effectful calls from 0), with a digest of the request and the response. A step
//! dispatched again under the same key (a retry, a recovery after a crash) finds its earlier
//! effects there and does not repeat them. A `kv-set` and its journal row commit in one
//! transaction.
//!
//! The database is opened lazily, at the first call that needs it, so that a runtime whose
//! skills never touch the store never creates the file.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::OnceCell;

/// Largest value `kv-set` accepts, bytes.
pub const MAX_KV_VALUE_BYTES: usize = 1024 * 1024;

/// Most keys one (tenant, skill) namespace may hold; a `kv-set` of a new key beyond it is refused.
pub const MAX_KV_KEYS: i64 = 10_000;

/// Most bytes (keys and values) one (tenant, skill) namespace may hold: 64 MiB. Without it a
/// namespace could grow to [`MAX_KV_KEYS`] values of [`MAX_KV_VALUE_BYTES`] each, 10 GB per
/// skill and tenant. A `kv-set` that would pass it is refused; `kv-delete` frees space.
pub const MAX_KV_NAMESPACE_BYTES: i64 = 64 * 1024 * 1024;

/// Why the store failed. [`is_retryable`](KvError::is_retryable) says whether trying again helps.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// SQLite failed (I/O, a locked database, a corrupt file).
    #[error("key-value store at {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: sqlx::Error,
    },
    /// The namespace already holds [`MAX_KV_KEYS`] keys.
    #[error("the namespace of skill `{skill}` in tenant `{tenant}` is full ({MAX_KV_KEYS} keys)")]
    Full {
        /// The tenant.
        tenant: String,
        /// The skill id.
        skill: String,
    },
    /// The write would take the namespace past [`MAX_KV_NAMESPACE_BYTES`].
    #[error(
        "the namespace of skill `{skill}` in tenant `{tenant}` holds {used} bytes; this write would \
         make it {after}, over its quota of {MAX_KV_NAMESPACE_BYTES} bytes (delete keys to free space)"
    )]
    Quota {
        /// The tenant.
        tenant: String,
        /// The skill id.
        skill: String,
        /// Bytes held now (keys and values).
        used: i64,
        /// Bytes the namespace would hold after the write.
        after: i64,
    },
}

impl KvError {
    /// Whether a retry can help: I/O and lock contention, yes; a full namespace, no.
    pub fn is_retryable(&self) -> bool {
        match self {
            KvError::Sqlite { source, .. } => {
                matches!(
                    source,
                    sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Database(_)
                )
            }
            KvError::Full { .. } | KvError::Quota { .. } => false,
        }
    }
}

/// The durable key-value store, shared by every invocation of a runtime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KvStore {
    path: PathBuf,
    pool: SqlitePool,
    ready: std::sync::Arc<OnceCell<()>>,
}

impl KvStore {
    /// A store backed by the SQLite file at `path` (created with its table at first use).
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when `path` is not a usable SQLite location.
    pub fn open_lazy(path: &Path) -> Result<Self, KvError> {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|source| KvError::Sqlite {
                path: path.to_owned(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_lazy_with(options);
        Ok(KvStore {
            path: path.to_owned(),
            pool,
            ready: std::sync::Arc::new(OnceCell::new()),
        })
    }

    fn error(&self, source: sqlx::Error) -> KvError {
        KvError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    async fn ready(&self) -> Result<(), KvError> {
        self.ready
            .get_or_try_init(|| async {
                sqlx::raw_sql(
                    "CREATE TABLE IF NOT EXISTS kv (
                        tenant TEXT NOT NULL,
                        skill TEXT NOT NULL,
                        key TEXT NOT NULL,
                        value BLOB NOT NULL,
                        updated_at_ms INTEGER NOT NULL,
                        PRIMARY KEY (tenant, skill, key)
                    ) WITHOUT ROWID;
                    CREATE TABLE IF NOT EXISTS effects (
                        idempotency_key TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        kind TEXT NOT NULL,
                        request_digest TEXT NOT NULL,
                        response BLOB,
                        recorded_at_ms INTEGER NOT NULL,
                        PRIMARY KEY (idempotency_key, seq)
                    ) WITHOUT ROWID",
                )
                .execute(&self.pool)
                .await
                .map(drop)
            })
            .await
            .map(|_| ())
            .map_err(|source| self.error(source))
    }

    /// A write transaction that holds SQLite's write lock from its first statement, so the
    /// journal check, the quota count and the write see one state.
    async fn begin_immediate(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, KvError> {
        self.ready().await?;
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|source| self.error(source))
    }

    /// The value of `key` in the (tenant, skill) namespace.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when the database cannot be read.
    pub async fn get(&self, tenant: &str, skill: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.ready().await?;
        sqlx::query_scalar("SELECT value FROM kv WHERE tenant = ? AND skill = ? AND key = ?")
            .bind(tenant)
            .bind(skill)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|source| self.error(source))
    }

    /// Stores `value` under `key` in the (tenant, skill) namespace, committed before it returns.
    ///
    /// # Errors
    ///
    /// [`KvError::Full`] for a new key in a full namespace, [`KvError::Sqlite`] when the write
    /// failed (nothing is changed then).
    pub async fn set(&self, tenant: &str, skill: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.set_journaled(tenant, skill, key, value, None).await.map(drop)
    }

    /// [`KvStore::set`], exactly once per `effect`: when the journal already holds `effect`'s
    /// `(idempotency key, seq)` with the same request digest, nothing is written and `false` is
    /// returned; otherwise the value and the journal row commit in one transaction.
    ///
    /// # Errors
    ///
    /// As [`KvStore::set`].
    pub async fn set_journaled(
        &self,
        tenant: &str,
        skill: &str,
        key: &str,
        value: &[u8],
        effect: Option<&EffectId<'_>>,
    ) -> Result<bool, KvError> {
        let mut transaction = self.begin_immediate().await?;
        if let Some(effect) = effect
            && journaled(&mut transaction, effect)
                .await
                .map_err(|source| self.error(source))?
                .is_some_and(|(digest, _)| digest == effect.request_digest)
        {
            return Ok(false);
        }
        // The namespace's keys, bytes, and the bytes of `key` if it exists, in one range scan
        // of the primary key (a blob's length is read from its record header, not its pages).
        let (keys, used, existing, exists): (i64, i64, i64, bool) = sqlx::query_as(
            "SELECT COUNT(*),
                    COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0),
                    COALESCE(SUM(CASE WHEN key = ?1 THEN length(CAST(key AS BLOB)) + length(value) END), 0),
                    COALESCE(MAX(key = ?1), 0)
             FROM kv WHERE tenant = ?2 AND skill = ?3",
        )
        .bind(key)
        .bind(tenant)
        .bind(skill)
        .fetch_one(&mut *transaction)
        .await
        .map_err(|source| self.error(source))?;
        if !exists && keys >= MAX_KV_KEYS {
            return Err(KvError::Full {
                tenant: tenant.to_owned(),
                skill: skill.to_owned(),
            });
        }
        let after = used - existing + i64::try_from(key.len() + value.len()).unwrap_or(i64::MAX);
        if after > MAX_KV_NAMESPACE_BYTES && after > used {
            return Err(KvError::Quota {
                tenant: tenant.to_owned(),
                skill: skill.to_owned(),
                used,
                after,
            });
        }
        sqlx::query(
            "INSERT INTO kv (tenant, skill, key, value, updated_at_ms) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (tenant, skill, key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant)
        .bind(skill)
        .bind(key)
        .bind(value)
        .bind(now_ms())
        .execute(&mut *transaction)
        .await
        .map_err(|source| self.error(source))?;
        if let Some(effect) = effect {
            record(&mut transaction, effect, None)
                .await
                .map_err(|source| self.error(source))?;
        }
        transaction.commit().await.map_err(|source| self.error(source))?;
        Ok(true)
    }

    /// Deletes `key` from the (tenant, skill) namespace, exactly once per `effect` as for
    /// [`KvStore::set_journaled`]: returns whether the key existed, and for an effect already
    /// journaled, the answer recorded then (nothing is deleted again).
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when the write failed (nothing is changed then).
    pub async fn delete_journaled(
        &self,
        tenant: &str,
        skill: &str,
        key: &str,
        effect: Option<&EffectId<'_>>,
    ) -> Result<bool, KvError> {
        let mut transaction = self.begin_immediate().await?;
        if let Some(effect) = effect
            && let Some((digest, response)) = journaled(&mut transaction, effect)
                .await
                .map_err(|source| self.error(source))?
            && digest == effect.request_digest
        {
            return Ok(response.as_deref() == Some(&[1]));
        }
        let deleted = sqlx::query("DELETE FROM kv WHERE tenant = ? AND skill = ? AND key = ?")
            .bind(tenant)
            .bind(skill)
            .bind(key)
            .execute(&mut *transaction)
            .await
            .map_err(|source| self.error(source))?
            .rows_affected()
            > 0;
        if let Some(effect) = effect {
            record(&mut transaction, effect, Some(&[u8::from(deleted)]))
                .await
                .map_err(|source| self.error(source))?;
        }
        transaction.commit().await.map_err(|source| self.error(source))?;
        Ok(deleted)
    }

    /// Bytes (keys and values) and keys held by the (tenant, skill) namespace.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when the database cannot be read.
    pub async fn usage(&self, tenant: &str, skill: &str) -> Result<(i64, i64), KvError> {
        self.ready().await?;
        sqlx::query_as(
            "SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0), COUNT(*)
             FROM kv WHERE tenant = ? AND skill = ?",
        )
        .bind(tenant)
        .bind(skill)
        .fetch_one(&self.pool)
        .await
        .map_err(|source| self.error(source))
    }

    /// What the journal holds for `effect`'s `(idempotency key, seq)`: the request digest and
    /// the response recorded, if any.
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when the journal cannot be read.
    pub async fn journaled(&self, effect: &EffectId<'_>) -> Result<Option<(String, Option<Vec<u8>>)>, KvError> {
        self.ready().await?;
        let mut connection = self.pool.acquire().await.map_err(|source| self.error(source))?;
        journaled(&mut connection, effect)
            .await
            .map_err(|source| self.error(source))
    }

    /// Records that `effect` happened, with its `response`, committed before it returns
    /// (replacing an earlier row of the same `(idempotency key, seq)` with another digest: the
    /// guest asked for something else this time).
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when the row cannot be written.
    pub async fn record_effect(&self, effect: &EffectId<'_>, response: Option<&[u8]>) -> Result<(), KvError> {
        self.ready().await?;
        let mut connection = self.pool.acquire().await.map_err(|source| self.error(source))?;
        record(&mut connection, effect, response)
            .await
            .map_err(|source| self.error(source))
    }

    /// Journal rows under idempotency key `key` (for tests and inspection).
    ///
    /// # Errors
    ///
    /// [`KvError::Sqlite`] when the journal cannot be read.
    pub async fn effects_of(&self, key: &str) -> Result<Vec<(u32, String)>, KvError> {
        self.ready().await?;
        let rows: Vec<(i64, String)> =
            sqlx::query_as("SELECT seq, kind FROM effects WHERE idempotency_key = ? ORDER BY seq")
                .bind(key)
                .fetch_all(&self.pool)
                .await
                .map_err(|source| self.error(source))?;
        Ok(rows
            .into_iter()
            .map(|(seq, kind)| (u32::try_from(seq).unwrap_or(u32::MAX), kind))
            .collect())
    }
}

/// One effectful host call: the invocation's idempotency key, the call's position among the
/// invocation's effectful calls, its kind (`kv-set`, `workspace-write`, `http-fetch`) and the
/// SHA-256 of what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectId<'a> {
    /// The step's idempotency key (`<tenant>/<run>/<step>`).
    pub idempotency_key: &'a str,
    /// Position among the invocation's effectful calls, from 0.
    pub seq: u32,
    /// The host function.
    pub kind: &'static str,
    /// `sha256:<hex>` of the request (skill, target and content).
    pub request_digest: String,
}

async fn journaled(
    connection: &mut sqlx::SqliteConnection,
    effect: &EffectId<'_>,
) -> Result<Option<(String, Option<Vec<u8>>)>, sqlx::Error> {
    sqlx::query_as("SELECT request_digest, response FROM effects WHERE idempotency_key = ? AND seq = ?")
        .bind(effect.idempotency_key)
        .bind(i64::from(effect.seq))
        .fetch_optional(connection)
        .await
}

async fn record(
    connection: &mut sqlx::SqliteConnection,
    effect: &EffectId<'_>,
    response: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT OR REPLACE INTO effects (idempotency_key, seq, kind, request_digest, response, recorded_at_ms)
         VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(effect.idempotency_key)
    .bind(i64::from(effect.seq))
    .bind(effect.kind)
    .bind(&effect.request_digest)
    .bind(response)
    .bind(now_ms())
    .execute(connection)
    .await
    .map(drop)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effect<'a>(key: &'a str, seq: u32, digest: &str) -> EffectId<'a> {
        EffectId {
            idempotency_key: key,
            seq,
            kind: "kv-delete",
            request_digest: digest.to_owned(),
        }
    }

    /// Review finding: kv had no total quota (10,000 keys of 1 MiB: 10 GB per tenant and skill)
    /// and no delete. The quota counts keys and values per namespace, is refused before
    /// anything is written, and deleting frees the space.
    #[tokio::test]
    async fn a_namespace_is_held_to_its_byte_quota_and_delete_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open_lazy(&dir.path().join("kv.db")).unwrap();
        let value = vec![7u8; MAX_KV_VALUE_BYTES];
        let fits = usize::try_from(MAX_KV_NAMESPACE_BYTES).unwrap() / (MAX_KV_VALUE_BYTES + 8);
        for i in 0..fits {
            kv.set("acme", "notes", &format!("big/{i:04}"), &value).await.unwrap();
        }
        let (used, keys) = kv.usage("acme", "notes").await.unwrap();
        assert_eq!(keys, i64::try_from(fits).unwrap());
        assert_eq!(used, keys * i64::try_from(MAX_KV_VALUE_BYTES + 8).unwrap());

        let error = kv.set("acme", "notes", "big/last", &value).await.unwrap_err();
        let KvError::Quota {
            used: before, after, ..
        } = &error
        else {
            panic!("{error}")
        };
        assert_eq!(*before, used);
        assert!(*after > MAX_KV_NAMESPACE_BYTES);
        assert!(!error.is_retryable());
        assert_eq!(
            kv.get("acme", "notes", "big/last").await.unwrap(),
            None,
            "nothing was written"
        );
        // Overwriting a key in place does not grow the namespace, so it is allowed.
        kv.set("acme", "notes", "big/0000", &value).await.unwrap();
        // Other namespaces have their own quota.
        kv.set("acme", "other-skill", "big/0000", &value).await.unwrap();
        kv.set("globex", "notes", "big/0000", &value).await.unwrap();

        assert!(kv.delete_journaled("acme", "notes", "big/0001", None).await.unwrap());
        assert!(!kv.delete_journaled("acme", "notes", "big/0001", None).await.unwrap());
        kv.set("acme", "notes", "big/last", &value).await.unwrap();
        assert_eq!(kv.usage("acme", "notes").await.unwrap(), (used, keys));
    }

    /// A re-dispatched delete answers what the first answered and deletes nothing new: a value
    /// written again since then survives the replay.
    #[tokio::test]
    async fn a_journaled_delete_happens_once() {
        let dir = tempfile::tempdir().unwrap();
        let kv = KvStore::open_lazy(&dir.path().join("kv.db")).unwrap();
        kv.set("acme", "notes", "draft", b"v1").await.unwrap();
        let first = effect("acme/run-1/step-1", 0, "sha256:delete-draft");
        assert!(
            kv.delete_journaled("acme", "notes", "draft", Some(&first))
                .await
                .unwrap()
        );
        kv.set("acme", "notes", "draft", b"v2").await.unwrap();
        assert!(
            kv.delete_journaled("acme", "notes", "draft", Some(&first))
                .await
                .unwrap()
        );
        assert_eq!(
            kv.get("acme", "notes", "draft").await.unwrap().as_deref(),
            Some(&b"v2"[..])
        );
        let other = effect("acme/run-2/step-1", 0, "sha256:delete-draft");
        assert!(
            kv.delete_journaled("acme", "notes", "draft", Some(&other))
                .await
                .unwrap()
        );
        assert_eq!(kv.get("acme", "notes", "draft").await.unwrap(), None);
    }
}
