//! Known answers for reply codes, reply decoding and reply encoding.

use std::time::Duration;

use pasv_protocol::{MultilineMode, Reply, ReplyClass, ReplyCode, ReplyError, TextLine};

use crate::util::{encode_reply, lines, one_reply, replies, replies_mode};

fn code(n: u16) -> ReplyCode {
    ReplyCode::new(n).expect("valid code")
}

/// Decodes `bad` followed by `200 ok`: `error` for `bad`, then the 200, as the decoder
/// discards what it cannot use and resynchronises.
#[track_caller]
fn assert_error_then_ok(bad: &[u8], error: ReplyError) {
    let input = [bad, b"200 ok\r\n"].concat();
    assert_eq!(
        replies(&input),
        vec![Err(error), Ok(Reply::new(code(200), "ok"))],
        "{}",
        bad[..bad.len().min(40)].escape_ascii()
    );
}

#[test]
fn reply_code_range() {
    assert_eq!(ReplyCode::new(99), None);
    assert_eq!(ReplyCode::new(0), None);
    assert_eq!(ReplyCode::new(660), None);
    assert_eq!(ReplyCode::new(999), None);
    assert_eq!(ReplyCode::new(100).map(ReplyCode::get), Some(100));
    assert_eq!(ReplyCode::new(659).map(ReplyCode::get), Some(659));
    assert_eq!(ReplyCode::CANT_OPEN_DATA.get(), 425);
    assert_eq!(ReplyCode::ENTERING_EXTENDED_PASSIVE.to_string(), "229");
}

#[test]
fn reply_code_classes() {
    let table = [
        (110, ReplyClass::PositivePreliminary, true, false, false),
        (226, ReplyClass::PositiveCompletion, true, false, false),
        (331, ReplyClass::PositiveIntermediate, true, false, false),
        (425, ReplyClass::TransientNegative, false, true, false),
        (550, ReplyClass::PermanentNegative, false, false, true),
        (631, ReplyClass::Protected, false, false, false),
    ];
    for (n, class, pos, trans, perm) in table {
        let c = code(n);
        assert_eq!(c.class(), class, "{n}");
        assert_eq!(c.is_positive(), pos, "{n}");
        assert_eq!(c.is_transient(), trans, "{n}");
        assert_eq!(c.is_permanent(), perm, "{n}");
    }
}

#[test]
fn named_constants() {
    let table = [
        (ReplyCode::RESTART_MARKER, 110),
        (ReplyCode::DATA_ALREADY_OPEN, 125),
        (ReplyCode::FILE_STATUS_OK, 150),
        (ReplyCode::OK, 200),
        (ReplyCode::COMMAND_SUPERFLUOUS, 202),
        (ReplyCode::SYSTEM_STATUS, 211),
        (ReplyCode::DIRECTORY_STATUS, 212),
        (ReplyCode::FILE_STATUS, 213),
        (ReplyCode::HELP, 214),
        (ReplyCode::SYSTEM_TYPE, 215),
        (ReplyCode::SERVICE_READY, 220),
        (ReplyCode::CLOSING_CONTROL, 221),
        (ReplyCode::CLOSING_DATA, 226),
        (ReplyCode::ENTERING_PASSIVE, 227),
        (ReplyCode::ENTERING_EXTENDED_PASSIVE, 229),
        (ReplyCode::LOGGED_IN, 230),
        (ReplyCode::AUTH_OK, 234),
        (ReplyCode::FILE_ACTION_OK, 250),
        (ReplyCode::PATHNAME_CREATED, 257),
        (ReplyCode::NEED_PASSWORD, 331),
        (ReplyCode::NEED_ACCOUNT, 332),
        (ReplyCode::FILE_ACTION_PENDING, 350),
        (ReplyCode::SERVICE_NOT_AVAILABLE, 421),
        (ReplyCode::CANT_OPEN_DATA, 425),
        (ReplyCode::TRANSFER_ABORTED, 426),
        (ReplyCode::FILE_BUSY, 450),
        (ReplyCode::LOCAL_ERROR, 451),
        (ReplyCode::INSUFFICIENT_STORAGE, 452),
        (ReplyCode::SYNTAX_ERROR, 500),
        (ReplyCode::SYNTAX_ERROR_ARGS, 501),
        (ReplyCode::NOT_IMPLEMENTED, 502),
        (ReplyCode::BAD_SEQUENCE, 503),
        (ReplyCode::NOT_IMPLEMENTED_FOR_PARAM, 504),
        (ReplyCode::NOT_LOGGED_IN, 530),
        (ReplyCode::NEED_ACCOUNT_FOR_STORING, 532),
        (ReplyCode::FILE_UNAVAILABLE, 550),
        (ReplyCode::PAGE_TYPE_UNKNOWN, 551),
        (ReplyCode::EXCEEDED_STORAGE, 552),
        (ReplyCode::BAD_FILENAME, 553),
        (ReplyCode::INVALID_REST, 554),
    ];
    for (c, n) in table {
        assert_eq!(c.get(), n);
    }
}

/// (wire, code, lines, mismatch) in the lenient default mode.
type KnownAnswer = (&'static [u8], u16, &'static [&'static [u8]], bool);

const DECODE_TABLE: &[KnownAnswer] = &[
    (b"220 Service ready\r\n", 220, &[b"Service ready"], false),
    (b"220 Service ready\n", 220, &[b"Service ready"], false),
    (b"200\r\n", 200, &[b""], false),
    (b"200 \r\n", 200, &[b""], false),
    (b"200  two spaces \r\n", 200, &[b" two spaces "], false),
    (b"200 -dash\r\n", 200, &[b"-dash"], false),
    (
        b"211-Features:\r\n MDTM\r\n SIZE\r\n211 End\r\n",
        211,
        &[b"Features:", b" MDTM", b" SIZE", b"End"],
        false,
    ),
    (b"230-a\r\n230\r\n", 230, &[b"a", b""], false),
    (b"230-\r\n230 \r\n", 230, &[b"", b""], false),
    (
        b"230-a\r\n230-b\r\n230 c\r\n",
        230,
        &[b"a", b"230-b", b"c"],
        false,
    ),
    // An escaped inner line loses its escape space; a FEAT line keeps its space.
    (
        b"214-x\r\n 1 foo\r\n   2\r\n MDTM\r\n214 y\r\n",
        214,
        &[b"x", b"1 foo", b"  2", b" MDTM", b"y"],
        false,
    ),
    // Lenient: any `ddd ` line closes, flagged.
    (b"211-a\r\n200 b\r\n", 211, &[b"a", b"b"], true),
    (b"211-a\r\n200\r\n", 211, &[b"a", b""], true),
    // Not closing lines: hyphen, no separator, out-of-range code, leading space.
    (
        b"211-a\r\n200-b\r\n2000\r\n099 c\r\n 200 d\r\n211 e\r\n",
        211,
        &[b"a", b"200-b", b"2000", b"099 c", b"200 d", b"e"],
        false,
    ),
    // Stray CR and NUL are dropped; one CR before LF is the line end.
    (b"200 a\rb\r\n", 200, &[b"ab"], false),
    (b"200 a\0b\r\n", 200, &[b"ab"], false),
    (b"200 a\r\r\n", 200, &[b"a"], false),
    (b"200 a\tb\r\n", 200, &[b"a\tb"], false),
    (
        b"200 caf\xc3\xa9 \xff\r\n",
        200,
        &[b"caf\xc3\xa9 \xff"],
        false,
    ),
    // Blank lines between replies are skipped.
    (b"\r\n\n\r\n220 hi\r\n", 220, &[b"hi"], false),
    (b"631 ZW5jcnlwdGVk\r\n", 631, &[b"ZW5jcnlwdGVk"], false),
];

#[test]
fn decode_known_answers() {
    for &(wire, c, expected, mismatch) in DECODE_TABLE {
        let reply = one_reply(wire);
        assert_eq!(reply.code().get(), c, "{}", wire.escape_ascii());
        assert_eq!(lines(&reply), expected, "{}", wire.escape_ascii());
        assert_eq!(reply.mismatch(), mismatch, "{}", wire.escape_ascii());
        assert_eq!(reply.is_multiline(), expected.len() > 1);
    }
}

#[test]
fn strict_mode_closes_only_on_the_opening_code() {
    let wire = b"211-a\r\n200 b\r\n211 c\r\n";
    let strict = replies_mode(wire, MultilineMode::Strict);
    assert_eq!(strict.len(), 1);
    let r = strict[0].as_ref().expect("reply");
    assert_eq!(lines(r), [&b"a"[..], b"200 b", b"c"]);
    assert!(!r.mismatch());

    let lenient = replies_mode(wire, MultilineMode::Lenient);
    assert_eq!(lenient.len(), 2);
    assert!(lenient[0].as_ref().expect("reply").mismatch());
    assert_eq!(lenient[1].as_ref().expect("reply").code().get(), 211);
}

#[test]
fn pipelined_replies() {
    let all = replies(b"150 Opening\r\n226 Done\r\n211-a\r\n211 b\r\n421 Bye\r\n");
    let codes: Vec<u16> = all
        .iter()
        .map(|r| r.as_ref().expect("reply").code().get())
        .collect();
    assert_eq!(codes, [150, 226, 211, 421]);
}

#[test]
fn malformed_lines_are_errors_and_decoding_goes_on() {
    let table: &[(&[u8], &str)] = &[
        (b"hello\r\n", "line does not start with a reply code"),
        (b"2\r\n", "line does not start with a reply code"),
        (b"22\r\n", "line does not start with a reply code"),
        (b" 220 x\r\n", "line does not start with a reply code"),
        (b"099 x\r\n", "reply code out of range"),
        (b"700 x\r\n", "reply code out of range"),
        (b"000\r\n", "reply code out of range"),
        (b"220x\r\n", "reply code not followed by space or hyphen"),
        (b"2200\r\n", "reply code not followed by space or hyphen"),
        (b"220\tx\r\n", "reply code not followed by space or hyphen"),
    ];
    for &(bad, reason) in table {
        assert_error_then_ok(bad, ReplyError::Malformed { reason });
    }
}

#[test]
fn truncated_replies_at_eof() {
    for input in [
        &b"220 hi"[..],
        b"211-a\r\n",
        b"211-a\r\n b\r\n211",
        b"2",
        b"\r",
    ] {
        assert_eq!(
            replies(input),
            vec![Err(ReplyError::Truncated)],
            "{}",
            input.escape_ascii()
        );
    }
    assert_eq!(replies(b""), vec![]);
    assert_eq!(replies(b"\r\n\r\n"), vec![]);
}

#[test]
fn over_long_line_is_an_error_then_the_next_reply_decodes() {
    let long = [b'x'; 9000];
    // A single-line reply; an inner line, which discards the whole multi-line reply; the
    // closing line, which ends it.
    for (before, after) in [
        (&b"200 "[..], &b"\r\n"[..]),
        (b"211-a\r\n", b"\r\n more\r\n211 end\r\n"),
        (b"211-a\r\n211 ", b"\r\n"),
    ] {
        assert_error_then_ok(
            &[before, &long, after].concat(),
            ReplyError::LineTooLong { limit: 8192 },
        );
    }
}

#[test]
fn line_cap_is_exact() {
    // 8192 bytes before LF (CR included) pass, 8193 do not.
    for (len, ok) in [(8192usize, true), (8193, false)] {
        let mut input = b"200 ".to_vec();
        input.extend(vec![b'x'; len - 5]);
        input.extend_from_slice(b"\r\n");
        let all = replies(&input);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].is_ok(), ok, "{len}");
    }
}

#[test]
fn over_long_reply_is_an_error_then_the_next_reply_decodes() {
    let mut input = b"211-a\r\n".to_vec();
    for _ in 0..100 {
        input.extend(vec![b'y'; 1000]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b"211 end\r\n");
    assert_error_then_ok(&input, ReplyError::ReplyTooLong { limit: 65536 });
}

#[test]
fn strict_reply_that_never_closes_hits_the_cap() {
    let mut input = b"211-a\r\n".to_vec();
    for _ in 0..70 {
        input.extend(vec![b'z'; 1000]);
        input.extend_from_slice(b"\r\n200 not the end\r\n");
    }
    let all = replies_mode(&input, MultilineMode::Strict);
    assert_eq!(all, vec![Err(ReplyError::ReplyTooLong { limit: 65536 })]);
}

#[test]
fn custom_limits() {
    let mut d = pasv_protocol::ReplyDecoder::new().with_limits(16, 40);
    let all = crate::util::replies_chunked(
        &mut d,
        &[b"200 0123456789abcdef\r\n200 short\r\n211-a\r\n 0123456789\r\n 0123456789\r\n 0123456789\r\n211 e\r\n200 x\r\n"],
    );
    assert_eq!(
        all,
        vec![
            Err(ReplyError::LineTooLong { limit: 16 }),
            Ok(Reply::new(code(200), "short")),
            Err(ReplyError::ReplyTooLong { limit: 40 }),
            Ok(Reply::new(code(200), "x")),
        ]
    );
}

/// (reply, wire)
#[test]
fn encode_known_answers() {
    let table: Vec<(Reply, &[u8])> = vec![
        (Reply::new(code(200), "ok"), b"200 ok\r\n"),
        (Reply::new(code(200), ""), b"200 \r\n"),
        (Reply::new(code(200), "ok\n"), b"200 ok\r\n"),
        (
            Reply::new(code(211), "Features:\n MDTM\n SIZE\nEnd"),
            b"211-Features:\r\n MDTM\r\n SIZE\r\n211 End\r\n",
        ),
        (
            Reply::new(code(214), "a\n123 b\n 4\n-c\nd"),
            b"214-a\r\n 123 b\r\n  4\r\n-c\r\n214 d\r\n",
        ),
        (Reply::new(code(200), "a\r\0b"), b"200 ab\r\n"),
        (
            Reply::try_later(Duration::from_secs(37)),
            b"425 Try later, data connection in use (retry after 37s)\r\n",
        ),
        (
            Reply::entering_passive("127.0.0.1:1025".parse().expect("addr")),
            b"227 Entering Passive Mode (127,0,0,1,4,1).\r\n",
        ),
        (
            Reply::entering_extended_passive(6446),
            b"229 Entering Extended Passive Mode (|||6446|)\r\n",
        ),
        (Reply::from_lines(code(250), vec![]), b"250 \r\n"),
    ];
    for (reply, wire) in table {
        assert_eq!(encode_reply(&reply), wire, "{reply:?}");
        // And back.
        let back = one_reply(wire);
        assert_eq!(back, reply, "{}", wire.escape_ascii());
    }
}

#[test]
fn reply_accessors() {
    let r = Reply::new(code(211), "Features:\n MDTM\nEnd");
    assert_eq!(r.text(), "Features:\n MDTM\nEnd");
    assert!(r.is_multiline());
    assert_eq!(r.to_string(), "211-Features:\n MDTM\n211 End");
    assert_eq!(Reply::new(code(200), "ok").to_string(), "200 ok");
    assert_eq!(
        Reply::new(code(200), b"caf\xe9").text(),
        "caf\u{fffd}",
        "lossy text"
    );
}

#[test]
fn text_line_rejects_line_breaks() {
    assert!(TextLine::new("fine").is_ok());
    assert!(TextLine::new("").is_ok());
    for bad in [&b"a\rb"[..], b"a\nb", b"a\0b"] {
        assert!(TextLine::new(bad).is_err(), "{}", bad.escape_ascii());
    }
    assert_eq!(TextLine::new("x").expect("line").to_string_lossy(), "x");
}

#[test]
fn retry_after_reads_only_transient_replies() {
    let hinted = Reply::try_later(Duration::from_millis(250));
    assert_eq!(hinted.retry_after(), Some(Duration::from_millis(250)));
    let r = one_reply(b"425 Try later, data connection in use (retry after 37s)\r\n");
    assert_eq!(r.retry_after(), Some(Duration::from_secs(37)));
    let r = one_reply(b"425 Can't open data connection.\r\n");
    assert_eq!(r.retry_after(), None);
    let r = one_reply(b"200 retry after 5s\r\n");
    assert_eq!(r.retry_after(), None);
    let r = one_reply(b"421-Busy\r\n (retry after 2.5s)\r\n421 Bye\r\n");
    assert_eq!(r.retry_after(), Some(Duration::from_millis(2500)));
}
