//! Public keys of an external identity provider, as a JSON Web Key Set (RFC 7517 §5), for a
//! deployment whose runtime must not be able to mint principals: it verifies access tokens
//! (EdDSA, ES256 or RS256; RFC 7518 §3, RFC 8037) and holds no key that signs them.
//!
//! Each key is selected by the token header's `kid` and its algorithm is pinned when the set is
//! loaded, from the key itself: an Ed25519 key verifies only EdDSA, a P-256 key only ES256, an
//! RSA key only RS256 (RFC 8725 §3.1: never let the token choose). A header naming another
//! algorithm is refused before any signature check.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

use super::IdentityError;

/// Most keys a set may hold (providers publish a handful: current, next, previous).
pub const MAX_JWKS_KEYS: usize = 64;

/// Smallest RSA modulus accepted, bits (RFC 8725 §3.5 and NIST SP 800-131A: 2048).
pub const MIN_RSA_BITS: usize = 2048;

/// Private-key members of a JWK (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2): a set holding
/// any of them is refused, since the runtime must hold public keys only.
const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// One verification key: its `kid`, pinned algorithm and key.
struct Key {
    algorithm: Algorithm,
    key: DecodingKey,
}

/// A verified JSON Web Key Set: `kid` to (pinned algorithm, public key).
pub struct Jwks {
    keys: BTreeMap<String, Key>,
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(kid, key)| (kid, key.algorithm)))
            .finish()
    }
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`) and pins each key's algorithm.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Jwks`] naming the key (by index and `kid`) and what is wrong: not JSON,
    /// no `keys` array, more than [`MAX_JWKS_KEYS`] keys, a missing or repeated `kid`, a `use`
    /// other than `sig`, a private or symmetric key, an RSA modulus under [`MIN_RSA_BITS`], or
    /// a key type, curve or `alg` other than Ed25519/EdDSA, P-256/ES256 and RSA/RS256.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let refuse = |message: String| IdentityError::Jwks(message);
        let document: serde_json::Value =
            serde_json::from_str(text).map_err(|error| refuse(format!("it is not JSON: {error}")))?;
        let Some(entries) = document.get("keys").and_then(serde_json::Value::as_array) else {
            return Err(refuse("it has no `keys` array (RFC 7517 §5)".to_owned()));
        };
        if entries.is_empty() {
            return Err(refuse("its `keys` array is empty".to_owned()));
        }
        if entries.len() > MAX_JWKS_KEYS {
            return Err(refuse(format!(
                "it holds {} keys; at most {MAX_JWKS_KEYS} are accepted",
                entries.len()
            )));
        }
        let mut keys = BTreeMap::new();
        for (index, entry) in entries.iter().enumerate() {
            let kid = entry.get("kid").and_then(serde_json::Value::as_str).unwrap_or("");
            let name = if kid.is_empty() {
                format!("key {index}")
            } else {
                format!("key {index} (`{}`)", kid.escape_debug())
            };
            let key = parse_key(entry).map_err(|message| refuse(format!("{name}: {message}")))?;
            if kid.is_empty() {
                return Err(refuse(format!("{name} has no `kid`; tokens select their key by it")));
            }
            if keys.insert(kid.to_owned(), key).is_some() {
                return Err(refuse(format!("{name}: the `kid` appears twice")));
            }
        }
        Ok(Jwks { keys })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether the set holds no key (never true for a parsed set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `kid` names and the one algorithm it verifies.
    ///
    /// # Errors
    ///
    /// [`IdentityError::UnknownKeyId`].
    pub(crate) fn key(&self, kid: &str) -> Result<(Algorithm, &DecodingKey), IdentityError> {
        self.keys
            .get(kid)
            .map(|key| (key.algorithm, &key.key))
            .ok_or_else(|| IdentityError::UnknownKeyId(kid.escape_debug().to_string()))
    }
}

/// One key of the set, or what is wrong with it.
fn parse_key(entry: &serde_json::Value) -> Result<Key, String> {
    let Some(object) = entry.as_object() else {
        return Err("it is not a JSON object".to_owned());
    };
    if let Some(member) = PRIVATE_MEMBERS.iter().find(|member| object.contains_key(**member)) {
        return Err(format!(
            "it holds the private member `{member}`; give the runtime public keys only \
             (a key that verifies must not be able to sign)"
        ));
    }
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|error| format!("it is not a JWK: {error}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("its `use` is {other:?}, not `sig`")),
    }
    let declared = object.get("alg").and_then(serde_json::Value::as_str);
    let (algorithm, name) = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, "EdDSA")
        }
        AlgorithmParameters::EllipticCurve(params) if params.curve == EllipticCurve::P256 => {
            (Algorithm::ES256, "ES256")
        }
        AlgorithmParameters::RSA(params) => {
            let modulus = URL_SAFE_NO_PAD
                .decode(params.n.trim_end_matches('='))
                .map_err(|error| format!("its modulus `n` is not base64url: {error}"))?;
            let bits = modulus_bits(&modulus);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "its RSA modulus is {bits} bits; at least {MIN_RSA_BITS} are required"
                ));
            }
            (Algorithm::RS256, "RS256")
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err("it is a symmetric (`oct`) key; a JWKS for agentd holds public keys only".to_owned());
        }
        _ => {
            return Err(
                "its key type or curve is not supported: use OKP/Ed25519 (EdDSA), EC/P-256 (ES256) or RSA (RS256)"
                    .to_owned(),
            );
        }
    };
    if let Some(declared) = declared
        && declared != name
    {
        return Err(format!(
            "its `alg` is `{}`, but this key verifies {name} only",
            declared.escape_debug()
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|error| format!("its key material is invalid: {error}"))?;
    Ok(Key { algorithm, key })
}

/// Significant bits of a big-endian unsigned integer.
fn modulus_bits(bytes: &[u8]) -> usize {
    let Some(first) = bytes.iter().position(|byte| *byte != 0) else {
        return 0;
    };
    (bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize
}
