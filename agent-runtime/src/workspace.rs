//! Workspace files, reached only through directory handles.
//!
//! A guest names a [`WorkspacePath`] (relative, no `.`/`..`/empty segment). The host opens the
//! tenant's workspace root once, then each directory segment relative to the handle of the one
//! before, without following a symbolic link (`O_NOFOLLOW | O_DIRECTORY`, by `cap-std`), and
//! the file itself the same way. Nothing is resolved by path name after a check, so there is no
//! check-then-use window: a link swapped in mid-call makes the call fail, never escape.
//!
//! Writes go to a temporary file with a random name created `O_EXCL` (it cannot be a link or
//! an existing file planted in advance), fsynced, renamed over the target within the same
//! directory handle, and the directory fsynced: a reader never sees half a file.
//!
//! Review finding closed here: a write followed a symlinked `<target>.agentd-partial` out of
//! the workspace, and reads resolved the path twice (check, then use).

use std::io::{Read, Write};
use std::path::Path;

use cap_fs_ext::{DirExt, FollowSymlinks, OpenOptionsFollowExt};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions};
use plugin_abi::WorkspacePath;

use crate::bindings::agentd::skill::host::CapabilityError;

/// Prefix of the temporary files of writes in flight (hidden, and never a name a guest's path
/// ends up with by accident: the guest's name is not part of it, so it also fits `NAME_MAX`).
pub(crate) const PARTIAL_PREFIX: &str = ".agentd-partial-";

/// Writes `contents` to `path` below `root`, creating missing directories (0700 on Unix).
///
/// # Errors
///
/// [`CapabilityError::Invalid`] when a segment is a symbolic link or a non-directory,
/// [`CapabilityError::Io`] for any other failure; nothing is left behind then.
pub(crate) fn write(root: &Path, path: &WorkspacePath, contents: &[u8]) -> Result<(), CapabilityError> {
    let io = |error: std::io::Error| CapabilityError::Io(format!("writing `{path}`: {error}"));
    std::fs::create_dir_all(root).map_err(io)?;
    let (dir, name) = open_parent(root, path, true)?;
    let temporary = format!("{PARTIAL_PREFIX}{:016x}", random_u64());
    let mut options = OpenOptions::new();
    options.write(true).create_new(true).follow(FollowSymlinks::No);
    let written = (|| {
        let mut file = dir.open_with(&temporary, &options)?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        dir.rename(&temporary, &dir, name)
    })();
    if let Err(error) = written {
        let _ = dir.remove_file(&temporary);
        return Err(refusal(&dir, name, path).unwrap_or_else(|| io(error)));
    }
    // The rename is durable once the directory is.
    let _ = dir.into_std_file().sync_all();
    Ok(())
}

/// Reads `path` below `root`: a regular file only, opened without blocking (a FIFO does not
/// hang the host) and without following a link, at most `max_bytes` of it.
///
/// # Errors
///
/// [`CapabilityError::Invalid`] for a link, a non-regular file, or a file over `max_bytes`
/// (checked by size, then again by reading at most `max_bytes + 1` bytes);
/// [`CapabilityError::Io`] for any other failure, a missing file included.
pub(crate) fn read(root: &Path, path: &WorkspacePath, max_bytes: u64) -> Result<Vec<u8>, CapabilityError> {
    let io = |error: std::io::Error| CapabilityError::Io(format!("reading `{path}`: {error}"));
    let (dir, name) = open_parent(root, path, false)?;
    let mut options = OpenOptions::new();
    options.read(true).follow(FollowSymlinks::No);
    #[cfg(unix)]
    cap_std::fs::OpenOptionsExt::custom_flags(&mut options, rustix::fs::OFlags::NONBLOCK.bits() as i32);
    let file = dir
        .open_with(name, &options)
        .map_err(|error| refusal(&dir, name, path).unwrap_or_else(|| io(error)))?;
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(CapabilityError::Invalid(format!(
            "`{path}` is not a regular file; only regular files are read"
        )));
    }
    let length = metadata.len();
    if length > max_bytes {
        return Err(CapabilityError::Invalid(format!(
            "`{path}` is {length} bytes; at most {max_bytes} were asked for"
        )));
    }
    let mut contents = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
    file.take(max_bytes + 1).read_to_end(&mut contents).map_err(io)?;
    // The file may have grown between the size check and the read.
    if contents.len() as u64 > max_bytes {
        return Err(CapabilityError::Invalid(format!(
            "`{path}` grew past {max_bytes} bytes while being read"
        )));
    }
    Ok(contents)
}

/// The handle of `path`'s parent directory (each segment opened relative to the one before,
/// links refused) and the file's name in it; missing directories are created when `create`.
fn open_parent<'p>(root: &Path, path: &'p WorkspacePath, create: bool) -> Result<(Dir, &'p str), CapabilityError> {
    let io = |error: std::io::Error| CapabilityError::Io(format!("resolving `{path}`: {error}"));
    let mut dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(io)?;
    let mut segments = path.as_str().split('/').peekable();
    while let Some(segment) = segments.next() {
        if segments.peek().is_none() {
            return Ok((dir, segment));
        }
        let opened = match dir.open_dir_nofollow(segment) {
            Err(error) if create && error.kind() == std::io::ErrorKind::NotFound => {
                match create_private_dir(&dir, segment) {
                    Ok(()) => dir.open_dir_nofollow(segment),
                    Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => dir.open_dir_nofollow(segment),
                    Err(error) => Err(error),
                }
            }
            other => other,
        };
        dir = opened.map_err(|error| refusal(&dir, segment, path).unwrap_or_else(|| io(error)))?;
    }
    unreachable!("a workspace path has at least one segment")
}

fn create_private_dir(dir: &Dir, name: &str) -> std::io::Result<()> {
    let mut builder = cap_std::fs::DirBuilder::new();
    #[cfg(unix)]
    cap_std::fs::DirBuilderExt::mode(&mut builder, 0o700);
    dir.create_dir_with(name, &builder)
}

/// Why opening `name` in `dir` failed when it is the guest's doing, a symbolic link (refused
/// by `O_NOFOLLOW` as `ELOOP`, which alone would read as a loop); `None` for other failures.
fn refusal(dir: &Dir, name: &str, path: &WorkspacePath) -> Option<CapabilityError> {
    let metadata = dir.symlink_metadata(name).ok()?;
    metadata.file_type().is_symlink().then(|| {
        CapabilityError::Invalid(format!(
            "`{path}` passes through a symbolic link; links are not followed in workspaces"
        ))
    })
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    // A failing system RNG leaves zeros: O_EXCL still refuses a planted file, the write then
    // fails instead of following it.
    let _ = getrandom::fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::symlink;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn path(text: &str) -> WorkspacePath {
        WorkspacePath::parse(text).unwrap()
    }

    /// Review finding: a write followed a symlinked `<target>.agentd-partial` out of the
    /// workspace. Temporary names are random and created `O_EXCL`, so a planted link is never
    /// opened, whatever its name.
    #[test]
    fn planted_partial_file_links_are_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let reports = root.path().join("reports");
        std::fs::create_dir(&reports).unwrap();
        for planted in [
            "a.md.agentd-partial",
            "a.agentd-partial",
            ".agentd-partial-0000000000000000",
        ] {
            symlink(&victim, reports.join(planted)).unwrap();
        }
        write(root.path(), &path("reports/a.md"), b"report").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(std::fs::read(reports.join("a.md")).unwrap(), b"report");
        assert!(std::fs::symlink_metadata(reports.join("a.md")).unwrap().is_file());
        // The write left only its target beside the planted links.
        assert_eq!(std::fs::read_dir(&reports).unwrap().count(), 4);
    }

    /// A link as the target itself is replaced by the rename, never written through.
    #[test]
    fn a_link_at_the_target_is_replaced_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        symlink(&victim, root.path().join("a.md")).unwrap();
        assert!(matches!(
            read(root.path(), &path("a.md"), 100),
            Err(CapabilityError::Invalid(_))
        ));
        write(root.path(), &path("a.md"), b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(read(root.path(), &path("a.md"), 100).unwrap(), b"new");
    }

    /// Review finding: reads checked the path, then opened it by name again. An adversary with
    /// write access to the workspace swaps a directory for a link to a secret, as fast as it
    /// can, while the host reads and writes through it: no read ever returns the secret and no
    /// write ever lands outside. (Each call either works on the real directory or is refused.)
    #[test]
    fn a_directory_swapped_for_a_link_never_lets_a_call_out() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("a.md"), "secret").unwrap();
        let (link, live) = (root.path().join("link"), root.path().join("inbox"));
        std::fs::create_dir(&live).unwrap();
        std::fs::write(live.join("a.md"), "public").unwrap();
        symlink(outside.path(), &link).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let swapper = {
            let (stop, link, live) = (stop.clone(), link.clone(), live.clone());
            std::thread::spawn(move || {
                let mut swaps = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // `inbox` is the real directory or the link, exchanged atomically
                    // (renameat2 RENAME_EXCHANGE), so it always exists as one or the other.
                    rustix::fs::renameat_with(
                        rustix::fs::CWD,
                        &live,
                        rustix::fs::CWD,
                        &link,
                        rustix::fs::RenameFlags::EXCHANGE,
                    )
                    .unwrap();
                    swaps += 1;
                }
                swaps
            })
        };
        let (mut read_ok, mut refused) = (0, 0);
        for i in 0..3_000 {
            match read(root.path(), &path("inbox/a.md"), 100) {
                Ok(contents) => {
                    assert_eq!(contents, b"public", "a read left the workspace");
                    read_ok += 1;
                }
                Err(_) => refused += 1,
            }
            let _ = write(root.path(), &path(&format!("inbox/w-{i}.md")), b"x");
        }
        stop.store(true, Ordering::Relaxed);
        let swaps = swapper.join().unwrap();
        let escaped: Vec<_> = std::fs::read_dir(outside.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name != "a.md")
            .collect();
        assert!(escaped.is_empty(), "written outside: {escaped:?}");
        // The adversary was really there: some calls met the link.
        assert!(
            swaps > 0 && refused > 0,
            "{swaps} swaps, {read_ok} reads, {refused} refused"
        );
    }
}
