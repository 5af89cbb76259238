//! The connection a v1 client speaks over: dialing (TCP, TLS, a shared bandwidth limit), the
//! reader task that splits frames and data pieces, batched writes, and the screen for replies that
//! refuse the whole connection.

use super::*;

/// A byte stream a client can speak barge over.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A connection being opened.
pub type Dialing<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Stream>>> + Send + 'a>>;

/// Opens connections to a server: TCP normally ([`Tcp`]); tests dial in-memory pipes.
pub trait Dial: Send + Sync {
    /// A fresh connection.
    fn dial(&self) -> Dialing<'_>;
    /// The server's address, for messages.
    fn name(&self) -> String;
}

/// Dials `host:port` over TCP (and TLS, when configured) with a connect timeout, optionally paced
/// by a bandwidth limit shared by every connection it opens.
#[derive(Debug, Clone)]
pub struct Tcp {
    /// `host:port`.
    pub addr: String,
    /// Time allowed to connect (and finish the TLS handshake).
    pub timeout: Duration,
    /// TLS configuration; `None` for plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Bandwidth limit.
    pub bwlimit: Option<Arc<Bucket>>,
}

impl Tcp {
    /// Plain TCP to `addr`.
    pub fn new(addr: impl Into<String>, timeout: Duration) -> Self {
        Self {
            addr: addr.into(),
            timeout,
            tls: None,
            bwlimit: None,
        }
    }
}

impl Dial for Tcp {
    fn dial(&self) -> Dialing<'_> {
        Box::pin(async move {
            let tcp = crate::net::connect(&self.addr, self.timeout).await?;
            let stream = Throttled::new(tcp, self.bwlimit.iter().cloned().collect());
            let Some(config) = &self.tls else {
                return Ok(Box::new(stream) as Box<dyn Stream>);
            };
            let name = crate::tls::server_name(&self.addr)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let connector = tokio_rustls::TlsConnector::from(config.clone());
            let tls = tokio::time::timeout(self.timeout, connector.connect(name, stream))
                .await
                .map_err(|_| {
                    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
                })??;
            Ok(Box::new(tls) as Box<dyn Stream>)
        })
    }

    fn name(&self) -> String {
        self.addr.clone()
    }
}

/// What the reader task passes on: requests and replies whole, data frames piece by piece as they
/// arrive, so a downloaded chunk is hashed and written without ever being buffered whole.
#[derive(Debug)]
pub(super) enum Incoming {
    Frame(Frame),
    /// A data frame begins: its CV and the length of the data that follows in pieces.
    Data {
        cv: Cv,
        len: usize,
    },
    Piece(bytes::Bytes),
}

pub(super) type Reader = mpsc::Receiver<io::Result<Incoming>>;
pub(super) type Writer = IdleTimeout<WriteHalf<Box<dyn Stream>>>;

/// An open connection: frames arrive from a reader task; the write half has the idle timeout.
/// (The read side has none of its own: a server legitimately stays silent while a large file
/// streams to it; every wait for an expected reply has the timeout instead.)
pub(super) struct Link {
    frames: Reader,
    out: Writer,
    io_timeout: Duration,
    next_id: u64,
    /// The task reading frames; it holds the read half, so it must end for the socket to close.
    reader: tokio::task::JoinHandle<()>,
    /// Small frames waiting to go out together (see [`BATCH`]).
    pending: BytesMut,
    /// Replies taken off the connection early (while a file was still being sent), in order.
    early: VecDeque<Reply>,
}

/// Small frames (requests, small files' data) are gathered up to this many bytes and sent in one
/// write, which is flushed before waiting for anything: thousands of small files then cost a few
/// hundred writes instead of three per file, and the server wakes up once per batch.
pub(super) const BATCH: usize = 64 * 1024;

/// Files up to this size are read on the sending task itself (see `upload_file`).
pub(super) const SMALL_INLINE: u64 = 64 * 1024;

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Link {
    pub(super) async fn open(dial: &dyn Dial, opts: &Options) -> Result<Self, TransferError> {
        let stream = dial.dial().await.map_err(|source| TransferError::Connect {
            addr: dial.name(),
            source,
        })?;
        let (read, write) = tokio::io::split(stream);
        let mut out = IdleTimeout::new(write, opts.io_timeout);
        out.write_all(&wire::preface(VERSION))
            .await
            .map_err(TransferError::Lost)?;
        let mut read = read;
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let preface = tokio::time::timeout(opts.io_timeout, async {
            while buf.len() < PREFACE_LEN {
                if read.read_buf(&mut buf).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "closed before its preface",
                    ));
                }
            }
            Ok(())
        })
        .await
        .map_err(|_| TransferError::Lost(io::Error::new(io::ErrorKind::TimedOut, "no preface")))?;
        preface.map_err(TransferError::Lost)?;
        match wire::parse_preface(&buf) {
            Ok(Some(VERSION)) => {}
            Ok(Some(v)) => {
                return Err(TransferError::Protocol(format!(
                    "server speaks protocol version {v}"
                )));
            }
            _ => return Err(TransferError::Protocol("not a barge server".into())),
        }
        buf.advance(PREFACE_LEN);
        let (tx, frames) = mpsc::channel(8);
        let reader = tokio::spawn(read_frames(read, buf, tx));
        let mut link = Self {
            frames,
            out,
            io_timeout: opts.io_timeout,
            next_id: 1,
            reader,
            pending: BytesMut::with_capacity(BATCH),
            early: VecDeque::new(),
        };
        if let Some(token) = &opts.token {
            let id = link.id();
            link.request(&Request::Auth {
                id,
                token: token.clone(),
            })
            .await?;
            let reply = link.reply().await?;
            if reply.status != Status::Ok {
                return Err(TransferError::Refused {
                    status: reply.status,
                    message: reply.message.unwrap_or_default(),
                });
            }
        }
        Ok(link)
    }

    /// Ends the conversation cleanly: the server sees the end of the stream between requests.
    pub(super) async fn close(mut self) {
        let _ = self.flush().await;
        let _ = self.out.shutdown().await;
    }

    /// Sends the gathered small frames.
    pub(super) async fn flush(&mut self) -> Result<(), TransferError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.out.write_all_buf(&mut self.pending).await;
        self.pending.clear();
        written.map_err(|e| self.lost(e))
    }

    /// Sends a data frame: a small one joins the batch, a large one goes straight out after it.
    pub(super) async fn data(&mut self, cv: &Cv, data: bytes::Bytes) -> Result<(), TransferError> {
        if data.len() < BATCH {
            wire::encode_data_header(cv, data.len(), &mut self.pending);
            self.pending.extend_from_slice(&data);
            if self.pending.len() >= BATCH {
                self.flush().await?;
            }
            return Ok(());
        }
        self.flush().await?;
        let mut head = BytesMut::with_capacity(wire::FRAME_HEADER + 32);
        wire::encode_data_header(cv, data.len(), &mut head);
        let mut data = data;
        let written = self
            .out
            .write_all_buf(&mut (&mut head).chain(&mut data))
            .await;
        written.map_err(|e| self.lost(e))
    }

    pub(super) fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub(super) async fn request(&mut self, req: &Request) -> Result<(), TransferError> {
        wire::encode_request(req, &mut self.pending);
        if self.pending.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// The next frame or piece of one, waiting at most the I/O timeout.
    pub(super) async fn next(&mut self) -> Result<Incoming, TransferError> {
        self.flush().await?;
        match tokio::time::timeout(self.io_timeout, self.frames.recv()).await {
            Err(_) => Err(TransferError::Lost(io::Error::new(
                io::ErrorKind::TimedOut,
                "no reply from the server",
            ))),
            Ok(None) => Err(TransferError::Lost(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed",
            ))),
            Ok(Some(Err(e))) => Err(self.lost(e)),
            Ok(Some(Ok(Incoming::Frame(f)))) => screen(f).map(Incoming::Frame),
            Ok(Some(Ok(other))) => Ok(other),
        }
    }

    /// The next whole frame (a data frame's pieces put back together).
    pub(super) async fn frame(&mut self) -> Result<Frame, TransferError> {
        match self.next().await? {
            Incoming::Frame(f) => Ok(f),
            Incoming::Data { cv, len } => {
                let mut data = BytesMut::with_capacity(len);
                while data.len() < len {
                    match self.next().await? {
                        Incoming::Piece(p) => data.extend_from_slice(&p),
                        other => {
                            return Err(TransferError::Protocol(format!(
                                "data frame interrupted by {other:?}"
                            )));
                        }
                    }
                }
                Ok(Frame::Data {
                    cv,
                    data: data.freeze(),
                })
            }
            Incoming::Piece(_) => Err(TransferError::Protocol("data outside a frame".into())),
        }
    }

    /// The error for a failed connection: the server's refusal if it sent one before closing
    /// (it may have arrived while we were writing), else the I/O error.
    pub(super) fn lost(&mut self, e: io::Error) -> TransferError {
        while let Ok(Ok(incoming)) = self.frames.try_recv() {
            if let Incoming::Frame(frame) = incoming
                && let Err(refusal) = screen(frame)
            {
                return refusal;
            }
        }
        TransferError::Lost(e)
    }

    pub(super) async fn reply(&mut self) -> Result<Reply, TransferError> {
        if let Some(r) = self.early.pop_front() {
            return Ok(r);
        }
        match self.frame().await? {
            Frame::Reply(r) => Ok(r),
            other => Err(TransferError::Protocol(format!(
                "expected a reply, got {other:?}"
            ))),
        }
    }

    /// A reply if one has already arrived.
    pub(super) fn ready_reply(&mut self) -> Result<Option<Reply>, TransferError> {
        if let Some(r) = self.early.pop_front() {
            return Ok(Some(r));
        }
        self.arrived_reply()
    }

    /// Whether request `id` has already been refused (replies that arrived meanwhile are kept, in
    /// order, for [`Link::reply`]): a refused upload stops sending at once.
    pub(super) fn refused_already(&mut self, id: u64) -> Result<bool, TransferError> {
        while let Some(r) = self.arrived_reply()? {
            self.early.push_back(r);
        }
        Ok(self
            .early
            .iter()
            .any(|r| r.id == id && r.status != Status::Ok))
    }

    /// A reply that has arrived on the connection, if any.
    pub(super) fn arrived_reply(&mut self) -> Result<Option<Reply>, TransferError> {
        match self.frames.try_recv() {
            Ok(Ok(Incoming::Frame(Frame::Reply(r)))) => match screen(Frame::Reply(r))? {
                Frame::Reply(r) => Ok(Some(r)),
                _ => Err(TransferError::Protocol("unexpected data frame".into())),
            },
            Ok(Ok(_)) => Err(TransferError::Protocol("unexpected data frame".into())),
            Ok(Err(e)) => Err(TransferError::Lost(e)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(TransferError::Lost(
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed"),
            )),
        }
    }
}

/// A reply with id 0 refuses the connection itself (ids the client uses start at 2).
pub(super) fn screen(frame: Frame) -> Result<Frame, TransferError> {
    match frame {
        Frame::Reply(r) if r.id == 0 && r.status != Status::Ok => Err(TransferError::Refused {
            status: r.status,
            message: r.message.unwrap_or_default(),
        }),
        other => Ok(other),
    }
}

/// Largest read of data-frame bytes (each read becomes one piece for the writer).
pub(super) const PIECE: usize = 256 * 1024;

pub(super) async fn read_frames(
    mut read: ReadHalf<Box<dyn Stream>>,
    mut buf: BytesMut,
    tx: mpsc::Sender<io::Result<Incoming>>,
) {
    let mut decoder = wire::StreamDecoder::new();
    loop {
        let item = match decoder.decode(&mut buf) {
            Ok(Some(wire::Item::Frame(frame))) => Some(Ok(Incoming::Frame(frame))),
            Ok(Some(wire::Item::Data { cv, len })) => Some(Ok(Incoming::Data { cv, len })),
            Ok(Some(wire::Item::Piece(piece))) => Some(Ok(Incoming::Piece(piece))),
            Ok(Some(wire::Item::Invalid { error, .. })) => Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the server sent a request: {error}"),
            ))),
            Ok(None) => None,
            Err(e) => Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))),
        };
        if let Some(item) = item {
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
            continue;
        }
        let data_left = decoder.data_left();
        if data_left > 0 {
            // Reuse the buffer once the writer has let go of every piece cut from it.
            let size = data_left.min(PIECE);
            if buf.capacity() < size && !buf.try_reclaim(size) {
                buf = BytesMut::with_capacity(size);
            }
        } else {
            buf.reserve(PIECE);
        }
        match read.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the server closed the connection",
                    )))
                    .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        }
    }
}
