//! The external-issuer trust model: access tokens verified against an identity provider's JWKS
//! (EdDSA, ES256, RS256), the key chosen by `kid`, the algorithm pinned by the key. The keys
//! are made by openssl and the set exported by jwcrypto (tests/fixtures/jwks/README.md).

use control_plane::identity::Jwks;
use control_plane::{AutonomyCertificate, AutonomyLevel, IdentityError, Role, TokenAuthority, TokenConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jwks")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// An authority whose access tokens come from the provider of `jwks.json`.
fn external() -> TokenAuthority {
    let jwks = Jwks::parse(&fixture("jwks.json")).unwrap();
    assert_eq!(jwks.len(), 3);
    TokenAuthority::from_secret(&[1; 32], TokenConfig::default())
        .unwrap()
        .with_jwks(jwks)
}

fn claims(subject: &str) -> serde_json::Value {
    let config = TokenConfig::default();
    json!({
        "sub": subject, "iss": config.issuer, "aud": config.audience,
        "iat": now(), "exp": now() + 600, "tenant": "acme", "roles": ["reviewer"],
    })
}

/// A token as the provider signs it: `alg` and `kid` in the header, the key from a PEM.
fn provider_token(pem: &str, algorithm: Algorithm, kid: &str, claims: &serde_json::Value) -> String {
    let pem = fixture(pem);
    let key = match algorithm {
        Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        _ => EncodingKey::from_rsa_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

#[test]
fn each_provider_algorithm_verifies_with_the_key_its_kid_names() {
    let authority = external();
    assert!(authority.verifies_external_tokens());
    for (pem, algorithm, kid, subject) in [
        ("ed25519.pem", Algorithm::EdDSA, "ed-2026", "ed-user"),
        ("p256.pem", Algorithm::ES256, "ec-2026", "ec-user"),
        ("rsa2048.pem", Algorithm::RS256, "rsa-2026", "rsa-user"),
    ] {
        let token = provider_token(pem, algorithm, kid, &claims(subject));
        let principal = authority
            .verify(&token)
            .unwrap_or_else(|error| panic!("{kid}: {error}"));
        assert_eq!(principal.to_string(), format!("{subject}@acme"));
        assert!(principal.has_role(Role::Reviewer));
    }
}

/// Review finding: the runtime held the key that mints any principal. Under a JWKS it holds
/// none: it issues nothing, and a token of the local HS256 key is refused.
#[test]
fn the_runtime_mints_no_principal_under_a_jwks() {
    let local = TokenAuthority::from_secret(&[1; 32], TokenConfig::default()).unwrap();
    let local_token = local
        .issue("mallory", "acme", &[Role::Admin], std::time::Duration::from_secs(600))
        .unwrap();
    let authority = external();
    assert!(matches!(
        authority.verify(&local_token),
        Err(IdentityError::MissingKeyId)
    ));
    let error = authority
        .issue("mallory", "acme", &[Role::Admin], std::time::Duration::from_secs(600))
        .unwrap_err();
    assert!(matches!(error, IdentityError::ExternalIssuer), "{error}");

    // The runtime's own autonomy certificates still use its local key.
    let certificate = AutonomyCertificate {
        agent: "planner".into(),
        skill: "pii-redact".into(),
        tenant: "acme".into(),
        level: AutonomyLevel::L2,
        issued_by: "acme/alice".into(),
        issued_at: now(),
        expires_at: now() + 600,
    };
    let signed = authority.sign_certificate(&certificate).unwrap();
    assert_eq!(authority.verify_certificate(&signed).unwrap(), certificate);
}

/// The token never chooses the algorithm (RFC 8725 §3.1): the classic confusion attack (HS256
/// keyed with the public key's bytes), a key of one type named for another, no `kid`, an
/// unknown `kid`, `alg: none`, a tampered payload, an expired token.
#[test]
fn every_forgery_against_the_jwks_is_refused_with_its_own_error() {
    let authority = external();

    let mut confused = Header::new(Algorithm::HS256);
    confused.kid = Some("rsa-2026".into());
    let public_bytes = fixture("jwks.json");
    let forged = jsonwebtoken::encode(
        &confused,
        &claims("mallory"),
        &EncodingKey::from_secret(public_bytes.as_bytes()),
    )
    .unwrap();
    let error = authority.verify(&forged).unwrap_err();
    assert!(
        matches!(&error, IdentityError::WrongAlgorithm { expected } if expected == "RS256"),
        "{error}"
    );

    // Signed with the Ed25519 key but naming the P-256 key.
    let swapped = provider_token("ed25519.pem", Algorithm::EdDSA, "ec-2026", &claims("mallory"));
    let error = authority.verify(&swapped).unwrap_err();
    assert!(
        matches!(&error, IdentityError::WrongAlgorithm { expected } if expected == "ES256"),
        "{error}"
    );

    let unknown = provider_token("ed25519.pem", Algorithm::EdDSA, "ed-2019", &claims("mallory"));
    let error = authority.verify(&unknown).unwrap_err();
    assert_eq!(
        error.to_string(),
        "no key `ed-2019` in the JWKS: the token is from another issuer, or its key was rotated out"
    );

    let none = format!(
        "{}.{}.",
        base64_url(br#"{"alg":"none","kid":"ed-2026"}"#),
        base64_url(claims("mallory").to_string().as_bytes())
    );
    assert!(matches!(authority.verify(&none), Err(IdentityError::Malformed(_))));

    let good = provider_token("ed25519.pem", Algorithm::EdDSA, "ed-2026", &claims("alice"));
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = base64_url(claims("mallory").to_string().as_bytes());
    assert!(matches!(
        authority.verify(&parts.join(".")),
        Err(IdentityError::BadSignature)
    ));

    let mut old = claims("alice");
    old["iat"] = json!(now() - 7200);
    old["exp"] = json!(now() - 3600);
    let expired = provider_token("p256.pem", Algorithm::ES256, "ec-2026", &old);
    assert!(matches!(authority.verify(&expired), Err(IdentityError::Expired)));

    // The claim rules are the local model's: canonical subject, no `system:`.
    let system = provider_token("rsa2048.pem", Algorithm::RS256, "rsa-2026", &claims("system:recovery"));
    assert!(matches!(
        authority.verify(&system),
        Err(IdentityError::ReservedSubject(_))
    ));
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn a_jwks_that_could_mint_or_is_weak_or_ambiguous_is_refused() {
    let refused = |text: &str| match Jwks::parse(text) {
        Err(IdentityError::Jwks(message)) => message,
        other => panic!("{text}: {other:?}"),
    };
    assert!(refused(&fixture("weak-rsa.json")).ends_with("its RSA modulus is 1024 bits; at least 2048 are required"));
    assert!(refused(&fixture("private.json")).contains("holds the private member `d`"));

    let jwks: serde_json::Value = serde_json::from_str(&fixture("jwks.json")).unwrap();
    let with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut copy = jwks.clone();
        edit(&mut copy);
        refused(&copy.to_string())
    };
    assert_eq!(
        with(&|set| set["keys"][0]["alg"] = json!("RS256")),
        "key 0 (`ed-2026`): its `alg` is `RS256`, but this key verifies EdDSA only"
    );
    assert_eq!(
        with(&|set| set["keys"][1]["kid"] = json!("ed-2026")),
        "key 1 (`ed-2026`): the `kid` appears twice"
    );
    assert!(with(&|set| set["keys"][2]["use"] = json!("enc")).contains("its `use` is Encryption, not `sig`"));
    assert!(
        with(&|set| {
            set["keys"][0].as_object_mut().unwrap().remove("kid");
        })
        .ends_with("has no `kid`; tokens select their key by it")
    );
    assert!(
        with(&|set| set["keys"][0] = json!({ "kty": "oct", "kid": "shared", "k": "c2VjcmV0" }))
            .contains("private member `k`")
    );
    assert!(with(&|set| set["keys"][1]["crv"] = json!("P-384")).contains("key type or curve is not supported"),);
    assert_eq!(refused(r#"{"keys": []}"#), "its `keys` array is empty");
    assert_eq!(refused(r#"{"jwks": []}"#), "it has no `keys` array (RFC 7517 §5)");
    assert!(refused("not json").starts_with("it is not JSON"));
}
