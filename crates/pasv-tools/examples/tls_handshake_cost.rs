//! The CPU cost of an FTPS data connection's TLS handshake on the server, full and resumed,
//! TLS 1.2 and 1.3, with pasvd's per-session TLS setup (`server::tls`).
//!
//! Both ends run in memory on one thread; the time spent polling the server's side of each
//! handshake is its CPU cost (no I/O waits: the client's messages are already there when the
//! server is polled). Run with `cargo run --release -p pasv-tools --example
//! tls_handshake_cost [N]`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pasv_tools::clock;

use pasv_tools::server::tls::{CertResolver, CertSource, SessionReuse, TlsServer};
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

/// Adds the time spent in `poll` to a counter.
struct Timed<'a, F> {
    inner: Pin<Box<F>>,
    spent: &'a mut Duration,
}

impl<F: Future> Future for Timed<'_, F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let start = clock::cpu_now();
        let result = self.inner.as_mut().poll(cx);
        *self.spent += clock::cpu_now().saturating_duration_since(start);
        result
    }
}

fn client(
    root: &rustls_pki_types::CertificateDer<'static>,
    version: &'static SupportedProtocolVersion,
    resume: bool,
) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let mut config = ClientConfig::builder_with_provider(pasv_tools::server::tls::provider())
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    if !resume {
        config.resumption = Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let resolver = Arc::new(
        CertResolver::new(CertSource::SelfSigned {
            names: vec!["localhost".to_owned()],
        })
        .expect("certificate"),
    );
    let root = resolver.current().cert[0].clone();
    let name = ServerName::try_from("localhost").expect("name");
    println!("server CPU per data connection handshake (ECDSA P-256 certificate, ring), {n} each");
    for (label, version) in [
        ("TLS 1.3", &rustls::version::TLS13),
        ("TLS 1.2", &rustls::version::TLS12),
    ] {
        for resume in [false, true] {
            let server = TlsServer::with_versions(
                Arc::clone(&resolver),
                SessionReuse::Off,
                Duration::from_secs(10),
                &[version],
            )
            .expect("server");
            let session = server.session().expect("session");
            let connector = client(&root, version, resume);
            // The control connection: the client takes the session it will resume.
            let (a, b) = tokio::io::duplex(1 << 16);
            let (s, c) = tokio::join!(
                session.accept_control(a),
                connector.connect(name.clone(), b)
            );
            let mut s = s.expect("control").stream;
            let mut c = c.expect("control");
            s.write_all(b"200 ok\r\n").await.expect("write");
            let mut line = [0u8; 8];
            c.read_exact(&mut line).await.expect("read");
            let mut spent = Duration::ZERO;
            let mut resumed = 0;
            let wall = clock::cpu_now();
            for _ in 0..n {
                let (a, b) = tokio::io::duplex(1 << 16);
                let server_side = Timed {
                    inner: Box::pin(session.accept_data(a)),
                    spent: &mut spent,
                };
                let (s, c) = tokio::join!(server_side, connector.connect(name.clone(), b));
                let s = s.expect("data handshake");
                resumed += u32::from(s.resumed);
                // Read the server's tickets (TLS 1.3) as a client reading its data would.
                let mut c = c.expect("client");
                let mut s = s.stream;
                s.write_all(b"x").await.expect("write");
                s.shutdown().await.expect("shutdown");
                let mut rest = Vec::new();
                let _ = c.read_to_end(&mut rest).await;
            }
            println!(
                "{label} {:<8} {:>7.1} µs server CPU per handshake ({resumed}/{n} resumed; both ends and the transfer of one byte: {:.1} µs wall)",
                if resume { "resumed" } else { "full" },
                spent.as_secs_f64() * 1e6 / f64::from(n),
                clock::cpu_now().saturating_duration_since(wall).as_secs_f64() * 1e6 / f64::from(n),
            );
        }
    }
}
