//! Capabilities: the host effects a skill may ask for and the control plane may grant.
//!
//! A capability is written `kind:scope`, e.g. `fs.write:reports/`. Scopes are matched by path
//! segment, never by string prefix, so `fs.write:reports/` does not grant `reports-secret/x`.

use std::fmt;
use std::str::FromStr;

/// Longest workspace path a skill may name, in bytes.
pub const MAX_WORKSPACE_PATH_BYTES: usize = 1024;

/// A host effect a skill may request and the control plane may grant.
///
/// | Text | Grants |
/// |---|---|
/// | `fs.read:<prefix>` | `workspace-read` of files at or below `prefix` |
/// | `fs.write:<prefix>` | `workspace-write` of files at or below `prefix` |
/// | `kv.read:<prefix>` | `kv-get` of keys at or below `prefix` (per tenant and skill) |
/// | `kv.write:<prefix>` | `kv-set` of keys at or below `prefix` (per tenant and skill) |
/// | `net.http:<scheme>://<host>[:<port>]` | `http-fetch` to exactly that origin |
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `fs.read:<prefix>`: read files at or below `prefix` in the tenant's workspace.
    FsRead {
        /// The directory the grant covers.
        prefix: WorkspacePath,
    },
    /// `fs.write:<prefix>`: write files at or below `prefix` in the tenant's workspace.
    FsWrite {
        /// The directory the grant covers.
        prefix: WorkspacePath,
    },
    /// `kv.read:<prefix>`: read keys at or below `prefix` of the skill's key-value namespace.
    KvRead {
        /// The key prefix the grant covers, matched by segment.
        prefix: WorkspacePath,
    },
    /// `kv.write:<prefix>`: write keys at or below `prefix` of the skill's key-value namespace.
    KvWrite {
        /// The key prefix the grant covers, matched by segment.
        prefix: WorkspacePath,
    },
    /// `net.http:<origin>`: HTTP requests to exactly one origin (scheme, host and port).
    NetHttp {
        /// The origin the grant covers.
        origin: Origin,
    },
}

/// One host effect a guest attempts, checked against the grants at call time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect<'a> {
    /// Read a workspace file.
    FsRead(&'a WorkspacePath),
    /// Write a workspace file.
    FsWrite(&'a WorkspacePath),
    /// Read a key.
    KvRead(&'a WorkspacePath),
    /// Write a key.
    KvWrite(&'a WorkspacePath),
    /// Make an HTTP request to an origin.
    Http(&'a Origin),
}

impl Effect<'_> {
    /// The narrowest capability that permits this effect: named in denials.
    pub fn capability(&self) -> Capability {
        match *self {
            Effect::FsRead(path) => Capability::FsRead { prefix: path.clone() },
            Effect::FsWrite(path) => Capability::FsWrite { prefix: path.clone() },
            Effect::KvRead(key) => Capability::KvRead { prefix: key.clone() },
            Effect::KvWrite(key) => Capability::KvWrite { prefix: key.clone() },
            Effect::Http(origin) => Capability::NetHttp { origin: origin.clone() },
        }
    }

    /// The narrowest capability that permits this effect, as text naming the exact path, key or
    /// origin (without a prefix's trailing `/`).
    pub fn needed(&self) -> String {
        match self {
            Effect::FsRead(path) => format!("fs.read:{path}"),
            Effect::FsWrite(path) => format!("fs.write:{path}"),
            Effect::KvRead(key) => format!("kv.read:{key}"),
            Effect::KvWrite(key) => format!("kv.write:{key}"),
            Effect::Http(origin) => format!("net.http:{origin}"),
        }
    }
}

impl Capability {
    /// The capability kind as written before the colon, e.g. `fs.write`.
    pub fn kind(&self) -> &'static str {
        match self {
            Capability::FsRead { .. } => "fs.read",
            Capability::FsWrite { .. } => "fs.write",
            Capability::KvRead { .. } => "kv.read",
            Capability::KvWrite { .. } => "kv.write",
            Capability::NetHttp { .. } => "net.http",
        }
    }

    /// The scope as written after the colon, e.g. `reports/` or `http://127.0.0.1:8080`.
    pub fn scope(&self) -> String {
        match self {
            Capability::FsRead { prefix }
            | Capability::FsWrite { prefix }
            | Capability::KvRead { prefix }
            | Capability::KvWrite { prefix } => format!("{prefix}/"),
            Capability::NetHttp { origin } => origin.to_string(),
        }
    }

    /// Whether this capability permits `effect`: paths and keys by segment prefix, origins
    /// exactly.
    pub fn permits(&self, effect: &Effect<'_>) -> bool {
        match (self, effect) {
            (Capability::FsRead { prefix }, Effect::FsRead(path))
            | (Capability::FsWrite { prefix }, Effect::FsWrite(path))
            | (Capability::KvRead { prefix }, Effect::KvRead(path))
            | (Capability::KvWrite { prefix }, Effect::KvWrite(path)) => path.starts_with(prefix),
            (Capability::NetHttp { origin }, Effect::Http(wanted)) => origin == *wanted,
            _ => false,
        }
    }

    /// Whether this capability allows writing `path`.
    pub fn permits_write(&self, path: &WorkspacePath) -> bool {
        self.permits(&Effect::FsWrite(path))
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.scope())
    }
}

/// An HTTP origin (RFC 6454): scheme, host and port. Hosts are compared in lower case; a missing
/// port is the scheme's default (80 for `http`, 443 for `https`) and is always displayed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

/// Why a text is not an [`Origin`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginError {
    /// The scheme is not `http` or `https`.
    #[error("`{0}` does not start with `http://` or `https://`")]
    Scheme(String),
    /// The host is empty or holds characters no host name or IP literal has.
    #[error("`{0}` has no valid host")]
    Host(String),
    /// The port is not a number from 1 to 65535.
    #[error("`{0}` has an invalid port")]
    Port(String),
    /// Something follows the authority (a path, query or user info) where only an origin may be.
    #[error("`{0}` is more than an origin: drop the path, query and user info")]
    NotAnOrigin(String),
}

impl Origin {
    /// Parses `scheme://host[:port]` (a trailing `/` is allowed).
    ///
    /// # Errors
    ///
    /// [`OriginError`] naming the part that is wrong.
    pub fn parse(text: &str) -> Result<Self, OriginError> {
        let (scheme, rest) = if let Some(rest) = text.strip_prefix("http://") {
            ("http", rest)
        } else if let Some(rest) = text.strip_prefix("https://") {
            ("https", rest)
        } else {
            return Err(OriginError::Scheme(text.to_owned()));
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) {
            return Err(OriginError::NotAnOrigin(text.to_owned()));
        }
        let (host, port) = if let Some(literal) = authority.strip_prefix('[') {
            // An IPv6 literal: `[::1]` or `[::1]:8080`.
            let Some((address, after)) = literal.split_once(']') else {
                return Err(OriginError::Host(text.to_owned()));
            };
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| OriginError::Port(text.to_owned()))?,
                ),
            };
            (format!("[{}]", address.to_ascii_lowercase()), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
                None => (authority.to_ascii_lowercase(), None),
            }
        };
        let host_is_valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !host_is_valid {
            return Err(OriginError::Host(text.to_owned()));
        }
        let port = match port {
            None if scheme == "http" => 80,
            None => 443,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port > 0 => port,
                _ => return Err(OriginError::Port(text.to_owned())),
            },
        };
        Ok(Origin {
            scheme: scheme.to_owned(),
            host,
            port,
        })
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host in lower case; an IPv6 literal keeps its brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port (explicit, or the scheme's default).
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Error of [`Capability::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityParseError {
    /// The text has no `kind:scope` shape.
    #[error("capability `{0}` is not of the form `kind:scope` (e.g. `fs.write:reports/`)")]
    Malformed(String),
    /// The kind is not one agentd knows.
    #[error(
        "capability `{text}` has unknown kind `{kind}`: the known kinds are `fs.read`, `fs.write`, `kv.read`, `kv.write` and `net.http`"
    )]
    UnknownKind {
        /// The whole capability text.
        text: String,
        /// The kind before the colon.
        kind: String,
    },
    /// The scope is not a valid workspace path or key prefix.
    #[error("capability `{text}` has an invalid scope: {source}")]
    InvalidScope {
        /// The whole capability text.
        text: String,
        /// What is wrong with the scope.
        source: WorkspacePathError,
    },
    /// The scope of a `net.http` capability is not an origin.
    #[error("capability `{text}` has an invalid origin: {source}")]
    InvalidOrigin {
        /// The whole capability text.
        text: String,
        /// What is wrong with the origin.
        source: OriginError,
    },
}

impl FromStr for Capability {
    type Err = CapabilityParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((kind, scope)) = text.split_once(':') else {
            return Err(CapabilityParseError::Malformed(text.to_owned()));
        };
        let prefix = || {
            WorkspacePath::parse(scope.strip_suffix('/').unwrap_or(scope)).map_err(|source| {
                CapabilityParseError::InvalidScope {
                    text: text.to_owned(),
                    source,
                }
            })
        };
        match kind {
            "fs.read" => Ok(Capability::FsRead { prefix: prefix()? }),
            "fs.write" => Ok(Capability::FsWrite { prefix: prefix()? }),
            "kv.read" => Ok(Capability::KvRead { prefix: prefix()? }),
            "kv.write" => Ok(Capability::KvWrite { prefix: prefix()? }),
            "net.http" => Origin::parse(scope)
                .map(|origin| Capability::NetHttp { origin })
                .map_err(|source| CapabilityParseError::InvalidOrigin {
                    text: text.to_owned(),
                    source,
                }),
            _ => Err(CapabilityParseError::UnknownKind {
                text: text.to_owned(),
                kind: kind.to_owned(),
            }),
        }
    }
}

impl serde::Serialize for Capability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "schema")]
impl schemars::JsonSchema for Capability {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Capability".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A capability, written `kind:scope`: `fs.read:<prefix>`, `fs.write:<prefix>`, `kv.read:<prefix>`, `kv.write:<prefix>` or `net.http:<scheme>://<host>[:<port>]`.",
            "type": "string",
            "pattern": "^(fs\\.read|fs\\.write|kv\\.read|kv\\.write|net\\.http):.+$"
        })
    }
}

impl<'de> serde::Deserialize<'de> for Capability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A validated relative path inside a tenant's workspace: `/`-separated, non-empty segments,
/// no `.` or `..`, no backslash or NUL, at most [`MAX_WORKSPACE_PATH_BYTES`] bytes.
///
/// Such a path cannot escape the directory it is joined to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkspacePath(String);

/// Why a text is not a [`WorkspacePath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkspacePathError {
    /// The path is empty.
    #[error("the path is empty")]
    Empty,
    /// The path is longer than [`MAX_WORKSPACE_PATH_BYTES`].
    #[error("the path is {0} bytes long; at most {MAX_WORKSPACE_PATH_BYTES} are allowed")]
    TooLong(usize),
    /// The path starts with `/`.
    #[error("`{0}` is absolute; workspace paths are relative")]
    Absolute(String),
    /// A segment is empty, `.` or `..`, or a character is a backslash or NUL.
    #[error("`{0}` has an empty, `.` or `..` segment, a backslash or a NUL byte")]
    BadSegment(String),
}

impl WorkspacePath {
    /// Validates `text` as a workspace path.
    ///
    /// # Errors
    ///
    /// [`WorkspacePathError`] naming the first problem found.
    pub fn parse(text: &str) -> Result<Self, WorkspacePathError> {
        if text.is_empty() {
            return Err(WorkspacePathError::Empty);
        }
        if text.len() > MAX_WORKSPACE_PATH_BYTES {
            return Err(WorkspacePathError::TooLong(text.len()));
        }
        if text.starts_with('/') {
            return Err(WorkspacePathError::Absolute(text.to_owned()));
        }
        let bad_segment = text
            .split('/')
            .any(|segment| segment.is_empty() || segment == "." || segment == "..");
        if bad_segment || text.contains(['\\', '\0']) {
            return Err(WorkspacePathError::BadSegment(text.to_owned()));
        }
        Ok(WorkspacePath(text.to_owned()))
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// Whether `prefix`'s segments are the first segments of `self` (segment-wise, so
    /// `reports` is a prefix of `reports/a.md` but not of `reports-old/a.md`).
    pub fn starts_with(&self, prefix: &WorkspacePath) -> bool {
        let mut own = self.segments();
        prefix.segments().all(|segment| own.next() == Some(segment))
    }
}

impl fmt::Display for WorkspacePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> WorkspacePath {
        WorkspacePath::parse(text).unwrap()
    }

    #[test]
    fn fs_write_matches_by_segment_not_by_string_prefix() {
        let capability: Capability = "fs.write:reports/".parse().unwrap();
        assert_eq!(capability.to_string(), "fs.write:reports/");
        assert!(capability.permits_write(&path("reports/a.md")));
        assert!(capability.permits_write(&path("reports/2026/a.md")));
        assert!(!capability.permits_write(&path("reports-secret/a.md")));
        assert!(!capability.permits_write(&path("other/reports/a.md")));
    }

    #[test]
    fn each_kind_permits_only_its_own_effect() {
        let read: Capability = "fs.read:inbox/".parse().unwrap();
        let kv_write: Capability = "kv.write:counters/".parse().unwrap();
        let inbox = path("inbox/a.txt");
        assert!(read.permits(&Effect::FsRead(&inbox)));
        assert!(!read.permits(&Effect::FsWrite(&inbox)));
        assert!(!read.permits(&Effect::KvRead(&inbox)));
        let counter = path("counters/flaky");
        assert!(kv_write.permits(&Effect::KvWrite(&counter)));
        assert!(!kv_write.permits(&Effect::KvRead(&counter)));
        assert!(!kv_write.permits(&Effect::KvWrite(&path("counters-other/x"))));
        assert_eq!(Effect::KvRead(&counter).needed(), "kv.read:counters/flaky");
    }

    #[test]
    fn net_http_grants_exactly_one_origin() {
        let grant: Capability = "net.http:http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(grant.to_string(), "net.http:http://127.0.0.1:8080");
        let origin = |text: &str| Origin::parse(text).unwrap();
        assert!(grant.permits(&Effect::Http(&origin("http://127.0.0.1:8080/"))));
        assert!(!grant.permits(&Effect::Http(&origin("http://127.0.0.1:8081"))));
        assert!(!grant.permits(&Effect::Http(&origin("https://127.0.0.1:8080"))));
        assert!(!grant.permits(&Effect::Http(&origin("http://localhost:8080"))));
        // Default ports are made explicit, and hosts compare in lower case.
        assert_eq!(origin("http://Example.ORG").to_string(), "http://example.org:80");
        assert_eq!(origin("https://[::1]").to_string(), "https://[::1]:443");
        for (text, expected) in [
            ("ftp://x", OriginError::Scheme("ftp://x".into())),
            ("http://", OriginError::Host("http://".into())),
            ("http://a b", OriginError::Host("http://a b".into())),
            ("http://x:0", OriginError::Port("http://x:0".into())),
            ("http://x:99999", OriginError::Port("http://x:99999".into())),
            ("http://x/path", OriginError::NotAnOrigin("http://x/path".into())),
            ("http://user@x", OriginError::NotAnOrigin("http://user@x".into())),
        ] {
            assert_eq!(Origin::parse(text), Err(expected), "{text}");
        }
    }

    #[test]
    fn workspace_paths_cannot_escape() {
        for (text, expected) in [
            ("", WorkspacePathError::Empty),
            ("/etc/passwd", WorkspacePathError::Absolute("/etc/passwd".into())),
            (
                "reports/../../x",
                WorkspacePathError::BadSegment("reports/../../x".into()),
            ),
            ("reports//x", WorkspacePathError::BadSegment("reports//x".into())),
            ("./x", WorkspacePathError::BadSegment("./x".into())),
            ("a\\b", WorkspacePathError::BadSegment("a\\b".into())),
        ] {
            assert_eq!(WorkspacePath::parse(text), Err(expected), "{text:?}");
        }
        let long = "a".repeat(MAX_WORKSPACE_PATH_BYTES + 1);
        assert_eq!(
            WorkspacePath::parse(&long),
            Err(WorkspacePathError::TooLong(MAX_WORKSPACE_PATH_BYTES + 1))
        );
    }

    #[test]
    fn capability_parse_errors_name_the_problem() {
        let cases = [
            (
                "fs.write",
                "capability `fs.write` is not of the form `kind:scope` (e.g. `fs.write:reports/`)",
            ),
            (
                "net.any:x",
                "capability `net.any:x` has unknown kind `net.any`: the known kinds are `fs.read`, `fs.write`, `kv.read`, `kv.write` and `net.http`",
            ),
            (
                "fs.write:../x/",
                "capability `fs.write:../x/` has an invalid scope: `../x` has an empty, `.` or `..` segment, a backslash or a NUL byte",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(text.parse::<Capability>().unwrap_err().to_string(), message);
        }
    }
}
