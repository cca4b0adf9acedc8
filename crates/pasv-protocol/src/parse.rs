//! nom parsers, one per grammar rule, named after the rule and quoting it.
//!
//! They run on complete input only: the framers in `decode` cut the stream into
//! lines first, so a parser never has to tell "need more bytes" from "bad input"
//! (a streaming number parser cannot tell `4,5` from `4,51`). nom's error types stay in
//! this module; callers get `Option` and map it to their own errors.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use nom::branch::alt;
use nom::bytes::complete::{tag, tag_no_case, take, take_till1, take_while1, take_while_m_n};
use nom::character::complete::{char, digit1};
use nom::combinator::{map, map_opt, opt, recognize, value, verify};
use nom::error::ErrorKind;
use nom::sequence::{pair, preceded, terminated, tuple};
use nom::IResult;

use crate::command::{EpsvArg, Structure, TransferMode, TransferType};

type Res<'a, T> = IResult<&'a [u8], T>;

/// Runs `parser` on all of `input`: `Some` only if it matched and nothing is left.
pub(crate) fn complete<'a, T>(
    mut parser: impl FnMut(&'a [u8]) -> Res<'a, T>,
    input: &'a [u8],
) -> Option<T> {
    match parser(input) {
        Ok(([], v)) => Some(v),
        _ => None,
    }
}

fn decimal<T: std::str::FromStr>(digits: &[u8]) -> Option<T> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn fail<T>(i: &[u8], kind: ErrorKind) -> Res<'_, T> {
    Err(nom::Err::Error(nom::error::Error::new(i, kind)))
}

/// RFC 959 section 4.1.2:
///
/// ```text
/// <number> ::= any decimal integer 1 through 255
/// ```
///
/// 0 is accepted (it occurs in every address with a zero octet and in ports below 256).
/// The whole digit run is taken, so `2560` fails instead of matching `256` then `0`.
/// Written out by hand rather than with `digit1` and `str::parse`: it is the inner loop
/// of the 227 scan, which the benchmarks hold to 5x the speed of a regex.
pub(crate) fn number(i: &[u8]) -> Res<'_, u8> {
    let mut value: u16 = 0;
    let mut run = 0;
    for &b in i {
        if !b.is_ascii_digit() {
            break;
        }
        if run == 3 {
            return fail(i, ErrorKind::TooLarge);
        }
        value = value * 10 + u16::from(b - b'0');
        run += 1;
    }
    if run == 0 {
        return fail(i, ErrorKind::Digit);
    }
    match u8::try_from(value) {
        Ok(n) => Ok((&i[run..], n)),
        Err(_) => fail(i, ErrorKind::TooLarge),
    }
}

/// `,` with the spaces RFC 1123 section 4.1.2.6 tells a user-FTP to tolerate after it.
fn comma(i: &[u8]) -> Res<'_, ()> {
    match i.split_first() {
        Some((b',', rest)) => {
            let spaces = rest.iter().take_while(|&&b| b == b' ').count();
            Ok((&rest[spaces..], ()))
        }
        _ => fail(i, ErrorKind::Char),
    }
}

/// RFC 959 section 4.1.2:
///
/// ```text
/// <host-port> ::= <host-number>,<port-number>
/// <host-number> ::= <number>,<number>,<number>,<number>
/// <port-number> ::= <number>,<number>
/// ```
pub(crate) fn host_port(i: &[u8]) -> Res<'_, SocketAddrV4> {
    let mut fields = [0u8; 6];
    let (mut rest, first) = number(i)?;
    fields[0] = first;
    for field in &mut fields[1..] {
        let (r, ()) = comma(rest)?;
        let (r, n) = number(r)?;
        *field = n;
        rest = r;
    }
    let [h1, h2, h3, h4, p1, p2] = fields;
    Ok((
        rest,
        SocketAddrV4::new(
            Ipv4Addr::new(h1, h2, h3, h4),
            u16::from(p1) << 8 | u16::from(p2),
        ),
    ))
}

/// Position of the first ASCII digit. Skips 16-byte chunks without a digit with a
/// branch-free test per chunk, which the compiler turns into vector compares: the text
/// before the numbers ("Entering Passive Mode (") is most of a 227 line.
fn find_digit(hay: &[u8]) -> Option<usize> {
    let mut base = 0;
    for chunk in hay.chunks_exact(16) {
        if chunk.iter().fold(false, |acc, b| acc | b.is_ascii_digit()) {
            break;
        }
        base += 16;
    }
    hay[base..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|p| base + p)
}

/// The 227 reply text, RFC 1123 section 4.1.2.6:
///
/// ```text
/// The format of the 227 reply to a PASV command is not well standardized. [...]
/// User-FTP program [...] should scan the reply for the first digit of the host and
/// port numbers.
/// ```
///
/// Tries [`host_port`] at the start of every digit run (never inside one, so `1216`
/// never yields `216`) and returns the first that matches.
pub(crate) fn pasv_reply_text(text: &[u8]) -> Option<SocketAddrV4> {
    let mut i = 0;
    while let Some(p) = find_digit(text.get(i..)?) {
        let start = i + p;
        if let Ok((_, addr)) = host_port(&text[start..]) {
            return Some(addr);
        }
        // Skip the rest of this digit run: a match may not start inside it.
        let run = text[start..]
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(text.len() - start);
        i = start + run;
    }
    None
}

/// RFC 2428 section 2 (a port number, decimal):
///
/// ```text
/// <tcp-port> ::= a decimal number 0 through 65535
/// ```
pub(crate) fn tcp_port(i: &[u8]) -> Res<'_, u16> {
    map_opt(
        digit1,
        |d: &[u8]| {
            if d.len() > 5 {
                None
            } else {
                decimal::<u16>(d)
            }
        },
    )(i)
}

/// The delimiter of EPRT and of the 229 reply, RFC 2428 section 2:
///
/// ```text
/// The delimiter character MUST be one of the ASCII characters in range 33-126
/// inclusive.
/// ```
fn delimiter(i: &[u8]) -> Res<'_, u8> {
    map(
        verify(take(1usize), |d: &[u8]| (33..=126).contains(&d[0])),
        |d: &[u8]| d[0],
    )(i)
}

/// RFC 2428 section 3:
///
/// ```text
/// <text indicating server is entering extended passive mode> (<d><d><d><tcp-port><d>)
/// ```
///
/// Matches from the `(`; the port must be 1..=65535. Text may follow.
pub(crate) fn epsv_response(i: &[u8]) -> Res<'_, u16> {
    let (i, _) = char('(')(i)?;
    let (i, d) = delimiter(i)?;
    let (i, _) = tag(&[d, d][..])(i)?;
    let (i, port) = verify(tcp_port, |&p| p != 0)(i)?;
    let (i, _) = tag(&[d, b')'][..])(i)?;
    Ok((i, port))
}

/// Tries [`epsv_response`] at every `(` of the 229 text.
pub(crate) fn epsv_reply_text(text: &[u8]) -> Option<u16> {
    let mut i = 0;
    while let Some(p) = text.get(i..)?.iter().position(|&b| b == b'(') {
        let start = i + p;
        if let Ok((_, port)) = epsv_response(&text[start..]) {
            return Some(port);
        }
        i = start + 1;
    }
    None
}

/// RFC 2428 section 2:
///
/// ```text
/// EPRT<space><d><net-prt><d><net-addr><d><tcp-port><d>
/// ```
///
/// with `<net-prt>` 1 (IPv4, dotted decimal) or 2 (IPv6, RFC 4291 text form).
pub(crate) fn eprt_arg(i: &[u8]) -> Res<'_, SocketAddr> {
    let (i, d) = delimiter(i)?;
    let (i, (prt, addr, port)) = tuple((
        terminated(digit1, tag(&[d][..])),
        terminated(take_till1(|b| b == d), tag(&[d][..])),
        terminated(tcp_port, tag(&[d][..])),
    ))(i)?;
    let text = std::str::from_utf8(addr).ok();
    let ip = match (prt, text) {
        (b"1", Some(t)) => t.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
        (b"2", Some(t)) => t.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        _ => None,
    };
    match ip {
        Some(ip) => Ok((i, SocketAddr::new(ip, port))),
        None => Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Verify,
        ))),
    }
}

/// RFC 2428 section 3:
///
/// ```text
/// EPSV<space><net-prt>
/// EPSV<space>ALL
/// ```
pub(crate) fn epsv_arg(i: &[u8]) -> Res<'_, EpsvArg> {
    alt((
        value(EpsvArg::All, tag_no_case("ALL")),
        map(
            map_opt(digit1, |d: &[u8]| decimal::<u16>(d)),
            EpsvArg::Protocol,
        ),
    ))(i)
}

/// RFC 959 section 5.3.2:
///
/// ```text
/// <form-code> ::= N | T | C
/// ```
fn form_code(i: &[u8]) -> Res<'_, ()> {
    value(
        (),
        alt((tag_no_case("N"), tag_no_case("T"), tag_no_case("C"))),
    )(i)
}

/// RFC 959 section 5.3.2:
///
/// ```text
/// <byte-size> ::= <number>
/// ```
fn byte_size(i: &[u8]) -> Res<'_, u8> {
    verify(number, |&n| n != 0)(i)
}

/// RFC 959 section 5.3.2:
///
/// ```text
/// <type-code> ::= A [<sp> <form-code>]
///               | E [<sp> <form-code>]
///               | I
///               | L <sp> <byte-size>
/// ```
///
/// Case-insensitive; `L8` without the space is accepted too.
pub(crate) fn type_code(i: &[u8]) -> Res<'_, TransferType> {
    alt((
        value(
            TransferType::Ascii,
            pair(tag_no_case("A"), opt(preceded(char(' '), form_code))),
        ),
        value(
            TransferType::Ebcdic,
            pair(tag_no_case("E"), opt(preceded(char(' '), form_code))),
        ),
        value(TransferType::Image, tag_no_case("I")),
        map(
            preceded(pair(tag_no_case("L"), opt(char(' '))), byte_size),
            TransferType::Local,
        ),
    ))(i)
}

/// RFC 959 section 5.3.2:
///
/// ```text
/// <structure-code> ::= F | R | P
/// ```
pub(crate) fn structure_code(i: &[u8]) -> Res<'_, Structure> {
    alt((
        value(Structure::File, tag_no_case("F")),
        value(Structure::Record, tag_no_case("R")),
        value(Structure::Page, tag_no_case("P")),
    ))(i)
}

/// RFC 959 section 5.3.2:
///
/// ```text
/// <mode-code> ::= S | B | C
/// ```
pub(crate) fn mode_code(i: &[u8]) -> Res<'_, TransferMode> {
    alt((
        value(TransferMode::Stream, tag_no_case("S")),
        value(TransferMode::Block, tag_no_case("B")),
        value(TransferMode::Compressed, tag_no_case("C")),
    ))(i)
}

/// RFC 3659 section 5.3 (REST in stream mode):
///
/// ```text
/// rest-cmd    = "Rest" SP 1*DIGIT CRLF
/// ```
pub(crate) fn rest_marker(i: &[u8]) -> Res<'_, u64> {
    map_opt(digit1, |d: &[u8]| decimal::<u64>(d))(i)
}

/// draft-somers-ftp-mfxx section 3 (MFMT), with RFC 3659 section 2.3 `time-val`:
///
/// ```text
/// mfmt = "MFMT" SP time-val SP pathname CRLF
/// time-val = 14DIGIT [ "." 1*DIGIT ]
/// ```
///
/// Returns the time-val and the pathname, both raw.
pub(crate) fn mfmt_args(i: &[u8]) -> Res<'_, (&[u8], &[u8])> {
    pair(terminated(time_val, char(' ')), take_while1(|_| true))(i)
}

/// RFC 3659 section 2.3:
///
/// ```text
/// time-val       = 14DIGIT [ "." 1*DIGIT ]
/// ```
pub(crate) fn time_val(i: &[u8]) -> Res<'_, &[u8]> {
    recognize(pair(
        take_while_m_n(14, 14, |b: u8| b.is_ascii_digit()),
        opt(pair(char('.'), digit1)),
    ))(i)
}

/// The retry hint of pasvd (see the crate docs):
///
/// ```text
/// retry-hint = "retry after" SP 1*20DIGIT [ "." 1*9DIGIT ] "s"
/// ```
///
/// Matched case-insensitively; the fraction is read to the nanosecond.
pub(crate) fn retry_hint(i: &[u8]) -> Res<'_, Duration> {
    let digits = |min, max| take_while_m_n(min, max, |b: u8| b.is_ascii_digit());
    let (i, _) = tag_no_case("retry after ")(i)?;
    let (i, secs) = map_opt(digits(1, 20), decimal::<u64>)(i)?;
    let (i, nanos) = opt(preceded(
        char('.'),
        map_opt(digits(1, 9), |f: &[u8]| {
            let n = decimal::<u32>(f)?;
            Some(n * 10u32.pow(9 - f.len() as u32))
        }),
    ))(i)?;
    let (i, _) = tag_no_case("s")(i)?;
    Ok((i, Duration::new(secs, nanos.unwrap_or(0))))
}

/// Tries [`retry_hint`] at every `r`/`R` of the text.
pub(crate) fn retry_hint_text(text: &[u8]) -> Option<Duration> {
    let mut i = 0;
    while let Some(p) = text
        .get(i..)?
        .iter()
        .position(|&b| b.eq_ignore_ascii_case(&b'r'))
    {
        let start = i + p;
        if let Ok((_, d)) = retry_hint(&text[start..]) {
            return Some(d);
        }
        i = start + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_takes_the_whole_digit_run() {
        assert_eq!(number(b"0,"), Ok((&b","[..], 0)));
        assert_eq!(number(b"255)"), Ok((&b")"[..], 255)));
        assert_eq!(number(b"007"), Ok((&b""[..], 7)));
        assert!(number(b"256").is_err());
        assert!(number(b"1000").is_err());
        assert!(number(b"2550").is_err());
        assert!(number(b"").is_err());
        assert!(number(b"x1").is_err());
    }

    #[test]
    fn host_port_rule() {
        let (rest, addr) = host_port(b"1,2,3,4,5,6)").expect("matches");
        assert_eq!(rest, b")");
        assert_eq!(addr, "1.2.3.4:1286".parse().expect("addr"));
        assert!(host_port(b"1,2,3,4,5").is_err());
        assert!(host_port(b"1,2,3,4,5,").is_err());
        assert_eq!(
            host_port(b"1, 2,  3,4,5,6").map(|(_, a)| a),
            Ok("1.2.3.4:1286".parse().expect("addr"))
        );
    }

    #[test]
    fn small_rules() {
        assert_eq!(complete(type_code, b"a n"), Some(TransferType::Ascii));
        assert_eq!(complete(type_code, b"L 36"), Some(TransferType::Local(36)));
        assert_eq!(complete(type_code, b"I N"), None);
        assert_eq!(complete(structure_code, b"r"), Some(Structure::Record));
        assert_eq!(complete(mode_code, b"b"), Some(TransferMode::Block));
        assert_eq!(complete(rest_marker, b"0012"), Some(12));
        assert_eq!(complete(epsv_arg, b"All"), Some(EpsvArg::All));
        assert_eq!(
            complete(time_val, b"20240229235959.5"),
            Some(&b"20240229235959.5"[..])
        );
        assert_eq!(complete(time_val, b"2024022923595"), None);
        assert_eq!(
            complete(retry_hint, b"retry after 1.25s"),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(complete(retry_hint, b"retry after 1.25"), None);
    }
}
