//! Command value types: [`Argument`], [`Password`], [`Command`] and the small enums
//! of TYPE, STRU, MODE and EPSV.

use std::borrow::Cow;
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};

use bytes::BufMut;

use crate::address;
use crate::escape::Escaped;
use crate::reply::is_forbidden;

/// Telnet "interpret as command" (RFC 854); a literal 0xFF is sent doubled.
pub(crate) const IAC: u8 = 0xFF;

/// Why bytes cannot be an [`Argument`], [`Password`] or [`TextLine`](crate::TextLine).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidArgument {
    /// An argument must hold at least one byte.
    #[error("argument is empty")]
    Empty,
    /// CR, LF and NUL would end or corrupt the command line.
    #[error("argument contains the forbidden byte {byte:#04x}")]
    ForbiddenByte {
        /// The offending byte: CR, LF or NUL.
        byte: u8,
    },
}

fn check(bytes: &[u8]) -> Result<(), InvalidArgument> {
    match bytes.iter().find(|&&b| is_forbidden(b)) {
        Some(&byte) => Err(InvalidArgument::ForbiddenByte { byte }),
        None => Ok(()),
    }
}

/// A command argument: raw bytes, non-empty, never CR, LF or NUL.
///
/// File names are bytes, not text: a non-UTF-8 name decodes and encodes unchanged.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Argument(Vec<u8>);

impl Argument {
    /// Checks that `bytes` is non-empty and holds no CR, LF or NUL.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Argument, InvalidArgument> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err(InvalidArgument::Empty);
        }
        check(&bytes)?;
        Ok(Argument(bytes))
    }

    /// Wraps bytes the caller has checked: non-empty, no CR, LF or NUL.
    pub(crate) fn from_checked(bytes: Vec<u8>) -> Argument {
        debug_assert!(!bytes.is_empty() && check(&bytes).is_ok());
        Argument(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The argument as UTF-8, with invalid sequences replaced.
    pub fn to_string_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.0)
    }

    /// The bytes, consuming the argument.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl fmt::Debug for Argument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Argument(\"{}\")", self.0.escape_ascii())
    }
}

impl AsRef<[u8]> for Argument {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl TryFrom<&str> for Argument {
    type Error = InvalidArgument;
    fn try_from(s: &str) -> Result<Argument, InvalidArgument> {
        Argument::new(s)
    }
}

impl TryFrom<&[u8]> for Argument {
    type Error = InvalidArgument;
    fn try_from(b: &[u8]) -> Result<Argument, InvalidArgument> {
        Argument::new(b)
    }
}

impl TryFrom<String> for Argument {
    type Error = InvalidArgument;
    fn try_from(s: String) -> Result<Argument, InvalidArgument> {
        Argument::new(s)
    }
}

impl TryFrom<Vec<u8>> for Argument {
    type Error = InvalidArgument;
    fn try_from(b: Vec<u8>) -> Result<Argument, InvalidArgument> {
        Argument::new(b)
    }
}

/// The argument of PASS: may be empty, never CR, LF or NUL; `Debug` prints
/// `Password(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// Checks that `bytes` holds no CR, LF or NUL.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Password, InvalidArgument> {
        let bytes = bytes.into();
        check(&bytes)?;
        Ok(Password(bytes))
    }

    /// The secret bytes. The name is a reminder not to log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The representation type of TYPE (RFC 959 section 3.1.1).
///
/// The format control of `A` and `E` (`N`, `T`, `C`) is accepted and dropped: only
/// non-print (`N`) is in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferType {
    /// `A`: ASCII, CRLF line ends on the wire.
    Ascii,
    /// `I`: image, bytes unchanged.
    Image,
    /// `E`: EBCDIC.
    Ebcdic,
    /// `L n`: local byte size `n` (1..=255).
    Local(u8),
}

/// The file structure of STRU (RFC 959 section 3.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Structure {
    /// `F`: no internal structure.
    File,
    /// `R`: a sequence of records.
    Record,
    /// `P`: independent indexed pages.
    Page,
}

/// The transmission mode of MODE (RFC 959 section 3.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferMode {
    /// `S`: a byte stream; EOF is the close of the data connection.
    Stream,
    /// `B`: blocks with headers.
    Block,
    /// `C`: compressed.
    Compressed,
}

/// The argument of EPSV (RFC 2428 section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EpsvArg {
    /// No argument: any protocol, the one of the control connection.
    Any,
    /// `EPSV ALL`: from now on only EPSV is allowed for data connections.
    All,
    /// `EPSV n`: network protocol `n` (1 = IPv4, 2 = IPv6).
    Protocol(u16),
}

/// A command from client to server.
///
/// RFC 959, RFC 2428 (EPRT, EPSV), RFC 3659 (SIZE, MDTM, MLST, MLSD, REST in stream
/// mode), RFC 2389 (FEAT, OPTS), RFC 4217 (AUTH, PBSZ, PROT, CCC), MFMT, CLNT, HOST;
/// anything else is [`Command::Unknown`]. The RFC 775 verbs XCWD, XCUP, XMKD, XRMD and
/// XPWD decode as their RFC 959 equivalents.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `USER name`.
    User(Argument),
    /// `PASS secret` (the secret may be empty).
    Pass(Password),
    /// `ACCT account`.
    Acct(Argument),
    /// `CWD path`.
    Cwd(Argument),
    /// `CDUP`.
    Cdup,
    /// `SMNT path`.
    Smnt(Argument),
    /// `REIN`.
    Rein,
    /// `QUIT`.
    Quit,
    /// `PORT h1,h2,h3,h4,p1,p2`.
    Port(SocketAddrV4),
    /// `PASV`.
    Pasv,
    /// `EPSV`, `EPSV ALL`, `EPSV n`.
    Epsv(EpsvArg),
    /// `EPRT |n|address|port|`.
    Eprt(SocketAddr),
    /// `TYPE A|I|E|L n`.
    Type(TransferType),
    /// `STRU F|R|P`.
    Stru(Structure),
    /// `MODE S|B|C`.
    Mode(TransferMode),
    /// `RETR path`.
    Retr(Argument),
    /// `STOR path`.
    Stor(Argument),
    /// `STOU [path]`.
    Stou(Option<Argument>),
    /// `APPE path`.
    Appe(Argument),
    /// `ALLO n [R m]`, kept raw.
    Allo(Argument),
    /// `REST n`: a byte offset (RFC 3659 section 5, stream mode).
    Rest(u64),
    /// `RNFR path`.
    Rnfr(Argument),
    /// `RNTO path`.
    Rnto(Argument),
    /// `ABOR`.
    Abor,
    /// `DELE path`.
    Dele(Argument),
    /// `RMD path`.
    Rmd(Argument),
    /// `MKD path`.
    Mkd(Argument),
    /// `PWD`.
    Pwd,
    /// `LIST [options or path]`, kept raw (`-la` is for the server to interpret).
    List(Option<Argument>),
    /// `NLST [options or path]`, kept raw.
    Nlst(Option<Argument>),
    /// `SITE command`.
    Site(Argument),
    /// `SYST`.
    Syst,
    /// `STAT [path]`.
    Stat(Option<Argument>),
    /// `HELP [command]`.
    Help(Option<Argument>),
    /// `NOOP`.
    Noop,
    /// `FEAT`.
    Feat,
    /// `OPTS command [options]`.
    Opts(Argument),
    /// `SIZE path`.
    Size(Argument),
    /// `MDTM path`.
    Mdtm(Argument),
    /// `MFMT YYYYMMDDHHMMSS[.sss] path`.
    Mfmt {
        /// The time-val, 14 digits and an optional fraction.
        time: Argument,
        /// The path, raw.
        path: Argument,
    },
    /// `MLST [path]`.
    Mlst(Option<Argument>),
    /// `MLSD [path]`.
    Mlsd(Option<Argument>),
    /// `AUTH mechanism`.
    Auth(Argument),
    /// `PBSZ size`.
    Pbsz(Argument),
    /// `PROT C|S|E|P`, kept raw.
    Prot(Argument),
    /// `CCC`.
    Ccc,
    /// `CLNT client-name`.
    Clnt(Argument),
    /// `HOST name` (RFC 7151).
    Host(Argument),
    /// Any other verb. The decoder produces an upper-case verb of printable ASCII.
    Unknown {
        /// The verb.
        verb: Argument,
        /// The argument, raw.
        arg: Option<Argument>,
    },
}

/// How a command's argument is written.
enum Wire<'a> {
    None,
    Raw(&'a [u8]),
    Secret(&'a [u8]),
    Text(String),
    Pair(&'a [u8], &'a [u8]),
}

impl Command {
    /// The verb, upper case (`"RETR"`); for [`Command::Unknown`] its verb if it is UTF-8.
    pub fn verb(&self) -> &str {
        use Command::*;
        match self {
            User(_) => "USER",
            Pass(_) => "PASS",
            Acct(_) => "ACCT",
            Cwd(_) => "CWD",
            Cdup => "CDUP",
            Smnt(_) => "SMNT",
            Rein => "REIN",
            Quit => "QUIT",
            Port(_) => "PORT",
            Pasv => "PASV",
            Epsv(_) => "EPSV",
            Eprt(_) => "EPRT",
            Type(_) => "TYPE",
            Stru(_) => "STRU",
            Mode(_) => "MODE",
            Retr(_) => "RETR",
            Stor(_) => "STOR",
            Stou(_) => "STOU",
            Appe(_) => "APPE",
            Allo(_) => "ALLO",
            Rest(_) => "REST",
            Rnfr(_) => "RNFR",
            Rnto(_) => "RNTO",
            Abor => "ABOR",
            Dele(_) => "DELE",
            Rmd(_) => "RMD",
            Mkd(_) => "MKD",
            Pwd => "PWD",
            List(_) => "LIST",
            Nlst(_) => "NLST",
            Site(_) => "SITE",
            Syst => "SYST",
            Stat(_) => "STAT",
            Help(_) => "HELP",
            Noop => "NOOP",
            Feat => "FEAT",
            Opts(_) => "OPTS",
            Size(_) => "SIZE",
            Mdtm(_) => "MDTM",
            Mfmt { .. } => "MFMT",
            Mlst(_) => "MLST",
            Mlsd(_) => "MLSD",
            Auth(_) => "AUTH",
            Pbsz(_) => "PBSZ",
            Prot(_) => "PROT",
            Ccc => "CCC",
            Clnt(_) => "CLNT",
            Host(_) => "HOST",
            Unknown { verb, .. } => std::str::from_utf8(verb.as_bytes()).unwrap_or("UNKNOWN"),
        }
    }

    fn verb_bytes(&self) -> &[u8] {
        match self {
            Command::Unknown { verb, .. } => verb.as_bytes(),
            other => other.verb().as_bytes(),
        }
    }

    fn wire(&self) -> Wire<'_> {
        use Command::*;
        match self {
            Cdup | Rein | Quit | Pasv | Abor | Pwd | Syst | Noop | Feat | Ccc => Wire::None,
            User(a) | Acct(a) | Cwd(a) | Smnt(a) | Retr(a) | Stor(a) | Appe(a) | Allo(a)
            | Rnfr(a) | Rnto(a) | Dele(a) | Rmd(a) | Mkd(a) | Site(a) | Opts(a) | Size(a)
            | Mdtm(a) | Auth(a) | Pbsz(a) | Prot(a) | Clnt(a) | Host(a) => Wire::Raw(a.as_bytes()),
            Stou(a) | List(a) | Nlst(a) | Stat(a) | Help(a) | Mlst(a) | Mlsd(a) => opt(a),
            Unknown { arg, .. } => opt(arg),
            Pass(p) if p.0.is_empty() => Wire::None,
            Pass(p) => Wire::Secret(p.expose()),
            Port(addr) => Wire::Text(address::format_port_arg(*addr)),
            Eprt(addr) => Wire::Text(address::format_eprt_arg(*addr)),
            Epsv(EpsvArg::Any) => Wire::None,
            Epsv(EpsvArg::All) => Wire::Raw(b"ALL"),
            Epsv(EpsvArg::Protocol(n)) => Wire::Text(n.to_string()),
            Type(TransferType::Ascii) => Wire::Raw(b"A"),
            Type(TransferType::Image) => Wire::Raw(b"I"),
            Type(TransferType::Ebcdic) => Wire::Raw(b"E"),
            Type(TransferType::Local(n)) => Wire::Text(format!("L {n}")),
            Stru(Structure::File) => Wire::Raw(b"F"),
            Stru(Structure::Record) => Wire::Raw(b"R"),
            Stru(Structure::Page) => Wire::Raw(b"P"),
            Mode(TransferMode::Stream) => Wire::Raw(b"S"),
            Mode(TransferMode::Block) => Wire::Raw(b"B"),
            Mode(TransferMode::Compressed) => Wire::Raw(b"C"),
            Rest(n) => Wire::Text(n.to_string()),
            Mfmt { time, path } => Wire::Pair(time.as_bytes(), path.as_bytes()),
        }
    }

    /// The number of bytes [`Command::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        let arg = match self.wire() {
            Wire::None => 0,
            Wire::Raw(a) | Wire::Secret(a) => 1 + telnet_len(a),
            Wire::Text(s) => 1 + s.len(),
            Wire::Pair(a, b) => 2 + telnet_len(a) + telnet_len(b),
        };
        telnet_len(self.verb_bytes()) + arg + 2
    }

    /// Writes `VERB arg\r\n`, doubling any 0xFF byte as Telnet requires (RFC 854).
    pub fn encode(&self, dst: &mut impl BufMut) {
        put_telnet(dst, self.verb_bytes());
        match self.wire() {
            Wire::None => {}
            Wire::Raw(a) | Wire::Secret(a) => {
                dst.put_u8(b' ');
                put_telnet(dst, a);
            }
            Wire::Text(s) => {
                dst.put_u8(b' ');
                dst.put_slice(s.as_bytes());
            }
            Wire::Pair(a, b) => {
                dst.put_u8(b' ');
                put_telnet(dst, a);
                dst.put_u8(b' ');
                put_telnet(dst, b);
            }
        }
        dst.put_slice(b"\r\n");
    }
}

fn opt(a: &Option<Argument>) -> Wire<'_> {
    match a {
        Some(a) => Wire::Raw(a.as_bytes()),
        None => Wire::None,
    }
}

fn telnet_len(bytes: &[u8]) -> usize {
    bytes.len() + bytes.iter().filter(|&&b| b == IAC).count()
}

fn put_telnet(dst: &mut impl BufMut, bytes: &[u8]) {
    let mut rest = bytes;
    while let Some(i) = rest.iter().position(|&b| b == IAC) {
        dst.put_slice(&rest[..=i]);
        dst.put_u8(IAC);
        rest = &rest[i + 1..];
    }
    dst.put_slice(rest);
}

impl fmt::Display for Command {
    /// The wire form without CRLF and Telnet escaping, its bytes [`Escaped`] (control
    /// characters and bytes that are not UTF-8 shown as `\x1b`), so a command received from
    /// a client is safe to log; PASS shows `PASS <redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Escaped::new(self.verb_bytes()))?;
        match self.wire() {
            Wire::None => Ok(()),
            Wire::Raw(a) => write!(f, " {}", Escaped::new(a)),
            Wire::Secret(_) => f.write_str(" <redacted>"),
            Wire::Text(s) => write!(f, " {s}"),
            Wire::Pair(a, b) => write!(f, " {} {}", Escaped::new(a), Escaped::new(b)),
        }
    }
}
