//! The privileged certificate reader: a small child process that keeps the privileges
//! `pasvd` started with and reads the TLS certificate and key files for it, so that a SIGHUP
//! reload works after the switch to `run_as` even when the key is readable by root only
//! (privilege separation, as the masters of OpenSSH and nginx do it).
//!
//! `pasvd` starts it before the switch, while the process is still privileged and has a
//! single thread: the program itself (`/proc/self/exe`) with the hidden subcommand
//! [`SUBCOMMAND`] and the two paths, an empty environment, stdin and stdout piped (std sets
//! close-on-exec on every other descriptor, so the child holds none of the server's
//! sockets or files). The child does one thing ([`run`]): for each request byte on its
//! stdin it reads the two files it was given at start, and answers on its stdout with one
//! frame:
//!
//! ```text
//! request:  'R'
//! reply:    0x00  u32 length  certificate PEM  u32 length  key PEM     (both files read)
//!           0x01  u32 length  reason (UTF-8)                          (the certificate file)
//!           0x02  u32 length  reason (UTF-8)                          (the key file)
//! ```
//!
//! Lengths are big-endian; a file above [`MAX_FILE`] bytes and a reason above 4 KiB are
//! refused on both sides. The child exits when its stdin closes, that is, when `pasvd`
//! exits (however it ends), so it never outlives the server. A compromised `pasvd` can ask
//! it for nothing but the two files the server already holds in memory. The PEM parsing
//! stays in the server ([`super::tls::CertResolver`]), in the same code path as a direct
//! read.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

/// The hidden subcommand of `pasvd` that runs the reader: `pasvd tls-reader CERT KEY`.
pub const SUBCOMMAND: &str = "tls-reader";

/// The largest certificate or key file read, in bytes (1 MiB; a chain of a few
/// certificates is a few KiB).
pub const MAX_FILE: u32 = 1 << 20;

/// The longest error text in a reply, in bytes.
const MAX_REASON: u32 = 4096;

/// The one request: read both files.
const REQUEST: u8 = b'R';

const STATUS_OK: u8 = 0;
const STATUS_CERT_FAILED: u8 = 1;
const STATUS_KEY_FAILED: u8 = 2;

/// Which of the two files a failure is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Which {
    /// The certificate chain.
    Cert,
    /// The private key.
    Key,
}

/// One reply of the reader.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Both files, as read.
    Files { cert: Vec<u8>, key: Vec<u8> },
    /// A file could not be read.
    Failed { which: Which, reason: String },
}

impl fmt::Debug for Reply {
    // Never the key's bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Files { cert, key } => f
                .debug_struct("Files")
                .field("cert_len", &cert.len())
                .field("key_len", &key.len())
                .finish(),
            Reply::Failed { which, reason } => f
                .debug_struct("Failed")
                .field("which", which)
                .field("reason", reason)
                .finish(),
        }
    }
}

/// Why a reply could not be decoded.
#[derive(Debug)]
pub(crate) enum FrameError {
    /// The stream ended before the reply started (the reader exited).
    Closed,
    /// The stream ended within the reply.
    Truncated,
    /// A status byte that is none of the three.
    Status(u8),
    /// A length above its limit.
    TooLong {
        /// The length announced.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// Reading failed.
    Io(io::Error),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Closed => f.write_str("the certificate reader exited"),
            FrameError::Truncated => {
                f.write_str("the certificate reader's reply ended early (the reader exited)")
            }
            FrameError::Status(s) => {
                write!(
                    f,
                    "the certificate reader sent an unknown status byte {s:#04x}"
                )
            }
            FrameError::TooLong { len, max } => write!(
                f,
                "the certificate reader announced {len} bytes, above the limit of {max}"
            ),
            FrameError::Io(e) => write!(f, "reading from the certificate reader: {e}"),
        }
    }
}

/// Reads `path` whole, refusing a file above [`MAX_FILE`] bytes. The one place both the
/// reader and a direct reload read a certificate or key file.
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    // Non-blocking, so that a FIFO (or a device) at the path is refused at once below
    // instead of blocking the read, and with it every later reload.
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
            .open(path)
            .map_err(|e| e.to_string())?
    };
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(u64::from(MAX_FILE) + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > MAX_FILE as usize {
        return Err(format!("larger than {MAX_FILE} bytes"));
    }
    Ok(bytes)
}

/// A place on the way to `path` that the account `uid` (with groups `gids`) could change: a
/// directory above the path or above the file its links lead to that the account owns, may
/// write through its group, or anyone may write to without the sticky bit. Such an account
/// could swap the file for a link to any other file, and a privileged reader would read that
/// one for it; `None` when there is no such place.
pub(crate) fn changeable_by(path: &Path, uid: u32, gids: &[u32]) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut paths = vec![path.to_path_buf()];
    if let Ok(real) = std::fs::canonicalize(path) {
        paths.push(real);
    }
    for path in &paths {
        for dir in path.ancestors().skip(1) {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let mode = meta.mode();
            let sticky = mode & 0o1000 != 0;
            if meta.uid() == uid
                || (gids.contains(&meta.gid()) && mode & 0o020 != 0)
                || (mode & 0o002 != 0 && !sticky)
            {
                return Some(dir.to_path_buf());
            }
        }
    }
    None
}

fn put_len(out: &mut Vec<u8>, bytes: &[u8]) {
    // Callers keep every part within its limit (below u32::MAX).
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The frame of `reply`. A reason is cut to its limit (at a character boundary).
pub(crate) fn encode(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    match reply {
        Reply::Files { cert, key } => {
            out.reserve(9 + cert.len() + key.len());
            out.push(STATUS_OK);
            put_len(&mut out, cert);
            put_len(&mut out, key);
        }
        Reply::Failed { which, reason } => {
            out.push(match which {
                Which::Cert => STATUS_CERT_FAILED,
                Which::Key => STATUS_KEY_FAILED,
            });
            let mut end = reason.len().min(MAX_REASON as usize);
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            put_len(&mut out, &reason.as_bytes()[..end]);
        }
    }
    out
}

fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), FrameError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })
}

/// A length-prefixed part of at most `max` bytes (checked before anything is allocated).
fn read_part(input: &mut impl Read, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut len = [0u8; 4];
    read_exact(input, &mut len)?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let mut part = vec![0u8; len as usize];
    read_exact(input, &mut part)?;
    Ok(part)
}

/// Reads one reply from `input`.
pub(crate) fn decode(input: &mut impl Read) -> Result<Reply, FrameError> {
    let mut status = [0u8; 1];
    loop {
        match input.read(&mut status) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    match status[0] {
        STATUS_OK => {
            let cert = read_part(input, MAX_FILE)?;
            let key = read_part(input, MAX_FILE)?;
            Ok(Reply::Files { cert, key })
        }
        s @ (STATUS_CERT_FAILED | STATUS_KEY_FAILED) => {
            let reason = read_part(input, MAX_REASON)?;
            Ok(Reply::Failed {
                which: if s == STATUS_CERT_FAILED {
                    Which::Cert
                } else {
                    Which::Key
                },
                reason: String::from_utf8_lossy(&reason).into_owned(),
            })
        }
        other => Err(FrameError::Status(other)),
    }
}

/// The reader's loop over any pair of streams: a reply per request byte, until `input`
/// ends. Any byte other than the request ends it with an error.
pub(crate) fn serve(
    cert: &Path,
    key: &Path,
    mut input: impl Read,
    mut output: impl Write,
) -> io::Result<()> {
    let mut request = [0u8; 1];
    loop {
        match input.read(&mut request) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if request[0] != REQUEST {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown request byte {:#04x}", request[0]),
            ));
        }
        let reply = match read_file(cert) {
            Err(reason) => Reply::Failed {
                which: Which::Cert,
                reason,
            },
            Ok(cert) => match read_file(key) {
                Err(reason) => Reply::Failed {
                    which: Which::Key,
                    reason,
                },
                Ok(key) => Reply::Files { cert, key },
            },
        };
        output.write_all(&encode(&reply))?;
        output.flush()?;
    }
}

/// The body of `pasvd tls-reader CERT KEY`: answers requests on stdin with the two files on
/// stdout until stdin closes. Call it first thing in `main`, before any other setup.
pub fn run(cert: &Path, key: &Path) -> io::Result<()> {
    serve(cert, key, io::stdin().lock(), io::stdout().lock())
}

/// What [`CertReader::read`] could not do.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The reader answered that a file could not be read.
    File { which: Which, reason: String },
    /// The reader is gone or out of step: no reload can work until the server restarts.
    Reader(String),
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Set once the reader failed: every later request gets this.
    failed: Option<String>,
}

/// The server's side of the reader: the child process and its two pipes. One request at a
/// time (a mutex); dropping it closes the child's stdin, which ends the child.
pub struct CertReader {
    process: Mutex<Process>,
    pid: u32,
}

impl fmt::Debug for CertReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertReader")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl CertReader {
    /// Starts `program` [`SUBCOMMAND`] `cert` `key` (`program` is the server's own
    /// executable, `/proc/self/exe` for `pasvd`) with the current privileges, an empty
    /// environment, its stdin and stdout piped, stderr shared, in a process group of its own
    /// (a terminal's hangup or interrupt reaches the server, not the reader, which ends
    /// when the server does). Call it before dropping privileges.
    pub fn spawn(program: &Path, cert: &Path, key: &Path) -> io::Result<CertReader> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(program)
            .arg0("pasvd")
            .arg(SUBCOMMAND)
            .arg(cert)
            .arg(key)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()?;
        let pid = child.id();
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(io::Error::other("the reader's pipes are missing"));
        };
        Ok(CertReader {
            process: Mutex::new(Process {
                child,
                stdin,
                stdout,
                failed: None,
            }),
            pid,
        })
    }

    /// The reader's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks the reader for both files (blocking: call it off the runtime's threads).
    pub(crate) fn read(&self) -> Result<(Vec<u8>, Vec<u8>), ReadError> {
        let mut process = self.process.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(failed) = &process.failed {
            return Err(ReadError::Reader(failed.clone()));
        }
        let answer = match process
            .stdin
            .write_all(&[REQUEST])
            .and_then(|()| process.stdin.flush())
        {
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(FrameError::Closed),
            Err(e) => Err(FrameError::Io(e)),
            Ok(()) => decode(&mut process.stdout),
        };
        match answer {
            Ok(Reply::Files { cert, key }) => Ok((cert, key)),
            Ok(Reply::Failed { which, reason }) => Err(ReadError::File { which, reason }),
            Err(e) => {
                // Out of step or gone: this reader answers nothing any more.
                let status = match process.child.try_wait() {
                    Ok(Some(status)) => format!(" ({status})"),
                    _ => String::new(),
                };
                let failed =
                    format!("{e}{status}; certificates cannot be reloaded until pasvd restarts");
                process.failed = Some(failed.clone());
                Err(ReadError::Reader(failed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(cert: &[u8], key: &[u8]) -> Reply {
        Reply::Files {
            cert: cert.to_vec(),
            key: key.to_vec(),
        }
    }

    #[test]
    fn replies_round_trip() {
        let replies = [
            files(
                b"-----BEGIN CERTIFICATE-----\n",
                b"-----BEGIN PRIVATE KEY-----\n",
            ),
            files(b"", b""),
            Reply::Failed {
                which: Which::Cert,
                reason: "Permission denied (os error 13)".into(),
            },
            Reply::Failed {
                which: Which::Key,
                reason: String::new(),
            },
        ];
        // Back to back on one stream, as the pipe carries them.
        let stream: Vec<u8> = replies.iter().flat_map(encode).collect();
        let mut input = &stream[..];
        for reply in &replies {
            assert_eq!(&decode(&mut input).expect("decodes"), reply);
        }
        assert!(matches!(decode(&mut input), Err(FrameError::Closed)));
    }

    #[test]
    fn every_truncation_is_a_clear_error() {
        let frames = [
            encode(&files(b"cert", b"key")),
            encode(&Reply::Failed {
                which: Which::Key,
                reason: "gone".into(),
            }),
        ];
        for frame in &frames {
            assert!(matches!(decode(&mut &[][..]), Err(FrameError::Closed)));
            for cut in 1..frame.len() {
                let err = decode(&mut &frame[..cut]).expect_err("truncated");
                assert!(matches!(err, FrameError::Truncated), "{cut}: {err}");
                assert!(err.to_string().contains("ended early"), "{err}");
            }
        }
    }

    #[test]
    fn oversized_lengths_and_unknown_status_are_refused_before_allocating() {
        // u32::MAX announced, nothing behind it: refused on the length alone.
        let mut frame = vec![STATUS_OK];
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = decode(&mut &frame[..]).expect_err("too long");
        assert!(
            matches!(
                err,
                FrameError::TooLong {
                    len: u32::MAX,
                    max: MAX_FILE
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("above the limit"), "{err}");
        // The key's length over the limit after a good certificate.
        let mut frame = vec![STATUS_OK];
        put_len(&mut frame, b"cert");
        frame.extend_from_slice(&(MAX_FILE + 1).to_be_bytes());
        assert!(matches!(
            decode(&mut &frame[..]),
            Err(FrameError::TooLong { .. })
        ));
        // A reason longer than its limit.
        let mut frame = vec![STATUS_KEY_FAILED];
        frame.extend_from_slice(&(MAX_REASON + 1).to_be_bytes());
        assert!(matches!(
            decode(&mut &frame[..]),
            Err(FrameError::TooLong { .. })
        ));
        let err = decode(&mut &[7u8, 0, 0, 0, 0][..]).expect_err("status");
        assert!(matches!(err, FrameError::Status(7)), "{err}");
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary_and_bytes_not_utf8_are_replaced() {
        let reason = "é".repeat(MAX_REASON as usize); // two bytes each
        let frame = encode(&Reply::Failed {
            which: Which::Cert,
            reason,
        });
        let Ok(Reply::Failed { reason, .. }) = decode(&mut &frame[..]) else {
            panic!("decodes");
        };
        assert_eq!(reason.len(), MAX_REASON as usize);
        let mut frame = vec![STATUS_CERT_FAILED];
        put_len(&mut frame, b"bad \xff byte");
        let Ok(Reply::Failed { reason, .. }) = decode(&mut &frame[..]) else {
            panic!("decodes");
        };
        assert_eq!(reason, "bad \u{fffd} byte");
    }

    #[test]
    fn directories_the_account_could_change_are_found() {
        use std::os::unix::fs::PermissionsExt;
        if !rustix::process::geteuid().is_root() {
            eprintln!("SKIPPED: needs root (chown)");
            return;
        }
        let account = 4242;
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("mkdir");
        let key = certs.join("key.pem");
        std::fs::write(&key, b"key").expect("write");
        let chmod = |mode| std::fs::set_permissions(&certs, std::fs::Permissions::from_mode(mode));
        chmod(0o755).expect("chmod");
        assert_eq!(changeable_by(&key, account, &[account]), None);
        // Owned by the account.
        std::os::unix::fs::chown(&certs, Some(account), None).expect("chown");
        assert_eq!(changeable_by(&key, account, &[]), Some(certs.clone()));
        std::os::unix::fs::chown(&certs, Some(0), Some(account)).expect("chown");
        // Writable through one of its groups, or by anyone.
        chmod(0o775).expect("chmod");
        assert_eq!(
            changeable_by(&key, account, &[account]),
            Some(certs.clone())
        );
        assert_eq!(changeable_by(&key, account, &[1]), None);
        chmod(0o777).expect("chmod");
        assert_eq!(changeable_by(&key, account, &[]), Some(certs.clone()));
        // Anyone may write, but only owners remove or rename: like /tmp.
        chmod(0o1777).expect("chmod");
        assert_eq!(changeable_by(&key, account, &[]), None);
        // Through a link: the directory of the file it leads to counts too.
        chmod(0o755).expect("chmod");
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).expect("mkdir");
        std::fs::write(elsewhere.join("real.pem"), b"key").expect("write");
        std::os::unix::fs::chown(&elsewhere, Some(account), None).expect("chown");
        let link = certs.join("link.pem");
        std::os::unix::fs::symlink(elsewhere.join("real.pem"), &link).expect("symlink");
        let real_dir = std::fs::canonicalize(&elsewhere).expect("canonical");
        assert_eq!(changeable_by(&link, account, &[]), Some(real_dir));
    }

    #[test]
    fn a_fifo_or_a_directory_is_refused_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("key.pem");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        // Nobody writes to it: a blocking open or read would never return.
        assert_eq!(read_file(&fifo), Err("not a regular file".to_owned()));
        assert_eq!(read_file(dir.path()), Err("not a regular file".to_owned()));
        let file = dir.path().join("cert.pem");
        std::fs::write(&file, b"pem").expect("write");
        assert_eq!(read_file(&file), Ok(b"pem".to_vec()));
    }

    #[test]
    fn the_debug_output_shows_no_key_bytes() {
        let shown = format!("{:?}", files(b"CERT", b"SECRET"));
        assert!(
            !shown.contains("SECRET") && !shown.contains("83, 69"),
            "{shown}"
        );
    }

    proptest::proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode(&mut &bytes[..]);
        }
    }

    #[test]
    fn serve_answers_each_request_and_ends_with_its_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, b"the chain").expect("write");
        std::fs::write(&key, b"the key").expect("write");
        let mut out = Vec::new();
        serve(&cert, &key, &b"RR"[..], &mut out).expect("serve");
        let mut replies = &out[..];
        for _ in 0..2 {
            assert_eq!(
                decode(&mut replies).expect("reply"),
                files(b"the chain", b"the key")
            );
        }
        assert!(matches!(decode(&mut replies), Err(FrameError::Closed)));

        // A missing key, then a certificate above the limit: each named as its file.
        std::fs::remove_file(&key).expect("remove");
        let mut out = Vec::new();
        serve(&cert, &key, &b"R"[..], &mut out).expect("serve");
        let Ok(Reply::Failed { which, reason }) = decode(&mut &out[..]) else {
            panic!("a failure");
        };
        assert_eq!(which, Which::Key);
        assert!(reason.contains("No such file"), "{reason}");
        std::fs::write(&cert, vec![b'x'; MAX_FILE as usize + 1]).expect("write");
        let mut out = Vec::new();
        serve(&cert, &key, &b"R"[..], &mut out).expect("serve");
        let Ok(Reply::Failed { which, reason }) = decode(&mut &out[..]) else {
            panic!("a failure");
        };
        assert_eq!(which, Which::Cert);
        assert!(reason.contains("larger than"), "{reason}");

        // Anything but a request ends the reader.
        let mut out = Vec::new();
        assert!(serve(&cert, &key, &b"X"[..], &mut out).is_err());
        assert!(out.is_empty());
    }
}
