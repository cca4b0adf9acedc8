//! The tokio-util adapters: recoverable errors are items, not the end of the stream.

use bytes::BytesMut;
use pasv_protocol::codec::{ClientCodec, ServerCodec};
use pasv_protocol::{Command, CommandError, Reply, ReplyCode, ReplyError};
use tokio_util::codec::{Decoder, Encoder};

#[test]
fn client_codec_decodes_replies_and_encodes_commands() {
    let mut codec = ClientCodec::new();
    let mut buf = BytesMut::from(&b"junk\r\n220 ready\r\n221 by"[..]);
    let first = codec.decode(&mut buf).expect("io ok");
    assert!(matches!(first, Some(Err(ReplyError::Malformed { .. }))));
    let second = codec.decode(&mut buf).expect("io ok");
    assert_eq!(
        second,
        Some(Ok(Reply::new(ReplyCode::SERVICE_READY, "ready")))
    );
    assert_eq!(codec.decode(&mut buf).expect("io ok"), None);
    assert_eq!(
        codec.decode_eof(&mut buf).expect("io ok"),
        Some(Err(ReplyError::Truncated))
    );
    assert_eq!(codec.decode_eof(&mut buf).expect("io ok"), None);

    let mut out = BytesMut::new();
    codec.encode(&Command::Pasv, &mut out).expect("encode");
    codec
        .encode(Command::Retr("a b".try_into().expect("arg")), &mut out)
        .expect("encode");
    assert_eq!(&out[..], b"PASV\r\nRETR a b\r\n");
}

#[test]
fn server_codec_decodes_commands_and_encodes_replies() {
    let mut codec = ServerCodec::new();
    let mut buf = BytesMut::from(&b"RETR\r\nNOOP\r\nQU"[..]);
    assert_eq!(
        codec.decode(&mut buf).expect("io ok"),
        Some(Err(CommandError::MissingArgument { verb: "RETR" }))
    );
    assert_eq!(
        codec.decode(&mut buf).expect("io ok"),
        Some(Ok(Command::Noop))
    );
    assert_eq!(codec.decode(&mut buf).expect("io ok"), None);
    assert_eq!(codec.decode_eof(&mut buf).expect("io ok"), None);

    let mut out = BytesMut::new();
    codec
        .encode(&Reply::new(ReplyCode::OK, "ok"), &mut out)
        .expect("encode");
    codec
        .encode(Reply::new(ReplyCode::SYSTEM_STATUS, "a\nb"), &mut out)
        .expect("encode");
    assert_eq!(&out[..], b"200 ok\r\n211-a\r\n211 b\r\n");
}
