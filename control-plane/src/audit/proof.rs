//! Proofs about the audit log that check without its database: an entry's inclusion in a
//! signed tree head (RFC 9162 §2.1.3), one signed head's consistency with a later one (RFC 9162
//! §2.1.4), and what a kept checkpoint says about the log as it is now.

use super::checkpoint::{Checkpoint, CheckpointError, VerifierKey};
use super::merkle;

/// A signed tree head with when it was made (the time is not part of the signed note).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SignedCheckpoint {
    /// The tree head.
    #[serde(serialize_with = "serialize_checkpoint")]
    pub checkpoint: Checkpoint,
    /// The C2SP signed note: checkpoint body, blank line, signature line.
    pub note: String,
    /// When it was made, ms since the Unix epoch (unsigned; a witness's cosignature attests
    /// time).
    pub made_at_ms: i64,
}

fn serialize_checkpoint<S: serde::Serializer>(checkpoint: &Checkpoint, serializer: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let mut state = serializer.serialize_struct("Checkpoint", 3)?;
    state.serialize_field("origin", &checkpoint.origin)?;
    state.serialize_field("size", &checkpoint.size)?;
    state.serialize_field("root", &hex::encode(checkpoint.root))?;
    state.end()
}

/// An inclusion proof of one entry (RFC 9162 §2.1.3), checkable without the database by
/// [`InclusionProof::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InclusionProof {
    /// The signed note of the tree head the proof leads to.
    pub checkpoint: String,
    /// The entry, as stored.
    pub entry: ProvenEntry,
    /// The audit path, leaf to root, hex hashes.
    pub path: Vec<String>,
}

/// The fields of an entry that its hash covers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProvenEntry {
    /// Position in the log, from 1 (the leaf index is `seq - 1`).
    pub seq: i64,
    /// When it was recorded, ms since the Unix epoch.
    pub recorded_at_ms: i64,
    /// Its kind.
    pub kind: String,
    /// Its tenant.
    pub tenant: String,
    /// Who acted.
    pub principal: String,
    /// Its payload, JSON text.
    pub payload: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// Its hash.
    pub hash: String,
}

/// A consistency proof (RFC 9162 §2.1.4) that an older checkpoint's tree is a prefix of a newer
/// one, checkable without the database by [`ConsistencyProof::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConsistencyProof {
    /// The older signed note.
    pub old_checkpoint: String,
    /// The newer signed note.
    pub new_checkpoint: String,
    /// The proof, hex hashes.
    pub proof: Vec<String>,
}

/// Why a proof was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProofCheckError {
    /// A checkpoint's signature or shape.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The proof does not lead where it claims.
    #[error(transparent)]
    Proof(#[from] merkle::ProofError),
    /// The proven entry does not hash to its claimed hash, or a hash is not hex.
    #[error("the proof's entry is malformed: {0}")]
    Entry(String),
}

fn hashes(text: &[String]) -> Result<Vec<merkle::Hash>, ProofCheckError> {
    text.iter()
        .map(|hash| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes)
                .map_err(|error| ProofCheckError::Entry(format!("`{hash}` is not a 32-byte hex hash: {error}")))?;
            Ok(bytes)
        })
        .collect()
}

impl InclusionProof {
    /// Checks the proof with `verifier`: the checkpoint is signed by it, the entry's fields hash
    /// to its hash, and the path leads from that hash to the checkpoint's root. Returns the
    /// verified checkpoint.
    ///
    /// # Errors
    ///
    /// [`ProofCheckError`] naming what does not hold.
    pub fn check(&self, verifier: &VerifierKey) -> Result<Checkpoint, ProofCheckError> {
        let checkpoint = Checkpoint::verify(&self.checkpoint, verifier)?;
        let entry = &self.entry;
        let recomputed = super::entry_hash(
            &entry.prev_hash,
            entry.seq,
            entry.recorded_at_ms,
            &entry.kind,
            &entry.tenant,
            &entry.principal,
            &entry.payload,
        );
        if recomputed != entry.hash {
            return Err(ProofCheckError::Entry(format!(
                "entry {} hashes to {recomputed}, not {}",
                entry.seq, entry.hash
            )));
        }
        let leaf = hashes(std::slice::from_ref(&entry.hash))?[0];
        let index = u64::try_from(entry.seq - 1)
            .map_err(|_| ProofCheckError::Entry(format!("entry {} is not a position in a log", entry.seq)))?;
        merkle::verify_inclusion(&leaf, index, checkpoint.size, &hashes(&self.path)?, &checkpoint.root)?;
        Ok(checkpoint)
    }
}

impl ConsistencyProof {
    /// Checks the proof with `verifier`: both checkpoints are signed by it, name the same log,
    /// and the older tree is a prefix of the newer. Returns `(old, new)`.
    ///
    /// # Errors
    ///
    /// [`ProofCheckError`] naming what does not hold.
    pub fn check(&self, verifier: &VerifierKey) -> Result<(Checkpoint, Checkpoint), ProofCheckError> {
        let old = Checkpoint::verify(&self.old_checkpoint, verifier)?;
        let new = Checkpoint::verify(&self.new_checkpoint, verifier)?;
        if old.origin != new.origin {
            return Err(ProofCheckError::Checkpoint(CheckpointError::Malformed(format!(
                "the checkpoints name two logs, `{}` and `{}`",
                old.origin, new.origin
            ))));
        }
        merkle::verify_consistency(old.size, &old.root, new.size, &new.root, &hashes(&self.proof)?)?;
        Ok((old, new))
    }
}

/// What a checkpoint says about the log.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum CheckpointCheck {
    /// The log extends the checkpoint unchanged.
    Extends {
        /// The checkpoint's size.
        size: u64,
    },
    /// The log does not extend it: entries within it were changed or removed, or the log was
    /// replaced.
    Diverged {
        /// What differs.
        reason: String,
    },
    /// The checkpoint itself was refused (signature, key, shape).
    Refused(#[serde(serialize_with = "serialize_display")] CheckpointError),
}

fn serialize_display<S: serde::Serializer>(value: &CheckpointError, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}
