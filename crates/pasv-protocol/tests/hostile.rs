//! Hostile input: errors, never panics, never unbounded buffers.

use bytes::BytesMut;
use pasv_protocol::{
    parse_eprt_arg, parse_epsv, parse_pasv, parse_port_arg, parse_retry_hint, Command,
    CommandDecoder, CommandError, MultilineMode, ReplyDecoder, ReplyError,
};
use proptest::prelude::*;

use crate::util::{commands, replies, replies_chunked, replies_mode};

#[test]
fn megabyte_without_newline() {
    let junk = vec![b'x'; 1 << 20];
    let mut d = ReplyDecoder::new();
    let mut buf = BytesMut::new();
    let mut errors = Vec::new();
    for piece in junk.chunks(4096) {
        buf.extend_from_slice(piece);
        match d.decode(&mut buf) {
            Ok(None) => {}
            Ok(Some(r)) => panic!("no reply expected, got {r:?}"),
            Err(e) => errors.push(e),
        }
        assert!(buf.len() <= 8192 + 4096, "buffer grew to {}", buf.len());
    }
    assert_eq!(errors, vec![ReplyError::LineTooLong { limit: 8192 }]);
    // The rest of the line is skipped; the next line decodes.
    buf.extend_from_slice(b"\r\n220 ok\r\n");
    assert_eq!(
        d.decode(&mut buf).map(|r| r.map(|r| r.code().get())),
        Ok(Some(220))
    );

    let mut d = CommandDecoder::new();
    let mut buf = BytesMut::new();
    let mut errors = Vec::new();
    for piece in junk.chunks(4096) {
        buf.extend_from_slice(piece);
        if let Err(e) = d.decode(&mut buf) {
            errors.push(e);
        }
        assert!(buf.len() <= 4096 * 2, "buffer grew to {}", buf.len());
    }
    assert_eq!(errors, vec![CommandError::LineTooLong { limit: 4096 }]);
    buf.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(d.decode(&mut buf), Ok(Some(Command::Noop)));
}

#[test]
fn endless_multiline_reply_is_capped() {
    let mut d = ReplyDecoder::with_mode(MultilineMode::Strict);
    let mut buf = BytesMut::from(&b"211-start\r\n"[..]);
    let mut errors = Vec::new();
    for _ in 0..10_000 {
        buf.extend_from_slice(b" more text that never ends\r\n");
        match d.decode(&mut buf) {
            Ok(None) => {}
            Ok(Some(r)) => panic!("no reply expected, got {r:?}"),
            Err(e) => errors.push(e),
        }
        assert!(buf.len() <= 65536 + 64);
    }
    assert_eq!(errors, vec![ReplyError::ReplyTooLong { limit: 65536 }]);
}

#[test]
fn iac_garbage() {
    let table: &[&[u8]] = &[
        b"\xff\r\n",
        b"\xff\xff\xff\r\n",
        b"\xff\xfa\r\n",
        b"\xff\xfa\xff\r\n",
        b"\xff\xfb\r\n",
        b"\xff\xfe\xff\xff\r\n",
        b"\xff\xf0\xff\xf1\xff\xf2\xff\xf3\xff\xf4\xff\xf5\xff\xf6\xff\xf7\xff\xf8\xff\xf9\r\n",
    ];
    for &line in table {
        let all = commands(line);
        assert_eq!(all.len(), 1, "{}", line.escape_ascii());
        assert!(all[0].is_err(), "{}: {:?}", line.escape_ascii(), all[0]);
    }
    // IAC IAC as a verb byte is a literal 0xFF: not a valid verb.
    assert_eq!(
        commands(b"\xff\xffRETR x\r\n"),
        vec![Err(CommandError::InvalidVerb)]
    );
}

#[test]
fn non_utf8_everywhere() {
    assert_eq!(
        commands(b"\x80\x81\r\n"),
        vec![Err(CommandError::InvalidVerb)]
    );
    let all = replies(b"200 \x80\x81\xfe\r\n");
    assert_eq!(all.len(), 1);
    let r = all[0].as_ref().expect("reply");
    assert_eq!(r.lines()[0].as_bytes(), b"\x80\x81\xfe");
    assert_eq!(r.text(), "\u{fffd}\u{fffd}\u{fffd}");
}

#[test]
fn numbers_out_of_range() {
    assert!(parse_pasv(b"(999,0,0,1,4,1)").is_err());
    assert!(parse_pasv(b"(99999999999999999999,0,0,1,4,1)").is_err());
    assert!(parse_epsv(b"(|||99999999999999999999|)").is_err());
    assert!(parse_port_arg(b"1,2,3,4,5,99999999999999999999").is_err());
    assert!(parse_eprt_arg(b"|1|1.2.3.4|99999999999999999999|").is_err());
    assert_eq!(parse_retry_hint(b"retry after 18446744073709551616s"), None);
    assert!(matches!(
        commands(b"REST 99999999999999999999999999\r\n")[0],
        Err(CommandError::InvalidArgument { verb: "REST", .. })
    ));
    assert!(replies(b"999 x\r\n")[0].is_err());
}

#[test]
fn truncated_multiline_replies() {
    for input in [
        &b"211-a\r\n"[..],
        b"211-a\r\n b\r\n",
        b"211-a\r\n b\r\n211",
        b"211-a\r\n b\r\n211 end",
        b"211-a\r\n200 x\r\n211-",
    ] {
        let all = replies_mode(input, MultilineMode::Strict);
        assert_eq!(
            all.last(),
            Some(&Err(ReplyError::Truncated)),
            "{}",
            input.escape_ascii()
        );
    }
}

#[test]
fn caller_may_take_bytes_out_of_the_buffer() {
    let mut d = ReplyDecoder::new();
    let mut buf = BytesMut::from(&b"211-a\r\n b\r\n 2"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.clear();
    buf.extend_from_slice(b"220 ok\r\n");
    assert_eq!(
        d.decode(&mut buf).map(|r| r.map(|r| r.code().get())),
        Ok(Some(220))
    );

    let mut d = CommandDecoder::new();
    let mut buf = BytesMut::from(&b"RETR long name"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.truncate(2);
    buf.extend_from_slice(b"\n");
    assert_eq!(
        d.decode(&mut buf),
        Ok(Some(Command::Unknown {
            verb: "RE".try_into().expect("arg"),
            arg: None
        }))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = replies(&input);
        let _ = replies_chunked(&mut ReplyDecoder::with_mode(MultilineMode::Strict).with_limits(8, 32), &[&input]);
        let _ = commands(&input);
        let _ = parse_pasv(&input);
        let _ = parse_epsv(&input);
        let _ = parse_port_arg(&input);
        let _ = parse_eprt_arg(&input);
        let _ = parse_retry_hint(&input);
    }
}
