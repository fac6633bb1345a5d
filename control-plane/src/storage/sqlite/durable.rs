//! Group commit for the SQLite backend: concurrent write units share one fsync.
//!
//! SQLite runs in WAL mode with `synchronous=NORMAL`, so `COMMIT` appends the transaction's
//! frames to the WAL (`write(2)`, in the page cache: a process crash keeps them) without an
//! fsync, and releases the write lock at once. A unit's `commit` then returns only after an
//! fsync of the WAL that *started after its COMMIT returned* has completed, so on return the
//! unit is as durable as under `synchronous=FULL`: "recorded before the effect" holds against
//! power loss too. Committers that finish while an fsync runs wait for the next one, which
//! covers all of them (the classic group commit of database logs; Gray and Reuter, *Transaction
//! Processing*, §9.4.7): with N writers in flight, one fsync serves up to N commits.
//!
//! SQLite itself syncs the WAL before each checkpoint and the database after it, so frames a
//! checkpoint moved out of the WAL are durable already; the WAL is opened by path for each
//! fsync (never a cached descriptor, which could point at a WAL that was removed when the last
//! connection closed), and a WAL that does not exist holds nothing to sync.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::StoreError;
use crate::storage::Durability;

/// An fsync of everything committed so far.
type SyncFn = Arc<dyn Fn() -> std::io::Result<()> + Send + Sync>;

/// The group-commit barrier of one database.
pub(crate) struct GroupCommit {
    /// The fsync; `None` when SQLite's COMMIT fsyncs by itself (the barrier only counts).
    sync: Option<SyncFn>,
    /// Write units whose COMMIT returned (each takes the next ticket).
    committed: AtomicU64,
    /// The highest ticket made durable. Held while an fsync runs, so committers queue behind
    /// it and the next fsync covers every one of them.
    synced: tokio::sync::Mutex<u64>,
    /// fsyncs issued.
    syncs: AtomicU64,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("committed", &self.committed)
            .field("syncs", &self.syncs)
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// The barrier of the database at `database` (its WAL is `<database>-wal`). Under
    /// [`Durability::FsyncEachCommit`] SQLite's COMMIT fsyncs by itself and the barrier only
    /// counts.
    pub(crate) fn for_database(database: &Path, durability: Durability) -> Self {
        if durability == Durability::FsyncEachCommit {
            return Self::new(None);
        }
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        Self::new(Some(Arc::new(move || match std::fs::File::open(&wal) {
            Ok(file) => file.sync_data(),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error),
        })))
    }

    fn new(sync: Option<SyncFn>) -> Self {
        GroupCommit {
            sync,
            committed: AtomicU64::new(0),
            synced: tokio::sync::Mutex::new(0),
            syncs: AtomicU64::new(0),
        }
    }

    /// Called once a write unit's COMMIT returned; returns when the unit is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the fsync failed: the unit is committed but may not survive a
    /// power loss, so its caller must not act on it.
    pub(crate) async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.committed.fetch_add(1, Ordering::SeqCst) + 1;
        let Some(sync) = &self.sync else {
            // COMMIT fsynced by itself: one fsync per commit.
            self.syncs.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let mut synced = self.synced.lock().await;
        if *synced >= ticket {
            // An fsync that started after this commit has completed.
            return Ok(());
        }
        // Every ticket up to here belongs to a COMMIT that returned before this fsync starts.
        let covers = self.committed.load(Ordering::SeqCst);
        let sync = Arc::clone(sync);
        tokio::task::spawn_blocking(move || sync())
            .await
            .map_err(|error| StoreError::Io {
                detail: format!("the fsync task failed: {error}"),
            })?
            .map_err(|error| StoreError::Io {
                detail: format!("cannot make the commit durable (fsync of the WAL): {error}"),
            })?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        *synced = covers;
        Ok(())
    }

    /// `(durable commits, fsyncs)` so far.
    pub(crate) fn stats(&self) -> (u64, u64) {
        (
            self.committed.load(Ordering::Relaxed),
            self.syncs.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    use super::*;

    /// When each fsync started and ended.
    type SyncLog = Arc<Mutex<Vec<(Instant, Instant)>>>;

    /// A slow fsync (5 ms) that records when each ran.
    fn recording() -> (GroupCommit, SyncLog) {
        let runs = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&runs);
        let barrier = GroupCommit::new(Some(Arc::new(move || {
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(5));
            log.lock().unwrap().push((started, Instant::now()));
            Ok(())
        })));
        (barrier, runs)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn every_commit_waits_for_an_fsync_that_started_after_it_and_commits_share_them() {
        let (barrier, runs) = recording();
        let barrier = Arc::new(barrier);
        let committers: Vec<_> = (0..64)
            .map(|n| {
                let barrier = Arc::clone(&barrier);
                let runs = Arc::clone(&runs);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_micros(200 * (n % 8))).await;
                    let committed_at = Instant::now();
                    barrier.durable().await.unwrap();
                    let returned_at = Instant::now();
                    let covered = runs
                        .lock()
                        .unwrap()
                        .iter()
                        .any(|(started, ended)| *started >= committed_at && *ended <= returned_at);
                    assert!(
                        covered,
                        "commit {n} returned before an fsync that started after it ended"
                    );
                })
            })
            .collect();
        for committer in committers {
            committer.await.unwrap();
        }
        let (commits, syncs) = barrier.stats();
        assert_eq!(commits, 64);
        assert!(
            syncs < 32,
            "{syncs} fsyncs for 64 concurrent commits: nothing was shared"
        );
    }

    #[tokio::test]
    async fn a_failed_fsync_fails_the_commit_and_the_next_one_retries() {
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let barrier = GroupCommit::new(Some(Arc::new(move || {
            if failed.swap(true, Ordering::SeqCst) {
                Ok(())
            } else {
                Err(std::io::Error::other("EIO"))
            }
        })));
        let error = barrier.durable().await.unwrap_err();
        assert!(error.to_string().contains("EIO"), "{error}");
        barrier.durable().await.unwrap();
        assert_eq!(barrier.stats(), (2, 1));
    }
}
