//! Server text made safe for a terminal.

use std::fmt::Write as _;

/// `text` with every control character shown visibly, the way `<[u8]>::escape_ascii` shows
/// them (`\x1b`, `\r`, `\t`, `\x07`; C1 controls as `\u{9b}`), line feeds kept. A server's
/// reply text, a file name or an error message goes through this before it reaches a
/// terminal, so escape sequences in a greeting cannot set the window title or clear the
/// screen. JSON output needs no such step: JSON strings escape control characters already.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push('\n'),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// [`escape_text`] for raw bytes: invalid UTF-8 is shown as `\xNN` too.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(&escape_text(chunk.valid()));
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_become_visible() {
        assert_eq!(
            escape_text("220 \x1b]0;owned\x07hi\x1b[2J\r\nnext\tline é"),
            "220 \\x1b]0;owned\\x07hi\\x1b[2J\\r\nnext\\tline é"
        );
        assert_eq!(escape_text("a\u{9b}b\u{7f}"), "a\\u{9b}b\\x7f");
        assert_eq!(escape_bytes(b"ok \xff\x1b"), "ok \\xff\\x1b");
    }
}
