//! Known answers for the retry hint.

use std::time::Duration;

use pasv_protocol::{format_retry_hint, parse_retry_hint};

#[test]
fn format_known_answers() {
    let table = [
        (Duration::from_secs(37), "retry after 37s"),
        (Duration::from_millis(250), "retry after 0.25s"),
        (Duration::from_millis(1500), "retry after 1.5s"),
        (Duration::from_millis(1), "retry after 0.001s"),
        (Duration::from_nanos(1), "retry after 0.001s"),
        (Duration::from_nanos(1_000_500_000), "retry after 1.001s"),
        (Duration::from_nanos(999_999_999), "retry after 1s"),
        (Duration::ZERO, "retry after 0s"),
        (Duration::from_secs(120), "retry after 120s"),
    ];
    for (d, text) in table {
        assert_eq!(format_retry_hint(d), text, "{d:?}");
    }
}

#[test]
fn parse_known_answers() {
    let table: &[(&[u8], Option<Duration>)] = &[
        (
            b"Try later, data connection in use (retry after 37s)",
            Some(Duration::from_secs(37)),
        ),
        (b"retry after 0.25s", Some(Duration::from_millis(250))),
        (b"Retry After 1.5S", Some(Duration::from_millis(1500))),
        (
            b"retry after 0.123456789s",
            Some(Duration::from_nanos(123_456_789)),
        ),
        (b"rr retry retry after 2s", Some(Duration::from_secs(2))),
        (b"retry after s", None),
        (b"retry after 1.s", None),
        (b"retry after 1", None),
        (b"retry after -1s", None),
        (b"retry after 0.1234567891s", None),
        (b"retry after 99999999999999999999s", None),
        (b"retry  after 1s", None),
        (b"", None),
    ];
    for &(text, expected) in table {
        assert_eq!(parse_retry_hint(text), expected, "{}", text.escape_ascii());
    }
}
