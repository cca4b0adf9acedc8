//! Hostile FTPS tests against the pasvd binary on loopback: each test drives a real
//! attacker (Python's `ssl` module, as a script on stdin) and asserts what a correct server
//! must do. A test that fails shows a finding of the FTPS review.
//!
//! A test prints why and passes when python3 is missing.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

mod ftps_daemon;
use ftps_daemon::Pasvd;

/// Passive ports of this test binary: 31500 on.
const PORTS: u16 = 31_500;

fn have_python() -> bool {
    ftps_daemon::have("python3")
}

/// Runs `script` with python3, arguments `args`; returns its stdout (stderr is shown).
fn python(script: &str, args: &[String]) -> String {
    let mut child = Command::new("python3")
        .arg("-")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("script");
    let output = child.wait_with_output().expect("python3 runs");
    let out = String::from_utf8_lossy(&output.stdout).into_owned();
    eprintln!("python3 said:\n{out}");
    assert!(output.status.success(), "attacker script failed: {out}");
    out
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

// ---- 1. STARTTLS command injection through the transfer queue ----

/// A man in the middle on the plaintext control connection (tls_required = none, the
/// default) pipelines, during a running transfer, `REIN`, `AUTH TLS` and commands of its
/// choosing. The commands are queued behind the transfer; after it, REIN and AUTH run, and
/// AUTH clears the undecoded input but not the queue: the plaintext commands run as if they
/// had come through TLS, and their replies are the first the TLS client reads (it takes them
/// for the replies to its own USER/PASS: the victim ends up in the attacker's account).
const REIN_INJECTION: &str = r#"
import socket, ssl, sys, re
port, cafile = int(sys.argv[1]), sys.argv[2]
s = socket.create_connection(('127.0.0.1', port), timeout=20)
f = s.makefile('rb')
def resp(fh):
    lines = []
    while True:
        l = fh.readline().decode()
        if not l: return lines + ['<eof>']
        lines.append(l.rstrip())
        if re.match(r'^\d{3} ', l): return lines
resp(f)
s.sendall(b'USER anonymous\r\nPASS x@\r\nTYPE I\r\nPASV\r\n')
for _ in range(4): r = resp(f)
m = re.search(r'\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)', r[-1])
d = socket.create_connection(('127.0.0.1', int(m[5]) * 256 + int(m[6])), timeout=20)
s.sendall(b'RETR big.bin\r\n')
assert resp(f)[-1].startswith('150'), 'no 150'
# Plaintext, while the transfer runs (the data connection is not read yet).
s.sendall(b'REIN\r\nAUTH TLS\r\nUSER anonymous\r\nPASS injected@\r\nMKD injected\r\n')
while d.recv(65536): pass
d.close()
print('after transfer:', resp(f)[-1])
print('REIN:', resp(f)[-1])
auth = resp(f)[-1]
print('AUTH:', auth)
assert auth.startswith('234'), auth
t = ssl.create_default_context(cafile=cafile).wrap_socket(s, server_hostname='127.0.0.1')
t.settimeout(3)
tf = t.makefile('rb')
# The client sends nothing over TLS: any reply now answers a plaintext command.
unasked = []
try:
    while True:
        r = resp(tf)
        if r[-1] == '<eof>': break
        unasked.append(r[-1])
except (TimeoutError, socket.timeout):
    pass
print('UNASKED', len(unasked), unasked)
"#;

#[test]
fn commands_pipelined_behind_rein_and_auth_tls_during_a_transfer_are_not_run_over_tls() {
    if !have_python() {
        return;
    }
    let server = Pasvd::start_at(PORTS, &[]);
    fs::write(server.root.join("big.bin"), vec![7u8; 4 << 20]).expect("big file");
    let out = python(
        REIN_INJECTION,
        &[server.port.to_string(), path_arg(&server.cert.cert)],
    );
    assert!(
        !server.root.join("injected").exists(),
        "MKD sent in plaintext after AUTH TLS ran after the handshake"
    );
    assert!(
        out.contains("UNASKED 0 "),
        "replies to plaintext commands came over TLS: {out}"
    );
}

// ---- 2. A TLS control connection whose client stops reading is never closed ----

/// Implicit FTPS sessions that send FEAT n times and never read: their replies fill the
/// socket and end in rustls' buffer while the core's output is empty. The login timeout
/// queues a 421, rustls takes it, and from then on no timer is armed (the core sees no
/// unsent reply) and the driver waits for the socket to become writable: forever. The
/// sessions hold their places (max_per_ip, max_clients, max_unauthenticated) until the
/// client goes away. A plaintext session in the same state is reset after idle_timeout.
///
/// The MSS and receive buffer of the attacker are small so that the socket's capacity is
/// small (about 95 KB on loopback); FEAT counts from 450 to 1000 (85 KB to 189 KB of
/// replies, 9.5 KB apart) put the end of the replies in rustls' 64 KiB buffer for several
/// of the sessions. The server's `pasvd_sessions` gauge must fall to 0.
const STALL: &str = r#"
import socket, ssl, sys, time, urllib.request
port, cafile, tls = int(sys.argv[1]), sys.argv[2], sys.argv[3] == 'tls'
counts = [int(x) for x in sys.argv[4].split(',')]
metrics = 'http://127.0.0.1:%s/metrics' % sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
held = []
for n in counts:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    s.connect(('127.0.0.1', port)); s.settimeout(10)
    c = ctx.wrap_socket(s, server_hostname='127.0.0.1') if tls else s
    c.recv(100)
    c.sendall(b'FEAT\r\n' * n)
    held.append(c)
def sessions():
    for line in urllib.request.urlopen(metrics, timeout=10).read().decode().splitlines():
        if line.startswith('pasvd_sessions '):
            return int(float(line.split()[1]))
# login_timeout and idle_timeout are 1 s: every session must be gone well within 30 s.
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    left = sessions()
    if left == 0:
        print('FREED'); break
    time.sleep(0.5)
else:
    print('STUCK: %d of %d sessions still open 30 s after their login timeout (1 s)' % (left, len(held)))
"#;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn stall(tls: bool) -> String {
    let counts: Vec<String> = (0..12).map(|i| (450 + 50 * i).to_string()).collect();
    let metrics = free_port();
    let server = Pasvd::start_at(
        PORTS,
        &[
            "--login-timeout",
            "1",
            "--idle-timeout",
            "1",
            "--max-unauthenticated-per-ip",
            "0",
            "--metrics",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    let port = if tls { server.implicit } else { server.port };
    python(
        STALL,
        &[
            port.to_string(),
            path_arg(&server.cert.cert),
            if tls { "tls" } else { "plain" }.to_owned(),
            counts.join(","),
            metrics.to_string(),
        ],
    )
}

#[test]
fn plaintext_control_connection_whose_client_stops_reading_is_freed() {
    if !have_python() {
        return;
    }
    let out = stall(false);
    assert!(out.contains("FREED"), "{out}");
}

#[test]
fn tls_control_connection_whose_client_stops_reading_is_freed() {
    if !have_python() {
        return;
    }
    let out = stall(true);
    assert!(out.contains("FREED"), "{out}");
}

// ---- 3. A thief's data connection fails the real client's transfer ----

/// Behind the same NAT address, a thief connects to the advertised passive port first and
/// makes a full TLS handshake. pasvd refuses it (good: no data leaks) but then fails the
/// transfer with 425 instead of dropping the thief and waiting for the real client, as it
/// does for a connection from a foreign address (DESIGN §5): every transfer of the victim
/// can be broken by a same-address attacker. The real client resumes its control session.
const THIEF: &str = r#"
import ftplib, socket, ssl, sys, threading
port, cafile = int(sys.argv[1]), sys.argv[2]
mode = (sys.argv[3:] or ['prompt'])[0]  # prompt, late or silent
ctx = ssl.create_default_context(cafile=cafile)
ftp = ftplib.FTP_TLS(context=ctx, timeout=20)
ftp.connect('127.0.0.1', port)
ftp.auth(); ftp.login('anonymous', 'x@'); ftp.prot_p(); ftp.voidcmd('TYPE I')
ftp.voidcmd('NOOP')  # the TLS 1.3 tickets are read
host, dport = ftplib.parse227(ftp.sendcmd('PASV'))
thief = socket.create_connection(('127.0.0.1', dport), timeout=20)
def steal():
    try:
        t = ssl.create_default_context(cafile=cafile).wrap_socket(thief, server_hostname='127.0.0.1')
        print('thief got', len(t.recv(1 << 20)), 'bytes', flush=True)
    except Exception as e:
        print('thief refused:', type(e).__name__, flush=True)
th = threading.Thread(target=steal)
if mode != 'silent':  # a silent thief connects and says nothing
    th.start()
if mode == 'late':
    # Both connect right after PASV; RETR once the test says the accept timeout passed.
    real = socket.create_connection(('127.0.0.1', dport), timeout=20)
    print('CONNECTED', flush=True)
    sys.stdin.readline()
    ftp.putcmd('RETR f.bin')
else:
    ftp.putcmd('RETR f.bin')
    if mode == 'prompt':
        th.join()
    real = socket.create_connection(('127.0.0.1', dport), timeout=30)
got = b''
try:
    conn = ctx.wrap_socket(real, server_hostname='127.0.0.1', session=ftp.sock.session)
    while True:
        b = conn.recv(65536)
        if not b: break
        got += b
except Exception as e:
    print('real client data connection:', type(e).__name__, e)
if th.is_alive():
    th.join()
replies = []
while True:
    r = ftp.getmultiline()
    replies.append(r)
    if not r.startswith('1'): break
print('replies:', replies)
print('REAL GOT', len(got))
"#;

#[test]
fn same_address_thief_without_resumption_does_not_fail_the_real_clients_transfer() {
    if !have_python() {
        return;
    }
    let server = Pasvd::start_at(PORTS, &[]);
    fs::write(server.root.join("f.bin"), vec![1u8; 100_000]).expect("file");
    let out = python(
        THIEF,
        &[server.port.to_string(), path_arg(&server.cert.cert)],
    );
    // The thief gets nothing (close_notify or a failed handshake): that part holds.
    assert!(
        out.contains("thief got 0 bytes") || out.contains("thief refused"),
        "{out}"
    );
    assert!(out.contains("REAL GOT 100000"), "{out}");
}

/// The same thief, when the transfer command comes after the accept timeout (`late`): the
/// server took the connection that came first (the thief's) when the timeout passed and
/// closed the listener, so the real client's connection behind it was reset and its transfer
/// failed. The thief and the client connect right after PASV; the script waits on stdin
/// until the server has logged that the accept timeout passed, then sends RETR.
#[test]
fn same_address_thief_ahead_of_a_late_transfer_command_does_not_fail_it() {
    if !have_python() {
        return;
    }
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "3"]);
    fs::write(server.root.join("f.bin"), vec![2u8; 100_000]).expect("file");
    let mut child = Command::new("python3")
        .args(["-c", THIEF])
        .args([server.port.to_string(), path_arg(&server.cert.cert)])
        .arg("late")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut said = String::new();
    for _ in 0..100 {
        let mut line = String::new();
        if out.read_line(&mut line).expect("read") == 0 {
            break;
        }
        said.push_str(&line);
        if line.trim() == "CONNECTED" {
            break;
        }
    }
    assert!(said.contains("CONNECTED"), "{said}");
    // Both connections are in; the accept timeout passes without a transfer command.
    server.wait_log("data connection waiting for a transfer command");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("read");
    said.push_str(&rest);
    eprintln!("python3 said:\n{said}");
    assert!(child.wait().expect("python3").success(), "{said}");
    assert!(
        said.contains("thief got 0 bytes") || said.contains("thief refused"),
        "{said}"
    );
    assert!(said.contains("REAL GOT 100000"), "{said}");
}

// ---- 4. SIGHUP reloads a root-only key once privileges are dropped ----

/// Starts pasvd as root with `--run-as nobody` and the given certificate and key, sends it
/// SIGHUP as soon as it says it listens (the handler is in place by then), and returns
/// whether it warned at start that the files are unreadable by `run_as`, and the reload's
/// log line.
fn reload_under_run_as(root: &Path, cert: &Path, key: &Path) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pasvd"))
        .args(["--listen", "127.0.0.1:0", "--pasv-address", "127.0.0.1"])
        .args(["--run-as", "nobody", "--pasv-min-port", "42900"])
        .args(["--pasv-max-port", "42909"])
        .arg("--root")
        .arg(root)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .env("PASVD_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pasvd starts");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("pasvd: {line}");
            let wanted = line.contains("not readable by the run_as account")
                || line.contains("TLS certificate reload")
                || line.contains("certificate reloaded");
            if wanted && tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("stdout");
    assert!(line.starts_with("listening on"), "{line}");
    // No wait for a greeting: the SIGHUP handler is installed before "listening on".
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let mut warned = false;
    let mut outcome = None;
    while outcome.is_none() {
        match rx.recv_timeout(std::time::Duration::from_secs(20)) {
            Ok(l) if l.contains("not readable by the run_as account") => warned = true,
            Ok(l) => outcome = Some(l),
            Err(_) => break,
        }
    }
    let alive = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        alive,
        "pasvd died of the SIGHUP sent right after it said it listens"
    );
    (warned, outcome.expect("a reload log line"))
}

/// The recommended deployment binds as root and serves as `run_as` (DESIGN: never serve as
/// root). The certificate is read at start, before the drop; a SIGHUP reload after the drop
/// reads the files through the certificate reader, a child that kept root's privileges.
/// With the key readable by root only (as ACME clients write it) there is no warning and
/// the reload works; with the key given to the run_as account's group, mode 0640 (the
/// optional setup docs/FTPS.md describes), too. A SIGHUP right after "listening on" reloads
/// instead of killing pasvd.
#[test]
fn sighup_reload_reads_a_root_only_key_after_privileges_are_dropped() {
    let uid = Command::new("id").arg("-u").output().ok();
    let is_root = uid.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let nobody_gid = Command::new("id")
        .args(["-g", "nobody"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u32>()
                .ok()
        });
    let Some(nobody_gid) = nobody_gid.filter(|_| is_root) else {
        eprintln!("SKIPPED: needs root and a `nobody` account (run_as)");
        return;
    };
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |p: &Path| fs::set_permissions(p, fs::Permissions::from_mode(0o755)).expect("chmod");
    open(dir.path());
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("root");
    open(&root);
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("rcgen");
    let cert = dir.path().join("fullchain.pem");
    let key = dir.path().join("privkey.pem");
    fs::write(&cert, generated.cert.pem()).expect("cert");
    fs::write(&key, generated.key_pair.serialize_pem()).expect("key");

    // Root only: read by the certificate reader, no warning, the reload works.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key");
    let (warned, outcome) = reload_under_run_as(&root, &cert, &key);
    assert!(
        !warned,
        "a warning although the certificate reader reads the key"
    );
    assert!(
        outcome.contains("certificate reloaded"),
        "SIGHUP reload of a root-only key under run_as: {outcome}"
    );

    // The setup without a privileged reader in mind: the key belongs to run_as's group.
    std::os::unix::fs::chown(&key, Some(0), Some(nobody_gid)).expect("chgrp key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).expect("chmod key");
    let (warned, outcome) = reload_under_run_as(&root, &cert, &key);
    assert!(!warned, "a warning although run_as can read the key");
    assert!(
        !outcome.contains("failed"),
        "SIGHUP reload under run_as: {outcome}"
    );
}

// ---- 5. A same-address thief that connects first and says nothing ----

/// The thief connects to the advertised passive port ahead of the client and sends nothing
/// (no ClientHello, or half of one). The server takes the connections one at a time; it
/// used to wait on the thief's handshake until the accept deadline and not retry a timed-out
/// one, so the real client's connection behind it was never looked at and the transfer
/// failed with 425: the thief failed every transfer of the victim without any TLS. Each
/// handshake now gets a share of the accept time, and a silent connection counts as one of
/// the refused handshakes. The script is `THIEF` in mode `silent`.

#[test]
fn silent_same_address_thief_ahead_of_the_client_does_not_fail_the_transfer() {
    if !have_python() {
        return;
    }
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "3"]);
    fs::write(server.root.join("f.bin"), vec![3u8; 100_000]).expect("file");
    let out = python(
        THIEF,
        &[
            server.port.to_string(),
            path_arg(&server.cert.cert),
            "silent".into(),
        ],
    );
    assert!(out.contains("REAL GOT 100000"), "{out}");
}
