//! A TCP proxy on 127.0.0.1:0 that sits between a client and a server and misbehaves on purpose:
//! flips a byte, cuts a connection after N bytes, or throttles. It counts what it forwarded.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Which way bytes flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// What the proxy does wrong, to the first `connections` connections.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    None,
    /// XOR 0x01 into the byte at offset `at` of the stream in direction `dir`.
    Flip {
        dir: Dir,
        at: u64,
        connections: usize,
    },
    /// Close the connection once `after` bytes went in direction `dir`.
    Cut {
        dir: Dir,
        after: u64,
        connections: usize,
    },
    /// XOR 0x01 into one byte in every `period` bytes in direction `dir`, on every connection.
    FlipEvery {
        dir: Dir,
        period: u64,
    },
}

/// Bytes forwarded on one connection.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub up: u64,
    pub down: u64,
    /// The first bytes each direction carried: where a protocol's preface would be.
    pub up_head: [u8; 4],
    pub down_head: [u8; 4],
}

pub struct Proxy {
    pub addr: SocketAddr,
    counts: Arc<Mutex<Vec<Counts>>>,
    /// The first [`CAPTURE_MAX`] bytes each direction carried, all connections together.
    captured: Arc<Mutex<Vec<u8>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Forwards to `upstream`, applying `fault`; `rate` limits each direction in bytes/s.
    pub async fn start(upstream: SocketAddr, fault: Fault, rate: Option<u64>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Mutex<Vec<Counts>>> = Arc::default();
        let captured: Arc<Mutex<Vec<u8>>> = Arc::default();
        let shared = counts.clone();
        let capture = captured.clone();
        let task = tokio::spawn(async move {
            let mut n = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                let index = n;
                n += 1;
                shared.lock().unwrap().push(Counts::default());
                let counts = shared.clone();
                let capture = capture.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return; // upstream down: the client sees its connection close
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pump(
                        cr,
                        sw,
                        (Dir::Up, index),
                        fault,
                        rate,
                        counts.clone(),
                        capture.clone(),
                    );
                    let down = pump(sr, cw, (Dir::Down, index), fault, rate, counts, capture);
                    // Either direction ending (or cutting) ends the connection both ways.
                    tokio::select! {
                        () = up => {},
                        () = down => {},
                    }
                });
            }
        });
        Self {
            addr,
            counts,
            captured,
            task,
        }
    }

    /// What crossed the proxy (both directions, up to [`CAPTURE_MAX`] bytes).
    pub fn captured(&self) -> Vec<u8> {
        self.captured.lock().unwrap().clone()
    }

    /// Bytes forwarded per connection, in accept order.
    pub fn counts(&self) -> Vec<Counts> {
        self.counts.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Bytes the proxy keeps a copy of: enough to look for plaintext in.
pub const CAPTURE_MAX: usize = 16 << 20;

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    (dir, index): (Dir, usize),
    fault: Fault,
    rate: Option<u64>,
    counts: Arc<Mutex<Vec<Counts>>>,
    captured: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    let started = Instant::now();
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let mut n = n;
        let mut cut = false;
        match fault {
            Fault::Flip {
                dir: d,
                at,
                connections,
            } if d == dir && index < connections && (offset..offset + n as u64).contains(&at) => {
                buf[(at - offset) as usize] ^= 0x01;
            }
            Fault::FlipEvery { dir: d, period } if d == dir => {
                for i in 0..n as u64 {
                    if (offset + i) % period == period - 1 {
                        buf[i as usize] ^= 0x01;
                    }
                }
            }
            Fault::Cut {
                dir: d,
                after,
                connections,
            } if d == dir && index < connections && offset + n as u64 >= after => {
                n = (after - offset) as usize;
                cut = true;
            }
            _ => {}
        }
        {
            let mut c = captured.lock().unwrap();
            let room = CAPTURE_MAX.saturating_sub(c.len()).min(n);
            c.extend_from_slice(&buf[..room]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        offset += n as u64;
        {
            let mut c = counts.lock().unwrap();
            let one = &mut c[index];
            let (total, head) = match dir {
                Dir::Up => (&mut one.up, &mut one.up_head),
                Dir::Down => (&mut one.down, &mut one.down_head),
            };
            let at = *total as usize;
            if at < head.len() {
                let k = (head.len() - at).min(n);
                head[at..at + k].copy_from_slice(&buf[..k]);
            }
            *total += n as u64;
        }
        if cut {
            return; // dropping both halves closes the connection
        }
        if let Some(rate) = rate {
            // Pace to `rate` bytes/s: the transfer takes long enough to be interrupted.
            let due = Duration::from_secs_f64(offset as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
}
