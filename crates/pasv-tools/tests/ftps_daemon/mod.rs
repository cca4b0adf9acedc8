//! The pasvd binary as a child process serving FTPS, shared by the FTPS test binaries.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;

/// Upper bound on one wait for pasvd's output.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A certificate for 127.0.0.1 and localhost: its PEM files and its DER.
pub struct Cert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

pub fn generate(dir: &Path, name: &str) -> Cert {
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("rcgen");
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    fs::write(&cert, generated.cert.pem()).expect("write cert");
    fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
    Cert {
        cert,
        key,
        der: generated.cert.der().clone(),
    }
}

/// pasvd as a child process with a certificate and an implicit FTPS listener, killed on
/// drop. Its log (info) is read line by line into `log`.
pub struct Pasvd {
    pub child: Child,
    pub port: u16,
    pub implicit: u16,
    pub root: PathBuf,
    pub cert: Cert,
    pub log: mpsc::Receiver<String>,
    pub dir: tempfile::TempDir,
}

impl Pasvd {
    /// pasvd with `extra` flags on a range of 10 ports from `base` on (each test binary
    /// passes its own base, below the ephemeral ports; 10 ports more per call).
    pub fn start_at(base: u16, extra: &[&str]) -> Pasvd {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let lo = base + NEXT.fetch_add(10, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("root");
        let cert = generate(dir.path(), "server");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pasvd"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--implicit-tls-listen",
                "127.0.0.1:0",
                "--pasv-address",
                "127.0.0.1",
                "--no-fsync",
                "--anonymous-write",
            ])
            .arg("--root")
            .arg(&root)
            .arg("--tls-cert")
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key)
            .args(["--pasv-min-port", &lo.to_string()])
            .args(["--pasv-max-port", &(lo + 9).to_string()])
            .args(extra)
            .env("PASVD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pasvd starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("pasvd: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut port_of = |prefix: &str| {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("stdout");
            line.trim()
                .strip_prefix(prefix)
                .and_then(|p| p.parse::<u16>().ok())
                .unwrap_or_else(|| panic!("expected {prefix}PORT, got {line:?}"))
        };
        let port = port_of("listening on 127.0.0.1:");
        let implicit = port_of("implicit FTPS on 127.0.0.1:");
        Pasvd {
            child,
            port,
            implicit,
            root,
            cert,
            log,
            dir,
        }
    }

    pub fn ca(&self) -> String {
        self.cert.cert.display().to_string()
    }

    pub fn url(&self, path: &str) -> String {
        format!("ftp://127.0.0.1:{}/{path}", self.port)
    }

    /// Waits (bounded: each line within the timeout, at most 10,000 lines) for a log line
    /// containing `text`.
    pub fn wait_log(&self, text: &str) {
        for _ in 0..10_000 {
            match self.log.recv_timeout(TIMEOUT) {
                Ok(line) if line.contains(text) => return,
                Ok(_) => {}
                Err(e) => panic!("no log line with {text:?}: {e}"),
            }
        }
        panic!("no log line with {text:?} in 10,000 lines");
    }
}

impl Drop for Pasvd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `tool` runs; when not, says the test is skipped.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("SKIPPED: {tool} is not installed (apt-get install -y {tool})");
    }
    ok
}
