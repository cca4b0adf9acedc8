//! What pasv-protocol makes of raw bytes: the library side of `pasv decode`.
//!
//! Each decoded message becomes one JSON object (one line of output):
//!
//! - a reply: `{"code", "lines", "multiline", "mismatch", "pasv", "epsv_port", "retry_after_s"}`,
//!   `pasv` being `"ip:port"` for a 227 whose address parses and `null` otherwise, `epsv_port`
//!   the port of a 229 (or `null`), `retry_after_s` the seconds of a `retry after` hint;
//! - a command: `{"verb", "arg_hex", "port_addr"}`, `arg_hex` the argument bytes as they would
//!   be encoded (lower-case hex, `null` without argument or for PASS, whose argument is never
//!   shown), `port_addr` the address of a PORT or EPRT;
//! - an error: `{"error": kind, "message"}`; decoding goes on after it, as the decoders discard
//!   the bad line (or reply) and resynchronise.

use bytes::BytesMut;
use pasv_protocol::{Command, CommandDecoder, CommandError, Reply, ReplyDecoder, ReplyError};
use serde_json::{json, Value};

/// Decodes `input` as a stream of replies (lenient multi-line mode, as the client uses).
pub fn replies(input: &[u8]) -> Vec<Value> {
    let mut decoder = ReplyDecoder::new();
    let mut buf = BytesMut::from(input);
    let mut out = decode_all(
        &mut buf,
        |buf| decoder.decode(buf),
        reply_json,
        reply_error_json,
    );
    loop {
        match decoder.decode_eof(&mut buf) {
            Ok(Some(reply)) => out.push(reply_json(&reply)),
            Ok(None) => break,
            Err(e) => {
                out.push(reply_error_json(&e));
                break;
            }
        }
    }
    out
}

/// Decodes `input` as a stream of commands; a last line without LF is reported as truncated.
pub fn commands(input: &[u8]) -> Vec<Value> {
    let mut decoder = CommandDecoder::new();
    let mut buf = BytesMut::from(input);
    let mut out = decode_all(
        &mut buf,
        |buf| decoder.decode(buf),
        command_json,
        command_error_json,
    );
    if !buf.is_empty() {
        out.push(json!({
            "error": "truncated",
            "message": format!("{} bytes after the last line end", buf.len()),
        }));
    }
    out
}

/// The JSON form of every message and error `decode` takes from `buf`, until it asks for more
/// input.
fn decode_all<T, E>(
    buf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, E>,
    message_json: fn(&T) -> Value,
    error_json: fn(&E) -> Value,
) -> Vec<Value> {
    let mut out = Vec::new();
    // Every decode either returns a message, reports an error after discarding input, or asks
    // for more: the guard only protects against a decoder that would do none of these.
    let mut stalled = 0;
    loop {
        let before = buf.len();
        match decode(buf) {
            Ok(Some(message)) => out.push(message_json(&message)),
            Ok(None) => break,
            Err(e) => {
                out.push(error_json(&e));
                if buf.len() == before {
                    stalled += 1;
                    if stalled > 1 {
                        break;
                    }
                }
            }
        }
    }
    out
}

/// The JSON form of one reply.
pub fn reply_json(reply: &Reply) -> Value {
    let code = reply.code().get();
    let pasv = if code == 227 {
        reply.pasv_addr().ok().map(|a| a.to_string())
    } else {
        None
    };
    let epsv = if code == 229 {
        reply.epsv_port().ok()
    } else {
        None
    };
    json!({
        "code": code,
        "lines": reply.lines().iter().map(|l| l.to_string_lossy().into_owned()).collect::<Vec<_>>(),
        "multiline": reply.is_multiline(),
        "mismatch": reply.mismatch(),
        "pasv": pasv,
        "epsv_port": epsv,
        "retry_after_s": reply.retry_after().map(|d| d.as_secs_f64()),
    })
}

/// The JSON form of one command.
pub fn command_json(command: &Command) -> Value {
    let arg_hex = match command {
        Command::Pass(_) => None,
        _ => command_argument(command).map(|arg| hex(&arg)),
    };
    let port_addr = match command {
        Command::Port(addr) => Some(addr.to_string()),
        Command::Eprt(addr) => Some(addr.to_string()),
        _ => None,
    };
    json!({ "verb": command.verb(), "arg_hex": arg_hex, "port_addr": port_addr })
}

/// The argument bytes of a command as encoded on the wire: what follows `VERB ` up to CRLF.
fn command_argument(command: &Command) -> Option<Vec<u8>> {
    let mut wire = BytesMut::with_capacity(command.encoded_len());
    command.encode(&mut wire);
    let line = wire.strip_suffix(b"\r\n").unwrap_or(&wire);
    let space = line.iter().position(|&b| b == b' ')?;
    Some(line[space + 1..].to_vec())
}

fn reply_error_json(error: &ReplyError) -> Value {
    let kind = match error {
        ReplyError::LineTooLong { .. } => "line_too_long",
        ReplyError::ReplyTooLong { .. } => "reply_too_long",
        ReplyError::Malformed { .. } => "malformed",
        ReplyError::Truncated => "truncated",
        _ => "other",
    };
    json!({ "error": kind, "message": error.to_string() })
}

fn command_error_json(error: &CommandError) -> Value {
    let kind = match error {
        CommandError::LineTooLong { .. } => "line_too_long",
        CommandError::Empty => "empty",
        CommandError::InvalidByte { .. } => "invalid_byte",
        CommandError::MissingArgument { .. } => "missing_argument",
        CommandError::InvalidArgument { .. } => "invalid_argument",
        _ => "other",
    };
    json!({ "error": kind, "message": error.to_string(), "reply_code": error.reply_code().get() })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// Renders values as JSON lines.
pub fn to_json_lines(values: &[Value]) -> String {
    let mut out = String::new();
    for v in values {
        out.push_str(&v.to_string());
        out.push('\n');
    }
    out
}
