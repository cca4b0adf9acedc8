//! The client library and the `pasv` binary against a real `pasvd` on loopback, and against
//! small fake servers for the behaviours pasvd does not show (EPSV refused, 425 with a hint).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pasv_tools::client::{
    Client, ClientConfig, ClientError, DataMode, FtpUrl, ListCommand, RetryPolicy,
};
use pasv_tools::clock;
use pasv_tools::server::{Config, Server};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

// ---------------------------------------------------------------------------------------
// pasvd in-process

struct Pasvd {
    addr: SocketAddr,
    root: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

impl Pasvd {
    fn url(&self, path: &str) -> String {
        format!("ftp://{}/{}", self.addr, path)
    }

    fn ftp_url(&self, path: &str) -> FtpUrl {
        FtpUrl::parse(&self.url(path)).unwrap()
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }
}

/// Each test gets its own passive range (tests run in parallel), below the kernel's
/// ephemeral range so that client sockets never take a passive port.
async fn pasvd(lo: u16, hi: u16, tweak: impl FnOnce(&mut Config)) -> Pasvd {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("hello.txt"), b"hello, world\n").unwrap();
    std::fs::write(root.path().join("big.bin"), pattern(300_000)).unwrap();
    std::fs::create_dir(root.path().join("sub")).unwrap();
    let mut config = Config::for_tests(root.path().to_path_buf());
    config.pasv_min_port = lo;
    config.pasv_max_port = hi;
    config.pasv_wait = Duration::from_millis(100);
    tweak(&mut config);
    let server = Server::bind(config).await.unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    Pasvd {
        addr,
        root,
        _stop: stop,
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 % 251) as u8).collect()
}

fn quick_config() -> ClientConfig {
    ClientConfig {
        reply_timeout: Duration::from_secs(10),
        data_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

/// [`quick_config`] in passive mode (PASV).
fn pasv_config() -> ClientConfig {
    ClientConfig {
        data_mode: DataMode::Pasv,
        ..quick_config()
    }
}

async fn read_all(download: &mut pasv_tools::client::Download<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    download.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_commands_against_pasvd() {
    let server = pasvd(26100, 26119, |_| {}).await;
    let url = server.ftp_url("");
    let mut c = Client::open(&url, quick_config()).await.unwrap();

    // Listings: LIST, NLST, MLSD with facts.
    let list = String::from_utf8(c.list(None).await.unwrap()).unwrap();
    assert!(
        list.contains("hello.txt") && list.contains("big.bin"),
        "{list}"
    );
    let mut names = c.nlst(None).await.unwrap();
    names.sort();
    assert!(names.contains(&b"hello.txt".to_vec()), "{names:?}");
    let entries = c.mlsd(None).await.unwrap();
    let big = entries
        .iter()
        .find(|e| e.name == b"big.bin")
        .expect("big.bin in MLSD");
    assert_eq!(big.size(), Some(300_000));
    assert_eq!(big.kind(), Some(pasv_tools::client::EntryKind::File));
    let sub = entries
        .iter()
        .find(|e| e.name == b"sub")
        .expect("sub in MLSD");
    assert_eq!(sub.kind(), Some(pasv_tools::client::EntryKind::Dir));

    // Retrieve whole, then resumed from an offset (REST).
    let mut d = c.retrieve("big.bin", 0).await.unwrap();
    let body = read_all(&mut d).await;
    assert_eq!(d.bytes_read(), 300_000);
    let reply = d.finish().await.unwrap();
    assert_eq!(reply.code().get(), 226);
    assert_eq!(body, pattern(300_000));
    let mut d = c.retrieve("big.bin", 123_456).await.unwrap();
    let tail = read_all(&mut d).await;
    d.finish().await.unwrap();
    assert_eq!(tail, pattern(300_000)[123_456..]);

    // Store, size, append, store_at (REST + STOR), mdtm.
    let mut u = c.store("up.bin").await.unwrap();
    u.write_all(&pattern(1000)[..600]).await.unwrap();
    u.finish().await.unwrap();
    assert_eq!(c.size("up.bin").await.unwrap(), 600);
    let mut u = c.append("up.bin").await.unwrap();
    u.write_all(&pattern(1000)[600..800]).await.unwrap();
    u.finish().await.unwrap();
    assert_eq!(
        std::fs::read(server.path("up.bin")).unwrap(),
        pattern(1000)[..800]
    );
    let mut u = c.store_at("up.bin", 800).await.unwrap();
    u.write_all(&pattern(1000)[800..]).await.unwrap();
    u.finish().await.unwrap();
    assert_eq!(std::fs::read(server.path("up.bin")).unwrap(), pattern(1000));
    let stamp = c.mdtm("up.bin").await.unwrap();
    assert!(stamp.len() >= 14 && stamp.starts_with("20"), "{stamp}");

    // Directories, rename, delete.
    let reply = c.mkdir("newdir").await.unwrap();
    assert_eq!(reply.code().get(), 257);
    assert!(server.path("newdir").is_dir());
    c.rename("up.bin", "newdir/moved.bin").await.unwrap();
    assert!(server.path("newdir/moved.bin").is_file());
    c.delete("newdir/moved.bin").await.unwrap();
    c.rmdir("newdir").await.unwrap();
    assert!(!server.path("newdir").exists());

    // Permanent errors keep the server's code and text.
    let err = c.size("missing.bin").await.unwrap_err();
    assert_eq!(err.code().map(|c| c.get()), Some(550), "{err}");
    assert!(err.is_permanent() && !err.is_transient());
    let err = match c.retrieve("missing.bin", 0).await {
        Err(e) => e,
        Ok(_) => panic!("RETR of a missing file succeeded"),
    };
    assert_eq!(err.code().map(|c| c.get()), Some(550), "{err}");
    // The connection is still usable after a refused transfer.
    c.noop().await.unwrap();
    assert!(!c.is_broken());

    // ABOR in the middle of a large download; the session goes on.
    std::fs::write(server.path("huge.bin"), vec![7u8; 32 << 20]).unwrap();
    let mut d = c.retrieve("huge.bin", 0).await.unwrap();
    let mut first = vec![0u8; 65536];
    d.read_exact(&mut first).await.unwrap();
    d.abort().await.unwrap();
    c.cwd("sub").await.unwrap();
    c.cwd("..").await.unwrap();
    let mut d = c.retrieve("hello.txt", 0).await.unwrap();
    assert_eq!(read_all(&mut d).await, b"hello, world\n");
    d.finish().await.unwrap();

    // Transfers dropped without finish: their final replies are skipped, not taken for the
    // next command's.
    {
        let mut d = c.retrieve("hello.txt", 0).await.unwrap();
        assert_eq!(read_all(&mut d).await, b"hello, world\n");
    }
    assert_eq!(c.size("big.bin").await.unwrap(), 300_000);
    {
        let mut d = c.retrieve("huge.bin", 0).await.unwrap();
        d.read_exact(&mut first).await.unwrap();
    }
    c.noop().await.unwrap();
    assert_eq!(c.size("hello.txt").await.unwrap(), 13);

    // pasvd speaks EPSV: the default mode never falls back.
    assert!(!c.epsv_refused());
    let port = c.last_data_addr().unwrap().port();
    assert!((26100..=26119).contains(&port), "{port}");
    c.quit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_mode_and_pasv_only_against_pasvd() {
    let server = pasvd(26120, 26139, |_| {}).await;
    let url = server.ftp_url("");
    for mode in [DataMode::Active, DataMode::Pasv, DataMode::Epsv] {
        let config = ClientConfig {
            data_mode: mode,
            ..quick_config()
        };
        let mut c = Client::open(&url, config).await.unwrap();
        let mut d = c.retrieve("hello.txt", 0).await.unwrap();
        assert_eq!(read_all(&mut d).await, b"hello, world\n", "{mode:?}");
        d.finish().await.unwrap();
        let mut d = c.list_stream(ListCommand::Nlst, None).await.unwrap();
        let names = read_all(&mut d).await;
        d.finish().await.unwrap();
        assert!(String::from_utf8_lossy(&names).contains("hello.txt"));
        c.quit().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Fake servers for behaviours pasvd does not show

#[derive(Clone, Default)]
struct FakeOptions {
    /// Answer EPSV with 502.
    refuse_epsv: bool,
    /// Answer the first N PASV/EPSV with this reply.
    refuse_passive: Option<(usize, &'static str)>,
    /// The address a 227 advertises (the real listener is always on 127.0.0.1).
    advertise: Option<[u8; 4]>,
    /// Greet the first N connections with this reply and close them.
    refuse_greeting: Option<(usize, &'static str)>,
}

/// A server whose data ports are always taken: every PASV and EPSV gets a 425 with a short
/// retry hint.
fn always_busy() -> FakeOptions {
    FakeOptions {
        refuse_passive: Some((
            100,
            "425 Try later, data connection in use (retry after 0.01s)",
        )),
        ..Default::default()
    }
}

type CommandLog = Arc<Mutex<Vec<(String, tokio::time::Instant)>>>;

/// A one-file FTP server (`data.bin`) that logs every command with its arrival time.
async fn fake_server(options: FakeOptions) -> (SocketAddr, CommandLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: CommandLog = Arc::default();
    let log2 = Arc::clone(&log);
    tokio::spawn(async move {
        let mut refused = 0usize;
        // Bounded: a test opens at most a few sessions.
        for i in 0..16 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            log2.lock().unwrap().push(("CONNECT".into(), clock::now()));
            if let Some((n, text)) = options.refuse_greeting {
                if i < n {
                    let _ = stream.write_all(format!("{text}\r\n").as_bytes()).await;
                    continue;
                }
            }
            refused = fake_session(stream, &options, &log2, refused).await;
        }
    });
    (addr, log)
}

/// The root URL of a server listening on `addr`.
fn ftp_url(addr: SocketAddr) -> FtpUrl {
    FtpUrl::parse(&format!("ftp://{addr}/")).unwrap()
}

async fn fake_session(
    stream: TcpStream,
    options: &FakeOptions,
    log: &CommandLog,
    mut refused: usize,
) -> usize {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 fake ready\r\n").await;
    let mut data: Option<TcpListener> = None;
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        log.lock().unwrap().push((verb.clone(), clock::now()));
        let reply: String = match verb.as_str() {
            "USER" => "331 password please".into(),
            "PASS" => "230 logged in".into(),
            "TYPE" => "200 binary".into(),
            "EPSV" if options.refuse_epsv => "502 EPSV not implemented".into(),
            "EPSV" | "PASV" => {
                if let Some((n, text)) = options.refuse_passive {
                    if refused < n {
                        refused += 1;
                        let _ = write.write_all(format!("{text}\r\n").as_bytes()).await;
                        continue;
                    }
                }
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let port = l.local_addr().unwrap().port();
                data = Some(l);
                if verb == "EPSV" {
                    format!("229 Entering Extended Passive Mode (|||{port}|)")
                } else {
                    let [a, b, c, d] = options.advertise.unwrap_or([127, 0, 0, 1]);
                    format!(
                        "227 Entering Passive Mode ({a},{b},{c},{d},{},{})",
                        port >> 8,
                        port & 255
                    )
                }
            }
            "RETR" => match data.take() {
                Some(l) => {
                    let _ = write.write_all(b"150 opening\r\n").await;
                    if let Ok(Ok((mut s, _))) =
                        tokio::time::timeout(Duration::from_secs(5), l.accept()).await
                    {
                        let _ = s.write_all(b"fake data").await;
                        let _ = s.shutdown().await;
                    }
                    "226 done".into()
                }
                None => "425 use PASV first".into(),
            },
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                break;
            }
            _ => "502 not implemented".into(),
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
    refused
}

fn count(log: &CommandLog, verb: &str) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(v, _)| v == verb)
        .count()
}

async fn fetch(c: &mut Client) -> Result<Vec<u8>, ClientError> {
    let mut d = c.retrieve("data.bin", 0).await?;
    let mut body = Vec::new();
    d.read_to_end(&mut body).await?;
    d.finish().await?;
    Ok(body)
}

#[tokio::test]
async fn epsv_refused_falls_back_to_pasv_once() {
    let (addr, log) = fake_server(FakeOptions {
        refuse_epsv: true,
        ..Default::default()
    })
    .await;
    let url = ftp_url(addr);
    let mut c = Client::open(&url, quick_config()).await.unwrap();
    assert_eq!(fetch(&mut c).await.unwrap(), b"fake data");
    assert!(c.epsv_refused());
    assert_eq!(fetch(&mut c).await.unwrap(), b"fake data");
    c.quit().await.unwrap();
    // EPSV once, then remembered: PASV for both transfers.
    assert_eq!(count(&log, "EPSV"), 1);
    assert_eq!(count(&log, "PASV"), 2);
}

#[tokio::test]
async fn data_goes_to_the_control_peer_unless_trusted() {
    // 192.0.2.1 (TEST-NET-1) is unreachable: only the control peer policy makes this work.
    let options = FakeOptions {
        advertise: Some([192, 0, 2, 1]),
        ..Default::default()
    };
    let (addr, _log) = fake_server(options).await;
    let url = ftp_url(addr);
    let mut c = Client::open(&url, pasv_config()).await.unwrap();
    assert_eq!(fetch(&mut c).await.unwrap(), b"fake data");
    assert_eq!(c.last_data_addr().unwrap().ip(), addr.ip());
    c.quit().await.unwrap();

    let config = ClientConfig {
        trust_pasv_ip: true,
        data_timeout: Duration::from_millis(300),
        retry: RetryPolicy::none(),
        ..pasv_config()
    };
    let mut c = Client::open(&url, config).await.unwrap();
    let err = fetch(&mut c).await.unwrap_err();
    assert!(err.is_network(), "{err}");
    assert_eq!(c.last_data_addr().unwrap().ip().to_string(), "192.0.2.1");
}

#[tokio::test]
async fn retries_425_honouring_the_hint() {
    let options = FakeOptions {
        refuse_passive: Some((
            1,
            "425 Try later, data connection in use (retry after 0.2s)",
        )),
        ..Default::default()
    };
    let (addr, log) = fake_server(options).await;
    let url = ftp_url(addr);
    let mut c = Client::open(&url, pasv_config()).await.unwrap();
    assert_eq!(fetch(&mut c).await.unwrap(), b"fake data");
    c.quit().await.unwrap();
    let log = log.lock().unwrap();
    let pasv: Vec<_> = log
        .iter()
        .filter(|(v, _)| v == "PASV")
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(pasv.len(), 2);
    let waited = pasv[1].saturating_duration_since(pasv[0]);
    // The hint says 0.2 s; the client adds at most 10% jitter, and the bound above leaves
    // room for a busy machine.
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_secs(3), "{waited:?}");
}

#[tokio::test]
async fn retries_a_421_greeting() {
    let options = FakeOptions {
        refuse_greeting: Some((2, "421 Too many connections, retry after 0.05s")),
        ..Default::default()
    };
    let (addr, log) = fake_server(options).await;
    let url = ftp_url(addr);
    let mut c = Client::open(&url, quick_config()).await.unwrap();
    assert_eq!(c.greeting().code().get(), 220);
    assert_eq!(fetch(&mut c).await.unwrap(), b"fake data");
    c.quit().await.unwrap();
    assert_eq!(count(&log, "CONNECT"), 3);

    // Without retries the 421 is returned as it is: transient, with the server's text.
    let options = FakeOptions {
        refuse_greeting: Some((1, "421 Too many connections")),
        ..Default::default()
    };
    let (addr, _log) = fake_server(options).await;
    let config = ClientConfig {
        retry: RetryPolicy::none(),
        ..quick_config()
    };
    let err = Client::connect("127.0.0.1", addr.port(), config)
        .await
        .unwrap_err();
    assert_eq!(err.code().map(|c| c.get()), Some(421), "{err}");
    assert!(err.is_transient() && !err.is_exhausted());
    assert!(err.to_string().contains("Too many connections"), "{err}");
}

#[tokio::test]
async fn retries_are_bounded_and_end_with_the_servers_code() {
    let (addr, log) = fake_server(always_busy()).await;
    let url = ftp_url(addr);
    let config = ClientConfig {
        retry: RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::default()
        },
        ..pasv_config()
    };
    let mut c = Client::open(&url, config).await.unwrap();
    let err = fetch(&mut c).await.unwrap_err();
    assert!(err.is_exhausted(), "{err}");
    assert!(err.is_transient());
    assert_eq!(err.code().map(|c| c.get()), Some(425));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(10)));
    assert_eq!(count(&log, "PASV"), 3);
}

// ---------------------------------------------------------------------------------------
// The binary

async fn pasv(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_pasv"));
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("pasv finished within 60 s")
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {:?} stderr {:?}",
            stdout(o),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn assert_no_escapes(o: &Output) {
    for stream in [&o.stdout, &o.stderr] {
        assert!(
            !stream.contains(&0x1b),
            "escape code in {:?}",
            String::from_utf8_lossy(stream)
        );
        assert!(
            !stream.contains(&b'\r'),
            "carriage return in {:?}",
            String::from_utf8_lossy(stream)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_commands_and_exit_codes() {
    let server = pasvd(26140, 26159, |_| {}).await;
    let local = tempfile::tempdir().unwrap();
    let at = |name: &str| local.path().join(name).to_string_lossy().into_owned();

    let o = pasv(&["ls", &server.url("")], None).await;
    assert!(o.status.success(), "{o:?}");
    assert!(stdout(&o).contains("big.bin"));
    let o = pasv(&["ls", "--names", &server.url("")], None).await;
    assert!(stdout(&o).lines().any(|l| l == "hello.txt"), "{o:?}");
    let o = pasv(&["ls", "--mlsd", &server.url("")], None).await;
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("file") && l.contains("300000") && l.ends_with("big.bin")),
        "{o:?}"
    );

    // get, piped: no progress bar, no escape codes.
    let o = pasv(&["get", &server.url("big.bin"), &at("big.bin")], None).await;
    assert!(o.status.success(), "{o:?}");
    assert_no_escapes(&o);
    assert_eq!(std::fs::read(at("big.bin")).unwrap(), pattern(300_000));

    // get --continue fetches only the rest.
    std::fs::write(at("part.bin"), &pattern(300_000)[..100_000]).unwrap();
    let o = pasv(
        &["get", "--continue", &server.url("big.bin"), &at("part.bin")],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    assert_eq!(std::fs::read(at("part.bin")).unwrap(), pattern(300_000));

    // put, then put --continue (APPE and REST) from a partial remote file.
    let o = pasv(&["put", &server.url(""), &at("big.bin")], None).await;
    assert!(o.status.success(), "{o:?}");
    assert_no_escapes(&o);
    for how in ["appe", "rest"] {
        std::fs::write(server.path("resumed.bin"), &pattern(300_000)[..70_000]).unwrap();
        let o = pasv(
            &[
                "put",
                "-c",
                "--resume-with",
                how,
                &server.url("resumed.bin"),
                &at("big.bin"),
            ],
            None,
        )
        .await;
        assert!(o.status.success(), "{how}: {o:?}");
        assert_eq!(
            std::fs::read(server.path("resumed.bin")).unwrap(),
            pattern(300_000),
            "{how}"
        );
    }

    // size, mdtm, mkdir, mv, rm, rmdir.
    let o = pasv(&["size", &server.url("big.bin")], None).await;
    assert_eq!(stdout(&o).trim(), "300000");
    let o = pasv(&["mdtm", &server.url("big.bin")], None).await;
    assert!(o.status.success() && stdout(&o).trim().len() >= 14, "{o:?}");
    assert!(pasv(&["mkdir", &server.url("d")], None)
        .await
        .status
        .success());
    assert!(pasv(&["mv", &server.url("resumed.bin"), "d/r.bin"], None)
        .await
        .status
        .success());
    assert!(server.path("d/r.bin").is_file());
    assert!(pasv(&["rm", &server.url("d/r.bin")], None)
        .await
        .status
        .success());
    assert!(pasv(&["rmdir", &server.url("d")], None)
        .await
        .status
        .success());
    assert!(!server.path("d").exists());

    // Exit codes: 2 permanent, 1 usage, 4 network.
    let o = pasv(&["rm", &server.url("no-such-file")], None).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("550"));
    // A refused download leaves an existing local file alone.
    std::fs::write(at("keep.txt"), b"precious").unwrap();
    let o = pasv(&["get", &server.url("no-such-file"), &at("keep.txt")], None).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert_eq!(std::fs::read(at("keep.txt")).unwrap(), b"precious");
    let o = pasv(&["get"], None).await;
    assert_eq!(o.status.code(), Some(1));
    let o = pasv(&["ls", "http://example.invalid/"], None).await;
    assert_eq!(o.status.code(), Some(1));
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let o = pasv(&["ls", &format!("ftp://127.0.0.1:{port}/")], None).await;
    assert_eq!(o.status.code(), Some(4), "{o:?}");
}

#[tokio::test]
async fn binary_exit_code_3_when_retries_run_out() {
    let (addr, _log) = fake_server(always_busy()).await;
    let o = pasv(
        &[
            "--attempts",
            "2",
            "get",
            &format!("ftp://{addr}/data.bin"),
            "-",
        ],
        None,
    )
    .await;
    assert_eq!(o.status.code(), Some(3), "{o:?}");
}

#[tokio::test]
async fn decode_known_answers() {
    let input = b"227 Entering Passive Mode (127,0,0,1,4,1).\r\n\
        211-Features:\r\n MDTM\r\n211 End\r\n\
        229 Entering Extended Passive Mode (|||50000|)\r\n\
        425 Try later, data connection in use (retry after 0.25s)\r\n\
        150-a\r\n226 wrong code closes\r\n\
        not a reply\r\n\
        200 ok\r\n";
    let o = pasv(&["decode", "reply"], Some(input)).await;
    assert!(o.status.success(), "{o:?}");
    let values: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values[0]["code"], 227);
    assert_eq!(values[0]["pasv"], "127.0.0.1:1025");
    assert_eq!(values[0]["multiline"], false);
    assert_eq!(values[1]["code"], 211);
    assert_eq!(values[1]["multiline"], true);
    assert_eq!(values[1]["lines"].as_array().unwrap().len(), 3);
    assert_eq!(values[2]["epsv_port"], 50000);
    assert_eq!(values[2]["pasv"], Value::Null);
    assert_eq!(values[3]["retry_after_s"], 0.25);
    // Lenient: another code closes the reply, which keeps the opening code and is flagged.
    assert_eq!(values[4]["code"], 150);
    assert_eq!(values[4]["mismatch"], true);
    assert_eq!(values[4]["lines"].as_array().unwrap().len(), 2);
    assert!(values[5]["error"].is_string(), "{:?}", values[5]);
    // Decoding goes on after the error.
    assert_eq!(values.last().unwrap()["code"], 200);

    let input = b"PORT 127,0,0,1,4,1\r\nretr a b\nPASS secret\r\nREST abc\r\nNOOP\r\nEPRT |2|::1|5000|\r\nLIST";
    let o = pasv(&["decode", "command"], Some(input)).await;
    assert!(o.status.success(), "{o:?}");
    assert!(!stdout(&o).contains("secret") && !stdout(&o).contains(&decode_hex("secret")));
    let values: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(values[0]["verb"], "PORT");
    assert_eq!(values[0]["port_addr"], "127.0.0.1:1025");
    assert_eq!(values[1]["verb"], "RETR");
    assert_eq!(values[1]["arg_hex"], "612062");
    assert_eq!(values[2]["verb"], "PASS");
    assert_eq!(values[2]["arg_hex"], Value::Null);
    assert_eq!(values[3]["error"], "invalid_argument");
    assert_eq!(values[4]["verb"], "NOOP");
    assert_eq!(values[4]["arg_hex"], Value::Null);
    assert_eq!(values[5]["port_addr"], "[::1]:5000");
    assert_eq!(values[6]["error"], "truncated");
}

fn decode_hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// plan: the JSON agrees with rate_max = N·A / (h + f·T) and Erlang B computed here

/// Erlang B by its defining sum, in logs to stay finite: B = (A^N/N!) / Σ_{k<=N} A^k/k!.
fn erlang_b_by_sum(servers: u64, load: f64) -> f64 {
    let log_term = |k: u64| k as f64 * load.ln() - (1..=k).map(|i| (i as f64).ln()).sum::<f64>();
    let top = log_term(servers);
    let max = (0..=servers)
        .map(log_term)
        .fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = (0..=servers).map(|k| (log_term(k) - max).exp()).sum();
    (top - max).exp() / sum
}

#[tokio::test]
async fn plan_agrees_with_the_formula() {
    // (range, addresses, T, h, f, rate)
    let cases = [
        ((50_000u16, 53_999u16), 1u64, 120.0, 0.0, 1.0, 30.0),
        ((30_000, 30_019), 1, 60.0, 0.05, 1.0, 0.3),
        ((40_000, 40_099), 3, 60.0, 0.5, 0.5, 8.0),
    ];
    for ((lo, hi), a, t, h, f, rate) in cases {
        let o = pasv(
            &[
                "plan",
                "--ports",
                &format!("{lo}-{hi}"),
                "--addresses",
                &a.to_string(),
                "--time-wait",
                &t.to_string(),
                "--hold",
                &h.to_string(),
                "--server-close",
                &f.to_string(),
                "--rate",
                &rate.to_string(),
                "--json",
            ],
            None,
        )
        .await;
        assert!(o.status.success(), "{o:?}");
        let v = json(&o);
        let n = u64::from(hi - lo) + 1;
        let expected = (n * a) as f64 / (h + f * t);
        let rate_max = v["rate_max"].as_f64().unwrap();
        assert!(
            (rate_max - expected).abs() <= 1e-9 * expected,
            "{rate_max} vs {expected}"
        );
        let headroom = v["headroom"].as_f64().unwrap();
        assert!(
            (headroom - (1.0 - rate / expected)).abs() < 1e-9,
            "{headroom}"
        );
        let refusal = v["refusal_rate"].as_f64().unwrap();
        let b = erlang_b_by_sum(n * a, rate * (h + f * t));
        assert!((refusal - b).abs() <= 1e-9 + 1e-6 * b, "{refusal} vs {b}");
        let min = v["min_ports_for_rate"].as_u64().unwrap();
        let load = rate * (h + f * t);
        assert!(erlang_b_by_sum(min * a, load) <= 0.001, "{min}");
        assert!(
            min == 1 || erlang_b_by_sum((min - 1) * a, load) > 0.001,
            "{min}"
        );
    }
    // The design's example: 20 ports at 95% of rate_max refuse about 13%.
    let o = pasv(
        &[
            "plan",
            "--ports",
            "1-20",
            "--time-wait",
            "60",
            "--rate",
            &(0.95 * 20.0 / 60.0).to_string(),
            "--json",
        ],
        None,
    )
    .await;
    let refusal = json(&o)["refusal_rate"].as_f64().unwrap();
    assert!((0.12..0.14).contains(&refusal), "{refusal}");
    // And the human form has its chart.
    let o = pasv(&["plan", "--ports", "1-20", "--time-wait", "60"], None).await;
    assert!(
        stdout(&o).contains("rate_max") && stdout(&o).contains('#'),
        "{o:?}"
    );
}

// ---------------------------------------------------------------------------------------
// probe and load against pasvd

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_identifies_the_range_of_pasvd() {
    let server = pasvd(26160, 26179, |_| {}).await;
    let o = pasv(
        &[
            "probe",
            &server.url(""),
            "--count",
            "60",
            "--transfers",
            "30",
            "--push",
            "30",
            "--json",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    assert_eq!(v["min_port"], 26160, "{v}");
    assert_eq!(v["max_port"], 26179, "{v}");
    assert_eq!(v["ports_seen"], 20, "{v}");
    assert!(v["pattern"].is_string());
    // pasvd's default scope on Linux with SO_REUSEADDR is None: closed ports come back.
    assert_eq!(v["reuses_closed_ports"], true, "{v}");
    // Pushed past 20 held listeners, pasvd refuses with 425 and never leaves the range.
    assert_eq!(v["on_exhaustion"], "425", "{v}");
    assert_eq!(v["exhaustion"]["offers_outside_range"], 0, "{v}");
    assert_eq!(v["exhaustion"]["sessions_killed"], 0, "{v}");
    assert!(v["capacity"]["port_scope"].as_f64().unwrap() > 0.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_sees_quarantine_when_pasvd_enforces_it() {
    let server = pasvd(26180, 26189, |c| {
        c.quarantine = Some(pasv_pool::QuarantineScope::Port);
        c.pasv_wait = Duration::ZERO;
    })
    .await;
    let url = server.url("");
    let o = pasv(
        &[
            "probe",
            &url,
            "--count",
            "20",
            "--transfers",
            "15",
            "--push",
            "0",
            "--json",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    assert_eq!(v["reuses_closed_ports"], false, "{v}");
    // 10 ports, each quarantined after its one transfer: the 11th listing is refused with
    // the pool's exact retry time.
    assert_eq!(v["transfers"], 10, "{v}");
    assert_eq!(v["on_exhaustion"], "425", "{v}");
    let retry = v["exhaustion"]["retry_after_s"].as_f64().unwrap();
    assert!(retry > 50.0 && retry <= 60.0, "{retry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_reports_against_pasvd() {
    let server = pasvd(26190, 26209, |_| {}).await;
    std::fs::create_dir(server.path("upload")).unwrap();
    let o = pasv(
        &[
            "load",
            &server.url("hello.txt"),
            "-k",
            "3",
            "--duration",
            "30",
            "--max-transfers",
            "150",
            "--mix",
            "retr=2,stor=1,list=1",
            "--size",
            "4096",
            "--expect-range",
            "26190-26209",
            "--delete-after",
            "--mode",
            "epsv",
            "--threads",
            "2",
            "--json",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    assert_eq!(v["threads"], 2, "{v}");
    for key in [
        "transfers",
        "transfers_per_s",
        "bytes_per_s",
        "errors",
        "count_425",
        "sessions_lost",
        "latency_ms",
        "ports_seen",
        "ports_outside_range",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["transfers"], 150, "{v}");
    assert_eq!(v["errors"].as_object().unwrap().len(), 0, "{v}");
    assert_eq!(v["ports_outside_range"], 0);
    let seen = v["ports_seen"].as_u64().unwrap();
    assert!((1..=20).contains(&seen), "{seen}");
    let by_op = &v["transfers_by_op"];
    assert!(by_op["retr"].as_u64().unwrap() > 0 && by_op["stor"].as_u64().unwrap() > 0);
    let l = &v["latency_ms"];
    assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());
    assert!(l["p99"].as_f64().unwrap() <= l["max"].as_f64().unwrap());
    // --delete-after removed every session's upload.
    let left: Vec<_> = std::fs::read_dir(server.path("upload")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // Closed loop: no open-loop figures.
    assert!(v["open_loop"].is_null(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_runs_every_session_whatever_its_thread() {
    let server = pasvd(26230, 26249, |_| {}).await;
    std::fs::create_dir(server.path("upload")).unwrap();
    // 7 sessions dealt to 3 event loops (3, 2 and 2): each session stores its own file, so
    // the files left say which sessions ran. Far more threads than sessions gives one each.
    // Bounded by time, not by a shared count of transfers: every session gets its second.
    for (threads, sessions) in [("3", 7), ("64", 3)] {
        let k = sessions.to_string();
        let o = pasv(
            &[
                "load",
                &server.url("hello.txt"),
                "-k",
                &k,
                "--threads",
                threads,
                "--mix",
                "stor=1",
                "--duration",
                "1",
                "--stor-path",
                &format!("upload/t{threads}-{{session}}.bin"),
                "--json",
            ],
            None,
        )
        .await;
        assert!(o.status.success(), "{o:?}");
        let v = json(&o);
        assert_eq!(v["threads"], sessions.min(threads.parse().unwrap()), "{v}");
        assert!(v["transfers"].as_u64().unwrap() >= sessions, "{v}");
        assert_eq!(v["errors"].as_object().unwrap().len(), 0, "{v}");
        let mut left: Vec<String> = std::fs::read_dir(server.path("upload"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.starts_with(&format!("t{threads}-")))
            .collect();
        left.sort();
        let mut want: Vec<String> = (0..sessions)
            .map(|s| format!("t{threads}-{s}.bin"))
            .collect();
        want.sort();
        assert_eq!(left, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_at_a_fixed_rate_against_pasvd() {
    let server = pasvd(26210, 26229, |_| {}).await;
    let url = server.url("hello.txt");
    // 120 slots at 400/s (0.3 s), spread over 4 sessions; --duration only bounds the run.
    let o = pasv(
        &[
            "load",
            &url,
            "-k",
            "4",
            "--rate",
            "400",
            "--max-transfers",
            "120",
            "--duration",
            "30",
            "--expect-range",
            "26210-26229",
            "--threads",
            "3",
            "--json",
        ],
        None,
    )
    .await;
    assert!(o.status.success(), "{o:?}");
    let v = json(&o);
    // 4 sessions on 3 event loops, meeting before the schedule starts.
    assert_eq!(v["threads"], 3, "{v}");
    assert_eq!(v["transfers"], 120, "{v}");
    assert_eq!(v["errors"].as_object().unwrap().len(), 0, "{v}");
    assert_eq!(v["ports_outside_range"], 0, "{v}");
    let ol = &v["open_loop"];
    assert_eq!(ol["offered_per_s"], 400.0, "{v}");
    assert_eq!(ol["slots"], 120, "{v}");
    assert_eq!(ol["slots_started"], 120, "{v}");
    assert_eq!(ol["slots_not_started"], 0, "{v}");
    // Every slot completed: 120 transfers over the 0.3 s they were offered in.
    let achieved = ol["achieved_per_s"].as_f64().unwrap();
    assert!((achieved - 400.0).abs() < 1e-6, "{v}");
    let late = ol["late_slots"].as_u64().unwrap();
    assert!(late <= 120, "{v}");
    for key in ["p50", "p99", "max"] {
        assert!(
            ol["late_ms"][key].as_f64().unwrap() >= 0.0,
            "late_ms.{key}: {v}"
        );
    }
    let l = &ol["latency_ms"];
    let p = |key: &str| {
        l[key]
            .as_f64()
            .unwrap_or_else(|| panic!("latency_ms.{key}: {v}"))
    };
    assert!(p("p50") > 0.0, "{v}");
    assert!(p("p50") <= p("p90") && p("p90") <= p("p99"), "{v}");
    assert!(p("p99") <= p("p999") && p("p999") <= p("max"), "{v}");
    // From the schedule, a transfer takes at least as long as from its start.
    assert!(
        p("max") >= v["latency_ms"]["max"].as_f64().unwrap() * 0.99,
        "{v}"
    );

    let text = pasv(
        &[
            "load",
            &url,
            "-k",
            "2",
            "--rate",
            "200",
            "--max-transfers",
            "10",
        ],
        None,
    )
    .await;
    assert!(text.status.success(), "{text:?}");
    let out = stdout(&text);
    for line in [
        "offered           200.0/s (10 slots)",
        "from schedule ms",
        "late slots",
    ] {
        assert!(out.contains(line), "{line:?} not in {out}");
    }

    for bad in ["0", "-1", "nan", "inf", "2000000", "many"] {
        let o = pasv(&["load", &url, &format!("--rate={bad}")], None).await;
        assert!(!o.status.success(), "--rate {bad} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("invalid rate"), "--rate {bad}: {err}");
    }
    let o = pasv(&["load", &url, "--threads", "1025"], None).await;
    assert!(!o.status.success(), "--threads 1025 accepted");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("--threads must be at most 1024"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Hostile servers: every bad answer is an error of its own kind, never a panic or a hang

/// Greets with `script[0]` and answers the n-th command line with `script[n]`; then keeps
/// the connection open until the client closes it (at most 10 s), so that a client which
/// waits for more gets no easy "closed" but has to time out by itself.
async fn scripted_server(script: Vec<Vec<u8>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut chunks = script.into_iter();
        if let Some(greeting) = chunks.next() {
            let _ = write.write_all(&greeting).await;
        }
        for chunk in chunks {
            if !matches!(lines.next_line().await, Ok(Some(_))) {
                return;
            }
            if write.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(_)) = lines.next_line().await {}
        })
        .await;
    });
    addr
}

/// Short limits, so that the cases that must time out do so quickly.
fn hostile_config() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy::none(),
        reply_timeout: Duration::from_millis(400),
        final_reply_timeout: Duration::from_millis(800),
        data_timeout: Duration::from_millis(400),
        stall_timeout: Duration::from_millis(400),
        ..pasv_config()
    }
}

#[tokio::test]
async fn hostile_replies_are_errors() {
    let login = || {
        vec![
            b"220 hi\r\n".to_vec(),
            b"331 pw\r\n".to_vec(),
            b"230 ok\r\n".to_vec(),
            b"200 binary\r\n".to_vec(),
        ]
    };
    let with = |tail: &[&[u8]]| {
        let mut script = login();
        script.extend(tail.iter().map(|t| t.to_vec()));
        script
    };
    // (case, script, the error's kind)
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "octet above 255",
            with(&[b"227 Entering Passive Mode (999,0,0,1,4,1)\r\n"]),
            "passive_address",
        ),
        (
            "digit run",
            with(&[b"227 Entering Passive Mode (1216,256,2,3,4,5)\r\n"]),
            "passive_address",
        ),
        (
            "no numbers",
            with(&[b"227 Entering Passive Mode\r\n"]),
            "passive_address",
        ),
        ("229 to PASV", with(&[b"229 Extended (|||0|)\r\n"]), "229"),
        ("not a reply", with(&[b"hello there\r\n"]), "malformed"),
        ("endless line", with(&[&vec![b'2'; 100_000]]), "malformed"),
        (
            "unclosed multi-line",
            with(&[b"227-a\r\n227-b\r\n"]),
            "timeout",
        ),
        (
            "huge multi-line",
            {
                let mut big = b"211-x\r\n".to_vec();
                for _ in 0..10_000 {
                    big.extend_from_slice(b" more text in a reply that never ends\r\n");
                }
                with(&[&big])
            },
            "malformed",
        ),
        (
            "data port closed",
            with(&[b"227 Entering Passive Mode (127,0,0,1,0,1)\r\n"]),
            "io",
        ),
        ("no reply to PASV", with(&[]), "timeout"),
        ("bad greeting", vec![b"554 go away\r\n".to_vec()], "554"),
        ("greeting cut", vec![b"220-welcome\r\n".to_vec()], "timeout"),
        (
            "nul and cr in text",
            vec![b"220 a\0b\rc\r\n".to_vec(), b"530 \0no\r\n".to_vec()],
            "530",
        ),
    ];
    for (name, script, kind) in cases {
        let addr = scripted_server(script).await;
        let url = ftp_url(addr);
        let outcome = tokio::time::timeout(Duration::from_secs(20), async {
            let mut c = Client::open(&url, hostile_config()).await?;
            fetch(&mut c).await
        })
        .await
        .unwrap_or_else(|_| panic!("{name}: the client hung"));
        let err = outcome.expect_err(name);
        assert_eq!(err.kind(), kind, "{name}: {err}");
    }
}

/// What a data-phase fake does with the data connection of a RETR.
#[derive(Debug, Clone, Copy)]
enum DataPhase {
    /// Accepts, sends these bytes and closes.
    Send(&'static [u8]),
    /// Accepts and keeps the connection open without a byte.
    Silent,
    /// Never accepts (the connection waits in the listener's backlog).
    NeverAccept,
    /// Advertises a port nothing listens on.
    Refused,
}

/// A data-phase fake server: how it answers PASV, what it does with the data connection,
/// and the final reply after it.
#[derive(Debug, Clone, Copy)]
struct DataScript {
    /// Every other PASV (the first, third ...) gets this reply instead of a 227.
    refuse_odd_pasv: Option<&'static str>,
    data: DataPhase,
    /// Replies sent after the data, one a second at most 30 times (the server then waits):
    /// one for a plain final reply, more for a 1xx flood.
    after_data: &'static [&'static str],
    /// SIZE answer, if any (else 502).
    size: Option<u64>,
}

impl DataScript {
    fn new(data: DataPhase, after_data: &'static [&'static str]) -> DataScript {
        DataScript {
            refuse_odd_pasv: None,
            data,
            after_data,
            size: None,
        }
    }
}

/// Serves `script` to up to 4 sessions (one at a time), logging every command.
async fn data_server(script: DataScript) -> (SocketAddr, CommandLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: CommandLog = Arc::default();
    let log2 = Arc::clone(&log);
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            data_session(stream, script, &log2).await;
        }
    });
    (addr, log)
}

async fn data_session(stream: TcpStream, script: DataScript, log: &CommandLog) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 fake ready\r\n").await;
    let mut data: Option<TcpListener> = None;
    let mut pasv_count = 0;
    // Held until the session ends: a silent data connection, a listener never accepted.
    let mut held_streams = Vec::new();
    let mut held_listeners = Vec::new();
    // Bounded: no test sends more than a few dozen commands.
    for _ in 0..200 {
        let Ok(Some(line)) = lines.next_line().await else {
            return;
        };
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        log.lock().unwrap().push((verb.clone(), clock::now()));
        let reply: String = match verb.as_str() {
            "USER" => "331 password please".into(),
            "PASS" => "230 logged in".into(),
            "TYPE" => "200 binary".into(),
            "SIZE" => match script.size {
                Some(n) => format!("213 {n}"),
                None => "502 no SIZE here".into(),
            },
            "REST" => "350 restarting".into(),
            "PASV" => {
                pasv_count += 1;
                match script.refuse_odd_pasv {
                    Some(text) if pasv_count % 2 == 1 => text.into(),
                    _ => {
                        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                        let port = l.local_addr().unwrap().port();
                        if matches!(script.data, DataPhase::Refused) {
                            drop(l);
                        } else {
                            data = Some(l);
                        }
                        format!(
                            "227 Entering Passive Mode (127,0,0,1,{},{})",
                            port >> 8,
                            port & 255
                        )
                    }
                }
            }
            "RETR" => {
                let _ = write.write_all(b"150 opening\r\n").await;
                match (script.data, data.take()) {
                    (DataPhase::Send(bytes), Some(l)) => {
                        if let Ok(Ok((mut s, _))) =
                            tokio::time::timeout(Duration::from_secs(5), l.accept()).await
                        {
                            let _ = s.write_all(bytes).await;
                            let _ = s.shutdown().await;
                        }
                    }
                    (DataPhase::Silent, Some(l)) => {
                        if let Ok(Ok((s, _))) =
                            tokio::time::timeout(Duration::from_secs(5), l.accept()).await
                        {
                            held_streams.push(s);
                        }
                    }
                    (DataPhase::NeverAccept, Some(l)) => held_listeners.push(l),
                    _ => {}
                }
                let Some((last, flood)) = script.after_data.split_last() else {
                    continue;
                };
                // Pacing for the flood only: each preliminary reply comes well within the
                // client's per-reply limit.
                for text in flood.iter().take(30) {
                    let _ = write.write_all(format!("{text}\r\n").as_bytes()).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                (*last).into()
            }
            "ABOR" => "226 aborted".into(),
            "QUIT" => {
                let _ = write.write_all(b"221 bye\r\n").await;
                return;
            }
            _ => "502 not implemented".into(),
        };
        if write
            .write_all(format!("{reply}\r\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// A download whose data connection the server accepts and leaves silent, or never
/// accepts, ends with a timeout at the stall limit instead of waiting forever.
#[tokio::test]
async fn stalled_data_connections_time_out() {
    for data in [DataPhase::Silent, DataPhase::NeverAccept] {
        let (addr, _log) = data_server(DataScript::new(data, &["226 done"])).await;
        let url = ftp_url(addr);
        let mut c = Client::open(&url, hostile_config()).await.unwrap();
        let started = clock::now();
        let err = tokio::time::timeout(Duration::from_secs(10), fetch(&mut c))
            .await
            .unwrap_or_else(|_| panic!("{data:?}: the client hung"))
            .unwrap_err();
        assert_eq!(err.kind(), "timeout", "{data:?}: {err}");
        let waited = clock::now() - started;
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(5),
            "{data:?}: {waited:?}"
        );
    }
}

/// A 1xx every 100 ms, each within the per-reply limit, never reaches a final reply: the
/// limit on the whole series ends the wait, for the greeting as after a transfer.
#[tokio::test]
async fn a_flood_of_preliminary_replies_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        for _ in 0..30 {
            if stream.write_all(b"120 ready soon\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = clock::now();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        Client::open(&ftp_url(addr), hostile_config()),
    )
    .await
    .expect("the client hung")
    .unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    let waited = clock::now() - started;
    assert!(waited < Duration::from_millis(2500), "{waited:?}");

    static FLOOD: [&str; 31] = ["120 still busy"; 31];
    let (addr, _log) = data_server(DataScript::new(DataPhase::Send(b"x"), &FLOOD)).await;
    let url = ftp_url(addr);
    let mut c = Client::open(&url, hostile_config()).await.unwrap();
    let started = clock::now();
    let err = tokio::time::timeout(Duration::from_secs(10), fetch(&mut c))
        .await
        .expect("the client hung")
        .unwrap_err();
    assert_eq!(err.kind(), "timeout", "{err}");
    // The series limit (800 ms), not the end of the flood (3 s), ended it.
    let waited = clock::now() - started;
    assert!(waited < Duration::from_millis(2500), "{waited:?}");
}

// ---------------------------------------------------------------------------------------
// The binary against misbehaving servers: one retry policy, the documented exit codes

/// `pasv ARGS get ftp://addr/data.bin -`, with how long it took.
async fn pasv_get(addr: SocketAddr, global: &[&str], output: &str) -> (Output, Duration) {
    let url = format!("ftp://{addr}/data.bin");
    let mut args = global.to_vec();
    args.extend(["get", &url, output]);
    let started = clock::now();
    let o = pasv(&args, None).await;
    (o, clock::now() - started)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A 426 whose hint is beyond what is left of the retry budget ends `get` at once, with
/// the transient code and a message that says why.
#[tokio::test]
async fn get_gives_up_at_once_on_a_hint_beyond_the_budget() {
    for hint in [
        "426 Connection closed; transfer aborted (retry after 99999999999s)",
        "426 Connection closed; transfer aborted (retry after 20s)",
    ] {
        let script = DataScript::new(DataPhase::Send(b"part"), Box::leak(Box::new([hint])));
        let (addr, log) = data_server(script).await;
        // To a file: a download to stdout resumed too, but a file is where resuming began.
        let local = tempfile::tempdir().unwrap();
        let out = local.path().join("data.bin");
        let (o, took) = pasv_get(addr, &["--retry-budget", "5"], out.to_str().unwrap()).await;
        assert_eq!(o.status.code(), Some(3), "{hint}: {o:?}");
        assert!(took < Duration::from_secs(5), "{hint}: took {took:?}");
        assert!(stderr(&o).contains("beyond"), "{hint}: {}", stderr(&o));
        assert_eq!(count(&log, "RETR"), 1, "{hint}");
    }
}

/// 425 on every other PASV and 426 after every transfer: the resume loop and the setup
/// retries share one attempt count, so `--attempts 5` sends PASV five times, not 25.
#[tokio::test]
async fn a_425_426_storm_makes_at_most_the_attempts_given() {
    let script = DataScript {
        refuse_odd_pasv: Some("425 Try later, data connection in use (retry after 0.01s)"),
        ..DataScript::new(
            DataPhase::Send(b"x"),
            &["426 Connection closed; transfer aborted (retry after 0.01s)"],
        )
    };
    let (addr, log) = data_server(script).await;
    let local = tempfile::tempdir().unwrap();
    let out = local.path().join("data.bin");
    let global = ["--attempts", "5", "--retry-budget", "5"];
    let (o, took) = pasv_get(addr, &global, out.to_str().unwrap()).await;
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    assert_eq!(count(&log, "PASV"), 5, "{}", stderr(&o));
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// Network failures of the data phase exit 4 as documented, also once retries run out on
/// them; a silent data connection ends at `--timeout`; a length other than SIZE said is
/// reported.
#[tokio::test]
async fn binary_exit_code_4_for_the_data_phase() {
    // Refused every time: the retries end on a network error.
    let (addr, log) = data_server(DataScript::new(DataPhase::Refused, &["226 done"])).await;
    let (o, _) = pasv_get(addr, &["--attempts", "3"], "-").await;
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert_eq!(count(&log, "PASV"), 3);

    // Accepted, then silent.
    let (addr, _) = data_server(DataScript::new(DataPhase::Silent, &["226 done"])).await;
    let (o, took) = pasv_get(addr, &["--attempts", "1", "--timeout", "0.5"], "-").await;
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(stderr(&o).contains("timed out"), "{}", stderr(&o));
    assert!(took < Duration::from_secs(10), "{took:?}");

    // SIZE says 100, the transfer brings 9 bytes and a 226.
    let script = DataScript {
        size: Some(100),
        ..DataScript::new(DataPhase::Send(b"fake data"), &["226 done"])
    };
    let (addr, _) = data_server(script).await;
    let (o, _) = pasv_get(addr, &[], "-").await;
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    assert!(stderr(&o).contains("SIZE announced 100"), "{}", stderr(&o));
}

/// `get --max-size`: refused before RETR when SIZE tells, cut at the limit otherwise; both
/// exit 1 (a local precondition).
#[tokio::test]
async fn get_max_size_refuses_larger_files() {
    let local = tempfile::tempdir().unwrap();
    let out = local.path().join("out.bin");
    let out = out.to_str().unwrap();

    let script = DataScript {
        size: Some(9),
        ..DataScript::new(DataPhase::Send(b"fake data"), &["226 done"])
    };
    let get_max_4 = |addr: SocketAddr| {
        let url = format!("ftp://{addr}/data.bin");
        async move { pasv(&["get", "--max-size", "4", &url, out], None).await }
    };
    let (addr, log) = data_server(script).await;
    let o = get_max_4(addr).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(count(&log, "SIZE"), 1);
    assert_eq!(count(&log, "RETR"), 0);
    assert!(stderr(&o).contains("limit of 4"), "{}", stderr(&o));

    let (addr, log) = data_server(DataScript::new(
        DataPhase::Send(b"0123456789"),
        &["226 done"],
    ))
    .await;
    let o = get_max_4(addr).await;
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(count(&log, "RETR"), 1);
    assert_eq!(std::fs::read(out).unwrap(), b"0123");
}

/// Escape sequences in a server's text reach the terminal escaped, not as sent.
#[tokio::test]
async fn server_text_is_escaped_before_it_is_printed() {
    let addr = scripted_server(vec![b"554 \x1b]0;owned\x07 go away\x1b[2J\x9b\r\n".to_vec()]).await;
    let o = pasv(&["--attempts", "1", "ls", &format!("ftp://{addr}/")], None).await;
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        !o.stderr.contains(&0x1b) && !o.stderr.contains(&0x07),
        "{o:?}"
    );
    assert!(
        stderr(&o).contains("554 \\x1b]0;owned\\x07 go away\\x1b[2J"),
        "{}",
        stderr(&o)
    );
}

/// `pasv doctor --server` prints the server's SITE POOL text escaped: a hostile server's
/// control sequences never reach the terminal.
#[tokio::test]
async fn doctor_escapes_the_servers_site_pool_text() {
    let addr = scripted_server(vec![
        b"220 hi\r\n".to_vec(),
        b"230 in\r\n".to_vec(),
        b"200 binary\r\n".to_vec(),
        b"200-Pool \x1b]0;owned\x07\x1b[2J\r\n Disagreements: 0 offered_while_held, 0 withheld_while_free.\r\n200 End\r\n"
            .to_vec(),
        b"221 bye\r\n".to_vec(),
    ])
    .await;
    let o = pasv(
        &[
            "--quiet",
            "doctor",
            "--ports",
            "1-2",
            "--server",
            &format!("ftp://admin@{addr}/"),
        ],
        None,
    )
    .await;
    assert!(
        !o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07),
        "{o:?}"
    );
    assert!(stdout(&o).contains("\\x1b]0;owned\\x07"), "{}", stdout(&o));
}
