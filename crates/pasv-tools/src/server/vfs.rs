//! The served tree: every filesystem operation of the server, confined by the kernel to a
//! handle on the session's root at the moment of use.
//!
//! A virtual path (bytes, `/` = the root) is folded lexically first (`.`, `..` and repeated
//! slashes; `..` at the top stays at the top). It is then resolved by `openat2(2)` relative to
//! a directory descriptor of the root with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`: the
//! kernel refuses, during the resolution itself, any step (a `..` in a symlink, an absolute
//! symlink, a `/proc` magic link) that would leave the root. Nothing is ever checked as a
//! string and opened again later, so a second session that swaps a directory for a symlink
//! between two operations changes nothing: the next operation resolves again, beneath the
//! root. The server refuses to start on a kernel without `openat2` (Linux 5.6 and later have
//! it) rather than emulate it in user space.
//!
//! What a symlink means (all resolution happens beneath the root):
//!
//! * **Reads follow links** in every component: RETR, SIZE, MDTM, MLST, CWD and the listed
//!   directory of LIST/NLST/MLSD. A link whose target leaves the root (or dangles) is
//!   refused as "Permission denied" / "No such file".
//! * **Writes never follow the last component**: an operation on a name opens the parent
//!   (following links beneath the root) and acts on the name itself with the `*at` calls.
//!   DELE and RNFR/RNTO remove or move the link, not its target; STOR replaces a link with a
//!   regular file; APPE and REST+STOR, MFMT and SITE CHMOD refuse a link ("Is a symbolic
//!   link"); MKD never creates through one.
//! * **Listings** show a link whose target resolves beneath the root as its target (type,
//!   size, time), without the target path; any other link is shown as a link of size 0
//!   with its own time. No path, size or time of anything outside the root is ever shown.
//! * RETR opens only regular files, non-blocking, so a FIFO, a socket or a device in the tree
//!   is refused at once and never blocks a thread.
//!
//! Uploads are written to an unnamed file (`O_TMPFILE`) in the target's directory and linked
//! into place on commit: no temporary name exists during the transfer, and an upload
//! abandoned for any reason (ABOR, a vanished client, a crash of the server) leaves nothing
//! behind. A new name is linked directly; an existing file is replaced by linking the upload
//! under a hidden name (prefix [`UPLOAD_PREFIX`], never listed and never reachable by name)
//! and renaming it over the old one, so only a crash between those two calls can leave a
//! hidden file. On file systems without `O_TMPFILE` the hidden named file holds the whole
//! transfer and is removed through the same directory handle if the upload does not commit
//! (a crash of the server leaves it). A replaced file's permission bits carry over to the
//! new one. The commit resolves the target again at that moment: if the directory was
//! removed or renamed meanwhile, the upload fails and leaves nothing.
//!
//! Device nodes: RETR opens its file non-blocking before checking its type, so a device
//! node placed in the tree by the operator would see an open and a close (nothing is read);
//! serve trees on `nodev` mounts. Every other operation pins with `O_PATH` first.
//!
//! Names are bytes: a non-UTF-8 name is listed and reachable as is.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;

/// Prefix of upload temporary files: never listed, never reachable by name.
pub(crate) const UPLOAD_PREFIX: &[u8] = b".pasvd-upload-";

/// Why a filesystem operation was refused or failed; [`FsError::reply`] is the one place
/// that turns it into an FTP reply.
#[derive(Debug)]
pub(crate) enum FsError {
    /// The path leaves the root, names the root where a name is needed, or the account may
    /// not do this.
    Denied,
    /// A name that cannot be created or used (an upload temporary's prefix, empty).
    BadName,
    /// The last component is a symlink and the operation does not follow it.
    Symlink,
    /// Not a regular file where one is needed (a FIFO, socket, device or directory).
    NotRegular,
    /// REST past the end of the file (or of no file) before STOR.
    PastEnd,
    /// The file system said no (not found, not a directory, exists, not empty, ...).
    Io(io::Error),
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

impl From<Errno> for FsError {
    fn from(e: Errno) -> Self {
        FsError::Io(e.into())
    }
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Io(e) => e,
            FsError::Denied => io::ErrorKind::PermissionDenied.into(),
            other => io::Error::other(other.reply().1),
        }
    }
}

impl FsError {
    /// The reply code and text (no real path: that would reveal the server's layout).
    pub(crate) fn reply(&self) -> (u16, &'static str) {
        match self {
            FsError::Denied => (550, "Permission denied."),
            FsError::BadName => (553, "File name not allowed."),
            FsError::Symlink => (550, "Is a symbolic link."),
            FsError::NotRegular => (550, "Not a regular file."),
            FsError::PastEnd => (554, "Restart position beyond the end of the file."),
            FsError::Io(e) => (io_code(e), io_text(e)),
        }
    }
}

/// The reply code for a file system error: transient (450, 452) or permanent (550).
fn io_code(e: &io::Error) -> u16 {
    const EAGAIN: i32 = 11;
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    match e.raw_os_error() {
        Some(ENOSPC | EDQUOT) => 452,
        Some(EAGAIN) => 450,
        _ => 550,
    }
}

/// Short reply text for a file system error.
pub(crate) fn io_text(e: &io::Error) -> &'static str {
    // errno values (Linux numbering) for the kinds that are newer than our MSRV.
    const ENOTDIR: i32 = 20;
    const EISDIR: i32 = 21;
    const ENOSPC: i32 = 28;
    const ELOOP: i32 = 40;
    const ENOTEMPTY: i32 = 39;
    const EDQUOT: i32 = 122;
    const EXDEV: i32 = 18;
    const ENAMETOOLONG: i32 = 36;
    match (e.kind(), e.raw_os_error()) {
        (io::ErrorKind::NotFound, _) => "No such file or directory.",
        (io::ErrorKind::PermissionDenied, _) => "Permission denied.",
        (io::ErrorKind::AlreadyExists, _) => "File exists.",
        (_, Some(ENOTEMPTY)) => "Directory not empty.",
        (_, Some(ENOTDIR)) => "Not a directory.",
        (_, Some(EISDIR)) => "Is a directory.",
        (_, Some(ENOSPC | EDQUOT)) => "No space left on device.",
        (_, Some(ELOOP)) => "Too many levels of symbolic links.",
        (_, Some(EXDEV)) => "Cross-device link.",
        (_, Some(ENAMETOOLONG)) => "File name too long.",
        _ => "Operation failed.",
    }
}

/// What the server shows of a file: kind, permission bits, size, time, links.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Meta {
    /// The file's type.
    pub(crate) kind: Kind,
    /// Permission bits (`0o7777`).
    pub(crate) mode: u32,
    /// Size in bytes.
    pub(crate) size: u64,
    /// Modification time, seconds since the epoch.
    pub(crate) mtime: i64,
    /// Hard link count.
    pub(crate) nlink: u64,
}

/// A file's type as listings show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink whose target is not shown (it leaves the root or dangles).
    Symlink,
    /// A FIFO, socket or device.
    Other,
}

impl Meta {
    fn of(st: &Stat) -> Meta {
        let kind = match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            _ => Kind::Other,
        };
        Meta {
            kind,
            mode: st.st_mode & 0o7777,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime: st.st_mtime,
            nlink: st.st_nlink,
        }
    }

    /// A link shown as itself: no size (its size is its target's length).
    fn link(st: &Stat) -> Meta {
        Meta {
            size: 0,
            ..Meta::of(st)
        }
    }
}

/// A file open for a download (see [`Vfs::open_download`]).
#[derive(Debug)]
pub(crate) struct Download {
    /// Positioned at the offset.
    pub(crate) file: File,
    /// Bytes left from the offset.
    pub(crate) len: u64,
    /// In TYPE A after a REST: the byte before the offset.
    pub(crate) previous: Option<u8>,
}

/// One entry of a listed directory.
#[derive(Debug)]
pub(crate) struct Entry {
    /// The entry's name.
    pub(crate) name: Vec<u8>,
    /// What a listing shows of it.
    pub(crate) meta: Meta,
    /// For a link whose target resolves beneath the root: the link's text.
    pub(crate) target: Option<Vec<u8>>,
}

/// A confined view of one directory tree: a descriptor of its root.
#[derive(Clone, Debug)]
pub(crate) struct Vfs {
    root: Arc<OwnedFd>,
}

const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// A folded virtual path relative to the root (`.` for the root itself).
fn rel(virt: &[u8]) -> &OsStr {
    let rel = virt.strip_prefix(b"/").unwrap_or(virt);
    OsStr::from_bytes(if rel.is_empty() { b"." } else { rel })
}

/// The longest suffix STOU may add to a name (`.` and 16 hex digits).
pub(crate) const UNIQUE_SUFFIX: usize = 17;

/// Linux's limit on one name.
const NAME_MAX: usize = 255;

/// Whether a STOU name leaves room for its suffix.
pub(crate) fn unique_name_fits(virt: &[u8]) -> bool {
    let name = virt.rsplit(|&b| b == b'/').next().unwrap_or(virt);
    name.len() + UNIQUE_SUFFIX <= NAME_MAX
}

/// Splits a folded virtual path into parent and last component; the root has no name.
fn split(virt: &[u8]) -> Result<(&[u8], &[u8]), FsError> {
    let at = virt.iter().rposition(|&b| b == b'/').unwrap_or(0);
    let (parent, name) = (&virt[..at.max(1)], &virt[at + 1..]);
    if name.is_empty() {
        return Err(FsError::Denied);
    }
    Ok((parent, name))
}

fn hidden(name: &[u8]) -> bool {
    name.starts_with(UPLOAD_PREFIX)
}

impl Vfs {
    /// Opens `root`, which must be a directory, and checks that the kernel confines paths
    /// beneath it (`openat2`).
    pub(crate) fn new(root: &Path) -> io::Result<Vfs> {
        let fd = rustix::fs::open(
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match rustix::fs::openat2(
            &fd,
            ".",
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            BENEATH,
        ) {
            Ok(_) => {}
            Err(Errno::NOSYS) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "this kernel has no openat2 (Linux 5.6 or later is needed to confine paths)",
                ))
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Vfs { root: Arc::new(fd) })
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

    /// Folds `arg` onto `cwd` and refuses a path whose last component is an upload temporary.
    pub(crate) fn path(cwd: &[u8], arg: &[u8]) -> Result<Vec<u8>, FsError> {
        let virt = Vfs::join(cwd, arg);
        let name = virt.rsplit(|&b| b == b'/').next().unwrap_or(b"");
        if hidden(name) {
            return Err(FsError::Denied);
        }
        Ok(virt)
    }

    /// `openat2` beneath `dir`, retried when a concurrent rename made the kernel give up.
    fn open_beneath(
        dir: BorrowedFd<'_>,
        path: &OsStr,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, FsError> {
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(dir, path, flags | OFlags::CLOEXEC, mode, BENEATH) {
                Ok(fd) => return Ok(fd),
                Err(Errno::AGAIN | Errno::INTR) if tries < 8 => tries += 1,
                // The resolution would leave the root (a `..`, an absolute or escaping link,
                // a magic link): refused by the kernel while resolving.
                Err(Errno::XDEV) => return Err(FsError::Denied),
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn open(&self, virt: &[u8], flags: OFlags) -> Result<OwnedFd, FsError> {
        Vfs::open_beneath(self.root.as_fd(), rel(virt), flags, Mode::empty())
    }

    /// The parent directory of a name (following links beneath the root) and the name.
    fn parent<'a>(&self, virt: &'a [u8]) -> Result<(OwnedFd, &'a OsStr), FsError> {
        let (parent, name) = split(virt)?;
        if hidden(name) {
            return Err(FsError::BadName);
        }
        let dir = self.open(parent, OFlags::PATH | OFlags::DIRECTORY)?;
        Ok((dir, OsStr::from_bytes(name)))
    }

    /// What an existing path is (links followed beneath the root).
    pub(crate) fn stat(&self, virt: &[u8]) -> Result<Meta, FsError> {
        let fd = self.open(virt, OFlags::PATH)?;
        Ok(Meta::of(&rustix::fs::fstat(&fd)?))
    }

    /// Whether `virt` is a directory one can enter (CWD).
    pub(crate) fn is_dir(&self, virt: &[u8]) -> Result<(), FsError> {
        self.open(virt, OFlags::PATH | OFlags::DIRECTORY).map(drop)
    }

    /// Opens a regular file for reading (RETR). Non-blocking, so a FIFO never waits for a
    /// writer; anything but a regular file is refused.
    pub(crate) fn open_read(&self, virt: &[u8]) -> Result<(File, Meta), FsError> {
        let fd = self
            .open(virt, OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY)
            .map_err(|e| match e {
                // A socket in the tree cannot be opened.
                FsError::Io(io) if io.raw_os_error() == Some(Errno::NXIO.raw_os_error()) => {
                    FsError::NotRegular
                }
                e => e,
            })?;
        let meta = Meta::of(&rustix::fs::fstat(&fd)?);
        if meta.kind != Kind::File {
            return Err(FsError::NotRegular);
        }
        Ok((File::from(fd), meta))
    }

    /// Opens a regular file for a download from `offset` (RETR after REST):
    /// [`FsError::PastEnd`] beyond its end. REST counts bytes of the stored file in either
    /// type; in TYPE A (`ascii`) the byte before the offset is read too, so the converter
    /// knows whether an LF right at the offset already ends a CRLF. One open beneath the
    /// root and one fstat: the server runs this inline, on the hot path (the open is
    /// non-blocking, so a FIFO is refused, not waited for).
    pub(crate) fn open_download(
        &self,
        virt: &[u8],
        offset: u64,
        ascii: bool,
    ) -> Result<Download, FsError> {
        use std::io::{Read, Seek, SeekFrom};
        let (mut file, meta) = self.open_read(virt)?;
        if offset > meta.size {
            return Err(FsError::PastEnd);
        }
        let mut previous = None;
        if offset > 0 {
            let from = if ascii { offset - 1 } else { offset };
            file.seek(SeekFrom::Start(from))?;
            if ascii {
                let mut byte = [0u8];
                file.read_exact(&mut byte)?;
                previous = Some(byte[0]);
            }
        }
        Ok(Download {
            file,
            len: meta.size - offset,
            previous,
        })
    }

    /// MKD.
    pub(crate) fn mkdir(&self, virt: &[u8]) -> Result<(), FsError> {
        let (dir, name) = self.parent(virt)?;
        rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(0o777))?;
        Ok(())
    }

    /// RMD: the name itself must be a directory (a link to one is refused).
    pub(crate) fn rmdir(&self, virt: &[u8]) -> Result<(), FsError> {
        let (dir, name) = self.parent(virt)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR)?;
        Ok(())
    }

    /// DELE: a file or link (the link itself), never a directory.
    pub(crate) fn delete(&self, virt: &[u8]) -> Result<(), FsError> {
        let (dir, name) = self.parent(virt)?;
        rustix::fs::unlinkat(&dir, name, AtFlags::empty())?;
        Ok(())
    }

    /// RNFR: the name exists (a link counts as itself).
    pub(crate) fn exists(&self, virt: &[u8]) -> Result<(), FsError> {
        let (dir, name) = self.parent(virt)?;
        rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(())
    }

    /// RNTO: both sides resolved now; the names themselves are moved, never followed.
    pub(crate) fn rename(&self, from: &[u8], to: &[u8]) -> Result<(), FsError> {
        let (from_dir, from_name) = self.parent(from)?;
        let (to_dir, to_name) = self.parent(to)?;
        rustix::fs::renameat(&from_dir, from_name, &to_dir, to_name)?;
        Ok(())
    }

    /// Applies a metadata change to a name without following it: a regular file or a
    /// directory, never a link, never the root. The inode is pinned by an `O_PATH`
    /// descriptor (no read or write permission needed, nothing of a device is opened) and
    /// changed through its `/proc/self/fd` entry, which names exactly that inode.
    fn change(&self, virt: &[u8], op: impl Fn(&OsStr) -> Result<(), Errno>) -> Result<(), FsError> {
        let (dir, name) = self.parent(virt)?;
        let fd = Vfs::open_beneath(
            dir.as_fd(),
            name,
            OFlags::PATH | OFlags::NOFOLLOW,
            Mode::empty(),
        )?;
        match Meta::of(&rustix::fs::fstat(&fd)?).kind {
            Kind::File | Kind::Dir => {}
            Kind::Symlink => return Err(FsError::Symlink),
            Kind::Other => return Err(FsError::NotRegular),
        }
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        Ok(op(OsStr::new(&proc))?)
    }

    /// SITE CHMOD: permission bits only (no setuid, setgid or sticky), never on the root
    /// and never through a link.
    pub(crate) fn chmod(&self, virt: &[u8], mode: u32) -> Result<(), FsError> {
        if mode & !0o777 != 0 {
            return Err(FsError::Denied);
        }
        self.change(virt, |inode| {
            rustix::fs::chmod(inode, Mode::from_raw_mode(mode))
        })
    }

    /// MFMT: sets the modification time (the access time is left alone).
    pub(crate) fn set_modified(&self, virt: &[u8], secs: i64) -> Result<(), FsError> {
        let times = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: secs,
                tv_nsec: 0,
            },
        };
        self.change(virt, |inode| {
            rustix::fs::utimensat(rustix::fs::CWD, inode, &times, AtFlags::empty())
        })
    }

    /// Lists a directory (links followed beneath the root) or describes a single entry;
    /// upload temporaries are never shown. Entries come unsorted. A link is listed as a
    /// link, with its text when its target resolves beneath the root (such a text can name
    /// nothing outside: the kernel refused any step above the root while resolving it), and
    /// as a bare link of size 0 otherwise. Nothing but a directory is opened for reading.
    pub(crate) fn list(&self, virt: &[u8]) -> Result<(Meta, Option<Vec<Entry>>), FsError> {
        let pinned = self.open(virt, OFlags::PATH)?;
        let meta = Meta::of(&rustix::fs::fstat(&pinned)?);
        if meta.kind != Kind::Dir {
            return Ok((meta, None));
        }
        let fd = rustix::fs::openat(
            &pinned,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let mut entries = Vec::new();
        for item in rustix::fs::Dir::read_from(&fd)? {
            let item = item?;
            let name = item.file_name().to_bytes();
            if name == b"." || name == b".." || hidden(name) {
                continue;
            }
            // A vanished entry (deleted while listing) is skipped, not an error.
            let Ok(st) = rustix::fs::statat(&fd, item.file_name(), AtFlags::SYMLINK_NOFOLLOW)
            else {
                continue;
            };
            let mut meta = Meta::of(&st);
            let mut target = None;
            if meta.kind == Kind::Symlink {
                let mut path = virt.to_vec();
                if path.last() != Some(&b'/') {
                    path.push(b'/');
                }
                path.extend_from_slice(name);
                let text = rustix::fs::readlinkat(&fd, item.file_name(), Vec::new());
                match (self.stat(&path), text) {
                    (Ok(_), Ok(text)) => target = Some(text.into_bytes()),
                    _ => meta = Meta::link(&st),
                }
            }
            entries.push(Entry {
                name: name.to_vec(),
                meta,
                target,
            });
        }
        Ok((meta, Some(entries)))
    }

    /// Starts an upload to the name `virt`: an unnamed file in its directory, holding the
    /// first `keep` bytes of the existing file (APPE, REST+STOR; `u64::MAX` for all of it).
    /// The existing file is read without following a link. Blocking (it copies).
    pub(crate) fn create_upload(&self, virt: &[u8], keep: u64) -> Result<Upload, FsError> {
        let (dir, name) = self.parent(virt)?;
        let source = if keep > 0 {
            let fd = Vfs::open_beneath(
                dir.as_fd(),
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY,
                Mode::empty(),
            );
            match fd {
                Ok(fd) => {
                    let meta = Meta::of(&rustix::fs::fstat(&fd)?);
                    if meta.kind != Kind::File {
                        return Err(FsError::NotRegular);
                    }
                    Some((Some((File::from(fd), meta.size)), meta.mode & 0o777))
                }
                Err(FsError::Io(e)) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
                    return Err(FsError::Symlink)
                }
                // APPE to a missing file starts it; REST+STOR has nothing to restart.
                Err(FsError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                    if keep == u64::MAX {
                        None
                    } else {
                        return Err(FsError::PastEnd);
                    }
                }
                Err(e) => return Err(e),
            }
        } else {
            match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) if Meta::of(&st).kind == Kind::Dir => {
                    return Err(FsError::Io(Errno::ISDIR.into()))
                }
                Ok(st) if Meta::of(&st).kind == Kind::File => Some((None, st.st_mode & 0o777)),
                _ => None,
            }
        };
        if matches!(source, Some((Some((_, size)), _)) if keep != u64::MAX && keep > size) {
            return Err(FsError::PastEnd);
        }
        let mut upload = Upload::create(dir)?;
        let Some((source, mode)) = source else {
            return Ok(upload);
        };
        // The new file replaces the old one: it keeps its permission bits.
        rustix::fs::fchmod(&upload.file, Mode::from_raw_mode(mode))?;
        if let Some((src, size)) = source {
            let want = keep.min(size);
            let copied = io::copy(&mut io::Read::take(src, want), &mut upload.file)?;
            if copied != want {
                return Err(FsError::Io(io::Error::other("file changed while copying")));
            }
        }
        Ok(upload)
    }

    /// Moves a finished upload to `virt`, resolved again now: replaces the old file
    /// atomically, or for `unique` (STOU) takes the first free name of `virt`, `virt.1` to
    /// `virt.9`, `virt.<random>`. Returns the name used for STOU.
    pub(crate) fn commit(
        &self,
        upload: Upload,
        virt: &[u8],
        unique: bool,
    ) -> Result<Option<Vec<u8>>, FsError> {
        let (dir, name) = self.parent(virt)?;
        if !unique {
            // A new name is linked straight in; an existing file is replaced atomically by
            // a rename from a hidden link.
            match upload.link_as(&dir, name) {
                Ok(()) => return Ok(None),
                Err(Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
            let temp = upload.link_hidden(&dir)?;
            return match rustix::fs::renameat(&dir, &temp, &dir, name) {
                Ok(()) => Ok(None),
                Err(e) => {
                    let _ = rustix::fs::unlinkat(&dir, &temp, AtFlags::empty());
                    Err(e.into())
                }
            };
        }
        // The name itself, then `.1` to `.9`, then random suffixes: a few calls at most,
        // however many names others took.
        for n in 0..18u32 {
            let mut candidate = name.as_bytes().to_vec();
            match n {
                0 => {}
                1..=9 => candidate.extend_from_slice(format!(".{n}").as_bytes()),
                _ => candidate
                    .extend_from_slice(format!(".{:016x}", rand::random::<u64>()).as_bytes()),
            }
            match upload.link_as(&dir, OsStr::from_bytes(&candidate)) {
                Ok(()) => return Ok(Some(candidate)),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FsError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unique name left",
        )))
    }
}

/// An upload's file: unnamed (`O_TMPFILE`) until committed, or a hidden named file that is
/// removed on drop unless committed.
pub(crate) struct Upload {
    /// The file the data goes to.
    pub(crate) file: File,
    /// For a named temporary: its directory and name.
    named: Option<(OwnedFd, Vec<u8>)>,
}

fn temp_name() -> Vec<u8> {
    let mut name = UPLOAD_PREFIX.to_vec();
    name.extend_from_slice(format!("{:016x}", rand::random::<u64>()).as_bytes());
    name
}

impl Upload {
    fn create(dir: OwnedFd) -> Result<Upload, FsError> {
        let mode = Mode::from_raw_mode(0o666);
        match rustix::fs::openat(
            &dir,
            ".",
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            mode,
        ) {
            Ok(fd) => Ok(Upload {
                file: File::from(fd),
                named: None,
            }),
            // The file system has no O_TMPFILE: a hidden named file instead.
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Upload::create_named(dir),
            Err(e) => Err(e.into()),
        }
    }

    /// A hidden named temporary in `dir`, for file systems without `O_TMPFILE`.
    fn create_named(dir: OwnedFd) -> Result<Upload, FsError> {
        let mode = Mode::from_raw_mode(0o666);
        for _ in 0..8 {
            let name = temp_name();
            match rustix::fs::openat(
                &dir,
                OsStr::from_bytes(&name),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                mode,
            ) {
                Ok(fd) => {
                    return Ok(Upload {
                        file: File::from(fd),
                        named: Some((dir, name)),
                    })
                }
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FsError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name",
        )))
    }

    /// Gives the file the name `name` in `dir`; fails with `EXIST` if the name is taken.
    fn link_as(&self, dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
        match &self.named {
            Some((from, temp)) => {
                rustix::fs::linkat(from, OsStr::from_bytes(temp), dir, name, AtFlags::empty())
            }
            None => {
                // Linking an open unnamed file: AT_EMPTY_PATH where the kernel allows it to
                // this process, else through its /proc entry.
                match rustix::fs::linkat(&self.file, "", dir, name, AtFlags::EMPTY_PATH) {
                    Err(Errno::NOENT | Errno::PERM | Errno::ACCESS) => {
                        let proc = format!("/proc/self/fd/{}", self.file.as_raw_fd());
                        rustix::fs::linkat(
                            rustix::fs::CWD,
                            proc.as_str(),
                            dir,
                            name,
                            AtFlags::SYMLINK_FOLLOW,
                        )
                    }
                    other => other,
                }
            }
        }
    }

    /// Links the file under a fresh hidden name in `dir` (for the rename over the target).
    fn link_hidden(&self, dir: &OwnedFd) -> Result<std::ffi::OsString, FsError> {
        for _ in 0..8 {
            let name = std::ffi::OsString::from(OsStr::from_bytes(&temp_name()));
            match self.link_as(dir, &name) {
                Ok(()) => return Ok(name),
                Err(Errno::EXIST) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(FsError::Io(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name",
        )))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Committed or not, the temporary name goes: a committed upload has its own link.
        if let Some((dir, name)) = &self.named {
            let _ = rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::empty());
        }
    }
}

#[cfg(test)]
mod tests;
