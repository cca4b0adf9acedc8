//! Reply value types: [`ReplyCode`], [`ReplyClass`], [`TextLine`] and [`Reply`].

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use bytes::{BufMut, Bytes};

use crate::address::{self, AddressError};
use crate::command::InvalidArgument;
use crate::hint;

/// A three-digit FTP reply code, always in `100..=659`.
///
/// RFC 959 section 4.2 gives the first digit its meaning (1 to 5); RFC 2228 adds
/// the 6xx protected replies. Codes outside `100..=659` cannot be constructed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyCode(u16);

/// The class of a reply, from the first digit of its code (RFC 959 section 4.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplyClass {
    /// 1xx: the action is being started; expect another reply.
    PositivePreliminary,
    /// 2xx: the action completed.
    PositiveCompletion,
    /// 3xx: the command was accepted; the server waits for another command.
    PositiveIntermediate,
    /// 4xx: the action failed but may succeed if retried.
    TransientNegative,
    /// 5xx: the action failed and should not be retried unchanged.
    PermanentNegative,
    /// 6xx: a protected reply wrapping another one (RFC 2228 section 4).
    Protected,
}

macro_rules! reply_codes {
    ($($(#[$doc:meta])* $name:ident = $value:literal;)*) => {
        impl ReplyCode {
            $($(#[$doc])* pub const $name: ReplyCode = ReplyCode($value);)*
        }
    };
}

reply_codes! {
    /// 110 Restart marker reply.
    RESTART_MARKER = 110;
    /// 120 Service ready in nnn minutes.
    SERVICE_READY_IN = 120;
    /// 125 Data connection already open; transfer starting.
    DATA_ALREADY_OPEN = 125;
    /// 150 File status okay; about to open data connection.
    FILE_STATUS_OK = 150;
    /// 200 Command okay.
    OK = 200;
    /// 202 Command not implemented, superfluous at this site.
    COMMAND_SUPERFLUOUS = 202;
    /// 211 System status, or system help reply (also the FEAT reply, RFC 2389).
    SYSTEM_STATUS = 211;
    /// 212 Directory status.
    DIRECTORY_STATUS = 212;
    /// 213 File status (also the SIZE and MDTM replies, RFC 3659).
    FILE_STATUS = 213;
    /// 214 Help message.
    HELP = 214;
    /// 215 NAME system type.
    SYSTEM_TYPE = 215;
    /// 220 Service ready for new user.
    SERVICE_READY = 220;
    /// 221 Service closing control connection.
    CLOSING_CONTROL = 221;
    /// 225 Data connection open; no transfer in progress.
    DATA_OPEN = 225;
    /// 226 Closing data connection; requested file action successful.
    CLOSING_DATA = 226;
    /// 227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).
    ENTERING_PASSIVE = 227;
    /// 229 Entering Extended Passive Mode (|||port|) (RFC 2428).
    ENTERING_EXTENDED_PASSIVE = 229;
    /// 230 User logged in, proceed.
    LOGGED_IN = 230;
    /// 234 Security data exchange complete (AUTH accepted, RFC 2228).
    AUTH_OK = 234;
    /// 250 Requested file action okay, completed.
    FILE_ACTION_OK = 250;
    /// 257 "PATHNAME" created.
    PATHNAME_CREATED = 257;
    /// 331 User name okay, need password.
    NEED_PASSWORD = 331;
    /// 332 Need account for login.
    NEED_ACCOUNT = 332;
    /// 350 Requested file action pending further information.
    FILE_ACTION_PENDING = 350;
    /// 421 Service not available, closing control connection.
    SERVICE_NOT_AVAILABLE = 421;
    /// 425 Can't open data connection.
    CANT_OPEN_DATA = 425;
    /// 426 Connection closed; transfer aborted.
    TRANSFER_ABORTED = 426;
    /// 450 Requested file action not taken; file unavailable (busy).
    FILE_BUSY = 450;
    /// 451 Requested action aborted: local error in processing.
    LOCAL_ERROR = 451;
    /// 452 Requested action not taken; insufficient storage space.
    INSUFFICIENT_STORAGE = 452;
    /// 500 Syntax error, command unrecognized.
    SYNTAX_ERROR = 500;
    /// 501 Syntax error in parameters or arguments.
    SYNTAX_ERROR_ARGS = 501;
    /// 502 Command not implemented.
    NOT_IMPLEMENTED = 502;
    /// 503 Bad sequence of commands.
    BAD_SEQUENCE = 503;
    /// 504 Command not implemented for that parameter.
    NOT_IMPLEMENTED_FOR_PARAM = 504;
    /// 522 Network protocol not supported (EPRT, RFC 2428).
    PROTOCOL_NOT_SUPPORTED = 522;
    /// 530 Not logged in.
    NOT_LOGGED_IN = 530;
    /// 532 Need account for storing files.
    NEED_ACCOUNT_FOR_STORING = 532;
    /// 533 Command protection level denied for policy reasons (RFC 2228).
    PROTECTION_DENIED = 533;
    /// 534 Request denied for policy reasons (RFC 2228).
    DENIED_FOR_POLICY = 534;
    /// 550 Requested action not taken; file unavailable.
    FILE_UNAVAILABLE = 550;
    /// 551 Requested action aborted: page type unknown.
    PAGE_TYPE_UNKNOWN = 551;
    /// 552 Requested file action aborted: exceeded storage allocation.
    EXCEEDED_STORAGE = 552;
    /// 553 Requested action not taken; file name not allowed.
    BAD_FILENAME = 553;
    /// 554 Requested action not taken: invalid REST parameter (RFC 3659 section 5.4).
    INVALID_REST = 554;
}

impl ReplyCode {
    /// Returns the code if it lies in `100..=659`.
    pub const fn new(code: u16) -> Option<ReplyCode> {
        if code >= 100 && code <= 659 {
            Some(ReplyCode(code))
        } else {
            None
        }
    }

    /// The numeric value, in `100..=659`.
    pub const fn get(self) -> u16 {
        self.0
    }

    /// The class given by the first digit.
    pub fn class(self) -> ReplyClass {
        match self.0 / 100 {
            1 => ReplyClass::PositivePreliminary,
            2 => ReplyClass::PositiveCompletion,
            3 => ReplyClass::PositiveIntermediate,
            4 => ReplyClass::TransientNegative,
            5 => ReplyClass::PermanentNegative,
            _ => ReplyClass::Protected,
        }
    }

    /// 1xx, 2xx or 3xx.
    pub fn is_positive(self) -> bool {
        self.0 < 400
    }

    /// 4xx: the command may succeed if repeated.
    pub fn is_transient(self) -> bool {
        (400..500).contains(&self.0)
    }

    /// 5xx: the command failed permanently.
    pub fn is_permanent(self) -> bool {
        (500..600).contains(&self.0)
    }

    /// The three ASCII digits of the code.
    pub(crate) fn digits(self) -> [u8; 3] {
        let c = self.0;
        [
            b'0' + (c / 100) as u8,
            b'0' + (c / 10 % 10) as u8,
            b'0' + (c % 10) as u8,
        ]
    }

    /// Parses three ASCII digits at the start of `bytes`.
    pub(crate) fn from_digits(bytes: &[u8]) -> Option<ReplyCode> {
        match bytes {
            [a, b, c, ..] if a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit() => {
                ReplyCode::new(
                    u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'),
                )
            }
            _ => None,
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<ReplyCode> for u16 {
    fn from(code: ReplyCode) -> u16 {
        code.0
    }
}

/// One line of reply text: bytes that never contain CR, LF or NUL.
///
/// The text excludes the code and its separator: for `227 Entering Passive Mode`
/// the line is `Entering Passive Mode`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TextLine(Bytes);

impl TextLine {
    /// Checks that `bytes` holds no CR, LF or NUL.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<TextLine, InvalidArgument> {
        let bytes = bytes.into();
        if let Some(&byte) = bytes.iter().find(|&&b| is_forbidden(b)) {
            return Err(InvalidArgument::ForbiddenByte { byte });
        }
        Ok(TextLine(Bytes::from(bytes)))
    }

    /// Wraps bytes the caller has already checked.
    pub(crate) fn from_checked(bytes: Bytes) -> TextLine {
        debug_assert!(!bytes.iter().any(|&b| is_forbidden(b)));
        TextLine(bytes)
    }

    /// Drops CR, LF and NUL bytes.
    pub(crate) fn sanitized(bytes: &[u8]) -> TextLine {
        TextLine(
            bytes
                .iter()
                .copied()
                .filter(|&b| !is_forbidden(b))
                .collect::<Vec<u8>>()
                .into(),
        )
    }

    /// The raw bytes of the line.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The line as UTF-8, with invalid sequences replaced.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// Whether the line, as an inner line of a multi-line reply, must be escaped by a
    /// leading space: RFC 959 section 4.2 lets a receiver take a line starting with a
    /// digit as a possible end of the reply, so such lines (and lines of spaces before a
    /// digit, to keep the escape reversible) get one extra space.
    pub(crate) fn needs_escape(&self) -> bool {
        self.0
            .iter()
            .find(|&&b| b != b' ')
            .is_some_and(|b| b.is_ascii_digit())
    }
}

impl fmt::Debug for TextLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TextLine(\"{}\")", self.0.escape_ascii())
    }
}

impl AsRef<[u8]> for TextLine {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

pub(crate) fn is_forbidden(b: u8) -> bool {
    b == b'\r' || b == b'\n' || b == 0
}

/// A complete reply: a code and one or more lines of text.
///
/// A reply with one line is sent as `ddd text`; with more lines in the RFC 959
/// multi-line form (`ddd-first`, inner lines, `ddd last`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: ReplyCode,
    lines: Vec<TextLine>,
    mismatch: bool,
}

impl Reply {
    /// Splits `text` into lines at '\n'; drops '\r' and NUL bytes, so it cannot fail.
    ///
    /// One trailing '\n' is ignored; an empty text gives one empty line.
    pub fn new(code: ReplyCode, text: impl AsRef<[u8]>) -> Reply {
        let text = text.as_ref();
        let text = text.strip_suffix(b"\n").unwrap_or(text);
        let lines = text
            .split(|&b| b == b'\n')
            .map(TextLine::sanitized)
            .collect();
        Reply {
            code,
            lines,
            mismatch: false,
        }
    }

    /// Builds a reply from lines; no lines at all gives one empty line.
    pub fn from_lines(code: ReplyCode, lines: Vec<TextLine>) -> Reply {
        let lines = if lines.is_empty() {
            vec![TextLine(Bytes::new())]
        } else {
            lines
        };
        Reply {
            code,
            lines,
            mismatch: false,
        }
    }

    pub(crate) fn decoded(code: ReplyCode, lines: Vec<TextLine>, mismatch: bool) -> Reply {
        Reply {
            code,
            lines,
            mismatch,
        }
    }

    /// The reply code.
    pub fn code(&self) -> ReplyCode {
        self.code
    }

    /// The lines of text, at least one.
    pub fn lines(&self) -> &[TextLine] {
        &self.lines
    }

    /// The text as lossy UTF-8, lines joined with '\n'.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, line) in self.lines.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&line.to_string_lossy());
        }
        out
    }

    /// Whether the reply was (or will be) sent in multi-line form.
    pub fn is_multiline(&self) -> bool {
        self.lines.len() > 1
    }

    /// Whether a lenient decoder closed this multi-line reply on a line with another code.
    pub fn mismatch(&self) -> bool {
        self.mismatch
    }

    /// The retry hint of a 4xx reply (see the crate docs), if it carries one.
    pub fn retry_after(&self) -> Option<Duration> {
        if !self.code.is_transient() {
            return None;
        }
        self.lines
            .iter()
            .find_map(|line| hint::parse_retry_hint(line.as_bytes()))
    }

    /// The number of bytes [`Reply::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let n = self.lines.len();
        // 3 digits, one separator, CRLF per line; escaped inner lines get one space.
        let framing = 6 * n.min(2) + 2 * n.saturating_sub(2);
        let escapes = self
            .inner_lines()
            .iter()
            .filter(|l| l.needs_escape())
            .count();
        framing + escapes + self.lines.iter().map(|l| l.0.len()).sum::<usize>()
    }

    fn inner_lines(&self) -> &[TextLine] {
        if self.lines.len() > 2 {
            &self.lines[1..self.lines.len() - 1]
        } else {
            &[]
        }
    }

    /// Writes the reply with CRLF line ends, in RFC 959 multi-line form when it has
    /// more than one line.
    pub fn encode(&self, dst: &mut impl BufMut) {
        let digits = self.code.digits();
        match self.lines.as_slice() {
            [] => {
                dst.put_slice(&digits);
                dst.put_slice(b" \r\n");
            }
            [only] => {
                dst.put_slice(&digits);
                dst.put_u8(b' ');
                dst.put_slice(&only.0);
                dst.put_slice(b"\r\n");
            }
            [first, .., last] => {
                dst.put_slice(&digits);
                dst.put_u8(b'-');
                dst.put_slice(&first.0);
                dst.put_slice(b"\r\n");
                for line in self.inner_lines() {
                    if line.needs_escape() {
                        dst.put_u8(b' ');
                    }
                    dst.put_slice(&line.0);
                    dst.put_slice(b"\r\n");
                }
                dst.put_slice(&digits);
                dst.put_u8(b' ');
                dst.put_slice(&last.0);
                dst.put_slice(b"\r\n");
            }
        }
    }

    /// Writes the one-line reply `code text` with a CRLF, without building a [`Reply`]: no
    /// allocation, which is what a server answering thousands of commands a second wants.
    /// CR, LF and NUL in `text` are written as `?`, so a name that holds one can neither end
    /// the reply early nor start a forged one.
    ///
    /// ```
    /// use pasv_protocol::{Reply, ReplyCode};
    ///
    /// let mut out = Vec::new();
    /// Reply::encode_line(ReplyCode::FILE_ACTION_OK, b"a\r\nb", &mut out);
    /// assert_eq!(out, b"250 a??b\r\n");
    /// ```
    pub fn encode_line(code: ReplyCode, text: &[u8], dst: &mut impl BufMut) {
        dst.put_slice(&code.digits());
        dst.put_u8(b' ');
        let mut rest = text;
        while let Some(at) = rest.iter().position(|&b| is_forbidden(b)) {
            dst.put_slice(&rest[..at]);
            dst.put_u8(b'?');
            rest = &rest[at + 1..];
        }
        dst.put_slice(rest);
        dst.put_slice(b"\r\n");
    }

    /// Appends `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).` and CRLF to `dst`: the bytes
    /// of [`Reply::entering_passive`] encoded, without building the reply or its text (a
    /// server sends one per transfer).
    ///
    /// ```
    /// use pasv_protocol::Reply;
    ///
    /// let mut out = Vec::new();
    /// Reply::encode_entering_passive("192.0.2.7:30005".parse().unwrap(), &mut out);
    /// assert_eq!(out, b"227 Entering Passive Mode (192,0,2,7,117,53).\r\n");
    /// ```
    pub fn encode_entering_passive(addr: SocketAddrV4, dst: &mut impl BufMut) {
        dst.put_slice(b"227 Entering Passive Mode (");
        let [p1, p2] = addr.port().to_be_bytes();
        for (i, n) in addr.ip().octets().into_iter().chain([p1, p2]).enumerate() {
            if i > 0 {
                dst.put_u8(b',');
            }
            put_decimal(dst, u32::from(n));
        }
        dst.put_slice(b").\r\n");
    }

    /// Appends `229 Entering Extended Passive Mode (|||port|)` and CRLF to `dst`: the bytes
    /// of [`Reply::entering_extended_passive`] encoded, without building the reply.
    pub fn encode_entering_extended_passive(port: u16, dst: &mut impl BufMut) {
        dst.put_slice(b"229 Entering Extended Passive Mode (|||");
        put_decimal(dst, u32::from(port));
        dst.put_slice(b"|)\r\n");
    }

    /// The address of a 227 reply, found by the RFC 1123 section 4.1.2.6 scanning rule.
    pub fn pasv_addr(&self) -> Result<SocketAddrV4, AddressError> {
        self.first_parsed_line(ReplyCode::ENTERING_PASSIVE, address::parse_pasv)
    }

    /// The port of a 229 reply (RFC 2428 section 3).
    pub fn epsv_port(&self) -> Result<u16, AddressError> {
        self.first_parsed_line(ReplyCode::ENTERING_EXTENDED_PASSIVE, address::parse_epsv)
    }

    /// What `parse` makes of the first line it accepts, if the reply has code `expected`;
    /// otherwise the error of the last line (`NotFound` for a reply without lines).
    fn first_parsed_line<T>(
        &self,
        expected: ReplyCode,
        parse: fn(&[u8]) -> Result<T, AddressError>,
    ) -> Result<T, AddressError> {
        if self.code != expected {
            return Err(AddressError::UnexpectedCode {
                expected: expected.get(),
                found: self.code.get(),
            });
        }
        let mut last = AddressError::NotFound;
        for line in &self.lines {
            match parse(line.as_bytes()) {
                Ok(found) => return Ok(found),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `425 Try later, data connection in use (retry after 37s)`.
    pub fn try_later(retry_after: Duration) -> Reply {
        Reply::new(
            ReplyCode::CANT_OPEN_DATA,
            format!(
                "Try later, data connection in use ({})",
                hint::format_retry_hint(retry_after)
            ),
        )
    }

    /// `227 Entering Passive Mode (h1,h2,h3,h4,p1,p2).`
    pub fn entering_passive(addr: SocketAddrV4) -> Reply {
        Reply::new(
            ReplyCode::ENTERING_PASSIVE,
            format!(
                "Entering Passive Mode ({}).",
                address::format_port_arg(addr)
            ),
        )
    }

    /// `229 Entering Extended Passive Mode (|||port|)`.
    pub fn entering_extended_passive(port: u16) -> Reply {
        Reply::new(
            ReplyCode::ENTERING_EXTENDED_PASSIVE,
            format!("Entering Extended Passive Mode (|||{port}|)"),
        )
    }
}

/// `n` in decimal, no leading zeros.
fn put_decimal(dst: &mut impl BufMut, n: u32) {
    let mut digits = [0u8; 20];
    dst.put_slice(decimal(u64::from(n), &mut digits));
}

/// The decimal digits of `n` (no leading zeros), written at the end of `buf`: numbers in
/// replies and log lines without `fmt`'s padding machinery, which a server writing several
/// per transfer notices.
///
/// ```
/// let mut buf = [0u8; 20];
/// assert_eq!(pasv_protocol::decimal(1024, &mut buf), b"1024");
/// assert_eq!(pasv_protocol::decimal(u64::MAX, &mut buf), b"18446744073709551615");
/// ```
pub fn decimal(n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[at..]
}

impl fmt::Display for Reply {
    /// The wire form without the final CRLF, lines separated by '\n', lossy UTF-8.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wire = Vec::with_capacity(self.encoded_len());
        self.encode(&mut wire);
        let wire = wire.strip_suffix(b"\r\n").unwrap_or(&wire);
        let text = String::from_utf8_lossy(wire);
        f.write_str(&text.replace("\r\n", "\n"))
    }
}
