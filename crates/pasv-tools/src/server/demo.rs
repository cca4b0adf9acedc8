//! The demo directory `pasvd` serves when it is given no root.
//!
//! It lives at a fixed path in the shared temporary directory, where any local user can
//! create that name first: as a symlink to a directory of the server's user (which the demo
//! would then write into and serve to anonymous clients), or as a directory of their own
//! (whose content they control). So the directory is taken only if it is a real directory
//! owned by the server's user and writable by no one else, and it is written through a
//! handle opened without following symlinks, never by path.

use std::fs::{DirBuilder, File};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use rustix::fs::{fstat, open, openat, statat, AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::process::geteuid;

const README: &str = "This directory is served by pasvd, an FTP server whose passive ports come\n\
from a TIME_WAIT-aware pool.\n\nTry: curl ftp://127.0.0.1:2121/hello.txt\n     lftp -p 2121 127.0.0.1\n";

/// Creates `dir` (mode 0700) with README.txt, hello.txt and a 1 MiB file; a file already
/// there with the right size is kept. An existing `dir` is used only if it is a directory,
/// not a symlink, owned by the effective user and not writable by group or others; files
/// are created beneath it without following symlinks.
pub fn populate_demo(dir: &Path) -> io::Result<()> {
    let dir = open_private_dir(dir)?;
    write_if_missing(&dir, "README.txt", README.as_bytes())?;
    write_if_missing(&dir, "hello.txt", b"Hello from pasvd!\n")?;
    // A deterministic pattern, so a download can be checked without the original.
    let mib: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    write_if_missing(&dir, "1mib.bin", &mib)?;
    Ok(())
}

fn refused(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{what}; remove it, or serve another directory with --root"),
    )
}

/// Makes `dir` if it is missing, then opens it (never through a symlink) and checks the
/// directory the handle holds.
fn open_private_dir(dir: &Path) -> io::Result<OwnedFd> {
    match DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    // With O_DIRECTORY, Linux answers ENOTDIR for a symlink as for a file; the message says
    // which it was.
    let fd = open(dir, flags, Mode::empty()).map_err(|e| match e {
        Errno::LOOP | Errno::NOTDIR if dir.is_symlink() => {
            refused("it is a symbolic link, which is not followed".to_owned())
        }
        Errno::NOTDIR => refused("it is not a directory".to_owned()),
        e => e.into(),
    })?;
    let stat = fstat(&fd)?;
    let euid = geteuid().as_raw();
    if stat.st_uid != euid {
        return Err(refused(format!(
            "it belongs to uid {}, not to the server's uid {euid}",
            stat.st_uid
        )));
    }
    let mode = Mode::from_raw_mode(stat.st_mode);
    if mode.intersects(Mode::WGRP | Mode::WOTH) {
        return Err(refused(format!(
            "others may write to it (mode {:o})",
            mode.bits()
        )));
    }
    Ok(fd)
}

/// Writes `name` beneath `dir` unless a regular file of the same size is there; a symlink
/// or anything else in its place is refused, not followed.
fn write_if_missing(dir: &OwnedFd, name: &str, data: &[u8]) -> io::Result<()> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile => {
            if u64::try_from(stat.st_size).ok() == Some(data.len() as u64) {
                return Ok(());
            }
        }
        Ok(_) => return Err(refused(format!("{name} in it is not a regular file"))),
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let flags =
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let file = openat(dir, name, flags, Mode::from_raw_mode(0o644))?;
    File::from(file).write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_fresh_directory_is_private_and_reused() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = tmp.path().join("pasvd-demo");
        populate_demo(&demo).unwrap();
        let mode = fs::symlink_metadata(&demo).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert_eq!(names(&demo), ["1mib.bin", "README.txt", "hello.txt"]);
        // A file of the wrong size is written again, one of the right size kept.
        fs::write(demo.join("hello.txt"), b"short").unwrap();
        populate_demo(&demo).unwrap();
        assert_eq!(
            fs::read(demo.join("hello.txt")).unwrap(),
            b"Hello from pasvd!\n"
        );
        // A directory of ours made earlier with the usual umask (0755) is accepted too.
        fs::set_permissions(&demo, fs::Permissions::from_mode(0o755)).unwrap();
        populate_demo(&demo).unwrap();
    }

    #[test]
    fn a_symlink_at_the_demo_path_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("someone-elses");
        fs::create_dir(&target).unwrap();
        let demo = tmp.path().join("pasvd-demo");
        symlink(&target, &demo).unwrap();
        let err = populate_demo(&demo).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(names(&target).is_empty());
    }

    #[test]
    fn a_directory_others_may_write_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let demo = tmp.path().join("pasvd-demo");
        fs::create_dir(&demo).unwrap();
        fs::set_permissions(&demo, fs::Permissions::from_mode(0o777)).unwrap();
        let err = populate_demo(&demo).unwrap_err();
        assert!(err.to_string().contains("may write"), "{err}");
        assert!(names(&demo).is_empty());
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        if !geteuid().is_root() {
            eprintln!("skipped: handing a directory to another user needs root");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let demo = tmp.path().join("pasvd-demo");
        fs::create_dir(&demo).unwrap();
        let nobody = rustix::process::Uid::from_raw(65534);
        rustix::fs::chown(&demo, Some(nobody), None).unwrap();
        let err = populate_demo(&demo).unwrap_err();
        assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        assert!(names(&demo).is_empty());
    }

    #[test]
    fn a_symlink_planted_inside_is_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let demo = tmp.path().join("pasvd-demo");
        fs::create_dir(&demo).unwrap();
        symlink(&victim, demo.join("hello.txt")).unwrap();
        let err = populate_demo(&demo).unwrap_err();
        assert!(err.to_string().contains("hello.txt"), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }
}
