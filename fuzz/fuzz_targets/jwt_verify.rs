//! JWT verification. The first byte picks the mode:
//! - even: the rest is a raw token (forged, truncated, any text);
//! - odd: the rest is `header JSON \0 claims JSON`, signed with the verifier's own HS256 key, so
//!   the claim checks behind the signature are reached with any claim shape.
//!
//! A token is refused with a typed error, or its principal is canonical, not `system:`, and has
//! a role.
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use control_plane::identity::check_identifier;
use control_plane::{TokenAuthority, TokenConfig};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;

const SECRET: [u8; 32] = [7; 32];

fn check(authority: &TokenAuthority, token: &str) {
    if let Ok(principal) = authority.verify(token) {
        check_identifier("subject", &principal.subject).expect("a verified subject is canonical");
        check_identifier("tenant", &principal.tenant).expect("a verified tenant is canonical");
        assert!(!principal.subject.starts_with("system:"));
        assert!(!principal.roles.is_empty());
    }
}

fuzz_target!(|data: &[u8]| {
    let authority = TokenAuthority::from_secret(&SECRET, TokenConfig::default()).unwrap();
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            check(&authority, token);
        }
        return;
    }
    let mut parts = rest.splitn(2, |byte| *byte == 0);
    let header = parts.next().unwrap_or_default();
    let claims = parts.next().unwrap_or_default();
    let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&SECRET).unwrap();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    check(&authority, &format!("{signing_input}.{signature}"));
});
