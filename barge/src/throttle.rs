//! Bandwidth limits (`--bwlimit`): a token bucket per limit, and a stream wrapper that paces its
//! reads and writes through one or more buckets (a connection's own and a server-wide one).
//!
//! Bytes are paid for after they move, so the bucket may go into debt by one read or write; the
//! next operation then waits the debt off. Each operation is capped at a twentieth of a second's
//! worth of bytes, so pacing stays smooth and the rate over a transfer is accurate.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A rate in bytes per second, shared by every stream it paces.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    /// Most bytes that may pass at once after a quiet spell.
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    /// A bucket passing `rate` bytes per second on average (at least 1).
    pub fn new(rate: u64) -> Arc<Self> {
        let rate = rate.max(1) as f64;
        let burst = Self::slice_of(rate) as f64;
        Arc::new(Self {
            rate,
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// Largest read or write for `rate`: 50 ms worth, at least 1 KiB.
    fn slice_of(rate: f64) -> usize {
        ((rate / 20.0) as usize).max(1024)
    }

    /// The rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    fn refill(&self, state: &mut (f64, Instant)) {
        let now = Instant::now();
        let earned = now.duration_since(state.1).as_secs_f64() * self.rate;
        state.0 = (state.0 + earned).min(self.burst);
        state.1 = now;
    }

    /// How long until the bucket is out of debt (zero if it is not in debt).
    fn wait(&self) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return Duration::ZERO;
        };
        self.refill(&mut state);
        if state.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.0 / self.rate)
        }
    }

    fn pay(&self, n: usize) {
        if let Ok(mut state) = self.state.lock() {
            self.refill(&mut state);
            state.0 -= n as f64;
        }
    }
}

/// A stream whose reads and writes (together) are paced by `buckets`; with none it passes through.
///
/// Reads and writes each have their own pause: a split stream is polled by two tasks, and one
/// shared timer would keep only the last task's waker, so a reader waiting behind a writer's
/// pause was never woken and did not notice a dead peer until its timeout.
#[derive(Debug)]
pub struct Throttled<S> {
    inner: S,
    buckets: Vec<Arc<Bucket>>,
    slice: usize,
    read_pause: Option<Pin<Box<Sleep>>>,
    write_pause: Option<Pin<Box<Sleep>>>,
}

impl<S> Throttled<S> {
    /// Wraps `inner`, paced by every bucket in `buckets`.
    pub fn new(inner: S, buckets: Vec<Arc<Bucket>>) -> Self {
        let slice = buckets
            .iter()
            .map(|b| Bucket::slice_of(b.rate))
            .min()
            .unwrap_or(usize::MAX);
        Self {
            inner,
            buckets,
            slice,
            read_pause: None,
            write_pause: None,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Ready once every bucket is out of debt; `pause` is the direction's own timer.
    fn poll_allowed(
        buckets: &[Arc<Bucket>],
        pause: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        loop {
            if let Some(p) = pause.as_mut() {
                ready!(p.as_mut().poll(cx));
                *pause = None;
            }
            let wait = buckets.iter().map(|b| b.wait()).max().unwrap_or_default();
            if wait.is_zero() {
                return Poll::Ready(());
            }
            *pause = Some(Box::pin(tokio::time::sleep(wait)));
        }
    }

    fn pay(&self, n: usize) {
        for b in &self.buckets {
            b.pay(n);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buckets.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        ready!(Self::poll_allowed(&this.buckets, &mut this.read_pause, cx));
        let n = buf.remaining().min(this.slice);
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(n));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let got = part.filled().len();
        buf.advance(got);
        this.pay(got);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buckets.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        ready!(Self::poll_allowed(&this.buckets, &mut this.write_pause, cx));
        let n = data.len().min(this.slice);
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &data[..n]))?;
        this.pay(written);
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.buckets.is_empty() {
            // Unlimited: a frame header and its data still go out in one system call.
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        let first = bufs
            .iter()
            .find(|b| !b.is_empty())
            .map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.buckets.is_empty() && self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// With tokio's paused clock the pacing is exact and the test takes no real time.
    #[tokio::test(start_paused = true)]
    async fn paces_writes_to_the_rate() {
        let rate = 1 << 20;
        let (a, mut b) = tokio::io::duplex(64 << 10);
        let mut w = Throttled::new(a, vec![Bucket::new(rate)]);
        let size = 4 << 20;
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            b.read_to_end(&mut sink).await.unwrap();
            sink.len()
        });
        let start = Instant::now();
        w.write_all(&vec![7u8; size]).await.unwrap();
        w.shutdown().await.unwrap();
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(reader.await.unwrap(), size);
        let expected = size as f64 / rate as f64;
        assert!(
            (secs - expected).abs() / expected < 0.1,
            "{size} bytes at {rate} B/s took {secs:.3} s, expected {expected:.3}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_behind_a_pacing_writer_sees_the_peer_close() {
        // Regression (D9): reads and writes shared one pause timer, so the reading task's waker
        // was lost while the writing task paced, and a dead peer went unnoticed until a timeout.
        let (a, mut peer) = tokio::io::duplex(64 << 10);
        let (mut rd, mut wr) = tokio::io::split(Throttled::new(a, vec![Bucket::new(1 << 20)]));
        let writer = tokio::spawn(async move {
            let block = vec![1u8; 256 << 10];
            while wr.write_all(&block).await.is_ok() {}
        });
        let drain = tokio::spawn(async move {
            let mut sink = vec![0u8; 64 << 10];
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                if peer.read(&mut sink).await.unwrap_or(0) == 0 {
                    break;
                }
            }
            drop(peer); // the peer dies
        });
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut buf)).await;
        assert!(
            matches!(got, Ok(Ok(0)) | Ok(Err(_))),
            "the reader did not notice the closed peer: {got:?}"
        );
        drain.await.unwrap();
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_bucket_limits_streams_together() {
        let rate = 1 << 20;
        let shared = Bucket::new(rate);
        let size = 2 << 20;
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let (a, mut b) = tokio::io::duplex(64 << 10);
            let mut r = Throttled::new(a, vec![shared.clone()]);
            tasks.push(tokio::spawn(async move {
                let writer = tokio::spawn(async move {
                    b.write_all(&vec![1u8; size]).await.unwrap();
                    b.shutdown().await.unwrap();
                });
                let mut sink = Vec::new();
                r.read_to_end(&mut sink).await.unwrap();
                writer.await.unwrap();
                sink.len()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), size);
        }
        let secs = start.elapsed().as_secs_f64();
        let expected = (2 * size) as f64 / rate as f64;
        assert!(
            (secs - expected).abs() / expected < 0.1,
            "took {secs:.3} s, expected {expected:.3}"
        );
    }

    #[tokio::test]
    async fn without_buckets_it_passes_through() {
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = Throttled::new(a, Vec::new());
        w.write_all(b"hello").await.unwrap();
        let mut got = [0; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }
}
