//! pasvd end to end on loopback sockets, driven by a raw test client.

mod support;

use std::collections::HashSet;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use pasv_pool::QuarantineScope;
use pasv_tools::clock;
use pasv_tools::server::{Config, ListenerMode};
use support::{connect_data, connect_from, pattern, read_all, Ftp, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn upload_temporaries(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.starts_with(".pasvd-upload-").then_some(name)
        })
        .collect()
}

async fn start(root: &Path, ports: u16, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let mut config = TestServer::config(root, ports);
    tweak(&mut config);
    TestServer::start(config).await
}

#[tokio::test]
async fn login_sequence_and_simple_commands() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 2, |_| {}).await;
    let (mut ftp, greeting) = Ftp::connect(server.addr).await;
    assert_eq!(greeting.code().get(), 220);
    // Before login: FEAT, SYST, HOST, AUTH answered; file commands refused.
    let feat = ftp.expect("FEAT", 211).await;
    for feature in [
        "EPSV",
        "EPRT",
        "MLST type*;size*",
        "REST STREAM",
        "SIZE",
        "MDTM",
        "UTF8",
    ] {
        assert!(
            feat.text().contains(feature),
            "FEAT lacks {feature}: {feat}"
        );
    }
    ftp.expect("AUTH TLS", 504).await;
    ftp.expect("HOST localhost", 220).await;
    ftp.expect("PWD", 530).await;
    ftp.expect("PASS nobody", 503).await;
    ftp.expect("USER anonymous", 331).await;
    ftp.expect("PASS guest@", 230).await;
    ftp.expect("HOST localhost", 503).await;
    ftp.expect("SYST", 215).await;
    ftp.expect("NOOP", 200).await;
    ftp.expect("ACCT x", 202).await;
    ftp.expect("ALLO 100", 202).await;
    ftp.expect("CLNT test", 200).await;
    ftp.expect("OPTS UTF8 ON", 200).await;
    ftp.expect("OPTS NONSENSE", 501).await;
    ftp.expect("TYPE A", 200).await;
    ftp.expect("TYPE I", 200).await;
    ftp.expect("TYPE E", 504).await;
    ftp.expect("TYPE X", 501).await;
    ftp.expect("MODE S", 200).await;
    ftp.expect("MODE B", 504).await;
    ftp.expect("STRU F", 200).await;
    ftp.expect("STRU R", 504).await;
    ftp.expect("XYZZY", 502).await;
    ftp.expect("RETR", 501).await;
    ftp.expect("REST abc", 501).await;
    ftp.expect("RNTO x", 503).await;
    ftp.expect("RETR nothing-here", 425).await;
    let help = ftp.expect("HELP", 214).await;
    assert!(help.is_multiline());
    let stat = ftp.expect("STAT", 211).await;
    assert!(stat.text().contains("anonymous"), "{stat}");
    let pwd = ftp.expect("PWD", 257).await;
    assert!(pwd.text().starts_with("\"/\""), "{pwd}");
    // An over-long line is answered with 500 and the session goes on.
    let mut long = vec![b'A'; 5000];
    long.extend_from_slice(b"\r\n");
    ftp.send_raw(&long).await;
    assert_eq!(ftp.reply().await.code().get(), 500);
    ftp.expect("NOOP", 200).await;
    // Pipelined commands are all answered, in order.
    ftp.send_raw(b"NOOP\r\nSYST\r\nPWD\r\n").await;
    let codes = [ftp.reply().await, ftp.reply().await, ftp.reply().await].map(|r| r.code().get());
    assert_eq!(codes, [200, 215, 257]);
    ftp.expect("QUIT", 221).await;
    assert!(ftp.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn downloads_and_listings_over_pasv_and_epsv() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(300_000, 7);
    fs::write(dir.path().join("data.bin"), &body).unwrap();
    fs::write(dir.path().join(".hidden"), b"h").unwrap();
    fs::create_dir(dir.path().join("sub")).unwrap();
    fs::write(dir.path().join("sub/inner.txt"), b"inner\n").unwrap();
    // A name that is not UTF-8 stays listed and reachable.
    let odd = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
    fs::write(dir.path().join(odd), b"latin-1").unwrap();
    let server = start(dir.path(), 4, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;

    assert_eq!(ftp.retr("data.bin").await, body);
    let mut data = ftp.open_data(true).await;
    ftp.expect("RETR /sub/inner.txt", 150).await;
    assert_eq!(read_all(&mut data).await, b"inner\n");
    assert_eq!(ftp.reply().await.code().get(), 226);

    let size = ftp.expect("SIZE data.bin", 213).await;
    assert_eq!(size.text(), "300000");
    ftp.expect("SIZE sub", 550).await;
    ftp.expect("SIZE missing", 550).await;
    let mdtm = ftp.expect("MDTM data.bin", 213).await;
    assert_eq!(mdtm.text().len(), 14, "{mdtm}");

    let list = String::from_utf8_lossy(&ftp.listing("LIST").await).into_owned();
    let line = list
        .lines()
        .find(|l| l.ends_with(" data.bin"))
        .expect("data.bin listed");
    assert!(line.starts_with("-rw"), "{line}");
    assert!(line.contains(" 300000 "), "{line}");
    assert!(
        list.lines()
            .any(|l| l.starts_with('d') && l.ends_with(" sub")),
        "{list}"
    );
    assert!(!list.contains(".hidden"), "{list}");
    // wget's `LIST -a`: options are not file names.
    let all = String::from_utf8_lossy(&ftp.listing("LIST -a").await).into_owned();
    assert!(all.contains(".hidden"), "{all}");
    let one = String::from_utf8_lossy(&ftp.listing("LIST -l sub").await).into_owned();
    assert!(one.contains("inner.txt"), "{one}");

    let nlst = ftp.listing("NLST").await;
    let names: HashSet<&[u8]> = nlst
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    let expected: HashSet<&[u8]> = [&b"data.bin"[..], b"sub", b"caf\xe9.txt"].into();
    assert_eq!(names, expected);
    let mut data = ftp.open_data(false).await;
    let first = ftp.cmd_bytes(b"RETR caf\xe9.txt").await;
    assert_eq!(first.code().get(), 150, "{first}");
    assert_eq!(read_all(&mut data).await, b"latin-1");
    assert_eq!(ftp.reply().await.code().get(), 226);

    let mlsd = String::from_utf8_lossy(&ftp.listing("MLSD").await).into_owned();
    let entry = mlsd
        .lines()
        .find(|l| l.ends_with(" data.bin"))
        .expect("MLSD entry");
    assert!(
        entry.starts_with("type=file;size=300000;modify="),
        "{entry}"
    );
    assert!(entry.contains(";perm="), "{entry}");
    assert!(mlsd
        .lines()
        .any(|l| l.starts_with("type=dir;") && l.ends_with(" sub")));
    assert!(mlsd.lines().any(|l| l.starts_with("type=cdir;")));
    let mlst = ftp.expect("MLST data.bin", 250).await;
    let fact_line = &mlst.lines()[1];
    assert!(
        fact_line.as_bytes().starts_with(b" type=file;size=300000;"),
        "{mlst}"
    );
    ftp.expect("MLSD data.bin", 501).await;

    ftp.expect("CWD sub", 250).await;
    assert!(ftp.expect("PWD", 257).await.text().starts_with("\"/sub\""));
    ftp.expect("CWD ../sub/../sub", 250).await;
    ftp.expect("CDUP", 250).await;
    assert!(ftp.expect("PWD", 257).await.text().starts_with("\"/\""));
    ftp.expect("CWD data.bin", 550).await;
    ftp.expect("CWD nowhere", 550).await;
    let stat = ftp.expect("STAT sub", 213).await;
    assert!(stat.text().contains("inner.txt"), "{stat}");

    // REST before RETR: the rest of the file (large: sendfile from the offset; small: inline);
    // REST past the end: 554.
    ftp.expect("REST 1000", 350).await;
    assert!(ftp.retr("data.bin").await == body[1000..]);
    ftp.expect("REST 299990", 350).await;
    assert_eq!(ftp.retr("data.bin").await, &body[299_990..]);
    let _data = ftp.open_data(false).await;
    ftp.expect("REST 300001", 350).await;
    ftp.expect("RETR data.bin", 554).await;
    server.stop().await;
}

#[tokio::test]
async fn uploads_and_file_management() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 4, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;
    let root = dir.path();

    let body = pattern(200_000, 3);
    assert_eq!(ftp.upload("STOR up.bin", &body).await.code().get(), 226);
    assert_eq!(fs::read(root.join("up.bin")).unwrap(), body);
    // Overwrite replaces the whole file.
    assert_eq!(ftp.upload("STOR up.bin", b"short").await.code().get(), 226);
    assert_eq!(fs::read(root.join("up.bin")).unwrap(), b"short");
    // REST + STOR keeps the first bytes (ftplib's resume).
    ftp.expect("REST 2", 350).await;
    assert_eq!(ftp.upload("STOR up.bin", b"ORE").await.code().get(), 226);
    assert_eq!(fs::read(root.join("up.bin")).unwrap(), b"shORE");
    // REST past the end of the existing file: 554 before any data.
    let _data = ftp.open_data(false).await;
    ftp.expect("REST 99", 350).await;
    ftp.expect("STOR up.bin", 554).await;
    // APPE (curl's resume) appends; to a new name it creates.
    assert_eq!(ftp.upload("APPE up.bin", b"++").await.code().get(), 226);
    assert_eq!(fs::read(root.join("up.bin")).unwrap(), b"shORE++");
    assert_eq!(ftp.upload("APPE new.txt", b"n").await.code().get(), 226);
    assert_eq!(fs::read(root.join("new.txt")).unwrap(), b"n");
    // STOU never replaces a file.
    let stou = ftp.upload("STOU new.txt", b"unique").await;
    assert_eq!(stou.code().get(), 226, "{stou}");
    assert!(stou.text().contains("new.txt.1"), "{stou}");
    assert_eq!(fs::read(root.join("new.txt")).unwrap(), b"n");
    assert_eq!(fs::read(root.join("new.txt.1")).unwrap(), b"unique");

    // Directories, rename, delete.
    let mkd = ftp.expect("MKD dir \"q\"", 257).await;
    assert!(mkd.text().starts_with("\"/dir \"\"q\"\"\""), "{mkd}");
    ftp.expect("MKD dir \"q\"", 550).await;
    ftp.expect("RNFR up.bin", 350).await;
    ftp.expect("RNTO dir \"q\"/moved.bin", 250).await;
    assert_eq!(
        fs::read(root.join("dir \"q\"/moved.bin")).unwrap(),
        b"shORE++"
    );
    ftp.expect("RNFR missing", 550).await;
    ftp.expect("RMD dir \"q\"", 550).await;
    ftp.expect("DELE dir \"q\"", 550).await;
    ftp.expect("DELE dir \"q\"/moved.bin", 250).await;
    ftp.expect("DELE dir \"q\"/moved.bin", 550).await;
    ftp.expect("RMD dir \"q\"", 250).await;

    // MFMT and SITE CHMOD.
    let mfmt = ftp.expect("MFMT 20200102030405 new.txt", 213).await;
    assert!(mfmt.text().starts_with("Modify=20200102030405;"), "{mfmt}");
    assert_eq!(
        ftp.expect("MDTM new.txt", 213).await.text(),
        "20200102030405"
    );
    ftp.expect("MFMT 20201302030405 new.txt", 501).await;
    ftp.expect("SITE CHMOD 600 new.txt", 200).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(root.join("new.txt"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    ftp.expect("SITE CHMOD 99 new.txt", 501).await;
    ftp.expect("SITE FOO", 504).await;
    assert!(upload_temporaries(root).is_empty());
    server.stop().await;
}

#[tokio::test]
async fn anonymous_is_read_only_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"x").unwrap();
    let server = start(dir.path(), 2, |c| c.anonymous_write = false).await;
    let mut ftp = Ftp::login(server.addr).await;
    let _data = ftp.open_data(false).await;
    ftp.expect("STOR g", 550).await;
    ftp.expect("DELE f", 550).await;
    ftp.expect("MKD d", 550).await;
    ftp.expect("RNFR f", 550).await;
    ftp.expect("SITE CHMOD 777 f", 550).await;
    assert_eq!(ftp.retr("f").await, b"x");
    assert!(!dir.path().join("g").exists());
    server.stop().await;
}

#[tokio::test]
async fn abor_during_a_download_gives_426_then_226() {
    let dir = tempfile::tempdir().unwrap();
    // Sparse: larger than loopback socket buffers, so the transfer is still running.
    let file = fs::File::create(dir.path().join("big.bin")).unwrap();
    file.set_len(64 << 20).unwrap();
    let server = start(dir.path(), 2, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;
    let mut data = ftp.open_data(false).await;
    ftp.expect("RETR big.bin", 150).await;
    let mut first = [0u8; 1024];
    data.read_exact(&mut first).await.unwrap();
    // STAT during the transfer shows how far the sendfile got (at least what we read).
    let stat = ftp.expect("STAT", 213).await;
    let text = stat.to_string();
    let moved: u64 = text
        .split_once("Status: RETR ")
        .and_then(|(_, rest)| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no progress in {text}"));
    assert!((1024..64 << 20).contains(&moved), "{text}");
    // As ftplib sends it: Telnet IP and DM before the command.
    ftp.send_raw(b"\xff\xf4\xff\xf2ABOR\r\n").await;
    let aborted = ftp.reply().await;
    assert_eq!(aborted.code().get(), 426, "{aborted}");
    assert_eq!(ftp.reply().await.code().get(), 226);
    // The data connection was reset, not completed.
    let mut sink = Vec::new();
    let rest = tokio::time::timeout(WAIT, data.read_to_end(&mut sink))
        .await
        .unwrap();
    assert!(rest.is_err() || sink.len() + 1024 < 64 << 20);
    // The session goes on, and the port is usable again.
    ftp.expect("NOOP", 200).await;
    fs::write(dir.path().join("small"), b"s").unwrap();
    assert_eq!(ftp.retr("small").await, b"s");
    ftp.expect("ABOR", 226).await;
    server.stop().await;
}

#[tokio::test]
async fn quit_during_a_download_finishes_it_first() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(8 << 20, 9);
    fs::write(dir.path().join("f.bin"), &body).unwrap();
    let server = start(dir.path(), 2, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;
    let mut data = ftp.open_data(true).await;
    ftp.expect("RETR f.bin", 150).await;
    ftp.send_raw(b"QUIT\r\n").await;
    let got = read_all(&mut data).await;
    assert!(
        got == body,
        "got {} bytes, not the file's {}",
        got.len(),
        body.len()
    );
    assert_eq!(ftp.reply().await.code().get(), 226);
    assert_eq!(ftp.reply().await.code().get(), 221);
    assert!(ftp.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn an_interrupted_upload_leaves_the_old_file_and_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::write(root.join("keep.txt"), b"old contents").unwrap();
    let server = start(root, 2, |_| {}).await;

    // The data connection is reset mid-upload.
    let mut ftp = Ftp::login(server.addr).await;
    let mut data = ftp.open_data(false).await;
    ftp.expect("STOR keep.txt", 150).await;
    data.write_all(&pattern(100_000, 1)).await.unwrap();
    socket2::SockRef::from(&data)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(data);
    let reply = ftp.reply().await;
    assert_eq!(reply.code().get(), 426, "{reply}");
    assert_eq!(fs::read(root.join("keep.txt")).unwrap(), b"old contents");
    assert!(upload_temporaries(root).is_empty());

    // ABOR mid-upload.
    let mut data = ftp.open_data(true).await;
    ftp.expect("APPE keep.txt", 150).await;
    data.write_all(b"partial").await.unwrap();
    ftp.send_raw(b"ABOR\r\n").await;
    assert_eq!(ftp.reply().await.code().get(), 426);
    assert_eq!(ftp.reply().await.code().get(), 226);
    assert_eq!(fs::read(root.join("keep.txt")).unwrap(), b"old contents");
    assert!(upload_temporaries(root).is_empty());
    drop(data);

    // The client vanishes: control connection closed first, then the data connection.
    let mut data = ftp.open_data(false).await;
    ftp.expect("STOR keep.txt", 150).await;
    data.write_all(b"half").await.unwrap();
    drop(ftp);
    // The server sees the control EOF before the data EOF only if it read it first; wait
    // until it has abandoned the session (bounded), then close the data side.
    let mut probe = Ftp::login(server.addr).await;
    probe.expect("NOOP", 200).await;
    data.shutdown().await.unwrap();
    drop(data);
    let mut temporaries_gone = false;
    for _ in 0..200 {
        if upload_temporaries(root).is_empty() {
            temporaries_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(temporaries_gone, "temporary upload file left behind");
    assert_eq!(fs::read(root.join("keep.txt")).unwrap(), b"old contents");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_from_another_address_is_dropped_and_the_client_served() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"the real data").unwrap();
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 2, |c| c.listener_mode = mode).await;
        let mut ftp = Ftp::login(server.addr).await;
        let addr = ftp.pasv().await;
        let intruder_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        // The intruder's SYN goes out first (a non-blocking connect sends it at once).
        let intruder = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::STREAM.nonblocking(),
            None,
        )
        .unwrap();
        intruder
            .bind(&SocketAddr::new(intruder_ip, 0).into())
            .unwrap();
        let _ = intruder.connect(&addr.into());
        let mut data = connect_data(addr).await;
        ftp.expect("RETR f", 150).await;
        assert_eq!(read_all(&mut data).await, b"the real data", "{mode:?}");
        assert_eq!(ftp.reply().await.code().get(), 226);
        // The intruder never gets data: the kernel kept it out (its SYN dropped by the
        // listener's filter), or it was taken and dropped on the way to the real client.
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
        let read = intruder.recv(&mut buf);
        assert!(
            !matches!(read, Ok(n) if n > 0),
            "{mode:?}: intruder got data"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_client_that_connects_after_the_command_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(200_000, 3);
    fs::write(dir.path().join("f"), &body).unwrap();
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 2, |c| {
            c.listener_mode = mode;
            c.anonymous_write = true;
        })
        .await;
        let mut ftp = Ftp::login(server.addr).await;
        // The command first, the connection after the 150: the server has to wait for it.
        let addr = ftp.pasv().await;
        ftp.expect("RETR f", 150).await;
        let mut data = connect_data(addr).await;
        assert_eq!(read_all(&mut data).await, body, "{mode:?}");
        assert_eq!(ftp.reply().await.code().get(), 226, "{mode:?}");

        let addr = ftp.epsv().await;
        ftp.expect("STOR up", 150).await;
        let mut data = connect_data(addr).await;
        data.write_all(b"late upload").await.unwrap();
        data.shutdown().await.unwrap();
        drop(data);
        assert_eq!(ftp.reply().await.code().get(), 226, "{mode:?}");
        assert_eq!(fs::read(dir.path().join("up")).unwrap(), b"late upload");
        server.stop().await;
    }
}

#[tokio::test]
async fn prebound_connections_reach_the_session_of_their_peer() {
    // One prebound port, leased at once to two clients on different addresses (the pool's
    // per-(port, peer) exclusivity). Whichever session accepts first takes both connections
    // from the backlog and hands the other one over.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("a"), b"for the first client").unwrap();
    fs::write(dir.path().join("b"), b"for the second client").unwrap();
    let server = start(dir.path(), 1, |c| c.listener_mode = ListenerMode::Prebound).await;
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut first = Ftp::login(server.addr).await;
    let mut second = Ftp::login_from(other, server.addr).await;
    let addr = first.pasv().await;
    assert_eq!(second.pasv().await, addr, "the same port for both peers");
    // The first client's connection is the older one in the backlog.
    let mut first_data = connect_data(addr).await;
    let mut second_data = connect_from(other, addr)
        .await
        .expect("second data connect");
    let b = second.cmd("RETR b").await;
    assert_eq!(b.code().get(), 150, "{b}");
    assert_eq!(read_all(&mut second_data).await, b"for the second client");
    assert_eq!(second.reply().await.code().get(), 226);
    first.expect("RETR a", 150).await;
    assert_eq!(read_all(&mut first_data).await, b"for the first client");
    assert_eq!(first.reply().await.code().get(), 226);
    server.stop().await;
}

#[tokio::test]
async fn a_connection_left_by_a_replaced_pasv_is_never_served() {
    // The client connects, then asks for a new endpoint instead of transferring. With one
    // port, the new lease is the same port (prebound: the same shared listener); the first
    // connection must be dropped, not taken for the new lease.
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"only for the second connection").unwrap();
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 1, |c| c.listener_mode = mode).await;
        let mut ftp = Ftp::login(server.addr).await;
        let addr = ftp.pasv().await;
        let mut stale = connect_data(addr).await;
        assert_eq!(ftp.pasv().await, addr, "{mode:?}: one port, the same port");
        let mut data = connect_data(addr).await;
        ftp.expect("RETR f", 150).await;
        assert_eq!(
            read_all(&mut data).await,
            b"only for the second connection",
            "{mode:?}"
        );
        assert_eq!(ftp.reply().await.code().get(), 226, "{mode:?}");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, stale.read_to_end(&mut buf))
            .await
            .expect("stale connection dropped in time");
        assert!(read.is_err() || buf.is_empty(), "{mode:?}: stale got data");
        server.stop().await;
    }
}

/// A client that connects after its lease ended (here: replaced by PORT; an accept timeout
/// ends it the same way) must not be served the next lease of that port for its address,
/// here another session's. Per-lease: the port is closed, the late connect is refused.
/// Prebound: the shared listener (its filter still admitting the address) queues it, and the
/// next grant on the port resets it instead of taking it for the new lease.
#[tokio::test]
async fn a_late_connection_for_an_ended_lease_never_gets_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"for the second session only").unwrap();
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 1, |c| c.listener_mode = mode).await;
        let mut first = Ftp::login(server.addr).await;
        let addr = first.pasv().await;
        // PORT ends the passive lease before its 200 is sent.
        let unused = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = unused.local_addr().unwrap().port();
        first
            .expect(
                &format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff),
                200,
            )
            .await;
        let late = tokio::time::timeout(WAIT, tokio::net::TcpStream::connect(addr))
            .await
            .expect("late connect ends in time");
        let mut second = Ftp::login(server.addr).await;
        assert_eq!(
            second.pasv().await,
            addr,
            "{mode:?}: one port, the same port"
        );
        let mut data = connect_data(addr).await;
        second.expect("RETR f", 150).await;
        match late {
            // Refused (per-lease), or queued and reset by the grant (prebound): either way
            // it gets nothing, and the second session's data reaches the second session.
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{mode:?}"),
            Ok(mut late) => {
                assert_eq!(mode, ListenerMode::Prebound);
                let mut buf = Vec::new();
                let read = tokio::time::timeout(WAIT, late.read_to_end(&mut buf))
                    .await
                    .expect("late connection closed in time");
                assert!(
                    read.is_err() || buf.is_empty(),
                    "{mode:?}: the late connection got the next lease's data: {:?}",
                    String::from_utf8_lossy(&buf)
                );
            }
        }
        assert_eq!(
            read_all(&mut data).await,
            b"for the second session only",
            "{mode:?}"
        );
        assert_eq!(second.reply().await.code().get(), 226, "{mode:?}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_busy_polling_server_serves_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(5_000, 9);
    fs::write(dir.path().join("f"), &body).unwrap();
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 2, |c| {
            c.listener_mode = mode;
            c.busy_poll = Duration::from_micros(300);
        })
        .await;
        let mut ftp = Ftp::login(server.addr).await;
        for _ in 0..20 {
            assert_eq!(ftp.retr("f").await, body, "{mode:?}");
        }
        // A session that stays quiet past the window still gets its replies (the poller
        // parked and the next command woke the runtime the ordinary way).
        ftp.expect("NOOP", 200).await;
        assert_eq!(ftp.retr("f").await, body, "{mode:?}");
        // The poller ends with the server.
        server.stop().await;
    }
}

#[tokio::test]
async fn port_and_eprt_are_checked_before_any_connect() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"active data").unwrap();
    let server = start(dir.path(), 2, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;
    let foreign = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let fport = foreign.local_addr().unwrap().port();
    let port_arg = |ip: [u8; 4], port: u16| {
        format!(
            "PORT {},{},{},{},{},{}",
            ip[0],
            ip[1],
            ip[2],
            ip[3],
            port >> 8,
            port & 0xff
        )
    };
    ftp.expect(&port_arg([127, 0, 0, 2], fport), 501).await;
    ftp.expect(&format!("EPRT |1|127.0.0.2|{fport}|"), 501)
        .await;
    ftp.expect(&port_arg([127, 0, 0, 1], 80), 501).await;
    ftp.expect("EPRT |1|127.0.0.1|1023|", 501).await;
    ftp.expect("RETR f", 425).await;
    assert!(
        foreign.accept().now_or_never().is_none(),
        "the server connected to a foreign address"
    );
    // The client's own address and an unprivileged port: active mode works.
    let own = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let own_port = own.local_addr().unwrap().port();
    ftp.expect(&port_arg([127, 0, 0, 1], own_port), 200).await;
    ftp.expect("RETR f", 150).await;
    let (mut data, _) = tokio::time::timeout(WAIT, own.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&mut data).await, b"active data");
    assert_eq!(ftp.reply().await.code().get(), 226);
    ftp.expect(&format!("EPRT |1|127.0.0.1|{own_port}|"), 200)
        .await;
    ftp.expect("EPSV ALL", 200).await;
    ftp.expect("PASV", 503).await;
    ftp.expect(&port_arg([127, 0, 0, 1], own_port), 503).await;
    server.stop().await;

    let server = start(dir.path(), 2, |c| c.port_enable = false).await;
    let mut ftp = Ftp::login(server.addr).await;
    ftp.expect(&port_arg([127, 0, 0, 1], own_port), 502).await;
    server.stop().await;
}

#[tokio::test]
async fn paths_cannot_escape_the_root() {
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret"), b"secret").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir(root.join("d")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
    std::os::unix::fs::symlink(outside.path().join("secret"), root.join("d/leak")).unwrap();
    std::os::unix::fs::symlink("../d", root.join("d/self")).unwrap();
    fs::write(root.join(".pasvd-upload-0000"), b"hidden").unwrap();
    let server = start(root, 2, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;
    ftp.expect("CWD out", 550).await;
    ftp.expect("CWD ../../..", 250).await;
    assert!(ftp.expect("PWD", 257).await.text().starts_with("\"/\""));
    let _data = ftp.open_data(false).await;
    for path in [
        "out/secret",
        "d/leak",
        "../secret",
        "/etc/passwd",
        "../../../../etc/passwd",
    ] {
        ftp.expect(&format!("RETR {path}"), 550).await;
    }
    ftp.expect("SIZE d/leak", 550).await;
    ftp.expect("MLST out", 550).await;
    ftp.expect("STOR out/new", 550).await;
    ftp.expect("MKD out/new", 550).await;
    ftp.expect("RNFR d", 350).await;
    ftp.expect("RNTO out/d", 550).await;
    ftp.expect("RETR .pasvd-upload-0000", 550).await;
    ftp.expect("DELE .pasvd-upload-0000", 550).await;
    // Symlinks inside the root work.
    ftp.expect("CWD d/self", 250).await;
    assert!(!outside.path().join("new").exists() && !outside.path().join("d").exists());
    let list = String::from_utf8_lossy(&ftp.listing("LIST -a /").await).into_owned();
    assert!(!list.contains(".pasvd-upload-"), "{list}");
    server.stop().await;
}

/// 8 sessions share 2 ports: waits absorb the contention, nobody is refused or dropped, and
/// every advertised port is in the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ports_eight_sessions_wait_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), pattern(1024, 5)).unwrap();
    let server = start(dir.path(), 2, |c| c.pasv_wait = Duration::from_secs(20)).await;
    let (lo, hi) = server.ports;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut ftp = Ftp::login(addr).await;
            let mut ports = Vec::new();
            for _ in 0..10 {
                let data_addr = ftp.pasv().await;
                ports.push(data_addr.port());
                let mut data = connect_data(data_addr).await;
                ftp.expect("RETR f", 150).await;
                assert_eq!(read_all(&mut data).await.len(), 1024);
                assert_eq!(ftp.reply().await.code().get(), 226);
            }
            ftp.expect("QUIT", 221).await;
            ports
        }));
    }
    for client in clients {
        let ports = client.await.expect("session completed every transfer");
        assert!(ports.iter().all(|p| (lo..=hi).contains(p)), "{ports:?}");
    }
    server.stop().await;
}

/// With a port-scoped quarantine and no wait, the range really runs dry: the 425s carry a
/// retry hint no longer than the quarantine, clients that honour it get through, and no
/// session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhaustion_answers_425_with_a_correct_retry_hint() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"x").unwrap();
    let quarantine = Duration::from_millis(300);
    let server = start(dir.path(), 2, |c| {
        c.quarantine = Some(QuarantineScope::Port);
        c.time_wait = quarantine;
        c.pasv_wait = Duration::ZERO;
    })
    .await;
    let (lo, hi) = server.ports;
    // One session alone: both ports cool after a transfer each, so the next PASV is refused
    // with the time until the first of them frees, as the pool computes it: the quarantine
    // less the time since the first transfer's close (which happened between sending its
    // RETR and reading its 226), rounded up to the millisecond.
    let mut ftp = Ftp::login(server.addr).await;
    let mut first_close = None;
    for _ in 0..2 {
        let data_addr = ftp.pasv().await;
        let mut data = connect_data(data_addr).await;
        let before = clock::now();
        ftp.expect("RETR f", 150).await;
        assert_eq!(read_all(&mut data).await, b"x");
        assert_eq!(ftp.reply().await.code().get(), 226);
        first_close.get_or_insert((before, clock::now()));
    }
    let (closed_after, closed_before) = first_close.unwrap();
    let asked = clock::now();
    let reply = ftp.cmd("PASV").await;
    let answered = clock::now();
    assert_eq!(reply.code().get(), 425, "{reply}");
    let hint = reply.retry_after().expect("425 carries a retry hint");
    let earliest = quarantine.saturating_sub(answered - closed_after);
    let latest = quarantine.saturating_sub(asked.saturating_duration_since(closed_before))
        + Duration::from_millis(1);
    assert!(
        earliest <= hint && hint <= latest,
        "{reply}: expected between {earliest:?} and {latest:?}"
    );
    ftp.expect("QUIT", 221).await;
    let mut clients = Vec::new();
    for _ in 0..8 {
        let addr = server.addr;
        clients.push(tokio::spawn(async move {
            let mut ftp = Ftp::login(addr).await;
            let (mut done, mut refused) = (0, 0);
            for _ in 0..200 {
                if done == 3 {
                    break;
                }
                let reply = ftp.cmd("PASV").await;
                match reply.code().get() {
                    227 => {
                        let data_addr = reply.pasv_addr().unwrap();
                        assert!((lo..=hi).contains(&data_addr.port()), "{reply}");
                        let mut data = connect_data(SocketAddr::V4(data_addr)).await;
                        ftp.expect("RETR f", 150).await;
                        assert_eq!(read_all(&mut data).await, b"x");
                        assert_eq!(ftp.reply().await.code().get(), 226);
                        done += 1;
                    }
                    425 => {
                        let hint = reply.retry_after().expect("425 carries a retry hint");
                        // A cooling port frees within the quarantine; when all are leased
                        // the server's guess is one second.
                        assert!(
                            hint > Duration::ZERO && hint <= Duration::from_secs(1),
                            "{reply}"
                        );
                        refused += 1;
                        tokio::time::sleep(hint).await;
                    }
                    _ => panic!("unexpected {reply}"),
                }
            }
            ftp.expect("NOOP", 200).await;
            (done, refused)
        }));
    }
    let mut total_refused = 0;
    for client in clients {
        let (done, refused) = client.await.unwrap();
        assert_eq!(done, 3);
        total_refused += refused;
    }
    // 24 server-closed transfers through 2 ports quarantined 300 ms each cannot all pass
    // without refusals.
    assert!(total_refused > 0);
    server.stop().await;
}

/// A PASV the client never uses gives its port back after the accept timeout; a session
/// waiting for a port gets it then. Paused clock: the 10 s timeout passes at once.
#[tokio::test(start_paused = true)]
async fn an_unused_pasv_port_returns_after_the_accept_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 1, |c| {
        c.accept_timeout = Duration::from_secs(10);
        c.pasv_wait = Duration::from_secs(25);
    })
    .await;
    let mut a = Ftp::login(server.addr).await;
    let mut b = Ftp::login(server.addr).await;
    let leased = clock::now();
    let port = a.pasv().await.port();
    // B waits for the only port, which comes back when A's accept times out: not before.
    assert_eq!(b.pasv().await.port(), port);
    let waited = clock::now() - leased;
    assert!(waited >= Duration::from_secs(10), "{waited:?}");
    // A's endpoint is gone.
    a.expect("RETR x", 425).await;
    server.stop().await;
}

#[tokio::test]
async fn session_limits_and_login_failures() {
    let dir = tempfile::tempdir().unwrap();
    let hash = pasv_tools::server::hash_password(b"right").unwrap();
    let users = dir.path().join("users.toml");
    let served = dir.path().join("served");
    let alice_root = dir.path().join("alice");
    fs::create_dir(&served).unwrap();
    fs::create_dir(&alice_root).unwrap();
    fs::write(alice_root.join("mine.txt"), b"alice's").unwrap();
    fs::write(
        &users,
        format!(
            "[[user]]\nname = \"alice\"\npassword = \"{hash}\"\nroot = \"{}\"\nwrite = true\n",
            alice_root.display()
        ),
    )
    .unwrap();
    let server = start(&served, 2, |c| {
        c.users = Some(users.clone());
        c.anonymous_enable = false;
        c.max_per_ip = 2;
        c.max_login_fails = 2;
        c.idle_timeout = Duration::from_secs(2);
    })
    .await;
    let (mut one, _) = Ftp::connect(server.addr).await;
    one.expect("USER anonymous", 530).await;
    one.expect("USER alice", 331).await;
    one.expect("PASS wrong", 530).await;
    one.expect("USER alice", 331).await;
    assert_eq!(one.cmd("PASS wrong again").await.code().get(), 421);
    assert!(one.closed().await);

    let (mut two, _) = Ftp::connect(server.addr).await;
    two.expect("USER alice", 331).await;
    two.expect("PASS right", 230).await;
    assert_eq!(two.retr("mine.txt").await, b"alice's");
    let (_three, _) = Ftp::connect(server.addr).await;
    let (_, refused) = Ftp::connect(server.addr).await;
    assert_eq!(refused.code().get(), 421, "{refused}");
    // Idle sessions are closed with 421.
    let timeout = two.reply().await;
    assert_eq!(timeout.code().get(), 421, "{timeout}");
    assert!(two.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_lets_a_running_transfer_finish() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(8 << 20, 2);
    fs::write(dir.path().join("f"), &body).unwrap();
    let server = start(dir.path(), 2, |c| {
        c.shutdown_timeout = Duration::from_secs(20)
    })
    .await;
    let mut ftp = Ftp::login(server.addr).await;
    let mut idle = Ftp::login(server.addr).await;
    let mut data = ftp.open_data(false).await;
    ftp.expect("RETR f", 150).await;
    let mut head = vec![0u8; 4096];
    data.read_exact(&mut head).await.unwrap();
    let stopping = tokio::spawn(server.stop());
    // The idle session is told at once; the transfer completes, then 421.
    assert_eq!(idle.reply().await.code().get(), 421);
    let mut rest = read_all(&mut data).await;
    head.append(&mut rest);
    assert!(
        head == body,
        "got {} bytes, not the file's {}",
        head.len(),
        body.len()
    );
    assert_eq!(ftp.reply().await.code().get(), 226);
    assert_eq!(ftp.reply().await.code().get(), 421);
    stopping.await.unwrap();
}

#[tokio::test]
async fn xferlog_records_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("f"), b"12345").unwrap();
    let log = dir.path().join("xferlog");
    let server = start(&root, 2, |c| c.xferlog = Some(log.clone())).await;
    let mut ftp = Ftp::login(server.addr).await;
    assert_eq!(ftp.retr("f").await, b"12345");
    assert_eq!(ftp.upload("STOR g", b"abc").await.code().get(), 226);
    server.stop().await;
    let text = fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].ends_with(" 127.0.0.1 5 /f b _ o a anonymous ftp 0 * c"),
        "{text}"
    );
    assert!(
        lines[1].ends_with(" 127.0.0.1 3 /g b _ i a anonymous ftp 0 * c"),
        "{text}"
    );
}

/// Two passive addresses: PASV may lease either (clients follow the advertised address) and
/// advertises the one it leased; EPSV leases on the control connection's local address. A public address replaces the
/// advertised one (NAT) while the client still reaches the server.
#[tokio::test]
async fn several_passive_addresses_and_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let second = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let server = start(dir.path(), 2, |c| {
        c.pasv_address = vec![support::LOCALHOST, second];
        c.pasv_follow_advertised = true;
    })
    .await;
    let mut ftp = Ftp::login(server.addr).await;
    let mut seen = HashSet::new();
    for _ in 0..8 {
        let addr = ftp.pasv().await;
        seen.insert(addr.ip());
        // Connect to the advertised address: the lease's own listener is there.
        let mut data = connect_data(addr).await;
        ftp.expect("RETR f", 150).await;
        assert_eq!(read_all(&mut data).await, b"data");
        assert_eq!(ftp.reply().await.code().get(), 226);
        let epsv = ftp.expect("EPSV", 229).await;
        let port = epsv.epsv_port().unwrap();
        // EPSV leased on 127.0.0.1, the control connection's local address.
        let mut data = connect_data(SocketAddr::new(support::LOCALHOST, port)).await;
        ftp.expect("NLST", 150).await;
        assert_eq!(read_all(&mut data).await, b"f\r\n");
        assert_eq!(ftp.reply().await.code().get(), 226);
    }
    // Least recently released: consecutive PASVs alternate over the four (address, port)s.
    assert_eq!(seen, HashSet::from([support::LOCALHOST, second]));
    server.stop().await;

    let server = start(dir.path(), 2, |c| {
        c.pasv_public_address.insert(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Ipv4Addr::new(203, 0, 113, 7).into(),
        );
    })
    .await;
    let mut ftp = Ftp::login(server.addr).await;
    let advertised = ftp.pasv().await;
    assert_eq!(advertised.ip(), IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7)));
    // Clients connect to the control peer (curl, ftplib), which reaches the lease.
    let mut data = connect_data(SocketAddr::new(support::LOCALHOST, advertised.port())).await;
    ftp.expect("RETR f", 150).await;
    assert_eq!(read_all(&mut data).await, b"data");
    assert_eq!(ftp.reply().await.code().get(), 226);
    server.stop().await;
}

/// TYPE A as RFC 959 wants it on the wire, done the obvious way (one byte at a time), to
/// check the server's buffered conversion against.
fn crlf_form(file: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() * 2);
    for (i, &b) in file.iter().enumerate() {
        if b == b'\n' && (i == 0 || file[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// RETR with the 150 text, over PASV.
async fn retr_with_150(ftp: &mut Ftp, path: &str) -> (String, Vec<u8>) {
    let mut data = ftp.open_data(false).await;
    let first = ftp.expect(&format!("RETR {path}"), 150).await;
    let body = read_all(&mut data).await;
    assert_eq!(ftp.reply().await.code().get(), 226, "RETR {path} end");
    (first.text(), body)
}

/// TYPE A: LF goes out as CRLF, a CRLF in the file stays one, a lone CR stays; uploads store
/// CRLF as LF. TYPE I moves the bytes as they are. REST and SIZE count the stored file.
#[tokio::test]
async fn type_a_converts_line_ends_and_type_i_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let text: &[u8] = b"one\ntwo\r\nthree\rfour\n\nlast";
    fs::write(dir.path().join("text.txt"), text).unwrap();
    let server = start(dir.path(), 4, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;

    ftp.expect("TYPE A", 200).await;
    // The client connects before RETR: in TYPE I this small file would go out inline.
    let (opening, body) = retr_with_150(&mut ftp, "text.txt").await;
    assert_eq!(body, b"one\r\ntwo\r\nthree\rfour\r\n\r\nlast");
    assert_eq!(body, crlf_form(text));
    assert!(opening.contains("ASCII"), "{opening}");
    // EPSV, and a client that connects after RETR: the same bytes.
    let epsv = ftp.epsv().await;
    ftp.expect("RETR text.txt", 150).await;
    let mut data = connect_data(epsv).await;
    assert_eq!(read_all(&mut data).await, crlf_form(text));
    assert_eq!(ftp.reply().await.code().get(), 226);
    // SIZE counts the stored file; so does REST, and a restart right between the file's CR
    // and LF sends that LF alone (its CR went out with the previous transfer).
    assert_eq!(ftp.expect("SIZE text.txt", 213).await.text(), "25");
    ftp.expect("REST 8", 350).await;
    assert_eq!(ftp.retr("text.txt").await, b"\nthree\rfour\r\n\r\nlast");
    ftp.expect("REST 4", 350).await;
    assert_eq!(
        ftp.retr("text.txt").await,
        b"two\r\nthree\rfour\r\n\r\nlast"
    );

    // Uploads in TYPE A: CRLF stored as LF, a lone CR kept; APPE too.
    let reply = ftp.upload("STOR up.txt", b"a\r\nb\r\nc\rd\r\n").await;
    assert_eq!(reply.code().get(), 226, "{reply}");
    assert_eq!(
        fs::read(dir.path().join("up.txt")).unwrap(),
        b"a\nb\nc\rd\n"
    );
    let reply = ftp.upload("APPE up.txt", b"e\r\nf\r").await;
    assert_eq!(reply.code().get(), 226, "{reply}");
    assert_eq!(
        fs::read(dir.path().join("up.txt")).unwrap(),
        b"a\nb\nc\rd\ne\nf\r"
    );

    // TYPE I: the file as it is, both ways.
    ftp.expect("TYPE I", 200).await;
    let (opening, body) = retr_with_150(&mut ftp, "text.txt").await;
    assert_eq!(body, text);
    assert!(opening.contains("BINARY"), "{opening}");
    let reply = ftp.upload("STOR raw.txt", b"a\r\nb\n").await;
    assert_eq!(reply.code().get(), 226, "{reply}");
    assert_eq!(fs::read(dir.path().join("raw.txt")).unwrap(), b"a\r\nb\n");
    server.stop().await;

    // ascii_transfers off: TYPE A is accepted and every transfer is binary.
    let server = start(dir.path(), 2, |c| c.ascii_transfers = false).await;
    let mut ftp = Ftp::login(server.addr).await;
    ftp.expect("TYPE A", 200).await;
    let (opening, body) = retr_with_150(&mut ftp, "text.txt").await;
    assert_eq!(body, text);
    assert!(opening.contains("BINARY"), "{opening}");
    let reply = ftp.upload("STOR raw2.txt", b"a\r\nb\n").await;
    assert_eq!(reply.code().get(), 226, "{reply}");
    assert_eq!(fs::read(dir.path().join("raw2.txt")).unwrap(), b"a\r\nb\n");
    server.stop().await;
}

/// A file much larger than the copy buffer (4096 bytes here), with a CRLF split across a
/// buffer boundary and bare LFs at the first byte of a buffer, and larger than the
/// sendfile threshold: converted exactly in TYPE A, untouched in TYPE I, both ways.
#[tokio::test]
async fn type_a_conversion_spans_buffer_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut file = Vec::new();
    let mut line = 0usize;
    while file.len() < 300_000 {
        let len = 1 + line * 37 % 200;
        file.extend(std::iter::repeat_n(b'a' + (line % 26) as u8, len));
        file.push(if line % 5 == 0 { b'\r' } else { b'\n' });
        line += 1;
    }
    // A CRLF cut by the buffer boundary, an LF opening the next buffer, a lone CR at a
    // boundary's last byte.
    file[4095] = b'\r';
    file[4096] = b'\n';
    file[8191] = b'x';
    file[8192] = b'\n';
    file[12_287] = b'\r';
    file[12_288] = b'y';
    fs::write(dir.path().join("big.txt"), &file).unwrap();
    let server = start(dir.path(), 4, |c| c.buffer_size = 4096).await;
    let mut ftp = Ftp::login(server.addr).await;
    ftp.expect("TYPE A", 200).await;
    let wire = crlf_form(&file);
    assert!(wire.len() > file.len() + 1000);
    let got = ftp.retr("big.txt").await;
    assert!(got == wire, "TYPE A download differs from the CRLF form");
    // The CRLF form uploaded in TYPE A is stored with LF, the file's CRLF included.
    let reply = ftp.upload("STOR back.txt", &wire).await;
    assert_eq!(reply.code().get(), 226, "{reply}");
    let mut lf_form = Vec::with_capacity(file.len());
    for (i, &b) in file.iter().enumerate() {
        if !(b == b'\r' && file.get(i + 1) == Some(&b'\n')) {
            lf_form.push(b);
        }
    }
    assert!(fs::read(dir.path().join("back.txt")).unwrap() == lf_form);
    ftp.expect("TYPE I", 200).await;
    assert!(ftp.retr("big.txt").await == file);
    server.stop().await;
}

/// A directory of `n` empty files, `f00000` on.
fn many_files(n: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        fs::File::create(dir.path().join(format!("f{i:05}"))).unwrap();
    }
    dir
}

/// The end of a STAT listing reply: its last line, which only that line starts with.
const STAT_END: &[u8] = b"\r\n213 End of status";

/// Reads a control connection until `replies` STAT listing replies are complete (these
/// replies are larger than the test client's reply decoder takes). Returns the bytes.
async fn read_stat_replies(stream: &mut tokio::net::TcpStream, replies: usize) -> Vec<u8> {
    let mut input = Vec::new();
    let mut seen = 0;
    let mut scanned = 0;
    let mut last_line_open = false;
    let deadline = pasv_tools::clock::now() + WAIT;
    while seen < replies {
        let mut chunk = vec![0u8; 256 * 1024];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{seen} of {replies} STAT replies in time"))
            .expect("control read");
        assert!(n > 0, "EOF after {seen} of {replies} STAT replies");
        // Only the new bytes (and a marker that straddles them) need scanning, unless a last
        // line was found without its end.
        if !last_line_open {
            scanned = scanned.max(input.len().saturating_sub(STAT_END.len()));
        }
        input.extend_from_slice(&chunk[..n]);
        // A reply is complete once its last line is.
        last_line_open = false;
        while let Some(at) = input[scanned..]
            .windows(STAT_END.len())
            .position(|w| w == STAT_END)
        {
            let start = scanned + at + 2;
            let Some(eol) = input[start..].windows(2).position(|w| w == b"\r\n") else {
                scanned += at;
                last_line_open = true;
                break;
            };
            seen += 1;
            scanned = start + eol + 2;
        }
    }
    input
}

/// STAT of a huge directory lists at most STAT_MAX_ENTRIES entries on the control connection
/// and its last line says how many it left out; LIST over a data connection has them all.
#[tokio::test]
async fn stat_of_a_huge_directory_is_capped_and_says_so() {
    use pasv_tools::server::STAT_MAX_ENTRIES;
    let total = STAT_MAX_ENTRIES + 50;
    let dir = many_files(total);
    let server = start(dir.path(), 4, |_| {}).await;
    let mut ftp = Ftp::login(server.addr).await;
    let names = ftp.listing("NLST").await;
    assert_eq!(
        names
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        total
    );
    let mut control = ftp.into_stream();
    control.write_all(b"STAT /\r\n").await.unwrap();
    let reply = read_stat_replies(&mut control, 1).await;
    let lines: Vec<&[u8]> = reply
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(lines[0], b"213-Status follows:");
    let entries = lines.iter().filter(|l| l.starts_with(b" -rw")).count();
    assert_eq!(entries, STAT_MAX_ENTRIES);
    let last =
        format!("213 End of status: first {STAT_MAX_ENTRIES} of {total} entries; LIST shows all");
    assert_eq!(String::from_utf8_lossy(lines[lines.len() - 1]), last);
    server.stop().await;
}

/// A client that pipelines STATs of a huge directory and does not read the replies: the
/// session stops decoding commands once MAX_PENDING_OUTPUT bytes of replies wait, so it holds
/// that plus one (capped) reply at most, not every reply asked for (some 20 MB here).
#[tokio::test]
async fn pipelined_stats_that_are_not_read_hold_bounded_output() {
    use pasv_tools::server::{MAX_PENDING_OUTPUT, STAT_MAX_BYTES};
    const PIPELINED: usize = 32;
    let dir = many_files(10_000);
    let server = start(dir.path(), 4, |_| {}).await;
    let mut control = Ftp::login(server.addr).await.into_stream();
    control
        .write_all("STAT /\r\n".repeat(PIPELINED).as_bytes())
        .await
        .unwrap();
    // Every reply arrives once the client reads: held back, not lost.
    let replies = read_stat_replies(&mut control, PIPELINED).await;
    assert!(
        replies.len() > 16 << 20,
        "{} bytes of replies",
        replies.len()
    );
    let peak = server.stats.peak_pending_output();
    // One reply is the STAT text plus a CR a line.
    let bound = MAX_PENDING_OUTPUT + STAT_MAX_BYTES + 64 * 1024;
    assert!(
        peak <= bound,
        "a session held {peak} reply bytes (bound {bound})"
    );
    let mut ftp_tail = [0u8; 64];
    control.write_all(b"NOOP\r\n").await.unwrap();
    let n = tokio::time::timeout(WAIT, control.read(&mut ftp_tail))
        .await
        .unwrap()
        .unwrap();
    assert!(ftp_tail[..n].starts_with(b"200 "), "{:?}", &ftp_tail[..n]);
    server.stop().await;
}

/// Clients that pipeline commands and never read their replies fill `max_clients`: the server
/// stops reading them (their sends block), ends each with a reset once its replies waited
/// `idle_timeout` with no byte read, and a well-behaved client gets a slot.
#[tokio::test]
async fn clients_that_never_read_are_closed_and_free_their_slots() {
    const HOSTILE: usize = 3;
    let dir = many_files(2_000);
    let server = start(dir.path(), 4, |c| {
        c.max_clients = HOSTILE;
        c.idle_timeout = Duration::from_secs(3);
    })
    .await;
    let mut hostile = Vec::new();
    for _ in 0..HOSTILE {
        hostile.push(Ftp::login(server.addr).await.into_stream());
    }
    let (_, refused) = Ftp::connect(server.addr).await;
    assert_eq!(refused.code().get(), 421, "slots are full: {refused}");
    let mut writers = Vec::new();
    for mut control in hostile {
        writers.push(tokio::spawn(async move {
            let chunk = "STAT /\r\n".repeat(1024);
            // At most 64 MiB: far more than the socket buffers of both ends take.
            for sent in 0..8192usize {
                if let Err(e) = control.write_all(chunk.as_bytes()).await {
                    return Err((sent * chunk.len(), e));
                }
            }
            Ok(())
        }));
    }
    for writer in writers {
        let ended = tokio::time::timeout(WAIT, writer)
            .await
            .expect("the server ends a client that never reads")
            .unwrap();
        let (sent, e) = ended.expect_err("the server stopped reading commands");
        assert!(sent < 64 << 20, "{sent}");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ),
            "{e}"
        );
    }
    // A slot is given back just after its socket is reset: a refusal can only happen in that
    // instant, so a few immediate retries suffice.
    for attempt in 0.. {
        let (mut ftp, greeting) = Ftp::connect(server.addr).await;
        if greeting.code().get() == 421 && attempt < 100 {
            continue;
        }
        assert_eq!(greeting.code().get(), 220, "{greeting}");
        ftp.expect("USER anonymous", 331).await;
        ftp.expect("PASS guest@example.invalid", 230).await;
        ftp.expect("NOOP", 200).await;
        break;
    }
    server.stop().await;
}

/// Every data write has a stall timeout (`data_timeout`), and it is a stall timeout: a client
/// that never reads a download gets 426 (sendfile and the TYPE A copy loop), one that reads
/// slowly but steadily gets the whole file even when that takes longer than `data_timeout`.
#[tokio::test]
async fn data_writes_time_out_on_stalls_not_on_slow_readers() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(12 << 20, 7);
    fs::write(dir.path().join("big"), &body).unwrap();
    let data_timeout = Duration::from_secs(1);
    let server = start(dir.path(), 4, |c| {
        c.data_timeout = data_timeout;
        // One copy-loop write carries the whole TYPE A file.
        c.buffer_size = 16 << 20;
    })
    .await;
    let mut ftp = Ftp::login(server.addr).await;
    for ty in ["TYPE I", "TYPE A"] {
        ftp.expect(ty, 200).await;
        let data = ftp.open_data(false).await;
        ftp.expect("RETR big", 150).await;
        let end = ftp.reply().await;
        assert_eq!(end.code().get(), 426, "{ty}: {end}");
        assert!(end.text().contains("stalled"), "{ty}: {end}");
        drop(data);
    }
    // A slow reader: a small receive buffer, 256 KiB every 50 ms (about 5 MB/s).
    ftp.expect("TYPE A", 200).await;
    let addr = ftp.pasv().await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(256 * 1024).unwrap();
    let mut data = tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .unwrap()
        .unwrap();
    ftp.expect("RETR big", 150).await;
    let started = pasv_tools::clock::now();
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    loop {
        pace.tick().await;
        let n = tokio::time::timeout(WAIT, data.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..n]);
    }
    let took = pasv_tools::clock::now() - started;
    let end = ftp.reply().await;
    assert_eq!(end.code().get(), 226, "after {took:?}: {end}");
    assert!(received == crlf_form(&body), "{} bytes", received.len());
    // The premise: the download as a whole outlasted the stall timeout.
    assert!(took > data_timeout * 2, "{took:?}");
    server.stop().await;
}

/// A number out of range stops pasvd at start with the key, the flag and the range, before
/// it listens (`--idle-timeout 1e19` used to start a server whose every session panicked).
#[tokio::test]
async fn pasvd_refuses_an_out_of_range_number_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, key) in [
        ("--idle-timeout", "1e19", "idle_timeout"),
        ("--accept-timeout", "-1", "accept_timeout"),
        ("--max-passive-per-ip", "21", "max_passive_per_ip"),
    ] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pasvd"))
            .args(["--listen", "127.0.0.1:0", "--root"])
            .arg(dir.path())
            .arg(format!("{flag}={value}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("pasvd starts");
        let output = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("pasvd {flag} {value} kept running"))
            .expect("pasvd output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{flag} {value}: {stderr}");
        assert!(
            stderr.contains(key) && stderr.contains(flag) && stderr.contains("out of range"),
            "{flag} {value}: {stderr}"
        );
        assert!(
            !String::from_utf8_lossy(&output.stdout).contains("listening on"),
            "{flag} {value}"
        );
    }
}

/// Twenty sessions from one address on a 20-port range: with the default limit (half the
/// range) ten get a port, the other ten a 425 that says no time is known (no `retry after`
/// hint: their address's leases end when its own transfers do), and a client from another
/// address still gets a port. A released lease lifts the limit for the next one. Both
/// listener modes (prebound leases per port and peer, so there the other address was never
/// short of ports, but the limit holds all the same).
#[tokio::test]
async fn one_address_cannot_take_every_passive_port() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 20, |c| {
            c.listener_mode = mode;
            c.max_passive_per_ip = None;
            c.pasv_wait = Duration::ZERO;
        })
        .await;
        let mut holders = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..20 {
            let mut ftp = Ftp::login(server.addr).await;
            let reply = ftp.cmd("PASV").await;
            match reply.code().get() {
                227 => holders.push(ftp),
                425 => {
                    assert_eq!(reply.retry_after(), None, "{mode:?}: {reply}");
                    assert!(reply.to_string().contains("no time known"), "{reply}");
                    refused.push(ftp);
                }
                _ => panic!("{mode:?}: {reply}"),
            }
        }
        assert_eq!((holders.len(), refused.len()), (10, 10), "{mode:?}");
        let mut stranger = Ftp::login_from(other, server.addr).await;
        stranger.pasv().await;
        // One holder transfers: its lease ends, and a refused session gets a port.
        let data_addr = holders[0].pasv().await;
        let mut data = connect_data(data_addr).await;
        holders[0].expect("RETR f", 150).await;
        assert_eq!(read_all(&mut data).await, b"data");
        assert_eq!(holders[0].reply().await.code().get(), 226);
        refused[0].pasv().await;
        assert_eq!(refused[1].cmd("PASV").await.code().get(), 425);
        server.stop().await;
    }
}

/// Room for `n` more descriptors: the soft limit raised to the hard one if need be. A
/// machine whose hard limit is lower fails the test with the reason.
fn room_for_descriptors(n: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current.is_some_and(|c| c < n) {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit).expect("raise the descriptor limit");
    }
    assert!(
        limit.current.map_or(true, |c| c >= n),
        "this test needs {n} descriptors; the hard limit is {:?}",
        limit.maximum
    );
}

/// The default configuration (its session limits, listener mode and per-address lease cap)
/// on a 20-port range: 1,000 clients on 1,000 different addresses each hold a PASV at once, none is
/// refused, then each takes its own connection and its own file through the shared
/// ports. Under per-lease listeners 20 would be served and 980 refused with 425.
#[tokio::test]
async fn a_20_port_range_serves_1000_clients_on_distinct_addresses_at_once() {
    const CLIENTS: usize = 1000;
    room_for_descriptors(4 * CLIENTS as u64 + 256);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..CLIENTS {
        fs::write(dir.path().join(format!("f{i}")), format!("file {i}")).unwrap();
    }
    // The default configuration but for the address, the root and the range: its session
    // limits, its listener mode, its per-address lease cap, its open-file limit handling.
    let test_config = TestServer::config(dir.path(), 20);
    let mut config = Config::default();
    config.listen = test_config.listen;
    config.root = test_config.root;
    config.pasv_min_port = test_config.pasv_min_port;
    config.pasv_max_port = test_config.pasv_max_port;
    // All 1,000 connect at once, before any has logged in: more than the default cap on
    // sessions not logged in (a quarter of max_clients), which would answer the rest 421.
    config.max_unauthenticated = Some(config.max_clients);
    let server = TestServer::start(config).await;
    let (lo, hi) = server.ports;
    // 127.1.0.1 to 127.1.3.250: all of 127.0.0.0/8 is local on Linux.
    let address =
        |i: usize| IpAddr::V4(Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250) as u8 + 1));
    let sessions = futures_util::future::join_all((0..CLIENTS).map(|i| async move {
        let mut ftp = Ftp::login_from(address(i), server.addr).await;
        let reply = ftp.cmd("PASV").await;
        (ftp, reply)
    }))
    .await;
    let refused: Vec<String> = sessions
        .iter()
        .filter(|(_, r)| r.code().get() != 227)
        .map(|(_, r)| r.to_string())
        .collect();
    assert!(
        refused.is_empty(),
        "{} of {CLIENTS} refused, first: {:?}",
        refused.len(),
        refused.first()
    );
    let mut used = HashSet::new();
    let holders: Vec<(Ftp, SocketAddr)> = sessions
        .into_iter()
        .map(|(ftp, reply)| {
            let addr = reply.pasv_addr().expect("227 address");
            assert!((lo..=hi).contains(&addr.port()), "{addr} outside {lo}-{hi}");
            used.insert(addr.port());
            (ftp, SocketAddr::from(addr))
        })
        .collect();
    assert!(used.len() <= 20);
    // Every client connects first, then every one asks for its own file: whichever session
    // accepts on a port hands the other addresses' connections to their sessions.
    let connected = futures_util::future::join_all(holders.into_iter().enumerate().map(
        |(i, (ftp, addr))| async move {
            let data = connect_from(address(i), addr).await.expect("data connect");
            (ftp, data)
        },
    ))
    .await;
    futures_util::future::join_all(connected.into_iter().enumerate().map(
        |(i, (mut ftp, mut data))| async move {
            ftp.expect(&format!("RETR f{i}"), 150).await;
            assert_eq!(read_all(&mut data).await, format!("file {i}").as_bytes());
            assert_eq!(ftp.reply().await.code().get(), 226);
        },
    ))
    .await;
    server.stop().await;
}

/// Forty connections from another address to a passive port, made before the real client
/// connects: the real client's connect must still go through at once (they used to fill
/// the per-lease listener's backlog, and the client's SYNs were dropped until its connect
/// timed out). In prebound mode a port nobody from that address leased drops them too.
#[tokio::test]
async fn foreign_connections_cannot_fill_a_passive_backlog() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"for the real client").unwrap();
    let intruder_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 1, |c| {
            c.listener_mode = mode;
            // Prebound listeners take the configured backlog; as small as a per-lease one.
            c.listen_backlog = 16;
        })
        .await;
        let mut ftp = Ftp::login(server.addr).await;
        let addr = ftp.pasv().await;
        let mut intruders = Vec::new();
        for _ in 0..40 {
            let socket = socket2::Socket::new(
                socket2::Domain::IPV4,
                socket2::Type::STREAM.nonblocking(),
                None,
            )
            .unwrap();
            socket
                .bind(&SocketAddr::new(intruder_ip, 0).into())
                .unwrap();
            // Non-blocking: in progress (a SYN sent) or already connected.
            let _ = socket.connect(&addr.into());
            intruders.push(socket);
        }
        // Every intruder handshake that the server's kernel completes does so before the
        // real client's SYN arrives (loopback delivers in order), so this connect meets
        // whatever backlog the intruders made.
        let connected =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                .await;
        let mut data = match connected {
            Ok(Ok(stream)) => stream,
            other => panic!("{mode:?}: the real client could not connect: {other:?}"),
        };
        ftp.expect("RETR f", 150).await;
        assert_eq!(
            read_all(&mut data).await,
            b"for the real client",
            "{mode:?}"
        );
        assert_eq!(ftp.reply().await.code().get(), 226, "{mode:?}");
        drop(intruders);
        server.stop().await;
    }
}

/// A client that connects its data connection and never sends the transfer command: the
/// connection is taken at the accept timeout and closed `accept_timeout` later, and the
/// port goes back (it used to stay connected, holding the port, for as long as the control
/// connection lived).
#[tokio::test]
async fn a_connected_data_connection_without_a_command_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    for mode in [ListenerMode::PerLease, ListenerMode::Prebound] {
        let server = start(dir.path(), 1, |c| {
            c.listener_mode = mode;
            c.accept_timeout = Duration::from_millis(300);
            c.pasv_wait = Duration::ZERO;
        })
        .await;
        let mut ftp = Ftp::login(server.addr).await;
        let addr = ftp.pasv().await;
        let mut data = connect_data(addr).await;
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), data.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the unused connection stayed open"));
        assert!(matches!(read, Ok(0) | Err(_)), "{mode:?}: {read:?}");
        // The port is free again, and the session is still there.
        let mut other = Ftp::login(server.addr).await;
        other.pasv().await;
        ftp.expect("NOOP", 200).await;
        server.stop().await;
    }
}
