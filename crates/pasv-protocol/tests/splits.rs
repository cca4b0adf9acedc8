//! Every split point of a stream decodes to the same items as the stream in one shot.

use pasv_protocol::{CommandDecoder, MultilineMode, ReplyDecoder};
use proptest::prelude::*;

use crate::util::{commands_chunked, replies_chunked};

const REPLY_STREAM: &[u8] = b"220-Welcome\r\n 123 escaped\r\n220 Ready\r\n\
331 Password required\r\n\r\n230 Logged in\n\
211-Features:\r\n EPSV\r\n MDTM\r\n MLST type*;size*;modify*;\r\n211 End\r\n\
227 Entering Passive Mode (127,0,0,1,4,1).\r\n\
hello\r\n\
229 Entering Extended Passive Mode (|||6446|)\r\n\
150-a\r\n200 mismatch\r\n\
200 a\rb\0c\r\r\n\
425 Try later, data connection in use (retry after 0.25s)\r\n\
226 Transfer complete\r\n421 Bye";

const COMMAND_STREAM: &[u8] = b"USER anonymous\r\nPASS x\r\nSYST\nFEAT\r\n\
TYPE I\r\nEPSV\r\nRETR  a file \r\n\xff\xf4\xff\xf2ABOR\r\n\xff\xf4\xffABOR\r\n\
RETR a\xff\xffb\r\nRE\0TR\r\nPORT 1,2,3\r\n\r\nLIST -la\r\nSTOR \xe9\r\nQUIT\r\nNOO";

/// Streams that exercise the caps, for a decoder with tiny caps.
const CAPPED_REPLY_STREAM: &[u8] = b"200 0123456789abcdefghij\r\n200 ok\r\n\
211-a\r\n b\r\n c\r\n d\r\n e\r\n f\r\n g\r\n h\r\n i\r\n j\r\n k\r\n211 end\r\n\
211-a\r\n 0123456789abcdefghij\r\n b\r\n211 end\r\n200 x\r\n\
211-a\r\n 0123456789\r\n 01234567\r\n 0123456789\r\n211 0123456789abcdefghij\r\n200 y\r\n";

fn capped() -> ReplyDecoder {
    ReplyDecoder::new().with_limits(16, 48)
}

fn check_reply_splits(stream: &[u8], make: impl Fn() -> ReplyDecoder) {
    let whole = replies_chunked(&mut make(), &[stream]);
    for i in 0..=stream.len() {
        let (a, b) = stream.split_at(i);
        assert_eq!(replies_chunked(&mut make(), &[a, b]), whole, "split at {i}");
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(replies_chunked(&mut make(), &bytes), whole, "byte by byte");
}

#[test]
fn reply_stream_splits() {
    check_reply_splits(REPLY_STREAM, ReplyDecoder::new);
    check_reply_splits(REPLY_STREAM, || {
        ReplyDecoder::with_mode(MultilineMode::Strict)
    });
    // The one-shot result itself, so a split bug cannot hide behind a wrong baseline.
    let whole = replies_chunked(&mut ReplyDecoder::new(), &[REPLY_STREAM]);
    let codes: Vec<Option<u16>> = whole
        .iter()
        .map(|r| r.as_ref().ok().map(|r| r.code().get()))
        .collect();
    assert_eq!(
        codes,
        [
            Some(220),
            Some(331),
            Some(230),
            Some(211),
            Some(227),
            None,
            Some(229),
            Some(150),
            Some(200),
            Some(425),
            Some(226),
            None
        ]
    );
}

#[test]
fn capped_reply_stream_splits() {
    check_reply_splits(CAPPED_REPLY_STREAM, capped);
    let whole = replies_chunked(&mut capped(), &[CAPPED_REPLY_STREAM]);
    let shown: Vec<String> = whole
        .iter()
        .map(|r| match r {
            Ok(r) => r.to_string(),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(
        shown,
        [
            "reply line longer than 16 bytes",
            "200 ok",
            "reply longer than 48 bytes",
            "reply line longer than 16 bytes",
            "200 x",
            "reply longer than 48 bytes",
            "200 y",
        ]
    );
}

fn check_command_splits(stream: &[u8], make: impl Fn() -> CommandDecoder) {
    let whole = commands_chunked(&mut make(), &[stream]);
    for i in 0..=stream.len() {
        let (a, b) = stream.split_at(i);
        assert_eq!(
            commands_chunked(&mut make(), &[a, b]),
            whole,
            "split at {i}"
        );
    }
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(commands_chunked(&mut make(), &bytes), whole, "byte by byte");
}

#[test]
fn command_stream_splits() {
    check_command_splits(COMMAND_STREAM, CommandDecoder::new);
    let whole = commands_chunked(&mut CommandDecoder::new(), &[COMMAND_STREAM]);
    assert_eq!(whole.len(), 16);
}

#[test]
fn capped_command_stream_splits() {
    let stream = b"NOOP\r\nRETR 0123456789abcdef\r\nNOOP\r\nRETR 0123456789\r\nQUIT\r\n";
    let make = || CommandDecoder::with_max_line_length(16);
    check_command_splits(stream, make);
    let whole = commands_chunked(&mut make(), &[stream]);
    assert_eq!(whole.len(), 5);
    assert!(whole[1].is_err());
}

proptest! {
    /// Three random cuts of the reply streams.
    #[test]
    fn reply_streams_cut_anywhere(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        for (stream, make) in [
            (REPLY_STREAM, ReplyDecoder::new as fn() -> ReplyDecoder),
            (CAPPED_REPLY_STREAM, capped as fn() -> ReplyDecoder),
        ] {
            prop_assert_eq!(
                replies_chunked(&mut make(), &cut(stream, &cuts)),
                replies_chunked(&mut make(), &[stream])
            );
        }
    }
}

/// Reply-like token soup: codes, separators, line ends, stray bytes, long runs.
fn reply_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"211-".to_vec()),
        Just(b"211 ".to_vec()),
        Just(b"200 ".to_vec()),
        Just(b"200".to_vec()),
        Just(b"099 ".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        Just(b" 1".to_vec()),
        Just(b"x".to_vec()),
        (1usize..40).prop_map(|n| vec![b'y'; n]),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn command_soup() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"RETR ".to_vec()),
        Just(b"NOOP".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\0".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\xff\xf4".to_vec()),
        Just(b" ".to_vec()),
        (1usize..30).prop_map(|n| vec![b'z'; n]),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn cut<'a>(input: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut last = 0;
    for p in points {
        chunks.push(&input[last..p]);
        last = p;
    }
    chunks.push(&input[last..]);
    chunks
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Random streams near the caps: any cutting gives the one-shot result.
    #[test]
    fn reply_soup_cut_anywhere(
        input in reply_soup(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        strict in any::<bool>(),
    ) {
        let mode = if strict { MultilineMode::Strict } else { MultilineMode::Lenient };
        let make = || ReplyDecoder::with_mode(mode).with_limits(16, 48);
        prop_assert_eq!(
            replies_chunked(&mut make(), &cut(&input, &cuts)),
            replies_chunked(&mut make(), &[&input])
        );
    }

    #[test]
    fn command_soup_cut_anywhere(
        input in command_soup(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let make = || CommandDecoder::with_max_line_length(16);
        prop_assert_eq!(
            commands_chunked(&mut make(), &cut(&input, &cuts)),
            commands_chunked(&mut make(), &[&input])
        );
    }
}
