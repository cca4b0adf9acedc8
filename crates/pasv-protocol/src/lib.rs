//! FTP control-connection protocol without IO: value types for commands and replies,
//! sans-IO framers that cut a byte stream into them ([`ReplyDecoder`] for clients,
//! [`CommandDecoder`] for servers), encoders that cannot produce a malformed line, and
//! syntax-only parsers for the data-connection addresses of PASV, EPSV, PORT and EPRT.
//! Decoding never panics and never buffers without bound; `Ok(None)` means "need more
//! bytes", and after an `Err` the bad input is gone and decoding goes on.
//!
//! ```
//! use bytes::BytesMut;
//! use pasv_protocol::{Command, CommandDecoder, ReplyCode, ReplyDecoder};
//!
//! // Client side: a 227 reply and its address.
//! let mut buf = BytesMut::from(&b"227 Entering Passive Mode (127,0,0,1,4,1).\r\n"[..]);
//! let reply = ReplyDecoder::new().decode(&mut buf)?.expect("a whole reply");
//! assert_eq!(reply.code(), ReplyCode::ENTERING_PASSIVE);
//! assert_eq!(reply.pasv_addr()?, "127.0.0.1:1025".parse()?);
//!
//! // Server side: a command stream, split anywhere.
//! let mut decoder = CommandDecoder::new();
//! let mut buf = BytesMut::from(&b"USER anonymous\r\nPASS secret\r\nRETR my file \r\nQU"[..]);
//! let mut commands = Vec::new();
//! while let Some(command) = decoder.decode(&mut buf)? {
//!     commands.push(command);
//! }
//! assert_eq!(commands[0], Command::User("anonymous".try_into()?));
//! assert_eq!(format!("{:?}", commands[1]), "Pass(Password(<redacted>))");
//! assert_eq!(commands[2], Command::Retr("my file ".try_into()?)); // raw, trailing space kept
//! buf.extend_from_slice(b"IT\n");
//! assert_eq!(decoder.decode(&mut buf)?, Some(Command::Quit));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # pasv-protocol
//!
//! The crate is the shared vocabulary of the pasv client and server. It is layered
//! like imap-codec: value types validate themselves ([`ReplyCode`], [`Reply`],
//! [`Command`], [`Argument`]), framers ([`ReplyDecoder`], [`CommandDecoder`]) cut the
//! stream into size-capped lines, and nom parsers, private to the crate and named after
//! the RFC grammar rule they implement, run on complete lines only. Only the `codec`
//! module (feature `codec`: `codec::ClientCodec` and `codec::ServerCodec`, tokio-util
//! `Decoder`/`Encoder` adapters whose items are `Result`s, so a bad line is an item and
//! not the end of the stream) knows tokio-util.
//!
//! ## Framing
//!
//! A line ends at LF; one CR before it is stripped. Replies: `ddd text` is a whole
//! reply, `ddd-text` opens a multi-line reply that a `ddd text` (or bare `ddd`) line
//! closes (RFC 959 section 4.2). In [`MultilineMode::Lenient`], the default, any valid
//! `ddd ` line closes it and [`Reply::mismatch`] records a code other than the opening
//! one; in [`MultilineMode::Strict`] only the opening code closes. Several pipelined
//! replies in one buffer decode one by one; blank lines between replies are skipped;
//! stray CR and NUL bytes inside a line are dropped.
//!
//! Bounds: a reply line may hold 8 KiB before its LF, a reply 64 KiB
//! ([`ReplyDecoder::with_limits`] changes both). At a bound the decoder returns
//! [`ReplyError::LineTooLong`] or [`ReplyError::ReplyTooLong`] and discards the reply,
//! including the rest of a multi-line reply, then decodes the next. A command line may
//! hold 4096 bytes; beyond that [`CommandError::LineTooLong`] is returned and input is
//! discarded up to the next LF. The result never depends on how the stream was split
//! into reads. Between calls the buffer holds at most the reply cap plus four bytes (the
//! first bytes of a line decide whether it closes a reply) or the command line cap.
//! Scanning resumes where it stopped, so bytes arriving one at a time cost no more
//! than bytes arriving at once; completed replies are split off the buffer without
//! copying their text.
//!
//! ## Commands
//!
//! Verbs are case-insensitive; the argument is everything after the single space
//! that ends the verb, as raw bytes ([`Argument`]): a file name may begin or end with
//! spaces and need not be UTF-8, and `LIST -la` keeps `-la` for the server to
//! interpret. Telnet IAC sequences are stripped first (lftp and ftplib send
//! `IAC IP IAC DM` before ABOR); `IAC IAC` is a literal 0xFF, and the encoder doubles
//! 0xFF for the same reason. NUL and bare CR are refused. The secret of PASS is a
//! [`Password`], whose `Debug` and `Display` never show it. [`CommandError::reply_code`]
//! says whether to answer 500 or 501.
//!
//! ## Encoding
//!
//! [`Argument`], [`Password`] and [`TextLine`] cannot hold CR, LF or NUL, so an encoded
//! command or reply is always exactly the lines it claims to be. A reply with several
//! lines is written as `ddd-first`, the inner lines, `ddd last`; an inner line that
//! starts with a digit (after any spaces) gets one leading space so that no receiver
//! mistakes it for the end, and the decoder removes that space again.
//!
//! ## Addresses
//!
//! [`parse_pasv`] implements the RFC 1123 section 4.1.2.6 scanning rule: six decimal
//! fields, each 0..=255, separated by commas with optional spaces, starting at the
//! beginning of a digit run (so `(1216,256,2,...)` is an error), parentheses optional.
//! [`parse_epsv`] reads `(<d><d><d>port<d>)` with any delimiter `d` in 33..=126 and a
//! port in 1..=65535, text may follow. [`parse_port_arg`] and [`parse_eprt_arg`] read
//! the PORT and EPRT arguments (EPRT protocol 1 for IPv4, 2 for IPv6); the `format_*`
//! functions write their canonical forms. All of this is syntax: which address to
//! connect to, or whether a PORT target is acceptable, is the caller's policy.
//!
//! ## The retry hint
//!
//! When pasvd refuses a passive data connection because no port is free, it says when
//! one will be, in a machine-readable hint inside the text of a 425 reply:
//!
//! ```text
//! 425 Try later, data connection in use (retry after 37s)
//! 425 Try later, data connection in use (retry after 0.25s)
//!
//! retry-hint = "retry after" SP 1*DIGIT [ "." 1*3DIGIT ] "s"
//! ```
//!
//! The number is seconds: an integer when whole, else up to three decimals with
//! trailing zeros trimmed. It is always rounded up to the millisecond, so a client that
//! waits that long never comes back before a port is free. [`format_retry_hint`] writes
//! it, [`Reply::try_later`] builds the whole reply, and [`parse_retry_hint`] and
//! [`Reply::retry_after`] read it (from any 4xx reply, case-insensitively, accepting up
//! to nine decimals). Other text of 425 and 426 replies is for humans: show it, do not
//! match on it.
//!
//! ## Errors
//!
//! Every operation has its own error enum ([`ReplyError`], [`CommandError`],
//! [`AddressError`], [`InvalidArgument`]), `#[non_exhaustive]`. "Incomplete" is never
//! an error: it is `Ok(None)` from a decoder. nom's error types never leave the crate.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod address;
mod command;
mod decode;
mod escape;
mod hint;
mod parse;
mod reply;

#[cfg(feature = "codec")]
#[cfg_attr(docsrs, doc(cfg(feature = "codec")))]
pub mod codec;

pub use crate::{
    address::{
        format_eprt_arg, format_port_arg, parse_eprt_arg, parse_epsv, parse_pasv, parse_port_arg,
        AddressError,
    },
    command::{
        Argument, Command, EpsvArg, InvalidArgument, Password, Structure, TransferMode,
        TransferType,
    },
    decode::{
        CommandDecoder, CommandError, MultilineMode, ReplyDecoder, ReplyError, MAX_COMMAND_LINE,
        MAX_REPLY, MAX_REPLY_LINE,
    },
    escape::Escaped,
    hint::{format_retry_hint, parse_retry_hint},
    reply::{decimal, Reply, ReplyClass, ReplyCode, TextLine},
};
