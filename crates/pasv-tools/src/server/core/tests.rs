//! Known-answer tests of the session rules: command sequences in, replies and actions out,
//! no sockets, no files, a fake clock.

use super::*;

#[test]
fn pathnames_are_quoted_by_doubling() {
    assert_eq!(quote_path(b"/a\"b"), b"\"/a\"\"b\"");
}

#[test]
fn stat_listings_are_capped_and_say_so() {
    let short = stat_listing(b"a\r\nb\r\n");
    assert_eq!(short, b"Status follows:\n a\n b\nEnd of status");
    let mut body = Vec::new();
    for i in 0..STAT_MAX_ENTRIES + 5 {
        body.extend_from_slice(format!("entry {i}\r\n").as_bytes());
    }
    let capped = stat_listing(&body);
    assert_eq!(
        capped
            .split(|&b| b == b'\n')
            .filter(|l| l.starts_with(b" entry"))
            .count(),
        STAT_MAX_ENTRIES
    );
    let last = format!(
        "End of status: first {STAT_MAX_ENTRIES} of {} entries; LIST shows all",
        STAT_MAX_ENTRIES + 5
    );
    assert!(capped.ends_with(last.as_bytes()));
    // Long lines: the byte cap comes first, and no later (shorter) line slips in.
    let long = vec![b'x'; 4000];
    let mut body = Vec::new();
    for _ in 0..1000 {
        body.extend_from_slice(&long);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"y\r\n");
    let capped = stat_listing(&body);
    assert!(capped.len() <= STAT_MAX_BYTES + 100, "{}", capped.len());
    assert!(!capped.windows(3).any(|w| w == b" y\n"));
    let shown = (STAT_MAX_BYTES - 16) / 4002;
    let last = format!("End of status: first {shown} of 1001 entries; LIST shows all");
    assert!(
        capped.ends_with(last.as_bytes()),
        "{}",
        String::from_utf8_lossy(&capped[capped.len() - 80..])
    );
}
