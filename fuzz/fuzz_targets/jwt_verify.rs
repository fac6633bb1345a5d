//! JWT verification, in both trust models (ADR 0012). The first byte picks the mode:
//! - `% 4 == 0`: the rest is a raw token for the local HS256 authority (forged, truncated, any
//!   text);
//! - `% 4 == 1`: the rest is `header JSON \0 claims JSON`, MAC'd with the local authority's own
//!   HS256 key, so the claim checks behind the signature are reached with any claim shape;
//! - `% 4 == 2`: a raw token for an authority that verifies against a JWKS (EdDSA, ES256,
//!   RS256 keys);
//! - `% 4 == 3`: `header JSON \0 claims JSON` signed with the JWKS's Ed25519 private key, so the
//!   `kid` and pinned-algorithm checks and the claim checks are reached with any header.
//!
//! A token is refused with a typed error, or its principal is canonical, not `system:`, and has
//! a role; under the JWKS, only a header naming the Ed25519 key with `alg: EdDSA` may pass.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use control_plane::identity::{Jwks, check_identifier};
use control_plane::{TokenAuthority, TokenConfig};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [7; 32];
const JWKS: &str = include_str!("../../control-plane/tests/fixtures/jwks/jwks.json");
const ED25519_PEM: &str = include_str!("../../control-plane/tests/fixtures/jwks/ed25519.pem");

/// Seeds carry times relative to this instant (2023-11-14); a signed token's `iat`, `nbf` and
/// `exp` are moved by `now - TIME_BASE`, so seeds stay valid while the fuzzer picks any value.
/// (A first version instead set a century of leeway, which found jsonwebtoken's unchecked
/// `now - leeway`: see `MAX_LEEWAY_SECS`.)
const TIME_BASE: i64 = 1_700_000_000;

fn config() -> TokenConfig {
    TokenConfig::default()
}

/// `claims` with numeric `iat`, `nbf` and `exp` shifted to today; other text as it is.
fn shifted(claims: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut object)) = serde_json::from_slice::<serde_json::Value>(claims) else {
        return claims.to_vec();
    };
    let shift = i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX) - TIME_BASE;
    for name in ["iat", "nbf", "exp"] {
        if let Some(time) = object.get(name).and_then(serde_json::Value::as_i64) {
            object.insert(name.to_owned(), time.saturating_add(shift).into());
        }
    }
    serde_json::Value::Object(object).to_string().into_bytes()
}

fn local() -> &'static TokenAuthority {
    static AUTHORITY: OnceLock<TokenAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| TokenAuthority::from_secret(&SECRET, config()).unwrap())
}

fn external() -> &'static TokenAuthority {
    static AUTHORITY: OnceLock<TokenAuthority> = OnceLock::new();
    AUTHORITY.get_or_init(|| {
        TokenAuthority::from_secret(&SECRET, config())
            .unwrap()
            .with_jwks(Jwks::parse(JWKS).unwrap())
    })
}

fn check(authority: &TokenAuthority, token: &str) -> bool {
    let Ok(principal) = authority.verify(token) else {
        return false;
    };
    check_identifier("subject", &principal.subject).expect("a verified subject is canonical");
    check_identifier("tenant", &principal.tenant).expect("a verified tenant is canonical");
    assert!(!principal.subject.starts_with("system:"));
    assert!(!principal.roles.is_empty());
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            check(if mode % 4 == 0 { local() } else { external() }, token);
        }
        return;
    }
    let mut parts = rest.splitn(2, |byte| *byte == 0);
    let header = parts.next().unwrap_or_default();
    let claims = shifted(parts.next().unwrap_or_default());
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(&claims));
    if mode % 4 == 1 {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&SECRET).unwrap();
        mac.update(signing_input.as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        check(local(), &format!("{signing_input}.{signature}"));
        return;
    }
    let key = jsonwebtoken::EncodingKey::from_ed_pem(ED25519_PEM.as_bytes()).unwrap();
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, jsonwebtoken::Algorithm::EdDSA).unwrap();
    if check(external(), &format!("{signing_input}.{signature}")) {
        let header: serde_json::Value = serde_json::from_slice(header).expect("a verified header is JSON");
        assert_eq!(
            header["kid"], "ed-2026",
            "only the Ed25519 key's kid verifies its signature"
        );
        assert_eq!(header["alg"], "EdDSA", "the algorithm is pinned by the key");
    }
});
