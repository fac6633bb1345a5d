//! Appending to the audit log inside a unit of work, and reading it back: verification,
//! checkpoints, inclusion and consistency proofs, and the PROV-O export.

use super::ControlPlane;
use crate::audit::checkpoint::{Checkpoint, VerifierKey};
use crate::audit::proof::{CheckpointCheck, ConsistencyProof, InclusionProof, ProvenEntry, SignedCheckpoint};
use crate::audit::{self, AnchorKey, AuditEntry, AuditEvent, ChainVerification, LogState, merkle};
use crate::error::StoreError;
use crate::identity::Principal;
use crate::storage::UnitOfWork;

/// [`append_now`] when `unit` commits, after its other statements ([`UnitOfWork::at_commit`]):
/// on a shared database the audit log's lock is then held only for the append and the
/// commit, and no lock follows it (ADR 0020). Stored with whatever else `unit` commits.
///
/// # Errors
///
/// The store's error; the append's own errors ([`StoreError::Evidence`]) come from the
/// unit's commit, which then stores nothing.
pub(super) async fn append(
    unit: &mut dyn UnitOfWork,
    key: Option<&AnchorKey>,
    event: &AuditEvent,
    principal: &Principal,
    now_ms: i64,
) -> Result<(), StoreError> {
    let (key, event, principal) = (key.cloned(), event.clone(), principal.clone());
    unit.at_commit(Box::new(move |unit| {
        Box::pin(async move {
            append_now(unit, key.as_ref(), &event, &principal, now_ms).await?;
            Ok(())
        })
    }))
    .await
}

/// Appends `event` by `principal` to the log inside `unit` now: checks the evidence
/// ([`audit::check_evidence`]: anchor key, anchor MAC and head, tree size), links the new
/// entry to the head, grows the Merkle tree and moves the anchor to it. Stored with whatever
/// else `unit` commits. Holds the audit log's lock from here to the commit, so `unit` may
/// take no other lock afterwards ([`UnitOfWork::lock`]).
///
/// # Errors
///
/// [`StoreError::Evidence`] when the evidence does not check out (nothing is written), or the
/// store's error.
pub(super) async fn append_now(
    unit: &mut dyn UnitOfWork,
    key: Option<&AnchorKey>,
    event: &AuditEvent,
    principal: &Principal,
    now_ms: i64,
) -> Result<AuditEntry, StoreError> {
    let (head, anchor, state) = match unit.append_context().await {
        Ok(context) => context,
        Err(error) if error.is_retryable() => return Err(error),
        // Read again piece by piece, so the message names the piece that is broken.
        Err(_) => (
            unit.audit_head().await?,
            unit.anchor().await.map_err(evidence_unreadable("anchor"))?,
            unit.log_state().await.map_err(evidence_unreadable("tree state"))?,
        ),
    };
    audit::check_evidence(key, anchor.as_ref(), state.as_ref(), head.as_ref())
        .map_err(|detail| StoreError::Evidence { detail })?;
    let (Some(key), Some(mut state)) = (key, state) else {
        unreachable!("check_evidence refuses a missing key or tree state")
    };
    let entry = audit::next_entry(head, now_ms, event, principal).map_err(StoreError::corrupt)?;
    state
        .frontier
        .push(merkle::entry_leaf(&entry.hash).map_err(StoreError::corrupt)?);
    unit.append_rows(&entry, &state, &key.anchor(entry.seq, &entry.hash))
        .await?;
    Ok(entry)
}

/// [`ControlPlane::verify_audit`] inside `unit` (a read snapshot, or a write unit that sees
/// its own rows): the chain, the head against the anchor MAC'd with `key` (kept at
/// `key_path`, for the message when it is missing), and the stored tree.
///
/// # Errors
///
/// [`StoreError`] only when the entries cannot be read.
pub(crate) async fn verify_in(
    unit: &mut dyn UnitOfWork,
    key: Option<&AnchorKey>,
    key_path: &std::path::Path,
) -> Result<ChainVerification, StoreError> {
    let entries = unit.audit_entries().await?;
    let chain = audit::verify_chain(&entries);
    let ChainVerification::Intact {
        entries: count, head, ..
    } = &chain
    else {
        return Ok(chain);
    };
    let last_seq = i64::try_from(*count).unwrap_or(i64::MAX);
    let Some(key) = key else {
        return Ok(ChainVerification::Broken {
            seq: last_seq,
            reason: format!(
                "the anchor key {} is missing, so the head cannot be checked",
                key_path.display()
            ),
            verified_before: *count,
        });
    };
    let anchor = match unit.anchor().await {
        Ok(anchor) => anchor,
        Err(error) if error.is_retryable() => return Err(error),
        Err(_) => None,
    };
    let anchored = audit::check_anchor(key, anchor.as_ref(), *count, head);
    if !matches!(anchored, ChainVerification::Intact { .. }) {
        return Ok(anchored);
    }
    let state = match unit.log_state().await {
        Ok(state) => state,
        Err(error) if error.is_retryable() => return Err(error),
        Err(_) => None,
    };
    Ok(audit::check_tree(state.as_ref(), &entries))
}

/// A non-retryable failure to read a piece of evidence (its table dropped, say) is broken
/// evidence; a busy database stays a busy database.
fn evidence_unreadable(what: &'static str) -> impl Fn(StoreError) -> StoreError {
    move |error| {
        if error.is_retryable() {
            error
        } else {
            StoreError::Evidence {
                detail: format!("the audit {what} cannot be read: {error}"),
            }
        }
    }
}

impl ControlPlane {
    /// Appends one audit entry in its own unit of work.
    pub(super) async fn append_audit(
        &self,
        event: &AuditEvent,
        principal: &Principal,
    ) -> Result<AuditEntry, StoreError> {
        let now = self.now_ms();
        let mut unit = self.write().await?;
        let entry = append_now(&mut *unit, self.store.anchor_key(), event, principal, now).await?;
        unit.commit().await?;
        Ok(entry)
    }

    /// Every audit entry, in chain order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log cannot be read.
    pub async fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut unit = self.read().await?;
        unit.audit_entries().await
    }

    /// Checks everything on this machine that vouches for the log, in one consistent snapshot:
    /// the chain from the first entry (naming the first entry that does not verify), the head
    /// against the anchor MAC'd with the key beside the database (truncation, a re-hashed
    /// tail), and the stored Merkle tree against the entries. A missing anchor, anchor key or
    /// tree state is broken evidence. Writes nothing.
    ///
    /// # Errors
    ///
    /// [`StoreError`] only when the entries cannot be read; broken evidence is
    /// [`ChainVerification::Broken`].
    pub async fn verify_audit(&self) -> Result<ChainVerification, StoreError> {
        let mut unit = self.read().await?;
        verify_in(&mut *unit, self.store.anchor_key(), self.store.anchor_key_path()).await
    }

    /// [`verify_audit`](Self::verify_audit), then whether the log still extends `checkpoint`
    /// (a signed note kept outside the state directory) unchanged: signed by `verifier`, the
    /// same log, no larger than the log, and the root of the log's first `size` entries equal
    /// to the checkpoint's. This holds even when the local anchor, its key or the tree state
    /// were removed: nothing on this machine can sign an older head again. The local result
    /// comes first; a checkpoint problem is reported when the local check passes, or in the
    /// second value when it does not.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the entries cannot be read; [`CheckpointError`] (inside
    /// [`CheckpointCheck::Refused`]) is a value.
    pub async fn verify_audit_against(
        &self,
        checkpoint: &str,
        verifier: &VerifierKey,
    ) -> Result<(ChainVerification, CheckpointCheck), StoreError> {
        let local = self.verify_audit().await?;
        let checkpoint = match Checkpoint::verify(checkpoint, verifier) {
            Ok(checkpoint) => checkpoint,
            Err(error) => return Ok((local, CheckpointCheck::Refused(error))),
        };
        let mut unit = self.read().await?;
        let entries = unit.audit_entries().await?;
        let origin = unit.log_state().await.ok().flatten().map(|state| state.origin);
        if origin.as_deref().is_some_and(|origin| origin != checkpoint.origin) {
            return Ok((
                local,
                CheckpointCheck::Diverged {
                    reason: format!(
                        "the checkpoint is of log `{}`, this log is `{}`: the log was replaced",
                        checkpoint.origin,
                        origin.unwrap_or_default()
                    ),
                },
            ));
        }
        let Ok(size) = usize::try_from(checkpoint.size) else {
            return Ok((
                local,
                CheckpointCheck::Diverged {
                    reason: "impossible size".into(),
                },
            ));
        };
        if size > entries.len() {
            return Ok((
                local,
                CheckpointCheck::Diverged {
                    reason: format!(
                        "the checkpoint covers {size} entries, the log holds {}: entries were removed",
                        entries.len()
                    ),
                },
            ));
        }
        let prefix = &entries[..size];
        if let ChainVerification::Broken { seq, reason, .. } = audit::verify_chain(prefix) {
            return Ok((
                local,
                CheckpointCheck::Diverged {
                    reason: format!("entry {seq} within the checkpoint does not verify: {reason}"),
                },
            ));
        }
        let leaves = audit::entry_leaves(prefix).map_err(StoreError::corrupt)?;
        if merkle::root_of(&leaves) != checkpoint.root {
            return Ok((
                local,
                CheckpointCheck::Diverged {
                    reason: format!(
                        "the log's first {size} entries do not hash to the checkpoint's root: they were changed"
                    ),
                },
            ));
        }
        Ok((local, CheckpointCheck::Extends { size: checkpoint.size }))
    }

    /// The log's current tree head, signed with the checkpoint key: a C2SP checkpoint for
    /// platforms to keep outside the state directory (or hand to a witness). Only reads.
    ///
    /// # Errors
    ///
    /// [`StoreError::Evidence`] when the checkpoint key or the tree state is missing or the
    /// tree does not match the log (so no checkpoint vouches for a tampered log); the store's
    /// error otherwise.
    pub async fn checkpoint(&self) -> Result<SignedCheckpoint, StoreError> {
        let verification = self.verify_audit().await?;
        if let ChainVerification::Broken { seq, reason, .. } = verification {
            return Err(StoreError::Evidence {
                detail: format!("entry {seq}: {reason}"),
            });
        }
        let mut unit = self.read().await?;
        let state = self.log_state(&mut *unit).await?;
        self.sign_head(&state, state.frontier.size(), state.frontier.root())
    }

    /// The verifier key of this log's checkpoints, `<origin>+<key id>+<base64 key>` when
    /// displayed: what platforms (and witnesses) configure to check them.
    ///
    /// # Errors
    ///
    /// [`StoreError::Evidence`] when the checkpoint key or the tree state is missing.
    pub async fn checkpoint_verifier(&self) -> Result<VerifierKey, StoreError> {
        let mut unit = self.read().await?;
        let state = self.log_state(&mut *unit).await?;
        Ok(self.store.checkpoint_key(&state.origin)?.verifier())
    }

    /// The inclusion proof of entry `seq` in the current tree, with the signed checkpoint it
    /// leads to. O(n) hashing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Evidence`] when `seq` is not in the log or the evidence is broken; the
    /// store's error otherwise.
    pub async fn prove_inclusion(&self, seq: i64) -> Result<InclusionProof, StoreError> {
        let signed = self.checkpoint().await?;
        let mut unit = self.read().await?;
        let entries = unit.audit_entries().await?;
        let size = usize::try_from(signed.checkpoint.size).unwrap_or(usize::MAX);
        let entries = &entries[..size.min(entries.len())];
        let Some(entry) = usize::try_from(seq - 1).ok().and_then(|index| entries.get(index)) else {
            return Err(StoreError::Evidence {
                detail: format!("entry {seq} is not in the log of {} entries", entries.len()),
            });
        };
        let leaves = audit::entry_leaves(entries).map_err(StoreError::corrupt)?;
        let index = usize::try_from(seq - 1).unwrap_or(0);
        Ok(InclusionProof {
            checkpoint: signed.note,
            entry: ProvenEntry {
                seq: entry.seq,
                recorded_at_ms: entry.recorded_at_ms,
                kind: entry.kind.clone(),
                tenant: entry.tenant.clone(),
                principal: entry.principal.clone(),
                payload: entry.payload.clone(),
                prev_hash: entry.prev_hash.clone(),
                hash: entry.hash.clone(),
            },
            path: merkle::inclusion_path(&leaves, index).iter().map(hex::encode).collect(),
        })
    }

    /// The consistency proof from the checkpoint `old` (a signed note, checked with this log's
    /// own verifier key) to the current tree. O(n) hashing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Evidence`] when `old` is not a checkpoint of this log, is larger than the
    /// log, or the log's prefix no longer has its root (then no proof exists: the log was
    /// changed); the store's error otherwise.
    pub async fn prove_consistency(&self, old: &str) -> Result<ConsistencyProof, StoreError> {
        let verifier = self.checkpoint_verifier().await?;
        let old_checkpoint = Checkpoint::verify(old, &verifier).map_err(|error| StoreError::Evidence {
            detail: format!("the older checkpoint is refused: {error}"),
        })?;
        let signed = self.checkpoint().await?;
        let mut unit = self.read().await?;
        let entries = unit.audit_entries().await?;
        let size = usize::try_from(signed.checkpoint.size).unwrap_or(usize::MAX);
        let leaves = audit::entry_leaves(&entries[..size.min(entries.len())]).map_err(StoreError::corrupt)?;
        let old_size = usize::try_from(old_checkpoint.size).unwrap_or(usize::MAX);
        if old_size > leaves.len() {
            return Err(StoreError::Evidence {
                detail: format!(
                    "the older checkpoint covers {old_size} entries, the log holds {}: entries were removed",
                    leaves.len()
                ),
            });
        }
        if merkle::root_of(&leaves[..old_size]) != old_checkpoint.root {
            return Err(StoreError::Evidence {
                detail: format!("the log's first {old_size} entries no longer hash to the older checkpoint's root"),
            });
        }
        Ok(ConsistencyProof {
            old_checkpoint: old.to_owned(),
            new_checkpoint: signed.note,
            proof: merkle::consistency_proof(&leaves, old_size)
                .iter()
                .map(hex::encode)
                .collect(),
        })
    }

    async fn log_state(&self, unit: &mut dyn UnitOfWork) -> Result<LogState, StoreError> {
        unit.log_state().await?.ok_or_else(|| StoreError::Evidence {
            detail: "the Merkle tree state (audit_log) is missing".into(),
        })
    }

    fn sign_head(&self, state: &LogState, size: u64, root: merkle::Hash) -> Result<SignedCheckpoint, StoreError> {
        let key = self.store.checkpoint_key(&state.origin)?;
        let checkpoint = Checkpoint {
            origin: state.origin.clone(),
            size,
            root,
        };
        Ok(SignedCheckpoint {
            note: checkpoint.sign(&key),
            checkpoint,
            made_at_ms: self.now_ms(),
        })
    }

    /// The last governance verdict recorded for step `step_id` of run `run_id` in `tenant`
    /// (risk tier, determining policies, obligations): what a reviewer is shown beside an
    /// approval request. Reads the whole log (`O(entries)`).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log cannot be read.
    pub async fn step_verdict(
        &self,
        tenant: &str,
        run_id: &str,
        step_id: &str,
    ) -> Result<Option<audit::VerdictRecord>, StoreError> {
        let entries = self.audit_entries().await?;
        Ok(entries
            .iter()
            .rev()
            .filter(|entry| entry.tenant == tenant && entry.kind == "verdict")
            .filter_map(|entry| match entry.event() {
                Ok(AuditEvent::Verdict(record)) => Some(record),
                _ => None,
            })
            .find(|record| record.step.run_id == run_id && record.step.step_id == step_id))
    }

    /// The PROV-O JSON-LD provenance of `run_id`, from the audit entries of `tenant`.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log cannot be read.
    pub async fn provenance(&self, tenant: &str, run_id: &str) -> Result<serde_json::Value, StoreError> {
        let entries: Vec<AuditEntry> = self
            .audit_entries()
            .await?
            .into_iter()
            .filter(|entry| entry.tenant == tenant)
            .collect();
        Ok(audit::provenance::run_provenance(&entries, run_id))
    }
}
