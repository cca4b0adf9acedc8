//! Benchmarks of pasv-protocol's decoders and parsers.
//!
//! - `parse_227`: the address of `227 Entering Passive Mode (192,168,100,200,195,80).`
//!   read by [`parse_pasv`] (the RFC 1123 scanning rule) against a baseline of the kind
//!   suppaftp uses: the regex `\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)` with each capture
//!   parsed as a number. Both start from the reply text; `pasv-protocol-framed` also frames
//!   the raw reply line first. Target: at least 5x faster than the baseline.
//! - `feat_reply/20-lines`: one 20-line FEAT reply through [`ReplyDecoder`].
//! - `reply_stream/10000-mixed`: 10,000 pipelined replies of the kinds a client sees in a
//!   session (single-line, 227/229, multi-line FEAT and HELP, 425 with a retry hint),
//!   decoded from one buffer; throughput in bytes. Target: above 500 MB/s.
//! - `command_stream/10000-mixed`: 10,000 pipelined commands through [`CommandDecoder`].
//! - `encode_reply`: the 150 reply of a RETR (`Opening BINARY mode data connection for
//!   /pub/file.bin (1048576 bytes).`) appended to a reused buffer, as pasvd writes every
//!   one-line reply: [`Reply::encode_line`] (no allocation) against building a [`Reply`]
//!   and encoding it (`Reply::new(..).encode`, which allocates the line list and the line).
//!
//! The stream benches copy the input into a fresh buffer outside the timed part.
//!
//! Criterion writes its numbers under `target/criterion`; `cargo xtask bench` checks the
//! targets and writes the report.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pasv_protocol::{parse_pasv, CommandDecoder, Reply, ReplyDecoder};
use regex::Regex;

const REPLY_227: &[u8] = b"227 Entering Passive Mode (192,168,100,200,195,80).\r\n";
const TEXT_227: &str = "Entering Passive Mode (192,168,100,200,195,80).";

/// The regex baseline: capture six numbers, parse each, build the address.
fn regex_227(re: &Regex, text: &str) -> Option<SocketAddrV4> {
    let caps = re.captures(text)?;
    let n = |i: usize| caps.get(i)?.as_str().parse::<u8>().ok();
    let ip = Ipv4Addr::new(n(1)?, n(2)?, n(3)?, n(4)?);
    let port = u16::from(n(5)?) << 8 | u16::from(n(6)?);
    Some(SocketAddrV4::new(ip, port))
}

fn parse_227(c: &mut Criterion) {
    let re = Regex::new(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)").expect("valid regex");
    let expected: SocketAddrV4 = "192.168.100.200:50000".parse().expect("address");
    assert_eq!(parse_pasv(TEXT_227.as_bytes()), Ok(expected));
    assert_eq!(regex_227(&re, TEXT_227), Some(expected));

    let mut group = c.benchmark_group("parse_227");
    group.bench_function("pasv-protocol", |b| {
        b.iter(|| parse_pasv(black_box(TEXT_227.as_bytes())))
    });
    group.bench_function("regex-baseline", |b| {
        b.iter(|| regex_227(&re, black_box(TEXT_227)))
    });
    group.bench_function("pasv-protocol-framed", |b| {
        let mut decoder = ReplyDecoder::new();
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(REPLY_227));
            let reply = decoder.decode(&mut buf).ok().flatten()?;
            reply.pasv_addr().ok()
        })
    });
    group.finish();
}

fn feat_reply() -> Vec<u8> {
    let mut text = String::from("Features:\n");
    for feature in [
        "EPRT",
        "EPSV",
        "MDTM",
        "MFMT",
        "MLST type*;size*;sizd*;modify*;UNIX.mode*;UNIX.uid*;UNIX.gid*;unique*;",
        "PASV",
        "REST STREAM",
        "SIZE",
        "TVFS",
        "UTF8",
        "AUTH TLS",
        "PBSZ",
        "PROT",
        "CCC",
        "CLNT",
        "HOST",
        "LANG EN*",
        "MODE Z",
    ] {
        text.push(' ');
        text.push_str(feature);
        text.push('\n');
    }
    text.push_str("End");
    let reply = Reply::new(pasv_protocol::ReplyCode::SYSTEM_STATUS, text);
    assert_eq!(reply.lines().len(), 20);
    let mut wire = Vec::new();
    reply.encode(&mut wire);
    wire
}

fn feat(c: &mut Criterion) {
    let wire = feat_reply();
    let mut group = c.benchmark_group("feat_reply");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("20-lines", |b| {
        let mut decoder = ReplyDecoder::new();
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&wire[..]));
            decoder.decode(&mut buf)
        })
    });
    group.finish();
}

/// 10,000 replies: mostly single-line, with a FEAT or HELP reply now and then.
fn reply_stream() -> (Vec<u8>, usize) {
    let kinds: [&[u8]; 10] = [
        b"150 Opening BINARY mode data connection for file.bin (1048576 bytes).\r\n",
        b"226 Transfer complete.\r\n",
        b"227 Entering Passive Mode (192,168,100,200,195,80).\r\n",
        b"229 Entering Extended Passive Mode (|||50000|)\r\n",
        b"250 Requested file action okay, completed.\r\n",
        b"213 1048576\r\n",
        b"257 \"/pub/incoming\" is the current directory\r\n",
        b"425 Try later, data connection in use (retry after 0.25s)\r\n",
        b"214-The following commands are recognized:\r\n ABOR ACCT ALLO APPE CDUP CWD DELE EPRT EPSV FEAT\r\n HELP LIST MDTM MKD MODE NLST NOOP OPTS PASS PASV\r\n214 Help OK.\r\n",
        b"200 Switching to Binary mode.\r\n",
    ];
    let feat = feat_reply();
    let mut wire = Vec::new();
    for i in 0..10_000 {
        if i % 500 == 0 {
            wire.extend_from_slice(&feat);
        } else {
            wire.extend_from_slice(kinds[i % kinds.len()]);
        }
    }
    (wire, 10_000)
}

fn replies(c: &mut Criterion) {
    let (wire, count) = reply_stream();
    decode_stream(c, "reply_stream", &wire, count, |buf| {
        let mut decoder = ReplyDecoder::new();
        std::iter::from_fn(|| decoder.decode(buf).ok().flatten())
            .map(black_box)
            .count()
    });
}

fn command_stream() -> Vec<u8> {
    let kinds: [&[u8]; 12] = [
        b"USER anonymous\r\n",
        b"PASS guest@example.com\r\n",
        b"TYPE I\r\n",
        b"EPSV\r\n",
        b"PASV\r\n",
        b"RETR /pub/releases/file-1.2.3.tar.gz\r\n",
        b"STOR upload.bin\r\n",
        b"SIZE /pub/releases/file-1.2.3.tar.gz\r\n",
        b"LIST -la\r\n",
        b"PORT 192,168,100,200,195,80\r\n",
        b"REST 1048576\r\n",
        b"NOOP\r\n",
    ];
    let mut wire = Vec::new();
    for i in 0..10_000 {
        wire.extend_from_slice(kinds[i % kinds.len()]);
    }
    wire
}

fn commands(c: &mut Criterion) {
    let wire = command_stream();
    decode_stream(c, "command_stream", &wire, 10_000, |buf| {
        let mut decoder = CommandDecoder::new();
        std::iter::from_fn(|| decoder.decode(buf).ok().flatten())
            .map(black_box)
            .count()
    });
}

/// Benchmarks `decode_all` over `wire`, `count` messages, with a fresh buffer per batch;
/// `decode_all` returns how many messages it decoded.
fn decode_stream(
    c: &mut Criterion,
    group: &str,
    wire: &[u8],
    count: usize,
    decode_all: fn(&mut BytesMut) -> usize,
) {
    let mut group = c.benchmark_group(group);
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("10000-mixed", |b| {
        b.iter_batched(
            || BytesMut::from(wire),
            |mut buf| assert_eq!(decode_all(&mut buf), count),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    use pasv_protocol::ReplyCode;
    let text: &[u8] = b"Opening BINARY mode data connection for /pub/file.bin (1048576 bytes).";
    let mut group = c.benchmark_group("encode_reply");
    let mut out = BytesMut::with_capacity(1024);
    group.bench_function("encode_line", |b| {
        b.iter(|| {
            out.clear();
            Reply::encode_line(ReplyCode::FILE_STATUS_OK, black_box(text), &mut out);
            black_box(out.len())
        })
    });
    group.bench_function("reply_new_encode", |b| {
        b.iter(|| {
            out.clear();
            Reply::new(ReplyCode::FILE_STATUS_OK, black_box(text)).encode(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

// `criterion_group!` generates an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, parse_227, feat, replies, commands, encode);
}
criterion_main!(group::benches);
