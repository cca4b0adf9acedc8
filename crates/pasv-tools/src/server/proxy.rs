//! The PROXY protocol (HAProxy's, versions 1 and 2) in front of a control connection: a load
//! balancer that forwards the connection at the TCP level sends one header naming the
//! client's address before any byte of the client's, and the session then treats that address
//! as the peer everywhere (limits, bans, logs, the PORT check, the data connection's address
//! check).
//!
//! Only sources in `proxy_from` may send a header; a connection from anywhere else is closed
//! before a byte is read, since a header from an untrusted source would let anyone claim any
//! address. The header is read exactly (no byte past it), within [`HEADER_TIMEOUT`] and at most
//! [`MAX_V1_HEADER`] or [`MAX_V2_HEADER`] bytes; the parsing is the `ppp` crate's.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest a trusted source may take to send its header. A balancer sends it with the
/// connection's first segment.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest version 1 header, `\r\n` included (the specification's bound).
pub(crate) const MAX_V1_HEADER: usize = 107;

/// Longest version 2 header accepted: the 16-byte preamble and 1 KiB of addresses and TLVs
/// (HAProxy's `send-proxy-v2` sends 28 bytes for IPv4, 52 for IPv6, more with TLVs such as
/// `unique-id`). Longer headers are refused rather than buffered.
pub(crate) const MAX_V2_HEADER: usize = 16 + 1024;

/// The 12-byte signature of a version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum HeaderError {
    /// Nothing complete within [`HEADER_TIMEOUT`].
    #[error("no complete PROXY header within {}s", HEADER_TIMEOUT.as_secs())]
    Timeout,
    /// The connection ended before the header did.
    #[error("connection closed inside the PROXY header")]
    Closed,
    /// Longer than the bound.
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    /// Not a PROXY header, or one `ppp` cannot parse.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
    /// The socket failed.
    #[error("{0}")]
    Io(io::Error),
}

/// Reads one PROXY header from `stream`, within [`HEADER_TIMEOUT`]: the client's address it
/// names, or `None` for a connection of the balancer's own (v2 `LOCAL`, v1 `UNKNOWN`, or an
/// address family without TCP addresses), which keeps the socket's peer.
pub(crate) async fn read_header<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SocketAddr>, HeaderError> {
    match tokio::time::timeout(HEADER_TIMEOUT, read_header_untimed(stream)).await {
        Ok(result) => result,
        Err(_) => Err(HeaderError::Timeout),
    }
}

async fn read_header_untimed<R: AsyncRead + Unpin>(
    stream: &mut R,
) -> Result<Option<SocketAddr>, HeaderError> {
    // Both versions are at least 15 bytes long and differ in their first 8: reading 8 takes
    // no byte past the shortest header ("PROXY UNKNOWN\r\n").
    let mut buf = vec![0u8; 8];
    read_exact(stream, &mut buf).await?;
    if buf.starts_with(b"PROXY ") {
        // Version 1: a line. Read a byte at a time, so nothing past its LF is taken from the
        // socket (the session reads the rest); at most 107 reads, once per connection.
        while !buf.ends_with(b"\r\n") {
            if buf.len() >= MAX_V1_HEADER {
                return Err(HeaderError::TooLong(MAX_V1_HEADER));
            }
            let mut byte = [0u8; 1];
            read_exact(stream, &mut byte).await?;
            buf.push(byte[0]);
        }
        let header = ppp::v1::Header::try_from(buf.as_slice())
            .map_err(|e| HeaderError::Invalid(e.to_string()))?;
        return Ok(match header.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
            }
            ppp::v1::Addresses::Unknown => None,
        });
    }
    if buf[..] != V2_SIGNATURE[..8] {
        return Err(HeaderError::Invalid(
            "neither a version 1 nor a version 2 signature".to_owned(),
        ));
    }
    buf.resize(16, 0);
    read_exact(stream, &mut buf[8..]).await?;
    if buf[..12] != V2_SIGNATURE[..] {
        return Err(HeaderError::Invalid("bad version 2 signature".to_owned()));
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_V2_HEADER {
        return Err(HeaderError::TooLong(MAX_V2_HEADER));
    }
    buf.resize(len, 0);
    read_exact(stream, &mut buf[16..]).await?;
    let header = ppp::v2::Header::try_from(buf.as_slice())
        .map_err(|e| HeaderError::Invalid(e.to_string()))?;
    if header.command == ppp::v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Some(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
    })
}

async fn read_exact<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut [u8],
) -> Result<(), HeaderError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(HeaderError::Closed),
        Err(e) => Err(HeaderError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use ppp::v2::{Builder, Command, Protocol, Version};
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn v2(addresses: ppp::v2::Addresses, command: Command) -> Vec<u8> {
        Builder::with_addresses(Version::Two | command, Protocol::Stream, addresses)
            .build()
            .expect("v2 header")
    }

    /// The header, then `after`, written in pieces cut at `split`: the header is read, its
    /// address returned, and `after` left unread.
    async fn read_split(
        header: &[u8],
        split: usize,
    ) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(b"USER x\r\n");
        let (first, second) = bytes.split_at(split.min(bytes.len()));
        let (first, second) = (first.to_vec(), second.to_vec());
        let writer = tokio::spawn(async move {
            client.write_all(&first).await.unwrap();
            tokio::task::yield_now().await;
            client.write_all(&second).await.unwrap();
            client
        });
        let result = read_header(&mut server).await;
        let _client = writer.await.unwrap();
        let mut rest = vec![0u8; 8];
        let rest = match result {
            Ok(_) => {
                server.read_exact(&mut rest).await.unwrap();
                rest
            }
            Err(_) => Vec::new(),
        };
        (result, rest)
    }

    #[tokio::test]
    async fn both_versions_give_the_source_and_leave_the_rest_unread() {
        let client4 = SocketAddr::from(([192, 0, 2, 9], 40_001));
        let client6 = SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
            40_002,
        );
        let cases: Vec<(Vec<u8>, Option<SocketAddr>)> = vec![
            (
                b"PROXY TCP4 192.0.2.9 198.51.100.1 40001 21\r\n".to_vec(),
                Some(client4),
            ),
            (
                b"PROXY TCP6 2001:db8::9 2001:db8::1 40002 21\r\n".to_vec(),
                Some(client6),
            ),
            (b"PROXY UNKNOWN\r\n".to_vec(), None),
            (
                v2(
                    ppp::v2::IPv4::new(
                        Ipv4Addr::new(192, 0, 2, 9),
                        Ipv4Addr::new(198, 51, 100, 1),
                        40_001,
                        21,
                    )
                    .into(),
                    Command::Proxy,
                ),
                Some(client4),
            ),
            (
                v2(
                    ppp::v2::IPv6::new(
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9),
                        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
                        40_002,
                        21,
                    )
                    .into(),
                    Command::Proxy,
                ),
                Some(client6),
            ),
            (v2(ppp::v2::Addresses::Unspecified, Command::Local), None),
        ];
        for (header, expected) in cases {
            for split in 0..=header.len() {
                let (result, rest) = read_split(&header, split).await;
                let got = result.unwrap_or_else(|e| panic!("{header:?} split at {split}: {e}"));
                assert_eq!(got, expected, "{header:?} split at {split}");
                assert_eq!(rest, b"USER x\r\n", "{header:?} split at {split}");
            }
        }
    }

    #[tokio::test]
    async fn garbage_and_oversized_headers_are_refused() {
        for bytes in [
            &b"USER anonymous\r\n"[..],
            b"PROXY TCP4 not-an-address 198.51.100.1 1 21\r\n",
            b"PROXY TCP4 192.0.2.9 198.51.100.1 99999 21\r\n",
            b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c",
        ] {
            let (result, _) = read_split(bytes, 3).await;
            assert!(
                matches!(result, Err(HeaderError::Invalid(_))),
                "{bytes:?}: {result:?}"
            );
        }
        // A v1 line that never ends within 107 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        let (result, _) = read_split(&long, 50).await;
        assert!(
            matches!(result, Err(HeaderError::TooLong(MAX_V1_HEADER))),
            "{result:?}"
        );
        // A v2 header announcing 64 KiB of TLVs is refused before they are read.
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        let (result, _) = read_split(&big, 16).await;
        assert!(
            matches!(result, Err(HeaderError::TooLong(MAX_V2_HEADER))),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_truncated_header_is_refused_and_a_stalled_one_times_out() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PROXY TCP4 192.0.2.9").await.unwrap();
        drop(client);
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::Closed)
        ));

        tokio::time::pause();
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PROXY TCP4 192.0.2.9").await.unwrap();
        let started = crate::clock::now();
        assert!(matches!(
            read_header(&mut server).await,
            Err(HeaderError::Timeout)
        ));
        // The timer wheel's millisecond granularity.
        let waited = started.elapsed();
        assert!(
            waited >= HEADER_TIMEOUT && waited <= HEADER_TIMEOUT + Duration::from_millis(2),
            "{waited:?}"
        );
        drop(client);
    }
}
