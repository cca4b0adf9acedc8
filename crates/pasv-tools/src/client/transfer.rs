//! Whole-file transfers with resume and retry: the library side of `pasv get` and `pasv put`.
//!
//! One [`Backoff`] runs the whole operation: the 425 and 426 retries while a transfer is set
//! up and the resumptions of a transfer cut short share one attempt count and one budget, so
//! `--attempts 5` means at most five transfer attempts in all, never five times five.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use super::retry::Backoff;
use super::{Client, ClientError};

/// The buffer each whole-file transfer moves data through.
const BUFFER: usize = 256 << 10;

/// How [`Client::download_to`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadOptions {
    /// What the local side already has: the download starts there (REST).
    pub offset: u64,
    /// Fail with [`ClientError::TooLarge`] when the remote file is larger: before RETR when
    /// SIZE says so, during the transfer (after ABOR) when more bytes arrive.
    pub max_size: Option<u64>,
}

impl DownloadOptions {
    /// A download from byte `offset` with no size limit.
    pub fn from_offset(offset: u64) -> DownloadOptions {
        DownloadOptions {
            offset,
            max_size: None,
        }
    }

    /// The same with a size limit.
    pub fn with_max_size(self, max_size: Option<u64>) -> DownloadOptions {
        DownloadOptions { max_size, ..self }
    }
}

/// What a whole-file download did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DownloadReport {
    /// The size SIZE announced, if the server answered it.
    pub remote_size: Option<u64>,
    /// The byte the download started from.
    pub offset: u64,
    /// Bytes received in this run, over every attempt.
    pub received: u64,
    /// Transfer attempts that failed and were retried or resumed.
    pub retries: u32,
    /// The local side already had the whole file: nothing was transferred.
    pub already_complete: bool,
}

/// How [`Client::upload_from`] runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadOptions {
    /// Ask SIZE first and send only what the remote file lacks.
    pub resume: bool,
    /// Resume with APPE (curl's way) rather than REST + STOR (ftplib's way).
    pub append: bool,
}

impl UploadOptions {
    /// A whole upload (STOR from the start), retried from the start when it fails.
    pub fn whole() -> UploadOptions {
        UploadOptions::default()
    }

    /// An upload that sends what the remote file lacks, with APPE (`append`) or REST + STOR,
    /// and resumes the same way when it is cut short.
    pub fn resume(append: bool) -> UploadOptions {
        UploadOptions {
            resume: true,
            append,
        }
    }
}

/// What a whole-file upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct UploadReport {
    /// The byte the last attempt started from.
    pub offset: u64,
    /// Bytes sent in this run, over every attempt.
    pub sent: u64,
    /// Transfer attempts that failed and were retried or resumed.
    pub retries: u32,
    /// The remote side already had the whole file: nothing was transferred.
    pub already_complete: bool,
}

impl Client {
    /// Downloads `path` into the writer `open` returns, resuming a transfer cut short (a 426,
    /// a reset or stalled data connection) from what was written, as long as the control
    /// connection lives, all within one retry policy ([`ClientConfig::retry`]).
    ///
    /// `open(offset)` is called once, when the server has accepted the first RETR, so a
    /// refused download leaves an existing local file alone; its errors are
    /// [`ClientError::Local`], like those of writing. `progress` is called with the local
    /// length after every write, and the remote size when SIZE gave one. The result is checked against SIZE when the server answers
    /// it ([`ClientError::SizeMismatch`]).
    ///
    /// [`ClientConfig::retry`]: super::ClientConfig::retry
    pub async fn download_to<W, F, Fut>(
        &mut self,
        path: impl AsRef<[u8]>,
        options: DownloadOptions,
        mut open: F,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<DownloadReport, ClientError>
    where
        W: AsyncWrite + Unpin,
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = io::Result<W>>,
    {
        let path = path.as_ref();
        let remote_size = match self.size(path).await {
            Ok(size) => Some(size),
            // SIZE is optional (RFC 3659); only a dead connection stops here.
            Err(e) if self.is_broken() => return Err(e),
            Err(_) => None,
        };
        let mut report = DownloadReport {
            remote_size,
            offset: options.offset,
            received: 0,
            retries: 0,
            already_complete: false,
        };
        if let Some(size) = remote_size {
            if options.offset == size {
                report.already_complete = true;
                return Ok(report);
            }
            if options.offset > size {
                return Err(ClientError::LocalLonger {
                    local: options.offset,
                    remote: size,
                });
            }
            if let Some(limit) = options.max_size.filter(|&limit| size > limit) {
                return Err(ClientError::TooLarge {
                    size,
                    at_least: false,
                    limit,
                });
            }
        }
        let mut backoff = Backoff::new(self.config().retry);
        let mut sink: Option<W> = None;
        let mut buf = vec![0u8; BUFFER];
        let mut offset = options.offset;
        let mut progress = |at| progress(at, remote_size);
        loop {
            progress(offset);
            let before = offset;
            let result = self
                .download_once(
                    path,
                    &mut offset,
                    options.max_size,
                    &mut sink,
                    &mut open,
                    &mut buf,
                    &mut progress,
                    &mut backoff,
                )
                .await;
            report.received += offset - before;
            match result {
                Ok(()) => break,
                // A dead control connection cannot resume; neither can a local failure.
                Err(e) if self.is_broken() => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, offset, "transfer interrupted, resuming");
                    backoff.retry_if(e, true).await?;
                    report.retries += 1;
                }
            }
        }
        if let Some(mut out) = sink {
            out.flush().await.map_err(ClientError::Local)?;
        }
        if let Some(expected) = remote_size.filter(|&size| size != offset) {
            return Err(ClientError::SizeMismatch {
                expected,
                received: offset,
            });
        }
        Ok(report)
    }

    /// One RETR from `offset`, written to the sink (opened on the first success); `offset`
    /// follows what was written.
    #[allow(clippy::too_many_arguments)]
    async fn download_once<W, F, Fut>(
        &mut self,
        path: &[u8],
        offset: &mut u64,
        max_size: Option<u64>,
        sink: &mut Option<W>,
        open: &mut F,
        buf: &mut [u8],
        progress: &mut impl FnMut(u64),
        backoff: &mut Backoff,
    ) -> Result<(), ClientError>
    where
        W: AsyncWrite + Unpin,
        F: FnMut(u64) -> Fut,
        Fut: Future<Output = io::Result<W>>,
    {
        let mut download = self.retrieve_with(path, *offset, backoff).await?;
        let out = match sink {
            Some(out) => out,
            None => sink.insert(open(*offset).await.map_err(ClientError::Local)?),
        };
        loop {
            let n = download.read(buf).await?;
            if n == 0 {
                break;
            }
            if let Some(limit) = max_size.filter(|&limit| *offset + n as u64 > limit) {
                // Nothing past the limit reaches the sink.
                let keep = usize::try_from(limit - *offset).unwrap_or(n);
                out.write_all(&buf[..keep])
                    .await
                    .map_err(ClientError::Local)?;
                *offset += keep as u64;
                progress(*offset);
                let size = *offset + (n - keep) as u64;
                download.abort().await?;
                return Err(ClientError::TooLarge {
                    size,
                    at_least: true,
                    limit,
                });
            }
            out.write_all(&buf[..n]).await.map_err(ClientError::Local)?;
            *offset += n as u64;
            progress(*offset);
        }
        download.finish().await?;
        Ok(())
    }

    /// Uploads `len` bytes of `source` to `path`, retrying and resuming within one retry
    /// policy. A whole upload ([`UploadOptions::whole`]) that fails is sent again from the
    /// start: the remote file's length then says nothing about what arrived (a server that
    /// writes uploads to a temporary file keeps the old file). A resumed one
    /// ([`UploadOptions::resume`]) asks SIZE before every attempt and sends the rest.
    /// `progress` is called with the remote length reached after every write.
    pub async fn upload_from<R>(
        &mut self,
        path: impl AsRef<[u8]>,
        source: &mut R,
        len: u64,
        options: UploadOptions,
        mut progress: impl FnMut(u64),
    ) -> Result<UploadReport, ClientError>
    where
        R: AsyncRead + AsyncSeek + Unpin,
    {
        let path = path.as_ref();
        let mut backoff = Backoff::new(self.config().retry);
        let mut buf = vec![0u8; BUFFER];
        let mut report = UploadReport {
            offset: 0,
            sent: 0,
            retries: 0,
            already_complete: false,
        };
        loop {
            let offset = if options.resume {
                match self.size(path).await {
                    Ok(size) => size,
                    // 550: no such file yet, so nothing to resume.
                    Err(e) if e.is_permanent() => 0,
                    Err(e) => return Err(e),
                }
            } else {
                0
            };
            if offset > len {
                return Err(ClientError::RemoteLonger {
                    local: len,
                    remote: offset,
                });
            }
            report.offset = offset;
            if options.resume && offset == len {
                report.already_complete = report.retries == 0;
                return Ok(report);
            }
            let result = self
                .upload_once(
                    path,
                    source,
                    offset,
                    options.append,
                    &mut buf,
                    &mut report.sent,
                    &mut progress,
                    &mut backoff,
                )
                .await;
            match result {
                Ok(()) => return Ok(report),
                Err(e) if self.is_broken() => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "upload interrupted, trying again");
                    backoff.retry_if(e, true).await?;
                    report.retries += 1;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_once<R>(
        &mut self,
        path: &[u8],
        source: &mut R,
        offset: u64,
        append: bool,
        buf: &mut [u8],
        sent: &mut u64,
        progress: &mut impl FnMut(u64),
        backoff: &mut Backoff,
    ) -> Result<(), ClientError>
    where
        R: AsyncRead + AsyncSeek + Unpin,
    {
        source
            .seek(io::SeekFrom::Start(offset))
            .await
            .map_err(ClientError::Local)?;
        progress(offset);
        let mut upload = self
            .store_with(path, offset, append && offset > 0, backoff)
            .await?;
        let mut at = offset;
        loop {
            let n = source.read(buf).await.map_err(ClientError::Local)?;
            if n == 0 {
                break;
            }
            upload.write_all(&buf[..n]).await?;
            at += n as u64;
            *sent += n as u64;
            progress(at);
        }
        upload.finish().await?;
        Ok(())
    }
}
