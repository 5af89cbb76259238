//! Reading a file as verified chunks (the sending client): a blocking thread reads each 1 MiB chunk
//! and computes its BLAKE3 chaining value while the async side sends the previous one, so hashing
//! and disk reads overlap the network and nothing makes a pass over the file before the first byte
//! goes out. [`read_next`] is also the local store's read of a chunk it serves.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use barge_proto::tree::{CHUNK, Cv, chunk_count, chunk_cv, chunk_len};
use bytes::Bytes;
use tokio::sync::mpsc;

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

/// Chunks read ahead of the consumer.
const READ_AHEAD: usize = 3;

/// Streams chunks `from / CHUNK ..` of a `size`-byte file. A file shorter than `size` (it shrank
/// since it was measured) ends the stream with an error.
pub fn read_chunks(file: File, size: u64, from: u64) -> mpsc::Receiver<io::Result<Chunk>> {
    read_every(file, size, from / CHUNK, 1)
}

/// Streams chunks `first`, `first + step`, `first + 2 * step`, ... of a `size`-byte file (one
/// connection's share of a striped upload when `step` > 1). Reads are positioned: the lanes of a
/// striped upload read clones of one file, which share one file offset.
pub fn read_every(
    file: File,
    size: u64,
    first: u64,
    step: u64,
) -> mpsc::Receiver<io::Result<Chunk>> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        for index in (first..chunk_count(size)).step_by(step.max(1) as usize) {
            let item = read_at(&file, index * CHUNK, chunk_len(size, index)).map(|buf| Chunk {
                index,
                cv: chunk_cv(index, &buf),
                data: Bytes::from(buf),
            });
            let failed = item.is_err();
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// `len` bytes of `file` at `offset`, read into spare capacity (no zero-filling), without
/// touching the file's offset. A file that ends first is an error.
pub fn read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len as usize);
    while (buf.len() as u64) < len {
        let at = offset + buf.len() as u64;
        let filled = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), at)?;
        if filled == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
    }
    Ok(buf)
}

/// The next `len` bytes of `file` (from its current position), read into spare capacity: no
/// zero-filling of a buffer the read overwrites anyway. A file that ends first is an error.
pub fn read_next(file: &File, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len as usize);
    let n = file.take(len).read_to_end(&mut buf)?;
    if (n as u64) < len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being sent",
        ));
    }
    Ok(buf)
}

/// The CVs of the first `upto` bytes of a file (a chunk boundary, or the whole file): what a
/// resuming sender compares with the receiver's kept prefix.
pub fn prefix_cvs(file: &File, upto: u64) -> io::Result<Vec<Cv>> {
    let mut cvs = Vec::with_capacity(chunk_count(upto) as usize);
    let mut buf = vec![0u8; CHUNK as usize];
    for index in 0..chunk_count(upto) {
        let len = chunk_len(upto, index) as usize;
        file.read_exact_at(&mut buf[..len], index * CHUNK)?;
        cvs.push(chunk_cv(index, &buf[..len]));
    }
    Ok(cvs)
}
