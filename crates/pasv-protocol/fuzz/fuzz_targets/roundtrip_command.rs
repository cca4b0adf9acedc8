//! Commands built from arbitrary bytes (a verb chosen by the first byte, the rest as its
//! argument) encode to one line that decodes to the same command.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pasv_protocol::{Argument, Command, CommandDecoder, Password};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    // Arguments cannot hold CR, LF or NUL: constructing one with them must fail.
    let arg = match Argument::new(rest) {
        Ok(a) => Some(a),
        Err(_) => {
            assert!(rest.is_empty() || rest.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
            None
        }
    };
    let command = match (selector % 12, arg) {
        (0, Some(a)) => Command::Retr(a),
        (1, Some(a)) => Command::Stor(a),
        (2, a) => Command::List(a),
        (3, Some(a)) => Command::Cwd(a),
        (4, _) => match Password::new(rest) {
            Ok(p) => Command::Pass(p),
            Err(_) => return,
        },
        (5, Some(a)) => Command::Site(a),
        (6, a) => Command::Mlsd(a),
        (7, Some(a)) => Command::Rnfr(a),
        (8, _) => Command::Rest(
            rest.iter()
                .fold(0u64, |n, &b| n.wrapping_mul(257) ^ u64::from(b)),
        ),
        (9, a) => Command::Unknown {
            verb: Argument::new("XFUZZ").expect("valid verb"),
            arg: a,
        },
        (10, Some(a)) => Command::Opts(a),
        (_, a) => Command::Stat(a),
    };
    let mut wire = BytesMut::new();
    command.encode(&mut wire);
    assert_eq!(wire.len(), command.encoded_len());
    assert_eq!(wire.iter().filter(|&&b| b == b'\n').count(), 1);
    assert!(wire.ends_with(b"\r\n"));
    let again = CommandDecoder::with_max_line_length(usize::MAX)
        .decode(&mut wire)
        .expect("an encoded command decodes")
        .expect("an encoded command is complete");
    assert_eq!(again, command);
});
