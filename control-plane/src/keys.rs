//! Secret key files: random bytes created once, mode 0600, and read back on every later start.
//!
//! One routine serves every key agentd keeps beside its state: the token signing key, the audit
//! anchor key and the code cache's MAC key. Creation is atomic: the bytes are written and
//! fsynced under a unique temporary name, then hard-linked to the final name, which fails if
//! another process got there first. The loser reads the winner's key, so concurrent first uses
//! agree on one key and nobody ever reads a half-written file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a key file could not be read or created.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or linking the file failed.
    #[error("key file {path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file exists but holds the wrong number of bytes.
    #[error("key file {path} holds {found} bytes; it must hold {expected}")]
    WrongLength {
        /// The key file.
        path: PathBuf,
        /// Bytes found.
        found: usize,
        /// What the key needs: an exact length, or `at least N`.
        expected: String,
    },
    /// The file is readable or writable by others than its owner, or owned by another user:
    /// whoever could read it could forge what the key signs.
    #[error(
        "key file {path} is exposed (mode {mode:04o}, owner uid {owner}, this process runs as uid {euid}); \
         make it private to this user: `chmod 600 {path}` (and `chown` it), or delete it to start afresh"
    )]
    Exposed {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner's uid.
        owner: u32,
        /// This process's effective uid.
        euid: u32,
    },
    /// The operating system's random source failed.
    #[error("cannot generate key {path}: the random source failed: {message}")]
    Random {
        /// The key file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

impl KeyFileError {
    /// Whether retrying can help: only an I/O error might clear.
    pub fn is_retryable(&self) -> bool {
        matches!(self, KeyFileError::Io { .. })
    }
}

/// The key at `path`: its bytes if the file exists, else `create_bytes` fresh random bytes
/// written there first (mode 0600 on Unix). The caller checks the length it needs.
///
/// # Errors
///
/// [`KeyFileError::Io`] when the file cannot be read or created, [`KeyFileError::Random`] when
/// no random bytes can be had.
pub fn load_or_create(path: &Path, create_bytes: usize) -> Result<Vec<u8>, KeyFileError> {
    match read_private(path) {
        Ok(bytes) => return Ok(bytes),
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let mut key = vec![0u8; create_bytes];
    getrandom::fill(&mut key).map_err(|error| KeyFileError::Random {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    create(path, key)
}

/// The key at `path`: its bytes if the file exists, else `key` written there first (mode 0600
/// on Unix), atomically as [`load_or_create`] does. For carrying a key to a new home (`agentd
/// migrate`): the caller compares what it gets with what it gave.
///
/// # Errors
///
/// As [`load_or_create_exact`].
pub fn load_or_install_exact<const N: usize>(path: &Path, key: &[u8; N]) -> Result<[u8; N], KeyFileError> {
    let bytes = match read_private(path) {
        Ok(bytes) => bytes,
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            create(path, key.to_vec())?
        }
        Err(error) => return Err(error),
    };
    bytes.try_into().map_err(|bytes: Vec<u8>| KeyFileError::WrongLength {
        path: path.to_owned(),
        found: bytes.len(),
        expected: N.to_string(),
    })
}

/// Writes `key` to a unique temporary file beside `path` (0600, fsynced) and hard-links it to
/// `path`; when another process linked first, returns theirs.
fn create(path: &Path, key: Vec<u8>) -> Result<Vec<u8>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|error| KeyFileError::Random {
        path: path.to_owned(),
        message: error.to_string(),
    })?;
    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", hex::encode(suffix)));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(&key)?;
        file.sync_all()
    })();
    if let Err(error) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(io(error));
    }
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(key)
        }
        // Another process created the key first: use theirs, which is complete (it was linked
        // only after it was written and synced).
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read_private(path),
        Err(error) => Err(io(error)),
    }
}

/// Reads the key file at `path` after checking, on Unix, that only this user can read it: no
/// permission bits for group or others, owned by this process's effective uid.
///
/// # Errors
///
/// [`KeyFileError::Io`] when it cannot be read, [`KeyFileError::Exposed`] when it is not private.
fn read_private(path: &Path) -> Result<Vec<u8>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let metadata = file.metadata().map_err(io)?;
        let euid = rustix::process::geteuid().as_raw();
        if metadata.mode() & 0o077 != 0 || metadata.uid() != euid {
            return Err(KeyFileError::Exposed {
                path: path.to_owned(),
                mode: metadata.mode() & 0o7777,
                owner: metadata.uid(),
                euid,
            });
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
    Ok(bytes)
}

/// [`load_or_create`] for a key of exactly `N` bytes.
///
/// # Errors
///
/// As [`load_or_create`], and [`KeyFileError::WrongLength`] when the file holds another length.
pub fn load_or_create_exact<const N: usize>(path: &Path) -> Result<[u8; N], KeyFileError> {
    let bytes = load_or_create(path, N)?;
    bytes.try_into().map_err(|bytes: Vec<u8>| KeyFileError::WrongLength {
        path: path.to_owned(),
        found: bytes.len(),
        expected: N.to_string(),
    })
}

/// The key of exactly `N` bytes at `path`, or `None` when there is no such file. Never creates
/// one: for keys whose loss must be noticed, not repaired.
///
/// # Errors
///
/// [`KeyFileError::Io`] when the file exists but cannot be read, [`KeyFileError::WrongLength`]
/// when it holds another length.
pub fn load_exact<const N: usize>(path: &Path) -> Result<Option<[u8; N]>, KeyFileError> {
    match read_private(path) {
        Ok(bytes) => bytes
            .try_into()
            .map(Some)
            .map_err(|bytes: Vec<u8>| KeyFileError::WrongLength {
                path: path.to_owned(),
                found: bytes.len(),
                expected: N.to_string(),
            }),
        Err(KeyFileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Makes the new directory entry durable (best effort: not every file system supports syncing
/// a directory).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(directory) = std::fs::File::open(if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        })
    {
        let _ = directory.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_once_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let first: [u8; 32] = load_or_create_exact(&path).unwrap();
        let again: [u8; 32] = load_or_create_exact(&path).unwrap();
        assert_eq!(first, again);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            load_or_create_exact::<32>(&path),
            Err(KeyFileError::WrongLength { found: 5, .. })
        ));
    }

    #[test]
    fn concurrent_first_uses_agree_on_one_complete_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.key");
        let keys: Vec<[u8; 32]> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|_| scope.spawn(|| load_or_create_exact::<32>(&path).unwrap()))
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|pair| pair[0] == pair[1]));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn an_existing_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let _: [u8; 32] = load_or_create_exact(&path).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let error = load_or_create_exact::<32>(&path).unwrap_err();
            assert!(
                matches!(error, KeyFileError::Exposed { mode: found, .. } if found == mode),
                "{mode:o}: {error}"
            );
            assert!(error.to_string().contains("chmod 600"), "{error}");
            assert!(matches!(load_exact::<32>(&path), Err(KeyFileError::Exposed { .. })));
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load_exact::<32>(&path).unwrap().is_some());
    }
}
