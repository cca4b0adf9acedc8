//! Data-connection addresses: the 227 and 229 replies and the PORT and EPRT arguments.
//!
//! Syntax only: whether to connect to the advertised address, or to accept a PORT
//! towards a foreign host, is policy for the caller.

use std::net::{SocketAddr, SocketAddrV4};

use crate::parse;

/// Why an address could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The reply does not carry the code that holds the address.
    #[error("expected reply code {expected}, got {found}")]
    UnexpectedCode {
        /// 227 or 229.
        expected: u16,
        /// The code of the reply.
        found: u16,
    },
    /// The reply text holds no address of the expected form.
    #[error("no address found in the reply text")]
    NotFound,
    /// The argument does not match its grammar.
    #[error("invalid {what} argument")]
    Invalid {
        /// `"PORT"` or `"EPRT"`.
        what: &'static str,
    },
}

/// Reads the address of a 227 reply text by the RFC 1123 section 4.1.2.6 scanning rule.
///
/// Six decimal fields separated by commas (spaces after a comma allowed), each
/// 0..=255, starting at the beginning of a digit run; parentheses and surrounding text
/// are optional. `(1216,256,2,...)` is an error, never `216,...`.
pub fn parse_pasv(text: &[u8]) -> Result<SocketAddrV4, AddressError> {
    parse::pasv_reply_text(text).ok_or(AddressError::NotFound)
}

/// Reads the port of a 229 reply text: `(<d><d><d>port<d>)` with any delimiter byte
/// `d` in 33..=126 and a port in 1..=65535 (RFC 2428 section 3); text may follow.
pub fn parse_epsv(text: &[u8]) -> Result<u16, AddressError> {
    parse::epsv_reply_text(text).ok_or(AddressError::NotFound)
}

/// Reads a PORT argument, `h1,h2,h3,h4,p1,p2` (RFC 959 section 4.1.2).
pub fn parse_port_arg(arg: &[u8]) -> Result<SocketAddrV4, AddressError> {
    parse::complete(parse::host_port, arg).ok_or(AddressError::Invalid { what: "PORT" })
}

/// Reads an EPRT argument, `<d>1<d>ipv4<d>port<d>` or `<d>2<d>ipv6<d>port<d>` with any
/// delimiter byte in 33..=126 (RFC 2428 section 2).
pub fn parse_eprt_arg(arg: &[u8]) -> Result<SocketAddr, AddressError> {
    parse::complete(parse::eprt_arg, arg).ok_or(AddressError::Invalid { what: "EPRT" })
}

/// Formats `h1,h2,h3,h4,p1,p2`, the PORT argument and the 227 tuple.
pub fn format_port_arg(addr: SocketAddrV4) -> String {
    let [h1, h2, h3, h4] = addr.ip().octets();
    let [p1, p2] = addr.port().to_be_bytes();
    format!("{h1},{h2},{h3},{h4},{p1},{p2}")
}

/// Formats `|1|ipv4|port|` or `|2|ipv6|port|` (RFC 2428 section 2). IPv6 scope ids and
/// flow labels are not part of the syntax and are dropped.
pub fn format_eprt_arg(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("|1|{}|{}|", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("|2|{}|{}|", a.ip(), a.port()),
    }
}
