//! One writer connection for every write unit of a process, and one transaction for the units
//! that queue while it is open (ADR 0019; group commit at the transaction level, as database
//! logs batch commits: Gray and Reuter, *Transaction Processing*, §9.4.7, and DeWitt et al.,
//! "Implementation techniques for main memory database systems", SIGMOD 1984).
//!
//! A write unit asks the writer task for the connection. The writer opens a transaction
//! (`BEGIN IMMEDIATE`) when it has none, wraps the unit in a `SAVEPOINT`, and lends the
//! connection to it. The unit runs its statements alone on the connection, as under SQLite's
//! write lock before; when it commits, the writer `RELEASE`s its savepoint and, when a dropped
//! unit gives the connection back instead, rolls back to it, so a unit is still all or
//! nothing. The writer then serves the next unit that queued meanwhile inside the same
//! transaction, and `COMMIT`s when nobody is queued (or [`MAX_BATCH`] units are in). A unit's
//! `commit` returns once that `COMMIT` returned and, after it, an fsync of the WAL completed
//! (the [`GroupCommit`](super::durable::GroupCommit) barrier): as durable as before, never
//! reported before it is.
//!
//! What this changes: the units of a batch share one `COMMIT`, one WAL append of the pages they
//! all touch (the audit log's tree state and anchor, the runs' indexes), one write lock taken
//! and released, and no unit sleeps in SQLite's busy handler waiting for another of this
//! process. What it keeps: units are serialised in the order they queued, a unit reads what
//! every earlier unit wrote (its compare-and-set still sees the latest state), and no unit's
//! change is visible to a reader or reported committed before the batch's `COMMIT`. When a
//! batch cannot commit, or SQLite rolled back the whole transaction under a unit (a full disk,
//! an I/O error), every unit of the batch is told so (none of them was reported committed) and
//! the next unit starts a fresh transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{mpsc, oneshot};

use super::classify;
use crate::error::StoreError;

/// Units committed together at most: a bound on how long the first of them waits.
pub(crate) const MAX_BATCH: usize = 64;

/// How long a unit waits for the connection before it is told the store is busy: SQLite's busy
/// timeout, which bounded the wait for the write lock before.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The handle units queue on. Dropping it (with the storage) ends the writer task and closes
/// its connection.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    requests: mpsc::UnboundedSender<Message>,
    /// Transactions committed (each holding one batch).
    transactions: Arc<AtomicU64>,
}

enum Message {
    /// A unit wants the connection.
    Unit(oneshot::Sender<Result<Lent, StoreError>>),
    /// Close the connection (after the open batch, if any) and say so.
    Close(oneshot::Sender<()>),
}

/// How a unit gave the connection back.
enum Ending {
    /// Keep its changes; the sender learns whether the batch committed.
    Release(oneshot::Sender<Result<(), StoreError>>),
    /// Undo its changes (dropped without commit, or its statement failed).
    Abandon,
}

/// The writer's connection, lent to one unit inside its savepoint. Dropping it gives the
/// connection back and undoes the unit's changes.
pub(crate) struct Lent {
    connection: Option<SqliteConnection>,
    back: Option<oneshot::Sender<(SqliteConnection, Ending)>>,
}

impl std::fmt::Debug for Lent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lent").finish_non_exhaustive()
    }
}

impl std::ops::Deref for Lent {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        self.connection
            .as_ref()
            .expect("a lent connection is held until it is given back")
    }
}

impl std::ops::DerefMut for Lent {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        self.connection
            .as_mut()
            .expect("a lent connection is held until it is given back")
    }
}

impl Lent {
    /// Gives the connection back keeping the unit's changes; returns when the batch holding
    /// them committed (not yet fsynced: the caller waits on the group-commit barrier next).
    ///
    /// # Errors
    ///
    /// The batch's `COMMIT` failed, or SQLite rolled the transaction back under a unit of the
    /// batch: this unit's changes are not stored.
    pub(crate) async fn release(mut self) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.give_back(Ending::Release(reply));
        answer.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    fn give_back(&mut self, ending: Ending) {
        if let (Some(connection), Some(back)) = (self.connection.take(), self.back.take()) {
            // The writer waits for every lent connection; it is gone only with the storage.
            let _ = back.send((connection, ending));
        }
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        self.give_back(Ending::Abandon);
    }
}

/// Runs one statement on `connection`. sqlx's `Executor` itself, whose future is boxed for the
/// connection's lifetime: `raw_sql(..).execute(..)` is generic over the executor, and a task
/// spawned on Tokio that awaits it fails to compile ("implementation of `Executor` is not
/// general enough").
async fn execute(connection: &mut SqliteConnection, sql: &'static str) -> Result<(), sqlx::Error> {
    sqlx::Executor::execute(connection, sql).await.map(drop)
}

fn writer_gone() -> StoreError {
    StoreError::Backend {
        detail: "the state store's writer has stopped (the store was closed)".to_owned(),
    }
}

impl Writer {
    /// Connects the writer's own connection with `options` and starts its task on the current
    /// Tokio runtime.
    ///
    /// # Errors
    ///
    /// The connection cannot be opened.
    pub(crate) async fn start(options: &SqliteConnectOptions) -> Result<Writer, sqlx::Error> {
        let connection = options.connect().await?;
        let (requests, queue) = mpsc::unbounded_channel();
        let transactions = Arc::new(AtomicU64::new(0));
        tokio::spawn(serve(connection, queue, Arc::clone(&transactions)));
        Ok(Writer { requests, transactions })
    }

    /// Transactions committed so far, each holding the units of one batch.
    pub(crate) fn transactions(&self) -> u64 {
        self.transactions.load(Ordering::Relaxed)
    }

    /// Waits for the connection: the unit runs inside its own savepoint of the open batch.
    ///
    /// # Errors
    ///
    /// [`StoreError::Busy`] when another process holds SQLite's write lock past the busy
    /// timeout, or the units queued ahead keep the writer busy for 5 s; whatever else
    /// `BEGIN IMMEDIATE` or `SAVEPOINT` failed with.
    pub(crate) async fn lend(&self) -> Result<Lent, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests.send(Message::Unit(reply)).map_err(|_| writer_gone())?;
        match tokio::time::timeout(WAIT, answer).await {
            Ok(answer) => answer.unwrap_or_else(|_| Err(writer_gone())),
            // What SQLite's busy timeout said when each unit took the write lock itself; the
            // writer skips (or rolls back) a request nobody waits for any more.
            Err(_) => Err(StoreError::Busy {
                detail: format!(
                    "waited {} s for the state store's writer, busy with other write units",
                    WAIT.as_secs()
                ),
            }),
        }
    }

    /// Closes the writer's connection once the open batch is committed.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.requests.send(Message::Close(done)).is_ok() {
            let _ = closed.await;
        }
    }
}

/// The writer task: batches until the queue closes or a `Close` comes.
async fn serve(
    connection: SqliteConnection,
    mut queue: mpsc::UnboundedReceiver<Message>,
    transactions: Arc<AtomicU64>,
) {
    let mut slot = Some(connection);
    while let Some(message) = queue.recv().await {
        let Some(connection) = slot.as_mut() else {
            return;
        };
        let first = match message {
            Message::Unit(reply) => reply,
            Message::Close(done) => {
                if let Some(connection) = slot.take() {
                    let _ = connection.close().await;
                }
                let _ = done.send(());
                return;
            }
        };
        if let Err(error) = execute(connection, "BEGIN IMMEDIATE").await {
            let _ = first.send(Err(classify(error)));
            continue;
        }
        let mut released = Vec::new();
        let mut broken = None;
        let mut close = None;
        let mut next = Some(first);
        while let Some(reply) = next.take() {
            match lend_one(&mut slot, reply).await {
                Ok(Some(waiting)) => released.push(waiting),
                Ok(None) => {}
                Err(error) => {
                    broken = Some(error);
                    break;
                }
            }
            if released.len() >= MAX_BATCH {
                break;
            }
            next = match queue.try_recv() {
                Ok(Message::Unit(reply)) => Some(reply),
                Ok(Message::Close(done)) => {
                    close = Some(done);
                    None
                }
                Err(_) => None,
            };
        }
        let Some(connection) = slot.as_mut() else {
            return;
        };
        let outcome = match broken {
            None => execute(connection, "COMMIT").await.map(drop).map_err(classify),
            Some(error) => Err(error),
        };
        if outcome.is_ok() {
            transactions.fetch_add(1, Ordering::Relaxed);
        } else {
            // Whatever is left of the transaction goes; SQLite may have rolled it back already.
            let _ = execute(connection, "ROLLBACK").await;
        }
        for waiting in released {
            let _ = waiting.send(outcome.as_ref().map(|&()| ()).map_err(shared));
        }
        if let Some(done) = close {
            if let Some(connection) = slot.take() {
                let _ = connection.close().await;
            }
            let _ = done.send(());
            return;
        }
    }
}

/// Lends the connection in `slot` to one unit inside a savepoint and takes it back.
/// `Ok(Some(_))`: the unit released its changes and waits for the batch's outcome; `Ok(None)`:
/// the unit is gone and its changes undone; `Err(_)`: the transaction is no longer usable.
async fn lend_one(
    slot: &mut Option<SqliteConnection>,
    reply: oneshot::Sender<Result<Lent, StoreError>>,
) -> Result<Option<oneshot::Sender<Result<(), StoreError>>>, StoreError> {
    if reply.is_closed() {
        // Its caller stopped waiting (a cancelled request).
        return Ok(None);
    }
    let Some(connection) = slot.as_mut() else {
        return Err(writer_gone());
    };
    if let Err(error) = execute(connection, "SAVEPOINT unit").await {
        let error = rolled_back(&classify(error));
        let _ = reply.send(Err(shared(&error)));
        return Err(error);
    }
    let (back, returned) = oneshot::channel();
    let lent = Lent {
        connection: slot.take(),
        back: Some(back),
    };
    // A caller gone by now drops the `Lent` inside the send error: it comes back abandoned.
    let _ = reply.send(Ok(lent));
    // `Lent` gives the connection back when it is released or dropped; only a leaked one
    // (`mem::forget`) never does, and then this writer has no connection left.
    let (connection, ending) = returned.await.map_err(|_| writer_gone())?;
    let connection = slot.insert(connection);
    match ending {
        Ending::Release(waiting) => match execute(connection, "RELEASE unit").await {
            Ok(()) => Ok(Some(waiting)),
            Err(error) => {
                let error = rolled_back(&classify(error));
                let _ = waiting.send(Err(shared(&error)));
                Err(error)
            }
        },
        Ending::Abandon => {
            let rolled = execute(connection, "ROLLBACK TO unit").await;
            rolled
                .and(execute(connection, "RELEASE unit").await)
                .map_err(|error| rolled_back(&classify(error)))?;
            Ok(None)
        }
    }
}

/// The savepoint of a unit is gone: SQLite rolled back the whole transaction under it (after a
/// full disk, an I/O error, a lost lock), so every unit of the batch is undone.
fn rolled_back(error: &StoreError) -> StoreError {
    let detail = format!("SQLite rolled back the transaction shared with other write units ({error})");
    match error {
        StoreError::Full { .. } => StoreError::Full { detail },
        StoreError::ReadOnly { .. } => StoreError::ReadOnly { detail },
        StoreError::Corrupt { .. } => StoreError::Corrupt { detail },
        // The batch's units did nothing wrong: running them again may succeed.
        _ => StoreError::Io { detail },
    }
}

/// `error` again, for each unit of a batch that could not commit: same kind, same words.
fn shared(error: &StoreError) -> StoreError {
    match error {
        StoreError::Busy { detail } => StoreError::Busy { detail: detail.clone() },
        StoreError::Full { detail } => StoreError::Full { detail: detail.clone() },
        StoreError::ReadOnly { detail } => StoreError::ReadOnly { detail: detail.clone() },
        StoreError::Corrupt { detail } => StoreError::Corrupt { detail: detail.clone() },
        StoreError::Io { detail } => StoreError::Io { detail: detail.clone() },
        StoreError::Constraint { detail } => StoreError::Constraint { detail: detail.clone() },
        StoreError::Backend { detail } => StoreError::Backend { detail: detail.clone() },
        other => StoreError::Backend {
            detail: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::storage::Durability;
    use crate::storage::sqlite::SqliteStorage;

    async fn storage(dir: &tempfile::TempDir) -> SqliteStorage {
        let storage = SqliteStorage::open(&dir.path().join("state.db"), Durability::GroupCommit, |_, _| Ok(None))
            .await
            .unwrap();
        sqlx::raw_sql("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .execute(&storage.pool)
            .await
            .unwrap();
        storage
    }

    async fn rows(storage: &SqliteStorage) -> Vec<i64> {
        sqlx::query_scalar("SELECT x FROM t ORDER BY x")
            .fetch_all(&storage.pool)
            .await
            .unwrap()
    }

    async fn insert(lent: &mut Lent, x: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO t VALUES ($1)")
            .bind(x)
            .execute(&mut **lent)
            .await
            .map(drop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn units_queued_meanwhile_share_one_transaction_and_each_stays_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir).await;
        let writer = storage.writer.clone().unwrap();
        let mut first = writer.lend().await.unwrap();
        insert(&mut first, 0).await.unwrap();
        // While the first unit holds the connection, 39 more queue behind it.
        let units: Vec<_> = (1..40_i64)
            .map(|x| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let mut lent = writer.lend().await.unwrap();
                    insert(&mut lent, x).await.unwrap();
                    insert(&mut lent, 1000 + x).await.unwrap();
                    if x % 5 == 0 {
                        // Dropped without commit: both of its rows are undone.
                        drop(lent);
                        return None;
                    }
                    if x % 7 == 0 {
                        // A statement fails (row 0 exists) and the unit is dropped: its
                        // earlier rows are undone, the batch goes on.
                        insert(&mut lent, 0).await.unwrap_err();
                        drop(lent);
                        return None;
                    }
                    lent.release().await.unwrap();
                    Some(x)
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Nothing is visible to a reader before the batch commits.
        assert!(rows(&storage).await.is_empty());
        first.release().await.unwrap();
        let mut expected = vec![0];
        for unit in units {
            expected.extend(unit.await.unwrap());
        }
        let mut expected: Vec<i64> = expected
            .iter()
            .copied()
            .chain(expected.iter().filter(|&&x| x > 0).map(|x| 1000 + x))
            .collect();
        expected.sort_unstable();
        assert_eq!(rows(&storage).await, expected);
        assert_eq!(
            writer.transactions(),
            1,
            "the units queued meanwhile did not share a transaction"
        );
    }

    #[tokio::test]
    async fn when_sqlite_rolls_back_the_shared_transaction_every_unit_of_the_batch_is_told() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir).await;
        let writer = storage.writer.clone().unwrap();
        let mut first = writer.lend().await.unwrap();
        insert(&mut first, 1).await.unwrap();
        let second = tokio::spawn({
            let writer = writer.clone();
            async move {
                let mut lent = writer.lend().await.unwrap();
                insert(&mut lent, 2).await.unwrap();
                // What SQLite does by itself after some errors (a full disk, an I/O error):
                // the whole transaction goes, the first unit's row with it.
                execute(&mut lent, "ROLLBACK").await.unwrap();
                lent.release().await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let first = first.release().await.unwrap_err();
        let second = second.await.unwrap().unwrap_err();
        for error in [&first, &second] {
            assert!(
                error.to_string().contains("rolled back the transaction shared"),
                "{error}"
            );
            assert!(error.is_retryable(), "{error}");
        }
        assert!(rows(&storage).await.is_empty());
        assert_eq!(writer.transactions(), 0);
        // The next unit starts a fresh transaction.
        let mut third = writer.lend().await.unwrap();
        insert(&mut third, 3).await.unwrap();
        third.release().await.unwrap();
        assert_eq!(rows(&storage).await, vec![3]);
    }

    #[tokio::test]
    async fn a_cancelled_request_and_a_closed_writer_leave_no_unit_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let storage = storage(&dir).await;
        let writer = storage.writer.clone().unwrap();
        let mut first = writer.lend().await.unwrap();
        insert(&mut first, 1).await.unwrap();
        // A request given up while it waited is skipped; its place is not held.
        let given_up = tokio::time::timeout(Duration::from_millis(50), writer.lend()).await;
        assert!(given_up.is_err());
        first.release().await.unwrap();
        let mut next = writer.lend().await.unwrap();
        insert(&mut next, 2).await.unwrap();
        next.release().await.unwrap();
        assert_eq!(rows(&storage).await, vec![1, 2]);
        writer.close().await;
        let error = writer.lend().await.unwrap_err();
        assert!(error.to_string().contains("writer has stopped"), "{error}");
    }
}
