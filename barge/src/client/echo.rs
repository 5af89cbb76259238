//! Talking to an upper-case echo server: each message sent as a line, each reply read as a line.
//!
//! A server may close the connection after answering, as the lesson's does (one `recv` per
//! connection, reply without newline); then the reply is what arrived before the close, and the
//! next message opens a new connection. A close before any reply is an error: the message may or
//! may not have been seen, so it is not silently sent again.

use std::time::Duration;

use barge_proto::line::{LineDecoder, LineError};
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::{IdleTimeout, connect};

/// Why a message got no reply.
#[derive(Debug, thiserror::Error)]
pub enum EchoClientError {
    /// The message contains a newline, so it would be several messages.
    #[error("a message cannot contain a newline")]
    Newline,
    /// The server cannot be reached.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server closed the connection without answering.
    #[error("the server closed the connection without replying")]
    NoReply,
    /// The reply is longer than the cap.
    #[error("reply: {0}")]
    Line(#[from] LineError),
    /// The connection failed (reset, timeout, ...).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// A conversation with an echo server, reconnecting when the server closes after a reply.
#[derive(Debug)]
pub struct EchoSession {
    addr: String,
    connect_timeout: Duration,
    io_timeout: Duration,
    max_line: usize,
    conn: Option<(IdleTimeout<TcpStream>, LineDecoder, BytesMut)>,
}

impl EchoSession {
    /// A session with `addr`; nothing is connected until the first message.
    pub fn new(
        addr: &str,
        connect_timeout: Duration,
        io_timeout: Duration,
        max_line: usize,
    ) -> Self {
        Self {
            addr: addr.to_owned(),
            connect_timeout,
            io_timeout,
            max_line,
            conn: None,
        }
    }

    /// Opens the connection now (to report an unreachable server before reading any input).
    pub async fn connect(&mut self) -> Result<(), EchoClientError> {
        if self.conn.is_none() {
            let stream = connect(&self.addr, self.connect_timeout)
                .await
                .map_err(|source| EchoClientError::Connect {
                    addr: self.addr.clone(),
                    source,
                })?;
            self.conn = Some((
                IdleTimeout::new(stream, self.io_timeout),
                LineDecoder::new(self.max_line),
                BytesMut::new(),
            ));
        }
        Ok(())
    }

    /// Sends `message` as one line and returns the reply (without its newline).
    pub async fn ask(&mut self, message: &[u8]) -> Result<Vec<u8>, EchoClientError> {
        if message.contains(&b'\n') {
            return Err(EchoClientError::Newline);
        }
        self.connect().await?;
        let result = self.exchange(message).await;
        if !matches!(result, Ok((_, true))) {
            // Closed by the server after its reply, or failed: the next message reconnects.
            self.conn = None;
        }
        result.map(|(reply, _)| reply)
    }

    /// One message and its reply; the flag says whether the connection is still usable.
    async fn exchange(&mut self, message: &[u8]) -> Result<(Vec<u8>, bool), EchoClientError> {
        let Some((stream, decoder, buf)) = self.conn.as_mut() else {
            return Err(EchoClientError::NoReply);
        };
        let mut line = Vec::with_capacity(message.len() + 1);
        line.extend_from_slice(message);
        line.push(b'\n');
        stream.write_all(&line).await?;
        loop {
            if let Some(reply) = decoder.decode(buf)? {
                return Ok((reply.to_vec(), true));
            }
            buf.reserve(16 * 1024);
            if stream.read_buf(buf).await? == 0 {
                return match decoder.decode_eof(buf)? {
                    Some(reply) => Ok((reply.to_vec(), false)),
                    None => Err(EchoClientError::NoReply),
                };
            }
        }
    }
}
