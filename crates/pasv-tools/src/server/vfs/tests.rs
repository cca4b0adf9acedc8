//! The filesystem layer against hostile trees: links out of the root, links swapped in
//! between two operations, special files, and uploads whose directory goes away.

use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;

fn tree() -> (tempfile::TempDir, tempfile::TempDir, Vfs) {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"outside").unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("d")).unwrap();
    std::fs::write(root.path().join("d/f"), b"inside").unwrap();
    let vfs = Vfs::new(root.path()).unwrap();
    (outside, root, vfs)
}

fn read(vfs: &Vfs, virt: &[u8]) -> Result<Vec<u8>, FsError> {
    let (mut file, _) = vfs.open_read(virt)?;
    let mut body = Vec::new();
    io::Read::read_to_end(&mut file, &mut body)?;
    Ok(body)
}

fn denied<T: std::fmt::Debug>(r: Result<T, FsError>) -> bool {
    matches!(r, Err(FsError::Denied))
}

fn commit_bytes(vfs: &Vfs, virt: &[u8], keep: u64, body: &[u8]) -> Result<(), FsError> {
    let mut upload = vfs.create_upload(virt, keep)?;
    io::Write::write_all(&mut upload.file, body)?;
    vfs.commit(upload, virt, false).map(drop)
}

#[test]
fn join_folds_dots_and_stays_under_the_root() {
    assert_eq!(Vfs::join(b"/", b"a/b"), b"/a/b");
    assert_eq!(Vfs::join(b"/a/b", b".."), b"/a");
    assert_eq!(Vfs::join(b"/a", b"../../../etc/passwd"), b"/etc/passwd");
    assert_eq!(Vfs::join(b"/a", b"/x//y/./z/"), b"/x/y/z");
    assert_eq!(Vfs::join(b"/", b".."), b"/");
    assert_eq!(Vfs::join(b"/a", b""), b"/a");
    assert_eq!(Vfs::join(b"/", b"\xff\xfe"), b"/\xff\xfe");
    assert!(denied(Vfs::path(b"/", b"d/.pasvd-upload-1")));
}

#[test]
fn links_out_of_the_root_are_refused_for_every_operation() {
    let (outside, root, vfs) = tree();
    symlink(outside.path(), root.path().join("abs")).unwrap();
    symlink(outside.path().join("secret"), root.path().join("file")).unwrap();
    symlink("../../../../../../../../..", root.path().join("d/up")).unwrap();
    assert!(denied(read(&vfs, b"/abs/secret")));
    assert!(denied(read(&vfs, b"/file")));
    assert!(denied(read(&vfs, b"/d/up/etc/passwd")));
    assert!(denied(vfs.stat(b"/abs")));
    assert!(denied(vfs.is_dir(b"/abs")));
    assert!(denied(vfs.list(b"/abs")));
    assert!(denied(vfs.mkdir(b"/abs/new")));
    assert!(denied(vfs.delete(b"/abs/secret")));
    assert!(denied(vfs.rename(b"/abs/secret", b"/stolen")));
    assert!(denied(vfs.rename(b"/d/f", b"/abs/planted")));
    assert!(denied(vfs.create_upload(b"/abs/new", 0).map(drop)));
    // APPE on a link to an outside file never copies the outside file in.
    assert!(matches!(
        vfs.create_upload(b"/file", u64::MAX).map(drop),
        Err(FsError::Symlink)
    ));
    std::fs::set_permissions(
        outside.path().join("secret"),
        PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    assert!(matches!(vfs.chmod(b"/file", 0o644), Err(FsError::Symlink)));
    assert!(matches!(
        vfs.set_modified(b"/file", 0),
        Err(FsError::Symlink)
    ));
    assert_eq!(
        std::fs::read(outside.path().join("secret")).unwrap(),
        b"outside"
    );
    let mode = std::fs::metadata(outside.path().join("secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "chmod reached through the link");
}

#[test]
fn links_inside_the_root_are_followed_for_reads_and_not_for_writes() {
    let (_outside, root, vfs) = tree();
    symlink("d/f", root.path().join("in")).unwrap();
    symlink("d", root.path().join("dir")).unwrap();
    assert_eq!(read(&vfs, b"/in").unwrap(), b"inside");
    assert_eq!(read(&vfs, b"/dir/f").unwrap(), b"inside");
    vfs.is_dir(b"/dir").unwrap();
    // DELE removes the link, not its target.
    vfs.delete(b"/in").unwrap();
    assert!(root.path().join("d/f").exists());
    // STOR over a link replaces the link with a file; the old target is untouched.
    symlink("d/f", root.path().join("in")).unwrap();
    commit_bytes(&vfs, b"/in", 0, b"new").unwrap();
    assert!(!std::fs::symlink_metadata(root.path().join("in"))
        .unwrap()
        .is_symlink());
    assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"inside");
    // RMD on a link to a directory refuses; the directory stays.
    assert!(vfs.rmdir(b"/dir").is_err());
    assert!(root.path().join("d").is_dir());
}

#[test]
fn a_directory_swapped_for_a_link_between_rnfr_and_rnto_moves_nothing_from_outside() {
    let (outside, root, vfs) = tree();
    // RNFR checked /d/f; another session now replaces /d by a relative link leaving the root.
    vfs.exists(b"/d/f").unwrap();
    std::fs::rename(root.path().join("d"), root.path().join("d.old")).unwrap();
    let rel_out = pathdiff(outside.path(), root.path());
    symlink(&rel_out, root.path().join("d")).unwrap();
    std::fs::write(outside.path().join("f"), b"outside f").unwrap();
    // RNTO resolves both sides again: the swapped-in link is refused.
    assert!(denied(vfs.rename(b"/d/f", b"/moved")));
    assert!(outside.path().join("f").exists());
    assert!(!root.path().join("moved").exists());
}

/// A relative path from `base` to `target` (both absolute, as temp dirs are).
fn pathdiff(target: &Path, base: &Path) -> std::path::PathBuf {
    let mut rel = std::path::PathBuf::new();
    for _ in base.components().skip(1) {
        rel.push("..");
    }
    rel.join(target.strip_prefix("/").unwrap())
}

#[test]
fn special_files_are_refused_without_blocking() {
    let (_outside, root, vfs) = tree();
    let fifo = root.path().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A blocking open of a FIFO waits for a writer forever; this returns at once.
    assert!(matches!(vfs.open_read(b"/fifo"), Err(FsError::NotRegular)));
    assert!(matches!(vfs.open_read(b"/d"), Err(FsError::NotRegular)));
    let sock = std::os::unix::net::UnixListener::bind(root.path().join("sock")).unwrap();
    assert!(matches!(vfs.open_read(b"/sock"), Err(FsError::NotRegular)));
    drop(sock);
    assert!(matches!(
        vfs.chmod(b"/fifo", 0o600),
        Err(FsError::NotRegular)
    ));
    assert!(matches!(
        vfs.create_upload(b"/fifo", u64::MAX).map(drop),
        Err(FsError::NotRegular)
    ));
}

#[test]
fn chmod_sets_permission_bits_only_and_never_on_the_root() {
    let (_outside, root, vfs) = tree();
    vfs.chmod(b"/d/f", 0o600).unwrap();
    let mode = |p: &str| {
        std::fs::metadata(root.path().join(p))
            .unwrap()
            .permissions()
            .mode()
    };
    assert_eq!(mode("d/f") & 0o7777, 0o600);
    assert!(denied(vfs.chmod(b"/d/f", 0o4755)));
    assert!(denied(vfs.chmod(b"/d/f", 0o2755)));
    assert!(denied(vfs.chmod(b"/d", 0o1777)));
    assert_eq!(mode("d/f") & 0o7777, 0o600);
    let before = mode("");
    assert!(denied(vfs.chmod(b"/", 0o777)));
    assert_eq!(mode(""), before);
}

#[test]
fn uploads_leave_nothing_unless_committed() {
    let (_outside, root, vfs) = tree();
    let names = |p: &str| -> Vec<_> {
        std::fs::read_dir(root.path().join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    let mut upload = vfs.create_upload(b"/d/new", 0).unwrap();
    io::Write::write_all(&mut upload.file, b"abandoned").unwrap();
    drop(upload);
    assert_eq!(names("d"), vec![std::ffi::OsString::from("f")]);
    // The directory is removed during the transfer: RMD works (nothing hidden in it) and the
    // commit fails without leaving anything.
    std::fs::create_dir(root.path().join("gone")).unwrap();
    let upload = vfs.create_upload(b"/gone/x", 0).unwrap();
    vfs.rmdir(b"/gone").unwrap();
    assert!(vfs.commit(upload, b"/gone/x", false).is_err());
    // Renamed during the transfer: the commit resolves the path again and fails.
    std::fs::create_dir(root.path().join("moving")).unwrap();
    let upload = vfs.create_upload(b"/moving/x", 0).unwrap();
    vfs.rename(b"/moving", b"/moved").unwrap();
    assert!(vfs.commit(upload, b"/moving/x", false).is_err());
    assert!(names("moved").is_empty());
}

#[test]
fn append_and_restart_keep_the_old_bytes() {
    let (_outside, root, vfs) = tree();
    commit_bytes(&vfs, b"/d/f", u64::MAX, b"+more").unwrap();
    assert_eq!(
        std::fs::read(root.path().join("d/f")).unwrap(),
        b"inside+more"
    );
    commit_bytes(&vfs, b"/d/f", 3, b"X").unwrap();
    assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"insX");
    assert!(matches!(
        vfs.create_upload(b"/d/f", 99).map(drop),
        Err(FsError::PastEnd)
    ));
    assert!(matches!(
        vfs.create_upload(b"/d/none", 1).map(drop),
        Err(FsError::PastEnd)
    ));
    commit_bytes(&vfs, b"/d/appended", u64::MAX, b"fresh").unwrap();
    assert_eq!(
        std::fs::read(root.path().join("d/appended")).unwrap(),
        b"fresh"
    );
}

#[test]
fn unique_names_never_replace() {
    let (_outside, root, vfs) = tree();
    for body in [&b"one"[..], b"two"] {
        let mut upload = vfs.create_upload(b"/d/f", 0).unwrap();
        io::Write::write_all(&mut upload.file, body).unwrap();
        vfs.commit(upload, b"/d/f", true).unwrap();
    }
    assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"inside");
    assert_eq!(std::fs::read(root.path().join("d/f.1")).unwrap(), b"one");
    assert_eq!(std::fs::read(root.path().join("d/f.2")).unwrap(), b"two");
}

#[test]
fn listings_show_nothing_of_what_lies_outside() {
    let (outside, root, vfs) = tree();
    symlink(outside.path().join("secret"), root.path().join("out")).unwrap();
    symlink("d/f", root.path().join("in")).unwrap();
    std::fs::write(root.path().join(".pasvd-upload-x"), b"").unwrap();
    let (_, entries) = vfs.list(b"/").unwrap();
    let entries = entries.unwrap();
    let get = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n.as_bytes())
            .map(|e| e.meta)
    };
    let target = |n: &str| {
        entries
            .iter()
            .find(|e| e.name == n.as_bytes())
            .and_then(|e| e.target.clone())
    };
    let out = get("out").unwrap();
    assert_eq!((out.kind, out.size), (Kind::Symlink, 0));
    assert_eq!(target("out"), None);
    // A link inside is a link, with its text (recursive clients must not descend into it
    // as if it were a directory).
    assert_eq!(get("in").unwrap().kind, Kind::Symlink);
    assert_eq!(target("in").as_deref(), Some(&b"d/f"[..]));
    assert!(get(".pasvd-upload-x").is_none());
}

#[test]
fn named_temporaries_are_hidden_and_removed() {
    let (_outside, root, vfs) = tree();
    let temporaries = || {
        std::fs::read_dir(root.path().join("d"))
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.as_bytes().starts_with(UPLOAD_PREFIX)
            })
            .count()
    };
    let dir = || vfs.open(b"/d", OFlags::PATH | OFlags::DIRECTORY).unwrap();
    let mut upload = Upload::create_named(dir()).unwrap();
    io::Write::write_all(&mut upload.file, b"named").unwrap();
    assert_eq!(temporaries(), 1);
    let (_, entries) = vfs.list(b"/d").unwrap();
    assert_eq!(entries.unwrap().len(), 1, "the temporary is listed");
    drop(upload);
    assert_eq!(temporaries(), 0);
    let mut upload = Upload::create_named(dir()).unwrap();
    io::Write::write_all(&mut upload.file, b"named").unwrap();
    vfs.commit(upload, b"/d/g", false).unwrap();
    assert_eq!(std::fs::read(root.path().join("d/g")).unwrap(), b"named");
    assert_eq!(temporaries(), 0);
}

#[test]
fn replaced_files_keep_their_permission_bits() {
    let (_outside, root, vfs) = tree();
    let path = root.path().join("d/f");
    std::fs::set_permissions(&path, PermissionsExt::from_mode(0o600)).unwrap();
    commit_bytes(&vfs, b"/d/f", u64::MAX, b"+").unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    commit_bytes(&vfs, b"/d/f", 0, b"new").unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
}

#[test]
fn unique_names_take_few_calls_whatever_others_took() {
    let (_outside, root, vfs) = tree();
    for n in 1..=9 {
        std::fs::write(root.path().join(format!("d/f.{n}")), b"taken").unwrap();
    }
    let mut upload = vfs.create_upload(b"/d/f", 0).unwrap();
    io::Write::write_all(&mut upload.file, b"mine").unwrap();
    let name = vfs.commit(upload, b"/d/f", true).unwrap().unwrap();
    assert_eq!(name.len(), b"f".len() + UNIQUE_SUFFIX);
    assert_eq!(
        std::fs::read(root.path().join("d").join(OsStr::from_bytes(&name))).unwrap(),
        b"mine"
    );
    assert!(unique_name_fits(&[b'a'; 200]));
    assert!(!unique_name_fits(&[b'a'; 250]));
}

#[test]
fn errors_map_to_their_replies() {
    let code = |e: Errno| FsError::from(e).reply().0;
    assert_eq!(code(Errno::NOSPC), 452);
    assert_eq!(code(Errno::AGAIN), 450);
    assert_eq!(code(Errno::NOENT), 550);
    // A cross-device rename inside the root is an error of its own, not an escape.
    assert_eq!(
        FsError::from(Errno::XDEV).reply(),
        (550, "Cross-device link.")
    );
    assert_eq!(FsError::Denied.reply().0, 550);
    assert_eq!(FsError::BadName.reply().0, 553);
    assert_eq!(FsError::PastEnd.reply().0, 554);
}
