//! The served tree: virtual paths (bytes, `/` = the root) mapped to real paths that cannot
//! leave the root.
//!
//! A virtual path is resolved lexically first (`.`, `..` and repeated slashes folded, `..` at
//! the top stays at the top), then the real path is canonicalised and must still start with
//! the canonical root, so a symlink that points out of the tree is refused. Operations on a
//! name (delete, rename, mkdir, upload) canonicalise the parent only and never follow the last
//! component. Names are bytes: a non-UTF-8 name is listed and reachable as is.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Prefix of upload temporary files: never listed, never reachable by name.
pub(crate) const UPLOAD_PREFIX: &[u8] = b".pasvd-upload-";

/// Why a path was refused.
#[derive(Debug)]
pub(crate) enum PathError {
    /// The real path leaves the root (through a symlink) or names a hidden upload file.
    Denied,
    /// The file system said no (not found, not a directory, ...).
    Io(io::Error),
}

impl From<io::Error> for PathError {
    fn from(e: io::Error) -> Self {
        PathError::Io(e)
    }
}

impl PathError {
    /// Text for a 550 reply (no real path: that would reveal the server's layout).
    pub(crate) fn describe(&self) -> &'static str {
        match self {
            PathError::Denied => "Permission denied",
            PathError::Io(e) => io_text(e),
        }
    }
}

/// Short reply text for a file system error.
pub(crate) fn io_text(e: &io::Error) -> &'static str {
    // errno values (Linux numbering) for the kinds that are newer than our MSRV.
    const ENOTDIR: i32 = 20;
    const EISDIR: i32 = 21;
    const ENOSPC: i32 = 28;
    const ENOTEMPTY: i32 = 39;
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => "No such file or directory",
        (io::ErrorKind::PermissionDenied, _) => "Permission denied",
        (io::ErrorKind::AlreadyExists, _) => "File exists",
        (_, Some(ENOTEMPTY)) => "Directory not empty",
        (_, Some(ENOTDIR)) => "Not a directory",
        (_, Some(EISDIR)) => "Is a directory",
        (_, Some(ENOSPC)) => "No space left on device",
        _ => "Operation failed",
    }
}

/// A confined view of one directory tree.
#[derive(Clone, Debug)]
pub(crate) struct Vfs {
    root: PathBuf,
}

/// A resolved path: the virtual form (for replies) and the real one (for syscalls).
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub(crate) virt: Vec<u8>,
    pub(crate) real: PathBuf,
}

impl Vfs {
    /// Canonicalises `root`, which must be a directory.
    pub(crate) fn new(root: &Path) -> io::Result<Vfs> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "root is not a directory",
            ));
        }
        Ok(Vfs { root })
    }

    /// Folds `arg` onto the virtual directory `cwd` without touching the file system.
    pub(crate) fn join(cwd: &[u8], arg: &[u8]) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let start: &[u8] = if arg.first() == Some(&b'/') { b"" } else { cwd };
        for part in start.split(|&b| b == b'/').chain(arg.split(|&b| b == b'/')) {
            match part {
                b"" | b"." => {}
                b".." => {
                    parts.pop();
                }
                name => parts.push(name),
            }
        }
        let mut out = Vec::with_capacity(cwd.len() + arg.len() + 1);
        for part in &parts {
            out.push(b'/');
            out.extend_from_slice(part);
        }
        if out.is_empty() {
            out.push(b'/');
        }
        out
    }

    fn real_of(&self, virt: &[u8]) -> PathBuf {
        let rel = virt.strip_prefix(b"/").unwrap_or(virt);
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    fn check_hidden(virt: &[u8]) -> Result<(), PathError> {
        let name = virt.rsplit(|&b| b == b'/').next().unwrap_or(b"");
        if name.starts_with(UPLOAD_PREFIX) {
            return Err(PathError::Denied);
        }
        Ok(())
    }

    fn confined(&self, real: &Path) -> Result<(), PathError> {
        if real.starts_with(&self.root) {
            Ok(())
        } else {
            Err(PathError::Denied)
        }
    }

    /// Resolves an existing path, following symlinks, refusing any that leave the root.
    pub(crate) fn existing(&self, cwd: &[u8], arg: &[u8]) -> Result<Resolved, PathError> {
        let virt = Vfs::join(cwd, arg);
        Vfs::check_hidden(&virt)?;
        let lexical = self.real_of(&virt);
        let real = if self.has_symlink(&virt)? {
            lexical.canonicalize()?
        } else {
            // The root is canonical, `..` is gone and no component is a link: the lexical
            // path is the canonical one. One lstat per component below the root instead of
            // realpath's readlink on every component from `/`.
            lexical
        };
        self.confined(&real)?;
        Ok(Resolved { virt, real })
    }

    /// Whether any component of `virt` below the root is a symlink (errors if one is missing).
    fn has_symlink(&self, virt: &[u8]) -> io::Result<bool> {
        let mut path = self.root.clone();
        for part in virt.split(|&b| b == b'/').filter(|p| !p.is_empty()) {
            path.push(OsStr::from_bytes(part));
            if std::fs::symlink_metadata(&path)?.file_type().is_symlink() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Resolves a name whose parent must exist inside the root; the name itself is not
    /// followed (it may not exist yet, or be a symlink to delete or rename).
    pub(crate) fn name(&self, cwd: &[u8], arg: &[u8]) -> Result<Resolved, PathError> {
        let virt = Vfs::join(cwd, arg);
        if virt == b"/" {
            return Err(PathError::Denied);
        }
        Vfs::check_hidden(&virt)?;
        let split = virt.iter().rposition(|&b| b == b'/').unwrap_or(0);
        let (parent, name) = (&virt[..split.max(1)], &virt[split + 1..]);
        let parent_lexical = self.real_of(parent);
        let parent_real = if self.has_symlink(parent)? {
            parent_lexical.canonicalize()?
        } else {
            parent_lexical
        };
        self.confined(&parent_real)?;
        let real = parent_real.join(OsStr::from_bytes(name));
        Ok(Resolved { virt, real })
    }

    /// The canonical root.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_folds_dots_and_stays_under_the_root() {
        assert_eq!(Vfs::join(b"/", b"a/b"), b"/a/b");
        assert_eq!(Vfs::join(b"/a/b", b".."), b"/a");
        assert_eq!(Vfs::join(b"/a", b"../../../etc/passwd"), b"/etc/passwd");
        assert_eq!(Vfs::join(b"/a", b"/x//y/./z/"), b"/x/y/z");
        assert_eq!(Vfs::join(b"/", b".."), b"/");
        assert_eq!(Vfs::join(b"/a", b""), b"/a");
        assert_eq!(Vfs::join(b"/", b"\xff\xfe"), b"/\xff\xfe");
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        std::fs::write(root.path().join("d/f"), b"y").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("out")).unwrap();
        std::os::unix::fs::symlink("d/f", root.path().join("in")).unwrap();
        let vfs = Vfs::new(root.path()).unwrap();
        assert!(matches!(
            vfs.existing(b"/", b"out/secret"),
            Err(PathError::Denied)
        ));
        assert!(matches!(vfs.name(b"/", b"out/new"), Err(PathError::Denied)));
        assert!(vfs.existing(b"/", b"in").is_ok());
        assert!(vfs.existing(b"/", b"../../d/f").is_ok());
        // The link itself may be deleted: its parent is inside.
        assert!(vfs.name(b"/", b"out").is_ok());
        assert!(matches!(
            vfs.name(b"/", b".pasvd-upload-1"),
            Err(PathError::Denied)
        ));
    }
}
