//! The server's FTPS building blocks with real rustls handshakes over in-memory streams: a
//! data connection is accepted only when it resumes a TLS session of its own control
//! session (TLS 1.2 session ids, TLS 1.2 tickets, TLS 1.3 tickets), a certificate reload
//! reaches new handshakes only, and reloads through the certificate reader (the pasvd
//! binary's `tls-reader`) fail clearly once it is gone.

use std::sync::Arc;
use std::time::Duration;

use pasv_tools::server::cert_reader::CertReader;
use pasv_tools::server::tls::{
    CertResolver, CertSource, DataTlsError, SessionReuse, SessionTls, TlsServer,
};
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_rustls::TlsConnector;

const TIMEOUT: Duration = Duration::from_secs(10);

/// How the client resumes in TLS 1.2.
#[derive(Clone, Copy, Debug)]
enum Tls12 {
    SessionId,
    Ticket,
}

#[derive(Clone, Copy, Debug)]
struct Case {
    version: &'static SupportedProtocolVersion,
    tls12: Tls12,
}

const CASES: [Case; 3] = [
    Case {
        version: &rustls::version::TLS13,
        tls12: Tls12::Ticket,
    },
    Case {
        version: &rustls::version::TLS12,
        tls12: Tls12::Ticket,
    },
    Case {
        version: &rustls::version::TLS12,
        tls12: Tls12::SessionId,
    },
];

fn self_signed() -> Arc<CertResolver> {
    Arc::new(
        CertResolver::new(CertSource::SelfSigned {
            names: vec!["localhost".to_owned()],
        })
        .expect("self-signed certificate"),
    )
}

fn server(resolver: &Arc<CertResolver>, case: Case, reuse: SessionReuse) -> TlsServer {
    TlsServer::with_versions(Arc::clone(resolver), reuse, TIMEOUT, &[case.version])
        .expect("server config")
}

fn leaf(resolver: &CertResolver) -> CertificateDer<'static> {
    resolver.current().cert[0].clone()
}

/// A client that trusts `roots` and keeps its sessions in one store (one client session).
fn client(roots: &[CertificateDer<'static>], case: Case, resume: bool) -> TlsConnector {
    let mut store = RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).expect("root");
    }
    let mut config = ClientConfig::builder_with_provider(pasv_tools::server::tls::provider())
        .with_protocol_versions(&[case.version])
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    config.resumption = if resume {
        Resumption::in_memory_sessions(32).tls12_resumption(match case.tls12 {
            Tls12::SessionId => rustls::client::Tls12Resumption::SessionIdOnly,
            Tls12::Ticket => rustls::client::Tls12Resumption::SessionIdOrTickets,
        })
    } else {
        Resumption::disabled()
    };
    TlsConnector::from(Arc::new(config))
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("name")
}

type ClientStream = tokio_rustls::client::TlsStream<DuplexStream>;
type ServerStream = tokio_rustls::server::TlsStream<DuplexStream>;

/// A control connection: handshake, then one reply read by the client so that it takes the
/// TLS 1.3 tickets sent after the handshake.
async fn control(session: &SessionTls, connector: &TlsConnector) -> (ServerStream, ClientStream) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, client) =
        tokio::join!(session.accept_control(a), connector.connect(localhost(), b));
    let mut server = server.expect("control handshake").stream;
    let mut client = client.expect("control handshake (client)");
    server.write_all(b"200 ok\r\n").await.expect("write");
    server.flush().await.expect("flush");
    let mut reply = [0u8; 8];
    client.read_exact(&mut reply).await.expect("read");
    assert_eq!(&reply, b"200 ok\r\n");
    (server, client)
}

/// A data connection accepted by `session`: the server's verdict, and on success a byte
/// sent through it to show the stream works.
async fn data(session: &SessionTls, connector: &TlsConnector) -> Result<bool, DataTlsError> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (server, client) = tokio::join!(session.accept_data(a), connector.connect(localhost(), b));
    let accepted = server?;
    let mut client = client.expect("client side of an accepted handshake");
    let mut stream = accepted.stream;
    stream.write_all(b"x").await.expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"x");
    Ok(accepted.resumed)
}

#[tokio::test]
async fn data_connection_resuming_its_own_session_is_accepted() {
    let resolver = self_signed();
    for case in CASES {
        let server = server(&resolver, case, SessionReuse::Required);
        let session = server.session().expect("session");
        let connector = client(&[leaf(&resolver)], case, true);
        let _control = control(&session, &connector).await;
        // Several data connections in a row, as a client transferring files does: each
        // one resumes (OpenSSL-style clients offer the same ticket every time).
        for n in 0..3 {
            let resumed = data(&session, &connector)
                .await
                .unwrap_or_else(|e| panic!("{case:?}: data connection {n} refused: {e}"));
            assert!(resumed, "{case:?}: data connection {n} resumed");
        }
    }
}

#[tokio::test]
async fn data_connection_resuming_another_sessions_tls_session_is_refused() {
    let resolver = self_signed();
    for case in CASES {
        let server = server(&resolver, case, SessionReuse::Required);
        let victim = server.session().expect("session");
        let thief = server.session().expect("session");
        let thief_client = client(&[leaf(&resolver)], case, true);
        // The thief logs in on its own control connection: its client now holds a ticket
        // (or session id) issued by the server, by a session other than the victim's.
        let _thief_control = control(&thief, &thief_client).await;
        // The victim has a session with its own client.
        let victim_client = client(&[leaf(&resolver)], case, true);
        let _victim_control = control(&victim, &victim_client).await;
        // The thief's client connects to the victim's passive port and offers its ticket.
        match data(&victim, &thief_client).await {
            Err(DataTlsError::NotResumed { .. }) => {}
            other => panic!("{case:?}: another session's TLS session was accepted: {other:?}"),
        }
        // The victim's own data connection still works.
        assert!(data(&victim, &victim_client).await.expect("victim's data"));
    }
}

/// A data connection accepted or refused by `session`, the client reading whatever the
/// server sends until the end (a refused connection's TLS 1.3 tickets included, if any were
/// sent).
async fn attempt(session: &SessionTls, connector: &TlsConnector) -> Result<bool, DataTlsError> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let client = async {
        if let Ok(mut stream) = connector.connect(localhost(), b).await {
            let mut sink = Vec::new();
            let _ = stream.read_to_end(&mut sink).await;
        }
    };
    let server = async {
        let accepted = session.accept_data(a).await?;
        let mut stream = accepted.stream;
        let _ = stream.shutdown().await;
        Ok(accepted.resumed)
    };
    let (verdict, ()) = tokio::join!(server, client);
    verdict
}

#[tokio::test]
async fn a_refused_data_handshake_gives_the_thief_nothing_to_resume_with() {
    // The refused handshake is a full one: were tickets (TLS 1.3 after it, TLS 1.2 in it) or
    // a cached session id handed out, the thief's next connection would resume the
    // victim's session and be accepted.
    let resolver = self_signed();
    for case in CASES {
        let server = server(&resolver, case, SessionReuse::Required);
        let victim = server.session().expect("session");
        let thief = server.session().expect("session");
        let thief_client = client(&[leaf(&resolver)], case, true);
        let _thief_control = control(&thief, &thief_client).await;
        let victim_client = client(&[leaf(&resolver)], case, true);
        let _victim_control = control(&victim, &victim_client).await;
        for n in 0..3 {
            match attempt(&victim, &thief_client).await {
                Err(DataTlsError::NotResumed { .. }) => {}
                other => panic!("{case:?}: thief's attempt {n}: {other:?}"),
            }
        }
        assert!(attempt(&victim, &victim_client).await.expect("victim"));
    }
}

#[tokio::test]
async fn data_connection_without_resumption_is_refused_when_required_accepted_when_off() {
    let resolver = self_signed();
    for case in CASES {
        for reuse in [SessionReuse::Required, SessionReuse::Off] {
            let server = server(&resolver, case, reuse);
            let session = server.session().expect("session");
            let connector = client(&[leaf(&resolver)], case, true);
            let _control = control(&session, &connector).await;
            // A client that never resumes (Python's ftplib.FTP_TLS).
            let fresh = client(&[leaf(&resolver)], case, false);
            let verdict = data(&session, &fresh).await;
            match (reuse, verdict) {
                (SessionReuse::Required, Err(DataTlsError::NotResumed { .. })) => {}
                (SessionReuse::Off, Ok(false)) => {}
                (reuse, other) => panic!("{case:?} reuse {reuse}: {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_session_that_ended_cannot_be_resumed_by_a_new_one() {
    // A client that reconnects after its session ended has tickets of the old session
    // only: its new control connection is a full handshake (accepted), and its data
    // connections resume the new session's tickets.
    let resolver = self_signed();
    let case = CASES[0];
    let server = server(&resolver, case, SessionReuse::Required);
    let connector = client(&[leaf(&resolver)], case, true);
    {
        let old = server.session().expect("session");
        let _control = control(&old, &connector).await;
    }
    let new = server.session().expect("session");
    let _control = control(&new, &connector).await;
    assert!(data(&new, &connector).await.expect("data"));
}

/// A certificate and key in PEM files, generated for `name`.
fn write_cert(dir: &std::path::Path, name: &str) -> (CertificateDer<'static>, CertSource) {
    let generated = rcgen::generate_simple_self_signed(vec![name.to_owned(), "localhost".into()])
        .expect("rcgen");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, generated.cert.pem()).expect("write cert");
    std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    (
        generated.cert.der().clone(),
        CertSource::Files { cert, key },
    )
}

async fn peer_cert(session: &SessionTls, connector: &TlsConnector) -> CertificateDer<'static> {
    let (_server, client) = control(session, connector).await;
    client
        .get_ref()
        .1
        .peer_certificates()
        .expect("certificates")[0]
        .clone()
}

#[tokio::test]
async fn reload_swaps_the_certificate_for_new_handshakes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, source) = write_cert(dir.path(), "first.example");
    let resolver = Arc::new(CertResolver::new(source.clone()).expect("load"));
    assert_eq!(leaf(&resolver), first);
    let case = CASES[0];
    let server = server(&resolver, case, SessionReuse::Required);
    let other = tempfile::tempdir().expect("tempdir");
    let (second, _) = write_cert(other.path(), "second.example");
    let trusting_both = client(&[first.clone(), second.clone()], case, true);

    let session = server.session().expect("session");
    let (mut server_control, mut client_control) = control(&session, &trusting_both).await;
    assert_eq!(
        client_control
            .get_ref()
            .1
            .peer_certificates()
            .expect("certs")[0],
        first
    );

    // Swap the files and reload.
    std::fs::copy(other.path().join("cert.pem"), dir.path().join("cert.pem")).expect("copy");
    std::fs::copy(other.path().join("key.pem"), dir.path().join("key.pem")).expect("copy");
    resolver.reload().expect("reload");

    // New handshakes get the new certificate (another client: one client session store
    // per control session, as a client would keep).
    let fresh = server.session().expect("session");
    let other_client = client(&[first.clone(), second.clone()], case, true);
    assert_eq!(peer_cert(&fresh, &other_client).await, second);
    // The session started before the reload goes on: its control connection carries data
    // and its data connections still resume.
    server_control
        .write_all(b"226 still\r\n")
        .await
        .expect("write");
    let mut reply = [0u8; 11];
    client_control.read_exact(&mut reply).await.expect("read");
    assert_eq!(&reply, b"226 still\r\n");
    assert!(data(&session, &trusting_both)
        .await
        .expect("data after reload"));

    // A reload that fails keeps the certificate in place.
    std::fs::write(dir.path().join("key.pem"), "not a key").expect("write");
    assert!(resolver.reload().is_err());
    assert_eq!(leaf(&resolver), second);
    let (mismatch, _) = write_cert(other.path(), "third.example");
    std::fs::copy(other.path().join("cert.pem"), dir.path().join("cert.pem")).expect("copy");
    // The key file is now the old garbage: still refused; then a key of another cert.
    assert!(resolver.reload().is_err());
    let (_, _) = write_cert(other.path(), "fourth.example");
    std::fs::copy(other.path().join("key.pem"), dir.path().join("key.pem")).expect("copy");
    let err = resolver
        .reload()
        .expect_err("a key that does not fit the certificate");
    assert_ne!(leaf(&resolver), mismatch);
    assert_eq!(leaf(&resolver), second, "{err}");
}

#[tokio::test]
async fn data_handshake_that_never_comes_times_out() {
    let resolver = self_signed();
    let server = TlsServer::new(
        Arc::clone(&resolver),
        SessionReuse::Required,
        Duration::from_millis(50),
    )
    .expect("server");
    let session = server.session().expect("session");
    let (a, _silent) = tokio::io::duplex(1024);
    match session.accept_data(a).await {
        Err(DataTlsError::Timeout(_)) => {}
        other => panic!("{other:?}"),
    }
}

/// The two paths of a [`CertSource::Files`].
fn paths(source: &CertSource) -> (std::path::PathBuf, std::path::PathBuf) {
    let CertSource::Files { cert, key } = source else {
        unreachable!("files")
    };
    (cert.clone(), key.clone())
}

#[test]
fn reloads_read_through_the_certificate_reader_and_fail_clearly_once_it_is_gone() {
    let served = tempfile::tempdir().expect("tempdir");
    let (first, source) = write_cert(served.path(), "first.example");
    let resolver = CertResolver::new(source).expect("load");
    // The reader is given other files than the resolver's: what a reload puts in place shows
    // where it read from.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let (second, other) = write_cert(elsewhere.path(), "second.example");
    let (cert, key) = paths(&other);
    let reader = CertReader::spawn(env!("CARGO_BIN_EXE_pasvd").as_ref(), &cert, &key)
        .expect("the reader starts");
    let pid = reader.pid();
    resolver.read_through(reader).expect("first reader");
    assert_eq!(resolver.reader_pid(), Some(pid));
    resolver.reload().expect("reload through the reader");
    assert_eq!(leaf(&resolver), second);

    // A file the reader cannot read is named, as in a direct read.
    std::fs::remove_file(&key).expect("remove");
    let err = resolver.reload().expect_err("no key");
    assert!(err.to_string().contains("key.pem"), "{err}");
    assert_eq!(leaf(&resolver), second);

    // Once the reader is gone every reload says so and the certificate stays.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).expect("pid"),
        rustix::process::Signal::KILL,
    )
    .expect("SIGKILL");
    for _ in 0..2 {
        let err = resolver
            .reload()
            .expect_err("the reader is gone")
            .to_string();
        assert!(err.contains("the certificate reader exited"), "{err}");
        assert!(err.contains("until pasvd restarts"), "{err}");
        assert_eq!(leaf(&resolver), second);
    }
    assert_ne!(leaf(&resolver), first);
}

#[test]
fn a_server_whose_certificate_reader_does_not_answer_does_not_start() {
    use pasv_tools::server::{BoundServer, Config};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, source) = write_cert(dir.path(), "pasv.example");
    let (cert, key) = paths(&source);
    let config = || {
        let mut config = Config::for_tests(dir.path().to_owned());
        config.tls_cert = Some(cert.clone());
        config.tls_key = Some(key.clone());
        config.run_as = Some("nobody".to_owned());
        config
    };
    // A program that exits at once, one that does not exist: no switch happens (the
    // reader starts before it), so no root is needed.
    let mut bound = BoundServer::bind(config()).expect("bind");
    let err = bound
        .start_cert_reader("/bin/true".as_ref())
        .expect_err("no answer")
        .to_string();
    assert!(err.contains("the certificate reader (/bin/true)"), "{err}");
    assert!(err.contains("exited"), "{err}");
    let mut bound = BoundServer::bind(config()).expect("bind");
    let err = bound
        .start_cert_reader("/nonexistent/pasvd".as_ref())
        .expect_err("no program")
        .to_string();
    assert!(err.contains("cannot start it"), "{err}");
    // pasvd itself answers.
    let mut bound = BoundServer::bind(config()).expect("bind");
    let pid = bound
        .start_cert_reader(env!("CARGO_BIN_EXE_pasvd").as_ref())
        .expect("the reader answers");
    assert!(pid.is_some());
    // Without run_as no reader is started.
    let mut plain = config();
    plain.run_as = None;
    let mut bound = BoundServer::bind(plain).expect("bind");
    assert_eq!(
        bound
            .start_cert_reader(env!("CARGO_BIN_EXE_pasvd").as_ref())
            .expect("nothing to do"),
        None
    );
}

#[test]
fn bad_files_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, "no pem here").expect("write");
    std::fs::write(&key, "no pem here").expect("write");
    let err = CertResolver::new(CertSource::Files {
        cert: cert.clone(),
        key: key.clone(),
    })
    .expect_err("garbage");
    assert!(err.to_string().contains("cert.pem"), "{err}");
    let missing = CertResolver::new(CertSource::Files {
        cert: dir.path().join("missing.pem"),
        key,
    })
    .expect_err("missing");
    assert!(missing.to_string().contains("missing.pem"), "{missing}");
}

#[test]
fn settings_are_validated_and_shown_without_secrets() {
    use pasv_tools::server::{config::ConfigFile, Config};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, source) = write_cert(dir.path(), "pasv.example");
    let CertSource::Files { cert, key } = source else {
        unreachable!()
    };
    let apply = |text: &str| -> Result<Config, String> {
        let mut config = Config::default();
        let file: ConfigFile = toml::from_str(text).map_err(|e| e.to_string())?;
        file.apply(&mut config).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    };
    let cert_toml = format!("tls_cert = {:?}\n", cert.display().to_string());
    let key_toml = format!("tls_key = {:?}\n", key.display().to_string());
    // Half a certificate.
    let err = apply(&cert_toml).expect_err("cert without key");
    assert!(err.contains("tls_key"), "{err}");
    // Policies need a certificate.
    for text in [
        "tls_required = \"all\"",
        "implicit_tls_listen = \"127.0.0.1:990\"",
    ] {
        let err = apply(text).expect_err(text);
        assert!(err.contains("needs a certificate"), "{err}");
    }
    let err = apply("tls_required = \"sometimes\"").expect_err("bad value");
    assert!(err.contains("none, login, data or all"), "{err}");
    let err = apply("tls_session_reuse = \"maybe\"").expect_err("bad value");
    assert!(err.contains("required or off"), "{err}");
    let err = apply(&format!("{cert_toml}{key_toml}tls_self_signed = true")).expect_err("both");
    assert!(err.contains("exclude"), "{err}");

    let config = apply(&format!(
        "{cert_toml}{key_toml}tls_required = \"data\"\ntls_session_reuse = \"off\"\n\
         implicit_tls_listen = \"127.0.0.1:9990\""
    ))
    .expect("valid");
    assert!(config.tls_required.data() && !config.tls_required.login());
    assert_eq!(config.tls_session_reuse, SessionReuse::Off);
    let shown = config.effective_settings();
    assert!(shown.contains("tls_required = \"data\""), "{shown}");
    assert!(shown.contains("tls_session_reuse = \"off\""), "{shown}");
    assert!(
        shown.contains("implicit_tls_listen = \"127.0.0.1:9990\""),
        "{shown}"
    );
    assert!(shown.contains("(content not shown)"), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    // The files load: the server's TLS setup is built from the configuration.
    assert!(TlsServer::from_config(&config).expect("load").is_some());
    assert!(TlsServer::from_config(&Config::default())
        .expect("none")
        .is_none());
    let self_signed = apply("tls_self_signed = true").expect("self-signed");
    assert!(TlsServer::from_config(&self_signed)
        .expect("generate")
        .is_some());
}

/// A server with a certificate binds its control listener and the implicit FTPS listener
/// (port 0 for both is two ports); the end-to-end behaviour is in tests/ftps.rs.
#[tokio::test]
async fn serving_with_tls_binds_the_implicit_listener_too() {
    let root = tempfile::tempdir().expect("root");
    let mut config = pasv_tools::server::Config::for_tests(root.path().to_path_buf());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.tls_self_signed = true;
    config.tls_required = pasv_tools::server::tls::TlsRequired::All;
    config.implicit_tls_listen = Some("127.0.0.1:0".parse().unwrap());
    (config.pasv_min_port, config.pasv_max_port) = (41_290, 41_291);
    let server = pasv_tools::server::Server::bind(config)
        .await
        .expect("serves FTPS");
    let implicit = server.implicit_tls_addr().expect("implicit listener");
    assert_ne!(implicit, server.local_addr());
    assert!(implicit.ip().is_loopback());
    drop(server);
    // Without a certificate there is no implicit listener to ask for.
    let mut plain = pasv_tools::server::Config::for_tests(root.path().to_path_buf());
    plain.listen = "127.0.0.1:0".parse().unwrap();
    (plain.pasv_min_port, plain.pasv_max_port) = (41_290, 41_291);
    let server = pasv_tools::server::Server::bind(plain)
        .await
        .expect("plain");
    assert!(server.implicit_tls_addr().is_none());
}
