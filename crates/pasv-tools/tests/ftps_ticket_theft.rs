//! A TLS 1.3 ticket identity is sent in the clear in every resumed ClientHello. A port thief
//! behind the client's NAT address that has seen one (on the same network) offers it on the
//! victim's data port with another server name: the ticket decrypts, the server cannot
//! resume it (RFC 6066: another name means a full handshake) and goes on with a full
//! handshake. The data connection's ticket key must not hand out a ticket of the victim's
//! session on that full handshake: with one, the thief's next connection resumes the
//! victim's session and passes the reuse check (DESIGN §5), and takes the transfer.
//!
//! Both clients are rustls (the thief needs to choose its ClientHello's PSK identity and
//! server name); the server is the pasvd binary on loopback.

use std::collections::VecDeque;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::{ClientSessionStore, Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, NamedGroup, RootCertStore, StreamOwned};

mod ftps_daemon;
use ftps_daemon::{Pasvd, TIMEOUT};

/// Passive ports of this test binary: 31700 on.
const PORTS: u16 = 31_700;

/// A client's TLS 1.3 tickets, any server name; counts the tickets it was given.
#[derive(Debug, Default)]
struct Tickets {
    stock: Mutex<VecDeque<rustls::client::Tls13ClientSessionValue>>,
    received: AtomicUsize,
}

impl ClientSessionStore for Tickets {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}
    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }
    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }
    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }
    fn remove_tls12_session(&self, _: &ServerName<'static>) {}
    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.stock.lock().expect("lock").push_back(value);
    }
    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.stock.lock().expect("lock").pop_front()
    }
}

fn connect(port: u16) -> TcpStream {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    tcp.set_write_timeout(Some(TIMEOUT)).expect("timeout");
    tcp
}

/// One reply (the last line of a multi-line one).
fn reply(input: &mut impl Read) -> String {
    loop {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\r\n") {
            match input.read(&mut byte) {
                Ok(1) => line.push(byte[0]),
                other => panic!("control connection ended: {other:?}"),
            }
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        if line.len() >= 4 && line.as_bytes()[3] == b' ' {
            return line.trim_end().to_owned();
        }
    }
}

fn command(control: &mut (impl Read + Write), line: &str) -> String {
    control
        .write_all(format!("{line}\r\n").as_bytes())
        .expect("send");
    let answer = reply(control);
    eprintln!("{line} -> {answer}");
    answer
}

fn pasv_port(reply: &str) -> u16 {
    let inner = &reply[reply.find('(').expect("(") + 1..reply.find(')').expect(")")];
    let n: Vec<u16> = inner
        .split(',')
        .map(|n| n.parse().expect("number"))
        .collect();
    n[4] * 256 + n[5]
}

/// Everything a data connection delivers until close_notify, a reset or EOF (the handshake
/// included; a refused handshake shows as an error and no bytes).
fn drain(mut tls: StreamOwned<ClientConnection, TcpStream>) -> (usize, bool) {
    let mut got = 0;
    let mut buf = [0u8; 65536];
    loop {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => {
                eprintln!("data connection: {e}");
                break;
            }
        }
    }
    let resumed = tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    (got, resumed)
}

#[test]
fn a_sniffed_ticket_offered_with_another_server_name_gets_the_thief_no_ticket() {
    let server = Pasvd::start_at(PORTS, &["--accept-timeout", "10"]);
    let secret = vec![7u8; 50_000];
    fs::write(server.root.join("secret.bin"), &secret).expect("file");

    let mut roots = RootCertStore::empty();
    roots.add(server.cert.der.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let victim_tickets = Arc::new(Tickets::default());
    let mut victim = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    victim.resumption = Resumption::store(Arc::clone(&victim_tickets) as _);
    let victim = Arc::new(victim);

    // The victim: explicit FTPS to 127.0.0.1 (an address: no server name in its ClientHello).
    let mut plain = connect(server.port);
    assert!(reply(&mut plain).starts_with("220"));
    plain.write_all(b"AUTH TLS\r\n").expect("AUTH");
    assert!(reply(&mut plain).starts_with("234"));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let conn = ClientConnection::new(Arc::clone(&victim), name).expect("client");
    let mut control = StreamOwned::new(conn, plain);
    for (line, code) in [
        ("USER anonymous", "331"),
        ("PASS x@", "230"),
        ("PBSZ 0", "200"),
        ("PROT P", "200"),
        ("TYPE I", "200"),
    ] {
        assert!(command(&mut control, line).starts_with(code), "{line}");
    }
    // Reading the replies read the control connection's tickets.
    assert!(victim_tickets.received.load(Ordering::Relaxed) > 0);

    // What the thief saw on the wire: one ticket identity of the victim's session (here
    // handed over from the victim's stock; its binder is never checked, see below).
    let thief_tickets = Arc::new(Tickets::default());
    let sniffed = victim_tickets.stock.lock().expect("lock").pop_back();
    thief_tickets
        .stock
        .lock()
        .expect("lock")
        .push_back(sniffed.expect("a ticket"));
    // rustls offers a stored ticket only with the configuration that got it (same verifier
    // and client credentials): a clone with another store.
    let mut thief = (*victim).clone();
    thief.resumption = Resumption::store(Arc::clone(&thief_tickets) as _);
    let thief = Arc::new(thief);

    let data_port = pasv_port(&command(&mut control, "PASV"));
    control.write_all(b"RETR secret.bin\r\n").expect("RETR");
    // The thief comes first, from the same address, with the victim's ticket and the server
    // name "localhost": the ticket decrypts, its server name differs, so no resumption and
    // no binder check; a full handshake, refused by the reuse check after it.
    let localhost = ServerName::try_from("localhost").expect("name");
    let first = ClientConnection::new(Arc::clone(&thief), localhost.clone()).expect("client");
    let (bytes, resumed) = drain(StreamOwned::new(first, connect(data_port)));
    eprintln!("thief, first connection: {bytes} bytes, resumed {resumed}");
    let stolen = thief_tickets.received.load(Ordering::Relaxed);
    // Its next connection resumes with what it got, and passes the reuse check.
    let mut taken = 0;
    if stolen > 0 {
        let second = ClientConnection::new(Arc::clone(&thief), localhost).expect("client");
        let (bytes, resumed) = drain(StreamOwned::new(second, connect(data_port)));
        eprintln!("thief, second connection: {bytes} bytes, resumed {resumed}");
        taken = bytes;
    }
    // The victim's own data connection, resuming with its own ticket (unless the thief
    // took the transfer: then the endpoint is gone).
    let mut got = 0;
    if taken == 0 {
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let real = ClientConnection::new(Arc::clone(&victim), name).expect("client");
        let real = StreamOwned::new(real, connect(data_port));
        real.sock
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        got = drain(real).0;
    }
    let mut replies = vec![reply(&mut control)];
    if replies[0].starts_with('1') {
        replies.push(reply(&mut control));
    }
    eprintln!("victim: {got} bytes, replies {replies:?}");
    assert_eq!(
        stolen, 0,
        "the thief's full handshake got {stolen} ticket(s) of the victim's session \
         (and then {taken} bytes of the victim's file)"
    );
    assert_eq!(got, secret.len(), "{replies:?}");
}
