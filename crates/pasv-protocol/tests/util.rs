//! Helpers shared by the test modules.

use bytes::BytesMut;
use pasv_protocol::{
    Command, CommandDecoder, CommandError, MultilineMode, Reply, ReplyDecoder, ReplyError,
};

/// Bounds every decode loop: no input used here yields more items than bytes.
const MAX_ITEMS: usize = 1_000_000;

/// Decodes all replies of `input` fed in the given chunks, then signals EOF.
pub fn replies_chunked(
    decoder: &mut ReplyDecoder,
    chunks: &[&[u8]],
) -> Vec<Result<Reply, ReplyError>> {
    decode_chunked(chunks, |buf, eof| {
        if eof {
            decoder.decode_eof(buf)
        } else {
            decoder.decode(buf)
        }
    })
}

/// Decodes all replies of `input` in one shot (lenient mode).
pub fn replies(input: &[u8]) -> Vec<Result<Reply, ReplyError>> {
    replies_chunked(&mut ReplyDecoder::new(), &[input])
}

/// Decodes all replies of `input` in one shot with the given mode.
pub fn replies_mode(input: &[u8], mode: MultilineMode) -> Vec<Result<Reply, ReplyError>> {
    replies_chunked(&mut ReplyDecoder::with_mode(mode), &[input])
}

/// Decodes exactly one reply and expects nothing else.
pub fn one_reply(input: &[u8]) -> Reply {
    let mut all = replies(input);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0).expect("a reply")
}

/// Decodes all commands of `input` fed in the given chunks, then signals EOF.
pub fn commands_chunked(
    decoder: &mut CommandDecoder,
    chunks: &[&[u8]],
) -> Vec<Result<Command, CommandError>> {
    decode_chunked(chunks, |buf, eof| {
        if eof {
            decoder.decode_eof(buf)
        } else {
            decoder.decode(buf)
        }
    })
}

/// Feeds `chunks` one by one to `decode` (its flag is false) until it asks for more, then
/// calls it at EOF (flag true) until it has nothing left.
fn decode_chunked<T, E>(
    chunks: &[&[u8]],
    mut decode: impl FnMut(&mut BytesMut, bool) -> Result<Option<T>, E>,
) -> Vec<Result<T, E>> {
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        for _ in 0..MAX_ITEMS {
            match decode(&mut buf, false) {
                Ok(Some(item)) => out.push(Ok(item)),
                Ok(None) => break,
                Err(e) => out.push(Err(e)),
            }
        }
    }
    for _ in 0..MAX_ITEMS {
        match decode(&mut buf, true) {
            Ok(Some(item)) => out.push(Ok(item)),
            Ok(None) => break,
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// Decodes all commands of `input` in one shot.
pub fn commands(input: &[u8]) -> Vec<Result<Command, CommandError>> {
    commands_chunked(&mut CommandDecoder::new(), &[input])
}

/// Decodes exactly one command line.
pub fn one_command(input: &[u8]) -> Result<Command, CommandError> {
    let mut all = commands(input);
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// The wire form of a command.
pub fn encode_command(c: &Command) -> Vec<u8> {
    let mut out = Vec::new();
    c.encode(&mut out);
    assert_eq!(out.len(), c.encoded_len(), "encoded_len of {c:?}");
    out
}

/// The wire form of a reply.
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut out = Vec::new();
    r.encode(&mut out);
    assert_eq!(out.len(), r.encoded_len(), "encoded_len of {r:?}");
    out
}

/// The lines of a reply as byte vectors.
pub fn lines(r: &Reply) -> Vec<&[u8]> {
    r.lines().iter().map(|l| l.as_bytes()).collect()
}
