//! Checkpoints: the audit log's signed tree head as a C2SP `tlog-checkpoint`
//! (<https://c2sp.org/tlog-checkpoint>) in a C2SP signed note (<https://c2sp.org/signed-note>),
//! signed with Ed25519 under a key kept apart from the token key, so that existing
//! transparency-log tooling (a witness such as litewitness) can read and cosign it.
//!
//! ```text
//! agentd.local/3f2a9c0d11e07b52          <- origin: the log's identity (also the key name)
//! 1338                                    <- tree size: entries in the log
//! CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=   <- base64 RFC 9162 root at that size
//!
//! — agentd.local/3f2a9c0d11e07b52 Az3grl...=     <- key id (4 bytes) || Ed25519 signature
//! ```
//!
//! The body carries no extension lines (C2SP recommends none); a checkpoint's time is not in
//! the signed body: witnesses attest time in their cosignatures (C2SP `tlog-cosignature`), and
//! `agentd audit checkpoint --json` reports when this one was made, unsigned.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

use super::merkle::Hash;

/// The signature type byte of Ed25519 in C2SP signed notes.
const ED25519: u8 = 0x01;

/// Why a checkpoint or a verifier key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The text is not a signed note, or its body is not a checkpoint.
    #[error("not a checkpoint: {0}")]
    Malformed(String),
    /// A verifier key is not `<name>+<hex key id>+<base64 key>` with an Ed25519 key.
    #[error("not an Ed25519 verifier key: {0}")]
    BadKey(String),
    /// No signature by the given key, or its signature does not verify.
    #[error("the checkpoint carries no valid signature by `{key_name}`")]
    Unsigned {
        /// The key looked for.
        key_name: String,
    },
}

/// A tree head: the log's identity, its size and its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, also the signing key's name.
    pub origin: String,
    /// Entries in the log.
    pub size: u64,
    /// The RFC 9162 root at that size.
    pub root: Hash,
}

impl Checkpoint {
    /// The note text: `<origin>\n<size>\n<base64 root>\n`.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root))
    }

    /// Parses a note body (every line after the third, an extension line, is ignored).
    ///
    /// # Errors
    ///
    /// [`CheckpointError::Malformed`] naming the bad line.
    pub fn parse_body(body: &str) -> Result<Self, CheckpointError> {
        let lines: Vec<&str> = body.strip_suffix('\n').unwrap_or(body).split('\n').collect();
        let [origin, size, root, ..] = lines.as_slice() else {
            return Err(CheckpointError::Malformed(
                "a checkpoint has at least three lines: origin, size, root".into(),
            ));
        };
        if origin.is_empty() || lines.iter().any(|line| line.is_empty()) {
            return Err(CheckpointError::Malformed("a checkpoint line is empty".into()));
        }
        let canonical = size.bytes().all(|b| b.is_ascii_digit()) && (*size == "0" || !size.starts_with('0'));
        let size: u64 = size
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| CheckpointError::Malformed(format!("tree size `{size}` is not a canonical decimal")))?;
        let root: Hash = STANDARD
            .decode(root)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| CheckpointError::Malformed(format!("root `{root}` is not base64 of 32 bytes")))?;
        Ok(Checkpoint {
            origin: (*origin).to_owned(),
            size,
            root,
        })
    }

    /// The signed note: the body, a blank line, and the signature line of `key`.
    pub fn sign(&self, key: &CheckpointKey) -> String {
        let body = self.body();
        let signature = key.signing.sign(body.as_bytes());
        let mut blob = key_id(&self.origin, &key.signing.verifying_key()).to_vec();
        blob.extend_from_slice(&signature.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", self.origin, STANDARD.encode(blob))
    }

    /// Verifies `note` against `verifier` and returns its checkpoint. Signatures by other keys
    /// (a witness's cosignature) are ignored.
    ///
    /// # Errors
    ///
    /// [`CheckpointError::Malformed`] or [`CheckpointError::Unsigned`].
    pub fn verify(note: &str, verifier: &VerifierKey) -> Result<Self, CheckpointError> {
        let (body, signatures) = note
            .split_once("\n\n")
            .map(|(body, signatures)| (format!("{body}\n"), signatures))
            .ok_or_else(|| CheckpointError::Malformed("no blank line before the signatures".into()))?;
        let checkpoint = Self::parse_body(&body)?;
        let wanted = key_id(&verifier.name, &verifier.key);
        let signed = signatures.lines().any(|line| {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return false;
            };
            let Some((name, blob)) = rest.split_once(' ') else {
                return false;
            };
            let Ok(blob) = STANDARD.decode(blob) else {
                return false;
            };
            name == verifier.name
                && blob.len() == 4 + 64
                && blob[..4] == wanted
                && ed25519_dalek::Signature::from_slice(&blob[4..])
                    .is_ok_and(|signature| verifier.key.verify(body.as_bytes(), &signature).is_ok())
        });
        if !signed {
            return Err(CheckpointError::Unsigned {
                key_name: verifier.name.clone(),
            });
        }
        Ok(checkpoint)
    }
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[..4]`: the key id of an Ed25519 note key.
fn key_id(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', ED25519]);
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The log's signing key: an Ed25519 key from a 32-byte seed, under the log's origin as name.
pub struct CheckpointKey {
    name: String,
    signing: SigningKey,
}

impl std::fmt::Debug for CheckpointKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CheckpointKey {
    /// The key of log `name` from its seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        CheckpointKey {
            name: name.to_owned(),
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The public half, as a verifier key.
    pub fn verifier(&self) -> VerifierKey {
        VerifierKey {
            name: self.name.clone(),
            key: self.signing.verifying_key(),
        }
    }
}

/// A note verifier key: `<name>+<hex key id>+<base64(0x01 || Ed25519 public key)>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifierKey {
    /// The key's name (the log's origin).
    pub name: String,
    key: VerifyingKey,
}

impl std::fmt::Display for VerifierKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut encoded = vec![ED25519];
        encoded.extend_from_slice(self.key.as_bytes());
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(key_id(&self.name, &self.key)),
            STANDARD.encode(encoded)
        )
    }
}

impl std::str::FromStr for VerifierKey {
    type Err = CheckpointError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| CheckpointError::BadKey(format!("`{text}`: {why}"));
        // The name holds no `+` (C2SP signed-note), the base64 key may: split from the left.
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected <name>+<key id>+<key>"));
        };
        let encoded = STANDARD.decode(encoded).map_err(|_| bad("the key is not base64"))?;
        let (&kind, public) = encoded.split_first().ok_or_else(|| bad("the key is empty"))?;
        if kind != ED25519 {
            return Err(bad("not an Ed25519 key (type byte 0x01)"));
        }
        let public: [u8; 32] = public.try_into().map_err(|_| bad("an Ed25519 key has 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&public).map_err(|_| bad("not a valid Ed25519 point"))?;
        if hex::encode(key_id(name, &key)) != id {
            return Err(bad("the key id does not match the name and key"));
        }
        Ok(VerifierKey {
            name: name.to_owned(),
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_checkpoint_round_trips_and_forgeries_fail() {
        let key = CheckpointKey::from_seed("agentd.local/test", &[7; 32]);
        let checkpoint = Checkpoint {
            origin: "agentd.local/test".into(),
            size: 1338,
            root: [9; 32],
        };
        let note = checkpoint.sign(&key);
        assert!(note.starts_with("agentd.local/test\n1338\nCQkJ"), "{note}");
        assert!(note.contains("\n\n\u{2014} agentd.local/test "), "{note}");
        let verifier: VerifierKey = key.verifier().to_string().parse().unwrap();
        assert_eq!(Checkpoint::verify(&note, &verifier).unwrap(), checkpoint);
        // A witness's extra signature line is ignored.
        let cosigned = format!("{note}\u{2014} witness.example AAAAAA==\n");
        assert_eq!(Checkpoint::verify(&cosigned, &verifier).unwrap(), checkpoint);
        // A changed size, another key, a truncated note: refused.
        let forged = note.replacen("1338", "1339", 1);
        assert!(matches!(
            Checkpoint::verify(&forged, &verifier),
            Err(CheckpointError::Unsigned { .. })
        ));
        let other = CheckpointKey::from_seed("agentd.local/test", &[8; 32]).verifier();
        assert!(Checkpoint::verify(&note, &other).is_err());
        assert!(Checkpoint::verify("agentd.local/test\n1338\n", &verifier).is_err());
        assert!(Checkpoint::parse_body("o\n012\nCQkJ\n").is_err());
        // A verifier key whose id does not match is refused.
        let text = verifier.to_string();
        let tampered = text.replacen("+", "+0", 1);
        assert!(tampered.parse::<VerifierKey>().is_err());
    }

    #[test]
    fn verifier_keys_whose_base64_holds_a_plus_parse() {
        // Regression: the key was split from the right on `+`, which base64 itself uses.
        let with_plus = (0u8..=255)
            .map(|seed| CheckpointKey::from_seed("agentd.local/test", &[seed; 32]).verifier())
            .filter(|verifier| verifier.to_string().matches('+').count() > 2)
            .take(5)
            .collect::<Vec<_>>();
        assert_eq!(with_plus.len(), 5);
        for verifier in with_plus {
            let parsed: VerifierKey = verifier.to_string().parse().unwrap();
            assert_eq!(parsed.to_string(), verifier.to_string());
        }
    }
}
