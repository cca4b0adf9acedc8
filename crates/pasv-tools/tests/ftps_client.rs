//! The FTPS client (library and `pasv`) against a small scripted FTPS server on loopback:
//! real TLS on the control and data connections, the server side made of pasvd's TLS
//! building blocks (one TLS session cache and ticket key per control session, data
//! connections refused unless they resume their own session when reuse is required).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pasv_tools::client::{
    load, probe, Client, ClientConfig, ClientError, ClientTls, FtpUrl, ListCommand, TlsMode,
    Verification,
};
use pasv_tools::server::tls::{CertResolver, CertSource, SessionReuse, SessionTls, TlsServer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(10);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Files = Arc<Mutex<HashMap<String, Vec<u8>>>>;

/// A scripted FTPS server: explicit (AUTH TLS) or implicit TLS, PASV/EPSV, RETR, STOR,
/// LIST, SIZE, FEAT; its TLS from `TlsServer`.
struct FtpsServer {
    addr: SocketAddr,
    files: Files,
    ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl FtpsServer {
    async fn start(implicit: bool, reuse: SessionReuse) -> FtpsServer {
        FtpsServer::start_with(
            implicit,
            reuse,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        )
        .await
    }

    async fn start_with(
        implicit: bool,
        reuse: SessionReuse,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> FtpsServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let generated = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("rcgen");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, generated.cert.pem()).expect("write");
        std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write");
        let resolver = Arc::new(
            CertResolver::new(CertSource::Files {
                cert: cert.clone(),
                key,
            })
            .expect("certificate"),
        );
        let tls = TlsServer::with_versions(resolver, reuse, TIMEOUT, versions).expect("tls");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let files: Files = Arc::default();
        let shared = Arc::clone(&files);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let session = tls.session().expect("session");
                let files = Arc::clone(&shared);
                tokio::spawn(async move {
                    let _ = serve(stream, session, implicit, files).await;
                });
            }
        });
        FtpsServer {
            addr,
            files,
            ca: cert,
            _dir: dir,
        }
    }

    fn url(&self, scheme: &str, path: &str) -> FtpUrl {
        FtpUrl::parse(&format!("{scheme}://alice:pw@{}/{path}", self.addr)).expect("url")
    }

    fn put_file(&self, name: &str, body: Vec<u8>) {
        self.files.lock().unwrap().insert(name.to_owned(), body);
    }

    fn file(&self, name: &str) -> Option<Vec<u8>> {
        self.files.lock().unwrap().get(name).cloned()
    }
}

async fn read_line(stream: &mut (impl AsyncRead + Unpin)) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(1) => {
                if byte[0] == b'\n' {
                    let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                    return Some(text);
                }
                line.push(byte[0]);
                if line.len() > 4096 {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

async fn reply(stream: &mut (impl AsyncWrite + Unpin), text: &str) -> std::io::Result<()> {
    stream.write_all(format!("{text}\r\n").as_bytes()).await?;
    stream.flush().await
}

async fn serve(
    tcp: TcpStream,
    session: SessionTls,
    implicit: bool,
    files: Files,
) -> std::io::Result<()> {
    let mut control: Box<dyn Io> = if implicit {
        let accepted = session
            .accept_control(tcp)
            .await
            .map_err(std::io::Error::other)?;
        Box::new(accepted.stream)
    } else {
        let mut tcp = tcp;
        reply(&mut tcp, "220 scripted FTPS").await?;
        loop {
            let Some(line) = read_line(&mut tcp).await else {
                return Ok(());
            };
            let upper = line.to_ascii_uppercase();
            if upper == "AUTH TLS" || upper == "AUTH SSL" {
                reply(&mut tcp, "234 AUTH TLS ok").await?;
                break;
            } else if upper == "FEAT" {
                reply(
                    &mut tcp,
                    "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End",
                )
                .await?;
            } else {
                reply(&mut tcp, "530 AUTH TLS first").await?;
            }
        }
        let accepted = session
            .accept_control(tcp)
            .await
            .map_err(std::io::Error::other)?;
        Box::new(accepted.stream)
    };
    if implicit {
        reply(&mut control, "220 scripted FTPS (implicit)").await?;
    }
    let mut prot_p = false;
    let mut passive: Option<TcpListener> = None;
    let mut active: Option<SocketAddr> = None;
    while let Some(line) = read_line(&mut control).await {
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_owned()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        match verb.as_str() {
            "USER" => reply(&mut control, "331 password").await?,
            "PASS" => reply(&mut control, "230 in").await?,
            "TYPE" | "NOOP" => reply(&mut control, "200 ok").await?,
            "PBSZ" => reply(&mut control, "200 PBSZ=0").await?,
            "PROT" => {
                prot_p = arg.eq_ignore_ascii_case("P");
                reply(&mut control, "200 PROT ok").await?
            }
            "FEAT" => {
                reply(
                    &mut control,
                    "211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End",
                )
                .await?
            }
            "PASV" | "EPSV" => {
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let port = listener.local_addr()?.port();
                passive = Some(listener);
                if verb == "PASV" {
                    reply(
                        &mut control,
                        &format!(
                            "227 Entering Passive Mode (127,0,0,1,{},{})",
                            port >> 8,
                            port & 255
                        ),
                    )
                    .await?
                } else {
                    reply(
                        &mut control,
                        &format!("229 Entering Extended Passive Mode (|||{port}|)"),
                    )
                    .await?
                }
            }
            "PORT" => {
                let n: Vec<u16> = arg.split(',').filter_map(|x| x.parse().ok()).collect();
                if n.len() == 6 {
                    let ip =
                        std::net::Ipv4Addr::new(n[0] as u8, n[1] as u8, n[2] as u8, n[3] as u8);
                    active = Some(SocketAddr::from((ip, n[4] << 8 | n[5])));
                    passive = None;
                    reply(&mut control, "200 PORT ok").await?
                } else {
                    reply(&mut control, "501 bad PORT").await?
                }
            }
            "SIZE" => {
                let size = files.lock().unwrap().get(&arg).map(Vec::len);
                match size {
                    Some(n) => reply(&mut control, &format!("213 {n}")).await?,
                    None => reply(&mut control, "550 no such file").await?,
                }
            }
            "RETR" | "LIST" | "STOR" => {
                let target = active.take();
                let listener = passive.take();
                if target.is_none() && listener.is_none() {
                    reply(&mut control, "425 use PASV or PORT first").await?;
                    continue;
                }
                let body = match verb.as_str() {
                    "RETR" => files.lock().unwrap().get(&arg).cloned(),
                    "LIST" => {
                        let mut names: Vec<String> =
                            files.lock().unwrap().keys().cloned().collect();
                        names.sort();
                        Some(
                            names
                                .iter()
                                .map(|n| format!("{n}\r\n"))
                                .collect::<String>()
                                .into_bytes(),
                        )
                    }
                    _ => Some(Vec::new()),
                };
                let Some(body) = body else {
                    reply(&mut control, "550 no such file").await?;
                    continue;
                };
                reply(&mut control, "150 opening data connection").await?;
                // The FTP client is the TLS client in both modes (RFC 4217 section 7).
                let tcp = match (target, listener) {
                    (Some(target), _) => TcpStream::connect(target).await?,
                    (None, Some(listener)) => listener.accept().await?.0,
                    (None, None) => unreachable!(),
                };
                let mut data: Box<dyn Io> = if prot_p {
                    match session.accept_data(tcp).await {
                        Ok(accepted) => Box::new(accepted.stream),
                        Err(e) => {
                            reply(&mut control, &format!("425 {e}")).await?;
                            continue;
                        }
                    }
                } else {
                    Box::new(tcp)
                };
                if verb == "STOR" {
                    let mut got = Vec::new();
                    data.read_to_end(&mut got).await?;
                    files.lock().unwrap().insert(arg.clone(), got);
                } else {
                    data.write_all(&body).await?;
                }
                data.shutdown().await?;
                drop(data);
                reply(&mut control, "226 done").await?;
            }
            "QUIT" => {
                reply(&mut control, "221 bye").await?;
                return Ok(());
            }
            _ => reply(&mut control, "502 not here").await?,
        }
    }
    Ok(())
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn config(tls: ClientTls) -> ClientConfig {
    ClientConfig {
        tls: Some(tls),
        ..ClientConfig::default().with_timeout(TIMEOUT)
    }
}

fn tls_for(server: &FtpsServer, mode: TlsMode) -> ClientTls {
    ClientTls::new(mode, &Verification::CaFile(server.ca.clone())).expect("client tls")
}

/// Upload, download, listing: bytes as sent, every data connection resumed.
async fn round_trip(server: &FtpsServer, url: &FtpUrl, tls: ClientTls) {
    let body = pattern(300_000);
    let mut client = Client::open(url, config(tls)).await.expect("login");
    assert!(client.is_tls());
    let mut upload = client.store("up.bin").await.expect("STOR");
    upload.write_all(&body).await.expect("write");
    upload.finish().await.expect("226");
    assert_eq!(
        server.file("up.bin").as_deref(),
        Some(&body[..]),
        "stored bytes"
    );
    server.put_file("down.bin", pattern(123_457));
    let mut download = client.retrieve("down.bin", 0).await.expect("RETR");
    let mut got = Vec::new();
    download.read_to_end(&mut got).await.expect("read");
    download.finish().await.expect("226");
    assert_eq!(got, pattern(123_457), "downloaded bytes");
    let listing = client.list(None).await.expect("LIST");
    assert!(String::from_utf8_lossy(&listing).contains("down.bin"));
    let _ = client.list_stream(ListCommand::Nlst, None).await.map(drop);
    assert_eq!(
        client.data_handshakes(),
        (0, 3),
        "(full, resumed) data handshakes"
    );
    client.quit().await.expect("QUIT");
}

#[tokio::test]
async fn explicit_ftps_round_trip_resumes_every_data_connection() {
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let server = FtpsServer::start_with(false, SessionReuse::Required, versions).await;
        let url = server.url("ftpes", "");
        assert_eq!(url.tls(), Some(TlsMode::Explicit));
        round_trip(
            &server,
            &url,
            tls_for(&server, TlsMode::Explicit).with_versions(versions),
        )
        .await;
    }
}

#[tokio::test]
async fn implicit_ftps_round_trip() {
    let server = FtpsServer::start(true, SessionReuse::Required).await;
    let url = server.url("ftps", "");
    assert_eq!(url.tls(), Some(TlsMode::Implicit));
    round_trip(&server, &url, tls_for(&server, TlsMode::Implicit)).await;
}

#[tokio::test]
async fn active_mode_data_connections_resume_too() {
    let server = FtpsServer::start(false, SessionReuse::Required).await;
    server.put_file("a.bin", pattern(70_000));
    let url = server.url("ftpes", "");
    let mut config = config(tls_for(&server, TlsMode::Explicit));
    config.data_mode = pasv_tools::client::DataMode::Active;
    let mut client = Client::open(&url, config).await.expect("login");
    for _ in 0..2 {
        let mut download = client.retrieve("a.bin", 0).await.expect("RETR");
        let mut got = Vec::new();
        download.read_to_end(&mut got).await.expect("read");
        download.finish().await.expect("226");
        assert_eq!(got, pattern(70_000));
    }
    assert_eq!(client.data_handshakes(), (0, 2));
}

#[tokio::test]
async fn many_uploads_in_a_row_keep_resuming() {
    // TLS 1.3 tickets are taken once by rustls clients: an upload's data connection must
    // still read the tickets the server sends after its handshake, or the client runs out
    // after a few uploads and its data connections can no longer resume.
    let server =
        FtpsServer::start_with(false, SessionReuse::Required, &[&rustls::version::TLS13]).await;
    let url = server.url("ftpes", "");
    let mut client = Client::open(&url, config(tls_for(&server, TlsMode::Explicit)))
        .await
        .expect("login");
    for n in 0..20 {
        let mut upload = client
            .store(format!("f{n}"))
            .await
            .unwrap_or_else(|e| panic!("STOR {n}: {e}"));
        upload.write_all(b"data").await.expect("write");
        upload
            .finish()
            .await
            .unwrap_or_else(|e| panic!("upload {n}: {e}"));
    }
    assert_eq!(client.data_handshakes(), (0, 20));
}

#[tokio::test]
async fn data_connection_without_resumption_is_refused_and_probe_says_so() {
    for (reuse, required) in [(SessionReuse::Required, true), (SessionReuse::Off, false)] {
        let server = FtpsServer::start(false, reuse).await;
        server.put_file("f", b"x".to_vec());
        let url = server.url("ftpes", "");
        let mut client = Client::open(&url, config(tls_for(&server, TlsMode::Explicit)))
            .await
            .expect("login");
        client.set_data_resumption(false);
        let result = async {
            let mut d = client.retrieve("f", 0).await?;
            let mut got = Vec::new();
            d.read_to_end(&mut got).await?;
            d.finish().await
        }
        .await;
        assert_eq!(result.is_err(), required, "{reuse}: {result:?}");

        let mut config = probe::ProbeConfig::new(url.clone());
        config.count = 2;
        config.transfers = 1;
        config.push_sessions = 0;
        config.timeout = TIMEOUT;
        config.tls = Some(tls_for(&server, TlsMode::Explicit));
        let report = probe::run(&config).await.expect("probe");
        assert_eq!(report.tls.auth_tls_advertised, Some(true));
        assert_eq!(report.tls.auth_tls_accepted, Some(true));
        assert!(report.tls.control_encrypted);
        assert_eq!(report.tls.resumed_data_served, Some(true));
        assert_eq!(
            report.tls.requires_session_reuse,
            Some(required),
            "{report}"
        );
        assert!(report.to_string().contains("TLS session reuse"));
    }
}

#[tokio::test]
async fn certificates_are_verified() {
    let server = FtpsServer::start(false, SessionReuse::Required).await;
    let url = server.url("ftpes", "");
    // The system roots do not know a self-signed certificate.
    if let Ok(system) = ClientTls::new(TlsMode::Explicit, &Verification::SystemRoots) {
        match Client::open(&url, config(system)).await {
            Err(ClientError::Tls { what, reason }) => {
                assert_eq!(what, "control connection handshake", "{reason}");
            }
            other => panic!("an unknown certificate was accepted: {other:?}"),
        }
    } else {
        println!("no system roots on this machine: the system-roots case is not checked");
    }
    // The CA file: accepted for the name it carries (127.0.0.1, the URL's host).
    let tls = tls_for(&server, TlsMode::Explicit);
    assert!(Client::connect_addr(server.addr, config(tls)).await.is_ok());
    // --insecure accepts it.
    let insecure = ClientTls::new(TlsMode::Explicit, &Verification::Insecure).expect("tls");
    let client = Client::open(&url, config(insecure))
        .await
        .expect("insecure login");
    client.quit().await.expect("quit");
}

#[tokio::test]
async fn load_reports_resumed_data_handshakes() {
    let server = FtpsServer::start(false, SessionReuse::Required).await;
    server.put_file("one.bin", pattern(1024));
    let mut config =
        load::LoadConfig::new(server.url("ftpes", "one.bin"), 2, Duration::from_secs(30));
    config.max_transfers = Some(10);
    config.expect_size = true;
    config.timeout = TIMEOUT;
    config.tls = Some(tls_for(&server, TlsMode::Explicit));
    let report = load::run(config).await;
    assert!(report.errors.is_empty(), "{report}");
    assert_eq!(report.transfers, 10);
    assert!(report.tls);
    assert_eq!(report.tls_data_handshakes_resumed, 10, "{report}");
    assert_eq!(report.tls_data_handshakes_full, 0);
    assert!(
        report.to_string().contains("10 resumed (100.0%)"),
        "{report}"
    );
}

#[tokio::test]
async fn pasv_binary_over_ftps() {
    let server = FtpsServer::start(false, SessionReuse::Required).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in.bin");
    let output = dir.path().join("out.bin");
    std::fs::write(&input, pattern(200_000)).expect("write");
    let pasv = |args: Vec<String>| async move {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_pasv"))
            .args(&args)
            .output()
            .await
            .expect("run pasv");
        assert!(
            out.status.success(),
            "pasv {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ca = server.ca.display().to_string();
    let plain_url = format!("ftp://alice:pw@{}/copy.bin", server.addr);
    // --tls on an ftp:// URL is explicit FTPS.
    pasv(vec![
        "put".into(),
        "--quiet".into(),
        "--tls".into(),
        "--ca-file".into(),
        ca.clone(),
        plain_url.clone(),
        input.display().to_string(),
    ])
    .await;
    assert_eq!(server.file("copy.bin"), Some(pattern(200_000)));
    pasv(vec![
        "get".into(),
        "--quiet".into(),
        "--ca-file".into(),
        ca.clone(),
        format!("ftpes://alice:pw@{}/copy.bin", server.addr),
        output.display().to_string(),
    ])
    .await;
    assert_eq!(std::fs::read(&output).expect("read"), pattern(200_000));
    let json = pasv(vec![
        "load".into(),
        "--json".into(),
        "--insecure".into(),
        "--tls".into(),
        "-k".into(),
        "2".into(),
        "--max-transfers".into(),
        "6".into(),
        plain_url,
    ])
    .await;
    let report: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(report["tls_data_handshakes_resumed"], 6, "{json}");
    assert_eq!(report["tls_data_handshakes_full"], 0, "{json}");
}

/// Python's ftplib.FTP_TLS never resumes; the subclass of docs/FTPS.md passes the control
/// connection's session to each data connection.
const FTPLIB_SCRIPT: &str = r#"
import ftplib, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
if sys.argv[3] == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
class ReusingFTP_TLS(ftplib.FTP_TLS):
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size
for cls in (ftplib.FTP_TLS, ReusingFTP_TLS):
    f = cls(context=ctx, timeout=10)
    f.connect("127.0.0.1", int(sys.argv[1]))
    f.login("alice", "pw")
    f.prot_p()
    try:
        for _ in range(3):
            data = bytearray()
            f.retrbinary("RETR f.bin", data.extend)
        print(cls.__name__, "ok", len(data), f.sock.version())
    except ftplib.error_temp as e:
        print(cls.__name__, "refused", str(e)[:3])
    except ssl.SSLError as e:
        print(cls.__name__, "refused", e)
    f.close()
"#;

#[tokio::test]
async fn python_ftplib_needs_the_session_passed_to_data_connections() {
    if std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("python3 not found: Python's ftplib is not checked");
        return;
    }
    for version in ["1.3", "1.2"] {
        let server = FtpsServer::start(false, SessionReuse::Required).await;
        server.put_file("f.bin", pattern(5000));
        let out = tokio::process::Command::new("python3")
            .args([
                "-c",
                FTPLIB_SCRIPT,
                &server.addr.port().to_string(),
                &server.ca.display().to_string(),
                version,
            ])
            .output()
            .await
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("FTP_TLS refused 425"), "{stdout}");
        assert!(
            stdout.contains(&format!("ReusingFTP_TLS ok 5000 TLSv{version}")),
            "{stdout}"
        );
    }
}
