//! Known answers for the 227, 229, PORT and EPRT address forms.

use std::net::{SocketAddr, SocketAddrV4};

use pasv_protocol::{
    format_eprt_arg, format_port_arg, parse_eprt_arg, parse_epsv, parse_pasv, parse_port_arg,
    AddressError, Reply, ReplyCode,
};

fn v4(s: &str) -> SocketAddrV4 {
    s.parse().expect("address")
}

#[test]
fn pasv_scanning_rule() {
    let table: &[(&[u8], Option<&str>)] = &[
        (
            b"Entering Passive Mode (192,168,1,2,4,1).",
            Some("192.168.1.2:1025"),
        ),
        (
            b"Entering Passive Mode 192,168,1,2,4,1",
            Some("192.168.1.2:1025"),
        ),
        (b"=10,0,0,1,200,10", Some("10.0.0.1:51210")),
        (
            b"Entering Passive Mode (10, 0, 0, 1, 200, 10)",
            Some("10.0.0.1:51210"),
        ),
        (b"(0,0,0,0,0,0)", Some("0.0.0.0:0")),
        (b"(255,255,255,255,255,255)", Some("255.255.255.255:65535")),
        (b"(01,002,3,4,5,6)", Some("1.2.3.4:1286")),
        // A digit run that is not an address is skipped.
        (b"Mode 2 ok (1,2,3,4,5,6)", Some("1.2.3.4:1286")),
        (b"(1,2,3,4,5,6,7)", Some("1.2.3.4:1286")),
        // Never inside a digit run: 1216 does not yield 216.
        (b"(1216,256,2,3,4,5)", None),
        (b"(1216,25,2,3,4)", None),
        (b"(1,2,3,4,5,256)", None),
        (b"(1,2,3,4,5,1234)", None),
        (b"(1,2,3,4,5)", None),
        (b"(1,2,3,4,5,)", None),
        (b"(1 ,2,3,4,5,6)", None),
        (b"(1,,2,3,4,5,6)", None),
        (b"Entering Passive Mode", None),
        (b"", None),
    ];
    for &(text, expected) in table {
        let got = parse_pasv(text);
        match expected {
            Some(a) => assert_eq!(got, Ok(v4(a)), "{}", text.escape_ascii()),
            None => assert_eq!(got, Err(AddressError::NotFound), "{}", text.escape_ascii()),
        }
    }
}

#[test]
fn epsv_reply() {
    let table: &[(&[u8], Option<u16>)] = &[
        (b"Entering Extended Passive Mode (|||6446|)", Some(6446)),
        (b"Entering Extended Passive Mode (!!!6446!)", Some(6446)),
        (b"(~~~1~)", Some(1)),
        (b"(|||65535|) trailing text", Some(65535)),
        (b"x (y) (|||21|)", Some(21)),
        (b"(|||0|)", None),
        (b"(|||65536|)", None),
        (b"(|!|6446|)", None),
        (b"(|||6446!)", None),
        (b"(|||6446|", None),
        (b"|||6446|", None),
        (b"(   6446 )", None),
        (b"(\x7f\x7f\x7f6446\x7f)", None),
        (b"(|||+6446|)", None),
        (b"", None),
    ];
    for &(text, expected) in table {
        assert_eq!(parse_epsv(text).ok(), expected, "{}", text.escape_ascii());
    }
}

#[test]
fn port_argument() {
    assert_eq!(parse_port_arg(b"127,0,0,1,4,1"), Ok(v4("127.0.0.1:1025")));
    for bad in [
        &b"127,0,0,1,4"[..],
        b"127,0,0,1,4,1,",
        b"127,0,0,1,4,1 ",
        b" 127,0,0,1,4,1",
        b"a",
        b"",
        b"1,2,3,4,5,256",
    ] {
        assert_eq!(
            parse_port_arg(bad),
            Err(AddressError::Invalid { what: "PORT" }),
            "{}",
            bad.escape_ascii()
        );
    }
}

#[test]
fn eprt_argument() {
    let sa = |s: &str| -> SocketAddr { s.parse().expect("address") };
    let table: &[(&[u8], Option<SocketAddr>)] = &[
        (b"|1|132.235.1.2|6275|", Some(sa("132.235.1.2:6275"))),
        (
            b"|2|1080::8:800:200C:417A|5282|",
            Some(sa("[1080::8:800:200c:417a]:5282")),
        ),
        (b"|2|::1|21|", Some(sa("[::1]:21"))),
        (b"#1#10.0.0.1#21#", Some(sa("10.0.0.1:21"))),
        (b"|1|1.2.3.4|0|", Some(sa("1.2.3.4:0"))),
        (b"|1|1.2.3.4|21", None),
        (b"|1|1.2.3.4|21||", None),
        (b"|1|1.2.3.4#21|", None),
        (b"|3|1.2.3.4|21|", None),
        (b"|1|::1|21|", None),
        (b"|2|1.2.3.4|21|", None),
        (b"|1|1.2.3.256|21|", None),
        (b"|1||21|", None),
        (b" 1 1.2.3.4 21 ", None),
        (b"", None),
    ];
    for &(text, expected) in table {
        assert_eq!(
            parse_eprt_arg(text).ok(),
            expected,
            "{}",
            text.escape_ascii()
        );
    }
}

#[test]
fn canonical_formats() {
    assert_eq!(format_port_arg(v4("127.0.0.1:1025")), "127,0,0,1,4,1");
    assert_eq!(format_port_arg(v4("0.0.0.0:65535")), "0,0,0,0,255,255");
    assert_eq!(
        format_eprt_arg("132.235.1.2:6275".parse().expect("addr")),
        "|1|132.235.1.2|6275|"
    );
    assert_eq!(
        format_eprt_arg("[1080::8:800:200C:417A]:5282".parse().expect("addr")),
        "|2|1080::8:800:200c:417a|5282|"
    );
}

#[test]
fn reply_address_accessors() {
    let r = Reply::entering_passive(v4("10.1.2.3:50000"));
    assert_eq!(r.pasv_addr(), Ok(v4("10.1.2.3:50000")));
    assert_eq!(
        r.epsv_port(),
        Err(AddressError::UnexpectedCode {
            expected: 229,
            found: 227
        })
    );
    let r = Reply::entering_extended_passive(50000);
    assert_eq!(r.epsv_port(), Ok(50000));
    assert!(r.pasv_addr().is_err());
    let r = Reply::new(ReplyCode::ENTERING_PASSIVE, "no address here");
    assert_eq!(r.pasv_addr(), Err(AddressError::NotFound));
}
