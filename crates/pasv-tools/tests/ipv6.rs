//! pasvd over IPv6 loopback: the server on `[::1]` with passive address `::1`, EPSV
//! transfers, EPRT to the control peer only, PASV refused with a permanent reply, and the
//! client library and the `pasv` binary with `ftp://[::1]:PORT/` URLs.
//!
//! On a machine without IPv6 (binding `::1` fails with EADDRNOTAVAIL) each test says
//! `SKIPPED (IPv6)` and why on stderr, uncaptured, and returns; with `PASV_REQUIRE_IPV6` set
//! it fails instead. Any other failure fails the test.

mod support;

use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use pasv_tools::client::{Client, ClientConfig, DataMode, FtpUrl};
use pasv_tools::server::{Config, ServerError};
use support::{connect_data, pattern, read_all, Ftp, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// pasvd on `[::1]:0` with passive address `::1` and its own passive block (26300-26399
/// for this binary); `None`, said on stderr, when the machine has no IPv6 loopback.
async fn start_v6(root: &Path) -> Option<TestServer> {
    let mut config = Config::for_tests(root.to_path_buf());
    config.listen = SocketAddr::new(V6, 0);
    config.pasv_address = vec![V6];
    let (lo, hi) = support::port_block_from(26_300, 4);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    match TestServer::try_start(config).await {
        Ok(server) => Some(server),
        Err(ServerError::Bind { addr, source })
            if source.kind() == io::ErrorKind::AddrNotAvailable =>
        {
            let why = format!("cannot bind {addr} ({source}): this machine has no IPv6 loopback");
            if std::env::var_os("PASV_REQUIRE_IPV6").is_some() {
                panic!("PASV_REQUIRE_IPV6 is set and {why}");
            }
            // Straight to the process's stderr: the test harness captures `eprintln!` of a
            // passing test, and a skip must not look like a pass.
            let _ = writeln!(io::stderr().lock(), "SKIPPED (IPv6): {why}");
            None
        }
        Err(e) => panic!("pasvd on [::1]: {e}"),
    }
}

/// EPSV over the control peer's address with the offered port.
async fn epsv(ftp: &mut Ftp) -> SocketAddr {
    let addr = ftp.epsv().await;
    assert_eq!(addr.ip(), V6);
    addr
}

#[tokio::test]
async fn login_epsv_list_retr_and_stor_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(300_000, 5);
    fs::write(dir.path().join("data.bin"), &body).unwrap();
    fs::write(dir.path().join("small.txt"), b"small\n").unwrap();
    let Some(server) = start_v6(dir.path()).await else {
        return;
    };
    assert_eq!(server.addr.ip(), V6);
    let mut ftp = Ftp::login(server.addr).await;
    assert_eq!(ftp.local_addr().ip(), V6);

    // LIST over EPSV.
    let list = String::from_utf8(ftp.listing("LIST").await).unwrap();
    assert!(list.lines().any(|l| l.ends_with(" data.bin")), "{list}");
    assert!(list.lines().any(|l| l.ends_with(" small.txt")), "{list}");

    // RETR, large (sendfile) and small (inline), byte for byte.
    for (name, expected) in [("data.bin", &body[..]), ("small.txt", b"small\n")] {
        let mut data = connect_data(epsv(&mut ftp).await).await;
        ftp.expect(&format!("RETR {name}"), 150).await;
        assert!(read_all(&mut data).await == expected, "RETR {name}");
        assert_eq!(ftp.reply().await.code().get(), 226);
    }

    // STOR, byte for byte.
    let up = pattern(200_000, 9);
    let mut data = connect_data(epsv(&mut ftp).await).await;
    ftp.expect("STOR up.bin", 150).await;
    data.write_all(&up).await.unwrap();
    data.shutdown().await.unwrap();
    drop(data);
    assert_eq!(ftp.reply().await.code().get(), 226);
    assert!(fs::read(dir.path().join("up.bin")).unwrap() == up);

    // EPSV 2 is this connection's protocol; EPSV 1 is not.
    ftp.expect("EPSV 2", 229).await;
    let reply = ftp.expect("EPSV 1", 522).await;
    assert!(reply.text().contains("(2)"), "{reply}");
    ftp.expect("QUIT", 221).await;
    server.stop().await;
}

/// PASV has no way to name an IPv6 address: a permanent refusal that points to EPSV, at
/// once (no wait for a port), and the session goes on.
#[tokio::test]
async fn pasv_over_ipv6_is_refused_and_points_to_epsv() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"after the refusal").unwrap();
    let Some(server) = start_v6(dir.path()).await else {
        return;
    };
    let mut ftp = Ftp::login(server.addr).await;
    let reply = ftp.expect("PASV", 502).await;
    assert!(reply.text().contains("EPSV"), "{reply}");
    let mut data = connect_data(epsv(&mut ftp).await).await;
    ftp.expect("RETR f", 150).await;
    assert_eq!(read_all(&mut data).await, b"after the refusal");
    assert_eq!(ftp.reply().await.code().get(), 226);
    server.stop().await;
}

/// EPRT to the control peer's own address (::1) works; to any other address, IPv6 or
/// IPv4, it is refused before any connect.
#[tokio::test]
async fn eprt_to_the_peer_over_ipv6_and_nowhere_else() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"active over v6").unwrap();
    let Some(server) = start_v6(dir.path()).await else {
        return;
    };
    let mut ftp = Ftp::login(server.addr).await;
    let own = TcpListener::bind(SocketAddr::new(V6, 0)).await.unwrap();
    let port = own.local_addr().unwrap().port();

    ftp.expect(&format!("EPRT |2|2001:db8::1|{port}|"), 501)
        .await;
    ftp.expect(&format!("EPRT |1|127.0.0.1|{port}|"), 501).await;
    ftp.expect("EPRT |2|::1|80|", 501).await;
    ftp.expect("RETR f", 425).await;
    assert!(
        own.accept().now_or_never().is_none(),
        "the server connected after a refused EPRT"
    );

    ftp.expect(&format!("EPRT |2|::1|{port}|"), 200).await;
    ftp.expect("RETR f", 150).await;
    let (mut data, from) = tokio::time::timeout(WAIT, own.accept())
        .await
        .expect("the server connects in time")
        .unwrap();
    assert_eq!(from.ip(), V6);
    let mut body = Vec::new();
    data.read_to_end(&mut body).await.unwrap();
    assert_eq!(body, b"active over v6");
    assert_eq!(ftp.reply().await.code().get(), 226);
    server.stop().await;
}

fn client_config() -> ClientConfig {
    ClientConfig {
        reply_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// The client library with an `ftp://[::1]:PORT/` URL, in its default data mode (EPSV
/// first) and in EPSV and active (EPRT) mode.
#[tokio::test]
async fn client_library_gets_and_puts_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(300_000, 11);
    fs::write(dir.path().join("big.bin"), &body).unwrap();
    let Some(server) = start_v6(dir.path()).await else {
        return;
    };
    let url = FtpUrl::parse(&format!("ftp://{}/", server.addr)).unwrap();
    assert_eq!(url.host(), "::1");
    for mode in [DataMode::Auto, DataMode::Epsv, DataMode::Active] {
        let config = ClientConfig {
            data_mode: mode,
            ..client_config()
        };
        let mut c = tokio::time::timeout(WAIT, Client::open(&url, config))
            .await
            .expect("login in time")
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let mut d = c.retrieve("big.bin", 0).await.unwrap();
        let mut got = Vec::new();
        d.read_to_end(&mut got).await.unwrap();
        assert_eq!(d.finish().await.unwrap().code().get(), 226);
        assert!(got == body, "{mode:?}: download differs");

        let name = format!("up-{mode:?}.bin");
        let mut u = c.store(&name).await.unwrap();
        u.write_all(&body[..123_456]).await.unwrap();
        assert_eq!(u.finish().await.unwrap().code().get(), 226);
        assert!(fs::read(dir.path().join(&name)).unwrap() == body[..123_456]);
    }
    server.stop().await;
}

/// `pasv get` and `pasv put` with `ftp://[::1]:PORT/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pasv_binary_gets_and_puts_over_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let body = pattern(100_000, 13);
    fs::write(dir.path().join("get.bin"), &body).unwrap();
    let Some(server) = start_v6(dir.path()).await else {
        return;
    };
    let local = tempfile::tempdir().unwrap();
    let url = |path: &str| format!("ftp://{}/{path}", server.addr);
    let got = local.path().join("got.bin");
    let out = pasv(&["get", &url("get.bin"), &got.to_string_lossy()]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(fs::read(&got).unwrap() == body);

    let put = local.path().join("put.bin");
    fs::write(&put, pattern(70_000, 17)).unwrap();
    let out = pasv(&["put", &url("put.bin"), &put.to_string_lossy()]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(fs::read(dir.path().join("put.bin")).unwrap() == pattern(70_000, 17));
    server.stop().await;
}

async fn pasv(args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pasv"));
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("pasv finished in time")
        .unwrap()
}
