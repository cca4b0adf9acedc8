//! Two pasvd nodes behind HAProxy, as docs/DEPLOYMENT.md sets them up: HAProxy in TCP mode
//! sends a PROXY v2 header to the node it picks for each control connection; each node
//! advertises its own address, and data connections go straight to the node. The nodes
//! (127.0.0.2 and 127.0.0.3, passive ports 28000-28009 and 28010-28019) serve one directory.
//! The client is this test, bound to 127.0.0.9 (and 127.0.0.10 for a second client).
//!
//! Needs the `haproxy` binary (Debian package `haproxy`, installed by `.ci/run`); without it
//! the test prints why and passes without running.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::{connect_from, pattern, read_all, Ftp};
use tokio::io::AsyncWriteExt;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
const NODE_A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const NODE_B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A pasvd node on `ip`, with its own passive range, trusting PROXY headers from 127.0.0.1;
/// returns the process and its control address once it listens.
fn start_node(ip: IpAddr, ports: (u16, u16), root: &Path) -> (Process, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pasvd"))
        .args([
            "--listen",
            &format!("{ip}:0"),
            "--pasv-address",
            &ip.to_string(),
        ])
        .args(["--pasv-min-port", &ports.0.to_string()])
        .args(["--pasv-max-port", &ports.1.to_string()])
        .args(["--proxy-protocol", "--proxy-from", "127.0.0.1/32"])
        .args(["--anonymous-write", "--max-per-ip", "2"])
        .arg("--root")
        .arg(root)
        .env("PASVD_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("pasvd starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    (Process(child), addr)
}

/// The haproxy binary, if installed.
fn haproxy() -> Option<PathBuf> {
    ["haproxy", "/usr/sbin/haproxy"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| Command::new(p).arg("-v").output().is_ok())
}

/// Starts HAProxy on a listening socket this test binds and hands down (`bind fd@N`): the
/// frontend's address is known and takes connections (into its backlog) before HAProxy
/// runs, so nothing has to wait for HAProxy to be ready.
fn start_haproxy(binary: &Path, dir: &Path, a: SocketAddr, b: SocketAddr) -> (Process, SocketAddr) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let front = listener.local_addr().unwrap();
    let config = format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 3\n    option redispatch\n\
         frontend ftp\n    bind fd@{fd}\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n    source 127.0.0.1\n    \
         server a {a} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2\n    \
         server b {b} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2\n",
        fd = listener.as_raw_fd()
    );
    let path = dir.join("haproxy.cfg");
    fs::write(&path, config).unwrap();
    // Inherited by the child: clear close-on-exec on this one descriptor.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    let child = Command::new(binary)
        .args(["-db", "-q", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    drop(listener);
    (Process(child), front)
}

/// A logged-in session through the balancer from `from`.
async fn session(front: SocketAddr, from: IpAddr) -> (Ftp, u16) {
    let stream = connect_from(from, front).await.expect("control connect");
    let (mut ftp, greeting) = Ftp::greeted(stream, front).await;
    let code = greeting.code().get();
    if code == 220 {
        ftp.expect("USER anonymous", 331).await;
        ftp.expect("PASS guest@example.invalid", 230).await;
        ftp.expect("TYPE I", 200).await;
    }
    (ftp, code)
}

/// PASV; the data connection goes straight to the node the reply names, from `from`.
/// Returns it and the node's address.
async fn data(ftp: &mut Ftp, from: IpAddr) -> (tokio::net::TcpStream, IpAddr) {
    let addr = ftp.pasv().await;
    let conn = connect_from(from, addr).await.expect("data connect");
    (conn, addr.ip())
}

async fn upload(ftp: &mut Ftp, name: &str, body: &[u8]) -> IpAddr {
    let (mut conn, node) = data(ftp, CLIENT).await;
    ftp.expect(&format!("STOR {name}"), 150).await;
    conn.write_all(body).await.unwrap();
    conn.shutdown().await.unwrap();
    drop(conn);
    assert_eq!(ftp.reply().await.code().get(), 226, "STOR {name} on {node}");
    node
}

async fn download(ftp: &mut Ftp, name: &str) -> Vec<u8> {
    let (mut conn, _) = data(ftp, CLIENT).await;
    ftp.expect(&format!("RETR {name}"), 150).await;
    let body = read_all(&mut conn).await;
    assert_eq!(ftp.reply().await.code().get(), 226, "RETR {name}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_behind_haproxy_with_proxy_v2() {
    let Some(binary) = haproxy() else {
        println!(
            "SKIPPED two_nodes_behind_haproxy_with_proxy_v2: no haproxy binary \
             (apt-get install -y haproxy)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let (mut node_a, a) = start_node(NODE_A, (28_000, 28_009), &root);
    let (_node_b, b) = start_node(NODE_B, (28_010, 28_019), &root);
    let (_haproxy, front) = start_haproxy(&binary, dir.path(), a, b);

    // Logins, uploads and downloads, one session after another: every transfer completes,
    // on both nodes, and each node sees the real client (its data connection from 127.0.0.9
    // is the one accepted, PORT must name 127.0.0.9, not the balancer's 127.0.0.1).
    let mut nodes = Vec::new();
    let mut committed = Vec::new();
    for i in 0..6u8 {
        let (mut ftp, code) = session(front, CLIENT).await;
        assert_eq!(code, 220, "session {i}");
        let name = format!("up{i}.bin");
        let body = pattern(200_000 + usize::from(i) * 1000, i);
        nodes.push(upload(&mut ftp, &name, &body).await);
        committed.push((name.clone(), body.clone()));
        assert_eq!(download(&mut ftp, &name).await, body, "session {i}");
        ftp.expect("PORT 127,0,0,1,200,1", 501).await;
        ftp.expect("PORT 127,0,0,9,200,1", 200).await;
        ftp.expect("QUIT", 221).await;
    }
    assert!(
        nodes.contains(&NODE_A) && nodes.contains(&NODE_B),
        "the balancer used both nodes: {nodes:?}"
    );

    // max_per_ip = 2 on each node holds for the real client across the balancer: of six
    // sessions from 127.0.0.9, four are admitted (two per node) and two refused, while
    // another client through the same balancer is still admitted.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let (ftp, code) = session(front, CLIENT).await;
        match code {
            220 => held.push(ftp),
            421 => refused += 1,
            other => panic!("greeting {other}"),
        }
    }
    assert_eq!((held.len(), refused), (4, 2));
    let (mut other, code) = session(front, OTHER).await;
    assert_eq!(code, 220, "another client is admitted");
    other.expect("QUIT", 221).await;
    drop(held);

    // An upload in flight on node A when it is killed: no committed upload is lost, the
    // unfinished one leaves no file, and node B goes on serving every new session.
    let mut in_flight = None;
    for _ in 0..4 {
        let (mut ftp, code) = session(front, CLIENT).await;
        if code != 220 {
            // A session of the batch above not yet gone from its node: try the next.
            continue;
        }
        let (mut conn, node) = data(&mut ftp, CLIENT).await;
        if node == NODE_A {
            ftp.expect("STOR unfinished.bin", 150).await;
            conn.write_all(&pattern(500_000, 9)).await.unwrap();
            in_flight = Some((ftp, conn));
            break;
        }
        ftp.expect("QUIT", 221).await;
    }
    let (_ftp, _conn) = in_flight.expect("a session on node A");
    node_a.0.kill().unwrap();
    node_a.0.wait().unwrap();
    for (name, body) in &committed {
        assert_eq!(&fs::read(root.join(name)).unwrap(), body, "{name}");
    }
    assert!(!root.join("unfinished.bin").exists());
    for i in 0..4u8 {
        let (mut ftp, code) = session(front, CLIENT).await;
        assert_eq!(code, 220, "after the stop, session {i}");
        let name = format!("after{i}.bin");
        let body = pattern(100_000, 20 + i);
        assert_eq!(upload(&mut ftp, &name, &body).await, NODE_B);
        let (first, first_body) = &committed[usize::from(i)];
        assert_eq!(&download(&mut ftp, first).await, first_body);
        ftp.expect("QUIT", 221).await;
    }
    let names: Vec<String> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("up") || n.starts_with("after")),
        "{names:?}"
    );
}
