//! Sending one large file over several connections (`send --streams N`): the put's own
//! connection carries chunks `first`, `first + N`, ...; N - 1 more connections `join` with the
//! put's key and carry the others. Each connection reads and hashes its own chunks (so hashing
//! spreads over cores too); the whole digest is made from every chunk's CV at the end, so the
//! server verifies exactly what a single connection would have sent.
//!
//! Why: one TCP flow is often limited on its own (a per-flow shaper, a long fat path whose window
//! one connection cannot fill). A failed join fails the put; the retry resumes from what the
//! server verified in order, like any interrupted upload.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use barge_proto::tree::{CHUNK, Cv, chunk_count};
use barge_proto::wire::{Request, Status};

use super::link::{Dial, Link};
use super::{Event, Options, Throttle, TransferError};
use crate::chunks::read_every;

/// A file is striped only when each connection gets at least this many chunks: below that the
/// extra connections' set-up costs more than it can win.
pub(super) const MIN_CHUNKS_PER_STREAM: u64 = 4;

/// How many connections to stripe a put of `size` bytes from `from` over (1: not striped).
pub(super) fn streams_for(opts: &Options, size: u64, from: u64) -> u32 {
    let chunks = chunk_count(size).saturating_sub(from / CHUNK);
    let most = (chunks / MIN_CHUNKS_PER_STREAM).min(u64::from(barge_proto::wire::MAX_STREAMS));
    u64::from(opts.streams).min(most).max(1) as u32
}

/// A new stripe key: 128 bits from the system's generator, as 32 hex digits.
pub(super) fn new_key() -> Result<String, TransferError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| TransferError::Lost(io::Error::other("no randomness for a stripe key")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// What one striped put sent: the CVs of its chunks, in file order, and the bytes sent.
pub(super) struct Sent {
    pub cvs: Vec<Cv>,
    pub bytes: u64,
    /// The server refused the put while it was being sent (its reply is on the put's link).
    pub refused: bool,
}

/// A striped put after its `put` request: sends stream 0's chunks on `link` and the others on
/// new connections, all at once.
pub(super) async fn send_chunks(
    (link, dial, opts): (&mut Link, &dyn Dial, &Options),
    (id, key, streams): (u64, &str, u32),
    remote: &str,
    file: &File,
    (size, from): (u64, u64),
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Sent, TransferError> {
    // The put goes out before any join, which the server matches to it by key.
    link.flush().await?;
    let first = from / CHUNK;
    let done = Arc::new(AtomicU64::new(from));
    let clone = || file.try_clone().map_err(TransferError::Lost);
    let mut joins = Vec::new();
    for stream in 1..streams {
        joins.push(join(
            dial,
            opts,
            key,
            stream,
            clone()?,
            (size, first, u64::from(streams)),
            done.clone(),
        ));
    }
    let joins = futures::future::try_join_all(joins);
    tokio::pin!(joins);
    let own = own_lane(
        link,
        id,
        remote,
        clone()?,
        (size, first, u64::from(streams)),
        &done,
        on_event,
    );
    tokio::pin!(own);
    // The put's own lane settles the outcome when the server refused the put (the joins then
    // fail for want of a stripe); a join that fails first fails the put, to be resumed.
    let (own, theirs) = tokio::select! {
        own = &mut own => {
            let own = own?;
            if own.refused {
                return Ok(Sent { cvs: Vec::new(), bytes: own.bytes, refused: true });
            }
            (own, joins.await?)
        }
        theirs = &mut joins => {
            let theirs = theirs?;
            (own.await?, theirs)
        }
    };
    if own.refused {
        return Ok(Sent {
            cvs: Vec::new(),
            bytes: own.bytes,
            refused: true,
        });
    }
    let mut all: Vec<(u64, Cv)> = own.cvs;
    let mut bytes = own.bytes;
    for lane in theirs {
        bytes += lane.bytes;
        all.extend(lane.cvs);
    }
    all.sort_unstable_by_key(|(index, _)| *index);
    let expected = chunk_count(size) - first;
    if all.len() as u64 != expected
        || all
            .iter()
            .enumerate()
            .any(|(i, (index, _))| *index != first + i as u64)
    {
        return Err(TransferError::Protocol(
            "striped lanes did not cover the file".into(),
        ));
    }
    Ok(Sent {
        cvs: all.into_iter().map(|(_, cv)| cv).collect(),
        bytes,
        refused: false,
    })
}

/// One lane's chunks: their indexes and CVs, and the bytes sent.
struct LaneSent {
    cvs: Vec<(u64, Cv)>,
    bytes: u64,
    refused: bool,
}

fn local(remote: &str) -> impl Fn(io::Error) -> TransferError + '_ {
    move |source| TransferError::Local {
        path: remote.into(),
        source,
    }
}

/// Stream 0: the put's own connection.
async fn own_lane(
    link: &mut Link,
    id: u64,
    remote: &str,
    file: File,
    (size, first, step): (u64, u64, u64),
    done: &AtomicU64,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<LaneSent, TransferError> {
    let mut chunks = read_every(file, size, first, step);
    let mut sent = LaneSent {
        cvs: Vec::new(),
        bytes: 0,
        refused: false,
    };
    let mut throttle = Throttle::new();
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(local(remote))?;
        let len = chunk.data.len() as u64;
        sent.cvs.push((chunk.index, chunk.cv));
        link.data(&chunk.cv, chunk.data).await?;
        sent.bytes += len;
        let now = done.fetch_add(len, Ordering::Relaxed) + len;
        throttle.tick(remote, now, size, on_event);
        if link.refused_already(id)? {
            sent.refused = true;
            return Ok(sent);
        }
    }
    link.flush().await?;
    Ok(sent)
}

/// Streams 1 ..: a connection of its own, which joins the put and sends its chunks.
async fn join(
    dial: &dyn Dial,
    opts: &Options,
    key: &str,
    stream: u32,
    file: File,
    (size, first, step): (u64, u64, u64),
    done: Arc<AtomicU64>,
) -> Result<LaneSent, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let id = link.id();
    link.request(&Request::Join {
        id,
        key: key.to_owned(),
        stream,
    })
    .await?;
    // A join's refusal is answered like a lost connection: the put is resumed from what the
    // server verified, on new connections.
    let refused = |message: Option<String>| {
        TransferError::Lost(io::Error::other(format!(
            "stream {stream} refused: {}",
            message.unwrap_or_default()
        )))
    };
    let mut chunks = read_every(file, size, first + u64::from(stream), step);
    let mut sent = LaneSent {
        cvs: Vec::new(),
        bytes: 0,
        refused: false,
    };
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.map_err(|source| TransferError::Local {
            path: format!("stream {stream}").into(),
            source,
        })?;
        let len = chunk.data.len() as u64;
        sent.cvs.push((chunk.index, chunk.cv));
        link.data(&chunk.cv, chunk.data).await?;
        sent.bytes += len;
        done.fetch_add(len, Ordering::Relaxed);
        if let Some(reply) = link.arrived_reply()?
            && reply.status != Status::Ok
        {
            return Err(refused(reply.message));
        }
    }
    let reply = link.reply().await?;
    if reply.id != id || reply.status != Status::Ok {
        return Err(refused(reply.message));
    }
    link.close().await;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_32_hex_digits_and_differ() {
        let a = super::new_key().unwrap();
        let b = super::new_key().unwrap();
        assert_ne!(a, b);
        let stripe = barge_proto::wire::Stripe { key: a, streams: 2 };
        assert_eq!(stripe.check(), Ok(()));
    }
}
