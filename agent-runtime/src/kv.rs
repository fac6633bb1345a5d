//! The durable key-value store behind the `kv-get` and `kv-set` host functions.
//!
//! One namespace per (tenant, skill id): a skill never sees another skill's keys, nor another
//! tenant's. Values are committed before `kv-set` returns, so a value a guest was told is stored
//! survives a crash of the host.
//!
//! The same store holds the **effects journal**: what each invocation's idempotency key already
//! did, one row per effectful host call (`(idempotency key, seq)`, seq counting the
//! invocation's effectful calls from 0), with a digest of the request and the response. A step
//! dispatched again under the same key (a retry, a recovery after a crash) finds its earlier
//! effects there and does not repeat them. A `kv-set` and its journal row commit in one
//! transaction.
//!
//! Two backends, the same tables and the same guarantees:
//!
//! - **SQLite** ([`KvStore::open_lazy`]): a file of its own (`<state-dir>/kv.db`, WAL,
//!   `synchronous=FULL`), opened at the first call that needs it, so a runtime whose skills
//!   never touch the store never creates it. A write holds SQLite's write lock from its first
//!   statement (`BEGIN IMMEDIATE`).
//! - **PostgreSQL** ([`KvStore::connect_postgres`]): the tables `kv` and `effects` of the
//!   database the control plane's nodes share (ADR 0016; created by the control plane's
//!   migration 3), so a run taken over by a node on another host finds its earlier effects
//!   journaled. A write holds a transaction-scoped advisory lock on its namespace
//!   (`pg_advisory_xact_lock(KV_LOCK_CLASS, hashtext(tenant || '/' || skill))`) before it reads
//!   the journal and the quota: writes to one namespace are serialised across every node, writes
//!   to different namespaces are not.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::OnceCell;

/// Largest value `kv-set` accepts, bytes.
pub const MAX_KV_VALUE_BYTES: usize = 1024 * 1024;

/// Most keys one (tenant, skill) namespace may hold; a `kv-set` of a new key beyond it is refused.
pub const MAX_KV_KEYS: i64 = 10_000;

/// Most bytes (keys and values) one (tenant, skill) namespace may hold: 64 MiB. Without it a
/// namespace could grow to [`MAX_KV_KEYS`] values of [`MAX_KV_VALUE_BYTES`] each, 10 GB per
/// skill and tenant. A `kv-set` that would pass it is refused; `kv-delete` frees space.
pub const MAX_KV_NAMESPACE_BYTES: i64 = 64 * 1024 * 1024;

/// The first key of the PostgreSQL advisory locks a namespace's writes hold ("kv" in ASCII);
/// the second is `hashtext(tenant || '/' || skill)`. The two-key form lives in a key space of
/// its own, apart from the control plane's one-key write lock.
pub const KV_LOCK_CLASS: i32 = 0x6b76;

/// Why the store failed. [`is_retryable`](KvError::is_retryable) says whether trying again helps.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The database failed (I/O, a locked database, a lost connection, a corrupt file).
    #[error("key-value store at {location}: {source}")]
    Database {
        /// The SQLite file, or the PostgreSQL server (`postgres://user@host:port/database`,
        /// no password).
        location: String,
        /// What the database said.
        source: sqlx::Error,
    },
    /// The PostgreSQL database has no `kv` and `effects` tables: no control plane of this
    /// build has migrated it.
    #[error(
        "key-value store at {location}: the database has no `kv` and `effects` tables; open it with \
         `agentd serve --database` (or `agentd migrate`) once to apply the migrations"
    )]
    NotMigrated {
        /// The PostgreSQL server.
        location: String,
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
    /// Whether a retry can help: I/O, lock contention and a lost connection, yes; a full
    /// namespace, a constraint the row breaks or an unmigrated database, no.
    pub fn is_retryable(&self) -> bool {
        match self {
            KvError::Database { source, .. } => match source {
                sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
                // SQLSTATE class 23 (PostgreSQL) and SQLite's constraint codes say the row
                // itself is refused; anything else the server reports is worth another try.
                sqlx::Error::Database(database) => !matches!(
                    database.kind(),
                    sqlx::error::ErrorKind::UniqueViolation
                        | sqlx::error::ErrorKind::ForeignKeyViolation
                        | sqlx::error::ErrorKind::NotNullViolation
                        | sqlx::error::ErrorKind::CheckViolation
                ),
                _ => false,
            },
            KvError::NotMigrated { .. } | KvError::Full { .. } | KvError::Quota { .. } => false,
        }
    }
}

/// Where the rows are.
#[derive(Debug, Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool: the same statements (written with
/// `$n` parameters, which both engines accept) typed for each engine.
macro_rules! on_backend {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// What a namespace's write needs from its engine: a transaction that holds the namespace's
/// write lock from its start, and the engine's spelling of a value's length in bytes.
trait Engine {
    type Db: sqlx::Database;
    /// `<keys>, <bytes>, <bytes of $1>, <1 when $1 exists>` of the namespace `($2, $3)`.
    const USAGE: &'static str;
    async fn begin_namespace(
        &self,
        tenant: &str,
        skill: &str,
    ) -> Result<sqlx::Transaction<'static, Self::Db>, sqlx::Error>;
}

impl Engine for SqlitePool {
    type Db = sqlx::Sqlite;
    // A blob's length is read from its record header, not its pages.
    const USAGE: &'static str = "SELECT COUNT(*),
                CAST(COALESCE(SUM(length(CAST(key AS BLOB)) + length(value)), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN key = $1 THEN length(CAST(key AS BLOB)) + length(value) END), 0) AS BIGINT),
                CAST(COALESCE(MAX(CASE WHEN key = $1 THEN 1 ELSE 0 END), 0) AS BIGINT)
         FROM kv WHERE tenant = $2 AND skill = $3";

    async fn begin_namespace(&self, _: &str, _: &str) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl Engine for PgPool {
    type Db = sqlx::Postgres;
    const USAGE: &'static str = "SELECT COUNT(*),
                CAST(COALESCE(SUM(octet_length(key) + octet_length(value)), 0) AS BIGINT),
                CAST(COALESCE(SUM(CASE WHEN key = $1 THEN octet_length(key) + octet_length(value) END), 0) AS BIGINT),
                CAST(COALESCE(MAX(CASE WHEN key = $1 THEN 1 ELSE 0 END), 0) AS BIGINT)
         FROM kv WHERE tenant = $2 AND skill = $3";

    async fn begin_namespace(
        &self,
        tenant: &str,
        skill: &str,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let mut transaction = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))")
            .bind(KV_LOCK_CLASS)
            .bind(tenant)
            .bind(skill)
            .execute(&mut *transaction)
            .await?;
        Ok(transaction)
    }
}

/// [`Engine::USAGE`] of `pool`'s engine.
fn usage_sql<E: Engine>(_: &E) -> &'static str {
    E::USAGE
}

/// `(request digest, response)` of the journal row of `$effect`, on `$executor`.
macro_rules! journaled {
    ($executor:expr, $effect:expr) => {
        sqlx::query_as::<_, (String, Option<Vec<u8>>)>(
            "SELECT request_digest, response FROM effects WHERE idempotency_key = $1 AND seq = $2",
        )
        .bind($effect.idempotency_key)
        .bind(i64::from($effect.seq))
        .fetch_optional($executor)
        .await
    };
}

/// Stores the journal row of `$effect` with `$response` on `$executor`, replacing one of the
/// same `(idempotency key, seq)`.
macro_rules! record {
    ($executor:expr, $effect:expr, $response:expr) => {
        sqlx::query(
            "INSERT INTO effects (idempotency_key, seq, kind, request_digest, response, recorded_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (idempotency_key, seq) DO UPDATE SET kind = excluded.kind,
                 request_digest = excluded.request_digest, response = excluded.response,
                 recorded_at_ms = excluded.recorded_at_ms",
        )
        .bind($effect.idempotency_key)
        .bind(i64::from($effect.seq))
        .bind($effect.kind)
        .bind(&$effect.request_digest)
        .bind($response)
        .bind(now_ms())
        .execute($executor)
        .await
        .map(drop)
    };
}

/// The durable key-value store, shared by every invocation of a runtime. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KvStore {
    location: String,
    backend: Backend,
    ready: std::sync::Arc<OnceCell<()>>,
}

impl KvStore {
    /// A store backed by the SQLite file at `path` (created with its tables at first use).
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when `path` is not a usable SQLite location.
    pub fn open_lazy(path: &std::path::Path) -> Result<Self, KvError> {
        let location = path.display().to_string();
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{location}"))
            .map_err(|source| KvError::Database {
                location: location.clone(),
                source,
            })?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_lazy_with(options);
        Ok(KvStore {
            location,
            backend: Backend::Sqlite(pool),
            ready: std::sync::Arc::new(OnceCell::new()),
        })
    }

    /// A store in the PostgreSQL database at `url` (`postgres://user@host:port/database`,
    /// libpq's `options` parameter for a `search_path`), the one the control plane's nodes
    /// share. Connects at the first call; the tables must exist by then (the control plane's
    /// migrations create them), else that call fails with [`KvError::NotMigrated`].
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when `url` is not a PostgreSQL URL.
    pub fn connect_postgres(url: &str) -> Result<Self, KvError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| KvError::Database {
            location: "a PostgreSQL URL".to_owned(),
            source,
        })?;
        let location = control_plane::postgres_pool::location(&options);
        // The control plane's pool settings (8 connections; a transaction left open ended).
        let pool = control_plane::postgres_pool::pool_options().connect_lazy_with(options);
        Ok(KvStore {
            location,
            backend: Backend::Postgres(pool),
            ready: std::sync::Arc::new(OnceCell::new()),
        })
    }

    /// Where the rows are: the SQLite file or the PostgreSQL server (no password).
    pub fn location(&self) -> &str {
        &self.location
    }

    fn error(&self, source: sqlx::Error) -> KvError {
        KvError::Database {
            location: self.location.clone(),
            source,
        }
    }

    /// Creates the SQLite tables, or checks the PostgreSQL ones exist, once per store.
    async fn ready(&self) -> Result<(), KvError> {
        self.ready
            .get_or_try_init(|| async {
                match &self.backend {
                    Backend::Sqlite(pool) => sqlx::raw_sql(
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
                    .execute(pool)
                    .await
                    .map(drop)
                    .map_err(|source| self.error(source)),
                    Backend::Postgres(pool) => {
                        let migrated: bool = sqlx::query_scalar(
                            "SELECT to_regclass('kv') IS NOT NULL AND to_regclass('effects') IS NOT NULL",
                        )
                        .fetch_one(pool)
                        .await
                        .map_err(|source| self.error(source))?;
                        if migrated {
                            Ok(())
                        } else {
                            Err(KvError::NotMigrated {
                                location: self.location.clone(),
                            })
                        }
                    }
                }
            })
            .await
            .map(|_| ())
    }

    /// The value of `key` in the (tenant, skill) namespace.
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when the database cannot be read.
    pub async fn get(&self, tenant: &str, skill: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.ready().await?;
        on_backend!(&self.backend, pool => {
            sqlx::query_scalar("SELECT value FROM kv WHERE tenant = $1 AND skill = $2 AND key = $3")
                .bind(tenant)
                .bind(skill)
                .bind(key)
                .fetch_optional(pool)
                .await
        })
        .map_err(|source| self.error(source))
    }

    /// Stores `value` under `key` in the (tenant, skill) namespace, committed before it returns.
    ///
    /// # Errors
    ///
    /// [`KvError::Full`] for a new key in a full namespace, [`KvError::Quota`] past the byte
    /// quota, [`KvError::Database`] when the write failed (nothing is changed then).
    pub async fn set(&self, tenant: &str, skill: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.set_journaled(tenant, skill, key, value, None).await.map(drop)
    }

    /// [`KvStore::set`], exactly once per `effect`: when the journal already holds `effect`'s
    /// `(idempotency key, seq)` with the same request digest, nothing is written and `false` is
    /// returned; otherwise the value and the journal row commit in one transaction, under the
    /// namespace's write lock (so the journal check, the quota count and the write see one
    /// state, on every node).
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
        self.ready().await?;
        let outcome: Result<Result<bool, KvError>, sqlx::Error> = on_backend!(&self.backend, pool => async {
            let mut transaction = pool.begin_namespace(tenant, skill).await?;
            if let Some(effect) = effect
                && journaled!(&mut *transaction, effect)?
                    .is_some_and(|(digest, _)| digest == effect.request_digest)
            {
                return Ok(Ok(false));
            }
            // The namespace's keys, bytes, and the bytes of `key` if it exists, in one range
            // scan of the primary key.
            let (keys, used, existing, exists): (i64, i64, i64, i64) = sqlx::query_as(usage_sql(pool))
                .bind(key)
                .bind(tenant)
                .bind(skill)
                .fetch_one(&mut *transaction)
                .await?;
            if exists == 0 && keys >= MAX_KV_KEYS {
                return Ok(Err(KvError::Full {
                    tenant: tenant.to_owned(),
                    skill: skill.to_owned(),
                }));
            }
            let after = used - existing + i64::try_from(key.len() + value.len()).unwrap_or(i64::MAX);
            if after > MAX_KV_NAMESPACE_BYTES && after > used {
                return Ok(Err(KvError::Quota {
                    tenant: tenant.to_owned(),
                    skill: skill.to_owned(),
                    used,
                    after,
                }));
            }
            sqlx::query(
                "INSERT INTO kv (tenant, skill, key, value, updated_at_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (tenant, skill, key) DO UPDATE SET value = excluded.value, updated_at_ms = excluded.updated_at_ms",
            )
            .bind(tenant)
            .bind(skill)
            .bind(key)
            .bind(value)
            .bind(now_ms())
            .execute(&mut *transaction)
            .await?;
            if let Some(effect) = effect {
                record!(&mut *transaction, effect, None::<&[u8]>)?;
            }
            transaction.commit().await?;
            Ok(Ok(true))
        }
        .await);
        outcome.map_err(|source| self.error(source))?
    }

    /// Deletes `key` from the (tenant, skill) namespace, exactly once per `effect` as for
    /// [`KvStore::set_journaled`]: returns whether the key existed, and for an effect already
    /// journaled, the answer recorded then (nothing is deleted again).
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when the write failed (nothing is changed then).
    pub async fn delete_journaled(
        &self,
        tenant: &str,
        skill: &str,
        key: &str,
        effect: Option<&EffectId<'_>>,
    ) -> Result<bool, KvError> {
        self.ready().await?;
        on_backend!(&self.backend, pool => async {
            let mut transaction = pool.begin_namespace(tenant, skill).await?;
            if let Some(effect) = effect
                && let Some((digest, response)) = journaled!(&mut *transaction, effect)?
                && digest == effect.request_digest
            {
                return Ok(response.as_deref() == Some(&[1]));
            }
            let deleted = sqlx::query("DELETE FROM kv WHERE tenant = $1 AND skill = $2 AND key = $3")
                .bind(tenant)
                .bind(skill)
                .bind(key)
                .execute(&mut *transaction)
                .await?
                .rows_affected()
                > 0;
            if let Some(effect) = effect {
                record!(&mut *transaction, effect, Some(&[u8::from(deleted)][..]))?;
            }
            transaction.commit().await?;
            Ok(deleted)
        }
        .await)
        .map_err(|source| self.error(source))
    }

    /// Bytes (keys and values) and keys held by the (tenant, skill) namespace.
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when the database cannot be read.
    pub async fn usage(&self, tenant: &str, skill: &str) -> Result<(i64, i64), KvError> {
        self.ready().await?;
        let (keys, used, _, _): (i64, i64, i64, i64) = on_backend!(&self.backend, pool => {
            sqlx::query_as(usage_sql(pool))
                .bind("")
                .bind(tenant)
                .bind(skill)
                .fetch_one(pool)
                .await
        })
        .map_err(|source| self.error(source))?;
        Ok((used, keys))
    }

    /// What the journal holds for `effect`'s `(idempotency key, seq)`: the request digest and
    /// the response recorded, if any.
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when the journal cannot be read.
    pub async fn journaled(&self, effect: &EffectId<'_>) -> Result<Option<(String, Option<Vec<u8>>)>, KvError> {
        self.ready().await?;
        on_backend!(&self.backend, pool => journaled!(pool, effect)).map_err(|source| self.error(source))
    }

    /// Records that `effect` happened, with its `response`, committed before it returns
    /// (replacing an earlier row of the same `(idempotency key, seq)` with another digest: the
    /// guest asked for something else this time).
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when the row cannot be written.
    pub async fn record_effect(&self, effect: &EffectId<'_>, response: Option<&[u8]>) -> Result<(), KvError> {
        self.ready().await?;
        on_backend!(&self.backend, pool => record!(pool, effect, response)).map_err(|source| self.error(source))
    }

    /// Journal rows under idempotency key `key` (for tests and inspection).
    ///
    /// # Errors
    ///
    /// [`KvError::Database`] when the journal cannot be read.
    pub async fn effects_of(&self, key: &str) -> Result<Vec<(u32, String)>, KvError> {
        self.ready().await?;
        let rows: Vec<(i64, String)> = on_backend!(&self.backend, pool => {
            sqlx::query_as("SELECT seq, kind FROM effects WHERE idempotency_key = $1 ORDER BY seq")
                .bind(key)
                .fetch_all(pool)
                .await
        })
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

    /// A schema of its own on the test database (`AGENTD_TEST_DATABASE_URL`), migrated by the
    /// control plane as a node does, and the URL scoped to it; `None` without a database.
    async fn postgres_schema() -> Option<(String, tempfile::TempDir)> {
        let url = std::env::var("AGENTD_TEST_DATABASE_URL").ok()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let schema = format!(
            "agentd_kv_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let pool = PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!("CREATE SCHEMA {schema}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        let scoped = format!("{url}?options[search_path]={schema}");
        let keys = tempfile::tempdir().unwrap();
        control_plane::Store::open_postgres(&scoped, keys.path())
            .await
            .unwrap()
            .close()
            .await;
        Some((scoped, keys))
    }

    /// Drops the schema of `scoped` (a URL from [`postgres_schema`]).
    async fn drop_schema(scoped: &str) {
        let (url, schema) = scoped.split_once("?options[search_path]=").unwrap();
        let pool = PgPool::connect(url).await.unwrap();
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }

    /// Runs `test` against every store: SQLite, and PostgreSQL when a test database is set
    /// (its schema dropped afterwards).
    async fn on_every_store(test: impl AsyncFn(&KvStore)) {
        let dir = tempfile::tempdir().unwrap();
        test(&KvStore::open_lazy(&dir.path().join("kv.db")).unwrap()).await;
        if let Some((url, _keys)) = postgres_schema().await {
            let kv = KvStore::connect_postgres(&url).unwrap();
            test(&kv).await;
            if let Backend::Postgres(pool) = &kv.backend {
                pool.close().await;
            }
            drop_schema(&url).await;
        }
    }

    /// Review finding: kv had no total quota (10,000 keys of 1 MiB: 10 GB per tenant and skill)
    /// and no delete. The quota counts keys and values per namespace, is refused before
    /// anything is written, and deleting frees the space.
    #[tokio::test]
    async fn a_namespace_is_held_to_its_byte_quota_and_delete_frees_it() {
        on_every_store(namespace_quota).await;
    }

    async fn namespace_quota(kv: &KvStore) {
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
        on_every_store(delete_once).await;
    }

    async fn delete_once(kv: &KvStore) {
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

    /// Two nodes (two stores on one database) replaying the same journaled writes at once: each
    /// effect is written by exactly one of them, because the journal check and the write hold
    /// the namespace's lock. Without the lock both would find no journal row and both write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn nodes_sharing_postgres_write_each_journaled_effect_once() {
        let Some((url, _keys)) = postgres_schema().await else {
            return; // No database: `.ci/run` always sets one.
        };
        let nodes = [
            KvStore::connect_postgres(&url).unwrap(),
            KvStore::connect_postgres(&url).unwrap(),
        ];
        let mut tasks = tokio::task::JoinSet::new();
        for round in 0..4 {
            for (index, node) in nodes.iter().enumerate() {
                for step in 0..10 {
                    let node = node.clone();
                    tasks.spawn(async move {
                        let key = format!("acme/run-{step}/step-1");
                        let value = format!("from node {index}, round {round}");
                        let effect = EffectId {
                            idempotency_key: &key,
                            seq: 0,
                            kind: "kv-set",
                            request_digest: format!("sha256:step-{step}"),
                        };
                        node.set_journaled(
                            "acme",
                            "notes",
                            &format!("step-{step}"),
                            value.as_bytes(),
                            Some(&effect),
                        )
                        .await
                        .unwrap()
                    });
                }
            }
        }
        let written = tasks.join_all().await.into_iter().filter(|&wrote| wrote).count();
        assert_eq!(written, 10, "each of the 10 effects is written once, by one node");
        assert_eq!(nodes[1].usage("acme", "notes").await.unwrap().1, 10);
        for step in 0..10 {
            assert_eq!(
                nodes[0].effects_of(&format!("acme/run-{step}/step-1")).await.unwrap(),
                [(0, "kv-set".to_owned())]
            );
        }
        for node in &nodes {
            if let Backend::Postgres(pool) = &node.backend {
                pool.close().await;
            }
        }
        drop_schema(&url).await;
    }

    /// A connection handed back to the pool inside a transaction (a write whose future was
    /// dropped mid-way, a guest stopped at its deadline) is rolled back before it is used
    /// again: its uncommitted row is not read, and the next write commits for real.
    #[tokio::test]
    async fn a_connection_returned_inside_a_transaction_is_rolled_back_before_reuse() {
        let Some((url, _keys)) = postgres_schema().await else {
            return;
        };
        let kv = KvStore::connect_postgres(&url).unwrap();
        kv.set("acme", "notes", "kept", b"1").await.unwrap();
        let Backend::Postgres(pool) = &kv.backend else {
            unreachable!()
        };
        // Every connection the pool may hand out (at most 4) is left inside a transaction
        // holding an uncommitted row of its own; without the rollback, whichever of them the
        // next call gets counts that row.
        let mut connections = Vec::new();
        for n in 0..4 {
            let mut connection = pool.acquire().await.unwrap();
            sqlx::Executor::execute(
                &mut *connection,
                format!("BEGIN; INSERT INTO kv VALUES ('acme', 'notes', 'stale-{n}', '\\x00', 0)").as_str(),
            )
            .await
            .unwrap();
            connections.push(connection);
        }
        drop(connections);
        assert_eq!(
            kv.usage("acme", "notes").await.unwrap().1,
            1,
            "an uncommitted row was counted"
        );
        assert_eq!(kv.get("acme", "notes", "stale-0").await.unwrap(), None);
        kv.set("acme", "notes", "after", b"2").await.unwrap();
        let other = KvStore::connect_postgres(&url).unwrap();
        assert_eq!(
            other.get("acme", "notes", "after").await.unwrap().as_deref(),
            Some(&b"2"[..])
        );
        assert_eq!(other.usage("acme", "notes").await.unwrap().1, 2);
        for store in [&kv, &other] {
            if let Backend::Postgres(pool) = &store.backend {
                pool.close().await;
            }
        }
        drop_schema(&url).await;
    }

    /// A database no control plane migrated has no `kv` table: a typed error that says how to
    /// fix it, not retried.
    #[tokio::test]
    async fn an_unmigrated_postgres_database_is_refused_by_name() {
        let Ok(url) = std::env::var("AGENTD_TEST_DATABASE_URL") else {
            return;
        };
        let schema = format!("agentd_kv_bare_{}", std::process::id());
        let pool = PgPool::connect(&url).await.unwrap();
        sqlx::raw_sql(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let kv = KvStore::connect_postgres(&format!("{url}?options[search_path]={schema}")).unwrap();
        let error = kv.set("acme", "notes", "k", b"v").await.unwrap_err();
        assert!(matches!(error, KvError::NotMigrated { .. }), "{error}");
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("agentd serve --database"), "{error}");
        sqlx::raw_sql(&format!("DROP SCHEMA {schema} CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    }
}
