//! Socket plumbing shared by servers and clients: listeners, connecting with a deadline, and the
//! idle-timeout wrapper that puts a bound on every network wait.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream, lookup_host};
use tokio::time::{Instant, Sleep};

/// Pending connections the kernel queues for us while every connection slot is taken; callers
/// beyond the connection cap wait here instead of being refused.
const LISTEN_BACKLOG: u32 = 1024;

/// Raises this process's open-file soft limit to its hard limit (allowed without privileges) and
/// returns the limit now in force, so a server can hold as many connections as the system allows.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            return limit.maximum;
        }
    }
    limit.current
}

/// Binds a TCP listener with `SO_REUSEADDR`, so a restarted server can take its port back at once
/// while old connections sit in `TIME_WAIT`.
pub fn bind_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves `addr` (`host:port`, `[v6]:port`) and connects to the first address that answers,
/// giving up after `timeout` in all.
pub async fn connect(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let attempt = async {
        let mut last_err = None;
        for candidate in lookup_host(addr).await? {
            match TcpStream::connect(candidate).await {
                Ok(stream) => {
                    // Small control messages must not wait for Nagle; bulk writes are large anyway.
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{addr} resolves to no address"),
            )
        }))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {addr} within {timeout:?}"),
            ))
        })
}

/// A stream whose reads and writes fail with [`io::ErrorKind::TimedOut`] when the peer makes no
/// progress for `timeout`.
///
/// The clock runs only while an operation is waiting on the peer, so a handler that spends a long
/// time on disk between two reads is not mistaken for an idle peer. Reads and writes have separate
/// clocks because a split stream may wait on both at once.
#[derive(Debug)]
pub struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    read: Deadline,
    write: Deadline,
}

/// One direction's clock: armed when an operation first returns `Pending`, disarmed on progress.
#[derive(Debug)]
struct Deadline {
    sleep: Pin<Box<Sleep>>,
    armed: bool,
}

impl Deadline {
    fn new() -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed: false,
        }
    }

    /// Called when the inner operation is pending: `Ready` with an error once the peer has been
    /// silent for `timeout`.
    fn poll_expired(
        &mut self,
        cx: &mut Context<'_>,
        timeout: Duration,
        what: &str,
    ) -> Poll<io::Error> {
        if !self.armed {
            self.sleep.as_mut().reset(Instant::now() + timeout);
            self.armed = true;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.armed = false;
                Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer idle: nothing {what} for {}s", timeout.as_secs_f64()),
                ))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`; `timeout` applies to each wait for the peer.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            read: Deadline::new(),
            write: Deadline::new(),
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably (for socket options).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

/// Runs one inner poll under a deadline: progress disarms it, a pending poll arms it.
fn with_deadline<T>(
    polled: Poll<io::Result<T>>,
    deadline: &mut Deadline,
    cx: &mut Context<'_>,
    timeout: Duration,
    what: &str,
) -> Poll<io::Result<T>> {
    match polled {
        Poll::Ready(r) => {
            deadline.armed = false;
            Poll::Ready(r)
        }
        Poll::Pending => deadline.poll_expired(cx, timeout, what).map(Err),
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        with_deadline(polled, &mut this.read, cx, this.timeout, "received")
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        with_deadline(
            polled,
            &mut this.write,
            cx,
            this.timeout,
            "accepted by the peer",
        )
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        with_deadline(
            polled,
            &mut this.write,
            cx,
            this.timeout,
            "accepted by the peer",
        )
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        with_deadline(
            polled,
            &mut this.write,
            cx,
            this.timeout,
            "accepted by the peer",
        )
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        with_deadline(
            polled,
            &mut this.write,
            cx,
            this.timeout,
            "accepted by the peer",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_fires_only_after_silence() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(10));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 4];
            a.read_exact(&mut buf).await?;
            // Now silence: the next read must time out.
            a.read_u8().await.map(|_| buf)
        });
        tokio::time::sleep(Duration::from_secs(9)).await;
        b.write_all(b"ping").await.unwrap();
        let err = reader.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(b);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_does_not_count_time_between_operations() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleTimeout::new(a, Duration::from_secs(5));
        b.write_all(b"xy").await.unwrap();
        assert_eq!(a.read_u8().await.unwrap(), b'x');
        // The handler is busy elsewhere far longer than the timeout; data is already waiting.
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(a.read_u8().await.unwrap(), b'y');
    }
}
