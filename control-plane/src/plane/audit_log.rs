//! Appending to the audit log inside a unit of work, and reading it back: verification and
//! the PROV-O export.

use super::ControlPlane;
use crate::audit::{self, AnchorKey, AuditEntry, AuditEvent, ChainVerification};
use crate::error::StoreError;
use crate::identity::Principal;
use crate::storage::UnitOfWork;

/// Appends `event` by `principal` to the chain inside `unit`: reads the head, links the new
/// entry to it and moves the anchor to it. Stored with whatever else `unit` commits.
pub(super) async fn append(
    unit: &mut dyn UnitOfWork,
    key: &AnchorKey,
    event: &AuditEvent,
    principal: &Principal,
    now_ms: i64,
) -> Result<AuditEntry, StoreError> {
    let head = unit.audit_head().await?;
    let entry = audit::next_entry(head, now_ms, event, principal).map_err(StoreError::corrupt)?;
    unit.insert_audit(&entry).await?;
    unit.put_anchor(&key.anchor(entry.seq, &entry.hash)).await?;
    Ok(entry)
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
        let entry = append(&mut *unit, self.store.anchor_key(), event, principal, now).await?;
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

    /// Walks the chain from the first entry and names the first one that does not verify, then
    /// checks the head against the anchor (MAC'd with the key beside the database), which
    /// catches truncation and a re-hashed tail. One consistent snapshot.
    ///
    /// # Errors
    ///
    /// [`StoreError`] only when the entries cannot be read; a broken chain is
    /// [`ChainVerification::Broken`].
    pub async fn verify_audit(&self) -> Result<ChainVerification, StoreError> {
        let mut unit = self.read().await?;
        let entries = unit.audit_entries().await?;
        let anchor = unit.anchor().await?;
        let chain = audit::verify_chain(&entries);
        let ChainVerification::Intact { entries: count, head } = &chain else {
            return Ok(chain);
        };
        Ok(audit::check_anchor(
            self.store.anchor_key(),
            anchor.as_ref(),
            *count,
            head,
        ))
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
