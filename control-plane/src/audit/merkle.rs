//! The audit log as a Merkle tree (RFC 9162, Certificate Transparency 2.0, §2.1): each entry is
//! a leaf, and the tree head (size, root) commits to every entry so far.
//!
//! - Leaf hash: `SHA-256(0x00 || entry hash)`, where the entry hash is the 32-byte chain hash of
//!   [`super::entry_hash`] (which covers every field of the entry).
//! - Node hash: `SHA-256(0x01 || left || right)`.
//!
//! The log keeps a [`Frontier`] (the roots of the perfect subtrees its leaves decompose into,
//! O(log n) hashes), so each append updates the head in O(log n) hashing. Proofs are generated
//! from the leaf hashes with the recursive definitions of RFC 9162 §2.1.3.1 (`PATH`) and
//! §2.1.4.1 (`PROOF`/`SUBPROOF`), O(n) hashing each, and verified with the `ct-merkle` crate's
//! RFC 6962 verifier, so no database is needed to check one.

use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 || data)`: the hash of a leaf.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// The leaf hash of an audit entry, from its hex chain hash.
///
/// # Errors
///
/// When `entry_hash_hex` is not 64 hex digits.
pub fn entry_leaf(entry_hash_hex: &str) -> Result<Hash, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(entry_hash_hex, &mut bytes)
        .map_err(|error| format!("entry hash `{entry_hash_hex}` is not 64 hex digits: {error}"))?;
    Ok(leaf_hash(&bytes))
}

/// `MTH({})`: the root of the empty tree, `SHA-256()` of nothing.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of a tree: the roots of the perfect subtrees that its `size` leaves decompose
/// into, largest (leftmost) first. Appending a leaf and reading the root are O(log n).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frontier {
    size: u64,
    /// One root per set bit of `size`, from the highest bit down.
    roots: Vec<Hash>,
}

impl Frontier {
    /// The empty tree.
    pub fn new() -> Self {
        Frontier::default()
    }

    /// Leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = leaf;
        // Merge with the equal-sized subtrees on the right edge: one per trailing one bit.
        let mut merges = self.size.trailing_ones();
        while merges > 0 {
            let Some(left) = self.roots.pop() else { break };
            node = node_hash(&left, &node);
            merges -= 1;
        }
        self.roots.push(node);
        self.size += 1;
    }

    /// `MTH(D[size])` (RFC 9162 §2.1.1): the subtrees folded from the right.
    pub fn root(&self) -> Hash {
        let mut roots = self.roots.iter().rev();
        let Some(last) = roots.next() else {
            return empty_root();
        };
        roots.fold(*last, |right, left| node_hash(left, &right))
    }

    /// The stored form: the size (8 bytes, big-endian) then the subtree roots.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.size.to_be_bytes().to_vec();
        for root in &self.roots {
            bytes.extend_from_slice(root);
        }
        bytes
    }

    /// Reads the stored form back.
    ///
    /// # Errors
    ///
    /// When the bytes are not a size followed by exactly one root per set bit of it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 8 || !(bytes.len() - 8).is_multiple_of(32) {
            return Err(format!("a frontier of {} bytes is malformed", bytes.len()));
        }
        let size = u64::from_be_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        let roots: Vec<Hash> = bytes[8..]
            .chunks_exact(32)
            .map(|chunk| chunk.try_into().unwrap_or([0; 32]))
            .collect();
        if roots.len() != size.count_ones() as usize {
            return Err(format!(
                "a frontier of size {size} needs {} subtree roots, found {}",
                size.count_ones(),
                roots.len()
            ));
        }
        Ok(Frontier { size, roots })
    }
}

/// `MTH(D[n])` of the leaf hashes (RFC 9162 §2.1.1).
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = largest_power_of_two_below(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

/// The largest power of two strictly less than `n` (for `n > 1`).
fn largest_power_of_two_below(n: usize) -> usize {
    debug_assert!(n > 1);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// `PATH(m, D[n])` (RFC 9162 §2.1.3.1): the audit path of leaf `m`, from the leaf up.
pub fn inclusion_path(leaves: &[Hash], m: usize) -> Vec<Hash> {
    let mut path = Vec::new();
    path_into(leaves, m, &mut path);
    path
}

fn path_into(leaves: &[Hash], m: usize, path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = largest_power_of_two_below(n);
    if m < k {
        path_into(&leaves[..k], m, path);
        path.push(root_of(&leaves[k..]));
    } else {
        path_into(&leaves[k..], m - k, path);
        path.push(root_of(&leaves[..k]));
    }
}

/// `PROOF(m, D[n])` (RFC 9162 §2.1.4.1): the consistency proof that the first `m` leaves are a
/// prefix of all `n`.
pub fn consistency_proof(leaves: &[Hash], m: usize) -> Vec<Hash> {
    let mut proof = Vec::new();
    if m > 0 && m < leaves.len() {
        subproof_into(leaves, m, true, &mut proof);
    }
    proof
}

fn subproof_into(leaves: &[Hash], m: usize, complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root_of(leaves));
        }
        return;
    }
    let k = largest_power_of_two_below(n);
    if m <= k {
        subproof_into(&leaves[..k], m, complete, proof);
        proof.push(root_of(&leaves[k..]));
    } else {
        subproof_into(&leaves[k..], m - k, false, proof);
        proof.push(root_of(&leaves[..k]));
    }
}

/// Why a proof did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The proof's hashes do not lead to the claimed root.
    #[error("the proof does not lead to the claimed root: {0}")]
    Mismatch(String),
    /// The indices or sizes are impossible (an index past the tree, an older size larger than
    /// the newer).
    #[error("impossible proof parameters: {0}")]
    Parameters(String),
}

fn ct_root(root: &Hash, size: u64) -> ct_merkle::RootHash<sha2_011::Sha256> {
    ct_merkle::RootHash::new((*root).into(), size)
}

fn proof_bytes(path: &[Hash]) -> Vec<u8> {
    path.iter().flatten().copied().collect()
}

/// Verifies that `entry_hash` (32 bytes) is leaf `index` of the tree of `size` leaves whose root
/// is `root`, by `path` (RFC 9162 §2.1.3.2, through `ct-merkle`).
///
/// # Errors
///
/// [`ProofError`] naming what does not hold.
pub fn verify_inclusion(
    entry_hash: &Hash,
    index: u64,
    size: u64,
    path: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::Parameters(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    // ct-merkle hashes the leaf itself (0x00 || value): the value is the entry hash.
    let proof = ct_merkle::InclusionProof::<sha2_011::Sha256>::try_from_bytes(proof_bytes(path))
        .map_err(|error| ProofError::Parameters(format!("{error:?}")))?;
    if path.len() != expected_path_len(index, size) {
        return Err(ProofError::Mismatch(format!(
            "a path of {} hashes cannot prove leaf {index} of {size}",
            path.len()
        )));
    }
    ct_root(root, size)
        .verify_inclusion(entry_hash, index, &proof)
        .map_err(|error| ProofError::Mismatch(format!("{error:?}")))
}

/// Verifies that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of
/// `new_size` leaves with root `new_root`, by `proof` (RFC 9162 §2.1.4.2, through `ct-merkle`).
///
/// # Errors
///
/// [`ProofError`] naming what does not hold.
pub fn verify_consistency(
    old_size: u64,
    old_root: &Hash,
    new_size: u64,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::Parameters(format!(
            "an older tree of {old_size} leaves cannot be a prefix of one of {new_size}"
        )));
    }
    if old_size == new_size {
        return if old_root == new_root && proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch(format!(
                "two trees of {new_size} leaves with different roots"
            )))
        };
    }
    if old_size == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            Err(ProofError::Mismatch("the empty tree needs no proof".into()))
        };
    }
    let parsed = ct_merkle::ConsistencyProof::<sha2_011::Sha256>::try_from_bytes(proof_bytes(proof))
        .map_err(|error| ProofError::Parameters(format!("{error:?}")))?;
    ct_root(new_root, new_size)
        .verify_consistency(&ct_root(old_root, old_size), &parsed)
        .map_err(|error| ProofError::Mismatch(format!("{error:?}")))
}

/// The length of `PATH(index, D[size])`.
fn expected_path_len(index: u64, size: u64) -> usize {
    let (mut index, mut size, mut length) = (index, size, 0);
    while size > 1 {
        let k = 1u64 << (u64::BITS - 1 - (size - 1).leading_zeros());
        if index < k {
            size = k;
        } else {
            index -= k;
            size -= k;
        }
        length += 1;
    }
    length
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> (Vec<Hash>, Vec<Hash>) {
        let values: Vec<Hash> = (0..n)
            .map(|i| Sha256::digest(i.to_string().as_bytes()).into())
            .collect();
        let hashes = values.iter().map(|value| leaf_hash(value)).collect();
        (values, hashes)
    }

    #[test]
    fn the_frontier_agrees_with_the_recursive_definition_at_every_size() {
        let (_, hashes) = leaves(300);
        let mut frontier = Frontier::new();
        assert_eq!(frontier.root(), empty_root());
        for n in 1..=300 {
            frontier.push(hashes[n - 1]);
            assert_eq!(frontier.root(), root_of(&hashes[..n]), "size {n}");
            assert_eq!(Frontier::from_bytes(&frontier.to_bytes()).unwrap(), frontier);
        }
        assert!(Frontier::from_bytes(&[0; 9]).is_err());
        let mut wrong = frontier.to_bytes();
        wrong.truncate(wrong.len() - 32);
        assert!(Frontier::from_bytes(&wrong).is_err());
    }

    #[test]
    fn our_proofs_verify_with_ct_merkle_and_match_its_own_proofs() {
        use ct_merkle::mem_backed_tree::MemoryBackedTree;
        let (values, hashes) = leaves(70);
        for n in 1..=70 {
            let mut tree = MemoryBackedTree::<sha2_011::Sha256, [u8; 32]>::new();
            for value in &values[..n] {
                tree.push(*value);
            }
            let root = root_of(&hashes[..n]);
            assert_eq!(tree.root().as_bytes().as_slice(), root.as_slice(), "root of {n}");
            for m in 0..n {
                let path = inclusion_path(&hashes[..n], m);
                assert_eq!(
                    proof_bytes(&path),
                    tree.prove_inclusion(m).as_bytes().to_vec(),
                    "path {m} of {n}"
                );
                verify_inclusion(&values[m], m as u64, n as u64, &path, &root).unwrap();
                // Any other leaf, index or root fails.
                let other = (m + 1) % n;
                if other != m {
                    assert!(verify_inclusion(&values[other], m as u64, n as u64, &path, &root).is_err());
                }
                assert!(verify_inclusion(&values[m], m as u64, n as u64, &path, &empty_root()).is_err());
            }
            for m in 1..n {
                let proof = consistency_proof(&hashes[..n], m);
                assert_eq!(
                    proof_bytes(&proof),
                    tree.prove_consistency(n - m).as_bytes().to_vec(),
                    "consistency {m} of {n}"
                );
                let old_root = root_of(&hashes[..m]);
                verify_consistency(m as u64, &old_root, n as u64, &root, &proof).unwrap();
                assert!(verify_consistency(m as u64, &root, n as u64, &root, &proof).is_err());
            }
        }
    }
}
