//! The pasvd binary against real clients on loopback: curl, lftp, wget and Python's ftplib.
//! Each tool must be installed (`apt-get install -y curl lftp wget python3`); a missing one
//! fails its test with that message.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};

/// pasvd as a child process, killed on drop.
struct Pasvd {
    child: Child,
    port: u16,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pasvd {
    /// Starts the binary on 127.0.0.1:0 with a fresh root and its own passive block.
    fn start(extra: &[&str]) -> Pasvd {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let lo = 25_500 + NEXT.fetch_add(10, Ordering::Relaxed);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir(&root).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pasvd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--pasv-address",
                "127.0.0.1",
                "--no-fsync",
            ])
            .arg("--root")
            .arg(&root)
            .args(["--pasv-min-port", &lo.to_string()])
            .args(["--pasv-max-port", &(lo + 9).to_string()])
            .args(extra)
            .env("PASVD_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("pasvd starts");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        Pasvd {
            child,
            port,
            root,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}/{path}", self.port)
    }

    fn temporaries_left(&self) -> bool {
        fn walk(dir: &Path) -> bool {
            fs::read_dir(dir).unwrap().any(|e| {
                let e = e.unwrap();
                e.file_name()
                    .to_string_lossy()
                    .starts_with(".pasvd-upload-")
                    || (e.file_type().unwrap().is_dir() && walk(&e.path()))
            })
        }
        walk(&self.root)
    }
}

impl Drop for Pasvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a tool with a timeout (the tools' own), failing clearly when it is missing.
/// Runs a Python ftplib script with the server's port as its argument; it prints `ok` when
/// every assertion in it held.
fn run_python(script: &str, port: u16, cwd: &Path) {
    let out = run("python3", &["-c", script, &port.to_string()], cwd);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

fn run(tool: &str, args: &[&str], cwd: &Path) -> Output {
    let output = Command::new(tool)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} is required for this test ({e}); install it: apt-get install -y {tool}")
        });
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

#[test]
fn curl_downloads_uploads_resumes_lists_renames_deletes() {
    let server = Pasvd::start(&["--anonymous-write"]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let body = pattern(1 << 20, 1);
    fs::write(server.root.join("big.bin"), &body).unwrap();
    let curl = |args: &[&str]| run("curl", &[&["-sS", "--max-time", "60"], args].concat(), w);

    // Download with EPSV (curl's default) and with PASV.
    curl(&["-o", "epsv.bin", &server.url("big.bin")]);
    assert_eq!(fs::read(w.join("epsv.bin")).unwrap(), body);
    curl(&["--disable-epsv", "-o", "pasv.bin", &server.url("big.bin")]);
    assert_eq!(fs::read(w.join("pasv.bin")).unwrap(), body);
    // Resumed download: REST from the partial file's size.
    fs::write(w.join("part.bin"), &body[..300_000]).unwrap();
    curl(&["-C", "-", "-o", "part.bin", &server.url("big.bin")]);
    assert_eq!(fs::read(w.join("part.bin")).unwrap(), body);

    // Upload, into a directory curl creates.
    fs::write(w.join("up.bin"), &body).unwrap();
    curl(&[
        "--ftp-create-dirs",
        "-T",
        "up.bin",
        &server.url("new/dir/up.bin"),
    ]);
    assert_eq!(fs::read(server.root.join("new/dir/up.bin")).unwrap(), body);
    // Resumed upload: SIZE, then APPE of the rest.
    fs::write(server.root.join("resume.bin"), &body[..123_456]).unwrap();
    curl(&["-C", "-", "-T", "up.bin", &server.url("resume.bin")]);
    assert_eq!(fs::read(server.root.join("resume.bin")).unwrap(), body);

    // Listing, rename, delete.
    let list = curl(&[&server.url("")]);
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        list.lines()
            .any(|l| l.starts_with("-rw") && l.ends_with(" big.bin")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with('d') && l.ends_with(" new")),
        "{list}"
    );
    let names = curl(&["-l", &server.url("")]);
    assert!(String::from_utf8_lossy(&names.stdout)
        .lines()
        .any(|l| l == "resume.bin"));
    curl(&[
        "-Q",
        "-RNFR resume.bin",
        "-Q",
        "-RNTO renamed.bin",
        &server.url(""),
    ]);
    assert!(server.root.join("renamed.bin").exists() && !server.root.join("resume.bin").exists());
    curl(&["-Q", "-DELE renamed.bin", &server.url("")]);
    assert!(!server.root.join("renamed.bin").exists());
    assert!(!server.temporaries_left());
}

#[test]
fn lftp_session_with_mlsd_and_tls_fallback() {
    let server = Pasvd::start(&["--anonymous-write"]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let body = pattern(700_000, 2);
    fs::write(server.root.join("data.bin"), &body).unwrap();
    fs::write(w.join("local.bin"), pattern(50_000, 3)).unwrap();
    // lftp asks for AUTH TLS first (answered 504), then FEAT, MLSD for listings.
    let script = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 20; \
         open -u anonymous,lftp@ -p {} 127.0.0.1; \
         get data.bin -o got.bin; put local.bin -o sent.bin; \
         mkdir made; mv sent.bin made/moved.bin; cls -1 made; rm data.bin; cls -1; \
         put local.bin -o gone.bin; rm gone.bin; rmdir made/..; bye",
        server.port
    );
    // `rmdir made/..` must fail (not empty, and the root); run it separately below.
    let script = script.replace(" rmdir made/..;", "");
    let out = run("lftp", &["-c", &script], w);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(fs::read(w.join("got.bin")).unwrap(), body);
    assert_eq!(
        fs::read(server.root.join("made/moved.bin")).unwrap(),
        pattern(50_000, 3)
    );
    assert!(
        stdout.lines().any(|l| l.trim() == "made/moved.bin"),
        "{stdout}"
    );
    assert!(!server.root.join("data.bin").exists());
    assert!(!server.root.join("gone.bin").exists());
    // Resumed download: `get -c` continues a partial file with REST.
    fs::write(server.root.join("data.bin"), &body).unwrap();
    fs::write(w.join("partial.bin"), &body[..100_000]).unwrap();
    let script = format!(
        "set cmd:fail-exit yes; set net:max-retries 1; set net:timeout 20; \
         open -u anonymous,lftp@ -p {} 127.0.0.1; get -c data.bin -o partial.bin; bye",
        server.port
    );
    run("lftp", &["-c", &script], w);
    assert_eq!(fs::read(w.join("partial.bin")).unwrap(), body);
    assert!(!server.temporaries_left());
}

#[test]
fn wget_downloads_lists_and_resumes() {
    let server = Pasvd::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let body = pattern(500_000, 4);
    fs::create_dir(server.root.join("dir")).unwrap();
    fs::write(server.root.join("dir/file.bin"), &body).unwrap();
    fs::write(server.root.join("dir/second.txt"), b"second\n").unwrap();
    let wget = |args: &[&str]| {
        run(
            "wget",
            &[&["-q", "--timeout=30", "--tries=1"], args].concat(),
            w,
        )
    };

    wget(&["-O", "one.bin", &server.url("dir/file.bin")]);
    assert_eq!(fs::read(w.join("one.bin")).unwrap(), body);
    // Resume: REST from the partial file's size.
    fs::write(w.join("file.bin"), &body[..200_000]).unwrap();
    wget(&["-c", &server.url("dir/file.bin")]);
    assert_eq!(fs::read(w.join("file.bin")).unwrap(), body);
    // Recursive fetch: wget lists with `LIST -a` and parses the `ls -l` lines.
    wget(&["-r", "-nH", "-P", "mirror", &server.url("dir/")]);
    assert_eq!(fs::read(w.join("mirror/dir/file.bin")).unwrap(), body);
    assert_eq!(
        fs::read(w.join("mirror/dir/second.txt")).unwrap(),
        b"second\n"
    );
}

#[test]
fn python_ftplib_full_session() {
    let server = Pasvd::start(&["--anonymous-write"]);
    let work = tempfile::tempdir().unwrap();
    fs::write(server.root.join("seed.txt"), b"0123456789").unwrap();
    let script = r#"
import ftplib, io, sys
port = int(sys.argv[1])
f = ftplib.FTP()
f.connect('127.0.0.1', port, timeout=30)
f.login()
data = bytes((i * 7) % 256 for i in range(300000))
f.storbinary('STOR a.bin', io.BytesIO(data))
got = io.BytesIO(); f.retrbinary('RETR a.bin', got.write)
assert got.getvalue() == data
got = io.BytesIO(); f.retrbinary('RETR a.bin', got.write, rest=1000)
assert got.getvalue() == data[1000:]
# ftplib's upload resume: REST + STOR
f.storbinary('STOR seed.txt', io.BytesIO(b'XYZ'), rest=4)
got = io.BytesIO(); f.retrbinary('RETR seed.txt', got.write)
assert got.getvalue() == b'0123XYZ', got.getvalue()
assert f.size('a.bin') == 300000
f.mkd('d')
f.rename('a.bin', 'd/b.bin')
assert f.nlst('d') == ['b.bin'], f.nlst('d')
facts = dict(f.mlsd('d'))
assert facts['b.bin']['type'] == 'file' and facts['b.bin']['size'] == '300000', facts
lines = []; f.retrlines('LIST d', lines.append)
assert len(lines) == 1 and lines[0].endswith(' b.bin'), lines
f.cwd('d'); assert f.pwd() == '/d'
f.delete('b.bin'); f.cwd('..'); f.rmd('d')
assert 'd' not in f.nlst()
# abort: start a download and abort it mid-way; the file is far larger than what the
# loopback socket buffers can hold (tcp_wmem and tcp_rmem maxima: 4 + 6 MiB), so the
# transfer cannot finish while this client reads nothing
big = bytes(32 << 20)
f.storbinary('STOR big.bin', io.BytesIO(big))
conn = f.transfercmd('RETR big.bin')
conn.recv(1024)
resp = f.abort()
assert resp[:3] == '426', resp
assert f.getresp()[:3] == '226'
conn.close()
f.voidcmd('NOOP')
f.quit()
print('ok')
"#;
    run_python(script, server.port, work.path());
    assert!(!server.temporaries_left());
}

/// The binary end to end with a TOML file, a users file made with `pasvd passwd`, and an
/// environment variable: curl logs in with the password, anonymous is refused.
#[test]
fn config_file_users_and_passwd_subcommand() {
    use std::io::Write;
    let files = tempfile::tempdir().unwrap();
    let mut passwd = Command::new(env!("CARGO_BIN_EXE_pasvd"))
        .arg("passwd")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    passwd
        .stdin
        .take()
        .unwrap()
        .write_all(b"open sesame\n")
        .unwrap();
    let out = passwd.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("open sesame"));

    let home = files.path().join("home");
    fs::create_dir(&home).unwrap();
    fs::write(home.join("mine.txt"), b"private").unwrap();
    let users = files.path().join("users.toml");
    fs::write(
        &users,
        format!(
            "[[user]]\nname = \"ann\"\npassword = \"{hash}\"\nroot = \"{}\"\nwrite = true\n",
            home.display()
        ),
    )
    .unwrap();
    let config = files.path().join("pasvd.toml");
    fs::write(
        &config,
        format!(
            "anonymous_enable = false\nusers = \"{}\"\npasv_wait = 1.5\nlogin_fail_delay = 0.01\n",
            users.display()
        ),
    )
    .unwrap();
    let server = Pasvd::start(&["--config", config.to_str().unwrap()]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let url = |user: &str, path: &str| format!("ftp://{user}@127.0.0.1:{}/{path}", server.port);
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            &url("ann:open%20sesame", "mine.txt"),
        ],
        w,
    );
    assert_eq!(out.stdout, b"private");
    fs::write(w.join("up.txt"), b"uploaded").unwrap();
    run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "-T",
            "up.txt",
            &url("ann:open%20sesame", "up.txt"),
        ],
        w,
    );
    assert_eq!(fs::read(home.join("up.txt")).unwrap(), b"uploaded");
    // Wrong password and anonymous: refused (curl exit 67, login denied).
    for user in ["ann:wrong", "anonymous:x"] {
        let status = Command::new("curl")
            .args(["-sS", "--max-time", "30", &url(user, "mine.txt")])
            .current_dir(w)
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("curl runs");
        assert_eq!(status.code(), Some(67), "{user}");
    }
}

/// ftplib in TYPE A: `retrlines` and `storlines` (which send TYPE A themselves), and the raw
/// bytes of a TYPE A download, which must be the file with CRLF line ends.
#[test]
fn python_ftplib_ascii_transfers() {
    let server = Pasvd::start(&["--anonymous-write"]);
    let work = tempfile::tempdir().unwrap();
    fs::write(
        server.root.join("lines.txt"),
        b"alpha\nbeta\r\ngamma\rdelta\n",
    )
    .unwrap();
    let script = r#"
import ftplib, io, sys
port = int(sys.argv[1])
f = ftplib.FTP()
f.connect('127.0.0.1', port, timeout=30)
f.login()
# retrlines reads in text mode, where a lone CR ends a line too.
lines = []; f.retrlines('RETR lines.txt', lines.append)
assert lines == ['alpha', 'beta', 'gamma', 'delta'], lines
f.voidcmd('TYPE A')
conn = f.transfercmd('RETR lines.txt')
raw = b''
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    raw += chunk
conn.close()
f.voidresp()
assert raw == b'alpha\r\nbeta\r\ngamma\rdelta\r\n', raw
f.storlines('STOR up.txt', io.BytesIO(b'one\ntwo\r\nthree\n'))
got = io.BytesIO(); f.retrbinary('RETR up.txt', got.write)
assert got.getvalue() == b'one\ntwo\nthree\n', got.getvalue()
f.quit()
print('ok')
"#;
    run_python(script, server.port, work.path());
    assert_eq!(
        fs::read(server.root.join("up.txt")).unwrap(),
        b"one\ntwo\nthree\n"
    );
}

/// Two passive addresses, and clients that connect to the control connection's peer whatever
/// the 227 reply says (ftplib's default, curl's `--ftp-skip-pasv-ip` default): every PASV
/// must lease on the address the client connected to, or its data connection is refused
/// (before the fix, PASV alternated between the two and half the retrievals failed).
#[test]
fn ftplib_and_curl_with_two_passive_addresses_use_the_control_address() {
    let server = Pasvd::start(&["--pasv-address", "127.0.0.2"]);
    let work = tempfile::tempdir().unwrap();
    let body = pattern(100_000, 4);
    fs::write(server.root.join("f.bin"), &body).unwrap();
    let script = r#"
import ftplib, io, sys
port = int(sys.argv[1])
f = ftplib.FTP()
f.connect('127.0.0.1', port, timeout=20)
f.login()
assert not f.trust_server_pasv_ipv4_address
hosts = set()
for i in range(6):
    hosts.add(ftplib.parse227(f.sendcmd('PASV'))[0])
    got = io.BytesIO(); f.retrbinary('RETR f.bin', got.write)
    assert len(got.getvalue()) == 100000, (i, len(got.getvalue()))
assert hosts == {'127.0.0.1'}, hosts
f.quit()
print('ok')
"#;
    run_python(script, server.port, work.path());
    for i in 0..6 {
        let name = format!("got{i}.bin");
        run(
            "curl",
            &[
                "-sS",
                "--max-time",
                "20",
                "--disable-epsv",
                "-o",
                &name,
                &server.url("f.bin"),
            ],
            work.path(),
        );
        assert_eq!(fs::read(work.path().join(&name)).unwrap(), body, "{name}");
    }
}

/// With `--pasv-follow-advertised` PASV spreads over both addresses again, for clients that
/// connect where the 227 reply says (ftplib with `trust_server_pasv_ipv4_address`).
#[test]
fn ftplib_following_the_advertised_address_gets_both_passive_addresses() {
    let server = Pasvd::start(&["--pasv-address", "127.0.0.2", "--pasv-follow-advertised"]);
    let work = tempfile::tempdir().unwrap();
    fs::write(server.root.join("f.bin"), pattern(50_000, 5)).unwrap();
    let script = r#"
import ftplib, io, sys
port = int(sys.argv[1])
f = ftplib.FTP()
f.connect('127.0.0.1', port, timeout=20)
f.login()
f.trust_server_pasv_ipv4_address = True
hosts = set()
makepasv = f.makepasv
def recording():
    host, port = makepasv()
    hosts.add(host)
    return host, port
f.makepasv = recording
for i in range(6):
    got = io.BytesIO(); f.retrbinary('RETR f.bin', got.write)
    assert len(got.getvalue()) == 50000, (i, len(got.getvalue()))
assert hosts == {'127.0.0.1', '127.0.0.2'}, hosts
f.quit()
print('ok')
"#;
    run_python(script, server.port, work.path());
}

/// `pasvd --check-config` validates the file and flags together, prints the settings in
/// effect and exits without serving; a bad configuration exits 1 naming the key.
#[test]
fn check_config_prints_the_effective_settings_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pasvd.toml");
    fs::write(
        &file,
        format!(
            "root = {:?}\npasv_min_port = 41000\npasv_max_port = 41009\n\
             pasv_public_address_for = [\"10.0.0.0/8=10.0.0.5\"]\n\
             proxy_protocol = true\nproxy_from = [\"10.1.0.0/16\"]\n",
            dir.path().display().to_string()
        ),
    )
    .unwrap();
    let check = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pasvd"))
            .arg("--config")
            .arg(&file)
            .arg("--check-config")
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("pasvd runs")
    };
    let out = check(&["--pasv-max-port", "41004"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "pasv_min_port = 41000\n",
        "pasv_max_port = 41004\n",
        "pasv_public_address_for = [\"10.0.0.0/8=10.0.0.5\"]\n",
        "proxy_from = [\"10.1.0.0/16\"]\n",
        "max_passive_per_ip = 2\n",
    ] {
        assert!(text.contains(expected), "{expected:?} missing from\n{text}");
    }
    let out = check(&["--pasv-min-port", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pasv_min_port"));
    let out = check(&["--proxy-from", "10.0.0.0/99"]);
    assert_eq!(out.status.code(), Some(1));
}

/// Runs the Python `body` against a fresh pasvd with `small.bin` (1 KiB of 7s) in its root:
/// `f` is an ftplib session logged in and in binary mode; QUIT follows.
fn with_small_download(body: &str) {
    let server = Pasvd::start(&[]);
    let work = tempfile::tempdir().unwrap();
    fs::write(server.root.join("small.bin"), vec![7u8; 1024]).unwrap();
    let script = format!(
        "import ftplib, socket, struct, sys\n\
         f = ftplib.FTP()\n\
         f.connect('127.0.0.1', int(sys.argv[1]), timeout=30)\n\
         f.login()\n\
         f.voidcmd('TYPE I')\n\
         {body}\n\
         f.quit()\n\
         print('ok')\n"
    );
    run_python(&script, server.port, work.path());
}

/// A client that writes on its download connection still gets the whole file: the server's
/// FIN goes out with the data before it closes a socket with unread input (which resets the
/// connection and would drop data still queued).
#[test]
fn a_small_download_reaches_a_client_that_wrote_on_its_data_connection() {
    with_small_download(
        r#"
for _ in range(3):
    host, dport = f.makepasv()
    conn = socket.create_connection((host, dport), timeout=30)
    conn.sendall(b'x')
    f.sendcmd('RETR small.bin')
    data = b''
    while True:
        try:
            chunk = conn.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    assert data == bytes([7]) * 1024, len(data)
    conn.close()
    f.voidresp()
"#,
    );
}

/// A small download reaches the client as one segment carrying the data and the FIN (the
/// server sends it with MSG_MORE and then shuts down), so the client's data socket receives
/// exactly two segments: the SYN-ACK and that one (`tcpi_segs_in` from TCP_INFO).
#[test]
fn a_small_download_arrives_with_its_fin_in_one_segment() {
    with_small_download(
        r#"
counts = []
for _ in range(5):
    conn = f.transfercmd('RETR small.bin')
    data = b''
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data == bytes([7]) * 1024, len(data)
    # struct tcp_info: tcpi_segs_in is the u32 at byte 140.
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    counts.append(struct.unpack_from('I', info, 140)[0])
    conn.close()
    f.voidresp()
assert counts == [2] * 5, counts
"#,
    );
}
