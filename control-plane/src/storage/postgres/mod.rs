//! The PostgreSQL backend (issue 14, ADR 0016): one database shared by every `agentd serve`
//! node, through sqlx.
//!
//! - The schema is applied by sqlx's migrator from `control-plane/migrations/postgres/`
//!   (compiled in), under sqlx's advisory lock, so nodes starting together apply it once. A
//!   database holding a migration this build does not know (a newer agentd) is refused.
//! - Write units lock what they decide on, not the whole database (ADR 0020): a run's row
//!   (`SELECT ... FOR UPDATE`) before its events and record are read, an approval's row before
//!   its votes, an advisory lock for an idempotency key or an agent's autonomy, in one order
//!   ([`LockKey`]) checked by every unit so no two can wait on each other. A claim skips a run
//!   another unit is writing (`FOR UPDATE SKIP LOCKED`). The audit log keeps a single ordered
//!   appender: its advisory lock ([`AUDIT_LOCK`]) is taken at commit, before the head is read,
//!   and held with the entry, the Merkle tree head and the anchor to the commit; it is the
//!   last lock of every unit. Every write unit holds [`WRITE_LOCK`] shared; the migration and
//!   [`Access::Exclusive`] units hold it alone. Reads take a `REPEATABLE READ READ ONLY`
//!   snapshot and never wait for writers. Dispatch (the guest's work) happens outside units,
//!   so nodes run guests in parallel.
//! - A commit returns when PostgreSQL made it durable (`synchronous_commit` as the server is
//!   configured; `on` by default), and its run events are then published on this node's feed.
//!   The unit also sends `NOTIFY` (delivered only if it commits) naming its events, and every
//!   other node's listener reads them and publishes them on its own feed: event streams on any
//!   node see commits made on every node. A listener that lost its connection misses what was
//!   sent meanwhile (PostgreSQL does not queue notifications for a closed session).
//!
//! Errors are classified by SQLSTATE (PostgreSQL's appendix A), never by message text.

mod rows;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Postgres, Transaction};

use super::table::{Cell, CellType, Table, plain_identifier};
use super::{Access, CommitHook, LockKey, LockOrder, RunFeed, Storage, UnitOfWork};
use crate::error::StoreError;
use crate::run::RunEvent;

/// The advisory lock key every write unit holds (`pg_advisory_xact_lock`): "agentd" in ASCII.
/// Shared by write units, which then lock what they touch ([`UnitOfWork::lock`]); exclusive
/// for [`Access::Exclusive`] units and the migration, which wait for every other writer.
pub(crate) const WRITE_LOCK: i64 = 0x6167_656e_7464;

/// The advisory lock of the audit log's single ordered appender ("audit" in ASCII): taken
/// before the head is read for an append and held until the commit (ADR 0020).
pub(crate) const AUDIT_LOCK: i64 = 0x61_7564_6974;

/// The first key of the two-key advisory locks of [`LockKey`]s that have no row to lock
/// ("lk"), the second being `hashtext` of the kind and key. Apart from agent-runtime's
/// key-value namespaces (`0x6b76`).
const KEY_LOCK_CLASS: i32 = 0x6c6b;

/// The migrations, oldest first: `(version, description, SQL)`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "state", include_str!("../../../migrations/postgres/0001_state.sql")),
    (
        2,
        "run event tokens",
        include_str!("../../../migrations/postgres/0002_run_event_tokens.sql"),
    ),
    (
        3,
        "skill store",
        include_str!("../../../migrations/postgres/0003_skill_store.sql"),
    ),
];

/// The newest migration this build applies.
pub(crate) const SCHEMA_VERSION: i64 = 3;

/// An open PostgreSQL state.
#[derive(Debug)]
pub(crate) struct PostgresStorage {
    pool: PgPool,
    location: String,
    feed: RunFeed,
    commits: Arc<AtomicU64>,
    notices: Arc<Notices>,
}

/// Where this store announces its committed run events, and how it knows its own.
#[derive(Debug)]
struct Notices {
    /// `agentd_run_events_<schema>`: one channel per schema, so states sharing a database do
    /// not hear each other.
    channel: String,
    /// A random id of this open store, first in every notice it sends.
    instance: String,
}

/// A unit of work: one PostgreSQL transaction. The run events it inserts are published on the
/// feed once, and only if, it commits.
pub(crate) struct PostgresUnit {
    transaction: Transaction<'static, Postgres>,
    inserted: Vec<RunEvent>,
    feed: RunFeed,
    /// Counts durable commits; `None` for a read unit.
    commits: Option<Arc<AtomicU64>>,
    notices: Arc<Notices>,
    /// The locks this unit holds, in order.
    locks: LockOrder,
    /// Audit appends to run at commit, under the audit log's lock.
    at_commit: Vec<CommitHook>,
}

impl PostgresStorage {
    /// Connects to `url` (`postgres://user@host:port/database`, with libpq's `options`
    /// parameter for a `search_path`), applies the migrations this build has, and anchors a
    /// fresh log: when the database holds no audit anchor, no tree state and no entry,
    /// `on_creation` is called (inside the write unit that stores its anchor) with the empty
    /// log's head. It is never called for a log that exists, so no later open re-anchors it.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the cause when the server cannot be reached or the
    /// migrations fail; [`StoreError::NewerSchema`] when a newer agentd migrated the database.
    pub(crate) async fn open(
        url: &str,
        on_creation: impl FnOnce((i64, String)) -> Result<crate::audit::Anchor, StoreError>,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|error| StoreError::Open {
            location: "a PostgreSQL URL".to_owned(),
            cause: Box::new(StoreError::Backend {
                detail: format!("not a PostgreSQL URL: {error}"),
            }),
        })?;
        let location = crate::postgres_pool::location(&options);
        let open_error = |error: sqlx::Error| StoreError::Open {
            location: location.clone(),
            cause: Box::new(classify(error)),
        };
        let pool = crate::postgres_pool::pool_options()
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&pool)
            .await
            .or_else(|error| match &error {
                // No migrations table yet: a new database.
                sqlx::Error::Database(database) if database.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(error),
            })
            .map_err(open_error)?;
        if let Some(found) = applied
            && found > SCHEMA_VERSION
        {
            return Err(StoreError::NewerSchema {
                location,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        migrator().run(&pool).await.map_err(|error| StoreError::Open {
            location: location.clone(),
            cause: Box::new(match error {
                sqlx::migrate::MigrateError::Execute(error) => classify(error),
                other => StoreError::Backend {
                    detail: other.to_string(),
                },
            }),
        })?;
        let schema: String = sqlx::query_scalar("SELECT current_schema()::TEXT")
            .fetch_one(&pool)
            .await
            .map_err(open_error)?;
        let mut instance = [0u8; 8];
        getrandom::fill(&mut instance).map_err(|error| StoreError::Open {
            location: location.clone(),
            cause: Box::new(StoreError::Backend {
                detail: format!("the random source failed: {error}"),
            }),
        })?;
        let notices = Arc::new(Notices {
            channel: format!("agentd_run_events_{schema}").chars().take(63).collect(),
            instance: instance.iter().map(|byte| format!("{byte:02x}")).collect(),
        });
        let feed = RunFeed::default();
        tokio::spawn(relay_notices(pool.clone(), Arc::clone(&notices), feed.clone()));
        let storage = PostgresStorage {
            pool,
            location,
            feed,
            commits: Arc::new(AtomicU64::new(0)),
            notices,
        };
        storage
            .anchor_if_fresh(on_creation)
            .await
            .map_err(|cause| StoreError::Open {
                location: storage.location.clone(),
                cause: Box::new(cause),
            })?;
        Ok(storage)
    }

    /// Stores the first anchor and the empty tree of a log that has neither, nor any entry.
    async fn anchor_if_fresh(
        &self,
        on_creation: impl FnOnce((i64, String)) -> Result<crate::audit::Anchor, StoreError>,
    ) -> Result<(), StoreError> {
        let mut unit = self.begin(Access::Exclusive).await?;
        let fresh =
            unit.anchor().await?.is_none() && unit.log_state().await?.is_none() && unit.audit_head().await?.is_none();
        if fresh {
            let anchor = on_creation((0, crate::audit::GENESIS_HASH.to_owned()))?;
            let state = crate::audit::LogState::new(crate::audit::merkle::Frontier::new()).map_err(|error| {
                StoreError::Backend {
                    detail: format!("the random source failed: {error}"),
                }
            })?;
            unit.put_anchor(&anchor).await?;
            unit.put_log_state(&state).await?;
            unit.commit().await?;
        }
        Ok(())
    }
}

impl PostgresStorage {
    /// A write unit as its own type, holding [`WRITE_LOCK`] exclusively (every other writer
    /// waits): what the migration writes tables through.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when no transaction can be begun or the lock taken.
    pub(crate) async fn begin_write(&self) -> Result<PostgresUnit, StoreError> {
        self.begin_writing(true).await
    }

    /// A write unit holding [`WRITE_LOCK`] shared (it locks what it touches), or exclusively.
    async fn begin_writing(&self, exclusive: bool) -> Result<PostgresUnit, StoreError> {
        // One round trip: `BEGIN` and the lock as one simple query.
        let statement = if exclusive {
            format!("BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")
        } else {
            format!("BEGIN; SELECT pg_advisory_xact_lock_shared({WRITE_LOCK})")
        };
        let transaction = self.pool.begin_with(statement).await.map_err(classify)?;
        Ok(PostgresUnit {
            transaction,
            inserted: Vec::new(),
            feed: self.feed.clone(),
            commits: Some(Arc::clone(&self.commits)),
            notices: Arc::clone(&self.notices),
            locks: if exclusive {
                LockOrder::exclusive()
            } else {
                LockOrder::default()
            },
            at_commit: Vec::new(),
        })
    }
}

impl PostgresUnit {
    /// The tables of the current schema (sqlx's own left out), with their columns and types.
    ///
    /// # Errors
    ///
    /// [`MigrateError::SchemaMismatch`](crate::error::MigrateError) for a column of a type
    /// the copy does not know; [`StoreError`] when the catalogue cannot be read.
    pub(crate) async fn tables(&mut self) -> Result<Vec<Table>, crate::error::MigrateError> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT table_name::TEXT, column_name::TEXT, data_type::TEXT, is_identity::TEXT
             FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name <> '_sqlx_migrations'
             ORDER BY table_name, ordinal_position",
        )
        .fetch_all(&mut *self.transaction)
        .await
        .map_err(classify)?;
        let mut tables: Vec<Table> = Vec::new();
        for (table, column, data_type, identity) in rows {
            let kind = match data_type.as_str() {
                "bigint" => CellType::Integer,
                "text" => CellType::Text,
                "bytea" => CellType::Bytes,
                other => {
                    return Err(crate::error::MigrateError::SchemaMismatch {
                        detail: format!(
                            "the target's `{table}.{column}` is of type {other}, which this build does not copy"
                        ),
                    });
                }
            };
            if !plain_identifier(&table) || !plain_identifier(&column) {
                return Err(crate::error::MigrateError::SchemaMismatch {
                    detail: format!("the target's `{table}.{column}` is not a name this build copies"),
                });
            }
            if tables.last().is_none_or(|last| last.name != table) {
                tables.push(Table {
                    name: table.clone(),
                    columns: Vec::new(),
                    identity: None,
                });
            }
            let last = tables.last_mut().expect("pushed above");
            if identity == "YES" {
                last.identity = Some(column.clone());
            }
            last.columns.push((column, kind));
        }
        Ok(tables)
    }

    /// How many rows `table` holds.
    pub(crate) async fn row_count(&mut self, table: &Table) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{}\"", table.name))
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// How many entries the stored anchor vouches for (0 without an anchor).
    pub(crate) async fn anchored_entries(&mut self) -> Result<i64, StoreError> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_anchor WHERE id = 1")
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(seq.unwrap_or(0))
    }

    /// Deletes every row of `table` (only the single-row tables a fresh open fills).
    pub(crate) async fn clear(&mut self, table: &Table) -> Result<(), StoreError> {
        sqlx::query(&format!("DELETE FROM \"{}\"", table.name))
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Inserts `rows` (values in `table`'s column order) in one statement.
    pub(crate) async fn insert_rows(&mut self, table: &Table, rows: Vec<Vec<Cell>>) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut builder =
            sqlx::QueryBuilder::<Postgres>::new(format!("INSERT INTO \"{}\" ({}) ", table.name, table.column_list()));
        builder.push_values(rows, |mut values, row| {
            for cell in row {
                match cell {
                    Cell::Integer(value) => values.push_bind(value),
                    Cell::Text(value) => values.push_bind(value),
                    Cell::Bytes(value) => values.push_bind(value),
                };
            }
        });
        builder
            .build()
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }

    /// Moves `table`'s identity sequence past the largest id stored, so the next insert does
    /// not collide with a copied row.
    pub(crate) async fn move_identity_past_rows(&mut self, table: &Table) -> Result<(), StoreError> {
        let Some(column) = &table.identity else { return Ok(()) };
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence($1, $2), MAX(\"{column}\")) FROM \"{}\" HAVING MAX(\"{column}\") IS NOT NULL",
            table.name
        ))
        .bind(format!("\"{}\"", table.name))
        .bind(column)
        .fetch_optional(&mut *self.transaction)
        .await
        .map_err(classify)?;
        Ok(())
    }
}

/// sqlx's migrator over [`MIGRATIONS`].
fn migrator() -> Migrator {
    Migrator {
        migrations: MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, description.into(), MigrationType::Simple, sql.into(), false)
            })
            .collect::<Vec<_>>()
            .into(),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn begin(&self, access: Access) -> Result<Box<dyn UnitOfWork>, StoreError> {
        match access {
            Access::Write => return Ok(Box::new(self.begin_writing(false).await?)),
            Access::Exclusive => return Ok(Box::new(self.begin_writing(true).await?)),
            Access::Read => {}
        }
        let transaction = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(classify)?;
        Ok(Box::new(PostgresUnit {
            transaction,
            inserted: Vec::new(),
            feed: self.feed.clone(),
            commits: None,
            notices: Arc::clone(&self.notices),
            locks: LockOrder::default(),
            at_commit: Vec::new(),
        }))
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn feed(&self) -> &RunFeed {
        &self.feed
    }

    /// PostgreSQL makes each commit durable itself (and shares WAL flushes among concurrent
    /// commits, invisibly to a client): reported as one flush per commit.
    async fn close(&self) {
        self.pool.close().await;
    }

    fn commit_stats(&self) -> crate::storage::CommitStats {
        // Every unit is a transaction of its own, made durable by the server's WAL flush.
        let commits = self.commits.load(Ordering::Relaxed);
        crate::storage::CommitStats {
            commits,
            transactions: commits,
            fsyncs: commits,
        }
    }
}

#[async_trait]
impl UnitOfWork for PostgresUnit {
    async fn commit(mut self: Box<Self>) -> Result<(), StoreError> {
        if !self.inserted.is_empty() {
            // `<instance>` then one `<run id> <lamport>` line per event; sent at COMMIT only.
            let mut payload = self.notices.instance.clone();
            for event in &self.inserted {
                payload.push_str(&format!("\n{} {}", event.run_id, event.lamport));
            }
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.notices.channel)
                .bind(payload)
                .execute(&mut *self.transaction)
                .await
                .map_err(classify)?;
        }
        // The audit appends last: the log's lock (taken by the first append's read of the
        // head) is then held only from here to the commit.
        for append in std::mem::take(&mut self.at_commit) {
            append(&mut *self).await?;
        }
        let PostgresUnit {
            transaction,
            inserted,
            feed,
            commits,
            ..
        } = *self;
        transaction.commit().await.map_err(classify)?;
        if let Some(commits) = commits {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        feed.publish(inserted);
        Ok(())
    }

    async fn lock(&mut self, key: LockKey<'_>) -> Result<(), StoreError> {
        if !self.locks.admit(&key)? {
            return Ok(());
        }
        let query = match key {
            // Rows that exist: a row lock, which a claim's `SKIP LOCKED` sees.
            LockKey::Run(run_id) => sqlx::query("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE").bind(run_id),
            LockKey::Approval(id) => sqlx::query("SELECT 1 FROM approvals WHERE id = $1 FOR UPDATE").bind(id),
            // A binding or a count that may not have a row yet: an advisory lock on its name.
            LockKey::RequestKey { .. } | LockKey::Autonomy { .. } => {
                sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
                    .bind(KEY_LOCK_CLASS)
                    .bind(format!("{}\u{1f}{}", key.rank(), key.text()))
            }
        };
        query.execute(&mut *self.transaction).await.map_err(classify)?;
        Ok(())
    }

    async fn try_lock_run(&mut self, run_id: &str) -> Result<bool, StoreError> {
        let key = LockKey::Run(run_id);
        if !self.locks.admit(&key)? {
            return Ok(true);
        }
        let locked = sqlx::query("SELECT 1 FROM runs WHERE run_id = $1 FOR UPDATE SKIP LOCKED")
            .bind(run_id)
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        if locked.is_some() {
            return Ok(true);
        }
        // No row locked: somebody holds it, or there is no such run (then nobody can hold it,
        // and the caller finds that out by reading).
        let exists = sqlx::query("SELECT 1 FROM runs WHERE run_id = $1")
            .bind(run_id)
            .fetch_optional(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(exists.is_none())
    }

    async fn at_commit(&mut self, append: CommitHook) -> Result<(), StoreError> {
        self.at_commit.push(append);
        Ok(())
    }
}

impl PostgresUnit {
    /// Takes the audit log's lock unless held: before the head is read for an append.
    pub(crate) async fn lock_audit(&mut self) -> Result<(), StoreError> {
        if self.commits.is_none() || !self.locks.admit_audit() {
            return Ok(());
        }
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(AUDIT_LOCK)
            .execute(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(())
    }
}

/// Listens on `notices.channel` and publishes on `feed` the run events other stores (other
/// nodes) committed; ends when the pool closes. After a lost connection it listens again on a
/// new one and then reports a gap on the feed: notices sent while no session listened are
/// gone (PostgreSQL keeps none for a closed session), so live views read the store again.
async fn relay_notices(pool: PgPool, notices: Arc<Notices>, feed: RunFeed) {
    let mut first = true;
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(sqlx::Error::PoolClosed) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for other nodes' run events");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(&notices.channel).await {
            tracing::warn!(%error, "cannot listen for other nodes' run events");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if !std::mem::take(&mut first) {
            tracing::info!("listening for other nodes' run events again; live views read the store");
            feed.gap();
        }
        loop {
            let notice = match listener.try_recv().await {
                Ok(Some(notice)) => notice,
                // The connection dropped (and `PgListener` may have listened again already):
                // listen on a new one, then report the gap, whatever it missed meanwhile.
                Ok(None) => break,
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    tracing::warn!(%error, "lost the other nodes' run events; listening again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            };
            relay(&pool, &notices, &feed, notice.payload()).await;
        }
    }
}

/// Publishes on `feed` the events a notice of another store names.
async fn relay(pool: &PgPool, notices: &Notices, feed: &RunFeed, payload: &str) {
    let mut lines = payload.lines();
    if lines.next() == Some(notices.instance.as_str()) {
        return; // Published by this store already, after its own commit.
    }
    for line in lines {
        let Some((run_id, lamport)) = line.split_once(' ') else {
            continue;
        };
        let Ok(lamport) = lamport.parse::<u64>() else { continue };
        match read_event(pool, run_id, lamport).await {
            Ok(Some(event)) => feed.publish(vec![event]),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, run_id, lamport, "cannot read another node's run event"),
        }
    }
}

/// Run event `lamport` of `run_id`, if stored.
async fn read_event(pool: &PgPool, run_id: &str, lamport: u64) -> Result<Option<RunEvent>, StoreError> {
    let row = sqlx::query(&format!(
        "{} WHERE run_id = $1 AND lamport = $2",
        crate::storage::columns::RUN_EVENT_COLUMNS
    ))
    .bind(run_id)
    .bind(crate::storage::columns::signed(lamport))
    .fetch_optional(pool)
    .await
    .map_err(classify)?;
    row.as_ref().map(crate::storage::columns::run_event).transpose()
}

/// Classifies a sqlx error by SQLSTATE (the rest as every backend does).
pub(crate) fn classify(error: sqlx::Error) -> StoreError {
    super::classify_with(error, |detail, code| {
        match (code.get(..2).unwrap_or(""), code) {
            // serialization_failure, deadlock_detected, lock_not_available, and the
            // connection and operator-intervention classes: try again.
            (_, "40001" | "40P01" | "55P03") | ("08" | "57", _) => StoreError::Busy { detail },
            (_, "53100") => StoreError::Full { detail },
            (_, "25006") => StoreError::ReadOnly { detail },
            (_, "XX001" | "XX002") => StoreError::Corrupt { detail },
            ("53" | "58", _) => StoreError::Io { detail },
            ("23", _) => StoreError::Constraint { detail },
            _ => StoreError::Backend { detail },
        }
    })
}

crate::storage::columns::impl_columns!(sqlx::postgres::PgRow, classify);
