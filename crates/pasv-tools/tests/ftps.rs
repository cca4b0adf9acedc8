//! FTPS end to end: the pasvd binary with a certificate (explicit AUTH TLS on its control
//! port, implicit TLS on its own listener) against real clients on loopback — curl, lftp,
//! Python's ftplib and pasv itself — and the refusals that bind a data connection to its own
//! control session, seen from a hand-written rustls client.
//!
//! A test whose client tool is missing prints why and passes (CI installs curl, lftp and
//! python3: see `.ci/run`).

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

mod ftps_daemon;
use ftps_daemon::{generate, have, Pasvd, TIMEOUT};

/// Passive ports of this test binary: 31000 on.
const PORTS: u16 = 31_000;

fn run(tool: &str, args: &[&str], cwd: &Path) -> Output {
    let output = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        output.status.success(),
        "{tool} {args:?} failed: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

// ---- real clients ----

/// For a curl test (`None` when curl is missing): pasvd with `--tls-required all`, serving
/// `body` as `name`; a work directory for curl; the body back.
fn serving_curl(name: &str, body: Vec<u8>) -> Option<(Pasvd, tempfile::TempDir, Vec<u8>)> {
    if !have("curl") {
        return None;
    }
    let server = Pasvd::start_at(PORTS, &["--tls-required", "all"]);
    fs::write(server.root.join(name), &body).expect("write");
    Some((server, tempfile::tempdir().expect("work"), body))
}

#[test]
fn curl_explicit_ssl_reqd_and_implicit_ftps() {
    let Some((server, work, body)) = serving_curl("big.bin", pattern(1 << 20, 1)) else {
        return;
    };
    let w = work.path();
    let ca = server.ca();
    let curl = |args: &[&str]| {
        run(
            "curl",
            &[&["-sS", "--max-time", "60", "--cacert", &ca], args].concat(),
            w,
        )
    };
    // Explicit: AUTH, PBSZ 0, PROT P; EPSV and PASV.
    curl(&["--ssl-reqd", "-o", "epsv.bin", &server.url("big.bin")]);
    assert_eq!(fs::read(w.join("epsv.bin")).expect("read"), body);
    curl(&[
        "--ssl-reqd",
        "--disable-epsv",
        "-o",
        "pasv.bin",
        &server.url("big.bin"),
    ]);
    assert_eq!(fs::read(w.join("pasv.bin")).expect("read"), body);
    // Resumed download (REST) and a small one.
    fs::write(w.join("part.bin"), &body[..300_000]).expect("write");
    curl(&[
        "--ssl-reqd",
        "-C",
        "-",
        "-o",
        "part.bin",
        &server.url("big.bin"),
    ]);
    assert_eq!(fs::read(w.join("part.bin")).expect("read"), body);
    fs::write(server.root.join("small.txt"), b"small\n").expect("write");
    let small = curl(&["--ssl-reqd", &server.url("small.txt")]);
    assert_eq!(small.stdout, b"small\n");
    // Upload, and a resumed upload (SIZE, APPE).
    fs::write(w.join("up.bin"), &body).expect("write");
    curl(&["--ssl-reqd", "-T", "up.bin", &server.url("up.bin")]);
    assert_eq!(fs::read(server.root.join("up.bin")).expect("read"), body);
    fs::write(server.root.join("resume.bin"), &body[..123_456]).expect("write");
    curl(&[
        "--ssl-reqd",
        "-C",
        "-",
        "-T",
        "up.bin",
        &server.url("resume.bin"),
    ]);
    assert_eq!(
        fs::read(server.root.join("resume.bin")).expect("read"),
        body
    );
    // Listing.
    let list = curl(&["--ssl-reqd", &server.url("")]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.lines().any(|l| l.ends_with(" big.bin")), "{list}");
    // Implicit: ftps:// on the implicit listener.
    let implicit = format!("ftps://127.0.0.1:{}/", server.implicit);
    curl(&["-o", "implicit.bin", &format!("{implicit}big.bin")]);
    assert_eq!(fs::read(w.join("implicit.bin")).expect("read"), body);
    curl(&["-T", "up.bin", &format!("{implicit}up2.bin")]);
    assert_eq!(fs::read(server.root.join("up2.bin")).expect("read"), body);
    // Without --ssl-reqd curl logs in in plaintext: refused under --tls-required all.
    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "20", &server.url("small.txt")])
        .output()
        .expect("curl");
    assert!(!plain.status.success(), "a plaintext login was accepted");
}

#[test]
fn lftp_with_ssl_force_explicit_and_implicit() {
    if !have("lftp") {
        return;
    }
    let server = Pasvd::start_at(PORTS, &[]);
    let work = tempfile::tempdir().expect("work");
    let w = work.path();
    let body = pattern(700_000, 2);
    fs::write(server.root.join("data.bin"), &body).expect("write");
    fs::write(w.join("local.bin"), pattern(50_000, 3)).expect("write");
    let settings = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 20; \
         set ftp:ssl-force true; set ftp:ssl-protect-data true; set ftp:ssl-protect-list true; \
         set ssl:ca-file {}; set ssl:verify-certificate yes;",
        server.ca()
    );
    let script = format!(
        "{settings} open -u anonymous,lftp@ -p {} 127.0.0.1; \
         get data.bin -o got.bin; get -c data.bin -o partial.bin; put local.bin -o sent.bin; \
         put local.bin -o sent2.bin; put local.bin -o sent3.bin; put local.bin -o sent4.bin; \
         put local.bin -o sent5.bin; put local.bin -o sent6.bin; cls -1; bye",
        server.port
    );
    fs::write(w.join("partial.bin"), &body[..100_000]).expect("write");
    let out = run("lftp", &["-c", &script], w);
    assert_eq!(fs::read(w.join("got.bin")).expect("read"), body);
    assert_eq!(fs::read(w.join("partial.bin")).expect("read"), body);
    // Uploads in a row on one session (GnuTLS offers one ticket again and again).
    for name in [
        "sent.bin",
        "sent2.bin",
        "sent3.bin",
        "sent4.bin",
        "sent5.bin",
        "sent6.bin",
    ] {
        assert!(
            fs::read(server.root.join(name)).expect("read") == pattern(50_000, 3),
            "{name} differs"
        );
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.lines().any(|l| l == "data.bin"), "{listing}");
    let script = format!(
        "{settings} open -u anonymous,lftp@ ftps://127.0.0.1:{}; get data.bin -o implicit.bin; bye",
        server.implicit
    );
    run("lftp", &["-c", &script], w);
    assert_eq!(fs::read(w.join("implicit.bin")).expect("read"), body);
}

/// Python's `ftplib.FTP_TLS` opens data connections with a new TLS session; the subclass of
/// docs/FTPS.md passes the control connection's. Prints one line per class.
const FTPLIB: &str = r#"
import ftplib, io, ssl, sys
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
class ReusingFTP_TLS(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size
body = bytes((i * 7 + 3) % 256 for i in range(200000))
for cls in (ftplib.FTP_TLS, ReusingFTP_TLS):
    f = cls(context=ctx, timeout=20)
    f.connect("127.0.0.1", port)
    f.login("anonymous", "py@")
    f.prot_p()
    try:
        got = bytearray()
        f.retrbinary("RETR f.bin", got.extend)
        assert bytes(got) == body, "download differs"
    except ftplib.error_temp as e:
        print(cls.__name__, "refused", str(e)[:3])
        f.quit()
        continue
    name = cls.__name__ + ".bin"
    f.storbinary("STOR " + name, io.BytesIO(body))
    got = bytearray()
    f.retrbinary("RETR " + name, got.extend)
    assert bytes(got) == body, "upload differs"
    tail = bytearray()
    f.retrbinary("RETR " + name, tail.extend, rest=150000)
    assert bytes(tail) == body[150000:], "resumed download differs"
    assert name in f.nlst(), "listing"
    print(cls.__name__, "ok")
    f.quit()
"#;

fn ftplib(server: &Pasvd, work: &Path) -> String {
    let body: Vec<u8> = (0..200_000u32).map(|i| ((i * 7 + 3) % 256) as u8).collect();
    fs::write(server.root.join("f.bin"), body).expect("write");
    let out = run(
        "python3",
        &["-c", FTPLIB, &server.port.to_string(), &server.ca()],
        work,
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn python_ftplib_tls_needs_the_session_passed_unless_reuse_is_off() {
    if !have("python3") {
        return;
    }
    let work = tempfile::tempdir().expect("work");
    // FTP_TLS's refused data connection: its 425 comes at the accept deadline (pasvd
    // waits for a connection that resumes).
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "2"]);
    let out = ftplib(&server, work.path());
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["FTP_TLS refused 425", "ReusingFTP_TLS ok"],
        "{out}"
    );
    let off = Pasvd::start_at(PORTS, &["--tls-session-reuse", "off"]);
    let out = ftplib(&off, work.path());
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["FTP_TLS ok", "ReusingFTP_TLS ok"],
        "{out}"
    );
}

#[test]
fn pasv_client_explicit_implicit_and_load() {
    let server = Pasvd::start_at(PORTS, &["--tls-required", "all"]);
    let work = tempfile::tempdir().expect("work");
    let w = work.path();
    let body = pattern(300_000, 4);
    fs::write(w.join("in.bin"), &body).expect("write");
    let ca = server.ca();
    let pasv = |args: &[&str]| run(env!("CARGO_BIN_EXE_pasv"), args, w);
    let explicit = format!("ftp://anonymous:x@127.0.0.1:{}", server.port);
    pasv(&[
        "put",
        "--quiet",
        "--tls",
        "--ca-file",
        &ca,
        &format!("{explicit}/copy.bin"),
        "in.bin",
    ]);
    assert_eq!(fs::read(server.root.join("copy.bin")).expect("read"), body);
    pasv(&[
        "get",
        "--quiet",
        "--ca-file",
        &ca,
        &format!("ftpes://anonymous:x@127.0.0.1:{}/copy.bin", server.port),
        "out.bin",
    ]);
    assert_eq!(fs::read(w.join("out.bin")).expect("read"), body);
    pasv(&[
        "get",
        "--quiet",
        "--ca-file",
        &ca,
        &format!("ftps://anonymous:x@127.0.0.1:{}/copy.bin", server.implicit),
        "implicit.bin",
    ]);
    assert_eq!(fs::read(w.join("implicit.bin")).expect("read"), body);
    let out = pasv(&[
        "load",
        "--json",
        "--tls",
        "--ca-file",
        &ca,
        "-k",
        "4",
        "--max-transfers",
        "40",
        &format!("{explicit}/copy.bin"),
    ]);
    let json = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(report["tls_data_handshakes_resumed"], 40, "{json}");
    assert_eq!(report["tls_data_handshakes_full"], 0, "{json}");
}

#[test]
fn uploads_only_keep_resuming_with_a_client_that_spends_its_tickets() {
    // rustls (pasv) takes each TLS 1.3 ticket once: a session of uploads only spends the
    // control connection's tickets unless its upload connections hand out new ones.
    let server = Pasvd::start_at(PORTS, &["--tls-required", "all"]);
    let work = tempfile::tempdir().expect("work");
    let ca = server.ca();
    let out = run(
        env!("CARGO_BIN_EXE_pasv"),
        &[
            "load",
            "--json",
            "--tls",
            "--ca-file",
            &ca,
            "-k",
            "1",
            "--mix",
            "stor=1",
            "--size",
            "3000",
            "--stor-path",
            "up-{session}.bin",
            "--max-transfers",
            "24",
            &format!("ftp://anonymous:x@127.0.0.1:{}/up.bin", server.port),
        ],
        work.path(),
    );
    let json = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(report["errors"], serde_json::json!({}), "{json}");
    assert_eq!(report["tls_data_handshakes_resumed"], 24, "{json}");
    assert_eq!(report["tls_data_handshakes_full"], 0, "{json}");
}

#[test]
fn curl_uploads_many_files_in_one_session_after_a_download() {
    // curl with OpenSSL uses each TLS 1.3 ticket once and holds only the newest, and it closes
    // an upload's data connection without reading it: after an upload its next data connection
    // has nothing to resume with (docs/FTPS.md). Over TLS 1.2 it resumes one session id again
    // and again: a download and several uploads in one session, each byte for byte. Upload
    // connections must not send it anything it leaves unread (its kernel would reset the
    // connection and lose the end of the upload).
    let Some((server, work, body)) = serving_curl("first.bin", pattern(1 << 20, 7)) else {
        return;
    };
    let w = work.path();
    let ca = server.ca();
    let each = ["-sS", "--cacert", &ca, "--ssl-reqd", "--tls-max", "1.2"];
    let first = server.url("first.bin");
    let mut args: Vec<String> = ["--max-time", "120"].map(String::from).to_vec();
    args.extend(each.map(String::from));
    args.extend(["-o".into(), "first.bin".into(), first]);
    let files: Vec<(String, Vec<u8>)> = (0..5u8)
        .map(|n| {
            (
                format!("up{n}.bin"),
                pattern(400_000 + usize::from(n) * 999, n),
            )
        })
        .collect();
    for (name, bytes) in &files {
        fs::write(w.join(name), bytes).expect("write");
        // Each upload its own `--next` block: one control connection, reused.
        args.push("--next".into());
        args.extend(each.map(String::from));
        args.extend(["-T".into(), name.clone(), server.url(name)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("curl", &args, w);
    assert!(
        fs::read(w.join("first.bin")).expect("read") == body,
        "download differs"
    );
    for (name, bytes) in &files {
        assert!(
            &fs::read(server.root.join(name)).expect("read") == bytes,
            "{name} differs"
        );
    }
    // The log, in order up to the session's end: one session served all six transfers.
    let mut opened = 0;
    for _ in 0..10_000 {
        let line = server.log.recv_timeout(TIMEOUT).expect("log");
        opened += usize::from(line.contains("session opened"));
        if line.contains("session closed") {
            break;
        }
    }
    assert_eq!(opened, 1, "curl did not keep one session");
}

// ---- refusals, with a rustls client ----

fn connector(roots: &[&CertificateDer<'static>], resume: bool) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add((*root).clone()).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(pasv_tools::server::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

fn loopback() -> ServerName<'static> {
    ServerName::try_from("127.0.0.1").expect("name")
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A control connection (plain until AUTH TLS, or implicit).
struct Ctl<S> {
    stream: tokio::io::BufReader<S>,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Ctl<S> {
    /// The next reply: its code and its last line.
    async fn reply(&mut self) -> (u16, String) {
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(TIMEOUT, self.stream.read_line(&mut line))
                .await
                .expect("reply in time")
                .expect("read reply");
            assert!(n > 0, "control connection closed");
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                return (line[..3].parse().expect("code"), line.trim_end().to_owned());
            }
        }
    }

    async fn send(&mut self, line: &str) {
        let stream = self.stream.get_mut();
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        stream.flush().await.expect("flush");
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(line).await;
        self.reply().await
    }

    async fn expect(&mut self, line: &str, code: u16) -> String {
        let (got, text) = self.cmd(line).await;
        assert_eq!(got, code, "{line}: {text}");
        text
    }

    async fn login(&mut self) {
        self.expect("USER anonymous", 331).await;
        self.expect("PASS x@", 230).await;
        self.expect("TYPE I", 200).await;
    }

    /// EPSV's port.
    async fn epsv(&mut self) -> u16 {
        let text = self.expect("EPSV", 229).await;
        text.split("|||")
            .nth(1)
            .and_then(|rest| rest.split('|').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("229 without a port: {text}"))
    }
}

/// An implicit FTPS session, greeted and logged in.
async fn implicit(server: &Pasvd, tls: &TlsConnector) -> Ctl<Tls> {
    implicit_at(server.implicit, tls).await
}

async fn implicit_at(port: u16, tls: &TlsConnector) -> Ctl<Tls> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let stream = tls.connect(loopback(), tcp).await.expect("handshake");
    let mut ctl = Ctl {
        stream: tokio::io::BufReader::new(stream),
    };
    assert_eq!(ctl.reply().await.0, 220);
    ctl.login().await;
    ctl
}

/// RETR `name` with a data connection whose TLS comes from `data_tls`: the bytes read and
/// the final reply.
async fn retr(ctl: &mut Ctl<Tls>, name: &str, data_tls: &TlsConnector) -> (Vec<u8>, (u16, String)) {
    let port = ctl.epsv().await;
    ctl.expect(&format!("RETR {name}"), 150).await;
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("data connect");
    let mut got = Vec::new();
    let mut clean = false;
    if let Ok(mut data) = data_tls.connect(loopback(), tcp).await {
        // A refused connection ends with close_notify or a reset: no file bytes either way.
        // A served one ends with close_notify (rustls reports a bare close as an error).
        let read = tokio::time::timeout(TIMEOUT, data.read_to_end(&mut got)).await;
        clean = matches!(read, Ok(Ok(_)));
    }
    let reply = ctl.reply().await;
    if reply.0 == 226 {
        assert!(
            clean,
            "226 for a data connection that ended without close_notify"
        );
    }
    (got, reply)
}

#[tokio::test]
async fn a_refused_connection_on_the_implicit_port_is_closed_without_plaintext() {
    // Over the session limit a plaintext connection reads 421; an implicit FTPS client
    // expects a TLS record, and a plaintext 421 would reach it as a TLS protocol error
    // ("corrupt message"): it is closed without a word instead.
    let server = Pasvd::start_at(PORTS, &["--max-clients", "1"]);
    let tls = connector(&[&server.cert.der], true);
    let mut first = implicit(&server, &tls).await;
    let tcp = TcpStream::connect(("127.0.0.1", server.implicit))
        .await
        .expect("connect");
    let refused = tokio::time::timeout(TIMEOUT, tls.connect(loopback(), tcp))
        .await
        .expect("the refusal came in time");
    let e = refused.expect_err("a session over the limit was served");
    // Closed (a reset: the ClientHello was left unread), not a TLS protocol error.
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{e}"
    );
    // The plaintext port still says why.
    let mut plain = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let mut said = String::new();
    tokio::time::timeout(TIMEOUT, plain.read_to_string(&mut said))
        .await
        .expect("in time")
        .expect("read");
    assert!(said.starts_with("421 "), "{said:?}");
    first.expect("NOOP", 200).await;
}

#[tokio::test]
async fn a_data_connection_held_under_prot_p_without_a_command_is_closed() {
    // Under PROT P a connection that comes before the transfer command is held past the
    // accept timeout with the endpoint still listening (a thief's may be first); both are
    // bounded: at the next accept timeout without a command, the connection is closed, the
    // port goes back, and the session goes on.
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "1"]);
    let tls = connector(&[&server.cert.der], true);
    let mut ctl = implicit(&server, &tls).await;
    let port = ctl.epsv().await;
    let mut data = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("data connect");
    server.wait_log("data connection waiting for a transfer command");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(TIMEOUT, data.read(&mut buf))
        .await
        .expect("the held connection stayed open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    server.wait_log("data connection closed unused");
    ctl.expect("NOOP", 200).await;
    // And the next transfer on a new endpoint works.
    fs::write(server.root.join("f.bin"), b"after").expect("write");
    let (got, (code, text)) = retr(&mut ctl, "f.bin", &tls).await;
    assert_eq!((code, got.as_slice()), (226, &b"after"[..]), "{text}");
}

#[tokio::test]
async fn data_connection_resuming_another_sessions_tls_session_is_refused() {
    // A refused connection is reset and the endpoint waits for another until the accept
    // deadline: short here, so that the 425 comes soon.
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "2"]);
    let body = pattern(100_000, 5);
    fs::write(server.root.join("f.bin"), &body).expect("write");
    // The thief logs in on its own session: its client holds tickets that pasvd issued, on
    // another control session than the victim's. Both come from 127.0.0.1.
    let thief_tls = connector(&[&server.cert.der], true);
    let mut thief = implicit(&server, &thief_tls).await;
    thief.expect("NOOP", 200).await;
    let victim_tls = connector(&[&server.cert.der], true);
    let mut victim = implicit(&server, &victim_tls).await;
    let (got, (code, text)) = retr(&mut victim, "f.bin", &thief_tls).await;
    assert_eq!(code, 425, "{text}");
    assert!(text.contains("not resumed"), "{text}");
    assert!(got.is_empty(), "the thief got {} bytes", got.len());
    // Whatever the refused handshake sent, it gave the thief nothing to resume with.
    let (got, (code, text)) = retr(&mut victim, "f.bin", &thief_tls).await;
    assert_eq!((code, got.len()), (425, 0), "second attempt: {text}");
    // The victim's own data connection resumes its session and gets the file.
    let (got, (code, text)) = retr(&mut victim, "f.bin", &victim_tls).await;
    assert_eq!(code, 226, "{text}");
    assert!(got == body, "the victim's download differs");
    // And the thief's own too.
    let (got, (code, _)) = retr(&mut thief, "f.bin", &thief_tls).await;
    assert_eq!((code, got.len()), (226, body.len()));
}

#[tokio::test]
async fn data_connection_without_resumption_is_refused_when_required_accepted_when_off() {
    for (reuse, accepted) in [("required", false), ("off", true)] {
        let server = Pasvd::start_at(
            PORTS,
            &["--tls-session-reuse", reuse, "--accept-timeout", "2"],
        );
        let body = pattern(10_000, 6);
        fs::write(server.root.join("f.bin"), &body).expect("write");
        let fresh = connector(&[&server.cert.der], false);
        let mut ctl = implicit(&server, &fresh).await;
        let (got, (code, text)) = retr(&mut ctl, "f.bin", &fresh).await;
        if accepted {
            assert_eq!(code, 226, "reuse {reuse}: {text}");
            assert!(got == body, "reuse {reuse}: download differs");
        } else {
            assert_eq!(code, 425, "reuse {reuse}: {text}");
            assert!(text.contains("not resumed"), "{text}");
            assert!(got.is_empty());
        }
    }
}

#[tokio::test]
async fn plaintext_data_connection_under_prot_p_is_refused() {
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "2"]);
    let body = pattern(10_000, 7);
    fs::write(server.root.join("f.bin"), &body).expect("write");
    let tls = connector(&[&server.cert.der], true);
    let mut ctl = implicit(&server, &tls).await;
    // A download to a plaintext connection: the server waits for a ClientHello that never
    // comes, within the accept deadline, and sends nothing of the file.
    let port = ctl.epsv().await;
    ctl.expect("RETR f.bin", 150).await;
    let mut plain = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (code, text) = ctl.reply().await;
    assert_eq!(code, 425, "{text}");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, plain.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "{} plaintext bytes of the file", got.len());
    // An upload from a plaintext connection: its bytes are no ClientHello.
    let port = ctl.epsv().await;
    ctl.expect("STOR up.bin", 150).await;
    let mut plain = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let _ = plain.write_all(b"plaintext upload\r\n").await;
    let _ = plain.shutdown().await;
    let (code, text) = ctl.reply().await;
    assert_eq!(code, 425, "{text}");
    assert!(!server.root.join("up.bin").exists());
    // The session goes on.
    let (got, (code, _)) = retr(&mut ctl, "f.bin", &tls).await;
    assert_eq!(code, 226);
    assert!(got == body, "download differs");
}

#[tokio::test]
async fn tls_required_login_refuses_user_before_auth_and_drops_pipelined_commands() {
    let server = Pasvd::start_at(PORTS, &["--tls-required", "login"]);
    let tcp = TcpStream::connect(("127.0.0.1", server.port))
        .await
        .expect("connect");
    let mut plain = Ctl {
        stream: tokio::io::BufReader::new(tcp),
    };
    assert_eq!(plain.reply().await.0, 220);
    let text = plain.expect("USER anonymous", 530).await;
    assert!(text.contains("TLS required"), "{text}");
    plain.expect("PASS x@", 530).await;
    plain.send("FEAT").await;
    let mut feat = Vec::new();
    loop {
        let mut line = String::new();
        plain.stream.read_line(&mut line).await.expect("FEAT");
        if line.starts_with("211 ") {
            break;
        }
        feat.push(line.trim().to_owned());
    }
    for want in ["AUTH TLS", "AUTH SSL", "PBSZ", "PROT"] {
        assert!(feat.iter().any(|l| l == want), "{want}: {feat:?}");
    }
    // AUTH TLS with a USER pipelined behind it, in one write: the USER was sent in
    // plaintext and must not count.
    plain
        .stream
        .get_mut()
        .write_all(b"AUTH TLS\r\nUSER anonymous\r\n")
        .await
        .expect("write");
    let (code, text) = plain.reply().await;
    assert_eq!(code, 234, "{text}");
    assert!(plain.stream.buffer().is_empty());
    let tcp = plain.stream.into_inner();
    let tls = connector(&[&server.cert.der], true);
    let stream = tls.connect(loopback(), tcp).await.expect("handshake");
    let mut ctl = Ctl {
        stream: tokio::io::BufReader::new(stream),
    };
    let (code, text) = ctl.cmd("PASS x@").await;
    assert_eq!(code, 503, "the pipelined USER ran: {text}");
    ctl.login().await;
    ctl.expect("PBSZ 0", 200).await;
    ctl.expect("PROT P", 200).await;
    ctl.expect("CCC", 534).await;
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_sessions_while_old_ones_keep_working() {
    let server = Pasvd::start_at(PORTS, &[]);
    let body = pattern(50_000, 8);
    fs::write(server.root.join("f.bin"), &body).expect("write");
    let second = generate(server.dir.path(), "second");
    // One client per session: a client's TLS sessions are those of its own control
    // session only.
    let old_tls = connector(&[&server.cert.der, &second.der], true);
    let tls = connector(&[&server.cert.der, &second.der], true);
    let peer = |ctl: &Ctl<Tls>| {
        ctl.stream
            .get_ref()
            .get_ref()
            .1
            .peer_certificates()
            .expect("certificate")[0]
            .clone()
    };
    let mut old = implicit(&server, &old_tls).await;
    assert_eq!(peer(&old), server.cert.der);
    // The files are replaced (as a renewal does), then SIGHUP.
    fs::copy(&second.cert, &server.cert.cert).expect("copy cert");
    fs::copy(&second.key, &server.cert.key).expect("copy key");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&server.child),
        rustix::process::Signal::HUP,
    )
    .expect("SIGHUP");
    server.wait_log("TLS certificate reloaded");
    let mut new = implicit(&server, &tls).await;
    assert_eq!(
        peer(&new),
        second.der,
        "a new session gets the new certificate"
    );
    let (got, (code, text)) = retr(&mut new, "f.bin", &tls).await;
    assert_eq!((code, got.len()), (226, body.len()), "{text}");
    // The old session still resumes its own TLS session on its data connections.
    let (got, (code, text)) = retr(&mut old, "f.bin", &old_tls).await;
    assert_eq!(code, 226, "{text}");
    assert!(got == body, "the old session's download differs");
    old.expect("NOOP", 200).await;
}

/// The processes whose parent is `pid`, from /proc.
fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
            continue; // ended meanwhile
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|p| p.trim().parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}

/// Whether descriptor `fd` of process `pid` is one that pasvd inherited from this test
/// (and passed on, not knowing it): open here, without close-on-exec, on the same file.
/// Descriptors leaked by whatever started the test (a job server's pipe) are such; pasvd's
/// own sockets and files are not.
fn inherited_from_here(pid: u32, fd: u32) -> bool {
    let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
        return false;
    };
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        .expect("fdinfo flags");
    const O_CLOEXEC: u32 = 0o2_000_000;
    let target = |pid: &str| fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok();
    flags & O_CLOEXEC == 0 && target("self").is_some() && target("self") == target(&pid.to_string())
}

/// Whether process `pid` still runs (a zombie has ended: whoever reaps it may be slow).
fn running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name in parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X"))
}

#[tokio::test]
async fn a_root_only_key_is_reloaded_after_run_as_through_the_certificate_reader() {
    if !rustix::process::geteuid().is_root() {
        eprintln!(
            "skipped a_root_only_key_is_reloaded_after_run_as_through_the_certificate_reader: \
             it needs root (--run-as, a key only root may read)"
        );
        return;
    }
    let mut server = Pasvd::start_run_as(PORTS, &[], "nobody");
    let pid = server.child.id();
    let tls = connector(&[&server.cert.der], true);
    let peer = |ctl: &Ctl<Tls>| {
        ctl.stream
            .get_ref()
            .get_ref()
            .1
            .peer_certificates()
            .expect("certificate")[0]
            .clone()
    };
    let first = implicit(&server, &tls).await;
    assert_eq!(peer(&first), server.cert.der);

    // The reader: pasvd's only child, still root, holding stdin, stdout and stderr and none
    // of pasvd's sockets or files (only what pasvd itself inherited, if anything).
    let children = children_of(pid);
    assert_eq!(children.len(), 1, "pasvd's children: {children:?}");
    let reader = children[0];
    let cmdline = fs::read(format!("/proc/{reader}/cmdline")).expect("cmdline");
    assert!(
        cmdline.split(|&b| b == 0).any(|arg| arg == b"tls-reader"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    let status = fs::read_to_string(format!("/proc/{reader}/status")).expect("status");
    let uids = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert_eq!(
        uids.split_whitespace().collect::<Vec<_>>(),
        ["Uid:", "0", "0", "0", "0"]
    );
    let fds: Vec<u32> = fs::read_dir(format!("/proc/{reader}/fd"))
        .expect("fd dir")
        .filter_map(|e| e.expect("fd").file_name().to_str()?.parse().ok())
        .collect();
    for fd in [0, 1, 2] {
        assert!(fds.contains(&fd), "the reader lacks fd {fd}: {fds:?}");
    }
    for &fd in fds.iter().filter(|&&fd| fd > 2) {
        assert!(
            inherited_from_here(reader, fd),
            "the reader holds fd {fd} ({:?}), not one pasvd inherited",
            fs::read_link(format!("/proc/{reader}/fd/{fd}"))
        );
    }

    // A renewal: new files in place (the key root-only again), then SIGHUP.
    let second = generate(&server.tls_dir(), "second");
    fs::rename(&second.cert, &server.cert.cert).expect("rename cert");
    fs::rename(&second.key, &server.cert.key).expect("rename key");
    fs::set_permissions(
        &server.cert.key,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .expect("chmod");
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&server.child),
        rustix::process::Signal::HUP,
    )
    .expect("SIGHUP");
    let (line, before) =
        server.wait_log_any(&["TLS certificate reloaded", "TLS certificate reload failed"]);
    assert!(line.contains("TLS certificate reloaded"), "{line}");
    for earlier in &before {
        assert!(
            !earlier.contains("is not readable by the run_as account"),
            "{earlier}"
        );
    }
    let fresh = connector(&[&server.cert.der, &second.der], true);
    let mut new = implicit(&server, &fresh).await;
    assert_eq!(
        peer(&new),
        second.der,
        "a new session gets the new certificate"
    );
    new.expect("NOOP", 200).await;

    // However pasvd ends, the reader ends with it (its stdin closes).
    server.child.kill().expect("SIGKILL");
    server.child.wait().expect("pasvd ends");
    // Polled: at most 2,000 looks 10 ms apart (20 s).
    let gone = (0..2_000).any(|_| {
        let gone = !running(reader);
        if !gone {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        gone
    });
    assert!(gone, "the reader {reader} outlived pasvd");
}

/// One HTTP/1.1 GET, the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut response = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut response))
        .await
        .expect("in time")
        .expect("response");
    let response = String::from_utf8(response).expect("UTF-8");
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .expect("body")
}

fn sample(text: &str, key: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{key} missing:\n{text}"))
}

#[tokio::test]
async fn metrics_count_handshakes_and_refused_data_connections() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().join("root");
    fs::create_dir(&root).expect("root");
    let cert = generate(dir.path(), "server");
    let body = pattern(20_000, 9);
    fs::write(root.join("f.bin"), &body).expect("write");
    let mut config = pasv_tools::server::Config::for_tests(root.clone());
    config.tls_cert = Some(cert.cert.clone());
    config.tls_key = Some(cert.key.clone());
    config.implicit_tls_listen = Some("127.0.0.1:0".parse().expect("addr"));
    config.metrics = Some("127.0.0.1:0".parse().expect("addr"));
    (config.pasv_min_port, config.pasv_max_port) = (41_280, 41_289);
    let server = pasv_tools::server::Server::bind(config)
        .await
        .expect("server");
    let port = server.implicit_tls_addr().expect("implicit").port();
    let metrics = server.metrics_addr().expect("metrics");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(async {
        let _ = stopped.await;
    }));
    // Two resumed data connections of one session.
    let tls = connector(&[&cert.der], true);
    let mut ctl = implicit_at(port, &tls).await;
    for _ in 0..2 {
        let (got, (code, text)) = retr(&mut ctl, "f.bin", &tls).await;
        assert_eq!((code, got.len()), (226, body.len()), "{text}");
    }
    // A client that does not resume: its control handshake counts, its data one is refused.
    let fresh = connector(&[&cert.der], false);
    let mut other = implicit_at(port, &fresh).await;
    let (_, (code, _)) = retr(&mut other, "f.bin", &fresh).await;
    assert_eq!(code, 425);
    // A plaintext upload: no handshake at all.
    let data_port = other.epsv().await;
    other.expect("STOR x.bin", 150).await;
    let mut plain = TcpStream::connect(("127.0.0.1", data_port))
        .await
        .expect("connect");
    let _ = plain.write_all(b"not tls\r\n").await;
    assert_eq!(other.reply().await.0, 425);
    let text = scrape(metrics).await;
    let handshakes = |connection: &str, kind: &str| {
        sample(
            &text,
            &format!("pasvd_tls_handshakes_total{{connection=\"{connection}\",kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(handshakes("control", "full"), 2.0);
    assert_eq!(handshakes("control", "resumed"), 0.0);
    assert_eq!(handshakes("data", "resumed"), 2.0);
    assert_eq!(handshakes("data", "full"), 0.0);
    let refused = |reason: &str| {
        sample(
            &text,
            &format!("pasvd_tls_data_refused_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(refused("not_resumed"), 1.0);
    assert_eq!(refused("failed"), 1.0);
    assert_eq!(refused("timeout"), 0.0);
    assert_eq!(sample(&text, "pasvd_tls_control_failed_total"), 0.0);
    let _ = stop.send(());
    running.await.expect("join").expect("stopped");
}
