//! A file being received: bytes go through the [`Verifier`] and on to the store's partial; a
//! chunk is confirmed to the store only once verified, and the file is published only when the
//! whole digest matches. An update may take some chunks from the version it replaces ([`Reuse`]):
//! those are read from the store, hashed as they are read, and written like received ones.

use barge_proto::tree::{Cv, chunk_count, chunk_len};
use bytes::Bytes;

use super::verify::{Mode, Verifier, VerifyError};
use crate::store::{OnConflict, Partial, StoreError, Stored};

/// An admitted transfer (see [`super::Session::receive`]). Dropping it without
/// [`Receiver::finish`] keeps its verified chunks for a resume (if the store keeps them).
#[derive(Debug)]
pub struct Receiver {
    partial: Option<Box<dyn Partial>>,
    verifier: Verifier,
    path: String,
    from: u64,
    on_conflict: OnConflict,
    pub(super) reuse: Option<Reuse>,
}

/// Chunks an update takes from the version it replaces: that version, being read in order, and
/// one flag per chunk of the new file.
#[derive(Debug)]
pub(super) struct Reuse {
    source: super::Outgoing,
    wanted: Vec<bool>,
}

impl Reuse {
    pub(super) fn new(source: super::Outgoing, wanted: Vec<bool>) -> Self {
        Self { source, wanted }
    }
}

impl From<VerifyError> for StoreError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Mismatch { .. } => StoreError::Integrity(e.to_string()),
            VerifyError::Shape(m) => StoreError::BadRequest(m),
        }
    }
}

impl Receiver {
    pub(super) fn new(
        partial: Box<dyn Partial>,
        mode: Mode,
        path: String,
        size: u64,
        from: u64,
        kept: Vec<Cv>,
        on_conflict: OnConflict,
    ) -> Self {
        Self {
            partial: Some(partial),
            verifier: Verifier::new(mode, size, kept),
            path,
            from,
            on_conflict,
            reuse: None,
        }
    }

    /// Takes the chunks to reuse that come next, up to the first one the sender sends.
    async fn fill(&mut self) -> Result<(), StoreError> {
        let size = self.verifier.size();
        loop {
            let index = self.verifier.cvs().len() as u64;
            let Some(reuse) = self.reuse.as_mut() else {
                return Ok(());
            };
            if index >= chunk_count(size) || !reuse.wanted[index as usize] {
                return Ok(());
            }
            let chunk = loop {
                let Some(chunk) = reuse.source.next().await else {
                    return Err(StoreError::BadRequest(format!(
                        "chunk {index} to reuse is past the end of the version replaced"
                    )));
                };
                let chunk = chunk?;
                if chunk.index == index {
                    break chunk;
                }
            };
            if chunk.data.len() as u64 != chunk_len(size, index) {
                return Err(StoreError::BadRequest(format!(
                    "chunk {index} to reuse has another length in the version replaced"
                )));
            }
            self.verifier.accept(chunk.cv, chunk.data.len() as u64)?;
            let partial = self.partial()?;
            partial.write(chunk.data).await?;
            partial.verified(chunk.cv).await?;
        }
    }

    /// The path asked for.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's declared size.
    pub fn size(&self) -> u64 {
        self.verifier.size()
    }

    /// Where this transfer started.
    pub fn from(&self) -> u64 {
        self.from
    }

    /// Bytes verified so far (kept ones included).
    pub fn verified(&self) -> u64 {
        self.verifier.verified()
    }

    /// Bytes received so far, verified or not (kept ones included).
    pub fn received(&self) -> u64 {
        self.verifier.received()
    }

    /// Offset of the next chunk expected.
    pub fn next_offset(&self) -> u64 {
        self.verifier.verified()
    }

    fn partial(&mut self) -> Result<&mut Box<dyn Partial>, StoreError> {
        self.partial
            .as_mut()
            .ok_or_else(|| StoreError::BadRequest("transfer closed".into()))
    }

    /// Resolves when the store failed on its own (a disk error in the background).
    pub async fn failure(&self) -> StoreError {
        match &self.partial {
            Some(p) => p.failure().await,
            None => std::future::pending().await,
        }
    }

    /// Starts the next chunk, of `len` bytes, which must hash to `cv` (checking mode).
    pub async fn begin_chunk(&mut self, cv: Cv, len: u64) -> Result<(), StoreError> {
        self.partial()?;
        self.fill().await?;
        Ok(self.verifier.begin_chunk(cv, len)?)
    }

    /// The next bytes. In computing mode they may span chunks; in checking mode they belong to
    /// the chunk begun last. A chunk that does not match its CV fails here, at its last byte.
    pub async fn write(&mut self, mut bytes: Bytes) -> Result<(), StoreError> {
        loop {
            let n = (self.verifier.room() as usize).min(bytes.len());
            if n == 0 && !bytes.is_empty() {
                // Past the chunk (or the file): the verifier names the mistake.
                self.verifier.update(&bytes)?;
            }
            let piece = bytes.split_to(n);
            if !piece.is_empty() {
                self.partial()?.write(piece.clone()).await?;
            }
            let verified = match self.verifier.update(&piece) {
                Ok(v) => v,
                Err(e) => {
                    // The chunk's bytes are written but never confirmed: a resume cuts them.
                    return Err(e.into());
                }
            };
            if let Some(cv) = verified {
                self.partial()?.verified(cv).await?;
            }
            if bytes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Finishes the transfer: every chunk verified, the whole digest equal to `declared` (when the
    /// sender declared one), then published under the conflict policy. The stored digest is the
    /// one computed here.
    pub async fn finish(mut self, declared: Option<Cv>) -> Result<Stored, StoreError> {
        if let Err(e) = self.fill().await {
            if let Some(p) = self.partial.take() {
                p.suspend().await;
            }
            return Err(e);
        }
        let partial = self
            .partial
            .take()
            .ok_or_else(|| StoreError::BadRequest("transfer closed".into()))?;
        if !self.verifier.complete() {
            let done = self.verifier.cvs().len();
            partial.suspend().await;
            return Err(StoreError::BadRequest(format!(
                "end after {done} of {} chunks",
                chunk_count(self.verifier.size())
            )));
        }
        let digest = self.verifier.digest();
        match (digest, declared) {
            (Some(d), Some(declared)) if d != declared => {
                partial.discard().await;
                Err(StoreError::Integrity(
                    "the file's digest does not match the sender's".into(),
                ))
            }
            (Some(d), _) => partial.publish(d, self.on_conflict).await,
            (None, _) => {
                partial.discard().await;
                Err(StoreError::Integrity("the file's digest is unknown".into()))
            }
        }
    }

    /// Throws the transfer away, kept chunks included (the sender gave it up).
    pub async fn discard(mut self) {
        if let Some(p) = self.partial.take() {
            p.discard().await;
        }
    }

    /// Stops receiving and waits until the verified part is kept.
    pub async fn suspend(mut self) {
        if let Some(p) = self.partial.take() {
            p.suspend().await;
        }
    }
}
