//! Listings, page by page with a bound on what a server may send, and `bench`.

use super::*;

/// Lists `path` on the server (everything below it when `recursive`).
pub async fn list(
    dial: &dyn Dial,
    path: &str,
    recursive: bool,
    opts: &Options,
) -> Result<Result<Vec<Entry>, (Status, String)>, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let entries = list_on(&mut link, path, recursive, opts.max_listed).await;
    link.close().await;
    entries
}

/// Lists `path` like [`list`], handing each entry to `each` as its page arrives instead of
/// keeping them: memory stays flat whatever the listing's size. Returns how many there were.
pub async fn list_each(
    dial: &dyn Dial,
    path: &str,
    recursive: bool,
    opts: &Options,
    each: &mut (dyn FnMut(Entry) -> io::Result<()> + Send),
) -> Result<Result<u64, (Status, String)>, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let mut sink = |e: Entry| each(e).map_err(TransferError::Lost);
    let counted = list_pages(&mut link, path, recursive, opts.max_listed, &mut sink).await;
    link.close().await;
    counted
}

pub(super) async fn list_on(
    link: &mut Link,
    path: &str,
    recursive: bool,
    limit: u64,
) -> Result<Result<Vec<Entry>, (Status, String)>, TransferError> {
    let mut entries = Vec::new();
    let mut keep = |e| {
        entries.push(e);
        Ok(())
    };
    Ok(list_pages(link, path, recursive, limit, &mut keep)
        .await?
        .map(|_| entries))
}

/// Asks for a listing and passes its entries on page by page. A server that sends more than
/// `limit` entries, or an empty page that promises more, is not followed any further.
pub(super) async fn list_pages(
    link: &mut Link,
    path: &str,
    recursive: bool,
    limit: u64,
    each: &mut (dyn FnMut(Entry) -> Result<(), TransferError> + Send),
) -> Result<Result<u64, (Status, String)>, TransferError> {
    let id = link.id();
    link.request(&Request::List {
        id,
        path: path.to_owned(),
        recursive,
    })
    .await?;
    let mut count = 0u64;
    loop {
        let reply = link.reply().await?;
        if reply.id != id {
            return Err(TransferError::Protocol("reply to another request".into()));
        }
        if reply.status != Status::Ok {
            return Ok(Err((reply.status, reply.message.unwrap_or_default())));
        }
        let page = reply.entries.unwrap_or_default();
        let more = reply.more.unwrap_or(false);
        if more && page.is_empty() {
            return Err(TransferError::Protocol(
                "the server sent an empty listing page that promised more".into(),
            ));
        }
        count += page.len() as u64;
        if count > limit {
            return Err(TransferError::Protocol(format!(
                "the server's listing goes on past {limit} entries: not followed"
            )));
        }
        for e in page {
            each(e)?;
        }
        if !more {
            return Ok(Ok(count));
        }
    }
}

/// Measures what the link carries with barge's framing, memory to memory: sends `size` bytes of
/// data frames that the server counts and drops (no disk, no hashing on either side). Returns the
/// time from the first byte sent to the server's reply after the last.
pub async fn bench(dial: &dyn Dial, size: u64, opts: &Options) -> Result<Duration, TransferError> {
    let mut link = Link::open(dial, opts).await?;
    let id = link.id();
    link.request(&Request::Bench { id, size }).await?;
    let payload = bytes::Bytes::from(vec![0u8; CHUNK as usize]);
    let started = Instant::now();
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK) as usize;
        link.data(&[0; 32], payload.slice(..n)).await?;
        left -= n as u64;
    }
    let reply = link.reply().await?;
    let elapsed = started.elapsed();
    link.close().await;
    if reply.status != Status::Ok || reply.size != Some(size) {
        return Err(TransferError::Protocol(format!(
            "bench not confirmed: {}",
            reply.message.unwrap_or_default()
        )));
    }
    Ok(elapsed)
}
