//! Data connections as async streams.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pasv_protocol::{Command, Reply};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Sleep;

use super::error::Stalled;
use super::tls::Stream;
use super::{Client, ClientError};
use crate::clock;

/// An open download (RETR, LIST, NLST, MLSD): read the data, then call [`Download::finish`].
///
/// The server marks the end of the data by closing the connection (stream mode, RFC 959
/// section 3.4.1), so read to EOF before `finish`; finishing early closes the connection
/// with data unread, which the server reports as a failed transfer (426). [`Download::abort`]
/// stops a transfer on purpose.
#[derive(Debug)]
pub struct Download<'a>(Transfer<'a>);

/// An open upload (STOR, APPE): write the data, then call [`Upload::finish`].
#[derive(Debug)]
pub struct Upload<'a>(Transfer<'a>);

/// What a download and an upload share: the control connection their final reply comes on,
/// the data connection, and the final reply if it came before the data did.
#[derive(Debug)]
struct Transfer<'a> {
    client: &'a mut Client,
    data: Option<Stream>,
    early_final: Option<Reply>,
    verb: &'static str,
    bytes: u64,
    done: bool,
    stall: Stall,
}

/// The stall timeout of a data connection: each read or write that waits starts it, and
/// every byte moved starts it again.
#[derive(Debug)]
struct Stall {
    limit: Duration,
    timer: Pin<Box<Sleep>>,
    /// The last poll returned `Pending`: the timer runs for the operation in progress.
    waiting: bool,
}

impl Stall {
    fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            timer: Box::pin(tokio::time::sleep_until(clock::now() + limit)),
            waiting: false,
        }
    }

    /// Wraps one poll of a data read or write: a wait longer than the limit since the
    /// operation started (or last moved bytes) becomes a `TimedOut` error.
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if !self.waiting {
            // A new operation: the time the caller spent between operations is not a stall.
            self.timer.as_mut().reset(clock::now() + self.limit);
        }
        match poll(cx) {
            Poll::Ready(result) => {
                self.waiting = false;
                Poll::Ready(result)
            }
            Poll::Pending => {
                self.waiting = true;
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.waiting = false;
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, Stalled)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<'a> Transfer<'a> {
    fn new(
        client: &'a mut Client,
        data: Stream,
        early_final: Option<Reply>,
        verb: &'static str,
    ) -> Transfer<'a> {
        let stall = Stall::new(client.config().stall_timeout);
        Transfer {
            client,
            data: Some(data),
            early_final,
            verb,
            bytes: 0,
            done: false,
            stall,
        }
    }

    /// From here on the final reply is read by this call, not left for the client to skip.
    /// Returns the data connection, for the caller to close.
    fn settle(&mut self) -> Option<Stream> {
        self.done = true;
        self.data.take()
    }

    /// Reads the final reply of the transfer; a reply other than 2xx is an error.
    async fn final_reply(&mut self) -> Result<Reply, ClientError> {
        self.client
            .finish_transfer(self.verb, self.early_final.take())
            .await
    }
}

/// A transfer dropped without `finish` or `abort` leaves its final reply (226, or 426 for a
/// cut connection) on the control connection; the client skips it before its next command.
impl Drop for Transfer<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.client.unread_final_reply = self.early_final.is_none();
        }
    }
}

impl<'a> Download<'a> {
    pub(crate) fn new(
        client: &'a mut Client,
        data: Stream,
        early_final: Option<Reply>,
        verb: &'static str,
    ) -> Download<'a> {
        Download(Transfer::new(client, data, early_final, verb))
    }

    /// Bytes read so far.
    pub fn bytes_read(&self) -> u64 {
        self.0.bytes
    }

    /// Closes the data connection and reads the final reply; a reply other than 2xx (such as
    /// 426) is an error.
    pub async fn finish(mut self) -> Result<Reply, ClientError> {
        drop(self.0.settle());
        self.0.final_reply().await
    }

    /// Sends ABOR (RFC 959 section 4.1.3), closes the data connection and reads the replies
    /// (426 for the transfer, then 226 or 225 for the ABOR, in whichever form the server uses).
    pub async fn abort(mut self) -> Result<(), ClientError> {
        let t = &mut self.0;
        let data = t.settle();
        t.client.send(&Command::Abor).await?;
        drop(data);
        if t.early_final.is_some() {
            // The transfer had already ended: the only reply left is the one to ABOR.
            t.client.read_final_reply().await?;
            return Ok(());
        }
        let first = t.client.read_final_reply().await?;
        if matches!(first.code().get(), 426 | 451) {
            let second = t.client.read_final_reply().await?;
            if !second.code().is_positive() {
                return Err(ClientError::from_reply("ABOR", second));
            }
        } else if !first.code().is_positive() {
            return Err(ClientError::from_reply("ABOR", first));
        } else if first.code().get() == 226 {
            // The transfer completed before ABOR arrived: 226 for it, then 225/226 for ABOR.
            t.client.read_final_reply().await?;
        }
        Ok(())
    }
}

impl AsyncRead for Download<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut self.get_mut().0;
        let Some(data) = this.data.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let before = buf.filled().len();
        let poll = this.stall.poll(cx, |cx| Pin::new(data).poll_read(cx, buf));
        this.bytes += (buf.filled().len() - before) as u64;
        poll
    }
}

impl<'a> Upload<'a> {
    pub(crate) fn new(
        client: &'a mut Client,
        data: Stream,
        early_final: Option<Reply>,
        verb: &'static str,
    ) -> Upload<'a> {
        Upload(Transfer::new(client, data, early_final, verb))
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.0.bytes
    }

    /// Marks the end of the data (FIN, which is EOF in stream mode), closes the connection
    /// and reads the final reply; a reply other than 2xx is an error.
    pub async fn finish(mut self) -> Result<Reply, ClientError> {
        if let Some(mut data) = self.0.settle() {
            // A server that already failed the transfer may have reset the connection; its
            // reply below says why, which is more useful than the socket error.
            if let Err(e) = data.shutdown().await {
                tracing::debug!(error = %e, "data shutdown failed");
            } else if data.is_tls() {
                // Read what the server sent after the handshake until it closes: TLS 1.3
                // tickets, which a client that never reads an upload's data connection would
                // otherwise leave unread, spending one ticket per upload until none is left
                // and data connections can no longer resume. Bounded by the stall timeout.
                let limit = self.0.client.config().stall_timeout;
                let drain = async {
                    let mut sink = [0u8; 512];
                    while matches!(data.read(&mut sink).await, Ok(n) if n > 0) {}
                };
                let _ = tokio::time::timeout(limit, drain).await;
            }
        }
        self.0.final_reply().await
    }
}

impl AsyncWrite for Upload<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut self.get_mut().0;
        let Some(data) = this.data.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        let poll = this.stall.poll(cx, |cx| Pin::new(data).poll_write(cx, buf));
        if let Poll::Ready(Ok(n)) = poll {
            this.bytes += n as u64;
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut self.get_mut().0;
        match this.data.as_mut() {
            Some(data) => this.stall.poll(cx, |cx| Pin::new(data).poll_flush(cx)),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut self.get_mut().0;
        match this.data.as_mut() {
            Some(data) => this.stall.poll(cx, |cx| Pin::new(data).poll_shutdown(cx)),
            None => Poll::Ready(Ok(())),
        }
    }
}
