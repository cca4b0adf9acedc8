//! Arbitrary bytes through the reply decoder, in chunks: no panic, a bounded buffer,
//! and every decoded reply re-encodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pasv_protocol::{MultilineMode, ReplyDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let mode = if control & 1 == 0 {
        MultilineMode::Lenient
    } else {
        MultilineMode::Strict
    };
    let chunk = usize::from(control >> 1).max(1);
    let (max_line, max_reply) = (32, 128);
    let mut decoder = ReplyDecoder::with_mode(mode).with_limits(max_line, max_reply);
    let mut buf = BytesMut::new();
    let mut replies = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        // Every reply or error consumes at least one byte.
        for _ in 0..=buf.len() {
            match decoder.decode(&mut buf) {
                Ok(Some(r)) => replies.push(r),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        assert!(buf.len() <= max_reply + 4, "buffer grew to {}", buf.len());
    }
    if let Ok(Some(r)) = decoder.decode_eof(&mut buf) {
        replies.push(r);
    }
    for r in replies {
        let mut wire = BytesMut::new();
        r.encode(&mut wire);
        assert_eq!(wire.len(), r.encoded_len());
        let again = ReplyDecoder::with_mode(mode)
            .decode(&mut wire)
            .expect("a re-encoded reply decodes")
            .expect("a re-encoded reply is complete");
        assert_eq!(again.code(), r.code());
        assert_eq!(again.lines(), r.lines());
        assert!(wire.is_empty());
    }
});
