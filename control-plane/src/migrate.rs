//! Moving a state from SQLite to PostgreSQL (`agentd migrate`, issue 14, ADR 0016): the step a
//! platform takes when one node no longer suffices.
//!
//! The copy is verbatim, so the log keeps its identity: every row of every table with its id,
//! the audit entries with their hashes, the Merkle tree state with the log's origin, and the
//! anchor. The source's anchor and checkpoint keys are carried to the target's key paths, so
//! the anchor still checks and checkpoints signed before the move are extended by those signed
//! after it (a witness sees one log). The order makes every refusal leave both sides as they
//! were:
//!
//! 1. the source is opened read-only and verified (chain, anchor, tree) in one snapshot, which
//!    is also the snapshot copied;
//! 2. the target is opened, its migrations applied, and a write unit begun under the write
//!    lock; a target holding any state is refused;
//! 3. the keys are installed (an existing different key is refused);
//! 4. the rows are copied, counted, and the copy verified inside its own transaction against
//!    the source's result (entries, head, Merkle root); only then is it committed.

use std::path::Path;

use crate::audit::{AnchorKey, ChainVerification};
use crate::error::MigrateError;
use crate::keys;
use crate::storage::copy;
use crate::storage::postgres::PostgresStorage;
use crate::storage::sqlite::SqliteStorage;
use crate::store::KeyPaths;

/// What a migration copied.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MigrationReport {
    /// The source state file.
    pub source: String,
    /// The target database (no credentials).
    pub target: String,
    /// `(table, rows copied)`, in copy order.
    pub tables: Vec<(String, u64)>,
    /// Audit entries, the same on both sides.
    pub audit_entries: u64,
    /// The hash of the last audit entry, the same on both sides.
    pub audit_head: String,
    /// The RFC 9162 Merkle root over the entries, hex, the same on both sides.
    pub merkle_root: String,
    /// Where the target's keys are (the source's, copied; every node needs them).
    pub key_dir: String,
}

/// Copies the SQLite state at `source` (with its keys `<source>.audit-key` and
/// `<source>.checkpoint-key`) into the empty PostgreSQL database at `target_url`, whose keys
/// go to `key_dir` (`postgres.audit-key`, `postgres.checkpoint-key`, as
/// [`Store::open_postgres`](crate::Store::open_postgres) reads them). `skill_store` is the
/// state's key-value store and effects journal (agent-runtime's `kv.db`), copied into the
/// target's `kv` and `effects` tables in the same transaction; `None` when the state has none
/// (its skills never wrote a key or an effect). The sources are only read.
///
/// # Errors
///
/// [`MigrateError::SourceBroken`] when the source does not verify;
/// [`MigrateError::TargetNotEmpty`]; [`MigrateError::KeyMismatch`] when `key_dir` holds a
/// different key; [`MigrateError::SchemaMismatch`]; [`MigrateError::CopyDiffers`] when the copy
/// does not verify as the source did; [`MigrateError::Store`] and [`MigrateError::Key`] for
/// failures of either database or key file. The target is unchanged in every case.
pub async fn migrate_sqlite_to_postgres(
    source: &Path,
    skill_store: Option<&Path>,
    target_url: &str,
    key_dir: &Path,
) -> Result<MigrationReport, MigrateError> {
    let source_keys = KeyPaths::beside(source);
    let target_keys = KeyPaths::postgres(key_dir);
    let sqlite = SqliteStorage::open_read_only(source).await?;
    let source_anchor = keys::load_exact::<32>(&source_keys.anchor)?;
    let source_checkpoint = keys::load_exact::<32>(&source_keys.checkpoint)?;
    let mut reading = sqlite.begin_read().await?;
    let skills = match skill_store {
        Some(path) => Some(SqliteStorage::open_skill_store_read_only(path).await?),
        None => None,
    };
    let mut skills_reading = match &skills {
        Some(skills) => Some(skills.begin_read().await?),
        None => None,
    };
    let verified = crate::plane::verify_in(
        &mut reading,
        source_anchor.map(AnchorKey::new).as_ref(),
        &source_keys.anchor,
    )
    .await?;
    let (entries, head, root) = match verified {
        ChainVerification::Intact { entries, head, root } => (entries, head, root),
        ChainVerification::Broken { seq, reason, .. } => {
            return Err(MigrateError::SourceBroken {
                location: source.display().to_string(),
                seq,
                reason,
            });
        }
    };
    let Some(source_anchor) = source_anchor else {
        // `verify_in` already reports a missing key as broken; kept as a value all the same.
        return Err(MigrateError::SourceBroken {
            location: source.display().to_string(),
            seq: 0,
            reason: format!("the anchor key {} is missing", source_keys.anchor.display()),
        });
    };
    // A fresh target is anchored at open with the key in `key_dir`, installed from the source
    // when there is none; a different key already there is refused below.
    let postgres = PostgresStorage::open(target_url, |(seq, hash)| {
        let key = keys::load_or_install_exact::<32>(&target_keys.anchor, &source_anchor)?;
        Ok(AnchorKey::new(key).anchor(seq, &hash))
    })
    .await?;
    let location = crate::storage::Storage::location(&postgres).to_owned();
    let mut writing = postgres.begin_write().await?;
    // Every refusal about the target comes before a key is written.
    let plan = copy::plan(&mut reading, skills_reading.as_mut(), &mut writing, &location).await?;
    let target_anchor = install(&source_keys.anchor, &target_keys.anchor, &source_anchor)?;
    if let Some(checkpoint) = &source_checkpoint {
        install(&source_keys.checkpoint, &target_keys.checkpoint, checkpoint)?;
    }
    let copied = copy::copy_tables(&mut reading, skills_reading.as_mut(), &mut writing, &plan).await?;
    let check =
        crate::plane::verify_in(&mut writing, Some(&AnchorKey::new(target_anchor)), &target_keys.anchor).await?;
    match check {
        ChainVerification::Intact {
            entries: copied_entries,
            head: copied_head,
            root: copied_root,
        } if copied_entries == entries && copied_head == head && copied_root == root => {}
        ChainVerification::Intact {
            entries: copied_entries,
            head: copied_head,
            root: copied_root,
        } => {
            return Err(MigrateError::CopyDiffers {
                detail: format!(
                    "the source verified as {entries} entries, head {head}, root {root}; the copy as \
                     {copied_entries} entries, head {copied_head}, root {copied_root}"
                ),
            });
        }
        ChainVerification::Broken { seq, reason, .. } => {
            return Err(MigrateError::CopyDiffers {
                detail: format!("the copy breaks at audit entry {seq}: {reason}"),
            });
        }
    }
    crate::storage::UnitOfWork::commit(Box::new(writing)).await?;
    Ok(MigrationReport {
        source: source.display().to_string(),
        target: location,
        tables: copied,
        audit_entries: entries,
        audit_head: head,
        merkle_root: root,
        key_dir: key_dir.display().to_string(),
    })
}

/// Installs `key` (read from `from`) at `to`, or checks the key already there is the same.
fn install(from: &Path, to: &Path, key: &[u8; 32]) -> Result<[u8; 32], MigrateError> {
    let found = keys::load_or_install_exact::<32>(to, key)?;
    if &found != key {
        return Err(MigrateError::KeyMismatch {
            expected: from.to_owned(),
            found: to.to_owned(),
        });
    }
    Ok(found)
}
