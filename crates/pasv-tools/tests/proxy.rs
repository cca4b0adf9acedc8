//! pasvd behind a load balancer that speaks the PROXY protocol, on loopback: the test plays
//! the balancer (connecting from 127.0.0.1, trusted) and names clients on 127.0.0.9 and
//! 127.0.0.10; the server must treat the named address as the peer everywhere.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use pasv_tools::server::{Config, ListenerMode};
use support::{connect_from, read_all, Ftp, TestServer, LOCALHOST};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));

fn config(root: &std::path::Path) -> Config {
    let mut config = TestServer::config(root, 4);
    config.proxy_protocol = true;
    config.proxy_from = vec!["127.0.0.1/32".parse().unwrap()];
    config
}

/// A version 2 header naming `client` (port 40000) as the source.
fn v2_header(client: IpAddr, server: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(c), IpAddr::V4(s)) = (client, server.ip()) else {
        panic!("IPv4 only");
    };
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        ppp::v2::IPv4::new(c, s, 40_000, server.port()),
    )
    .build()
    .unwrap()
}

/// Connects from `from` as the balancer would, sends `header`, and reads the greeting.
async fn through_balancer(from: IpAddr, server: SocketAddr, header: &[u8]) -> (Ftp, u16) {
    let mut stream = connect_from(from, server).await.expect("control connect");
    stream.write_all(header).await.unwrap();
    let (ftp, greeting) = Ftp::greeted(stream, server).await;
    (ftp, greeting.code().get())
}

async fn login(ftp: &mut Ftp) {
    ftp.expect("USER anonymous", 331).await;
    ftp.expect("PASS guest@example.invalid", 230).await;
    ftp.expect("TYPE I", 200).await;
}

/// The named client's data connection is the one accepted (the balancer's own address is
/// not), PORT must name the client, and both header versions work.
#[tokio::test]
async fn the_named_client_is_the_peer_for_data_connections_and_port() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), support::pattern(70_000, 1)).unwrap();
    let server = TestServer::start(config(dir.path())).await;
    let v1 = format!(
        "PROXY TCP4 127.0.0.9 127.0.0.1 40000 {}\r\n",
        server.addr.port()
    );
    for header in [v2_header(CLIENT, server.addr), v1.into_bytes()] {
        let (mut ftp, code) = through_balancer(LOCALHOST, server.addr, &header).await;
        assert_eq!(code, 220);
        login(&mut ftp).await;
        // The balancer's address is not the client's: its connection is never accepted
        // (dropped by the kernel filter, or reset).
        let addr = ftp.pasv().await;
        // Its SYN is dropped by the kernel filter, so its connect stays pending meanwhile.
        let intruder = tokio::spawn(connect_from(LOCALHOST, addr));
        let mut data = connect_from(CLIENT, addr).await.expect("data connect");
        ftp.expect("RETR f.bin", 150).await;
        assert_eq!(read_all(&mut data).await.len(), 70_000);
        assert_eq!(ftp.reply().await.code().get(), 226);
        assert!(
            !intruder.is_finished(),
            "the balancer's own connection was answered"
        );
        intruder.abort();
        // PORT is checked against the client's address, not the balancer's.
        ftp.expect("PORT 127,0,0,1,200,1", 501).await;
        ftp.expect("PORT 127,0,0,9,200,1", 200).await;
        ftp.expect("QUIT", 221).await;
    }
    server.stop().await;
}

/// `max_per_ip` counts the named clients, not the balancer; failed logins ban the named
/// client only.
#[tokio::test]
async fn limits_and_bans_apply_to_the_named_client() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_per_ip = 1;
    config.max_login_failures = 1;
    config.ban_time = Duration::from_secs(3600);
    let server = TestServer::start(config).await;
    let (mut first, code) =
        through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
    assert_eq!(code, 220);
    let (_second, code) =
        through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
    assert_eq!(
        code, 421,
        "a second session of the same client is over max_per_ip"
    );
    let (mut other, code) =
        through_balancer(LOCALHOST, server.addr, &v2_header(OTHER, server.addr)).await;
    assert_eq!(
        code, 220,
        "another client through the same balancer is admitted"
    );

    first.expect("USER nobody", 331).await;
    // One failure is the limit: the reply is the ban's.
    first.expect("PASS wrong", 421).await;
    drop(first);
    let (_banned, code) =
        through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
    assert_eq!(code, 421, "the named client is banned");
    login(&mut other).await;
    let (_third, code) =
        through_balancer(LOCALHOST, server.addr, &v2_header(OTHER, server.addr)).await;
    assert_eq!(code, 421, "OTHER still holds its one session");
    drop(other);
    server.stop().await;
}

/// Untrusted sources, and trusted ones that send no valid header, are closed without a
/// greeting.
#[tokio::test]
async fn untrusted_sources_and_bad_headers_get_no_session() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path())).await;
    // 127.0.0.5 is not in proxy_from: closed even with a well-formed header.
    let stranger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    for (from, bytes) in [
        (stranger, v2_header(CLIENT, server.addr)),
        (LOCALHOST, b"USER anonymous\r\n".to_vec()),
        (
            LOCALHOST,
            b"PROXY TCP4 999.0.0.1 127.0.0.1 1 21\r\n".to_vec(),
        ),
    ] {
        let mut stream = connect_from(from, server.addr).await.expect("connect");
        let _ = stream.write_all(&bytes).await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            support::WAIT,
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest),
        )
        .await;
        assert!(read.is_ok(), "closed in time ({from}, {bytes:?})");
        assert!(
            rest.is_empty(),
            "no greeting for {from} {bytes:?}: {rest:?}"
        );
    }
    server.stop().await;
}

/// The 227 address follows the client's network (first matching block), with the plain
/// public address as the fallback; a host name is resolved (`localhost`). Behind the
/// balancer, the block is matched against the client the header names.
#[tokio::test]
async fn the_advertised_address_follows_the_client_network() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.pasv_public_address_for = vec![
        (
            "127.0.0.9/32".parse().unwrap(),
            "192.0.2.9".parse().unwrap(),
        ),
        (
            "127.0.0.0/29".parse().unwrap(),
            "localhost".parse().unwrap(),
        ),
        ("127.0.0.0/8".parse().unwrap(), "192.0.2.1".parse().unwrap()),
    ];
    config.pasv_public_address.insert(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "203.0.113.7".parse().unwrap(),
    );
    let server = TestServer::start(config).await;
    let ten = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    for (client, expected) in [
        (CLIENT, "192.0.2.9"),
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4)), "127.0.0.1"),
        (OTHER, "192.0.2.1"),
        (ten, "203.0.113.7"),
    ] {
        let (mut ftp, code) =
            through_balancer(LOCALHOST, server.addr, &v2_header(client, server.addr)).await;
        assert_eq!(code, 220);
        login(&mut ftp).await;
        let advertised = ftp.pasv().await;
        assert_eq!(advertised.ip().to_string(), expected, "for {client}");
        ftp.expect("QUIT", 221).await;
    }
    server.stop().await;
}

/// A data connection as a balancer that forwards the passive range with `send-proxy-v2`
/// opens it: from the balancer's address, with a header naming `client`.
async fn data_through_balancer(client: IpAddr, addr: SocketAddr) -> TcpStream {
    let mut data = connect_from(LOCALHOST, addr)
        .await
        .expect("the balancer's data connection is admitted");
    data.write_all(&v2_header(client, addr)).await.unwrap();
    data
}

/// Whether the server closed `stream` (reset or end of stream) without sending a byte.
async fn refused(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    match tokio::time::timeout(support::WAIT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("the connection was neither served nor closed in time"),
    }
}

/// `proxy_protocol_data`: passive data connections come through the balancer with their
/// own PROXY header; the transfer goes to the client the header names, a connection whose
/// header names another client is refused (the real one is still served), whichever
/// listener mode is configured (listeners are per lease with data headers).
#[tokio::test]
async fn data_connections_through_the_balancer_carry_the_client_in_a_header() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), support::pattern(70_000, 3)).unwrap();
    for mode in [ListenerMode::Prebound, ListenerMode::PerLease] {
        let mut config = config(dir.path());
        config.proxy_protocol_data = true;
        config.listener_mode = mode;
        let server = TestServer::start(config).await;
        let (mut ftp, code) =
            through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
        assert_eq!(code, 220);
        login(&mut ftp).await;

        let addr = ftp.pasv().await;
        let mut data = data_through_balancer(CLIENT, addr).await;
        ftp.expect("RETR f.bin", 150).await;
        assert_eq!(
            read_all(&mut data).await,
            support::pattern(70_000, 3),
            "{mode:?}"
        );
        assert_eq!(ftp.reply().await.code().get(), 226, "{mode:?}");

        // A header naming another client: refused, and the client's own still served.
        let addr = ftp.pasv().await;
        let mut foreign = data_through_balancer(OTHER, addr).await;
        ftp.expect("RETR f.bin", 150).await;
        assert!(
            refused(&mut foreign).await,
            "{mode:?}: the foreign connection served"
        );
        let mut data = data_through_balancer(CLIENT, addr).await;
        assert_eq!(read_all(&mut data).await.len(), 70_000, "{mode:?}");
        assert_eq!(ftp.reply().await.code().get(), 226, "{mode:?}");
        ftp.expect("QUIT", 221).await;
        server.stop().await;
    }
}

/// A balancer connection whose header never comes is reset at the accept deadline (0.5 s,
/// before the 5 s header bound) and the transfer fails with 425; the session goes on and
/// its next transfer works.
#[tokio::test]
async fn a_data_connection_whose_header_never_comes_times_out() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f.bin"), support::pattern(1_000, 4)).unwrap();
    let mut config = config(dir.path());
    config.proxy_protocol_data = true;
    config.accept_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let (mut ftp, _) =
        through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
    login(&mut ftp).await;
    let addr = ftp.pasv().await;
    let mut silent = connect_from(LOCALHOST, addr).await.expect("connect");
    ftp.expect("RETR f.bin", 150).await;
    // The header wait ends with the accept deadline, not at the 5 s header bound.
    let reply = tokio::time::timeout(Duration::from_secs(4), ftp.reply())
        .await
        .expect("the 425 comes at the accept deadline, before the header bound");
    assert_eq!(reply.code().get(), 425, "{reply:?}");
    assert!(refused(&mut silent).await);

    let addr = ftp.pasv().await;
    let mut data = data_through_balancer(CLIENT, addr).await;
    ftp.expect("RETR f.bin", 150).await;
    assert_eq!(read_all(&mut data).await.len(), 1_000);
    assert_eq!(ftp.reply().await.code().get(), 226);
    server.stop().await;
}

/// A balancer connection that comes after its lease ended (the accept timeout passed) is
/// never handed to the next session of the same client address on that port: the next
/// session's data goes to its own connection. (On a shared prebound listener the late one
/// would wait in the backlog and be taken first: data headers make listeners per lease.)
#[tokio::test]
async fn a_late_balancer_connection_never_reaches_the_next_session() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin"), support::pattern(5_000, 5)).unwrap();
    std::fs::write(dir.path().join("b.bin"), support::pattern(6_000, 6)).unwrap();
    let mut config = config(dir.path());
    config.proxy_protocol_data = true;
    config.listener_mode = ListenerMode::Prebound;
    assert_eq!(config.effective_listener_mode(), ListenerMode::PerLease);
    config.pasv_max_port = config.pasv_min_port;
    config.accept_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;

    let (mut first, _) =
        through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
    login(&mut first).await;
    let port = first.pasv().await;
    first.expect("RETR a.bin", 150).await;
    assert_eq!(first.reply().await.code().get(), 425);
    // Too late: refused at connect, or taken and closed, never served.
    let late = match connect_from(LOCALHOST, port).await {
        Ok(mut late) => {
            late.write_all(&v2_header(CLIENT, port)).await.unwrap();
            Some(late)
        }
        Err(_) => None,
    };

    // Another session from the same client address, on the same (only) port.
    let (mut second, _) =
        through_balancer(LOCALHOST, server.addr, &v2_header(CLIENT, server.addr)).await;
    login(&mut second).await;
    assert_eq!(second.pasv().await, port);
    let mut data = data_through_balancer(CLIENT, port).await;
    second.expect("RETR b.bin", 150).await;
    if let Some(mut late) = late {
        assert!(refused(&mut late).await, "the late connection was served");
    }
    assert_eq!(read_all(&mut data).await, support::pattern(6_000, 6));
    assert_eq!(second.reply().await.code().get(), 226);
    server.stop().await;
}
