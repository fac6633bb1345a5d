//! The audit log, the product's proof: an append-only, SHA-256 hash-chained sequence of typed
//! [`AuditEvent`]s, its head anchored by a MAC under a key kept outside the database.
//!
//! This module holds the values and the pure rules: how an entry is hashed ([`entry_hash`]),
//! what the next entry after a head is ([`next_entry`]), how a chain and its anchor are checked
//! ([`verify_chain`], [`check_anchor`]). The control plane appends entries in the same
//! transaction as the state change they record; storage only inserts the rows it is given.

mod event;
pub mod provenance;

pub use event::{
    ApprovalConsumed, ApprovalDecided, ApprovalRequested, AuditEvent, CancellationRecord, Demotion, DispatchDetail,
    DispatchEntry, DispatchMetrics, DispatchRecord, EnforcementChange, ExpiryRecord, OutcomeKind, RejectedCandidate,
    SelectionRecord, SkillResolution, VerdictRecord, VoteRecord,
};

use sha2::{Digest, Sha256};

use crate::identity::Principal;

/// `prev_hash` of the first audit entry: 64 zeros.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry of the audit log, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// Position in the chain, from 1, without gaps.
    pub seq: i64,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_at_ms: i64,
    /// What happened: an [`AuditEvent::kind`].
    pub kind: String,
    /// The tenant it concerns.
    pub tenant: String,
    /// Who acted, `subject@tenant`.
    pub principal: String,
    /// The event's fields, as JSON text ([`AuditEvent::payload_json`]).
    pub payload: String,
    /// `hash` of the previous entry ([`GENESIS_HASH`] for the first).
    pub prev_hash: String,
    /// SHA-256 (hex) over the fields above, see [`entry_hash`].
    pub hash: String,
}

impl AuditEntry {
    /// The typed event this entry records.
    ///
    /// # Errors
    ///
    /// When the stored kind or payload is not in the vocabulary.
    pub fn event(&self) -> Result<AuditEvent, serde_json::Error> {
        AuditEvent::parse(&self.kind, &self.payload)
    }
}

/// The result of walking the audit chain. A broken chain is a finding, not an error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum ChainVerification {
    /// Every entry links to its predecessor and hashes to its stored hash.
    Intact {
        /// Entries checked.
        entries: u64,
        /// Hash of the last entry ([`GENESIS_HASH`] when empty).
        head: String,
    },
    /// The first entry that does not verify.
    Broken {
        /// Its sequence number.
        seq: i64,
        /// What is wrong with it.
        reason: String,
        /// Entries before it that verified.
        verified_before: u64,
    },
}

/// SHA-256 (hex) of an audit entry: every field length-prefixed (`<len>:<bytes>`), in order
/// `prev_hash, seq, recorded_at_ms, kind, tenant, principal, payload`, so no two different
/// entries share an encoding.
pub fn entry_hash(
    prev_hash: &str,
    seq: i64,
    recorded_at_ms: i64,
    kind: &str,
    tenant: &str,
    principal: &str,
    payload: &str,
) -> String {
    let mut hasher = Sha256::new();
    for field in [
        prev_hash,
        &seq.to_string(),
        &recorded_at_ms.to_string(),
        kind,
        tenant,
        principal,
        payload,
    ] {
        hasher.update(field.len().to_string().as_bytes());
        hasher.update(b":");
        hasher.update(field.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The entry recording `event` by `principal` at `recorded_at_ms` after the chain head `head`
/// (`(seq, hash)` of the last entry; `None` for an empty log).
///
/// # Errors
///
/// A serialization error of the event (not produced by the vocabulary's types in practice).
pub fn next_entry(
    head: Option<(i64, String)>,
    recorded_at_ms: i64,
    event: &AuditEvent,
    principal: &Principal,
) -> Result<AuditEntry, serde_json::Error> {
    let (seq, prev_hash) = match head {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS_HASH.to_owned()),
    };
    let kind = event.kind().to_owned();
    let payload = event.payload_json()?;
    let principal_text = principal.to_string();
    let hash = entry_hash(
        &prev_hash,
        seq,
        recorded_at_ms,
        &kind,
        &principal.tenant,
        &principal_text,
        &payload,
    );
    Ok(AuditEntry {
        seq,
        recorded_at_ms,
        kind,
        tenant: principal.tenant.clone(),
        principal: principal_text,
        payload,
        prev_hash,
        hash,
    })
}

/// Verifies a chain of entries given in `seq` order.
pub fn verify_chain(entries: &[AuditEntry]) -> ChainVerification {
    let mut head = GENESIS_HASH.to_owned();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as i64 + 1;
        let broken = |reason: String| ChainVerification::Broken {
            seq: entry.seq,
            reason,
            verified_before: index as u64,
        };
        if entry.seq != expected_seq {
            return broken(format!(
                "sequence gap: expected entry {expected_seq}, found {}",
                entry.seq
            ));
        }
        if entry.prev_hash != head {
            return broken(format!(
                "prev_hash {} does not match the previous entry's hash {head}",
                entry.prev_hash
            ));
        }
        let recomputed = entry_hash(
            &entry.prev_hash,
            entry.seq,
            entry.recorded_at_ms,
            &entry.kind,
            &entry.tenant,
            &entry.principal,
            &entry.payload,
        );
        if recomputed != entry.hash {
            return broken(format!(
                "content does not hash to the stored hash (stored {}, computed {recomputed})",
                entry.hash
            ));
        }
        head.clone_from(&entry.hash);
    }
    ChainVerification::Intact {
        entries: entries.len() as u64,
        head,
    }
}

/// The key that MACs the chain head, kept outside the database: 32 bytes.
#[derive(Clone)]
pub struct AnchorKey([u8; 32]);

impl std::fmt::Debug for AnchorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnchorKey(..)")
    }
}

impl AnchorKey {
    /// A key from its bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        AnchorKey(bytes)
    }

    /// The anchor of head `(seq, hash)`: HMAC-SHA256 (RFC 2104) over `<seq>:<hash>`.
    pub fn anchor(&self, seq: i64, hash: &str) -> Anchor {
        Anchor {
            seq,
            hash: hash.to_owned(),
            mac: self.mac(seq, hash),
        }
    }

    fn mac(&self, seq: i64, hash: &str) -> String {
        use hmac::{Mac, digest::KeyInit};
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(seq.to_string().as_bytes());
        mac.update(b":");
        mac.update(hash.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// The stored chain head and its MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Entries the anchored log holds.
    pub seq: i64,
    /// Hash of its last entry ([`GENESIS_HASH`] when empty).
    pub hash: String,
    /// HMAC-SHA256 of `<seq>:<hash>` under the [`AnchorKey`], hex.
    pub mac: String,
}

/// Checks an intact chain's head (`entries`, `head` from [`verify_chain`]) against the stored
/// anchor, which catches truncation, a re-hashed tail and entries appended without the key.
pub fn check_anchor(key: &AnchorKey, anchor: Option<&Anchor>, entries: u64, head: &str) -> ChainVerification {
    let last_seq = i64::try_from(entries).unwrap_or(i64::MAX);
    let broken = |seq: i64, reason: String| ChainVerification::Broken {
        seq,
        reason,
        verified_before: entries,
    };
    let Some(anchor) = anchor else {
        return broken(last_seq, "the head anchor is missing".into());
    };
    if anchor.mac != key.mac(anchor.seq, &anchor.hash) {
        return broken(
            anchor.seq,
            "the head anchor's MAC does not verify: the anchor was rewritten without the key".into(),
        );
    }
    if anchor.seq > last_seq {
        return broken(
            last_seq + 1,
            format!(
                "truncated: the anchor records {} entries, the log holds {last_seq}",
                anchor.seq
            ),
        );
    }
    if anchor.seq < last_seq {
        return broken(
            anchor.seq + 1,
            format!("entries after {} were appended without the anchor key", anchor.seq),
        );
    }
    if anchor.hash != head {
        return broken(
            last_seq,
            "the chain head differs from the anchored head: the tail was re-hashed".into(),
        );
    }
    ChainVerification::Intact {
        entries,
        head: head.to_owned(),
    }
}
