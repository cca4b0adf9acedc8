//! Arbitrary bytes through the command decoder, in chunks: no panic, a bounded buffer,
//! and every decoded command re-encodes to itself.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pasv_protocol::CommandDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control).max(1);
    let max_line = 64;
    let mut decoder = CommandDecoder::with_max_line_length(max_line);
    let mut buf = BytesMut::new();
    let mut commands = Vec::new();
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        for _ in 0..=buf.len() {
            match decoder.decode(&mut buf) {
                Ok(Some(c)) => commands.push(c),
                Ok(None) => break,
                Err(e) => {
                    let _ = e.reply_code();
                }
            }
        }
        assert!(buf.len() <= max_line, "buffer grew to {}", buf.len());
    }
    for c in commands {
        let mut wire = BytesMut::new();
        c.encode(&mut wire);
        assert_eq!(wire.len(), c.encoded_len());
        let _ = c.to_string();
        let again = CommandDecoder::with_max_line_length(usize::MAX)
            .decode(&mut wire)
            .expect("a re-encoded command decodes")
            .expect("a re-encoded command is complete");
        assert_eq!(again, c);
        assert!(wire.is_empty());
    }
});
