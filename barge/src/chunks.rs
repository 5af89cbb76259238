//! Reading a file as verified chunks (the sending client): a blocking thread reads each 1 MiB chunk
//! and computes its BLAKE3 chaining value while the async side sends the previous one, so hashing
//! and disk reads overlap the network and nothing makes a pass over the file before the first byte
//! goes out. [`read_next`] is also the local store's read of a chunk it serves.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
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
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    tokio::task::spawn_blocking(move || {
        let first = from / CHUNK;
        let mut file = file;
        if let Err(e) = file.seek(SeekFrom::Start(first * CHUNK)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        for index in first..chunk_count(size) {
            let item = read_next(&file, chunk_len(size, index)).map(|buf| Chunk {
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
