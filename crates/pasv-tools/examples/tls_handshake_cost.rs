//! The CPU cost of an FTPS data connection's TLS handshake on the server, full and resumed,
//! TLS 1.2 and 1.3, with pasvd's per-session TLS setup (`server::tls`).
//!
//! The server runs on a thread of its own (a current-thread runtime) over loopback TCP: one
//! control connection, then N data connections, each a handshake, one byte and a close. Its
//! thread's CPU time over the N data connections (Linux `/proc/thread-self/schedstat`,
//! nanoseconds, read at the start and the end) divided by N is the cost per data connection,
//! accept and close included. Run with
//! `cargo run --release -p pasv-tools --example tls_handshake_cost [N]`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use pasv_tools::server::tls::{CertResolver, CertSource, SessionReuse, TlsServer};
use rustls::client::Resumption;
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

/// CPU time of this thread (Linux; zero elsewhere).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
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

/// The server side: returns its thread's CPU time over the `n` data connections and how
/// many resumed.
fn serve(server: TlsServer, listener: std::net::TcpListener, n: u32) -> (Duration, u32) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener).expect("listener");
        let session = server.session().expect("session");
        let (tcp, _) = listener.accept().await.expect("accept");
        let mut control = session.accept_control(tcp).await.expect("control").stream;
        control.write_all(b"200 ok\r\n").await.expect("write");
        let start = thread_cpu();
        let mut resumed = 0;
        for _ in 0..n {
            let (tcp, _) = listener.accept().await.expect("accept");
            let accepted = session.accept_data(tcp).await.expect("data handshake");
            resumed += u32::from(accepted.resumed);
            let mut stream = accepted.stream;
            stream.write_all(b"x").await.expect("write");
            stream.shutdown().await.expect("shutdown");
        }
        (thread_cpu().saturating_sub(start), resumed)
    })
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
    println!(
        "server CPU per FTPS data connection (ECDSA P-256 certificate, ring; loopback TCP, \
         accept + handshake + 1 byte + close), {n} each"
    );
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
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.set_nonblocking(true).expect("nonblocking");
            let addr: SocketAddr = listener.local_addr().expect("addr");
            let thread = std::thread::spawn(move || serve(server, listener, n));
            let connector = client(&root, version, resume);
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let mut control = connector.connect(name.clone(), tcp).await.expect("control");
            let mut line = [0u8; 8];
            control.read_exact(&mut line).await.expect("read");
            for _ in 0..n {
                let tcp = TcpStream::connect(addr).await.expect("connect");
                let mut data = connector.connect(name.clone(), tcp).await.expect("data");
                let mut rest = Vec::new();
                let _ = data.read_to_end(&mut rest).await;
            }
            let (cpu, resumed) = thread.join().expect("server thread");
            println!(
                "{label} {:<8} {:>7.1} µs server CPU per data connection ({resumed}/{n} resumed)",
                if resume { "resumed" } else { "full" },
                cpu.as_secs_f64() * 1e6 / f64::from(n),
            );
        }
    }
}
