//! The pasvd binary as a child process serving FTPS, shared by the FTPS test binaries.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
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
        Pasvd::start_with(base, extra, None)
    }

    /// The same with `--run-as account` (call as root): the served root is readable by
    /// every account, the certificate and key are mode 0600 in a directory (`tls_dir`)
    /// only root may enter, as keys usually are.
    pub fn start_run_as(base: u16, extra: &[&str], account: &str) -> Pasvd {
        Pasvd::start_with(base, extra, Some(account))
    }

    /// The certificate's directory (root-only with [`Pasvd::start_run_as`]).
    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn start_with(base: u16, extra: &[&str], run_as: Option<&str>) -> Pasvd {
        static NEXT: AtomicU16 = AtomicU16::new(0);
        let lo = base + NEXT.fetch_add(10, Ordering::Relaxed);
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        fs::create_dir(&root).expect("root");
        let tls = dir.path().join("tls");
        fs::create_dir(&tls).expect("tls dir");
        let cert = generate(&tls, "server");
        let mut run_as_args = Vec::new();
        if let Some(account) = run_as {
            let mode = |path: &Path, mode| {
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod")
            };
            mode(dir.path(), 0o755);
            mode(&root, 0o755);
            mode(&tls, 0o700);
            mode(&cert.cert, 0o600);
            mode(&cert.key, 0o600);
            run_as_args = vec!["--run-as", account];
        }
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
            .args(run_as_args)
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
        self.wait_log_any(&[text]);
    }

    /// Waits (bounded as [`Pasvd::wait_log`]) for a log line containing one of `texts`:
    /// that line and the lines before it.
    pub fn wait_log_any(&self, texts: &[&str]) -> (String, Vec<String>) {
        let mut before = Vec::new();
        for _ in 0..10_000 {
            match self.log.recv_timeout(TIMEOUT) {
                Ok(line) if texts.iter().any(|t| line.contains(t)) => return (line, before),
                Ok(line) => before.push(line),
                Err(e) => panic!("no log line with one of {texts:?}: {e}"),
            }
        }
        panic!("no log line with one of {texts:?} in 10,000 lines");
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
