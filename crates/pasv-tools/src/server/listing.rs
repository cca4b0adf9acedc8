//! Directory listings: `ls -l` lines for LIST, bare names for NLST, RFC 3659 facts for
//! MLSD/MLST, and the UTC date arithmetic they need (no time zone database: FTP listings
//! are UTC by convention and MDTM/MLSD are UTC by RFC 3659 section 2.3).

use std::time::{SystemTime, UNIX_EPOCH};

use super::vfs::{FsError, Kind, Meta, Vfs};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Seconds since the Unix epoch (negative before it).
pub(crate) fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// A broken-down UTC time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Civil {
    pub(crate) year: i64,
    pub(crate) month: u32,
    pub(crate) day: u32,
    pub(crate) hour: u32,
    pub(crate) minute: u32,
    pub(crate) second: u32,
}

// Howard Hinnant's days-from-civil algorithms (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl Civil {
    pub(crate) fn from_unix(secs: i64) -> Civil {
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400) as u32;
        Civil {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
        }
    }

    pub(crate) fn to_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * 86_400
            + i64::from(self.hour * 3600 + self.minute * 60 + self.second)
    }

    /// RFC 3659 `time-val`: `YYYYMMDDHHMMSS`.
    pub(crate) fn time_val(self) -> String {
        format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }

    /// Parses `YYYYMMDDHHMMSS[.sss]` (fraction ignored), checking every field's range.
    pub(crate) fn parse_time_val(s: &[u8]) -> Option<Civil> {
        let digits = match s.iter().position(|&b| b == b'.') {
            Some(dot) if s[dot + 1..].iter().all(u8::is_ascii_digit) => &s[..dot],
            Some(_) => return None,
            None => s,
        };
        if digits.len() != 14 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let num = |r: std::ops::Range<usize>| {
            digits[r]
                .iter()
                .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'))
        };
        let c = Civil {
            year: i64::from(num(0..4)),
            month: num(4..6),
            day: num(6..8),
            hour: num(8..10),
            minute: num(10..12),
            second: num(12..14),
        };
        let days_in_month = match c.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if (c.year % 4 == 0 && c.year % 100 != 0) || c.year % 400 == 0 => 29,
            2 => 28,
            _ => return None,
        };
        (c.day >= 1 && c.day <= days_in_month && c.hour < 24 && c.minute < 60 && c.second < 60)
            .then_some(c)
    }
}

fn mode_string(meta: &Meta, out: &mut Vec<u8>) {
    out.push(match meta.kind {
        Kind::Dir => b'd',
        Kind::Symlink => b'l',
        Kind::File => b'-',
        Kind::Other => b'?',
    });
    for shift in [6u32, 3, 0] {
        let bits = (meta.mode >> shift) & 7;
        out.push(if bits & 4 != 0 { b'r' } else { b'-' });
        out.push(if bits & 2 != 0 { b'w' } else { b'-' });
        out.push(if bits & 1 != 0 { b'x' } else { b'-' });
    }
}

/// Appends one `ls -l` line (CRLF-terminated) for `name`, with ` -> target` for a link whose
/// target the `vfs` module found beneath the root.
pub(crate) fn ls_line(
    name: &[u8],
    meta: &Meta,
    target: Option<&[u8]>,
    now: i64,
    out: &mut Vec<u8>,
) {
    use std::io::Write;
    mode_string(meta, out);
    let mtime = meta.mtime;
    let c = Civil::from_unix(mtime);
    // `ls` shows the year instead of the time for files older than six months or in the future.
    let recent = mtime <= now + 3600 && now - mtime < 183 * 86_400;
    let month = MONTHS[(c.month as usize).saturating_sub(1).min(11)];
    let _ = write!(
        out,
        " {:>3} ftp      ftp      {:>12} {} {:>2} ",
        meta.nlink, meta.size, month, c.day
    );
    if recent {
        let _ = write!(out, "{:02}:{:02} ", c.hour, c.minute);
    } else {
        let _ = write!(out, " {:>4} ", c.year);
    }
    out.extend_from_slice(name);
    if let Some(target) = target {
        out.extend_from_slice(b" -> ");
        out.extend_from_slice(target);
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 3659 section 7 facts for one entry, without the name; `kind` overrides the type fact
/// (`cdir` for the listed directory itself).
pub(crate) fn mlsx_facts(meta: &Meta, writable: bool, kind: Option<&str>, out: &mut Vec<u8>) {
    use std::io::Write;
    let is_dir = meta.kind == Kind::Dir;
    let ty = kind.unwrap_or(match meta.kind {
        Kind::Dir => "dir",
        Kind::File => "file",
        Kind::Symlink => "OS.unix=slink:",
        Kind::Other => "OS.unix=other",
    });
    let perm = match (is_dir, writable) {
        (true, true) => "flcdmpe",
        (true, false) => "el",
        (false, true) => "adfrw",
        (false, false) => "r",
    };
    let modify = Civil::from_unix(meta.mtime).time_val();
    let _ = write!(out, "type={ty};");
    if meta.kind == Kind::File {
        let _ = write!(out, "size={};", meta.size);
    }
    let _ = write!(
        out,
        "modify={modify};perm={perm};unix.mode=0{:o};",
        meta.mode & 0o7777
    );
}

/// Options of `LIST -la path`: wget sends `LIST -a`; options are flags we mostly ignore.
pub(crate) struct ListArgs<'a> {
    pub(crate) all: bool,
    pub(crate) path: Option<&'a [u8]>,
}

/// Splits leading `-x` option words off a LIST/NLST argument.
pub(crate) fn list_args(arg: Option<&[u8]>) -> ListArgs<'_> {
    let mut all = false;
    let mut rest = arg.unwrap_or(b"");
    loop {
        let trimmed = trim_start(rest);
        if trimmed.first() == Some(&b'-') {
            let end = trimmed
                .iter()
                .position(|&b| b == b' ')
                .unwrap_or(trimmed.len());
            all |= trimmed[..end].contains(&b'a');
            rest = &trimmed[end..];
        } else {
            rest = trimmed;
            break;
        }
    }
    ListArgs {
        all,
        path: (!rest.is_empty()).then_some(rest),
    }
}

fn trim_start(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| b != b' ').unwrap_or(s.len());
    &s[start..]
}

/// What a directory listing is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    List { all: bool },
    Nlst,
    Mlsd { writable: bool },
}

/// Lists a directory (sorted by name bytes; upload temporaries hidden, dot files only with
/// `-a` or in MLSD) or a single entry. Blocking: callers run it on the blocking pool.
pub(crate) fn render(vfs: &Vfs, virt: &[u8], format: Format, now: i64) -> Result<Vec<u8>, FsError> {
    let (meta, entries) = vfs.list(virt)?;
    let mut out = Vec::new();
    let Some(mut entries) = entries else {
        let name = virt.rsplit(|&b| b == b'/').next().unwrap_or(virt);
        entry(&mut out, name, &meta, None, format, now);
        return Ok(out);
    };
    if matches!(format, Format::List { all: false } | Format::Nlst) {
        entries.retain(|e| e.name.first() != Some(&b'.'));
    }
    entries.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Format::Mlsd { writable } = format {
        mlsx_facts(&meta, writable, Some("cdir"), &mut out);
        out.extend_from_slice(b" .\r\n");
    }
    for e in &entries {
        entry(&mut out, &e.name, &e.meta, e.target.as_deref(), format, now);
    }
    Ok(out)
}

fn entry(
    out: &mut Vec<u8>,
    name: &[u8],
    meta: &Meta,
    target: Option<&[u8]>,
    format: Format,
    now: i64,
) {
    match format {
        Format::List { .. } => ls_line(name, meta, target, now, out),
        Format::Nlst => {
            out.extend_from_slice(name);
            out.extend_from_slice(b"\r\n");
        }
        Format::Mlsd { writable } => {
            // RFC 3659 leaves links to the OS facts: `OS.unix=slink:TARGET` (the target
            // only when it resolves beneath the root), which clients such as lftp know.
            let slink = (meta.kind == Kind::Symlink).then(|| {
                let mut ty = b"OS.unix=slink:".to_vec();
                ty.extend(target.unwrap_or_default().iter().map(|&b| match b {
                    b';' | b'\r' | b'\n' => b'?',
                    b => b,
                }));
                String::from_utf8_lossy(&ty).into_owned()
            });
            mlsx_facts(meta, writable, slink.as_deref(), out);
            out.push(b' ');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trips_and_known_dates() {
        assert_eq!(
            Civil::from_unix(0),
            Civil {
                year: 1970,
                month: 1,
                day: 1,
                hour: 0,
                minute: 0,
                second: 0
            }
        );
        let t = 1_795_616_543; // 2026-11-25 14:22:23 UTC
        assert_eq!(Civil::from_unix(t).time_val(), "20261125142223");
        for secs in [-86_401, 0, 951_782_400, 4_107_542_399, t] {
            assert_eq!(Civil::from_unix(secs).to_unix(), secs);
        }
        assert_eq!(Civil::from_unix(951_782_400).time_val(), "20000229000000");
    }

    #[test]
    fn time_val_parsing_checks_ranges() {
        assert_eq!(
            Civil::parse_time_val(b"20240229235959").map(Civil::time_val),
            Some("20240229235959".to_owned())
        );
        assert!(Civil::parse_time_val(b"20230229000000").is_none());
        assert!(Civil::parse_time_val(b"20231301000000").is_none());
        assert!(Civil::parse_time_val(b"2023010100000").is_none());
        assert!(Civil::parse_time_val(b"20230101000000.123").is_some());
        assert!(Civil::parse_time_val(b"20230101000000.x").is_none());
    }

    #[test]
    fn list_options_are_split_off() {
        let a = list_args(Some(b"-a"));
        assert!(a.all && a.path.is_none());
        let a = list_args(Some(b"-l -a dir name"));
        assert!(a.all);
        assert_eq!(a.path, Some(&b"dir name"[..]));
        let a = list_args(Some(b"file"));
        assert!(!a.all);
        assert_eq!(a.path, Some(&b"file"[..]));
        assert!(list_args(None).path.is_none());
    }
}
