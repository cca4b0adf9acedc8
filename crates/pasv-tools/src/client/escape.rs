//! Server text made safe for a terminal.

use pasv_protocol::Escaped;

/// `text` with every control character shown visibly (`\x1b`, `\r`, `\t`, `\x07`; C1
/// controls and bidirectional overrides as `\u{9b}`), line feeds kept: [`Escaped::lines`].
/// A server's reply text, a file name or an error message goes through this before it
/// reaches a terminal, so escape sequences in a greeting cannot set the window title or
/// clear the screen. JSON output needs no such step: JSON strings escape control
/// characters already.
pub fn escape_text(text: &str) -> String {
    Escaped::lines(text.as_bytes()).to_string()
}

/// [`escape_text`] for raw bytes: invalid UTF-8 is shown as `\xNN` too.
pub fn escape_bytes(bytes: &[u8]) -> String {
    Escaped::lines(bytes).to_string()
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
