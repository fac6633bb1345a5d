//! Who is calling: [`Principal`]s, their [`Role`]s, and the [`TokenAuthority`] that issues and
//! verifies the JWTs (RFC 7519) they present.
//!
//! A principal is authenticated by a token, or bound in process for an internal job by
//! [`with_system_identity`] (under a guardrails caller allowlist). Tokens may never carry a
//! `system:` subject, so a system principal cannot be forged through a token.

mod jwks;
mod token;

pub use jwks::{Jwks, MAX_JWKS_KEYS, MIN_RSA_BITS};
pub use token::{Claims, HS256_KEY_BYTES, MAX_LEEWAY_SECS, TokenAuthority, TokenConfig};

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

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

/// An authenticated caller: the policy decision point's principal entity.
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

/// Why a token or key was rejected. None of these is retryable except a key file I/O error:
/// the same token fails again.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// `exp` is in the past (beyond the leeway).
    #[error("the token has expired; issue a new one with `agentd token issue`")]
    Expired,
    /// The signature does not verify with this state directory's key.
    #[error("the token's signature does not verify: it was signed with another key")]
    BadSignature,
    /// `aud` is not the audience required.
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
    /// The header's algorithm is not the one pinned for the key (HS256 for the local key).
    #[error("the token is not signed with {expected}, the one algorithm its key verifies")]
    WrongAlgorithm {
        /// The pinned algorithm, e.g. `HS256`, `EdDSA`.
        expected: String,
    },
    /// The runtime verifies tokens from an external issuer (a JWKS) and mints none.
    #[error(
        "this runtime verifies tokens from an external identity provider (JWKS) and issues none; \
         get a token from that provider"
    )]
    ExternalIssuer,
    /// [`TokenConfig::leeway_secs`] exceeds [`MAX_LEEWAY_SECS`].
    #[error("a clock-skew leeway of {found} s is refused; at most {max} s are accepted")]
    LeewayTooLarge {
        /// The leeway asked for, seconds.
        found: u64,
        /// The largest accepted, seconds.
        max: u64,
    },
    /// The JWKS document is refused.
    #[error("the JWKS is refused: {0}")]
    Jwks(String),
    /// Under a JWKS, a token's header names no `kid`.
    #[error("the token's header names no `kid`; this runtime selects the verification key by it")]
    MissingKeyId,
    /// Under a JWKS, no key has the token's `kid`.
    #[error("no key `{0}` in the JWKS: the token is from another issuer, or its key was rotated out")]
    UnknownKeyId(String),
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
    #[error(transparent)]
    KeyFile(#[from] crate::keys::KeyFileError),
    /// Signing failed inside jsonwebtoken.
    #[error("could not sign the token: {0}")]
    Signing(String),
    /// A token's subject starts with [`SYSTEM_SUBJECT_PREFIX`], which only
    /// [`with_system_identity`] may bind.
    #[error("subject `{0}` is reserved: `system:` subjects are bound by internal jobs, never by a token")]
    ReservedSubject(String),
    /// `nbf` (not before) is later than now plus the leeway.
    #[error("the token is not valid yet: its `nbf` is in the future (check the issuer's clock)")]
    NotYetValid,
    /// `iat` (issued at) is later than now plus the leeway.
    #[error("the token claims to be issued in the future: its `iat` is ahead of this clock")]
    IssuedInFuture,
    /// `exp` lies further after `iat` than the configured maximum lifetime, or overflows.
    #[error("the token's lifetime exceeds the maximum of {max_secs} s; issue a shorter-lived token")]
    LifetimeTooLong {
        /// The longest lifetime accepted, seconds.
        max_secs: u64,
    },
    /// The header lists `crit` extensions; agentd understands none, so RFC 7515 §4.1.11 says
    /// reject.
    #[error("the token's header lists critical extensions {0:?}, which agentd does not understand")]
    UnsupportedCritical(Vec<String>),
    /// A subject or tenant is not a canonical identifier (see [`check_identifier`]).
    #[error(
        "{what} `{value}` is not a canonical identifier: use 1-64 of a-z, 0-9, `.`, `_`, `-`, starting with a letter or digit"
    )]
    BadIdentifier {
        /// `subject` or `tenant`.
        what: &'static str,
        /// The refused value, with control characters escaped.
        value: String,
    },
    /// A system job name is empty or not lowercase kebab-case.
    #[error("system job name `{0}` must be lowercase kebab-case (a-z, 0-9, -)")]
    BadJobName(String),
}

impl IdentityError {
    /// Whether retrying the same call can help: only a key file I/O error might.
    pub fn is_retryable(&self) -> bool {
        matches!(self, IdentityError::KeyFile(error) if error.is_retryable())
    }
}

/// Longest subject or tenant accepted, bytes.
pub const MAX_IDENTIFIER_BYTES: usize = 64;

/// Checks that a token's `subject` or `tenant` is canonical: 1 to [`MAX_IDENTIFIER_BYTES`]
/// bytes of `a-z`, `0-9`, `.`, `_`, `-`, starting with a letter or digit. One spelling per
/// identity, so separation of duties cannot be side-stepped by case (`Alice` against `alice`),
/// the principal id `tenant/subject` and the display `subject@tenant` stay unambiguous (no `/`
/// or `@`), listings print no control characters, and no token subject can look like a
/// `system:` one (no `:`, no space, no upper case).
///
/// # Errors
///
/// [`IdentityError::BadIdentifier`] naming `what` and the value (escaped).
pub fn check_identifier(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let canonical = !value.is_empty()
        && value.len() <= MAX_IDENTIFIER_BYTES
        && value
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if canonical {
        Ok(())
    } else {
        Err(IdentityError::BadIdentifier {
            what,
            value: value.escape_debug().to_string(),
        })
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
/// cannot be forged through [`TokenAuthority::verify`].
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_principals_are_bound_in_process_only() {
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
    }
}
