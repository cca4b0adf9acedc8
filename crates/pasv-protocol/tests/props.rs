//! Property tests: strategies for commands and replies, encode→decode round trips,
//! decode→encode→decode stability on arbitrary bytes.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use bytes::BytesMut;
use pasv_protocol::{
    format_eprt_arg, format_port_arg, format_retry_hint, parse_eprt_arg, parse_pasv,
    parse_port_arg, parse_retry_hint, Argument, Command, CommandDecoder, EpsvArg, Escaped,
    MultilineMode, Password, Reply, ReplyCode, ReplyDecoder, Structure, TextLine, TransferMode,
    TransferType,
};
use proptest::prelude::*;

use crate::util::{commands, encode_command, encode_reply, replies, replies_mode};

fn arg_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => proptest::char::range(' ', '~').prop_map(|c| c as u8),
        1 => any::<u8>().prop_filter("no CR, LF, NUL", |&b| b != b'\r' && b != b'\n' && b != 0),
    ]
}

pub fn argument() -> impl Strategy<Value = Argument> {
    proptest::collection::vec(arg_byte(), 1..24)
        .prop_map(|v| Argument::new(v).expect("strategy makes valid arguments"))
}

fn opt_argument() -> impl Strategy<Value = Option<Argument>> {
    proptest::option::of(argument())
}

fn socket_v4() -> impl Strategy<Value = SocketAddrV4> {
    (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddrV4::new(ip.into(), port))
}

fn socket() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        socket_v4().prop_map(SocketAddr::V4),
        (any::<[u16; 8]>(), any::<u16>()).prop_map(|(s, port)| {
            let ip = Ipv6Addr::new(s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]);
            SocketAddr::V6(SocketAddrV6::new(ip, port, 0, 0))
        }),
    ]
}

pub fn command() -> impl Strategy<Value = Command> {
    use Command as C;
    let simple = prop_oneof![
        Just(C::Cdup),
        Just(C::Rein),
        Just(C::Quit),
        Just(C::Pasv),
        Just(C::Abor),
        Just(C::Pwd),
        Just(C::Syst),
        Just(C::Noop),
        Just(C::Feat),
        Just(C::Ccc),
        Just(C::Epsv(EpsvArg::Any)),
        Just(C::Epsv(EpsvArg::All)),
        any::<u16>().prop_map(|n| C::Epsv(EpsvArg::Protocol(n))),
        prop_oneof![
            Just(TransferType::Ascii),
            Just(TransferType::Image),
            Just(TransferType::Ebcdic),
            (1u8..=255).prop_map(TransferType::Local),
        ]
        .prop_map(C::Type),
        prop_oneof![
            Just(Structure::File),
            Just(Structure::Record),
            Just(Structure::Page)
        ]
        .prop_map(C::Stru),
        prop_oneof![
            Just(TransferMode::Stream),
            Just(TransferMode::Block),
            Just(TransferMode::Compressed)
        ]
        .prop_map(C::Mode),
        any::<u64>().prop_map(C::Rest),
        socket_v4().prop_map(C::Port),
        socket().prop_map(C::Eprt),
    ];
    let with_arg = prop_oneof![
        argument().prop_map(C::User),
        proptest::collection::vec(arg_byte(), 0..16)
            .prop_map(|v| C::Pass(Password::new(v).expect("valid"))),
        argument().prop_map(C::Acct),
        argument().prop_map(C::Cwd),
        argument().prop_map(C::Smnt),
        argument().prop_map(C::Retr),
        argument().prop_map(C::Stor),
        opt_argument().prop_map(C::Stou),
        argument().prop_map(C::Appe),
        argument().prop_map(C::Allo),
        argument().prop_map(C::Rnfr),
        argument().prop_map(C::Rnto),
        argument().prop_map(C::Dele),
        argument().prop_map(C::Rmd),
        argument().prop_map(C::Mkd),
        opt_argument().prop_map(C::List),
        opt_argument().prop_map(C::Nlst),
        argument().prop_map(C::Site),
        opt_argument().prop_map(C::Stat),
        opt_argument().prop_map(C::Help),
        argument().prop_map(C::Opts),
        argument().prop_map(C::Size),
        argument().prop_map(C::Mdtm),
        opt_argument().prop_map(C::Mlst),
        opt_argument().prop_map(C::Mlsd),
        argument().prop_map(C::Auth),
        argument().prop_map(C::Pbsz),
        argument().prop_map(C::Prot),
        argument().prop_map(C::Clnt),
        argument().prop_map(C::Host),
    ];
    let special = prop_oneof![
        ("[0-9]{14}(\\.[0-9]{1,3})?", argument()).prop_map(|(t, path)| C::Mfmt {
            time: Argument::new(t).expect("digits"),
            path,
        }),
        // Longer than every known verb, so never one of them.
        ("[A-Z]{5,8}", opt_argument()).prop_map(|(v, arg)| C::Unknown {
            verb: Argument::new(v).expect("letters"),
            arg,
        }),
    ];
    prop_oneof![simple, with_arg, special]
}

fn text_line() -> impl Strategy<Value = TextLine> {
    proptest::collection::vec(arg_byte(), 0..24)
        .prop_map(|v| TextLine::new(v).expect("strategy makes valid lines"))
}

pub fn reply() -> impl Strategy<Value = Reply> {
    (
        100u16..=659,
        proptest::collection::vec(
            prop_oneof![
                3 => text_line(),
                // Lines that look like reply codes, to test the escape.
                1 => "[ ]{0,2}[0-9]{3}[ -]?[a-z]{0,3}".prop_map(|s| TextLine::new(s).expect("ascii")),
            ],
            1..6,
        ),
    )
        .prop_map(|(code, lines)| Reply::from_lines(ReplyCode::new(code).expect("range"), lines))
}

/// Reverses [`Escaped`]: `\\`, `\t`, `\r`, `\n`, `\xNN` (one byte) and `\u{N}` (a char).
fn unescape(shown: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chars = shown.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            continue;
        }
        match chars.next().expect("escape has a second character") {
            '\\' => out.push(b'\\'),
            't' => out.push(b'\t'),
            'r' => out.push(b'\r'),
            'n' => out.push(b'\n'),
            'x' => {
                let hex: String = chars.by_ref().take(2).collect();
                out.push(u8::from_str_radix(&hex, 16).expect("two hex digits"));
            }
            'u' => {
                assert_eq!(chars.next(), Some('{'));
                let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let c = char::from_u32(u32::from_str_radix(&hex, 16).expect("hex")).expect("char");
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            other => panic!("unknown escape \\{other} in {shown:?}"),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The allocation-free 227 and 229 encoders write exactly what building the reply and
    /// encoding it writes, and the 227 parses back to its address.
    #[test]
    fn passive_replies_encode_alike_both_ways(ip in any::<[u8; 4]>(), port in any::<u16>()) {
        let addr = SocketAddrV4::new(ip.into(), port);
        let (mut fast, mut built) = (Vec::new(), Vec::new());
        Reply::encode_entering_passive(addr, &mut fast);
        Reply::entering_passive(addr).encode(&mut built);
        prop_assert_eq!(&fast, &built);
        let (mut fast, mut built) = (Vec::new(), Vec::new());
        Reply::encode_entering_extended_passive(port, &mut fast);
        Reply::entering_extended_passive(port).encode(&mut built);
        prop_assert_eq!(&fast, &built);
        let mut decoder = ReplyDecoder::new();
        let mut buf = BytesMut::new();
        Reply::encode_entering_passive(addr, &mut buf);
        let reply = decoder.decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(reply.pasv_addr().unwrap(), addr);
    }

    /// Shown bytes hold no control character and give the original bytes back, so two
    /// different names never print the same.
    #[test]
    fn escaped_bytes_are_printable_and_reversible(pieces in proptest::collection::vec(
        prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            any::<char>().prop_map(|c| c.to_string().into_bytes()),
        ], 0..32))
    {
        let bytes = pieces.concat();
        let shown = Escaped::new(&bytes).to_string();
        prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
        prop_assert_eq!(unescape(&shown), bytes);
    }

    /// Commands print without control characters, whatever their arguments hold.
    #[test]
    fn command_display_holds_no_control_character(c in command()) {
        let shown = c.to_string();
        prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
    }

    #[test]
    fn command_round_trip(c in command()) {
        let wire = encode_command(&c);
        prop_assert_eq!(commands(&wire), vec![Ok(c)]);
    }

    #[test]
    fn command_stream_round_trip(cs in proptest::collection::vec(command(), 0..8)) {
        let mut wire = BytesMut::new();
        for c in &cs {
            c.encode(&mut wire);
        }
        let decoded: Vec<_> = commands(&wire).into_iter().map(|r| r.expect("valid")).collect();
        prop_assert_eq!(decoded, cs);
    }

    #[test]
    fn reply_round_trip(r in reply()) {
        let wire = encode_reply(&r);
        prop_assert_eq!(replies(&wire), vec![Ok(r.clone())]);
        prop_assert_eq!(replies_mode(&wire, MultilineMode::Strict), vec![Ok(r)]);
    }

    #[test]
    fn reply_stream_round_trip(rs in proptest::collection::vec(reply(), 0..8)) {
        let mut wire = Vec::new();
        for r in &rs {
            r.encode(&mut wire);
        }
        let decoded: Vec<_> = replies(&wire).into_iter().map(|r| r.expect("valid")).collect();
        prop_assert_eq!(decoded, rs);
    }

    /// decode → encode → decode gives the same command, whatever the input.
    #[test]
    fn arbitrary_command_bytes_reencode(input in proptest::collection::vec(
        prop_oneof![4 => proptest::char::range(' ', '~').prop_map(|c| c as u8), 1 => any::<u8>()], 0..200))
    {
        for c in commands(&input).into_iter().flatten() {
            let wire = encode_command(&c);
            prop_assert_eq!(commands(&wire), vec![Ok(c)]);
        }
    }

    /// decode → encode → decode gives the same code and lines, whatever the input.
    #[test]
    fn arbitrary_reply_bytes_reencode(input in proptest::collection::vec(
        prop_oneof![
            2 => Just(b'\n'), 2 => Just(b'2'), 2 => Just(b' '), 1 => Just(b'-'),
            4 => proptest::char::range('0', '9').prop_map(|c| c as u8),
            1 => any::<u8>()
        ], 0..300))
    {
        for mode in [MultilineMode::Lenient, MultilineMode::Strict] {
            for r in replies_mode(&input, mode).into_iter().flatten() {
                let wire = encode_reply(&r);
                let again = replies_mode(&wire, mode);
                prop_assert_eq!(again.len(), 1);
                let again = again[0].as_ref().expect("valid");
                prop_assert_eq!(again.code(), r.code());
                prop_assert_eq!(again.lines(), r.lines());
            }
        }
    }

    #[test]
    fn port_and_eprt_round_trip(a in socket_v4(), b in socket()) {
        prop_assert_eq!(parse_port_arg(format_port_arg(a).as_bytes()), Ok(a));
        prop_assert_eq!(parse_pasv(Reply::entering_passive(a).lines()[0].as_bytes()), Ok(a));
        prop_assert_eq!(parse_eprt_arg(format_eprt_arg(b).as_bytes()), Ok(b));
    }

    #[test]
    fn epsv_reply_round_trip(port in 1u16..) {
        prop_assert_eq!(Reply::entering_extended_passive(port).epsv_port(), Ok(port));
    }

    /// The hint never undershoots and overshoots by less than a millisecond.
    #[test]
    fn retry_hint_rounds_up(nanos in 0u64..10_000_000_000_000) {
        let d = Duration::from_nanos(nanos);
        let back = parse_retry_hint(format_retry_hint(d).as_bytes()).expect("parses");
        prop_assert!(back >= d);
        prop_assert!(back - d < Duration::from_millis(1));
        prop_assert_eq!(Reply::try_later(d).retry_after(), Some(back));
    }

    /// The decoders hold a bounded buffer whatever arrives, in any chunking.
    #[test]
    fn decoders_stay_bounded(input in proptest::collection::vec(any::<u8>(), 0..2000), chunk in 1usize..64) {
        let mut replies = ReplyDecoder::new().with_limits(16, 64);
        let mut commands = CommandDecoder::with_max_line_length(16);
        let (mut rb, mut cb) = (BytesMut::new(), BytesMut::new());
        for piece in input.chunks(chunk) {
            rb.extend_from_slice(piece);
            cb.extend_from_slice(piece);
            // Every item consumes at least one byte, so this many calls reach `Ok(None)`.
            for _ in 0..=rb.len() {
                if matches!(replies.decode(&mut rb), Ok(None)) { break; }
            }
            for _ in 0..=cb.len() {
                if matches!(commands.decode(&mut cb), Ok(None)) { break; }
            }
            prop_assert!(rb.len() <= 64 + 4, "reply buffer {}", rb.len());
            prop_assert!(cb.len() <= 16, "command buffer {}", cb.len());
        }
    }
}
