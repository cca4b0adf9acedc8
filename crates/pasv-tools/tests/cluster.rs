//! Two pasvd nodes behind HAProxy, in both modes docs/DEPLOYMENT.md describes. HAProxy in
//! TCP mode sends a PROXY v2 header to the node it picks for each control connection; the
//! nodes (127.0.0.2 and 127.0.0.3) serve one directory. The client is this test, bound to
//! 127.0.0.9 (and 127.0.0.10 for a second client).
//!
//! - Direct data (`two_nodes_behind_haproxy_with_proxy_v2`): each node advertises its own
//!   address and data connections go straight to it (passive ports 28000-28009 and
//!   28010-28019).
//! - Data through the balancer (`data_connections_through_haproxy_with_their_own_header`):
//!   the nodes advertise the balancer's address; HAProxy forwards each node's passive range
//!   (28100-28109 to 127.0.0.2, 28110-28119 to 127.0.0.3) with `send-proxy-v2`, and the
//!   nodes run with `--proxy-protocol-data`.
//!
//! Needs the `haproxy` binary (Debian package `haproxy`, installed by `.ci/run`); without it
//! the tests print why and pass without running.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use support::{connect_from, pattern, read_all, Ftp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// A pasvd node on `ip`, with its own passive range, trusting PROXY headers from 127.0.0.1,
/// with `extra` arguments; returns the process and its control address once it listens.
fn start_node(ip: IpAddr, ports: (u16, u16), root: &Path, extra: &[&str]) -> (Process, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pasvd"))
        .args([
            "--listen",
            &format!("{ip}:0"),
            "--pasv-address",
            &ip.to_string(),
        ])
        .args(extra)
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

/// A listening socket on 127.0.0.1 (port 0: any) for HAProxy to take over (`bind fd@N`):
/// its address is known and it takes connections (into its backlog) before HAProxy runs, so
/// nothing has to wait for HAProxy to be ready.
fn front_listener(port: u16) -> std::net::TcpListener {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("binding the balancer's 127.0.0.1:{port}: {e}"));
    // Inherited by the child: clear close-on-exec on this one descriptor.
    rustix::io::fcntl_setfd(&listener, rustix::io::FdFlags::empty()).unwrap();
    listener
}

/// The control part of the HAProxy configuration: the frontend on `fd`, round robin over
/// the two nodes with PROXY v2 and health checks that send one too.
fn control_config(fd: i32, a: SocketAddr, b: SocketAddr) -> String {
    format!(
        "global\n    maxconn 256\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 60s\n    \
         timeout server 60s\n    retries 3\n    option redispatch\n\
         frontend ftp\n    bind fd@{fd}\n    default_backend nodes\n\
         backend nodes\n    balance roundrobin\n    source 127.0.0.1\n    \
         server a {a} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2\n    \
         server b {b} send-proxy-v2 check check-send-proxy inter 200ms fall 1 rise 2\n"
    )
}

/// Runs HAProxy with `config`; `listeners` (inherited as `fd@N`) are closed here once it
/// has them.
fn run_haproxy(
    binary: &Path,
    dir: &Path,
    config: &str,
    listeners: Vec<std::net::TcpListener>,
) -> Process {
    let path = dir.join("haproxy.cfg");
    fs::write(&path, config).unwrap();
    let child = Command::new(binary)
        .args(["-db", "-q", "-f"])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .expect("haproxy starts");
    drop(listeners);
    Process(child)
}

/// HAProxy in front of the two nodes' control listeners; data goes straight to the nodes.
fn start_haproxy(binary: &Path, dir: &Path, a: SocketAddr, b: SocketAddr) -> (Process, SocketAddr) {
    let listener = front_listener(0);
    let front = listener.local_addr().unwrap();
    let config = control_config(listener.as_raw_fd(), a, b);
    (run_haproxy(binary, dir, &config, vec![listener]), front)
}

/// HAProxy in front of the two nodes' control listeners and of their passive ranges: one
/// frontend per node's range, on the same ports of 127.0.0.1, forwarded with a PROXY v2
/// header to the same port of the node (a `server` line without a port keeps the
/// destination port).
fn start_haproxy_with_data(
    binary: &Path,
    dir: &Path,
    nodes: [(SocketAddr, (u16, u16)); 2],
) -> (Process, SocketAddr) {
    let control = front_listener(0);
    let front = control.local_addr().unwrap();
    let mut config = control_config(control.as_raw_fd(), nodes[0].0, nodes[1].0);
    let mut listeners = vec![control];
    for (name, (node, (lo, hi))) in ["a", "b"].into_iter().zip(nodes) {
        config.push_str(&format!("frontend data_{name}\n"));
        for port in lo..=hi {
            let listener = front_listener(port);
            config.push_str(&format!("    bind fd@{}\n", listener.as_raw_fd()));
            listeners.push(listener);
        }
        config.push_str(&format!(
            "    default_backend data_{name}\n\
             backend data_{name}\n    source 127.0.0.1\n    \
             server {name} {} send-proxy-v2\n",
            node.ip()
        ));
    }
    (run_haproxy(binary, dir, &config, listeners), front)
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
    let (mut node_a, a) = start_node(NODE_A, (28_000, 28_009), &root, &[]);
    let (_node_b, b) = start_node(NODE_B, (28_010, 28_019), &root, &[]);
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

/// The data-through-the-balancer mode: the nodes advertise the balancer's address and run
/// with `--proxy-protocol-data`; HAProxy forwards each node's passive range with
/// `send-proxy-v2`. Every transfer (PASV and EPSV) completes through HAProxy on both nodes,
/// the nodes check data connections against the client the data header names (a
/// connection from another client to a leased port is refused and the real client's is
/// served), and PORT still needs the real client's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_connections_through_haproxy_with_their_own_header() {
    let Some(binary) = haproxy() else {
        println!(
            "SKIPPED data_connections_through_haproxy_with_their_own_header: no haproxy \
             binary (apt-get install -y haproxy)"
        );
        return;
    };
    const RANGE_A: (u16, u16) = (28_100, 28_109);
    const RANGE_B: (u16, u16) = (28_110, 28_119);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    fs::create_dir(&root).unwrap();
    let through = [
        "--pasv-public-address",
        "127.0.0.1",
        "--proxy-protocol-data",
    ];
    let (_node_a, a) = start_node(NODE_A, RANGE_A, &root, &through);
    let (_node_b, b) = start_node(NODE_B, RANGE_B, &root, &through);
    let (_haproxy, front) =
        start_haproxy_with_data(&binary, dir.path(), [(a, RANGE_A), (b, RANGE_B)]);
    let node_of = |port: u16| {
        if (RANGE_A.0..=RANGE_A.1).contains(&port) {
            NODE_A
        } else {
            assert!((RANGE_B.0..=RANGE_B.1).contains(&port), "port {port}");
            NODE_B
        }
    };

    let mut nodes = Vec::new();
    for i in 0..6u8 {
        let (mut ftp, code) = session(front, CLIENT).await;
        assert_eq!(code, 220, "session {i}");
        let epsv = i % 2 == 1;
        let name = format!("up{i}.bin");
        let body = pattern(150_000 + usize::from(i) * 1000, i);

        // Upload: the advertised address is the balancer's.
        let addr = if epsv {
            ftp.epsv().await
        } else {
            ftp.pasv().await
        };
        assert_eq!(
            addr.ip(),
            front.ip(),
            "session {i}: the balancer is advertised"
        );
        nodes.push(node_of(addr.port()));
        let mut conn = connect_from(CLIENT, addr).await.expect("data connect");
        ftp.expect(&format!("STOR {name}"), 150).await;
        conn.write_all(&body).await.unwrap();
        conn.shutdown().await.unwrap();
        drop(conn);
        assert_eq!(ftp.reply().await.code().get(), 226, "STOR {name}");

        // Download, with another client's connection to the same leased port first: the
        // node sees OTHER in its header and refuses it, then serves CLIENT's.
        let addr = if epsv {
            ftp.epsv().await
        } else {
            ftp.pasv().await
        };
        let mut foreign = connect_from(OTHER, addr).await.expect("foreign connect");
        ftp.expect(&format!("RETR {name}"), 150).await;
        let mut sink = Vec::new();
        let taken = tokio::time::timeout(support::WAIT, foreign.read_to_end(&mut sink))
            .await
            .expect("the foreign connection is closed in time");
        assert!(
            taken.is_err() || sink.is_empty(),
            "session {i}: {} bytes went to another client",
            sink.len()
        );
        let mut conn = connect_from(CLIENT, addr).await.expect("data connect");
        assert_eq!(read_all(&mut conn).await, body, "session {i}");
        assert_eq!(ftp.reply().await.code().get(), 226, "RETR {name}");

        // The node knows the real client for PORT too.
        ftp.expect("PORT 127,0,0,1,200,1", 501).await;
        ftp.expect("PORT 127,0,0,9,200,1", 200).await;
        ftp.expect("QUIT", 221).await;
    }
    assert!(
        nodes.contains(&NODE_A) && nodes.contains(&NODE_B),
        "the balancer used both nodes: {nodes:?}"
    );
    for i in 0..6u8 {
        let body = fs::read(root.join(format!("up{i}.bin"))).unwrap();
        assert_eq!(body, pattern(150_000 + usize::from(i) * 1000, i));
    }
}
