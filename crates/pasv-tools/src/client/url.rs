//! `ftp://[user[:password]@]host[:port]/path` URLs (RFC 1738 section 3.2, RFC 3986 syntax),
//! and their FTPS forms: `ftps://` (implicit TLS, port 990) and `ftpes://` (explicit TLS,
//! `AUTH TLS` on port 21), the schemes curl and lftp use.

use std::fmt;

use super::tls::TlsMode;

/// The default FTP control port (RFC 959).
pub const DEFAULT_PORT: u16 = 21;

/// The default port of implicit FTPS (`ftps://`).
pub const IMPLICIT_TLS_PORT: u16 = 990;

/// The user name sent when a URL names none (RFC 1635).
pub const ANONYMOUS_USER: &str = "anonymous";

/// The password sent with [`ANONYMOUS_USER`] when the URL gives none: an address in a domain
/// reserved for documentation (RFC 2606), as servers only check that it looks like one.
pub const ANONYMOUS_PASSWORD: &str = "anonymous@example.invalid";

/// Why a URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The URL does not start with `ftp://`, `ftps://` or `ftpes://`.
    #[error("url must start with ftp://, ftps:// (implicit TLS) or ftpes:// (explicit TLS)")]
    Scheme,
    /// The authority has no host.
    #[error("url has no host")]
    MissingHost,
    /// The port is not a number in 1..=65535.
    #[error("invalid port {0:?}")]
    Port(String),
    /// A `%` is not followed by two hex digits.
    #[error("invalid percent escape at byte {0}")]
    Percent(usize),
    /// A decoded user name or password holds CR, LF or NUL, or is not UTF-8.
    #[error("user name or password holds a forbidden byte")]
    Credentials,
    /// An IPv6 literal lacks its closing bracket.
    #[error("unterminated ipv6 literal")]
    Ipv6,
}

/// A parsed FTP URL.
///
/// The path is percent-decoded into raw bytes, since FTP names need not be UTF-8. Following
/// RFC 1738, the path after the host's `/` is relative to the login directory; an encoded
/// slash (`ftp://host/%2Fetc`) makes it absolute. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct FtpUrl {
    tls: Option<TlsMode>,
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    path: Vec<u8>,
}

impl FtpUrl {
    /// Parses `ftp://[user[:password]@]host[:port][/path]` (or `ftps://`, `ftpes://`).
    pub fn parse(input: &str) -> Result<FtpUrl, UrlError> {
        let (tls, rest) = [
            ("ftp://", None),
            ("ftps://", Some(TlsMode::Implicit)),
            ("ftpes://", Some(TlsMode::Explicit)),
        ]
        .into_iter()
        .find_map(|(scheme, tls)| strip_prefix_ignore_case(input, scheme).map(|r| (tls, r)))
        .ok_or(UrlError::Scheme)?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.find(':') {
                Some(i) => (
                    Some(decode_credential(&info[..i])?),
                    Some(decode_credential(&info[i + 1..])?),
                ),
                None => (Some(decode_credential(info)?), None),
            },
        };
        let default_port = match tls {
            Some(TlsMode::Implicit) => IMPLICIT_TLS_PORT,
            _ => DEFAULT_PORT,
        };
        let (host, port) = split_host_port(hostport, default_port)?;
        if host.is_empty() {
            return Err(UrlError::MissingHost);
        }
        // `;type=i` (RFC 1738) selects the transfer type; binary is the only type we use.
        let path = path.split(";type=").next().unwrap_or("");
        Ok(FtpUrl {
            tls,
            host: host.to_owned(),
            port,
            user: user.filter(|u| !u.is_empty()),
            password,
            path: percent_decode(path)?,
        })
    }

    /// Builds a URL from parts (the path as raw bytes, not percent-encoded).
    pub fn new(host: impl Into<String>, port: u16, path: impl Into<Vec<u8>>) -> FtpUrl {
        FtpUrl {
            tls: None,
            host: host.into(),
            port,
            user: None,
            password: None,
            path: path.into(),
        }
    }

    /// Sets the credentials.
    #[must_use]
    pub fn with_login(mut self, user: impl Into<String>, password: impl Into<String>) -> FtpUrl {
        self.user = Some(user.into());
        self.password = Some(password.into());
        self
    }

    /// Sets the TLS mode (`None`: plain FTP).
    #[must_use]
    pub fn with_tls(mut self, tls: Option<TlsMode>) -> FtpUrl {
        self.tls = tls;
        self
    }

    /// The TLS mode the scheme asks for: `ftps://` implicit, `ftpes://` explicit, `ftp://`
    /// none.
    pub fn tls(&self) -> Option<TlsMode> {
        self.tls
    }

    /// Replaces the path.
    #[must_use]
    pub fn with_path(mut self, path: impl Into<Vec<u8>>) -> FtpUrl {
        self.path = path.into();
        self
    }

    /// The host name or address literal (without IPv6 brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The control port ([`DEFAULT_PORT`] when the URL gives none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user to log in as: the URL's, or [`ANONYMOUS_USER`].
    pub fn user(&self) -> &str {
        self.user.as_deref().unwrap_or(ANONYMOUS_USER)
    }

    /// The password: the URL's, or [`ANONYMOUS_PASSWORD`] for anonymous logins, or empty.
    pub fn password(&self) -> &str {
        match (&self.user, &self.password) {
            (_, Some(p)) => p,
            (None, None) => ANONYMOUS_PASSWORD,
            (Some(_), None) => "",
        }
    }

    /// Whether the URL names no user.
    pub fn is_anonymous(&self) -> bool {
        self.user.is_none()
    }

    /// The decoded path, relative to the login directory; empty for the login directory.
    pub fn path(&self) -> &[u8] {
        &self.path
    }

    /// The last path segment (the file name), empty when the path ends in `/`.
    pub fn file_name(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[i + 1..],
            None => &self.path,
        }
    }

    /// The path up to its last `/` (the directory), empty for a bare name.
    pub fn parent(&self) -> &[u8] {
        match self.path.iter().rposition(|&b| b == b'/') {
            Some(i) => &self.path[..i],
            None => &[],
        }
    }

    /// `host:port` in a form `tokio::net::lookup_host` accepts (IPv6 bracketed).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for FtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpUrl")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("path", &String::from_utf8_lossy(&self.path))
            .finish()
    }
}

/// Shows the URL without its password.
impl fmt::Display for FtpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.tls {
            None => "ftp",
            Some(TlsMode::Implicit) => "ftps",
            Some(TlsMode::Explicit) => "ftpes",
        };
        write!(f, "{scheme}://")?;
        if let Some(user) = &self.user {
            write!(f, "{}@", percent_encode(user.as_bytes()))?;
        }
        write!(
            f,
            "{}/{}",
            self.authority(),
            percent_encode(&self.path).replace("%2F", "/")
        )
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn split_host_port(hostport: &str, default_port: u16) -> Result<(&str, u16), UrlError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let end = rest.find(']').ok_or(UrlError::Ipv6)?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(UrlError::Port(after.to_owned())),
        };
        (&rest[..end], port)
    } else {
        match hostport.rfind(':') {
            Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
            None => (hostport, None),
        }
    };
    let port = match port {
        None | Some("") => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => return Err(UrlError::Port(p.to_owned())),
        },
    };
    Ok((host, port))
}

fn decode_credential(s: &str) -> Result<String, UrlError> {
    let bytes = percent_decode(s)?;
    if bytes.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
        return Err(UrlError::Credentials);
    }
    String::from_utf8(bytes).map_err(|_| UrlError::Credentials)
}

/// Decodes `%XX` escapes into raw bytes.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).and_then(|&b| hex_value(b));
            let lo = bytes.get(i + 2).and_then(|&b| hex_value(b));
            match (hi, lo) {
                (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                _ => return Err(UrlError::Percent(i)),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

/// Encodes every byte outside RFC 3986 `unreserved` as `%XX`.
pub fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let u = FtpUrl::parse("ftp://us%65r:p%40ss%3Aw@example.org:2121/dir/f%20x.bin").unwrap();
        assert_eq!(u.host(), "example.org");
        assert_eq!(u.port(), 2121);
        assert_eq!(u.user(), "user");
        assert_eq!(u.password(), "p@ss:w");
        assert_eq!(u.path(), b"dir/f x.bin");
        assert_eq!(u.file_name(), b"f x.bin");
        assert_eq!(u.parent(), b"dir");
        assert!(!format!("{u:?}").contains("p@ss"));
        assert!(!u.to_string().contains("p@ss"));
    }

    #[test]
    fn anonymous_defaults() {
        let u = FtpUrl::parse("FTP://127.0.0.1").unwrap();
        assert_eq!(u.port(), 21);
        assert!(u.is_anonymous());
        assert_eq!(u.user(), ANONYMOUS_USER);
        assert_eq!(u.password(), ANONYMOUS_PASSWORD);
        assert_eq!(u.path(), b"");
        let u = FtpUrl::parse("ftp://bob@h/").unwrap();
        assert_eq!((u.user(), u.password()), ("bob", ""));
    }

    #[test]
    fn ipv6_and_raw_bytes() {
        let u = FtpUrl::parse("ftp://[::1]:21000/%2Fabs/%FF;type=i").unwrap();
        assert_eq!(u.host(), "::1");
        assert_eq!(u.port(), 21000);
        assert_eq!(u.path(), b"/abs/\xff");
        assert_eq!(u.authority(), "[::1]:21000");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(FtpUrl::parse("http://h/"), Err(UrlError::Scheme));
        assert_eq!(FtpUrl::parse("ftp:///x"), Err(UrlError::MissingHost));
        assert!(matches!(
            FtpUrl::parse("ftp://h:0/"),
            Err(UrlError::Port(_))
        ));
        assert!(matches!(
            FtpUrl::parse("ftp://h:99999/"),
            Err(UrlError::Port(_))
        ));
        assert_eq!(FtpUrl::parse("ftp://h/%4"), Err(UrlError::Percent(0)));
        assert_eq!(FtpUrl::parse("ftp://a%0Ab@h/"), Err(UrlError::Credentials));
        assert_eq!(FtpUrl::parse("ftp://[::1/"), Err(UrlError::Ipv6));
    }
}
