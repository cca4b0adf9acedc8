//! pasvd's login defences against hostile clients, on loopback sockets: equal work for
//! unknown names, bounded password hashing, bans per address, the login deadline.

mod support;

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Argon2, Params};
use pasv_tools::clock;
use pasv_tools::server::Config;
use support::{connect_from, Ftp, TestServer, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An argon2id hash of `password` with `m_kib` KiB and one pass: real verifications, cheap
/// enough for debug builds.
fn hash(password: &[u8], m_kib: u32) -> String {
    let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
    Argon2::default()
        .hash_password_customized(
            password,
            None,
            None,
            Params::new(m_kib, 1, 1, None).unwrap(),
            &salt,
        )
        .unwrap()
        .to_string()
}

/// A server with the account `alice` (password `right`), anonymous off.
async fn start(root: &Path, m_kib: u32, tweak: impl FnOnce(&mut Config)) -> TestServer {
    let users = root.join("users.toml");
    fs::write(
        &users,
        format!(
            "[[user]]\nname = \"alice\"\npassword = \"{}\"\nroot = \"{}\"\n",
            hash(b"right", m_kib),
            root.display()
        ),
    )
    .unwrap();
    let mut config = Config::for_tests(root.to_path_buf());
    let (lo, hi) = support::port_block_from(26_700, 2);
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    config.users = Some(users);
    config.anonymous_enable = false;
    tweak(&mut config);
    TestServer::start(config).await
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// Connects from `from` and reads the greeting.
async fn connect(from: IpAddr, server: &TestServer) -> (Ftp, u16) {
    let stream = connect_from(from, server.addr).await.expect("connect");
    let (ftp, greeting) = Ftp::greeted(stream, server.addr).await;
    (ftp, greeting.code().get())
}

#[tokio::test]
async fn an_unknown_name_costs_the_same_verification_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 256, |_| {}).await;
    let (mut ftp, _) = Ftp::connect(server.addr).await;
    let known = ftp.expect("USER alice", 331).await;
    let known_fail = ftp.expect("PASS wrong", 530).await;
    assert_eq!(server.login.stats().verifications, 1);
    let unknown = ftp.expect("USER bob", 331).await;
    let unknown_fail = ftp.expect("PASS wrong", 530).await;
    // The same replies, and one argon2 run each: the name is not told apart.
    assert_eq!(known.text(), unknown.text());
    assert_eq!(known_fail.text(), unknown_fail.text());
    let stats = server.login.stats();
    assert_eq!((stats.verifications, stats.failures), (2, 2), "{stats:?}");
    // The dummy hash never lets an unknown name in, whatever the password (the session's
    // third failure closes it).
    ftp.expect("USER bob", 331).await;
    assert_eq!(ftp.cmd("PASS right").await.code().get(), 421);
    assert_eq!(server.login.stats().verifications, 3);
    server.stop().await;
}

#[tokio::test]
async fn fifty_parallel_passwords_run_at_most_one_verification_per_core() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB per verification: long enough (tens of ms in a debug build) for unbounded runs
    // to overlap.
    let server = start(dir.path(), 2048, |c| {
        c.max_login_failures = 1000;
        c.max_per_ip = 0;
    })
    .await;
    let mut sessions = Vec::new();
    for i in 0..50 {
        let (mut ftp, _) = Ftp::connect(server.addr).await;
        ftp.expect(if i % 2 == 0 { "USER alice" } else { "USER bob" }, 331)
            .await;
        sessions.push(ftp);
    }
    // Every PASS is on the wire before any reply is read.
    for ftp in &mut sessions {
        ftp.send_raw(b"PASS wrong\r\n").await;
    }
    for ftp in &mut sessions {
        assert_eq!(ftp.reply().await.code().get(), 530);
    }
    let stats = server.login.stats();
    assert_eq!(stats.verifications, 50, "{stats:?}");
    assert!(stats.max_concurrent_verifications >= 1, "{stats:?}");
    assert!(
        stats.max_concurrent_verifications <= stats.verification_limit,
        "{stats:?}"
    );
    // The queue drained: a right password still gets in.
    sessions[0].expect("USER alice", 331).await;
    sessions[0].expect("PASS right", 230).await;
    server.stop().await;
}

#[tokio::test]
async fn racing_sessions_get_no_more_guesses_than_the_count_then_the_address_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 256, |c| {
        c.max_login_failures = 3;
        c.ban_time = Duration::from_secs(3600);
        c.max_per_ip = 0;
    })
    .await;
    let attacker = loopback(2);
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let (mut ftp, code) = connect(attacker, &server).await;
        assert_eq!(code, 220);
        ftp.expect("USER alice", 331).await;
        sessions.push(ftp);
    }
    for ftp in &mut sessions {
        ftp.send_raw(b"PASS guess\r\n").await;
    }
    let mut codes = Vec::new();
    for ftp in &mut sessions {
        codes.push(ftp.reply().await.code().get());
    }
    // Three guesses verified (the third bans); the other seventeen waited and were refused.
    let failed: Vec<usize> = (0..codes.len()).filter(|&i| codes[i] == 530).collect();
    let refused = codes.iter().filter(|&&c| c == 421).count();
    assert_eq!((failed.len(), refused), (2, 18), "{codes:?}");
    let stats = server.login.stats();
    assert_eq!(
        (stats.verifications, stats.failures, stats.bans),
        (3, 3, 1),
        "{stats:?}"
    );
    // A session of the banned address that still holds its connection cannot try again.
    let survivor = &mut sessions[failed[0]];
    survivor.expect("USER alice", 331).await;
    assert_eq!(survivor.cmd("PASS right").await.code().get(), 421);
    assert!(survivor.closed().await);
    // A thousand new connections from the banned address: each refused at connect.
    for _ in 0..1000 {
        let (mut ftp, code) = connect(attacker, &server).await;
        assert_eq!(code, 421);
        assert!(ftp.closed().await);
    }
    let stats = server.login.stats();
    assert_eq!(stats.refused_connections, 1000, "{stats:?}");
    assert_eq!(stats.verifications, 3, "{stats:?}");
    // Another address is served, and logs in.
    let (mut other, code) = connect(loopback(3), &server).await;
    assert_eq!(code, 220);
    other.expect("USER alice", 331).await;
    other.expect("PASS right", 230).await;
    server.stop().await;
}

#[tokio::test]
async fn a_silent_session_is_closed_at_the_login_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 256, |c| {
        c.login_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut ftp, _) = Ftp::connect(server.addr).await;
    let reply = ftp.reply().await;
    assert_eq!(reply.code().get(), 421, "{reply}");
    assert!(ftp.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn noop_does_not_keep_an_unauthenticated_session_alive() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 256, |c| {
        c.login_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let (mut ftp, _) = Ftp::connect(server.addr).await;
    let end = clock::now() + WAIT;
    let mut noops = 0u32;
    let last = loop {
        let reply = ftp.cmd("NOOP").await;
        if reply.code().get() != 200 || clock::now() >= end {
            break reply;
        }
        noops += 1;
    };
    assert_eq!(last.code().get(), 421, "after {noops} NOOPs: {last}");
    assert!(ftp.closed().await);
    server.stop().await;
}

#[tokio::test]
async fn a_flood_of_pipelined_commands_does_not_hold_off_the_login_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let timeout = Duration::from_millis(300);
    let server = start(dir.path(), 256, |c| c.login_timeout = timeout).await;
    let connected = clock::now();
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    // The writer never waits for a reply: the server always has input to read.
    let flood = tokio::spawn(async move {
        let burst = b"NOOP\r\n".repeat(1000);
        for _ in 0..100_000 {
            if writer.write_all(&burst).await.is_err() {
                return true;
            }
        }
        false
    });
    // Replies are read (and dropped) until the server ends the connection. Its 421 may not
    // arrive: closed with input unread, the socket is reset and its queued replies dropped.
    let end = clock::now() + WAIT;
    let mut buf = vec![0u8; 64 * 1024];
    let mut replies = 0usize;
    loop {
        let read = tokio::time::timeout_at(end, reader.read(&mut buf))
            .await
            .expect("the server ends the session in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => replies += n,
        }
    }
    assert!(clock::now() >= connected + timeout);
    assert!(replies > 0);
    // Once closed, the flood's writes fail: it stopped, not ran out.
    assert!(flood.await.unwrap());
    server.stop().await;
}

#[tokio::test]
async fn a_logged_in_session_outlives_the_login_timeout_until_rein() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), 256, |c| {
        c.login_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut user, _) = Ftp::connect(server.addr).await;
    user.expect("USER alice", 331).await;
    user.expect("PASS right", 230).await;
    // A session opened after it is closed at its deadline: the first one's has passed too.
    let (mut late, _) = Ftp::connect(server.addr).await;
    assert_eq!(late.reply().await.code().get(), 421);
    user.expect("NOOP", 200).await;
    user.expect("PWD", 257).await;
    // REIN makes it unauthenticated again, with a fresh deadline.
    user.expect("REIN", 220).await;
    assert_eq!(user.reply().await.code().get(), 421);
    assert!(user.closed().await);
    server.stop().await;
}
