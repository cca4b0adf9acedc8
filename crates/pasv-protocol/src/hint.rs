//! The machine-readable retry hint of pasvd's 425 replies (format in the crate docs).

use std::time::Duration;

use crate::parse;

/// Formats `retry after 37s` or `retry after 0.25s`.
///
/// Seconds, an integer when whole, else up to three decimals with trailing zeros
/// trimmed; always rounded up to the millisecond, so a client that waits that long
/// never comes back early.
pub fn format_retry_hint(d: Duration) -> String {
    let millis = d.as_nanos().div_ceil(1_000_000);
    let (secs, frac) = (millis / 1000, millis % 1000);
    if frac == 0 {
        format!("retry after {secs}s")
    } else {
        let digits = format!("{frac:03}");
        format!("retry after {secs}.{}s", digits.trim_end_matches('0'))
    }
}

/// Finds the first retry hint in `text` (case-insensitive); `None` if there is none.
///
/// Accepts up to nine decimals; a number of seconds that overflows `u64` is no hint.
pub fn parse_retry_hint(text: &[u8]) -> Option<Duration> {
    parse::retry_hint_text(text)
}
