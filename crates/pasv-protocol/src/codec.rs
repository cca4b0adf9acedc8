//! tokio-util `Decoder`/`Encoder` adapters over the sans-IO framers.
//!
//! Items are `Result`s so that a recoverable protocol error (a line too long, a bad
//! argument) does not end the stream: the decoder has already skipped the bad input
//! and the caller answers and keeps reading. The codec's own error is `io::Error`,
//! which only the transport produces.
//!
//! ```
//! use bytes::BytesMut;
//! use pasv_protocol::codec::ServerCodec;
//! use pasv_protocol::{Command, CommandError, Reply, ReplyCode};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = ServerCodec::new();
//! let mut input = BytesMut::from(&b"RETR\r\nPASV\r\n"[..]);
//! let mut output = BytesMut::new();
//! while let Some(item) = codec.decode(&mut input)? {
//!     let reply = match item {
//!         Ok(Command::Pasv) => Reply::entering_passive("127.0.0.1:50000".parse()?),
//!         Ok(_) => Reply::new(ReplyCode::NOT_IMPLEMENTED, "Not implemented."),
//!         Err(e) => Reply::new(e.reply_code(), e.to_string()),
//!     };
//!     codec.encode(reply, &mut output)?;
//! }
//! assert_eq!(
//!     &output[..],
//!     b"501 RETR needs an argument\r\n227 Entering Passive Mode (127,0,0,1,195,80).\r\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::{Command, CommandDecoder, CommandError, Reply, ReplyDecoder, ReplyError};

/// Client side: decodes replies, encodes commands.
#[derive(Debug, Default)]
pub struct ClientCodec {
    replies: ReplyDecoder,
}

impl ClientCodec {
    /// A codec with a lenient [`ReplyDecoder`] and the default caps.
    pub fn new() -> Self {
        ClientCodec::default()
    }

    /// A codec around the given reply decoder.
    pub fn with_decoder(replies: ReplyDecoder) -> Self {
        ClientCodec { replies }
    }
}

/// Server side: decodes commands, encodes replies.
#[derive(Debug, Default)]
pub struct ServerCodec {
    commands: CommandDecoder,
}

impl ServerCodec {
    /// A codec with the default 4096-byte line cap.
    pub fn new() -> Self {
        ServerCodec::default()
    }

    /// A codec around the given command decoder.
    pub fn with_decoder(commands: CommandDecoder) -> Self {
        ServerCodec { commands }
    }
}

fn item<T, E>(r: Result<Option<T>, E>) -> Option<Result<T, E>> {
    match r {
        Ok(Some(v)) => Some(Ok(v)),
        Ok(None) => None,
        Err(e) => Some(Err(e)),
    }
}

/// `Decoder` over the sans-IO decoder in field `$decoder` (its errors become items), and
/// `Encoder` of `$out`, by reference and by value.
macro_rules! impl_codec {
    ($codec:ty, $decoder:ident => Result<$item:ty, $error:ty>, encodes $out:ty) => {
        impl Decoder for $codec {
            type Item = Result<$item, $error>;
            type Error = io::Error;

            fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Self::Item>> {
                Ok(item(self.$decoder.decode(src)))
            }

            fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Self::Item>> {
                Ok(item(self.$decoder.decode_eof(src)))
            }
        }

        impl Encoder<&$out> for $codec {
            type Error = io::Error;

            fn encode(&mut self, message: &$out, dst: &mut BytesMut) -> io::Result<()> {
                dst.reserve(message.encoded_len());
                message.encode(dst);
                Ok(())
            }
        }

        impl Encoder<$out> for $codec {
            type Error = io::Error;

            fn encode(&mut self, message: $out, dst: &mut BytesMut) -> io::Result<()> {
                self.encode(&message, dst)
            }
        }
    };
}

impl_codec!(ClientCodec, replies => Result<Reply, ReplyError>, encodes Command);
impl_codec!(ServerCodec, commands => Result<Command, CommandError>, encodes Reply);
