//! [`Escaped`]: bytes from the network made safe to print.

use std::fmt;

/// Bytes shown so that no control character reaches a terminal or a log file.
///
/// Printable text, UTF-8 included, is written as is. Escaped: the backslash (`\\`, so an
/// escape cannot be forged), tab, CR and LF (`\t`, `\r`, `\n`), every other C0 control and
/// DEL (`\x1b`), the C1 controls (`\u{9b}`), the Unicode line and paragraph separators and
/// the bidirectional formatting characters (`\u{202e}`), which would break a line or
/// reorder what a reader sees; and each byte of an invalid UTF-8 sequence (`\xff`), so
/// nothing is replaced and two different names never print the same.
///
/// ```
/// use pasv_protocol::Escaped;
///
/// let name = b"a\x1b[31m\x07b\\ \xffc\xc3\xa9";
/// assert_eq!(Escaped::new(name).to_string(), r"a\x1b[31m\x07b\\ \xffcé");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Escaped<'a> {
    bytes: &'a [u8],
    /// LF written as a line break, for multi-line text shown on a terminal.
    lines: bool,
}

impl<'a> Escaped<'a> {
    /// Wraps `bytes` for display.
    pub fn new(bytes: &'a [u8]) -> Escaped<'a> {
        Escaped {
            bytes,
            lines: false,
        }
    }

    /// The same, but each LF stays a line break (a multi-line reply shown to a person);
    /// everything else is escaped as with [`Escaped::new`].
    ///
    /// ```
    /// use pasv_protocol::Escaped;
    ///
    /// let text = Escaped::lines(b"220-hi\x1b]0;x\x07\r\n220 end").to_string();
    /// assert_eq!(text, "220-hi\\x1b]0;x\\x07\\r\n220 end");
    /// ```
    pub fn lines(bytes: &'a [u8]) -> Escaped<'a> {
        Escaped { bytes, lines: true }
    }
}

/// Whether `c` is shown as an escape.
fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(
            c,
            // Arabic letter mark, left-to-right and right-to-left marks, line and paragraph
            // separators, the embeddings and overrides, the isolates, the byte order mark.
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
        )
}

fn write_escape(f: &mut fmt::Formatter<'_>, c: char) -> fmt::Result {
    match c {
        '\\' => f.write_str("\\\\"),
        '\t' => f.write_str("\\t"),
        '\r' => f.write_str("\\r"),
        '\n' => f.write_str("\\n"),
        c if c.is_ascii() => write!(f, "\\x{:02x}", u32::from(c)),
        c => write!(f, "\\u{{{:x}}}", u32::from(c)),
    }
}

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.bytes.utf8_chunks() {
            let valid = chunk.valid();
            let mut plain = 0;
            for (at, c) in valid.char_indices() {
                if needs_escape(c) && !(self.lines && c == '\n') {
                    f.write_str(&valid[plain..at])?;
                    write_escape(f, c)?;
                    plain = at + c.len_utf8();
                }
            }
            f.write_str(&valid[plain..])?;
            for byte in chunk.invalid() {
                write!(f, "\\x{byte:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Escaped(\"{self}\")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(bytes: &[u8]) -> String {
        Escaped::new(bytes).to_string()
    }

    #[test]
    fn known_answers() {
        assert_eq!(shown(b"plain name.txt"), "plain name.txt");
        assert_eq!(
            shown(b"\x1b[2J\x07\x08\x0c\x7f"),
            r"\x1b[2J\x07\x08\x0c\x7f"
        );
        assert_eq!(shown(b"a\tb\rc\nd\0e"), r"a\tb\rc\nd\x00e");
        assert_eq!(shown(br"C:\x1b"), r"C:\\x1b");
        assert_eq!(shown("café ☕".as_bytes()), "café ☕");
        assert_eq!(shown(b"\xff\xfe"), r"\xff\xfe");
        // A truncated sequence: both bytes shown, the rest decoded.
        assert_eq!(shown(b"\xe2\x82x"), r"\xe2\x82x");
        // C1 CSI, a right-to-left override, a line separator.
        assert_eq!(shown("\u{9b}2J".as_bytes()), r"\u{9b}2J");
        assert_eq!(shown("txt.\u{202e}exe".as_bytes()), r"txt.\u{202e}exe");
        assert_eq!(shown("a\u{2028}b".as_bytes()), r"a\u{2028}b");
    }

    #[test]
    fn every_byte_value_comes_out_printable() {
        for b in 0..=255u8 {
            let out = shown(&[b'x', b, b'y']);
            assert!(
                !out.chars().any(needs_escape_unless_backslash),
                "byte {b:#04x} shown as {out:?}"
            );
        }
    }

    fn needs_escape_unless_backslash(c: char) -> bool {
        c != '\\' && needs_escape(c)
    }
}
