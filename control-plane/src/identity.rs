//! Caller identity: HS256 JWTs (RFC 7519) issued and verified with `jsonwebtoken`.
//!
//! A token must carry `sub`, `iss`, `aud` and `exp` (plus agentd's `tenant` and `roles`
//! claims); clock skew is tolerated up to [`IdentityConfig::leeway_secs`], set explicitly.
//! The signing key is 32 random bytes kept in a file created on first use with mode 0600.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::autonomy::{AutonomyCertificate, AutonomyLevel};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

/// Bytes of a freshly generated HS256 key; also the minimum accepted (RFC 7518 §3.2).
pub const HS256_KEY_BYTES: usize = 32;

/// A role carried in the token's `roles` claim.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs skills.
    Agent,
    /// Decides approval requests.
    Reviewer,
    /// Changes enforcement.
    Admin,
}

impl Role {
    /// The role's name in tokens and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Reviewer => "reviewer",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "agent" => Ok(Role::Agent),
            "reviewer" => Ok(Role::Reviewer),
            "admin" => Ok(Role::Admin),
            other => Err(IdentityError::UnknownRole(other.to_owned())),
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// The tenant the caller acts in.
    pub tenant: String,
    /// Roles from the token, never empty.
    pub roles: BTreeSet<Role>,
}

impl Principal {
    /// Whether the principal holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.subject, self.tenant)
    }
}

/// The JWT claims agentd issues and requires.
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
pub struct IdentityConfig {
    /// Required `iss`.
    pub issuer: String,
    /// Required `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`, seconds.
    pub leeway_secs: u64,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            issuer: "agentd-local".to_owned(),
            audience: "agentd".to_owned(),
            leeway_secs: 5,
        }
    }
}

/// Why a token or key was rejected. None of these is retryable: the same token fails again.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired; issue a new one with `agentd token issue`")]
    Expired,
    /// The signature does not verify with this state directory's key.
    #[error("the token's signature does not verify: it was signed with another key")]
    BadSignature,
    /// `aud` is not the configured audience.
    #[error("the token's audience is wrong; expected `{expected}`")]
    WrongAudience {
        /// The audience required.
        expected: String,
    },
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is wrong; expected `{expected}`")]
    WrongIssuer {
        /// The issuer required.
        expected: String,
    },
    /// A required claim is absent.
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    /// The header's algorithm is not HS256.
    #[error("the token is not signed with HS256")]
    WrongAlgorithm,
    /// The text is not a JWT or its claims have the wrong shape.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// A role name is not `agent`, `reviewer` or `admin`.
    #[error("unknown role `{0}`: expected `agent`, `reviewer` or `admin`")]
    UnknownRole(String),
    /// The token grants no role, or names no tenant or subject.
    #[error("the token must name a subject, a tenant and at least one role")]
    Incomplete,
    /// The signing key is shorter than [`HS256_KEY_BYTES`].
    #[error("the signing key is {0} bytes; HS256 needs at least {HS256_KEY_BYTES}")]
    WeakKey(usize),
    /// The key file could not be read or created.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Signing failed inside jsonwebtoken.
    #[error("could not sign the token: {0}")]
    Signing(String),
    /// A token's subject starts with [`SYSTEM_SUBJECT_PREFIX`], which only
    /// [`with_system_identity`] may bind.
    #[error("subject `{0}` is reserved: `system:` subjects are bound by internal jobs, never by a token")]
    ReservedSubject(String),
    /// A system job name is empty or not lowercase kebab-case.
    #[error("system job name `{0}` must be lowercase kebab-case (a-z, 0-9, -)")]
    BadJobName(String),
}

impl IdentityError {
    /// Whether retrying the same call can help: only a key file I/O error might.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IdentityError::KeyFile { .. })
    }
}

/// The subject prefix of principals bound by [`with_system_identity`]; tokens may not use it.
pub const SYSTEM_SUBJECT_PREFIX: &str = "system:";

/// Binds a system principal (`system:<job>@<tenant>`) for an internal job, without a JWT.
///
/// This bypasses authentication, so it is under a caller allowlist: guardrails rule
/// `system-identity-only-for-internal-jobs` (guardrails.toml) fails CI when any module outside
/// the list references it, through an alias, a function pointer or a macro included. Tokens can
/// never carry a `system:` subject ([`IdentityError::ReservedSubject`]), so a system principal
/// cannot be forged through [`Identity::verify`].
///
/// # Errors
///
/// [`IdentityError::BadJobName`] when `job` is not lowercase kebab-case,
/// [`IdentityError::Incomplete`] when `tenant` or `roles` is empty.
pub fn with_system_identity(job: &str, tenant: &str, roles: &[Role]) -> Result<Principal, IdentityError> {
    let kebab = !job.is_empty()
        && job
            .split('-')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    if !kebab {
        return Err(IdentityError::BadJobName(job.to_owned()));
    }
    if tenant.is_empty() || roles.is_empty() {
        return Err(IdentityError::Incomplete);
    }
    Ok(Principal {
        subject: format!("{SYSTEM_SUBJECT_PREFIX}{job}"),
        tenant: tenant.to_owned(),
        roles: roles.iter().copied().collect(),
    })
}

/// Issues and verifies tokens with one HS256 key.
pub struct Identity {
    config: IdentityConfig,
    encoding_key: EncodingKey,
    decoding_key: DecodingKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

impl Identity {
    /// An identity over `secret`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::WeakKey`] when `secret` is shorter than [`HS256_KEY_BYTES`].
    pub fn from_secret(secret: &[u8], config: IdentityConfig) -> Result<Self, IdentityError> {
        if secret.len() < HS256_KEY_BYTES {
            return Err(IdentityError::WeakKey(secret.len()));
        }
        Ok(Identity {
            config,
            encoding_key: EncodingKey::from_secret(secret),
            decoding_key: DecodingKey::from_secret(secret),
        })
    }

    /// Loads the key at `path`, creating it with [`HS256_KEY_BYTES`] random bytes (mode 0600)
    /// if it does not exist.
    ///
    /// # Errors
    ///
    /// [`IdentityError::KeyFile`] on I/O failure, [`IdentityError::WeakKey`] for a short key file.
    pub fn load_or_create(path: &Path, config: IdentityConfig) -> Result<Self, IdentityError> {
        let key_file_error = |source| IdentityError::KeyFile {
            path: path.to_owned(),
            source,
        };
        match std::fs::read(path) {
            Ok(secret) => Self::from_secret(&secret, config),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; HS256_KEY_BYTES];
                getrandom::fill(&mut secret)
                    .map_err(|error| key_file_error(std::io::Error::other(error.to_string())))?;
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let mut file = options.open(path).map_err(key_file_error)?;
                file.write_all(&secret)
                    .and_then(|()| file.sync_all())
                    .map_err(key_file_error)?;
                Self::from_secret(&secret, config)
            }
            Err(error) => Err(key_file_error(error)),
        }
    }

    /// The configuration tokens are checked against.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// Signs a token for `subject` in `tenant` with `roles`, valid for `ttl`.
    ///
    /// # Errors
    ///
    /// [`IdentityError::Incomplete`] for an empty subject, tenant or role list.
    pub fn issue(&self, subject: &str, tenant: &str, roles: &[Role], ttl: Duration) -> Result<String, IdentityError> {
        self.issue_at(subject, tenant, roles, now_secs(), ttl)
    }

    /// Like [`Identity::issue`] with an explicit issue time (seconds since the epoch); tests use
    /// it to make expired tokens.
    ///
    /// # Errors
    ///
    /// As [`Identity::issue`].
    pub fn issue_at(
        &self,
        subject: &str,
        tenant: &str,
        roles: &[Role],
        issued_at_secs: u64,
        ttl: Duration,
    ) -> Result<String, IdentityError> {
        if subject.is_empty() || tenant.is_empty() || roles.is_empty() {
            return Err(IdentityError::Incomplete);
        }
        if subject.starts_with(SYSTEM_SUBJECT_PREFIX) {
            return Err(IdentityError::ReservedSubject(subject.to_owned()));
        }
        let claims = Claims {
            sub: subject.to_owned(),
            iss: self.config.issuer.clone(),
            aud: self.config.audience.clone(),
            exp: issued_at_secs + ttl.as_secs(),
            iat: issued_at_secs,
            tenant: tenant.to_owned(),
            roles: roles.iter().map(|role| role.as_str().to_owned()).collect(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
            .map_err(|error| IdentityError::Signing(error.to_string()))
    }

    /// Verifies `token` and returns its principal.
    ///
    /// # Errors
    ///
    /// An [`IdentityError`] naming exactly what was wrong: expired, bad signature, wrong audience
    /// or issuer, missing claim, unknown role, malformed.
    pub fn verify(&self, token: &str) -> Result<Principal, IdentityError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.config.leeway_secs;
        validation.validate_exp = true;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<Claims>(token.trim(), &self.decoding_key, &validation).map_err(
                |error| match error.kind() {
                    ErrorKind::ExpiredSignature => IdentityError::Expired,
                    ErrorKind::InvalidSignature => IdentityError::BadSignature,
                    ErrorKind::InvalidAudience => IdentityError::WrongAudience {
                        expected: self.config.audience.clone(),
                    },
                    ErrorKind::InvalidIssuer => IdentityError::WrongIssuer {
                        expected: self.config.issuer.clone(),
                    },
                    ErrorKind::MissingRequiredClaim(claim) => IdentityError::MissingClaim(claim.clone()),
                    ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => IdentityError::WrongAlgorithm,
                    _ => IdentityError::Malformed(error.to_string()),
                },
            )?;
        let claims = data.claims;
        let roles = claims
            .roles
            .iter()
            .map(|name| name.parse())
            .collect::<Result<BTreeSet<Role>, _>>()?;
        if claims.sub.is_empty() || claims.tenant.is_empty() || roles.is_empty() {
            return Err(IdentityError::Incomplete);
        }
        if claims.sub.starts_with(SYSTEM_SUBJECT_PREFIX) {
            return Err(IdentityError::ReservedSubject(claims.sub));
        }
        Ok(Principal {
            subject: claims.sub,
            tenant: claims.tenant,
            roles,
        })
    }

    /// Signs an autonomy certificate (a JWT with audience
    /// [`CERTIFICATE_AUDIENCE`](crate::autonomy::CERTIFICATE_AUDIENCE), so it never passes as an
    /// access token).
    ///
    /// # Errors
    ///
    /// [`IdentityError::Incomplete`] when agent, skill or tenant is empty,
    /// [`IdentityError::Signing`] when signing fails.
    pub fn sign_certificate(&self, certificate: &AutonomyCertificate) -> Result<String, IdentityError> {
        if certificate.agent.is_empty() || certificate.skill.is_empty() || certificate.tenant.is_empty() {
            return Err(IdentityError::Incomplete);
        }
        let claims = CertificateClaims {
            sub: certificate.agent.clone(),
            iss: self.config.issuer.clone(),
            aud: crate::autonomy::CERTIFICATE_AUDIENCE.to_owned(),
            exp: certificate.expires_at,
            iat: certificate.issued_at,
            tenant: certificate.tenant.clone(),
            skill: certificate.skill.clone(),
            level: certificate.level,
            issued_by: certificate.issued_by.clone(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding_key)
            .map_err(|error| IdentityError::Signing(error.to_string()))
    }

    /// Verifies an autonomy certificate's signature, issuer, audience and expiry.
    ///
    /// # Errors
    ///
    /// The [`IdentityError`] naming what is wrong.
    pub fn verify_certificate(&self, token: &str) -> Result<AutonomyCertificate, IdentityError> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = self.config.leeway_secs;
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[crate::autonomy::CERTIFICATE_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<CertificateClaims>(token.trim(), &self.decoding_key, &validation).map_err(
            |error| match error.kind() {
                ErrorKind::ExpiredSignature => IdentityError::Expired,
                ErrorKind::InvalidSignature => IdentityError::BadSignature,
                ErrorKind::InvalidAudience => IdentityError::WrongAudience {
                    expected: crate::autonomy::CERTIFICATE_AUDIENCE.to_owned(),
                },
                ErrorKind::InvalidIssuer => IdentityError::WrongIssuer {
                    expected: self.config.issuer.clone(),
                },
                _ => IdentityError::Malformed(error.to_string()),
            },
        )?;
        let claims = data.claims;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(secret: u8) -> Identity {
        Identity::from_secret(&[secret; 32], IdentityConfig::default()).unwrap()
    }

    #[test]
    fn system_principals_are_bound_in_process_and_never_through_a_token() {
        let principal = with_system_identity("audit-verifier", "acme", &[Role::Admin]).unwrap();
        assert_eq!(principal.to_string(), "system:audit-verifier@acme");
        assert!(principal.has_role(Role::Admin));
        assert!(matches!(
            with_system_identity("Audit Verifier", "acme", &[Role::Admin]),
            Err(IdentityError::BadJobName(_))
        ));
        assert!(matches!(
            with_system_identity("audit", "acme", &[]),
            Err(IdentityError::Incomplete)
        ));

        let id = identity(1);
        let hour = Duration::from_secs(3600);
        assert!(matches!(
            id.issue("system:audit-verifier", "acme", &[Role::Admin], hour),
            Err(IdentityError::ReservedSubject(_))
        ));
        // A token signed with the right key but a reserved subject is still refused.
        let forged = Claims {
            sub: "system:audit-verifier".into(),
            iss: id.config.issuer.clone(),
            aud: id.config.audience.clone(),
            exp: now_secs() + 3600,
            iat: now_secs(),
            tenant: "acme".into(),
            roles: vec!["admin".into()],
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &forged, &id.encoding_key).unwrap();
        assert!(matches!(id.verify(&token), Err(IdentityError::ReservedSubject(_))));
    }

    #[test]
    fn round_trip_and_each_rejection() {
        let id = identity(1);
        let hour = Duration::from_secs(3600);
        let token = id.issue("alice", "acme", &[Role::Agent], hour).unwrap();
        let principal = id.verify(&token).unwrap();
        assert_eq!(principal.to_string(), "alice@acme");
        assert!(principal.has_role(Role::Agent) && !principal.has_role(Role::Reviewer));

        let expired = id
            .issue_at("alice", "acme", &[Role::Agent], now_secs() - 7200, hour)
            .unwrap();
        assert!(matches!(id.verify(&expired), Err(IdentityError::Expired)));

        assert!(matches!(identity(2).verify(&token), Err(IdentityError::BadSignature)));

        let other_audience = Identity::from_secret(
            &[1; 32],
            IdentityConfig {
                audience: "someone-else".into(),
                ..IdentityConfig::default()
            },
        )
        .unwrap();
        let foreign = other_audience.issue("alice", "acme", &[Role::Agent], hour).unwrap();
        assert!(matches!(id.verify(&foreign), Err(IdentityError::WrongAudience { .. })));

        assert!(matches!(id.verify("not-a-jwt"), Err(IdentityError::Malformed(_))));
        assert!(matches!(
            Identity::from_secret(b"short", IdentityConfig::default()),
            Err(IdentityError::WeakKey(5))
        ));
    }

    #[test]
    fn leeway_is_honoured() {
        let id = identity(1);
        // Expired two seconds ago: within the default 5 s leeway.
        let token = id
            .issue_at(
                "alice",
                "acme",
                &[Role::Agent],
                now_secs() - 12,
                Duration::from_secs(10),
            )
            .unwrap();
        assert!(id.verify(&token).is_ok());
    }

    #[test]
    fn key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        let first = Identity::load_or_create(&path, IdentityConfig::default()).unwrap();
        let token = first
            .issue("bob", "acme", &[Role::Reviewer], Duration::from_secs(60))
            .unwrap();
        let second = Identity::load_or_create(&path, IdentityConfig::default()).unwrap();
        assert_eq!(second.verify(&token).unwrap().subject, "bob");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
