//! Hostile clients against the served root, over real sockets: links planted in the tree,
//! paths swapped between two commands, special files, uploads whose directory goes away.

mod support;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use support::{read_all, Ftp, TestServer};
use tokio::io::AsyncWriteExt;

/// A root with `d/f`, and a directory outside it holding `secret`.
struct Tree {
    outside: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"outside secret").unwrap();
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("d")).unwrap();
        fs::write(root.path().join("d/f"), b"inside").unwrap();
        Tree { outside, root }
    }

    fn root(&self) -> &Path {
        self.root.path()
    }

    fn outside(&self, name: &str) -> PathBuf {
        self.outside.path().join(name)
    }

    /// A relative link target from `dir` (inside the root) to the outside directory.
    fn relative_out(&self, dir: &Path) -> PathBuf {
        let mut rel = PathBuf::new();
        for _ in dir.components().skip(1) {
            rel.push("..");
        }
        rel.join(self.outside.path().strip_prefix("/").unwrap())
    }

    async fn server(&self) -> TestServer {
        TestServer::start(TestServer::config(self.root(), 4)).await
    }
}

/// Every file name in the tree, recursively, relative to `dir`.
fn all_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            out.extend(all_names(&e.path()));
        }
    }
    out
}

#[tokio::test]
async fn append_and_restart_through_a_link_never_copy_an_outside_file_in() {
    let tree = Tree::new();
    symlink(tree.outside("secret"), tree.root().join("link")).unwrap();
    symlink(
        tree.relative_out(tree.root()).join("secret"),
        tree.root().join("rel"),
    )
    .unwrap();
    let server = tree.server().await;
    let mut ftp = Ftp::login(server.addr).await;
    for name in ["link", "rel"] {
        let _data = ftp.open_data(false).await;
        ftp.expect(&format!("APPE {name}"), 550).await;
        let _data = ftp.open_data(false).await;
        ftp.expect("REST 5", 350).await;
        ftp.expect(&format!("STOR {name}"), 550).await;
    }
    // Nothing of the secret became downloadable, and the links are still links.
    let _data = ftp.open_data(false).await;
    ftp.expect("RETR link", 550).await;
    for name in ["link", "rel"] {
        assert!(fs::symlink_metadata(tree.root().join(name))
            .unwrap()
            .is_symlink());
    }
    assert_eq!(fs::read(tree.outside("secret")).unwrap(), b"outside secret");
    server.stop().await;
}

#[tokio::test]
async fn a_directory_swapped_for_a_link_between_rnfr_and_rnto_moves_nothing_in() {
    let tree = Tree::new();
    fs::write(tree.outside("f"), b"outside f").unwrap();
    let server = tree.server().await;
    let mut ftp = Ftp::login(server.addr).await;
    ftp.expect("RNFR d/f", 350).await;
    // Meanwhile (another session, or any process) swaps `d` for a relative link out.
    fs::rename(tree.root().join("d"), tree.root().join("d.old")).unwrap();
    symlink(tree.relative_out(tree.root()), tree.root().join("d")).unwrap();
    ftp.expect("RNTO stolen", 550).await;
    assert!(tree.outside("f").exists());
    assert!(!tree.root().join("stolen").exists());
    // The other way: nothing is moved out through the link either.
    ftp.expect("RNFR d.old/f", 350).await;
    ftp.expect("RNTO d/planted", 550).await;
    assert!(!tree.outside("planted").exists());
    server.stop().await;
}

#[tokio::test]
async fn fifos_and_sockets_are_refused_at_once_and_block_nobody() {
    let tree = Tree::new();
    let fifo = tree.root().join("fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(tree.root().join("sock")).unwrap();
    let server = tree.server().await;
    // Two sessions ask for the FIFO (before, each open blocked a runtime thread forever).
    let mut a = Ftp::login(server.addr).await;
    let mut b = Ftp::login(server.addr).await;
    for ftp in [&mut a, &mut b] {
        let _data = ftp.open_data(false).await;
        ftp.expect("RETR fifo", 550).await;
        ftp.expect("RETR sock", 550).await;
        ftp.expect("SIZE fifo", 550).await;
    }
    // The server still serves everybody.
    let mut c = Ftp::login(server.addr).await;
    assert_eq!(c.retr("d/f").await, b"inside");
    server.stop().await;
}

#[tokio::test]
async fn listings_reveal_nothing_outside_the_root() {
    let tree = Tree::new();
    symlink(tree.outside("secret"), tree.root().join("abs")).unwrap();
    symlink(tree.outside.path(), tree.root().join("outdir")).unwrap();
    symlink("d/f", tree.root().join("inside")).unwrap();
    let server = tree.server().await;
    let mut ftp = Ftp::login(server.addr).await;
    let outside = tree.outside.path().to_string_lossy().into_owned();
    for command in ["LIST -a", "MLSD", "NLST"] {
        let body = String::from_utf8_lossy(&ftp.listing(command).await).into_owned();
        assert!(
            !body.contains(&outside),
            "{command} shows the target: {body}"
        );
        assert!(body.contains("abs") && body.contains("inside"), "{body}");
    }
    let list = String::from_utf8_lossy(&ftp.listing("LIST").await).into_owned();
    // The outside file is 14 bytes: neither its size, its type nor its path shows.
    let abs = list.lines().find(|l| l.contains(" abs")).unwrap();
    assert!(abs.starts_with('l') && abs.ends_with(" abs"), "{abs}");
    assert!(!abs.contains(" 14 "), "{abs}");
    // A link inside is shown as a link, with its text.
    let inside = list.lines().find(|l| l.contains(" inside")).unwrap();
    assert!(
        inside.starts_with('l') && inside.ends_with(" inside -> d/f"),
        "{inside}"
    );
    let mlsd = String::from_utf8_lossy(&ftp.listing("MLSD").await).into_owned();
    assert!(mlsd.contains("type=OS.unix=slink:d/f;"), "{mlsd}");
    assert!(mlsd.contains("type=OS.unix=slink:;"), "{mlsd}");
    let stat = ftp.expect("STAT -a /", 213).await.text().to_owned();
    assert!(!stat.contains(&outside), "{stat}");
    let _data = ftp.open_data(false).await;
    ftp.expect("LIST outdir", 550).await;
    server.stop().await;
}

#[tokio::test]
async fn site_chmod_sets_no_special_bits_and_leaves_the_root_alone() {
    let tree = Tree::new();
    let server = tree.server().await;
    let mut ftp = Ftp::login(server.addr).await;
    let mode = |p: &str| {
        fs::metadata(tree.root().join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    for bits in ["4755", "2755", "1777", "6777"] {
        ftp.expect(&format!("SITE CHMOD {bits} d/f"), 501).await;
    }
    ftp.expect("SITE CHMOD 1777 d", 501).await;
    assert_eq!(mode("d/f") & 0o7000, 0);
    let root_mode = mode("");
    ftp.expect("SITE CHMOD 777 /", 550).await;
    ftp.expect("SITE CHMOD 777 .", 550).await;
    ftp.expect("SITE CHMOD 777 ..", 550).await;
    assert_eq!(mode(""), root_mode);
    ftp.expect("SITE CHMOD 640 d/f", 200).await;
    assert_eq!(mode("d/f"), 0o640);
    // Through a link to a file outside: refused, the outside file keeps its mode.
    symlink(tree.outside("secret"), tree.root().join("link")).unwrap();
    fs::set_permissions(tree.outside("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    ftp.expect("SITE CHMOD 666 link", 550).await;
    ftp.expect("MFMT 20000101000000 link", 550).await;
    let outside_mode = fs::metadata(tree.outside("secret"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(outside_mode & 0o777, 0o600);
    server.stop().await;
}

/// Starts an upload to `path` and sends a first part; returns the data connection.
async fn start_upload(ftp: &mut Ftp, path: &str) -> tokio::net::TcpStream {
    let mut data = ftp.open_data(false).await;
    ftp.expect(&format!("STOR {path}"), 150).await;
    data.write_all(b"first part").await.unwrap();
    data
}

#[tokio::test]
async fn an_upload_whose_directory_goes_away_leaves_nothing() {
    let tree = Tree::new();
    fs::create_dir(tree.root().join("up")).unwrap();
    fs::create_dir(tree.root().join("moving")).unwrap();
    let server = tree.server().await;
    let mut uploader = Ftp::login(server.addr).await;
    let mut other = Ftp::login(server.addr).await;

    // The directory is removed by another session mid-transfer: nothing hidden keeps it
    // from being removed, and the commit fails.
    let mut data = start_upload(&mut uploader, "up/file").await;
    other.expect("RMD up", 250).await;
    data.shutdown().await.unwrap();
    drop(data);
    let done = uploader.reply().await;
    assert_eq!(done.code().get(), 451, "{done}");
    assert!(!tree.root().join("up").exists());

    // Renamed mid-transfer: the commit resolves the path again and fails; nothing is left
    // in the renamed directory.
    let mut data = start_upload(&mut uploader, "moving/file").await;
    other.expect("RNFR moving", 350).await;
    other.expect("RNTO moved", 250).await;
    data.shutdown().await.unwrap();
    drop(data);
    let done = uploader.reply().await;
    assert_eq!(done.code().get(), 451, "{done}");
    assert!(all_names(&tree.root().join("moved")).is_empty());

    // An aborted upload leaves nothing either, anywhere in the tree.
    let data = start_upload(&mut uploader, "d/partial").await;
    uploader.send_raw(b"ABOR\r\n").await;
    assert_eq!(uploader.reply().await.code().get(), 426);
    assert_eq!(uploader.reply().await.code().get(), 226);
    drop(data);
    let names = all_names(tree.root());
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with(".pasvd-upload-") && n != "partial"),
        "{names:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn writes_through_planted_links_stay_inside() {
    let tree = Tree::new();
    symlink(tree.outside.path(), tree.root().join("out")).unwrap();
    symlink(
        tree.relative_out(&tree.root().join("d")),
        tree.root().join("d/up"),
    )
    .unwrap();
    let server = tree.server().await;
    let mut ftp = Ftp::login(server.addr).await;
    for path in ["out/new", "d/up/new"] {
        ftp.expect(&format!("MKD {path}"), 550).await;
        ftp.expect(&format!("DELE {path}/../secret"), 550).await;
        let _data = ftp.open_data(false).await;
        ftp.expect(&format!("STOR {path}"), 550).await;
    }
    ftp.expect("DELE out/secret", 550).await;
    ftp.expect("RNFR out/secret", 550).await;
    // Deleting the link removes the link only.
    ftp.expect("DELE out", 250).await;
    assert!(tree.outside("secret").exists());
    assert_eq!(all_names(tree.outside.path()), vec!["secret".to_owned()]);
    // The data path still works for a plain download.
    let mut data = ftp.open_data(false).await;
    ftp.expect("RETR d/f", 150).await;
    assert_eq!(read_all(&mut data).await, b"inside");
    assert_eq!(ftp.reply().await.code().get(), 226);
    server.stop().await;
}
