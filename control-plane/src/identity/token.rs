//! The token authority: issues and verifies HS256 JWTs (RFC 7519, RFC 7518 §3.2) with
//! `jsonwebtoken`, for access tokens and for autonomy certificates alike.
//!
//! An access token must carry `sub`, `iss`, `aud` and `exp` (plus agentd's `tenant` and `roles`
//! claims); clock skew is tolerated up to [`TokenConfig::leeway_secs`], set explicitly. The
//! two kinds of token differ only in their audience, so neither passes as the other; both go
//! through the one verification path, [`TokenAuthority::decode`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;

use super::{IdentityError, Principal, Role, SYSTEM_SUBJECT_PREFIX, check_identifier};
use crate::autonomy::{AutonomyCertificate, AutonomyLevel, CERTIFICATE_AUDIENCE};

/// Bytes of a freshly generated HS256 key; also the minimum accepted (RFC 7518 §3.2).
pub const HS256_KEY_BYTES: usize = 32;

/// The JWT claims agentd issues and requires of an access token.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    /// Subject.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Tenant.
    pub tenant: String,
    /// Role names.
    pub roles: Vec<String>,
}

/// The JWT claims of an autonomy certificate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct CertificateClaims {
    sub: String,
    iss: String,
    aud: String,
    exp: u64,
    iat: u64,
    tenant: String,
    skill: String,
    level: AutonomyLevel,
    issued_by: String,
}

/// What a token must say to be accepted.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud` of access tokens.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, seconds; at most [`MAX_LEEWAY_SECS`].
    pub leeway_secs: u64,
    /// Longest access-token lifetime accepted (`exp - iat`), seconds; also the longest
    /// [`TokenAuthority::issue`] signs. Default 30 days.
    pub max_lifetime_secs: u64,
}

/// Largest [`TokenConfig::leeway_secs`] accepted: one hour. Found by fuzzing: jsonwebtoken 10.4
/// computes `now - leeway` unchecked, so a leeway larger than the current Unix time panicked in
/// a debug build and, in a release build, wrapped around and made every token "expired".
pub const MAX_LEEWAY_SECS: u64 = 3600;

/// Default [`TokenConfig::max_lifetime_secs`]: 30 days.
pub const DEFAULT_MAX_LIFETIME_SECS: u64 = 30 * 24 * 3600;

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            issuer: "agentd-local".to_owned(),
            audience: "agentd".to_owned(),
            leeway_secs: 5,
            max_lifetime_secs: DEFAULT_MAX_LIFETIME_SECS,
        }
    }
}

/// The authority that turns a bearer token into a [`Principal`], and signs autonomy
/// certificates.
///
/// Two trust models (ADR 0010):
/// - **local** ([`TokenAuthority::from_secret`], [`TokenAuthority::load_or_create`]): one HS256
///   key in the state directory issues and verifies access tokens; whoever can read it can mint
///   any principal. For a quick start and a single operator.
/// - **external issuer** ([`TokenAuthority::with_jwks`]): access tokens are verified only against
///   an identity provider's public keys (EdDSA, ES256, RS256; `kid`-selected, algorithm pinned
///   per key) and [`TokenAuthority::issue`] is refused, so the runtime holds no key that mints a
///   principal. The HS256 key then only signs the runtime's own autonomy certificates.
pub struct TokenAuthority {
    config: TokenConfig,
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
    jwks: Option<super::jwks::Jwks>,
}

impl fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenAuthority")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl TokenAuthority {
    /// An authority over `secret`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::WeakKey`] when `secret` is shorter than [`HS256_KEY_BYTES`],
    /// [`IdentityError::LeewayTooLarge`] when `config.leeway_secs` exceeds [`MAX_LEEWAY_SECS`].
    pub fn from_secret(secret: &[u8], config: TokenConfig) -> Result<Self, IdentityError> {
        if secret.len() < HS256_KEY_BYTES {
            return Err(IdentityError::WeakKey(secret.len()));
        }
        if config.leeway_secs > MAX_LEEWAY_SECS {
            return Err(IdentityError::LeewayTooLarge {
                found: config.leeway_secs,
                max: MAX_LEEWAY_SECS,
            });
        }
        Ok(TokenAuthority {
            config,
            encoding_key: EncodingKey::from_secret(secret),
            decoding_key: DecodingKey::from_secret(secret),
            jwks: None,
        })
    }

    /// This authority, verifying access tokens against `jwks` only (the external-issuer trust
    /// model): HS256 access tokens are refused from then on, and so is [`TokenAuthority::issue`].
    /// Autonomy certificates stay signed with the HS256 key: they are the runtime's own.
    pub fn with_jwks(mut self, jwks: super::jwks::Jwks) -> Self {
        self.jwks = Some(jwks);
        self
    }

    /// Whether access tokens come from an external issuer (a JWKS was given).
    pub fn verifies_external_tokens(&self) -> bool {
        self.jwks.is_some()
    }

    /// Loads the key at `path`, creating it with [`HS256_KEY_BYTES`] random bytes (mode 0600)
    /// if it does not exist ([`crate::keys::load_or_create`]).
    ///
    /// # Errors
    ///
    /// [`IdentityError::KeyFile`] on I/O failure, [`IdentityError::WeakKey`] for a short key file.
    pub fn load_or_create(path: &Path, config: TokenConfig) -> Result<Self, IdentityError> {
        let secret = crate::keys::load_or_create(path, HS256_KEY_BYTES)?;
        Self::from_secret(&secret, config)
    }

    /// The configuration tokens are checked against.
    pub fn config(&self) -> &TokenConfig {
        &self.config
    }

    /// Signs a token for `subject` in `tenant` with `roles`, valid for `ttl`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Incomplete`] for an empty subject, tenant or role list,
    /// [`IdentityError::ReservedSubject`] for a `system:` subject.
    pub fn issue(&self, subject: &str, tenant: &str, roles: &[Role], ttl: Duration) -> Result<String, IdentityError> {
        self.issue_at(subject, tenant, roles, now_secs(), ttl)
    }

    /// Like [`TokenAuthority::issue`] with an explicit issue time (seconds since the epoch);
    /// tests use it to make expired tokens.
    ///
    /// # Errors
    ///
    /// As [`TokenAuthority::issue`].
    pub fn issue_at(
        &self,
        subject: &str,
        tenant: &str,
        roles: &[Role],
        issued_at_secs: u64,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        if self.jwks.is_some() {
            return Err(IdentityError::ExternalIssuer);
        }
        if subject.is_empty() || tenant.is_empty() || roles.is_empty() {
            return Err(IdentityError::Incomplete);
        }
        if subject
            .to_ascii_lowercase()
            .trim_start()
            .starts_with(SYSTEM_SUBJECT_PREFIX)
        {
            return Err(IdentityError::ReservedSubject(subject.to_owned()));
        }
        check_identifier("subject", subject)?;
        check_identifier("tenant", tenant)?;
        let max_secs = self.config.max_lifetime_secs;
        let exp = issued_at_secs
            .checked_add(ttl.as_secs())
            .filter(|_| ttl.as_secs() <= max_secs)
            .ok_or(IdentityError::LifetimeTooLong { max_secs })?;
        let claims = Claims {
            sub: subject.to_owned(),
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            exp,
            iat: issued_at_secs,
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|role| role.as_str().to_owned()).collect(),
        };
        self.sign(&claims)
    }

    /// Verifies an access token and returns its principal.
    ///
    /// # Errors
    ///
    /// An [`IdentityError`] naming exactly what was wrong: expired, bad signature, wrong audience
    /// or issuer, missing claim, wrong algorithm, unknown role, reserved subject, malformed.
    pub fn verify(&self, token: &str) -> Result<Principal, IdentityError> {
        let claims: Claims = self.decode(token, &self.config.audience, true)?;
        let max_secs = self.config.max_lifetime_secs;
        if claims.exp.saturating_sub(claims.iat) > max_secs {
            return Err(IdentityError::LifetimeTooLong { max_secs });
        }
        let roles = claims
            .roles
            .iter()
            .map(|name| name.parse())
            .collect::<Result<BTreeSet<Role>, _>>()?;
        if claims.sub.is_empty() || claims.tenant.is_empty() || roles.is_empty() {
            return Err(IdentityError::Incomplete);
        }
        if claims
            .sub
            .to_ascii_lowercase()
            .trim_start()
            .starts_with(SYSTEM_SUBJECT_PREFIX)
        {
            return Err(IdentityError::ReservedSubject(claims.sub));
        }
        check_identifier("subject", &claims.sub)?;
        check_identifier("tenant", &claims.tenant)?;
        Ok(Principal {
            subject: claims.sub,
            tenant: claims.tenant,
            roles,
        })
    }

    /// Signs an autonomy certificate (a JWT with audience [`CERTIFICATE_AUDIENCE`], so it never
    /// passes as an access token).
    ///
    /// # Errors
    ///
    /// [`IdentityError::Incomplete`] when agent, skill or tenant is empty,
    /// [`IdentityError::Signing`] when signing fails.
    pub fn sign_certificate(&self, certificate: &AutonomyCertificate) -> Result<String, IdentityError> {
        if certificate.agent.is_empty() || certificate.skill.is_empty() || certificate.tenant.is_empty() {
            return Err(IdentityError::Incomplete);
        }
        self.sign(&CertificateClaims {
            sub: certificate.agent.clone(),
            iss: self.config.issuer.clone(),
            aud: CERTIFICATE_AUDIENCE.to_owned(),
            exp: certificate.expires_at,
            iat: certificate.issued_at,
            tenant: certificate.tenant.clone(),
            skill: certificate.skill.clone(),
            level: certificate.level,
            issued_by: certificate.issued_by.clone(),
        })
    }

    /// Verifies an autonomy certificate's signature, issuer, audience and expiry.
    ///
    /// # Errors
    ///
    /// The [`IdentityError`] naming what is wrong, as for [`TokenAuthority::verify`].
    pub fn verify_certificate(&self, token: &str) -> Result<AutonomyCertificate, IdentityError> {
        let claims: CertificateClaims = self.decode(token, CERTIFICATE_AUDIENCE, false)?;
        Ok(AutonomyCertificate {
            agent: claims.sub,
            skill: claims.skill,
            tenant: claims.tenant,
            level: claims.level,
            issued_by: claims.issued_by,
            issued_at: claims.iat,
            expires_at: claims.exp,
        })
    }

    fn sign<C: serde::Serialize>(&self, claims: &C) -> Result<String, IdentityError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding_key)
            .map_err(|error| IdentityError::Signing(error.to_string()))
    }

    /// The one verification path: no `crit` header (RFC 7515 §4.1.11: agentd understands no
    /// extension), the key and its pinned algorithm (for an access token under a JWKS, the key
    /// the header's `kid` names, and the header's `alg` must be that key's; otherwise HS256 and
    /// the local key), the signature, `exp` and `nbf` with the leeway, `iss`, `aud` equal to
    /// `audience`, the registered claims `exp`, `iss`, `aud` and `sub` present, then the claims'
    /// shape `C`, and `iat` not in the future (beyond the leeway).
    fn decode<C: DeserializeOwned + IssuedAt>(
        &self,
        token: &str,
        audience: &str,
        access_token: bool,
    ) -> Result<C, IdentityError> {
        let token = token.trim();
        let header = jsonwebtoken::decode_header(token);
        if let Ok(header) = &header
            && let Some(critical) = &header.crit
        {
            return Err(IdentityError::UnsupportedCritical(critical.clone()));
        }
        let (algorithm, key) = match (&self.jwks, access_token) {
            (Some(jwks), true) => {
                let header = header.map_err(|error| IdentityError::Malformed(error.to_string()))?;
                let kid = header.kid.as_deref().filter(|kid| !kid.is_empty());
                let (algorithm, key) = jwks.key(kid.ok_or(IdentityError::MissingKeyId)?)?;
                if header.alg != algorithm {
                    return Err(IdentityError::WrongAlgorithm {
                        expected: format!("{algorithm:?}"),
                    });
                }
                (algorithm, key)
            }
            _ => (Algorithm::HS256, &self.decoding_key),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.config.leeway_secs;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<C>(token, key, &validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => IdentityError::Expired,
                ErrorKind::ImmatureSignature => IdentityError::NotYetValid,
                ErrorKind::InvalidSignature => IdentityError::BadSignature,
                ErrorKind::InvalidAudience => IdentityError::WrongAudience {
                    expected: audience.to_owned(),
                },
                ErrorKind::InvalidIssuer => IdentityError::WrongIssuer {
                    expected: self.config.issuer.clone(),
                },
                ErrorKind::MissingRequiredClaim(claim) => IdentityError::MissingClaim(claim.clone()),
                ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => IdentityError::WrongAlgorithm {
                    expected: format!("{algorithm:?}"),
                },
                _ => IdentityError::Malformed(error.to_string()),
            })?;
        if claims.issued_at() > now_secs().saturating_add(self.config.leeway_secs) {
            return Err(IdentityError::IssuedInFuture);
        }
        Ok(claims)
    }
}

/// Claims that carry `iat`, checked by [`TokenAuthority::decode`].
trait IssuedAt {
    fn issued_at(&self) -> u64;
}

impl IssuedAt for Claims {
    fn issued_at(&self) -> u64 {
        self.iat
    }
}

impl IssuedAt for CertificateClaims {
    fn issued_at(&self) -> u64 {
        self.iat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(secret: u8) -> TokenAuthority {
        TokenAuthority::from_secret(&[secret; 32], TokenConfig::default()).unwrap()
    }

    #[test]
    fn tokens_never_carry_a_system_subject() {
        let authority = authority(1);
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            authority.issue("system:audit-verifier", "acme", &[Role::Admin], hour),
            Err(IdentityError::ReservedSubject(_))
        ));
        // A token signed with the right key but a reserved subject is still refused.
        let forged = Claims {
            sub: "system:audit-verifier".into(),
            iss: authority.config.issuer.clone(),
            aud: authority.config.audience.clone(),
            exp: now_secs() + 3600,
            iat: now_secs(),
            tenant: "acme".into(),
            roles: vec!["admin".into()],
        };
        let token = authority.sign(&forged).unwrap();
        assert!(matches!(
            authority.verify(&token),
            Err(IdentityError::ReservedSubject(_))
        ));
    }

    #[test]
    fn round_trip_and_each_rejection() {
        let authority = authority(1);
        let hour = Duration::from_secs(3600);
        let token = authority.issue("alice", "acme", &[Role::Agent], hour).unwrap();
        let principal = authority.verify(&token).unwrap();
        assert_eq!(principal.to_string(), "alice@acme");
        assert!(principal.has_role(Role::Agent) && !principal.has_role(Role::Reviewer));

        let expired = authority
            .issue_at("alice", "acme", &[Role::Agent], now_secs() - 7200, hour)
            .unwrap();
        assert!(matches!(authority.verify(&expired), Err(IdentityError::Expired)));

        assert!(matches!(
            self::authority(2).verify(&token),
            Err(IdentityError::BadSignature)
        ));

        let other_audience = TokenAuthority::from_secret(
            &[1; 32],
            TokenConfig {
                audience: "someone-else".into(),
                ..TokenConfig::default()
            },
        )
        .unwrap();
        let foreign = other_audience.issue("alice", "acme", &[Role::Agent], hour).unwrap();
        assert!(matches!(
            authority.verify(&foreign),
            Err(IdentityError::WrongAudience { .. })
        ));

        assert!(matches!(
            authority.verify("not-a-jwt"),
            Err(IdentityError::Malformed(_))
        ));
        assert!(matches!(
            TokenAuthority::from_secret(b"short", TokenConfig::default()),
            Err(IdentityError::WeakKey(5))
        ));
    }

    /// Found by fuzzing: a leeway larger than the current Unix time overflowed inside
    /// jsonwebtoken's expiry check. Such a configuration is now refused up front.
    #[test]
    fn a_leeway_beyond_an_hour_is_refused() {
        let config = |leeway_secs| TokenConfig {
            leeway_secs,
            ..TokenConfig::default()
        };
        assert!(TokenAuthority::from_secret(&[1; 32], config(MAX_LEEWAY_SECS)).is_ok());
        let error = TokenAuthority::from_secret(&[1; 32], config(100 * 365 * 24 * 3600)).unwrap_err();
        assert!(
            matches!(
                error,
                IdentityError::LeewayTooLarge {
                    max: MAX_LEEWAY_SECS,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn certificates_get_the_same_error_mappings_as_access_tokens() {
        // The certificate path once lacked the algorithm and missing-claim mappings (a token
        // signed with HS384 was reported as malformed); one decode path now serves both kinds.
        let authority = authority(1);
        let other_algorithm = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &serde_json::json!({ "sub": "alice" }),
            &EncodingKey::from_secret(&[1; 32]),
        )
        .unwrap();
        assert!(matches!(
            authority.verify_certificate(&other_algorithm),
            Err(IdentityError::WrongAlgorithm { .. })
        ));
        assert!(matches!(
            authority.verify(&other_algorithm),
            Err(IdentityError::WrongAlgorithm { .. })
        ));
        let foreign_issuer = TokenAuthority::from_secret(
            &[1; 32],
            TokenConfig {
                issuer: "elsewhere".into(),
                ..TokenConfig::default()
            },
        )
        .unwrap();
        let certificate = AutonomyCertificate {
            agent: "alice".into(),
            skill: "*".into(),
            tenant: "acme".into(),
            level: AutonomyLevel::L3,
            issued_by: "root".into(),
            issued_at: now_secs(),
            expires_at: now_secs() + 60,
        };
        let token = foreign_issuer.sign_certificate(&certificate).unwrap();
        assert!(matches!(
            authority.verify_certificate(&token),
            Err(IdentityError::WrongIssuer { .. })
        ));
        let expired = authority
            .sign_certificate(&AutonomyCertificate {
                expires_at: now_secs() - 3_600,
                ..certificate
            })
            .unwrap();
        assert!(matches!(
            authority.verify_certificate(&expired),
            Err(IdentityError::Expired)
        ));
    }

    #[test]
    fn leeway_is_honoured() {
        let authority = authority(1);
        // Expired two seconds ago: within the default 5 s leeway.
        let token = authority
            .issue_at(
                "alice",
                "acme",
                &[Role::Agent],
                now_secs() - 12,
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(authority.verify(&token).is_ok());
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = TokenAuthority::load_or_create(&path, TokenConfig::default()).unwrap();
        let token = first
            .issue("bob", "acme", &[Role::Reviewer], Duration::from_secs(60))
            .unwrap();
        let second = TokenAuthority::load_or_create(&path, TokenConfig::default()).unwrap();
        assert_eq!(second.verify(&token).unwrap().subject, "bob");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    fn claims(authority: &TokenAuthority, sub: &str, tenant: &str) -> Claims {
        Claims {
            sub: sub.into(),
            iss: authority.config.issuer.clone(),
            aud: authority.config.audience.clone(),
            exp: now_secs() + 3600,
            iat: now_secs(),
            tenant: tenant.into(),
            roles: vec!["reviewer".into()],
        }
    }

    #[test]
    fn nbf_or_iat_in_the_future_is_refused() {
        let authority = authority(1);
        let mut ahead = claims(&authority, "alice", "acme");
        ahead.iat = now_secs() + 3600;
        ahead.exp = now_secs() + 7200;
        let token = authority.sign(&ahead).unwrap();
        assert!(matches!(authority.verify(&token), Err(IdentityError::IssuedInFuture)));

        let mut value = serde_json::to_value(claims(&authority, "alice", "acme")).unwrap();
        value["nbf"] = (now_secs() + 3600).into();
        let token = authority.sign(&value).unwrap();
        assert!(matches!(authority.verify(&token), Err(IdentityError::NotYetValid)));
        // Within the leeway both are fine.
        value["nbf"] = (now_secs() + 2).into();
        value["iat"] = (now_secs() + 2).into();
        assert!(authority.verify(&authority.sign(&value).unwrap()).is_ok());
    }

    #[test]
    fn lifetimes_over_the_maximum_are_refused_and_never_overflow() {
        let authority = authority(1);
        let mut forever = claims(&authority, "alice", "acme");
        forever.exp = u64::MAX;
        let token = authority.sign(&forever).unwrap();
        assert!(matches!(
            authority.verify(&token),
            Err(IdentityError::LifetimeTooLong {
                max_secs: DEFAULT_MAX_LIFETIME_SECS
            })
        ));
        for ttl in [u64::MAX, DEFAULT_MAX_LIFETIME_SECS + 1] {
            assert!(matches!(
                authority.issue("alice", "acme", &[Role::Agent], Duration::from_secs(ttl)),
                Err(IdentityError::LifetimeTooLong { .. })
            ));
        }
        let longest = authority
            .issue(
                "alice",
                "acme",
                &[Role::Agent],
                Duration::from_secs(DEFAULT_MAX_LIFETIME_SECS),
            )
            .unwrap();
        assert!(authority.verify(&longest).is_ok());
    }

    #[test]
    fn an_unknown_crit_header_is_refused() {
        let authority = authority(1);
        let mut header = Header::new(Algorithm::HS256);
        header.crit = Some(vec!["exp-ext".into()]);
        let token =
            jsonwebtoken::encode(&header, &claims(&authority, "alice", "acme"), &authority.encoding_key).unwrap();
        assert!(matches!(
            authority.verify(&token),
            Err(IdentityError::UnsupportedCritical(names)) if names == ["exp-ext"]
        ));
    }

    #[test]
    fn system_reservation_ignores_case_and_leading_space() {
        let authority = authority(1);
        for subject in ["SYSTEM:x", " system:x", "System:audit", "\tsystem:x"] {
            let token = authority.sign(&claims(&authority, subject, "acme")).unwrap();
            assert!(
                matches!(
                    authority.verify(&token),
                    Err(IdentityError::ReservedSubject(_) | IdentityError::BadIdentifier { .. })
                ),
                "{subject:?} accepted"
            );
            assert!(
                authority
                    .issue(subject, "acme", &[Role::Agent], Duration::from_secs(60))
                    .is_err()
            );
        }
    }

    #[test]
    fn subjects_and_tenants_must_be_canonical() {
        let authority = authority(1);
        // `Alice` would defeat separation of duties against `alice`; `/` and `@` make principal
        // ids ambiguous; a newline forges lines in listings.
        for (sub, tenant) in [
            ("Alice", "acme"),
            ("alice", "ACME"),
            ("team/alice", "acme"),
            ("alice", "acme/team"),
            ("alice@acme", "acme"),
            ("alice\nbob", "acme"),
            ("", "acme"),
            ("-alice", "acme"),
            ("alice", &"a".repeat(65)),
        ] {
            let token = authority.sign(&claims(&authority, sub, tenant)).unwrap();
            assert!(
                matches!(
                    authority.verify(&token),
                    Err(IdentityError::BadIdentifier { .. } | IdentityError::Incomplete)
                ),
                "{sub:?} in {tenant:?} accepted"
            );
            assert!(
                authority
                    .issue(sub, tenant, &[Role::Agent], Duration::from_secs(60))
                    .is_err()
            );
        }
        let message = authority
            .issue("alice\nbob", "acme", &[Role::Agent], Duration::from_secs(60))
            .unwrap_err()
            .to_string();
        assert!(message.contains("alice\\nbob") && !message.contains('\n'), "{message}");
        for (sub, tenant) in [("alice", "acme"), ("svc.report-bot_2", "team-7"), ("7", "a")] {
            let token = authority
                .issue(sub, tenant, &[Role::Agent], Duration::from_secs(60))
                .unwrap();
            assert_eq!(authority.verify(&token).unwrap().subject, sub);
        }
    }
}
