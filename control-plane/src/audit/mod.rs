//! The audit log, the product's proof: an append-only, SHA-256 hash-chained sequence of typed
//! [`AuditEvent`]s, its head anchored by a MAC under a key kept outside the database, and its
//! entries the leaves of an RFC 9162 Merkle tree ([`merkle`]) whose signed heads
//! ([`checkpoint`]) platforms keep outside the state directory.
//!
//! This module holds the values and the pure rules: how an entry is hashed ([`entry_hash`]),
//! what the next entry after a head is ([`next_entry`]), how a chain and its anchor are checked
//! ([`verify_chain`], [`check_anchor`]), whether the evidence still allows an append
//! ([`check_evidence`]). The control plane appends entries in the same transaction as the state
//! change they record; storage only inserts the rows it is given.
//!
//! Who guards what: the chain catches an edited or deleted entry; the local anchor (MAC under
//! the key beside the database) catches truncation and a re-hashed tail by someone without the
//! key; a checkpoint kept elsewhere catches everything else, including the loss of the anchor,
//! its key or the whole database, because nothing on this machine can re-sign an older head.

pub mod checkpoint;
mod event;
pub mod merkle;
pub mod proof;
pub mod provenance;

pub use event::{
    ApprovalConsumed, ApprovalDecided, ApprovalRequested, AuditEvent, CancellationRecord, Demotion, DispatchDetail,
    DispatchEntry, DispatchMetrics, DispatchRecord, EnforcementChange, ExpiryRecord, OutcomeKind, RejectedCandidate,
    RunControl, RunControlAction, SelectionRecord, SkillResolution, VerdictRecord, VoteRecord,
};

use sha2::{Digest, Sha256};

use crate::identity::Principal;

/// The log's identity and the right edge of its Merkle tree, kept with the entries and updated
/// by every append in the same transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogState {
    /// The checkpoint origin (C2SP `tlog-checkpoint`): `agentd.local/<16 hex digits>`, random
    /// when the log is created, so checkpoints of two logs never pass for each other.
    pub origin: String,
    /// The tree's frontier: its size equals the number of entries.
    pub frontier: merkle::Frontier,
}

impl LogState {
    /// A new log's state with a fresh random origin over `frontier`.
    ///
    /// # Errors
    ///
    /// When the operating system's random source fails.
    pub fn new(frontier: merkle::Frontier) -> Result<Self, getrandom::Error> {
        let mut id = [0u8; 8];
        getrandom::fill(&mut id)?;
        Ok(LogState {
            origin: format!("agentd.local/{}", hex::encode(id)),
            frontier,
        })
    }
}

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
        /// The RFC 9162 Merkle root over the entries, hex (empty until the tree is checked).
        root: String,
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
        root: String::new(),
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
        root: String::new(),
    }
}

/// Checks the stored tree state against intact entries (`entries` in chain order): the tree
/// must hold exactly the entries and its root must be theirs. Fills in the root when it holds.
pub fn check_tree(state: Option<&LogState>, entries: &[AuditEntry]) -> ChainVerification {
    let count = entries.len() as u64;
    let last_seq = entries.last().map_or(0, |entry| entry.seq);
    let head = entries
        .last()
        .map_or_else(|| GENESIS_HASH.to_owned(), |entry| entry.hash.clone());
    let broken = |reason: String| ChainVerification::Broken {
        seq: last_seq,
        reason,
        verified_before: count,
    };
    let Some(state) = state else {
        return broken("the Merkle tree state (audit_log) is missing".into());
    };
    if state.frontier.size() != count {
        return broken(format!(
            "the Merkle tree holds {} entries, the log {count}",
            state.frontier.size()
        ));
    }
    let leaves = match entry_leaves(entries) {
        Ok(leaves) => leaves,
        Err(reason) => return broken(reason),
    };
    let root = merkle::root_of(&leaves);
    if root != state.frontier.root() {
        return broken("the stored Merkle tree head does not match the entries".into());
    }
    ChainVerification::Intact {
        entries: count,
        head,
        root: hex::encode(root),
    }
}

/// The Merkle leaf hashes of `entries`.
///
/// # Errors
///
/// When an entry's stored hash is not 64 hex digits.
pub fn entry_leaves(entries: &[AuditEntry]) -> Result<Vec<merkle::Hash>, String> {
    entries.iter().map(|entry| merkle::entry_leaf(&entry.hash)).collect()
}

/// Whether the log may be appended to after head `head` (`(seq, hash)` of the last entry,
/// `None` when empty): the anchor key is present, the anchor's MAC verifies and names exactly
/// that head, and the tree holds exactly the entries. A cheap check (no entry is re-hashed) run
/// by every append, so that one ordinary append after tampering fails instead of re-anchoring
/// the tampered log.
///
/// # Errors
///
/// The first thing that does not hold, as a sentence.
pub fn check_evidence(
    key: Option<&AnchorKey>,
    anchor: Option<&Anchor>,
    state: Option<&LogState>,
    head: Option<&(i64, String)>,
) -> Result<(), String> {
    let (seq, hash) = head.map_or((0, GENESIS_HASH), |(seq, hash)| (*seq, hash.as_str()));
    let Some(key) = key else {
        return Err("the audit anchor key is missing".into());
    };
    let Some(anchor) = anchor else {
        return Err("the audit anchor is missing".into());
    };
    if anchor.mac != key.mac(anchor.seq, &anchor.hash) {
        return Err("the audit anchor's MAC does not verify under the anchor key".into());
    }
    if anchor.seq != seq || anchor.hash != hash {
        return Err(format!(
            "the audit anchor names entry {} but the log's head is entry {seq}: the log was truncated, extended or re-hashed",
            anchor.seq
        ));
    }
    let Some(state) = state else {
        return Err("the Merkle tree state (audit_log) is missing".into());
    };
    if state.frontier.size() != u64::try_from(seq).unwrap_or(u64::MAX) {
        return Err(format!(
            "the Merkle tree holds {} entries, the log {seq}",
            state.frontier.size()
        ));
    }
    Ok(())
}
