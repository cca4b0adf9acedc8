//! Sans-IO framers: [`ReplyDecoder`] for clients and [`CommandDecoder`] for servers.
//!
//! Both frame by lines first (LF ends a line, one CR before it is stripped), cap every
//! buffer, and only then run complete parsers on a framed line. Like tokio-util's
//! `LinesCodec` they remember where scanning stopped, so feeding a reply byte by byte
//! costs the same as feeding it at once, and `Ok(None)` always means "need more bytes".

use bytes::{Buf, BytesMut};

use crate::command::{Argument, Command, EpsvArg, Password, IAC};
use crate::parse;
use crate::reply::{Reply, ReplyCode, TextLine};

/// Default cap on one reply line: bytes before its LF, a CR included.
pub const MAX_REPLY_LINE: usize = 8 * 1024;
/// Default cap on one reply: all its bytes, line ends included.
pub const MAX_REPLY: usize = 64 * 1024;
/// Default cap on one command line: bytes before its LF, a CR included.
pub const MAX_COMMAND_LINE: usize = 4096;

/// Position of the first byte `<= b'\r'` (LF, CR, NUL and other controls).
///
/// Checks 16-byte chunks without branching per byte first: text bytes are far more
/// common than controls, and the branch-free `any` compiles to vector compares.
fn find_control(hay: &[u8]) -> Option<usize> {
    let mut base = 0;
    let mut chunks = hay.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |acc, &b| acc | (b <= b'\r')) {
            break;
        }
        base += 16;
    }
    hay[base..]
        .iter()
        .position(|&b| b <= b'\r')
        .map(|p| base + p)
}

/// Position of the first LF.
fn find_lf(hay: &[u8]) -> Option<usize> {
    let mut base = 0;
    for chunk in hay.chunks_exact(16) {
        if chunk.iter().fold(false, |acc, &b| acc | (b == b'\n')) {
            break;
        }
        base += 16;
    }
    hay[base..]
        .iter()
        .position(|&b| b == b'\n')
        .map(|p| base + p)
}

/// How a multi-line reply is closed (RFC 959 section 4.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MultilineMode {
    /// Any `ddd ` (or bare `ddd`) line with a valid code closes the reply; a code other
    /// than the opening one sets [`Reply::mismatch`]. Real servers break the rule both
    /// ways, so this is the safe client default.
    #[default]
    Lenient,
    /// Only `ddd ` (or bare `ddd`) with the opening code closes; other lines are text.
    Strict,
}

/// Why the reply decoder rejected input. The bad reply is discarded; decoding
/// continues with the next one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// A line held more bytes than the cap before its LF.
    #[error("reply line longer than {limit} bytes")]
    LineTooLong {
        /// The cap.
        limit: usize,
    },
    /// A reply held more bytes than the cap.
    #[error("reply longer than {limit} bytes")]
    ReplyTooLong {
        /// The cap.
        limit: usize,
    },
    /// A line that should start a reply does not.
    #[error("malformed reply: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
    },
    /// The stream ended inside a reply.
    #[error("stream ended inside a reply")]
    Truncated,
}

/// What to do with input after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// Nothing skipped: collecting a reply.
    None,
    /// Drop to the end of the current line, then skip the rest of the multi-line reply
    /// opened with this code, if any.
    Line(Option<ReplyCode>),
    /// Drop lines until one closes the multi-line reply opened with this code.
    Reply(ReplyCode),
}

/// A line of the reply being collected: text range in the buffer, and whether it holds
/// stray CR or NUL bytes that must be dropped.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
    dirty: bool,
}

/// The client's framer: cuts a byte stream into [`Reply`] values.
///
/// The buffer always starts at the current reply; completed replies are split off
/// without copying their text. Memory is bounded: a line may hold at most
/// `max_line` bytes before its LF, a reply at most `max_reply` bytes; beyond that the
/// decoder returns an error, drops the reply (including the rest of a multi-line
/// reply) and goes on with the next one. Blank lines between replies are ignored.
#[derive(Debug)]
pub struct ReplyDecoder {
    mode: MultilineMode,
    max_line: usize,
    max_reply: usize,
    /// Next byte to examine.
    scan: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// The line being scanned holds a stray CR or NUL.
    dirty: bool,
    /// The opening code of the multi-line reply being collected.
    open: Option<ReplyCode>,
    spans: Vec<Span>,
    skip: Skip,
}

impl Default for ReplyDecoder {
    fn default() -> Self {
        ReplyDecoder::new()
    }
}

/// The code of a closing line (`ddd ` or bare `ddd`), from its raw content.
fn closing_code(content: &[u8]) -> Option<ReplyCode> {
    let code = ReplyCode::from_digits(content)?;
    match content.get(3) {
        None | Some(b' ') => Some(code),
        Some(_) => None,
    }
}

impl ReplyDecoder {
    /// A lenient decoder with 8 KiB per line and 64 KiB per reply.
    pub fn new() -> Self {
        ReplyDecoder::with_mode(MultilineMode::Lenient)
    }

    /// A decoder with the given multi-line mode and the default caps.
    pub fn with_mode(mode: MultilineMode) -> Self {
        ReplyDecoder {
            mode,
            max_line: MAX_REPLY_LINE,
            max_reply: MAX_REPLY,
            scan: 0,
            line_start: 0,
            dirty: false,
            open: None,
            spans: Vec::new(),
            skip: Skip::None,
        }
    }

    /// Sets the caps; a line cap below 8 bytes is raised to 8, and the reply cap to at
    /// least the line cap.
    pub fn with_limits(mut self, max_line: usize, max_reply: usize) -> Self {
        self.max_line = max_line.max(8);
        self.max_reply = max_reply.max(self.max_line);
        self
    }

    /// The multi-line mode.
    pub fn mode(&self) -> MultilineMode {
        self.mode
    }

    /// The cap on a line, in bytes before its LF.
    pub fn max_line_length(&self) -> usize {
        self.max_line
    }

    /// The cap on a reply, in bytes.
    pub fn max_reply_length(&self) -> usize {
        self.max_reply
    }

    fn reset(&mut self) {
        self.scan = 0;
        self.line_start = 0;
        self.dirty = false;
        self.open = None;
        self.spans.clear();
    }

    fn closes(&self, content: &[u8], open: ReplyCode) -> Option<ReplyCode> {
        let code = closing_code(content)?;
        match self.mode {
            MultilineMode::Lenient => Some(code),
            MultilineMode::Strict if code == open => Some(code),
            MultilineMode::Strict => None,
        }
    }

    /// Decodes the next reply. `Ok(None)` means more bytes are needed. On `Err` the bad
    /// reply is discarded and decoding can continue with the same buffer.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        if self.scan > buf.len() || self.line_start > self.scan {
            // The caller took bytes out of the buffer: start over.
            self.reset();
        }
        loop {
            let Some(lf) = self.next_lf(buf) else {
                return self.partial(buf);
            };
            let end = if lf > self.line_start && buf[lf - 1] == b'\r' {
                lf - 1
            } else {
                lf
            };
            match self.skip {
                Skip::Line(then) => {
                    buf.advance(lf + 1);
                    self.reset();
                    self.skip = then.map_or(Skip::None, Skip::Reply);
                    continue;
                }
                Skip::Reply(open) => {
                    let closed = self.closes(&buf[self.line_start..end], open).is_some();
                    buf.advance(lf + 1);
                    self.reset();
                    if closed {
                        self.skip = Skip::None;
                    }
                    continue;
                }
                Skip::None => {}
            }
            if let Some(err) = self.overflow(lf, true) {
                let then = self.continues_after(&buf[self.line_start..end]);
                buf.advance(lf + 1);
                self.reset();
                self.skip = then.map_or(Skip::None, Skip::Reply);
                return Err(err);
            }
            let content = &buf[self.line_start..end];
            let dirty = std::mem::take(&mut self.dirty);
            match self.open {
                None => {
                    if content.is_empty() {
                        buf.advance(lf + 1);
                        self.reset();
                        continue;
                    }
                    let Some(code) = ReplyCode::from_digits(content) else {
                        let reason =
                            if content.len() >= 3 && content[..3].iter().all(u8::is_ascii_digit) {
                                "reply code out of range"
                            } else {
                                "line does not start with a reply code"
                            };
                        buf.advance(lf + 1);
                        self.reset();
                        return Err(ReplyError::Malformed { reason });
                    };
                    let text = Span {
                        start: (self.line_start + 4).min(end),
                        end,
                        dirty,
                    };
                    match content.get(3) {
                        None | Some(b' ') => {
                            self.spans.push(text);
                            return Ok(Some(self.finish(buf, code, lf + 1, false)));
                        }
                        Some(b'-') => {
                            self.spans.push(text);
                            self.open = Some(code);
                            self.line_start = lf + 1;
                        }
                        Some(_) => {
                            buf.advance(lf + 1);
                            self.reset();
                            return Err(ReplyError::Malformed {
                                reason: "reply code not followed by space or hyphen",
                            });
                        }
                    }
                }
                Some(open) => {
                    if let Some(code) = self.closes(content, open) {
                        self.spans.push(Span {
                            start: (self.line_start + 4).min(end),
                            end,
                            dirty,
                        });
                        return Ok(Some(self.finish(buf, open, lf + 1, code != open)));
                    }
                    // An inner line: undo the escape of a leading digit (see
                    // `TextLine::needs_escape`).
                    let escaped = content.first() == Some(&b' ')
                        && content
                            .iter()
                            .find(|&&b| b != b' ')
                            .is_some_and(u8::is_ascii_digit);
                    self.spans.push(Span {
                        start: self.line_start + usize::from(escaped),
                        end,
                        dirty,
                    });
                    self.line_start = lf + 1;
                }
            }
        }
    }

    /// Call at end of stream: a truncated reply is an error, an empty buffer `Ok(None)`.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        if let Some(reply) = self.decode(buf)? {
            return Ok(Some(reply));
        }
        let truncated = self.skip == Skip::None && !buf.is_empty();
        buf.clear();
        self.reset();
        self.skip = Skip::None;
        if truncated {
            Err(ReplyError::Truncated)
        } else {
            Ok(None)
        }
    }

    /// Scans for the LF ending the current line, noting stray CR and NUL bytes.
    fn next_lf(&mut self, buf: &BytesMut) -> Option<usize> {
        loop {
            let at = self.scan + find_control(buf.get(self.scan..)?)?;
            match buf[at] {
                b'\n' => {
                    self.scan = at + 1;
                    return Some(at);
                }
                b'\r' => match buf.get(at + 1) {
                    Some(b'\n') => {
                        self.scan = at + 2;
                        return Some(at + 1);
                    }
                    Some(_) => {
                        self.dirty = true;
                        self.scan = at + 1;
                    }
                    None => {
                        // Is it the CR of a CRLF? Look again when more bytes arrive.
                        self.scan = at;
                        return None;
                    }
                },
                0 => {
                    self.dirty = true;
                    self.scan = at + 1;
                }
                _ => self.scan = at + 1,
            }
        }
    }

    /// Which cap, if any, the current line breaks. `line_end` is the LF of a complete
    /// line or the end of the buffer. Whichever cap is crossed at the earlier byte wins,
    /// so the answer does not depend on how the stream was split.
    fn overflow(&self, line_end: usize, complete: bool) -> Option<ReplyError> {
        let line_x = self.line_start + self.max_line;
        let reply_x = self.max_reply;
        let line_over = line_end > line_x;
        // A complete line counts its LF; a partial line only its bytes so far.
        let reply_over = if complete {
            line_end >= reply_x
        } else {
            line_end > reply_x
        };
        match (line_over, reply_over) {
            (true, true) if reply_x < line_x => Some(ReplyError::ReplyTooLong {
                limit: self.max_reply,
            }),
            (true, _) => Some(ReplyError::LineTooLong {
                limit: self.max_line,
            }),
            (false, true) => Some(ReplyError::ReplyTooLong {
                limit: self.max_reply,
            }),
            (false, false) => None,
        }
    }

    /// After dropping the line starting with `prefix`, does a multi-line reply go on?
    /// Returns its opening code if so.
    fn continues_after(&self, prefix: &[u8]) -> Option<ReplyCode> {
        match self.open {
            Some(open) => match self.closes(prefix, open) {
                Some(_) => None,
                None => Some(open),
            },
            None => match (ReplyCode::from_digits(prefix), prefix.get(3)) {
                (Some(code), Some(b'-')) => Some(code),
                _ => None,
            },
        }
    }

    /// No LF yet: check the caps, drop what a skip state allows, ask for more.
    fn partial(&mut self, buf: &mut BytesMut) -> Result<Option<Reply>, ReplyError> {
        let len = buf.len();
        // Whether a line closes a reply shows in its first four bytes; with five, the
        // fourth cannot be the CR of a CRLF. Decisions wait until then.
        let known_prefix = len - self.line_start >= 5;
        match self.skip {
            Skip::Line(_) => {
                buf.clear();
                self.scan = 0;
                self.line_start = 0;
                Ok(None)
            }
            Skip::Reply(open) => {
                // Keep the partial line (its prefix decides), but never more than a line.
                if len - self.line_start > self.max_line {
                    let then = match self.closes(&buf[self.line_start..], open) {
                        Some(_) => None,
                        None => Some(open),
                    };
                    buf.clear();
                    self.reset();
                    self.skip = Skip::Line(then);
                }
                Ok(None)
            }
            Skip::None => {
                if known_prefix {
                    if let Some(err) = self.overflow(len, false) {
                        let then = self.continues_after(&buf[self.line_start..]);
                        buf.clear();
                        self.reset();
                        self.skip = Skip::Line(then);
                        return Err(err);
                    }
                }
                Ok(None)
            }
        }
    }

    fn finish(&mut self, buf: &mut BytesMut, code: ReplyCode, len: usize, mismatch: bool) -> Reply {
        let raw = buf.split_to(len).freeze();
        let lines = self
            .spans
            .iter()
            .map(|s| {
                if s.dirty {
                    TextLine::sanitized(&raw[s.start..s.end])
                } else {
                    TextLine::from_checked(raw.slice(s.start..s.end))
                }
            })
            .collect();
        self.reset();
        Reply::decoded(code, lines, mismatch)
    }
}

/// Why the command decoder rejected a line. Every error consumes the bad line, so the
/// server answers with [`CommandError::reply_code`] and keeps decoding.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The line held more bytes than the cap before its LF; input is discarded up to
    /// the next LF.
    #[error("command line longer than {limit} bytes")]
    LineTooLong {
        /// The cap.
        limit: usize,
    },
    /// The line was empty (or only spaces).
    #[error("empty command line")]
    Empty,
    /// A NUL or a CR not followed by LF.
    #[error("forbidden byte {byte:#04x} in command line")]
    InvalidByte {
        /// The byte.
        byte: u8,
    },
    /// The verb is not printable ASCII, or too long.
    #[error("invalid command verb")]
    InvalidVerb,
    /// The command needs an argument.
    #[error("{verb} needs an argument")]
    MissingArgument {
        /// The verb.
        verb: &'static str,
    },
    /// The argument does not match the command's grammar.
    #[error("invalid {verb} argument: {reason}")]
    InvalidArgument {
        /// The verb.
        verb: &'static str,
        /// What was wrong.
        reason: &'static str,
    },
}

impl CommandError {
    /// The reply a server sends: 500 for a bad line, 501 for a bad argument.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            CommandError::MissingArgument { .. } | CommandError::InvalidArgument { .. } => {
                ReplyCode::SYNTAX_ERROR_ARGS
            }
            _ => ReplyCode::SYNTAX_ERROR,
        }
    }
}

/// The server's framer: cuts a byte stream into [`Command`] values.
///
/// Accepts CRLF and bare LF; strips Telnet IAC sequences (RFC 854) before parsing;
/// refuses NUL and bare CR. A line may hold at most 4096 bytes before its LF; a longer
/// one is an error and input is discarded up to the next LF.
///
/// The Telnet "Synch" that lftp and ftplib send before ABOR (IAC IP, then IAC DM as TCP
/// urgent data) arrives in one of two shapes: with `SO_OOBINLINE` the DM byte is inline
/// and the whole sequence is stripped; without it the kernel removes the urgent byte,
/// leaving a lone IAC before `ABOR`, which is dropped as well. Servers should still set
/// `SO_OOBINLINE`: ftplib sends all of `ABOR\r\n` as urgent data, so without it the LF
/// (the urgent byte) is lost.
#[derive(Debug)]
pub struct CommandDecoder {
    max_line: usize,
    scan: usize,
    discarding: bool,
}

impl Default for CommandDecoder {
    fn default() -> Self {
        CommandDecoder::new()
    }
}

impl CommandDecoder {
    /// A decoder with the 4096-byte line cap.
    pub fn new() -> Self {
        CommandDecoder::with_max_line_length(MAX_COMMAND_LINE)
    }

    /// A decoder with another line cap (at least 8 bytes).
    pub fn with_max_line_length(max_line: usize) -> Self {
        CommandDecoder {
            max_line: max_line.max(8),
            scan: 0,
            discarding: false,
        }
    }

    /// The cap on a line, in bytes before its LF.
    pub fn max_line_length(&self) -> usize {
        self.max_line
    }

    /// Decodes the next command. `Ok(None)` means more bytes are needed. Every `Err`
    /// consumes the bad line (or, for [`CommandError::LineTooLong`], discards up to the
    /// next LF), so the caller answers and keeps decoding.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, CommandError> {
        if self.scan > buf.len() {
            self.scan = 0;
        }
        loop {
            let Some(p) = find_lf(&buf[self.scan..]) else {
                if self.discarding {
                    buf.clear();
                    self.scan = 0;
                    return Ok(None);
                }
                if buf.len() > self.max_line {
                    buf.clear();
                    self.scan = 0;
                    self.discarding = true;
                    return Err(CommandError::LineTooLong {
                        limit: self.max_line,
                    });
                }
                self.scan = buf.len();
                return Ok(None);
            };
            let lf = self.scan + p;
            self.scan = 0;
            if self.discarding {
                buf.advance(lf + 1);
                self.discarding = false;
                continue;
            }
            if lf > self.max_line {
                buf.advance(lf + 1);
                return Err(CommandError::LineTooLong {
                    limit: self.max_line,
                });
            }
            let command = parse_command_line(&buf[..lf]);
            buf.advance(lf + 1);
            return command.map(Some);
        }
    }

    /// Call at end of stream: a final line without LF is dropped.
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Command>, CommandError> {
        if let Some(command) = self.decode(buf)? {
            return Ok(Some(command));
        }
        buf.clear();
        self.scan = 0;
        self.discarding = false;
        Ok(None)
    }
}

/// Telnet commands with an option byte (RFC 854): WILL, WONT, DO, DONT.
const WILL: u8 = 251;
const DONT: u8 = 254;
/// Subnegotiation begin and end.
const SB: u8 = 250;
const SE: u8 = 240;

/// Removes Telnet IAC sequences; `IAC IAC` becomes one literal 0xFF.
fn strip_telnet(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len());
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        if b != IAC {
            out.push(b);
            i += 1;
            continue;
        }
        match line.get(i + 1) {
            Some(&IAC) => {
                out.push(IAC);
                i += 2;
            }
            Some(&(WILL..=DONT)) => i += 3,
            Some(&SB) => {
                i = line[i + 2..]
                    .windows(2)
                    .position(|w| w == [IAC, SE])
                    .map_or(line.len(), |p| i + 2 + p + 2);
            }
            Some(&c) if c >= SE => i += 2,
            // A lone IAC: its command byte went as TCP urgent data and was not inlined.
            _ => i += 1,
        }
    }
    out
}

/// The longest verb accepted; RFC 959 verbs have 3 or 4 letters.
const MAX_VERB: usize = 16;

/// Parses one framed line (without its LF).
///
/// RFC 959 section 5.3.1: `<command> [<SP> <argument>] <CRLF>`. The verb ends at the
/// first space; the argument is everything after that one space, raw (a file name may
/// start or end with spaces).
pub(crate) fn parse_command_line(line: &[u8]) -> Result<Command, CommandError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let stripped;
    let line = if line.contains(&IAC) {
        stripped = strip_telnet(line);
        &stripped[..]
    } else {
        line
    };
    if let Some(&byte) = line.iter().find(|&&b| b == 0 || b == b'\r') {
        return Err(CommandError::InvalidByte { byte });
    }
    if line.iter().all(|&b| b == b' ') {
        return Err(CommandError::Empty);
    }
    let (verb, arg) = match line.iter().position(|&b| b == b' ') {
        Some(p) => (&line[..p], &line[p + 1..]),
        None => (line, &line[line.len()..]),
    };
    if verb.is_empty() || verb.len() > MAX_VERB || !verb.iter().all(u8::is_ascii_graphic) {
        return Err(CommandError::InvalidVerb);
    }
    let mut upper = [0u8; MAX_VERB];
    let upper = &mut upper[..verb.len()];
    upper.copy_from_slice(verb);
    upper.make_ascii_uppercase();
    // Checked above: no CR, LF or NUL remain (LF ended the line).
    let arg = (!arg.is_empty()).then(|| Argument::from_checked(arg.to_vec()));
    command(upper, arg)
}

fn command(verb: &[u8], arg: Option<Argument>) -> Result<Command, CommandError> {
    use Command as C;
    Ok(match verb {
        b"USER" => C::User(required("USER", arg)?),
        b"PASS" => C::Pass(match arg {
            Some(a) => {
                Password::new(a.into_bytes()).map_err(|_| CommandError::InvalidArgument {
                    verb: "PASS",
                    reason: "forbidden byte",
                })?
            }
            None => Password::new(Vec::new()).map_err(|_| CommandError::Empty)?,
        }),
        b"ACCT" => C::Acct(required("ACCT", arg)?),
        b"CWD" | b"XCWD" => C::Cwd(required("CWD", arg)?),
        b"CDUP" | b"XCUP" => none("CDUP", arg, C::Cdup)?,
        b"SMNT" => C::Smnt(required("SMNT", arg)?),
        b"REIN" => none("REIN", arg, C::Rein)?,
        b"QUIT" => none("QUIT", arg, C::Quit)?,
        b"PORT" => C::Port(grammar(
            "PORT",
            arg,
            parse::host_port,
            "expected h1,h2,h3,h4,p1,p2",
        )?),
        b"PASV" => none("PASV", arg, C::Pasv)?,
        b"EPSV" => C::Epsv(match arg {
            None => EpsvArg::Any,
            Some(a) => parse::complete(parse::epsv_arg, a.as_bytes()).ok_or(
                CommandError::InvalidArgument {
                    verb: "EPSV",
                    reason: "expected ALL or a protocol number",
                },
            )?,
        }),
        b"EPRT" => C::Eprt(grammar(
            "EPRT",
            arg,
            parse::eprt_arg,
            "expected |1|ipv4|port| or |2|ipv6|port|",
        )?),
        b"TYPE" => C::Type(grammar(
            "TYPE",
            arg,
            parse::type_code,
            "expected A, I, E or L n",
        )?),
        b"STRU" => C::Stru(grammar(
            "STRU",
            arg,
            parse::structure_code,
            "expected F, R or P",
        )?),
        b"MODE" => C::Mode(grammar(
            "MODE",
            arg,
            parse::mode_code,
            "expected S, B or C",
        )?),
        b"RETR" => C::Retr(required("RETR", arg)?),
        b"STOR" => C::Stor(required("STOR", arg)?),
        b"STOU" => C::Stou(arg),
        b"APPE" => C::Appe(required("APPE", arg)?),
        b"ALLO" => C::Allo(required("ALLO", arg)?),
        b"REST" => C::Rest(grammar(
            "REST",
            arg,
            parse::rest_marker,
            "expected a byte offset",
        )?),
        b"RNFR" => C::Rnfr(required("RNFR", arg)?),
        b"RNTO" => C::Rnto(required("RNTO", arg)?),
        b"ABOR" => none("ABOR", arg, C::Abor)?,
        b"DELE" => C::Dele(required("DELE", arg)?),
        b"RMD" | b"XRMD" => C::Rmd(required("RMD", arg)?),
        b"MKD" | b"XMKD" => C::Mkd(required("MKD", arg)?),
        b"PWD" | b"XPWD" => none("PWD", arg, C::Pwd)?,
        b"LIST" => C::List(arg),
        b"NLST" => C::Nlst(arg),
        b"SITE" => C::Site(required("SITE", arg)?),
        b"SYST" => none("SYST", arg, C::Syst)?,
        b"STAT" => C::Stat(arg),
        b"HELP" => C::Help(arg),
        b"NOOP" => none("NOOP", arg, C::Noop)?,
        b"FEAT" => none("FEAT", arg, C::Feat)?,
        b"OPTS" => C::Opts(required("OPTS", arg)?),
        b"SIZE" => C::Size(required("SIZE", arg)?),
        b"MDTM" => C::Mdtm(required("MDTM", arg)?),
        b"MFMT" => {
            let arg = required("MFMT", arg)?;
            let bad = CommandError::InvalidArgument {
                verb: "MFMT",
                reason: "expected YYYYMMDDHHMMSS and a path",
            };
            let (time, path) =
                parse::complete(parse::mfmt_args, arg.as_bytes()).ok_or(bad.clone())?;
            // Slices of a valid argument, non-empty by the grammar.
            match (Argument::new(time), Argument::new(path)) {
                (Ok(time), Ok(path)) => C::Mfmt { time, path },
                _ => return Err(bad),
            }
        }
        b"MLST" => C::Mlst(arg),
        b"MLSD" => C::Mlsd(arg),
        b"AUTH" => C::Auth(required("AUTH", arg)?),
        b"PBSZ" => C::Pbsz(required("PBSZ", arg)?),
        b"PROT" => C::Prot(required("PROT", arg)?),
        b"CCC" => none("CCC", arg, C::Ccc)?,
        b"CLNT" => C::Clnt(required("CLNT", arg)?),
        b"HOST" => C::Host(required("HOST", arg)?),
        _ => C::Unknown {
            verb: Argument::new(verb).map_err(|_| CommandError::InvalidVerb)?,
            arg,
        },
    })
}

fn required(verb: &'static str, arg: Option<Argument>) -> Result<Argument, CommandError> {
    arg.ok_or(CommandError::MissingArgument { verb })
}

fn none(
    verb: &'static str,
    arg: Option<Argument>,
    command: Command,
) -> Result<Command, CommandError> {
    match arg {
        None => Ok(command),
        Some(_) => Err(CommandError::InvalidArgument {
            verb,
            reason: "takes no argument",
        }),
    }
}

fn grammar<T>(
    verb: &'static str,
    arg: Option<Argument>,
    parser: impl FnMut(&[u8]) -> nom::IResult<&[u8], T>,
    reason: &'static str,
) -> Result<T, CommandError> {
    let arg = required(verb, arg)?;
    parse::complete(parser, arg.as_bytes()).ok_or(CommandError::InvalidArgument { verb, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_search_matches_a_plain_scan() {
        for len in 0..80 {
            for at in 0..len {
                for byte in [b'\n', b'\r', 0, b'\t'] {
                    let mut hay = vec![b'a'; len];
                    hay[at] = byte;
                    assert_eq!(find_control(&hay), Some(at), "{len} {at} {byte}");
                    assert_eq!(find_lf(&hay), (byte == b'\n').then_some(at), "{len} {at}");
                }
            }
            assert_eq!(find_control(&vec![b'a'; len]), None);
            assert_eq!(find_lf(&vec![b'a'; len]), None);
        }
    }

    #[test]
    fn telnet_sequences() {
        let table: &[(&[u8], &[u8])] = &[
            (b"ABOR", b"ABOR"),
            (b"\xff\xf4\xff\xf2ABOR", b"ABOR"),
            (b"\xff\xf4\xffABOR", b"ABOR"),
            (b"a\xff\xffb", b"a\xffb"),
            (b"\xff\xfb\x01x", b"x"),
            (b"\xff\xfe", b""),
            (b"\xff\xfa\x18\x00abc\xff\xf0x", b"x"),
            (b"\xff\xfa\x18 never ends", b""),
            (b"x\xff", b"x"),
        ];
        for &(input, out) in table {
            assert_eq!(strip_telnet(input), out, "{}", input.escape_ascii());
        }
    }

    #[test]
    fn closing_lines() {
        assert_eq!(closing_code(b"211 End"), ReplyCode::new(211));
        assert_eq!(closing_code(b"211"), ReplyCode::new(211));
        assert_eq!(closing_code(b"211-"), None);
        assert_eq!(closing_code(b"2110"), None);
        assert_eq!(closing_code(b"099 x"), None);
        assert_eq!(closing_code(b" 211 x"), None);
    }
}
