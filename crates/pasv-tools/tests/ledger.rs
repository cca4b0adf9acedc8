//! The pool's ledger against the kernel's, over real sockets on loopback: ports the kernel
//! holds in TIME_WAIT, and what the server tells its clients about them.

mod support;

use std::fs;
use std::time::Duration;

use pasv_pool::QuarantineScope;
use pasv_tools::server::kernel;
use pasv_tools::server::{Config, ListenerMode};
use support::{Ftp, TestServer};

/// A configuration for `root` on `n` ports of this binary's block (29000-29499; ports from
/// 29100 on are chosen by the tests themselves).
fn config(root: &std::path::Path, n: u16) -> Config {
    let mut config = Config::for_tests(root.to_path_buf());
    let (lo, hi) = support::port_block_from(29_000, n);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    config
}

/// `--no-reuseaddr --quarantine none` on three ports: RETRs (the server closes, so its
/// passive port goes to TIME_WAIT) until a PASV is refused. The binds the kernel refuses
/// put their ports out of the pool for the kernel's remaining time, and the 425 says so:
/// close to the kernel's 60 s, not a one-second guess.
#[tokio::test]
async fn a_bind_refused_by_time_wait_is_hinted_with_the_kernels_time() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let mut c = config(dir.path(), 3);
    // Three ports the kernel holds nothing on (an earlier run's TIME_WAIT lasts a minute).
    let table = kernel::time_wait_sockets().expect("kernel tables");
    let lo = (0..40)
        .map(|k| c.pasv_min_port + 100 + 5 * k)
        .find(|&lo| kernel::on_ports(&table, "127.0.0.1".parse().unwrap(), (lo, lo + 2)).is_empty())
        .expect("three ports free of TIME_WAIT");
    (c.pasv_min_port, c.pasv_max_port) = (lo, lo + 2);
    c.listener_mode = ListenerMode::PerLease;
    c.no_reuseaddr = true;
    c.quarantine = Some(QuarantineScope::None);
    c.pasv_wait = Duration::from_millis(100);
    let ports = (c.pasv_min_port, c.pasv_max_port);
    let server = TestServer::start(c).await;
    let mut ftp = Ftp::login(server.addr).await;
    let mut served = 0;
    let refusal = loop {
        assert!(served <= 6, "no refusal after {served} transfers");
        ftp.send_raw(b"PASV\r\n").await;
        let reply = ftp.reply().await;
        if reply.code().get() == 425 {
            break reply;
        }
        assert_eq!(reply.code().get(), 227, "{reply}");
        let addr = pasv_protocol_addr(&reply);
        let mut data = support::connect_data(addr).await;
        ftp.expect("RETR f", 150).await;
        assert_eq!(support::read_all(&mut data).await, b"data");
        drop(data);
        assert_eq!(ftp.reply().await.code().get(), 226);
        served += 1;
    };
    // Every port was served once before the kernel refused them all.
    assert_eq!(served, 3, "{refusal}");
    let table = kernel::time_wait_sockets().expect("kernel tables");
    let held = kernel::on_ports(&table, "127.0.0.1".parse().unwrap(), ports);
    assert_eq!(held.len(), 3, "{held:?}");
    let shortest = held.values().map(|p| p.longest).min().unwrap();
    let hint = refusal.retry_after().expect("a retry hint");
    assert!(
        hint >= Duration::from_secs(50) && hint <= shortest + Duration::from_secs(1),
        "hint {hint:?}, kernel {shortest:?}: {refusal}"
    );
    server.stop().await;
}

/// The data address of a 227 reply.
fn pasv_protocol_addr(reply: &pasv_protocol::Reply) -> std::net::SocketAddr {
    let text = reply.to_string();
    let inner = text
        .split_once('(')
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(i, _)| i)
        .expect("227 (h1,h2,h3,h4,p1,p2)");
    let n: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse().unwrap())
        .collect();
    let ip = std::net::Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
    std::net::SocketAddr::new(ip.into(), n[4] * 256 + n[5])
}
