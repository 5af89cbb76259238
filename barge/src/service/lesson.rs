//! The lesson's front end: `[i32 LE length][JSON header][body]` uploads one after another on a
//! connection. It decodes, hands the body to the transfer core (which computes the BLAKE3 chunk
//! tree, as the format has none) and logs; nothing else.
//!
//! The format has no reply, so the only thing a receiver can do with a bad upload is log why and
//! close the connection; the sender then sees its connection reset. Nothing of a refused or
//! unfinished upload is published, and it is not kept: the format cannot resume.

use std::time::Instant;

use barge_proto::legacy::{Decoder, Frame, Header};
use barge_proto::name::validate_file_name;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tracing::{info, warn};

use super::files::{FileError, READ_CHUNK};
use crate::server::Connection;
use crate::store::StoreError;
use crate::transfer::{Core, Put, Session};

/// Serves the lesson's format; `buf` holds the first bytes already read.
pub async fn serve<S>(
    core: &Core,
    mut conn: Connection<S>,
    mut buf: BytesMut,
    mut started: Option<tokio::time::Instant>,
) -> Result<(), FileError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // The format cannot carry a token: the operator turned it on knowing that (see
    // `lesson_format_by_default`), so its uploads go to the whole store.
    let session = core.unauthenticated(conn.peer);
    let mut decoder = Decoder::new();
    loop {
        // Between uploads: a clean end of stream, or shutdown, ends the conversation.
        let header = loop {
            if let Some(frame) = decoder.decode(&mut buf)? {
                match frame {
                    Frame::Header(h) => {
                        started = None;
                        conn.request_done();
                        break h;
                    }
                    // Only headers come between uploads.
                    Frame::Body(_) | Frame::End => unreachable_frame()?,
                }
            }
            let Some(n) = conn.read_header(&mut buf, READ_CHUNK, &mut started).await? else {
                return Ok(()); // shutting down between uploads
            };
            if n == 0 {
                return if buf.is_empty() {
                    Ok(())
                } else {
                    Err(FileError::TruncatedHeader(buf.len()))
                };
            }
        };
        receive_body(&session, &mut conn.stream, &mut buf, &mut decoder, header).await?;
    }
}

/// Receives one body through the core and publishes it.
async fn receive_body<S: AsyncRead + Unpin>(
    session: &Session,
    stream: &mut S,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
    header: Header,
) -> Result<(), FileError> {
    let started = Instant::now();
    let storage_err = |source| FileError::Storage {
        name: header.file_name.clone(),
        size: header.file_size,
        source,
    };
    // The lesson names a file, not a path: one component, no folders.
    validate_file_name(&header.file_name).map_err(|e| storage_err(StoreError::Name(e)))?;
    let put = Put {
        resumable: false,
        ..Put::new(&header.file_name, header.file_size)
    };
    let mut file = session.receive(put).await.map_err(storage_err)?;
    let body = async {
        loop {
            match decoder.decode(buf)? {
                Some(Frame::Body(chunk)) => file.write(chunk).await.map_err(storage_err)?,
                Some(Frame::End) => return Ok(()),
                Some(Frame::Header(_)) => unreachable_frame()?,
                None => {
                    buf.reserve(READ_CHUNK);
                    let read = tokio::select! {
                        n = stream.read_buf(buf) => n?,
                        e = file.failure() => return Err(storage_err(e)),
                    };
                    if read == 0 {
                        return Err(FileError::TruncatedBody {
                            name: header.file_name.clone(),
                            received: file.received(),
                            expected: header.file_size,
                        });
                    }
                }
            }
        }
    };
    if let Err(e) = body.await {
        // Nothing of it is kept (the format cannot resume): wait until it is gone.
        file.suspend().await;
        return Err(e);
    }
    let stored = file.finish(None).await.map_err(storage_err)?;
    let secs = started.elapsed().as_secs_f64();
    info!(
        name = ?stored.name,
        bytes = stored.size,
        secs = format_args!("{secs:.3}"),
        mb_per_s = format_args!("{:.1}", stored.size as f64 / secs.max(1e-9) / 1e6),
        msg = header.msg.as_ref().map(|m| m.to_string()).unwrap_or_default(),
        "upload complete"
    );
    if stored.name != header.file_name {
        warn!(asked = ?header.file_name, stored = ?stored.name, "name taken: stored under another");
    }
    Ok(())
}

/// The decoder only yields body frames after a header; anything else is a bug here, reported as a
/// connection error rather than a panic.
fn unreachable_frame() -> Result<(), FileError> {
    Err(FileError::Io(std::io::Error::other(
        "decoder produced a frame out of order",
    )))
}
