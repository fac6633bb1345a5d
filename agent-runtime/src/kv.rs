//! The durable key-value store behind the `kv-get` and `kv-set` host functions.
//!
//! One namespace per (tenant, skill id): a skill never sees another skill's keys, nor another
//! tenant's. Values are committed (SQLite WAL, `synchronous=FULL`) before `kv-set` returns, so
//! a value a guest was told is stored survives a crash of the host.
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
            KvError::Full { .. } => false,
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
        self.ready().await?;
        let mut transaction = self.pool.begin().await.map_err(|source| self.error(source))?;
        let exists: bool = sqlx::query_scalar("SELECT COUNT(*) > 0 FROM kv WHERE tenant = ? AND skill = ? AND key = ?")
            .bind(tenant)
            .bind(skill)
            .bind(key)
            .fetch_one(&mut *transaction)
            .await
            .map_err(|source| self.error(source))?;
        if !exists {
            let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM kv WHERE tenant = ? AND skill = ?")
                .bind(tenant)
                .bind(skill)
                .fetch_one(&mut *transaction)
                .await
                .map_err(|source| self.error(source))?;
            if keys >= MAX_KV_KEYS {
                return Err(KvError::Full {
                    tenant: tenant.to_owned(),
                    skill: skill.to_owned(),
                });
            }
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX));
        sqlx::query(
            "INSERT INTO kv (tenant, skill, key, value, updated_at_ms) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT (tenant, skill, key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(tenant)
        .bind(skill)
        .bind(key)
        .bind(value)
        .bind(now_ms)
        .execute(&mut *transaction)
        .await
        .map_err(|source| self.error(source))?;
        transaction.commit().await.map_err(|source| self.error(source))
    }
}
