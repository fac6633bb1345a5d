//! Capabilities: the host effects a skill may ask for and the control plane may grant.
//!
//! A capability is written `kind:scope`, e.g. `fs.write:reports/`. Scopes are matched by path
//! segment, never by string prefix, so `fs.write:reports/` does not grant `reports-secret/x`.

use std::fmt;
use std::str::FromStr;

/// Longest workspace path a skill may name, in bytes.
pub const MAX_WORKSPACE_PATH_BYTES: usize = 1024;

/// A host effect a skill may request and the control plane may grant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// `fs.write:<prefix>`: write files at or below `prefix` in the tenant's workspace.
    FsWrite {
        /// The directory the grant covers.
        prefix: WorkspacePath,
    },
}

impl Capability {
    /// The capability kind as written before the colon, e.g. `fs.write`.
    pub fn kind(&self) -> &'static str {
        match self {
            Capability::FsWrite { .. } => "fs.write",
        }
    }

    /// The scope as written after the colon, e.g. `reports/`.
    pub fn scope(&self) -> String {
        match self {
            Capability::FsWrite { prefix } => format!("{prefix}/"),
        }
    }

    /// Whether this capability allows writing `path`.
    pub fn permits_write(&self, path: &WorkspacePath) -> bool {
        match self {
            Capability::FsWrite { prefix } => path.starts_with(prefix),
        }
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.scope())
    }
}

/// Error of [`Capability::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapabilityParseError {
    /// The text has no `kind:scope` shape.
    #[error("capability `{0}` is not of the form `kind:scope` (e.g. `fs.write:reports/`)")]
    Malformed(String),
    /// The kind is not one agentd knows.
    #[error("capability `{text}` has unknown kind `{kind}`: the known kind is `fs.write`")]
    UnknownKind {
        /// The whole capability text.
        text: String,
        /// The kind before the colon.
        kind: String,
    },
    /// The scope is not a valid workspace path.
    #[error("capability `{text}` has an invalid scope: {source}")]
    InvalidScope {
        /// The whole capability text.
        text: String,
        /// What is wrong with the scope.
        source: WorkspacePathError,
    },
}

impl FromStr for Capability {
    type Err = CapabilityParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some((kind, scope)) = text.split_once(':') else {
            return Err(CapabilityParseError::Malformed(text.to_owned()));
        };
        match kind {
            "fs.write" => {
                let prefix = WorkspacePath::parse(scope.strip_suffix('/').unwrap_or(scope)).map_err(|source| {
                    CapabilityParseError::InvalidScope {
                        text: text.to_owned(),
                        source,
                    }
                })?;
                Ok(Capability::FsWrite { prefix })
            }
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
                "capability `net.any:x` has unknown kind `net.any`: the known kind is `fs.write`",
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
