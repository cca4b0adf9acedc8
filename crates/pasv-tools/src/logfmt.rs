//! The binaries' plain text log line, cheaper to write than tracing-subscriber's default.
//!
//! pasvd writes one line per transfer (docs/LOGS.md), so at 10,000 transfers/s the text log
//! is part of every transfer's cost: with tracing-subscriber's `Full` format it was about
//! 9 µs of the server core per transfer (10% of the whole, measured with `PASVD_LOG=warn`
//! against `info`), most of it in formatting the date and time field by field, painting
//! names through the colour wrappers even when colours are off, and escaping every string
//! character by character. [`PlainText`] writes the same bytes with fewer steps: the date and
//! time up to the second are formatted once per second and thread, and a string with nothing
//! to escape is copied as it is. The output is byte for byte the `Full` format without
//! colours, for events outside spans (pasvd opens none); a unit test holds the two side by
//! side. Terminals keep tracing-subscriber's coloured format.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::UNIX_EPOCH;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::server::listing::Civil;

/// The plain (no colour) text format: `2026-12-03T12:57:13.847232Z  INFO target: message
/// name=value ...`, as tracing-subscriber's `Full` format writes it. Events inside spans get
/// the span names and fields in front of the target as that format does.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainText;

thread_local! {
    /// The second of the last line this thread wrote and its `YYYY-MM-DDTHH:MM:SS.` text.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    /// The line being written, kept between lines so that writing one allocates nothing.
    static LINE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Lines longer than this are not kept in [`LINE`] for the next one.
const KEEP_LINE: usize = 4096;

impl<S, N> FormatEvent<S, N> for PlainText
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The line is put together in a `String` of this thread, then handed over in one
        // piece: each piece written to `writer` is a dynamic call, and a line has dozens.
        // A field whose `Debug` logs an event of its own finds the buffer taken and gets a
        // fresh one.
        LINE.with(|cell| match cell.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                let written = format_line(ctx, event, &mut line);
                let result = written.and_then(|()| writer.write_str(&line));
                if line.capacity() > KEEP_LINE {
                    *line = String::new();
                }
                result
            }
            Err(_) => {
                let mut line = String::new();
                format_line(ctx, event, &mut line)?;
                writer.write_str(&line)
            }
        })
    }
}

/// The whole line of `event`, newline included, into `line`.
fn format_line<S, N>(
    ctx: &FmtContext<'_, S, N>,
    event: &Event<'_>,
    line: &mut String,
) -> fmt::Result
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let since = crate::clock::wall_now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    write_timestamp(line, since.as_secs(), since.subsec_micros())?;
    let meta = event.metadata();
    line.push_str(level_text(meta.level()));
    if let Some(scope) = ctx.event_scope() {
        let mut seen = false;
        for span in scope.from_root() {
            line.push_str(span.metadata().name());
            seen = true;
            let ext = span.extensions();
            if let Some(fields) = ext.get::<tracing_subscriber::fmt::FormattedFields<N>>() {
                if !fields.is_empty() {
                    write!(line, "{{{fields}}}")?;
                }
            }
            line.push(':');
        }
        if seen {
            line.push(' ');
        }
    }
    line.push_str(meta.target());
    line.push_str(": ");
    let mut visitor = Fields {
        line,
        first: true,
        result: Ok(()),
    };
    event.record(&mut visitor);
    visitor.result?;
    line.push('\n');
    Ok(())
}

/// `value` in decimal, without going through `fmt`'s padding machinery.
fn push_u64(line: &mut String, value: u64) {
    let mut buf = [0u8; 20];
    // ASCII digits only.
    line.push_str(std::str::from_utf8(pasv_protocol::decimal(value, &mut buf)).unwrap_or("?"));
}

/// `" INFO "` and the others, right-aligned to five as the `Full` format pads them, with the
/// space on either side.
fn level_text(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        Level::ERROR => " ERROR ",
    }
}

/// `YYYY-MM-DDTHH:MM:SS.uuuuuuZ` (UTC) for `secs` after the Unix epoch, the part up to the
/// second from this thread's cache.
fn write_timestamp(writer: &mut impl fmt::Write, secs: u64, micros: u32) -> fmt::Result {
    SECOND.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            cached.1.clear();
            let _ = write_second(&mut cached.1, secs);
            cached.0 = secs;
        }
        writer.write_str(&cached.1)
    })?;
    let mut digits = [b'0'; 6];
    let mut n = micros.min(999_999);
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    // Six ASCII digits.
    writer.write_str(std::str::from_utf8(&digits).unwrap_or("000000"))?;
    writer.write_str("Z")
}

/// `YYYY-MM-DDTHH:MM:SS.` for `secs` after the epoch (proleptic Gregorian, UTC).
fn write_second(out: &mut String, secs: u64) -> fmt::Result {
    let c = Civil::from_unix(i64::try_from(secs).unwrap_or(i64::MAX));
    write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Writes an event's fields as the `Full` format does: the message bare, the others
/// ` name=value` with the value's `Debug` text (strings quoted and escaped).
struct Fields<'a> {
    line: &'a mut String,
    first: bool,
    result: fmt::Result,
}

impl Fields<'_> {
    fn separate(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.line.push(' ');
        }
    }

    fn name(&mut self, field: &Field) {
        self.separate();
        let name = field.name();
        self.line.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.line.push('=');
    }
}

/// True when `s`'s `Debug` text is `s` in quotes: printable ASCII other than `"` and `\`.
fn plain(s: &str) -> bool {
    s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            self.separate();
            write_message(self.line, value)
        } else {
            self.name(field);
            if plain(value) {
                self.line.push('"');
                self.line.push_str(value);
                self.line.push('"');
                Ok(())
            } else {
                write!(self.line, "{value:?}")
            }
        };
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.name(field);
            push_u64(self.line, value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.name(field);
            if value < 0 {
                self.line.push('-');
            }
            push_u64(self.line, value.unsigned_abs());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.result.is_ok() {
            self.name(field);
            self.line.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        self.result = if field.name() == "message" {
            self.separate();
            // Written in place, then escaped where a terminal would act on it.
            let start = self.line.len();
            match write!(self.line, "{value:?}") {
                Ok(()) if needs_message_escape(&self.line[start..]) => {
                    let text = self.line.split_off(start);
                    write_message(self.line, &text)
                }
                other => other,
            }
        } else {
            self.name(field);
            write!(self.line, "{value:?}")
        };
    }
}

/// Whether `text` has a control character a terminal would act on.
fn needs_message_escape(text: &str) -> bool {
    text.chars().any(|c| {
        matches!(
            c,
            '\x1b' | '\x07' | '\x08' | '\x0c' | '\x7f' | '\u{80}'..='\u{9f}'
        )
    })
}

/// The message with the control characters a terminal would act on escaped, as the `Full`
/// format's escape guard does.
fn write_message(writer: &mut impl fmt::Write, text: &str) -> fmt::Result {
    if !needs_message_escape(text) {
        return writer.write_str(text);
    }
    for c in text.chars() {
        match c {
            '\x1b' => writer.write_str("\\x1b")?,
            '\x07' => writer.write_str("\\x07")?,
            '\x08' => writer.write_str("\\x08")?,
            '\x0c' => writer.write_str("\\x0c")?,
            '\x7f' => writer.write_str("\\x7f")?,
            '\u{80}'..='\u{9f}' => write!(writer, "\\u{{{:x}}}", c as u32)?,
            c => writer.write_char(c)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    /// Events with every kind of field, as pasvd logs them.
    fn log_some() {
        let path = "/dir/a \"quoted\" name\\with\tescapes\u{1b}[31m";
        tracing::info!(
            session = 7u64,
            peer = %"127.0.0.1",
            user = "anonymous",
            command = "RETR",
            path = path,
            quoted = "say \"hi\"",
            slashed = "a\\b",
            bytes = 1024u64,
            delta = -3i64,
            write = false,
            error = Option::<&str>::None,
            debugged = ?vec![1, 2],
            "transfer"
        );
        tracing::warn!(r#type = "x", "running as root: set run_as");
        tracing::error!("formatted {} message \u{1b}[2J", 42);
        tracing::debug!(session = 1u64, command = "PASS <redacted>", "command");
        tracing::info!("no fields");
        tracing::info!(count = 3u64, "");
    }

    fn capture(plain_text: bool) -> String {
        let buf = Buf::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(buf.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false);
        if plain_text {
            tracing::subscriber::with_default(builder.event_format(PlainText).finish(), log_some);
        } else {
            tracing::subscriber::with_default(builder.finish(), log_some);
        }
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        out
    }

    /// Drops the microseconds of every timestamp (the two runs differ there).
    fn without_micros(log: &str) -> String {
        log.lines()
            .map(|l| match (l.find('.'), l.find("Z ")) {
                (Some(dot), Some(z)) if dot < z => format!("{}{}", &l[..dot], &l[z..]),
                _ => l.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn lines_are_the_full_format_without_colours() {
        let ours = capture(true);
        let theirs = capture(false);
        assert_eq!(ours.lines().count(), 6, "{ours}");
        // The same second in both runs, or try once more (a second boundary in between).
        let (ours, theirs) = if without_micros(&ours) == without_micros(&theirs) {
            (ours, theirs)
        } else {
            (capture(true), capture(false))
        };
        assert_eq!(without_micros(&ours), without_micros(&theirs));
        assert!(ours.contains("\\x1b[2J"), "{ours}");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let text = |secs: u64, micros: u32| {
            let mut s = String::new();
            write_timestamp(&mut s, secs, micros).unwrap();
            s
        };
        assert_eq!(text(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(text(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(text(1_796_304_233, 847_232), "2026-12-03T13:23:53.847232Z");
        assert_eq!(text(4_102_444_799, 999_999), "2099-12-31T23:59:59.999999Z");
        // Cached per second: the same second with other microseconds.
        assert_eq!(text(4_102_444_799, 1), "2099-12-31T23:59:59.000001Z");
        // Every day from 1970 to 2129 follows the one before by the calendar's rules.
        let leap = |y: i64| y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
        let length = |y: i64, m: u32| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expect = (1970, 1, 1);
        for days in 0..58_440 {
            let c = Civil::from_unix(days * 86_400);
            assert_eq!((c.year, c.month, c.day), expect, "day {days}");
            let (y, m, d) = expect;
            expect = if d < length(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }
}
