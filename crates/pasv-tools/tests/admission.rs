//! Admission limits and prebound start-up over real loopback sockets: connections that never
//! log in, from many addresses, cannot keep a new client out (`max_unauthenticated`,
//! `max_unauthenticated_per_ip`); a passive port another program holds at start-up is left
//! out of service, never offered, and comes back once the program lets it go.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use pasv_tools::server::{Config, ListenerMode};
use support::{connect_from, Ftp, TestServer, WAIT};

fn v4(a: u8, b: u8, c: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, a, b, c))
}

/// Opens a control connection from `local` and returns it with its first reply's code.
async fn greet_from(local: IpAddr, addr: SocketAddr) -> (Ftp, u16) {
    let stream = connect_from(local, addr).await.expect("control connect");
    let (ftp, greeting) = Ftp::greeted(stream, addr).await;
    let code = greeting.code().get();
    (ftp, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_flood_from_many_addresses_cannot_shut_out_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    let (lo, hi) = support::port_block_from(27_200, 4);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    config.max_clients = 64;
    config.max_per_ip = 64;
    config.max_unauthenticated = None; // half of max_clients: 32
    config.max_unauthenticated_per_ip = 2;
    assert_eq!(config.effective_max_unauthenticated(), 32);
    let server = TestServer::start(config).await;

    // 6 addresses x 12 connections: more than max_clients, none logs in.
    let mut held = Vec::new();
    let mut admitted = 0;
    for host in 2..8u8 {
        for _ in 0..12 {
            let (ftp, code) = greet_from(v4(0, 1, host), server.addr).await;
            match code {
                220 => admitted += 1,
                421 => {}
                other => panic!("unexpected greeting {other}"),
            }
            held.push(ftp);
        }
    }
    assert_eq!(admitted, 6 * 2, "two sessions per address before login");

    // A client from another address still gets in, and so do many more once logged in:
    // logged-in sessions do not count against the cap on those not logged in.
    let mut users = Vec::new();
    for host in 0..20u8 {
        users.push(Ftp::login_from(v4(0, 9, host), server.addr).await);
    }
    assert_eq!(users.len(), 20);
    drop(held);
    drop(users);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_cap_over_all_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    let (lo, hi) = support::port_block_from(27_200, 4);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    config.max_unauthenticated = Some(5);
    config.max_unauthenticated_per_ip = 0;
    let server = TestServer::start(config).await;
    let mut held = Vec::new();
    let mut admitted = 0;
    for host in 0..12u8 {
        let (ftp, code) = greet_from(v4(0, 2, host), server.addr).await;
        admitted += usize::from(code == 220);
        held.push(ftp);
    }
    assert_eq!(admitted, 5);
    // A session that ends gives its place back.
    held.clear();
    let mut first = None;
    for _ in 0..(WAIT.as_millis() / 10) {
        let (ftp, code) = greet_from(v4(0, 3, 1), server.addr).await;
        if code == 220 {
            first = Some(ftp);
            break;
        }
        // The refused ones' sessions end asynchronously: wait for their slots to return.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _first = first.expect("a slot comes back once the flood closes");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prebound_start_skips_a_held_port_and_takes_it_back_later() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_tests(dir.path().to_path_buf());
    let (lo, hi) = support::port_block_from(27_300, 4);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    config.listener_mode = ListenerMode::Prebound;
    config.time_wait = Duration::from_millis(200);
    let busy = lo + 1;
    let holder = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, busy)).expect("hold a port");
    let server = TestServer::start(config).await;

    let mut ftp = Ftp::login(server.addr).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..24 {
        let port = ftp.pasv().await.port();
        assert_ne!(port, busy, "the held port is never offered");
        seen.insert(port);
    }
    assert_eq!(seen.len(), 3, "the other ports serve: {seen:?}");

    drop(holder);
    // Bounded by WAIT: each PASV either offers the port or keeps it out another time-wait.
    let back = tokio::time::timeout(WAIT, async { while ftp.pasv().await.port() != busy {} })
        .await
        .is_ok();
    assert!(back, "the port comes back once its holder lets it go");
    // And it serves: a transfer over it.
    drop(ftp);
    server.stop().await;
}
