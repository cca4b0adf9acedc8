//! TYPE A (RFC 959 section 3.1.1.1): on the data connection, lines end with CRLF.
//!
//! Files are stored with the local convention, LF. A download in TYPE A sends every bare LF
//! of the file as CRLF; a CRLF already in the file goes out unchanged, so a file with CRLF
//! lines is not doubled. An upload in TYPE A stores every CRLF as LF; a CR that is not
//! followed by LF is kept. Both converters carry one byte of state from one buffer to the
//! next, so a CRLF split between two reads is still one line end.

/// Converts file bytes to TYPE A network bytes: bare LF becomes CRLF.
#[derive(Debug, Default, Clone)]
pub(crate) struct ToNetwork {
    /// The last byte seen was CR (an LF right after it is already a CRLF).
    after_cr: bool,
}

impl ToNetwork {
    /// A converter that starts after `previous`, the file's byte before the first one it
    /// will see (REST in TYPE A starts mid-file; `None` at the start of the file).
    pub(crate) fn after(previous: Option<u8>) -> ToNetwork {
        ToNetwork {
            after_cr: previous == Some(b'\r'),
        }
    }

    /// Appends the converted form of `input` to `out`.
    pub(crate) fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 16 + 1);
        let mut rest = input;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            let after_cr = match i {
                0 => self.after_cr,
                _ => rest[i - 1] == b'\r',
            };
            out.extend_from_slice(&rest[..i]);
            if !after_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
            rest = &rest[i + 1..];
            self.after_cr = false;
        }
        out.extend_from_slice(rest);
        if let Some(&last) = rest.last() {
            self.after_cr = last == b'\r';
        }
    }
}

/// Converts TYPE A network bytes to file bytes: CRLF becomes LF, a lone CR stays.
#[derive(Debug, Default, Clone)]
pub(crate) struct FromNetwork {
    /// The previous buffer ended with CR: whether it is a line end depends on the next byte.
    pending_cr: bool,
}

impl FromNetwork {
    /// Appends the converted form of `input` to `out`.
    pub(crate) fn convert(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + 1);
        let mut rest = input;
        if self.pending_cr && !rest.is_empty() {
            self.pending_cr = false;
            if rest[0] == b'\n' {
                out.push(b'\n');
                rest = &rest[1..];
            } else {
                out.push(b'\r');
            }
        }
        while let Some(i) = rest.iter().position(|&b| b == b'\r') {
            out.extend_from_slice(&rest[..i]);
            match rest.get(i + 1) {
                Some(b'\n') => {
                    out.push(b'\n');
                    rest = &rest[i + 2..];
                }
                Some(_) => {
                    out.push(b'\r');
                    rest = &rest[i + 1..];
                }
                None => {
                    self.pending_cr = true;
                    rest = &[];
                }
            }
        }
        out.extend_from_slice(rest);
    }

    /// At the end of the data: a CR held back for the next byte is kept.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to_network(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        ToNetwork::default().convert(input, &mut out);
        out
    }

    fn from_network(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut c = FromNetwork::default();
        c.convert(input, &mut out);
        c.finish(&mut out);
        out
    }

    const SAMPLES: &[&[u8]] = &[
        b"",
        b"\n",
        b"\r",
        b"\r\n",
        b"\n\n",
        b"\r\r\n",
        b"\r\n\n",
        b"a\nb\r\nc\rd\n",
        b"no line end",
        b"\n\r\n\r\r\n\n\r",
        b"tail\r",
    ];

    #[test]
    fn downloads_turn_bare_lf_into_crlf_and_keep_crlf() {
        assert_eq!(to_network(b"a\nb\r\nc\rd\n"), b"a\r\nb\r\nc\rd\r\n");
        assert_eq!(to_network(b"\n\n"), b"\r\n\r\n");
        assert_eq!(to_network(b"\r\r\n"), b"\r\r\n");
        assert_eq!(to_network(b"tail\r"), b"tail\r");
        assert_eq!(to_network(b""), b"");
    }

    #[test]
    fn uploads_turn_crlf_into_lf_and_keep_a_lone_cr() {
        assert_eq!(from_network(b"a\r\nb\nc\rd\r\n"), b"a\nb\nc\rd\n");
        assert_eq!(from_network(b"\r\r\n"), b"\r\n");
        assert_eq!(from_network(b"tail\r"), b"tail\r");
        assert_eq!(from_network(b"\r\n\r\n"), b"\n\n");
    }

    #[test]
    fn every_split_converts_like_one_buffer() {
        for &sample in SAMPLES {
            let whole_down = to_network(sample);
            let whole_up = from_network(sample);
            for cut in 0..=sample.len() {
                for cut2 in cut..=sample.len() {
                    let parts = [&sample[..cut], &sample[cut..cut2], &sample[cut2..]];
                    let mut down = ToNetwork::default();
                    let mut up = FromNetwork::default();
                    let (mut d, mut u) = (Vec::new(), Vec::new());
                    for part in parts {
                        down.convert(part, &mut d);
                        up.convert(part, &mut u);
                    }
                    up.finish(&mut u);
                    assert_eq!(d, whole_down, "download {sample:?} cut at {cut}, {cut2}");
                    assert_eq!(u, whole_up, "upload {sample:?} cut at {cut}, {cut2}");
                }
            }
        }
    }

    #[test]
    fn a_restart_continues_the_whole_file_conversion() {
        for &sample in SAMPLES {
            let whole = to_network(sample);
            for offset in 0..=sample.len() {
                let mut out = Vec::new();
                let previous = offset.checked_sub(1).map(|i| sample[i]);
                ToNetwork::after(previous).convert(&sample[offset..], &mut out);
                let mut head = Vec::new();
                ToNetwork::default().convert(&sample[..offset], &mut head);
                head.extend_from_slice(&out);
                assert_eq!(head, whole, "{sample:?} from {offset}");
            }
        }
    }

    #[test]
    fn an_upload_round_trips_a_download() {
        for &sample in SAMPLES {
            // Files without CR round-trip exactly; a CRLF in the file comes back as LF.
            let lf_only: Vec<u8> = sample.iter().copied().filter(|&b| b != b'\r').collect();
            assert_eq!(from_network(&to_network(&lf_only)), lf_only);
        }
    }
}
