//! A file being sent: the store's chunks, each with its BLAKE3 CV computed on a blocking thread
//! while the front end sends the previous one, so hashing and reading overlap the network.

use std::io;

use barge_proto::tree::{CHUNK, Cv, chunk_cv};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::store::{Meta, Reading};

/// Chunks hashed ahead of the sender.
const HASHED_AHEAD: usize = 2;

/// One chunk ready to send.
#[derive(Debug)]
pub struct Chunk {
    /// Its index in the file.
    pub index: u64,
    /// Its chaining value.
    pub cv: Cv,
    /// Its bytes.
    pub data: Bytes,
}

/// A file opened for sending (see [`super::Session::send`]).
#[derive(Debug)]
pub struct Outgoing {
    /// The file's size, mtime and digest.
    pub meta: Meta,
    chunks: mpsc::Receiver<io::Result<Chunk>>,
}

impl Outgoing {
    /// Hashes `reading`, which starts at the chunk holding byte `from`.
    pub(super) fn new(reading: Reading, from: u64) -> Self {
        let Reading { meta, mut chunks } = reading;
        let (tx, rx) = mpsc::channel(HASHED_AHEAD);
        let mut index = from.min(meta.size) / CHUNK;
        tokio::task::spawn_blocking(move || {
            while let Some(item) = chunks.blocking_recv() {
                let item = item.map(|data| {
                    let chunk = Chunk {
                        index,
                        cv: chunk_cv(index, &data),
                        data,
                    };
                    index += 1;
                    chunk
                });
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    return;
                }
            }
        });
        Self { meta, chunks: rx }
    }

    /// The next chunk; `None` at the end. A file that changed while being read ends with an error.
    pub async fn next(&mut self) -> Option<io::Result<Chunk>> {
        self.chunks.recv().await
    }
}
