//! The lesson's socketserver example: each message answered upper-cased.
//!
//! Default framing is lines both ways: `hello\n` gets `HELLO\n`, any number of lines per
//! connection, a last line without newline answered at end of input, lines capped at
//! [`EchoConfig::max_line`] (a longer one gets an `ERROR:` line and the connection is closed).
//!
//! [`EchoConfig::lesson`] reproduces the lesson byte for byte instead: one message per connection,
//! answered `message.strip().upper()` with no newline, then closed. The lesson's client checks
//! that exact reply, so this mode is what it expects.

use barge_proto::line::{LineDecoder, LineError, upper_in_place};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::server::{Connection, Handler};

/// Default cap on one line: comfortably above the 1 MiB lines users send, low enough that 512
/// connections cannot pin more than a couple of GiB.
pub const DEFAULT_MAX_LINE: usize = 4 * 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// How the echo service frames messages.
#[derive(Debug, Clone)]
pub struct EchoConfig {
    /// Longest accepted line, newline excluded.
    pub max_line: usize,
    /// One message per connection, replied without newline, as the lesson's server does.
    pub lesson: bool,
}

impl Default for EchoConfig {
    fn default() -> Self {
        Self {
            max_line: DEFAULT_MAX_LINE,
            lesson: false,
        }
    }
}

/// Why an echo connection ended badly.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    /// The peer sent a line over the cap.
    #[error(transparent)]
    Line(#[from] LineError),
    /// The connection failed (reset, idle timeout, ...).
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// The upper-case echo service.
#[derive(Debug, Clone, Default)]
pub struct EchoService {
    config: EchoConfig,
}

impl EchoService {
    /// A service with `config`.
    pub fn new(config: EchoConfig) -> Self {
        Self { config }
    }
}

impl Handler for EchoService {
    type Error = EchoError;

    async fn handle<S>(&self, mut conn: Connection<S>) -> Result<(), EchoError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut decoder = LineDecoder::new(self.config.max_line);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut answered = 0u64;
        loop {
            let line = match decoder.decode(&mut buf) {
                Ok(Some(line)) => Some(line),
                Ok(None) => {
                    match conn.read_more(&mut buf, READ_CHUNK).await? {
                        None => return Ok(()), // shutting down between messages
                        Some(0) => {}
                        Some(_) => continue,
                    }
                    // End of input: a last line without newline still gets its answer.
                    match decoder.decode_eof(&mut buf) {
                        Ok(Some(line)) => Some(line),
                        Ok(None) => None,
                        Err(e) => return refuse(&mut conn.stream, e).await,
                    }
                }
                Err(e) => return refuse(&mut conn.stream, e).await,
            };
            let Some(mut line) = line else {
                debug!(answered, "end of input");
                return Ok(());
            };
            answered += 1;
            if self.config.lesson {
                let mut reply = line.trim_ascii().to_vec();
                upper_in_place(&mut reply);
                conn.stream.write_all(&reply).await?;
                conn.stream.shutdown().await?;
                return Ok(());
            }
            upper_in_place(&mut line);
            conn.stream
                .write_all_buf(&mut line.chain(&b"\n"[..]))
                .await?;
        }
    }
}

/// Tells the peer why it is being disconnected, then reports the error to the framework.
async fn refuse<S: AsyncWrite + Unpin>(stream: &mut S, e: LineError) -> Result<(), EchoError> {
    let _ = stream.write_all(format!("ERROR: {e}\n").as_bytes()).await;
    let _ = stream.shutdown().await;
    Err(e.into())
}
