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

/// `n` consecutive ports of this binary's block from `from` on that the kernel holds
/// nothing on (an earlier run's TIME_WAIT lasts a minute), as a range.
fn quiet_ports(from: u16, n: u16) -> (u16, u16) {
    let table = kernel::time_wait_sockets().expect("kernel tables");
    let foreign = kernel::foreign_sockets().expect("kernel tables");
    let lo = (0..40)
        .map(|k| from + (n + 2) * k)
        .find(|&lo| {
            kernel::on_ports(&table, "127.0.0.1".parse().unwrap(), (lo, lo + n - 1)).is_empty()
                && !foreign.iter().any(|f| (lo..lo + n).contains(&f.port()))
        })
        .expect("ports free of TIME_WAIT");
    (lo, lo + n - 1)
}

/// A server on `ports` with the account `root` (password `secret`, `admin = true`) besides
/// anonymous.
async fn admin_server(
    root: &std::path::Path,
    ports: (u16, u16),
    tweak: impl FnOnce(&mut Config),
) -> TestServer {
    let users = root.join("users.toml");
    // argon2id with 64 KiB and one pass: a real verification, cheap in debug builds.
    let hash = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"saltsaltsaltsalt").unwrap();
        let params = argon2::Params::new(64, 1, 1, None).unwrap();
        argon2::Argon2::default()
            .hash_password_customized(b"secret", None, None, params, &salt)
            .unwrap()
            .to_string()
    };
    fs::write(
        &users,
        format!("[[user]]\nname = \"root\"\npassword = \"{hash}\"\nwrite = true\nadmin = true\n[[user]]\nname = \"bob\"\npassword = \"{hash}\"\nwrite = true\n"),
    )
    .unwrap();
    let mut c = Config::for_tests(root.to_path_buf());
    (c.pasv_min_port, c.pasv_max_port) = ports;
    c.users = Some(users);
    tweak(&mut c);
    TestServer::start(c).await
}

/// Logs in as `name` (password `secret`).
async fn login_as(server: &TestServer, name: &str) -> Ftp {
    let (mut ftp, greeting) = Ftp::connect(server.addr).await;
    assert_eq!(greeting.code().get(), 220);
    ftp.expect(&format!("USER {name}"), 331).await;
    ftp.expect("PASS secret", 230).await;
    ftp.expect("TYPE I", 200).await;
    ftp
}

/// `SITE POOL`'s two disagreement counts, and its text.
async fn site_pool(ftp: &mut Ftp) -> ((u32, u32), String) {
    let reply = ftp.cmd("SITE POOL").await;
    assert_eq!(reply.code().get(), 200, "{reply}");
    let text = reply.to_string();
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Disagreements: "))
        .unwrap_or_else(|| panic!("no disagreement line: {text}"));
    let n: Vec<u32> = line
        .split(',')
        .map(|part| part.split_whitespace().next().unwrap().parse().unwrap())
        .collect();
    ((n[0], n[1]), text)
}

/// Downloads (the server closes: TIME_WAIT on its passive port), uploads (the client
/// closes: TIME_WAIT on the client's side) and listings, under each quarantine scope that
/// models the kernel with `SO_REUSEADDR`, in both listener modes: in steady state the
/// ledger and the kernel agree on every port. Only an administrator may ask.
#[tokio::test]
async fn after_transfers_the_ledger_agrees_with_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let cases = [
        (QuarantineScope::Port, ListenerMode::PerLease, false),
        (QuarantineScope::Peer, ListenerMode::Prebound, false),
        (QuarantineScope::Port, ListenerMode::PerLease, true),
    ];
    for (i, (scope, mode, no_reuseaddr)) in cases.into_iter().enumerate() {
        let ports = quiet_ports(29_200 + 40 * i as u16, 6);
        let server = admin_server(dir.path(), ports, |c| {
            c.quarantine = Some(scope);
            c.listener_mode = mode;
            c.no_reuseaddr = no_reuseaddr;
        })
        .await;
        let mut anon = Ftp::login(server.addr).await;
        let denied = anon.cmd("SITE POOL").await;
        assert_eq!(denied.code().get(), 550, "{denied}");
        let mut bob = login_as(&server, "bob").await;
        assert_eq!(bob.cmd("SITE POOL").await.code().get(), 550);
        let mut root = login_as(&server, "root").await;
        for k in 0..2 {
            assert_eq!(root.retr("f").await, b"data");
            let done = root.upload(&format!("STOR u{k}"), b"up").await;
            assert_eq!(done.code().get(), 226, "{done}");
        }
        root.listing("NLST").await;
        let (counts, text) = site_pool(&mut root).await;
        assert_eq!(counts, (0, 0), "{scope:?} {mode:?}: {text}");
        // The server closed three data connections: the kernel holds them, and so does the
        // pool (under scope peer, for the client only).
        let table = kernel::time_wait_sockets().expect("kernel tables");
        let held = kernel::on_ports(&table, "127.0.0.1".parse().unwrap(), ports);
        assert_eq!(held.len(), 3, "{scope:?} {mode:?}: {held:?}\n{text}");
        assert!(
            text.contains("TIME_WAIT sockets on the passive ports"),
            "{text}"
        );
        // The doctor on the host sees the same three, and the server's agreement.
        let (code, report) = doctor(&server, ports).await;
        assert_eq!(code, 0, "{report}");
        assert!(
            report.contains("3 TIME_WAIT sockets on 3 ports"),
            "{report}"
        );
        assert!(
            report.contains("0 offered_while_held, 0 withheld_while_free"),
            "{report}"
        );
        server.stop().await;
    }
}

/// Another program's listener on a passive port: the pool would offer it, the kernel would
/// refuse its bind. `SITE POOL` names the port.
#[tokio::test]
async fn a_foreign_listener_on_a_passive_port_is_a_disagreement() {
    let dir = tempfile::tempdir().unwrap();
    let ports = quiet_ports(29_350, 3);
    let server = admin_server(dir.path(), ports, |c| {
        c.listener_mode = ListenerMode::PerLease;
        c.quarantine = Some(QuarantineScope::Port);
    })
    .await;
    let mut root = login_as(&server, "root").await;
    // No SITE POOL before the listener: reports are cached for 5 s, and the first check
    // must be the one that sees it.
    // A listener in another process (one in this process would be the server's own).
    let port = ports.0 + 1;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[1])))\n\
             s.listen()\nprint('ok',flush=True)\nsys.stdin.read()",
            &port.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ok");
    let (counts, text) = site_pool(&mut root).await;
    let (code, report) = doctor(&server, ports).await;
    drop(child.stdin.take()); // ends the child
    child.wait().unwrap();
    assert_eq!(counts, (1, 0), "{text}");
    let named = format!("127.0.0.1:{port} kernel -+foreign pool - leases 0 offered_while_held");
    assert!(text.contains(&named), "{text}");
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains(&format!("port {port}: 0 TIME_WAIT")),
        "{report}"
    );
    assert!(report.contains("1 offered_while_held"), "{report}");
    server.stop().await;
}

/// Runs `pasv doctor` on `ports` asking `server`'s SITE POOL as `root`: its exit code and
/// output.
async fn doctor(server: &TestServer, ports: (u16, u16)) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pasv"))
        .args([
            "doctor",
            "--ports",
            &format!("{}-{}", ports.0, ports.1),
            "--address",
            "127.0.0.1",
            "--server",
            &format!("ftp://root:secret@{}/", server.addr),
        ])
        .output()
        .await
        .expect("pasv runs");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
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

/// Every port leased, none cooling: the 425's hint comes from the hold times measured so
/// far, not a fixed guess. One port; two leases end at the accept timeout (1.5 s each), so
/// a third, just taken, is expected to end within 1.5 s: the refused client is told so
/// (hints are at least 1 s).
#[tokio::test]
async fn the_all_leased_hint_comes_from_measured_hold_times() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let ports = quiet_ports(29_400, 1);
    let mut c = Config::for_tests(dir.path().to_path_buf());
    (c.pasv_min_port, c.pasv_max_port) = ports;
    c.quarantine = Some(QuarantineScope::Port);
    c.accept_timeout = Duration::from_millis(1_500);
    c.pasv_wait = Duration::ZERO;
    let server = TestServer::start(c).await;
    let mut a = Ftp::login(server.addr).await;
    let mut b = Ftp::login(server.addr).await;
    for _ in 0..2 {
        a.pasv().await;
        a.expect("RETR f", 150).await;
        assert_eq!(a.reply().await.code().get(), 425);
    }
    a.pasv().await;
    let refused = b.cmd("PASV").await;
    assert_eq!(refused.code().get(), 425, "{refused}");
    let hint = refused.retry_after().expect("a retry hint");
    assert!(
        hint >= Duration::from_millis(1_000) && hint <= Duration::from_millis(1_600),
        "{refused}"
    );
    server.stop().await;
}

/// Another program's socket on a per-lease port: no TIME_WAIT explains the refused bind, so
/// the port leaves the pool for a short back-off (1 s) that doubles with each refusal in a
/// row, not for a whole time-wait, and serves again soon after the other socket is gone.
#[tokio::test]
async fn a_port_another_program_holds_backs_off_briefly_and_growing() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("f"), b"data").unwrap();
    let ports = quiet_ports(29_450, 1);
    let foreign = std::net::TcpListener::bind(("127.0.0.1", ports.0)).expect("a free port");
    let mut c = Config::for_tests(dir.path().to_path_buf());
    (c.pasv_min_port, c.pasv_max_port) = ports;
    c.listener_mode = ListenerMode::PerLease;
    c.pasv_wait = Duration::from_millis(100);
    let server = TestServer::start(c).await;
    let mut ftp = Ftp::login(server.addr).await;
    let first = ftp.cmd("PASV").await;
    assert_eq!(first.code().get(), 425, "{first}");
    let hint = first.retry_after().expect("a retry hint");
    assert!(hint <= Duration::from_secs(1), "{first}");
    // Asked again and again (each PASV waits 100 ms in the queue) until the port has come
    // back, been refused a second time and gone out for longer: 2 s.
    let mut second = None;
    for _ in 0..40 {
        let reply = ftp.cmd("PASV").await;
        assert_eq!(reply.code().get(), 425, "{reply}");
        let hint = reply.retry_after().expect("a retry hint");
        if hint > Duration::from_secs(1) {
            second = Some((reply, hint));
            break;
        }
    }
    let (reply, hint) = second.expect("a second, longer back-off within 4 s");
    assert!(hint <= Duration::from_secs(2), "{reply}");
    // The other program lets go: the port serves within its back-off.
    drop(foreign);
    let mut served = None;
    for _ in 0..40 {
        let reply = ftp.cmd("PASV").await;
        if reply.code().get() == 227 {
            served = Some(reply);
            break;
        }
        assert_eq!(reply.code().get(), 425, "{reply}");
    }
    let reply = served.expect("the port serves again within 4 s");
    let mut data = support::connect_data(pasv_protocol_addr(&reply)).await;
    ftp.expect("RETR f", 150).await;
    assert_eq!(support::read_all(&mut data).await, b"data");
    drop(data);
    assert_eq!(ftp.reply().await.code().get(), 226);
    server.stop().await;
}
