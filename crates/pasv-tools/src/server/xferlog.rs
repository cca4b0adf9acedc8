//! The wu-ftpd `xferlog` format, one line per transfer:
//!
//! `current-time transfer-time remote-host file-size filename transfer-type
//! special-action-flag direction access-mode username service-name authentication-method
//! authenticated-user-id completion-status`, e.g.
//! `Wed Nov 25 14:22:23 2026 1 127.0.0.1 1024 /f1k.bin b _ o a anonymous ftp 0 * c`.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use pasv_protocol::Escaped;

use super::listing::{unix_secs, Civil};

const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An append-only transfer log. Each line is written with one `write` call, so lines from
/// concurrent sessions never interleave.
#[derive(Debug)]
pub(crate) struct Xferlog {
    file: Mutex<File>,
}

/// One finished transfer.
pub(crate) struct Entry<'a> {
    pub(crate) when: SystemTime,
    pub(crate) duration: Duration,
    pub(crate) remote: IpAddr,
    pub(crate) bytes: u64,
    pub(crate) path: &'a [u8],
    pub(crate) binary: bool,
    pub(crate) incoming: bool,
    pub(crate) anonymous: bool,
    pub(crate) user: &'a str,
    pub(crate) complete: bool,
}

impl Xferlog {
    pub(crate) fn open(path: &Path) -> io::Result<Xferlog> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Xferlog {
            file: Mutex::new(file),
        })
    }

    pub(crate) fn write(&self, entry: &Entry<'_>) {
        let line = format_entry(entry);
        let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!(error = %e, "xferlog write failed");
        }
    }
}

/// The log line, with its newline.
pub(crate) fn format_entry(e: &Entry<'_>) -> String {
    let secs = unix_secs(e.when);
    let c = Civil::from_unix(secs);
    let weekday = DAYS[secs.div_euclid(86_400).rem_euclid(7) as usize];
    let month = MONTHS[(c.month as usize).saturating_sub(1).min(11)];
    let path = field(e.path);
    let user = field(e.user.as_bytes());
    format!(
        "{weekday} {month} {:>2} {:02}:{:02}:{:02} {} {} {} {} {} {} _ {} {} {} ftp 0 * {}\n",
        c.day,
        c.hour,
        c.minute,
        c.second,
        c.year,
        e.duration.as_secs().max(1),
        e.remote,
        e.bytes,
        path,
        if e.binary { 'b' } else { 'a' },
        if e.incoming { 'i' } else { 'o' },
        if e.anonymous { 'a' } else { 'r' },
        user,
        if e.complete { 'c' } else { 'i' },
    )
}

/// A name as one field: control characters and bytes that are not UTF-8 escaped (`\x1b`,
/// see [`Escaped`]), so a name can neither end the line nor drive the terminal of whoever
/// reads the log; spaces replaced with `_` as wu-ftpd does, so the fields stay
/// space-separated.
fn field(name: &[u8]) -> String {
    Escaped::new(name)
        .to_string()
        .chars()
        .map(|ch| if ch.is_whitespace() { '_' } else { ch })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::UNIX_EPOCH;

    #[test]
    fn known_line() {
        let entry = Entry {
            when: UNIX_EPOCH + Duration::from_secs(1_795_616_543),
            duration: Duration::from_millis(20),
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bytes: 1024,
            path: b"/dir/my file.bin",
            binary: true,
            incoming: false,
            anonymous: true,
            user: "anonymous",
            complete: true,
        };
        assert_eq!(
            format_entry(&entry),
            "Wed Nov 25 14:22:23 2026 1 127.0.0.1 1024 /dir/my_file.bin b _ o a anonymous ftp 0 * c\n"
        );
    }

    #[test]
    fn control_characters_and_spaces_cannot_break_a_line() {
        let entry = Entry {
            when: UNIX_EPOCH + Duration::from_secs(1_795_616_543),
            duration: Duration::from_secs(3),
            remote: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bytes: 7,
            path: b"/a b\x1b[2J\x07\x01\x0b\t\xff\xc2\x85z",
            binary: false,
            incoming: true,
            anonymous: false,
            user: "bob\x1b]0;x\x07 smith",
            complete: false,
        };
        let line = format_entry(&entry);
        assert_eq!(
            line,
            "Wed Nov 25 14:22:23 2026 3 127.0.0.1 7 /a_b\\x1b[2J\\x07\\x01\\x0b\\t\\xff\\u{85}z \
             a _ i r bob\\x1b]0;x\\x07_smith ftp 0 * i\n"
        );
        assert_eq!(line.split(' ').count(), 18);
        assert!(!line.trim_end_matches('\n').chars().any(char::is_control));
    }
}
