//! The SQLite backend: one file through sqlx, WAL journal, foreign keys on, writers serialised
//! by `BEGIN IMMEDIATE`. A write unit's commit returns once it is durable (fsynced), and
//! concurrent commits share fsyncs ([`durable`]: `synchronous=NORMAL` plus a group-commit
//! barrier, as durable as `synchronous=FULL` on return).
//!
//! Errors are classified by SQLite's result code (`sqlite3_extended_errcode`, of which the low
//! byte is the primary code), never by message text.

mod audit;
mod durable;
mod schema;
mod writer;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool, Transaction};

use super::{Access, CommitHook, LockKey, LockOrder, RunFeed, Storage, UnitOfWork};
use crate::error::StoreError;
use crate::run::RunEvent;
use durable::GroupCommit;
use writer::{Lent, Writer};

pub(crate) use schema::SCHEMA_VERSION;

/// An open SQLite state file.
#[derive(Debug)]
pub(crate) struct SqliteStorage {
    pool: SqlitePool,
    location: String,
    feed: RunFeed,
    group: Arc<GroupCommit>,
    /// The one connection write units run on ([`writer`]); `None` for a read-only open.
    writer: Option<Writer>,
}

/// A unit of work: a read snapshot, or a write unit inside the writer's shared transaction
/// ([`writer`]). The run events it inserts are published on the feed once, and only if, it
/// commits.
pub(crate) struct SqliteUnit {
    transaction: UnitConnection,
    inserted: Vec<RunEvent>,
    feed: RunFeed,
    /// The barrier a write unit's commit waits on; `None` for a read unit.
    group: Option<Arc<GroupCommit>>,
    /// The locks the unit asked for: SQLite serialises write units whole, so they are only
    /// checked against the lock order, for the backends that take them.
    locks: LockOrder,
}

/// What a unit's statements run on.
enum UnitConnection {
    /// A transaction of its own: a read snapshot, or the schema migration at open.
    Own(Transaction<'static, Sqlite>),
    /// The writer's connection, inside the unit's savepoint.
    Lent(Lent),
}

impl std::ops::Deref for UnitConnection {
    type Target = sqlx::SqliteConnection;
    fn deref(&self) -> &sqlx::SqliteConnection {
        match self {
            UnitConnection::Own(transaction) => transaction,
            UnitConnection::Lent(lent) => lent,
        }
    }
}

impl std::ops::DerefMut for UnitConnection {
    fn deref_mut(&mut self) -> &mut sqlx::SqliteConnection {
        match self {
            UnitConnection::Own(transaction) => transaction,
            UnitConnection::Lent(lent) => lent,
        }
    }
}

impl SqliteUnit {
    fn new(transaction: UnitConnection, feed: RunFeed, group: Option<Arc<GroupCommit>>) -> Self {
        SqliteUnit {
            transaction,
            inserted: Vec::new(),
            feed,
            group,
            locks: LockOrder::default(),
        }
    }
}

impl SqliteStorage {
    /// Opens (creating if needed) the file at `path` and brings its schema up to
    /// [`SCHEMA_VERSION`], in one transaction: a crash leaves the old schema, never half of it.
    ///
    /// When the file is new or older than [`SCHEMA_VERSION`], `on_creation` is called inside
    /// that transaction with what is being created and the log's head (`(0, GENESIS_HASH)` when
    /// empty); the anchor it returns is stored with the schema. It is never called for a file
    /// of schema 3 or later (the schema that stores the anchor), so no later open can re-anchor
    /// a log.
    pub(crate) async fn open(
        path: &Path,
        durability: crate::storage::Durability,
        on_creation: impl FnOnce(Creation, (i64, String)) -> Result<Option<crate::audit::Anchor>, StoreError>,
    ) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let feed = RunFeed::default();
        let group = Arc::new(GroupCommit::for_database(path, durability));
        let open_error = |error: sqlx::Error| StoreError::Open {
            location: location.clone(),
            cause: Box::new(read_only_or(path, classify(error))),
        };
        // Every tenant's inputs and audit payloads live here: create the file private (0600)
        // before SQLite does, which would use the umask (0644); its `-wal` and `-shm` files
        // take the database file's mode.
        create_private(path).map_err(|error| StoreError::Open {
            location: location.clone(),
            cause: Box::new(match error.kind() {
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => StoreError::Full {
                    detail: error.to_string(),
                },
                std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => StoreError::ReadOnly {
                    detail: error.to_string(),
                },
                _ => StoreError::Io {
                    detail: error.to_string(),
                },
            }),
        })?;
        // A file or directory that cannot be written is said so now. SQLite would find out
        // only at the first real write when an earlier process left a writable WAL beside an
        // unwritable database, so whether `open` failed depended on how that process exited.
        if let Some(candidate) = unwritable(path) {
            return Err(StoreError::Open {
                location,
                cause: Box::new(StoreError::ReadOnly {
                    detail: format!("{} cannot be written", candidate.display()),
                }),
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Under group commit, commits are made durable by the barrier (`durable`), not
            // inside COMMIT.
            .synchronous(match durability {
                crate::storage::Durability::GroupCommit => SqliteSynchronous::Normal,
                crate::storage::Durability::FsyncEachCommit => SqliteSynchronous::Full,
            })
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
            .map_err(open_error)?;
        let mut transaction = pool.begin_with("BEGIN IMMEDIATE").await.map_err(open_error)?;
        let found: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&mut *transaction)
            .await
            .map_err(open_error)?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                location,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let had_anchor_table: bool =
            sqlx::query_scalar("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'audit_anchor'")
                .fetch_one(&mut *transaction)
                .await
                .map_err(open_error)?;
        let version_pragma = format!("PRAGMA user_version = {SCHEMA_VERSION}");
        let mut statements: Vec<&str> = vec![schema::AUDIT_SCHEMA];
        if found < SCHEMA_VERSION {
            let has_v1_approvals: bool = sqlx::query_scalar(
                "SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'approvals'",
            )
            .fetch_one(&mut *transaction)
            .await
            .map_err(open_error)?;
            let migrate = found == 1 && has_v1_approvals;
            if migrate {
                statements.push(schema::MIGRATE_1_TO_2);
            }
            statements.push(schema::APPROVALS_SCHEMA);
            if migrate {
                statements.push(schema::MIGRATE_1_TO_2_COPY);
            }
            statements.push(schema::SCHEMA_3);
            statements.push(schema::SCHEMA_4);
            let has_tokens: bool = sqlx::query_scalar(
                "SELECT COUNT(*) > 0 FROM pragma_table_info('run_events') WHERE name = 'fencing_token'",
            )
            .fetch_one(&mut *transaction)
            .await
            .map_err(open_error)?;
            if !has_tokens {
                statements.push(schema::SCHEMA_5);
            }
            statements.push(&version_pragma);
        }
        for statement in statements {
            sqlx::raw_sql(statement)
                .execute(&mut *transaction)
                .await
                .map_err(open_error)?;
        }
        let mut unit = SqliteUnit::new(UnitConnection::Own(transaction), feed.clone(), None);
        // Schema 3 -> 4 only adds a table: the anchor and the run records stay as they are.
        if found < 3 {
            let creation = if found == 0 {
                Creation::Fresh
            } else if had_anchor_table {
                Creation::Upgrade
            } else {
                Creation::PreAnchor
            };
            let wrap = |cause: StoreError| StoreError::Open {
                location: location.clone(),
                cause: Box::new(cause),
            };
            use crate::storage::AuditRows;
            let head = unit
                .audit_head()
                .await
                .map_err(wrap)?
                .unwrap_or_else(|| (0, crate::audit::GENESIS_HASH.to_owned()));
            if let Some(anchor) = on_creation(creation, head).map_err(wrap)? {
                unit.put_anchor(&anchor).await.map_err(wrap)?;
            }
            backfill_schema_3(&mut unit).await.map_err(wrap)?;
        }
        let UnitConnection::Own(transaction) = unit.transaction else {
            unreachable!("the migration runs in a transaction of its own")
        };
        transaction.commit().await.map_err(open_error)?;
        group.durable().await.map_err(|cause| StoreError::Open {
            location: location.clone(),
            cause: Box::new(cause),
        })?;
        let writer = Writer::start(&options).await.map_err(open_error)?;
        Ok(SqliteStorage {
            pool,
            location,
            feed,
            group,
            writer: Some(writer),
        })
    }

    /// Opens the file at `path` read-only, for inspection and verification: nothing is created,
    /// migrated or written, and a file on read-only storage (or a read-only copy) opens too.
    pub(crate) async fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_file_read_only(path, true).await
    }

    /// Opens another SQLite file read-only as [`open_read_only`](Self::open_read_only) does,
    /// without asking for a state's schema: the skills' key-value store and effects journal
    /// (`kv.db`), which `agentd migrate` copies beside the state.
    pub(crate) async fn open_skill_store_read_only(path: &Path) -> Result<Self, StoreError> {
        Self::open_file_read_only(path, false).await
    }

    async fn open_file_read_only(path: &Path, state: bool) -> Result<Self, StoreError> {
        let location = path.display().to_string();
        let open_error = |error: sqlx::Error| StoreError::Open {
            location: location.clone(),
            cause: Box::new(classify(error)),
        };
        if !path.is_file() {
            return Err(StoreError::Open {
                location: location.clone(),
                cause: Box::new(StoreError::Io {
                    detail: "no such file".to_owned(),
                }),
            });
        }
        // `immutable` tells SQLite nothing changes the file while it is open, so it needs no
        // lock, `-shm` or `-wal` to be writable: a read-only directory or medium works.
        let directory = directory_of(path);
        let mut options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        // Read-only by its mode bits (which root ignores, so a copy made read-only for
        // inspection stays untouched even then) or by what the kernel says (the immutable
        // attribute, a read-only mount).
        let read_only = |path: &Path| {
            std::fs::metadata(path).is_ok_and(|metadata| metadata.permissions().readonly()) || !writable(path)
        };
        if read_only(directory) || read_only(path) {
            options = options.immutable(true);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let found: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&pool)
            .await
            .map_err(open_error)?;
        // The skill store has no state schema to check: its tables are read by name, and their
        // columns checked against the target's by the copy.
        if state && found < SCHEMA_VERSION {
            return Err(StoreError::Open {
                location: path.display().to_string(),
                cause: Box::new(StoreError::Backend {
                    detail: format!(
                        "schema version {found} must be migrated before it can be read; open it writable once"
                    ),
                }),
            });
        }
        if state && found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                location,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Ok(SqliteStorage {
            pool,
            location,
            feed: RunFeed::default(),
            group: Arc::new(GroupCommit::for_database(
                path,
                crate::storage::Durability::FsyncEachCommit,
            )),
            writer: None,
        })
    }
}

impl SqliteStorage {
    /// A read unit as its own type (one snapshot): what [`Storage::begin`] gives for reading,
    /// and what the migration reads tables through.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when no transaction can be begun.
    pub(crate) async fn begin_read(&self) -> Result<SqliteUnit, StoreError> {
        let transaction = self.pool.begin().await.map_err(classify)?;
        Ok(SqliteUnit::new(
            UnitConnection::Own(transaction),
            self.feed.clone(),
            None,
        ))
    }
}

impl SqliteUnit {
    /// The names of the tables agentd made (SQLite's own `sqlite_*` tables left out).
    pub(crate) async fn table_names(&mut self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name")
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    /// How many rows `table` holds (a name from [`table_names`](Self::table_names)).
    pub(crate) async fn row_count(&mut self, table: &crate::storage::table::Table) -> Result<u64, StoreError> {
        if !crate::storage::table::plain_identifier(&table.name) {
            return Err(StoreError::Backend {
                detail: format!("`{}` is not a table this build copies", table.name),
            });
        }
        let count: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM \"{}\"", table.name))
            .fetch_one(&mut *self.transaction)
            .await
            .map_err(classify)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The column names of `table`; empty when there is no such table.
    pub(crate) async fn column_names(&mut self, table: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT name FROM pragma_table_info(?) ORDER BY cid")
            .bind(table)
            .fetch_all(&mut *self.transaction)
            .await
            .map_err(classify)
    }

    /// Up to `limit` rows of `table` after rowid `after`, in rowid order, each with its rowid
    /// and its values in `table`'s column order, read as the column's type. A `WITHOUT ROWID`
    /// table's rows are numbered in primary-key order instead (`after` then counts the rows
    /// already read; call it within one read unit).
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] naming the table and column of a value that is not of its
    /// column's type; [`StoreError::Backend`] for a table name that is not a plain identifier.
    pub(crate) async fn table_page(
        &mut self,
        table: &crate::storage::table::Table,
        after: i64,
        limit: i64,
    ) -> Result<Vec<(i64, Vec<crate::storage::table::Cell>)>, StoreError> {
        use crate::storage::table::{Cell, CellType, plain_identifier};
        use sqlx::Row;
        if !plain_identifier(&table.name) || !table.columns.iter().all(|(name, _)| plain_identifier(name)) {
            return Err(StoreError::Backend {
                detail: format!("`{}` is not a table this build copies", table.name),
            });
        }
        // A `WITHOUT ROWID` table (the skills' `kv` and `effects`) is paged in its primary
        // key's order, its rows numbered from 1 in that order in place of a rowid; one read
        // transaction keeps the numbering stable from page to page.
        let without_rowid: bool =
            sqlx::query_scalar("SELECT COUNT(*) > 0 FROM pragma_table_list WHERE name = ? AND wr = 1")
                .bind(&table.name)
                .fetch_one(&mut *self.transaction)
                .await
                .map_err(classify)?;
        let rows = if without_rowid {
            let key: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?) WHERE pk > 0 ORDER BY pk")
                .bind(&table.name)
                .fetch_all(&mut *self.transaction)
                .await
                .map_err(classify)?;
            if !key.iter().all(|name| plain_identifier(name)) {
                return Err(StoreError::Backend {
                    detail: format!("the primary key of `{}` is not one this build pages", table.name),
                });
            }
            let skipped = after.max(0);
            let sql = format!(
                // The window is numbered before LIMIT and OFFSET apply: a row's position in
                // the whole table.
                "SELECT ROW_NUMBER() OVER (ORDER BY {key}), {} FROM \"{}\" ORDER BY {key} LIMIT ? OFFSET ?",
                table.column_list(),
                table.name,
                key = key
                    .iter()
                    .map(|name| format!("\"{name}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            sqlx::query(&sql)
                .bind(limit)
                .bind(skipped)
                .fetch_all(&mut *self.transaction)
                .await
                .map_err(classify)?
        } else {
            let sql = format!(
                "SELECT rowid, {} FROM \"{}\" WHERE rowid > ? ORDER BY rowid LIMIT ?",
                table.column_list(),
                table.name
            );
            sqlx::query(&sql)
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *self.transaction)
                .await
                .map_err(classify)?
        };
        rows.iter()
            .map(|row| {
                let rowid: i64 = row.try_get(0).map_err(classify)?;
                let cells = table
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(index, (name, kind))| {
                        let wrong = |error: sqlx::Error| StoreError::Corrupt {
                            detail: format!("`{}.{name}` of row {rowid}: {error}", table.name),
                        };
                        Ok(match kind {
                            CellType::Integer => Cell::Integer(row.try_get(index + 1).map_err(wrong)?),
                            CellType::Text => Cell::Text(row.try_get(index + 1).map_err(wrong)?),
                            CellType::Bytes => Cell::Bytes(row.try_get(index + 1).map_err(wrong)?),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                Ok((rowid, cells))
            })
            .collect()
    }
}

/// What [`SqliteStorage::open`] is creating, for its `on_creation` hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Creation {
    /// A new file: its empty log gets its first anchor.
    Fresh,
    /// A file older than the audit anchor (schema 1 as agentd 0.1 wrote it): its log is
    /// anchored where it stands, once, by this migration.
    PreAnchor,
    /// A file that already had an anchor table: whatever anchor it holds (or lacks) is kept.
    Upgrade,
}

/// Schema 2 -> 3: each run's record from its events (no owner: recovery picks up the unfinished
/// ones), and the audit log's identity and tree frontier from its entries.
async fn backfill_schema_3(unit: &mut SqliteUnit) -> Result<(), StoreError> {
    use crate::storage::{AuditRows, RunRows};
    for run_id in unit.run_ids().await? {
        let events = unit.run_events(&run_id).await?;
        let view = crate::run::reduce(&events).map_err(StoreError::corrupt)?;
        let record = crate::run::RunRecord {
            run_id: run_id.clone(),
            tenant: view.tenant.clone(),
            state: view.state,
            owner: None,
            lease_expires_at_ms: 0,
            fencing_token: 0,
            deadline_ms: view.deadline_ms,
            approval_id: view.current_step().and_then(|step| step.approval_id),
        };
        unit.put_run_record(&record).await?;
    }
    if unit.log_state().await?.is_none() {
        let mut frontier = crate::audit::merkle::Frontier::new();
        for entry in unit.audit_entries().await? {
            frontier.push(crate::audit::merkle::entry_leaf(&entry.hash).map_err(StoreError::corrupt)?);
        }
        let state = crate::audit::LogState::new(frontier).map_err(|error| StoreError::Backend {
            detail: format!("the random source failed: {error}"),
        })?;
        unit.put_log_state(&state).await?;
    }
    Ok(())
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn begin(&self, access: Access) -> Result<Box<dyn UnitOfWork>, StoreError> {
        if access == Access::Read {
            return Ok(Box::new(self.begin_read().await?));
        }
        let connection = match &self.writer {
            Some(writer) => UnitConnection::Lent(writer.lend().await?),
            // Opened read-only: SQLite refuses the first write, naming why.
            None => UnitConnection::Own(self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(classify)?),
        };
        let mut unit = SqliteUnit::new(connection, self.feed.clone(), Some(Arc::clone(&self.group)));
        if access == Access::Exclusive {
            unit.locks = LockOrder::exclusive();
        }
        Ok(Box::new(unit))
    }

    fn location(&self) -> &str {
        &self.location
    }

    fn feed(&self) -> &RunFeed {
        &self.feed
    }

    async fn close(&self) {
        // Fold the WAL in while a connection is still open (the last connection's close does
        // it too, when it is the last in any process). PASSIVE waits for no other process's
        // readers or writers (an `agentd serve` beside this command); what it cannot copy now,
        // and any error, only leaves frames in the WAL for the next checkpoint.
        if let Some(writer) = &self.writer {
            writer.close().await;
        }
        let _ = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.pool).await;
        self.pool.close().await;
    }

    fn commit_stats(&self) -> crate::storage::CommitStats {
        let (commits, fsyncs) = self.group.stats();
        crate::storage::CommitStats {
            commits,
            // Without a writer (read-only), every commit was its own transaction.
            transactions: self.writer.as_ref().map_or(commits, Writer::transactions),
            fsyncs,
        }
    }
}

#[async_trait]
impl UnitOfWork for SqliteUnit {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let SqliteUnit {
            transaction,
            inserted,
            feed,
            group,
            ..
        } = *self;
        match transaction {
            UnitConnection::Own(transaction) => transaction.commit().await.map_err(classify)?,
            UnitConnection::Lent(lent) => lent.release().await?,
        }
        if let Some(group) = group {
            group.durable().await?;
        }
        feed.publish(inserted);
        Ok(())
    }

    async fn lock(&mut self, key: LockKey<'_>) -> Result<(), StoreError> {
        self.locks.admit(&key).map(drop)
    }

    async fn try_lock_run(&mut self, run_id: &str) -> Result<bool, StoreError> {
        self.locks.admit(&LockKey::Run(run_id))?;
        Ok(true)
    }

    /// Runs `append` now: the unit holds the database's one write lock already. On
    /// PostgreSQL it runs at commit, after every other lock, so here it leaves the lock order
    /// as it found it.
    async fn at_commit(&mut self, append: CommitHook) -> Result<(), StoreError> {
        let audit = self.locks.audit;
        let appended = append(self).await;
        self.locks.audit = audit;
        appended
    }
}

/// SQLite primary result codes (<https://www.sqlite.org/rescode.html>).
mod code {
    pub(super) const BUSY: i64 = 5;
    pub(super) const LOCKED: i64 = 6;
    pub(super) const NOMEM: i64 = 7;
    pub(super) const READONLY: i64 = 8;
    pub(super) const IOERR: i64 = 10;
    pub(super) const CORRUPT: i64 = 11;
    pub(super) const FULL: i64 = 13;
    pub(super) const CANTOPEN: i64 = 14;
    pub(super) const CONSTRAINT: i64 = 19;
    pub(super) const NOTADB: i64 = 26;
}

/// The directory holding `path` (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Whether this process may write `path`, as the kernel decides (`access(2)`): mode bits, the
/// immutable attribute (which binds root too) and read-only mounts all count.
fn writable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        rustix::fs::access(path, rustix::fs::Access::WRITE_OK).is_ok()
    }
    #[cfg(not(unix))]
    {
        std::fs::metadata(path).is_ok_and(|metadata| !metadata.permissions().readonly())
    }
}

/// `error`, or [`StoreError::ReadOnly`] when the file at `path` or its directory cannot be
/// written (mode, immutable attribute, read-only medium): SQLite reports a directory it cannot
/// create its `-wal` and `-shm` files in as "unable to open database file", naming no cause.
fn read_only_or(path: &Path, error: StoreError) -> StoreError {
    if !matches!(error, StoreError::Io { .. } | StoreError::Backend { .. }) {
        return error;
    }
    match unwritable(path) {
        Some(candidate) => StoreError::ReadOnly {
            detail: format!("{} cannot be written", candidate.display()),
        },
        None => error,
    }
}

/// The database file at `path` or its directory, whichever cannot be written, if either.
fn unwritable(path: &Path) -> Option<&Path> {
    [path, directory_of(path)]
        .into_iter()
        .find(|candidate| !writable(candidate))
}

/// Classifies a sqlx error by SQLite's result code (the rest as every backend does).
pub(crate) fn classify(error: sqlx::Error) -> StoreError {
    super::classify_with(error, |detail, code| {
        let primary = code.parse::<i64>().map_or(0, |code| code & 0xff);
        match primary {
            code::BUSY | code::LOCKED => StoreError::Busy { detail },
            code::FULL => StoreError::Full { detail },
            code::READONLY => StoreError::ReadOnly { detail },
            code::CORRUPT | code::NOTADB => StoreError::Corrupt { detail },
            code::IOERR | code::CANTOPEN | code::NOMEM => StoreError::Io { detail },
            code::CONSTRAINT => StoreError::Constraint { detail },
            _ => StoreError::Backend { detail },
        }
    })
}

crate::storage::columns::impl_columns!(sqlx::sqlite::SqliteRow, classify);
crate::storage::rows::impl_rows!(SqliteUnit);

/// Creates an empty file at `path` with mode 0600 unless something is there already.
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_are_classified_by_result_code_not_message() {
        let dir = tempfile::tempdir().unwrap();
        let storage = SqliteStorage::open(
            &dir.path().join("state.db"),
            crate::storage::Durability::GroupCommit,
            |_, _| Ok(None),
        )
        .await
        .unwrap();
        // A trigger's RAISE(ABORT) is SQLITE_CONSTRAINT_TRIGGER: a constraint, not retryable.
        sqlx::raw_sql("INSERT INTO audit VALUES (1, 0, 'k', 't', 'p', '{}', 'a', 'b')")
            .execute(&storage.pool)
            .await
            .unwrap();
        let error = classify(
            sqlx::query("DELETE FROM audit")
                .execute(&storage.pool)
                .await
                .unwrap_err(),
        );
        assert!(matches!(error, StoreError::Constraint { .. }), "{error:?}");
        assert!(!error.is_retryable());
        // A second writer while the first holds the lock, with no busy timeout: busy, retryable.
        let mut holder = storage.pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        sqlx::query("INSERT INTO audit_anchor VALUES (1, 0, 'h', 'm')")
            .execute(&mut *holder)
            .await
            .unwrap();
        let impatient = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::new()
                    .filename(dir.path().join("state.db"))
                    .busy_timeout(Duration::ZERO),
            )
            .await
            .unwrap();
        let error = classify(impatient.begin_with("BEGIN IMMEDIATE").await.map(drop).unwrap_err());
        assert!(matches!(error, StoreError::Busy { .. }), "{error:?}");
        assert!(error.is_retryable());
        drop(holder);
        // A file that is not a database.
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![7u8; 8192]).unwrap();
        let error = SqliteStorage::open(&garbage, crate::storage::Durability::GroupCommit, |_, _| Ok(None))
            .await
            .unwrap_err();
        let StoreError::Open { cause, .. } = &error else {
            panic!("{error:?}")
        };
        assert!(matches!(**cause, StoreError::Corrupt { .. }), "{error:?}");
        assert!(!error.is_retryable());
        // Review finding: the SQLite text was printed three times. The cause is part of the
        // message, not an error source a `{:#}` report would print again, and it names the fix.
        assert!(std::error::Error::source(&error).is_none());
        let message = error.to_string();
        assert_eq!(message.matches("file is not a database").count(), 1, "{message}");
        assert_eq!(message.matches("garbage.db").count(), 1, "{message}");
        assert!(
            message.ends_with(
                "restore it from a backup (`agentd audit verify` on the damaged file says what it can still read)"
            ),
            "{message}"
        );
    }
}
