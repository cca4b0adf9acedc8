//! Known answers for command decoding and encoding.

use std::net::SocketAddr;

use pasv_protocol::{
    Argument, Command, CommandError, EpsvArg, InvalidArgument, Password, ReplyCode, Structure,
    TransferMode, TransferType,
};

use crate::util::{commands, encode_command, one_command};

fn arg(s: &[u8]) -> Argument {
    Argument::new(s).expect("valid argument")
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

/// (wire, command, canonical wire when it differs).
type KnownAnswer = (&'static [u8], Command, Option<&'static [u8]>);

fn table() -> Vec<KnownAnswer> {
    use Command as C;
    vec![
        (b"USER anonymous\r\n", C::User(arg(b"anonymous")), None),
        (b"user bob\n", C::User(arg(b"bob")), Some(b"USER bob\r\n")),
        (b"PASS\r\n", C::Pass(Password::new("").expect("pw")), None),
        (
            b"PASS \r\n",
            C::Pass(Password::new("").expect("pw")),
            Some(b"PASS\r\n"),
        ),
        (
            b"PASS s3cr et \r\n",
            C::Pass(Password::new("s3cr et ").expect("pw")),
            None,
        ),
        (b"ACCT acc\r\n", C::Acct(arg(b"acc")), None),
        (b"CWD /a b\r\n", C::Cwd(arg(b"/a b")), None),
        (b"XCWD d\r\n", C::Cwd(arg(b"d")), Some(b"CWD d\r\n")),
        (b"CDUP\r\n", C::Cdup, None),
        (b"XCUP\r\n", C::Cdup, Some(b"CDUP\r\n")),
        (b"SMNT /mnt\r\n", C::Smnt(arg(b"/mnt")), None),
        (b"REIN\r\n", C::Rein, None),
        (b"QUIT\r\n", C::Quit, None),
        (b"quit\r\n", C::Quit, Some(b"QUIT\r\n")),
        (
            b"PORT 127,0,0,1,4,1\r\n",
            C::Port("127.0.0.1:1025".parse().expect("addr")),
            None,
        ),
        (b"PASV\r\n", C::Pasv, None),
        (b"PASV \r\n", C::Pasv, Some(b"PASV\r\n")),
        (b"EPSV\r\n", C::Epsv(EpsvArg::Any), None),
        (b"EPSV ALL\r\n", C::Epsv(EpsvArg::All), None),
        (
            b"epsv all\r\n",
            C::Epsv(EpsvArg::All),
            Some(b"EPSV ALL\r\n"),
        ),
        (b"EPSV 1\r\n", C::Epsv(EpsvArg::Protocol(1)), None),
        (b"EPSV 2\r\n", C::Epsv(EpsvArg::Protocol(2)), None),
        (
            b"EPRT |1|132.235.1.2|6275|\r\n",
            C::Eprt(sa("132.235.1.2:6275")),
            None,
        ),
        (
            b"EPRT |2|1080::8:800:200C:417A|5282|\r\n",
            C::Eprt(sa("[1080::8:800:200c:417a]:5282")),
            Some(b"EPRT |2|1080::8:800:200c:417a|5282|\r\n"),
        ),
        (
            b"EPRT !1!10.0.0.1!21!\r\n",
            C::Eprt(sa("10.0.0.1:21")),
            Some(b"EPRT |1|10.0.0.1|21|\r\n"),
        ),
        (b"TYPE A\r\n", C::Type(TransferType::Ascii), None),
        (
            b"TYPE A N\r\n",
            C::Type(TransferType::Ascii),
            Some(b"TYPE A\r\n"),
        ),
        (
            b"type a t\r\n",
            C::Type(TransferType::Ascii),
            Some(b"TYPE A\r\n"),
        ),
        (b"TYPE I\r\n", C::Type(TransferType::Image), None),
        (
            b"type i\r\n",
            C::Type(TransferType::Image),
            Some(b"TYPE I\r\n"),
        ),
        (b"TYPE E\r\n", C::Type(TransferType::Ebcdic), None),
        (
            b"TYPE E C\r\n",
            C::Type(TransferType::Ebcdic),
            Some(b"TYPE E\r\n"),
        ),
        (b"TYPE L 8\r\n", C::Type(TransferType::Local(8)), None),
        (
            b"TYPE L8\r\n",
            C::Type(TransferType::Local(8)),
            Some(b"TYPE L 8\r\n"),
        ),
        (b"STRU F\r\n", C::Stru(Structure::File), None),
        (b"STRU R\r\n", C::Stru(Structure::Record), None),
        (b"STRU P\r\n", C::Stru(Structure::Page), None),
        (b"MODE S\r\n", C::Mode(TransferMode::Stream), None),
        (b"MODE B\r\n", C::Mode(TransferMode::Block), None),
        (b"MODE C\r\n", C::Mode(TransferMode::Compressed), None),
        (b"RETR a.txt\r\n", C::Retr(arg(b"a.txt")), None),
        (b"STOR a.txt\r\n", C::Stor(arg(b"a.txt")), None),
        (b"STOU\r\n", C::Stou(None), None),
        (b"STOU x\r\n", C::Stou(Some(arg(b"x"))), None),
        (b"APPE log\r\n", C::Appe(arg(b"log")), None),
        (b"ALLO 100 R 10\r\n", C::Allo(arg(b"100 R 10")), None),
        (b"REST 0\r\n", C::Rest(0), None),
        (b"REST 1048576\r\n", C::Rest(1_048_576), None),
        (b"REST 18446744073709551615\r\n", C::Rest(u64::MAX), None),
        (b"RNFR a\r\n", C::Rnfr(arg(b"a")), None),
        (b"RNTO b\r\n", C::Rnto(arg(b"b")), None),
        (b"ABOR\r\n", C::Abor, None),
        (b"DELE a\r\n", C::Dele(arg(b"a")), None),
        (b"RMD d\r\n", C::Rmd(arg(b"d")), None),
        (b"XRMD d\r\n", C::Rmd(arg(b"d")), Some(b"RMD d\r\n")),
        (b"MKD d\r\n", C::Mkd(arg(b"d")), None),
        (b"XMKD d\r\n", C::Mkd(arg(b"d")), Some(b"MKD d\r\n")),
        (b"PWD\r\n", C::Pwd, None),
        (b"XPWD\r\n", C::Pwd, Some(b"PWD\r\n")),
        (b"LIST\r\n", C::List(None), None),
        (b"LIST -la\r\n", C::List(Some(arg(b"-la"))), None),
        (b"LIST -a /pub\r\n", C::List(Some(arg(b"-a /pub"))), None),
        (b"NLST\r\n", C::Nlst(None), None),
        (b"NLST -a\r\n", C::Nlst(Some(arg(b"-a"))), None),
        (b"SITE CHMOD 755 x\r\n", C::Site(arg(b"CHMOD 755 x")), None),
        (b"SYST\r\n", C::Syst, None),
        (b"STAT\r\n", C::Stat(None), None),
        (b"STAT /pub\r\n", C::Stat(Some(arg(b"/pub"))), None),
        (b"HELP\r\n", C::Help(None), None),
        (b"HELP RETR\r\n", C::Help(Some(arg(b"RETR"))), None),
        (b"NOOP\r\n", C::Noop, None),
        (b"FEAT\r\n", C::Feat, None),
        (b"OPTS UTF8 ON\r\n", C::Opts(arg(b"UTF8 ON")), None),
        (b"SIZE a\r\n", C::Size(arg(b"a")), None),
        (b"MDTM a\r\n", C::Mdtm(arg(b"a")), None),
        (
            b"MFMT 20200101120000 a b\r\n",
            C::Mfmt {
                time: arg(b"20200101120000"),
                path: arg(b"a b"),
            },
            None,
        ),
        (
            b"MFMT 20200101120000.123 x\r\n",
            C::Mfmt {
                time: arg(b"20200101120000.123"),
                path: arg(b"x"),
            },
            None,
        ),
        (b"MLST\r\n", C::Mlst(None), None),
        (b"MLST a\r\n", C::Mlst(Some(arg(b"a"))), None),
        (b"MLSD\r\n", C::Mlsd(None), None),
        (b"MLSD /d\r\n", C::Mlsd(Some(arg(b"/d"))), None),
        (b"AUTH TLS\r\n", C::Auth(arg(b"TLS")), None),
        (b"PBSZ 0\r\n", C::Pbsz(arg(b"0")), None),
        (b"PROT P\r\n", C::Prot(arg(b"P")), None),
        (b"CCC\r\n", C::Ccc, None),
        (b"CLNT lftp 4.9\r\n", C::Clnt(arg(b"lftp 4.9")), None),
        (
            b"HOST ftp.example.com\r\n",
            C::Host(arg(b"ftp.example.com")),
            None,
        ),
        (
            b"XYZZY plugh\r\n",
            C::Unknown {
                verb: arg(b"XYZZY"),
                arg: Some(arg(b"plugh")),
            },
            None,
        ),
        (
            b"lprt\r\n",
            C::Unknown {
                verb: arg(b"LPRT"),
                arg: None,
            },
            Some(b"LPRT\r\n"),
        ),
        // Raw arguments: only the single separator is taken.
        (b"RETR  lead\r\n", C::Retr(arg(b" lead")), None),
        (b"RETR trail  \r\n", C::Retr(arg(b"trail  ")), None),
        (
            b"RETR \xe9t\xe9.txt\r\n",
            C::Retr(arg(b"\xe9t\xe9.txt")),
            None,
        ),
        // Telnet: IAC IAC is a literal 0xFF, doubled again on encoding.
        (b"RETR a\xff\xffb\r\n", C::Retr(arg(b"a\xffb")), None),
        // IAC IP IAC DM before ABOR (lftp, ftplib).
        (b"\xff\xf4\xff\xf2ABOR\r\n", C::Abor, Some(b"ABOR\r\n")),
        // The same with the DM removed as TCP urgent data.
        (b"\xff\xf4\xffABOR\r\n", C::Abor, Some(b"ABOR\r\n")),
        // IAC WILL ECHO, IAC SB ... IAC SE, IAC NOP, a lone IAC at the end.
        (b"\xff\xfb\x01NOOP\r\n", C::Noop, Some(b"NOOP\r\n")),
        (
            b"\xff\xfa\x18\x01\xff\xf0QUIT\r\n",
            C::Quit,
            Some(b"QUIT\r\n"),
        ),
        (b"NO\xff\xf1OP\xff\r\n", C::Noop, Some(b"NOOP\r\n")),
        (b"\xff\xfd\x00NOOP\r\n", C::Noop, Some(b"NOOP\r\n")),
    ]
}

#[test]
fn decode_and_encode_known_answers() {
    for (wire, command, canonical) in table() {
        let decoded = one_command(wire);
        assert_eq!(decoded.as_ref(), Ok(&command), "{}", wire.escape_ascii());
        let encoded = encode_command(&command);
        assert_eq!(
            encoded,
            canonical.unwrap_or(wire),
            "encoding {command:?}: {}",
            encoded.escape_ascii()
        );
        // The canonical form decodes to the same command.
        assert_eq!(one_command(&encoded), Ok(command));
    }
}

#[test]
fn every_verb_has_a_known_answer() {
    let verbs: std::collections::BTreeSet<String> = table()
        .iter()
        .map(|(_, c, _)| c.verb().to_owned())
        .collect();
    for v in [
        "USER", "PASS", "ACCT", "CWD", "CDUP", "SMNT", "REIN", "QUIT", "PORT", "PASV", "EPSV",
        "EPRT", "TYPE", "STRU", "MODE", "RETR", "STOR", "STOU", "APPE", "ALLO", "REST", "RNFR",
        "RNTO", "ABOR", "DELE", "RMD", "MKD", "PWD", "LIST", "NLST", "SITE", "SYST", "STAT",
        "HELP", "NOOP", "FEAT", "OPTS", "SIZE", "MDTM", "MFMT", "MLST", "MLSD", "AUTH", "PBSZ",
        "PROT", "CCC", "CLNT", "HOST",
    ] {
        assert!(verbs.contains(v), "{v} has no known answer");
    }
}

#[test]
fn bad_lines_are_errors() {
    use CommandError as E;
    let missing = |verb| Err(E::MissingArgument { verb });
    let table: Vec<(&[u8], Result<Command, CommandError>)> = vec![
        (b"\r\n", Err(E::Empty)),
        (b"\n", Err(E::Empty)),
        (b"   \r\n", Err(E::Empty)),
        (b"\xff\xf4\xff\xf2\r\n", Err(E::Empty)),
        (b"RE\0TR a\r\n", Err(E::InvalidByte { byte: 0 })),
        (b"RETR a\0\r\n", Err(E::InvalidByte { byte: 0 })),
        (b"RETR a\rb\r\n", Err(E::InvalidByte { byte: b'\r' })),
        (b"RETR a\r\r\n", Err(E::InvalidByte { byte: b'\r' })),
        (b" RETR a\r\n", Err(E::InvalidVerb)),
        (b"R\xc3\xa9TR a\r\n", Err(E::InvalidVerb)),
        (b"ABCDEFGHIJKLMNOPQ\r\n", Err(E::InvalidVerb)),
        (b"RETR\r\n", missing("RETR")),
        (b"RETR \r\n", missing("RETR")),
        (b"USER\r\n", missing("USER")),
        (b"CWD\r\n", missing("CWD")),
        (b"PORT\r\n", missing("PORT")),
    ];
    for (wire, expected) in table {
        assert_eq!(one_command(wire), expected, "{}", wire.escape_ascii());
    }
    // Arguments each verb refuses, with the reason it gives.
    let invalid: &[(&str, &str, &[&str])] = &[
        (
            "PORT",
            "expected h1,h2,h3,h4,p1,p2",
            &["1,2,3", "256,0,0,1,1,1", "1,2,3,4,5,6,7", "1,2,3,4,5,0006"],
        ),
        (
            "TYPE",
            "expected A, I, E or L n",
            &["X", "L 0", "L 256", "A X"],
        ),
        ("STRU", "expected F, R or P", &["X"]),
        ("MODE", "expected S, B or C", &["X"]),
        (
            "REST",
            "expected a byte offset",
            &["abc", "-1", "18446744073709551616"],
        ),
        (
            "EPSV",
            "expected ALL or a protocol number",
            &["3x", "99999"],
        ),
        (
            "EPRT",
            "expected |1|ipv4|port| or |2|ipv6|port|",
            &[
                "|3|x|1|",
                "|1|::1|21|",
                "|2|1.2.3.4|21|",
                "|1|1.2.3.4|65536|",
                "|1|1.2.3.4|21",
            ],
        ),
        ("PASV", "takes no argument", &["x"]),
        ("QUIT", "takes no argument", &["now"]),
        (
            "MFMT",
            "expected YYYYMMDDHHMMSS and a path",
            &["2020 a", "20200101120000", "20200101120000 "],
        ),
    ];
    for &(verb, reason, args) in invalid {
        for arg in args {
            let wire = format!("{verb} {arg}\r\n");
            assert_eq!(
                one_command(wire.as_bytes()),
                Err(E::InvalidArgument { verb, reason }),
                "{}",
                wire.escape_debug()
            );
        }
    }
}

#[test]
fn reply_codes_of_errors() {
    assert_eq!(CommandError::Empty.reply_code(), ReplyCode::SYNTAX_ERROR);
    assert_eq!(
        CommandError::LineTooLong { limit: 4096 }.reply_code(),
        ReplyCode::SYNTAX_ERROR
    );
    assert_eq!(
        CommandError::InvalidByte { byte: 0 }.reply_code(),
        ReplyCode::SYNTAX_ERROR
    );
    assert_eq!(
        CommandError::MissingArgument { verb: "RETR" }.reply_code(),
        ReplyCode::SYNTAX_ERROR_ARGS
    );
    assert_eq!(
        CommandError::InvalidArgument {
            verb: "PORT",
            reason: "x"
        }
        .reply_code(),
        ReplyCode::SYNTAX_ERROR_ARGS
    );
}

#[test]
fn line_cap_and_recovery() {
    let mut input = vec![b'A'; 5000];
    input.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(
        commands(&input),
        vec![
            Err(CommandError::LineTooLong { limit: 4096 }),
            Ok(Command::Noop)
        ]
    );
    // 4096 bytes before the LF (CR included) pass; 4097 do not.
    for (len, ok) in [(4096usize, true), (4097, false)] {
        let mut line = b"RETR ".to_vec();
        line.extend(vec![b'x'; len - 6]);
        line.extend_from_slice(b"\r\n");
        let all = commands(&line);
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].is_ok(), ok, "{len}");
    }
}

#[test]
fn partial_line_at_eof_is_dropped() {
    assert_eq!(commands(b"NOOP\r\nQUI"), vec![Ok(Command::Noop)]);
}

#[test]
fn display_redacts_the_password() {
    let pass = Command::Pass(Password::new("hunter2").expect("pw"));
    assert_eq!(pass.to_string(), "PASS <redacted>");
    assert_eq!(format!("{pass:?}"), "Pass(Password(<redacted>))");
    assert!(!format!("{:?}", one_command(b"PASS hunter2\r\n")).contains("hunter2"));
    assert_eq!(
        Command::Port("1.2.3.4:21".parse().expect("addr")).to_string(),
        "PORT 1,2,3,4,0,21"
    );
    assert_eq!(Command::Retr(arg(b"a b")).to_string(), "RETR a b");
    assert_eq!(
        Command::Mfmt {
            time: arg(b"20200101000000"),
            path: arg(b"f")
        }
        .to_string(),
        "MFMT 20200101000000 f"
    );
}

#[test]
fn display_escapes_control_characters_and_bytes_that_are_not_utf8() {
    let hostile = arg(b"a\x1b]0;owned\x07\x1b[2J\x01\xff\\b");
    assert_eq!(
        Command::User(hostile.clone()).to_string(),
        r"USER a\x1b]0;owned\x07\x1b[2J\x01\xff\\b"
    );
    assert_eq!(
        Command::Mfmt {
            time: arg(b"20200101000000"),
            path: hostile,
        }
        .to_string(),
        r"MFMT 20200101000000 a\x1b]0;owned\x07\x1b[2J\x01\xff\\b"
    );
    let unknown = one_command(b"XYZZY \x1b[31mred\x0b\r\n").expect("decodes");
    assert_eq!(unknown.to_string(), r"XYZZY \x1b[31mred\x0b");
}

#[test]
fn arguments_cannot_hold_line_breaks() {
    assert_eq!(Argument::new(""), Err(InvalidArgument::Empty));
    for (bad, byte) in [(&b"a\rb"[..], b'\r'), (b"a\nb", b'\n'), (b"a\0b", 0)] {
        assert_eq!(
            Argument::new(bad),
            Err(InvalidArgument::ForbiddenByte { byte })
        );
        assert_eq!(
            Password::new(bad),
            Err(InvalidArgument::ForbiddenByte { byte })
        );
    }
    assert!(Password::new("").is_ok());
    assert_eq!(
        Argument::try_from("x").map(|a| a.to_string_lossy().into_owned()),
        Ok("x".into())
    );
    assert!(Argument::try_from(&b"x"[..]).is_ok());
    assert!(Argument::try_from(String::from("x")).is_ok());
    assert!(Argument::try_from(vec![b'x']).is_ok());
    assert!(Argument::try_from(vec![]).is_err());
}

#[test]
fn verbs_are_upper_case() {
    assert_eq!(
        one_command(b"retr x\r\n").map(|c| c.verb().to_owned()),
        Ok("RETR".into())
    );
    assert_eq!(
        one_command(b"xyzzy\r\n").map(|c| c.verb().to_owned()),
        Ok("XYZZY".into())
    );
}
