//! BLAKE3 chunk-tree verification, in one place for every front end: a [`Verifier`] either checks
//! each chunk against the CV the sender declared (barge v1) or computes the CVs itself (the
//! lesson's format, HTTP), and yields the whole file's digest at the end. Pure: no IO, no clock.

use barge_proto::tree::{CHUNK, ChunkHasher, Cv, chunk_count, chunk_len, file_digest};

/// Why bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A chunk's bytes do not hash to the CV declared for it.
    #[error("chunk {index} (bytes {start}..{end}) does not match its digest")]
    Mismatch {
        /// The chunk.
        index: u64,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
    },
    /// The bytes do not fit the file's chunks (wrong length, past the end, out of order).
    #[error("{0}")]
    Shape(String),
}

/// Where a chunk's CV comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The sender declares each chunk's CV before its bytes; a mismatch is refused.
    Check,
    /// The receiver computes each CV from the bytes (nothing to check chunk by chunk; the
    /// sender may still declare the whole digest).
    Compute,
}

/// Verifies one file's bytes, chunk by chunk, in order.
#[derive(Debug)]
pub struct Verifier {
    mode: Mode,
    size: u64,
    /// CVs of the chunks verified so far (kept from an earlier transfer first).
    cvs: Vec<Cv>,
    /// The chunk being received: its declared CV (checking) and hash so far.
    current: Option<(Option<Cv>, ChunkHasher)>,
    /// The digest of a file that is a single chunk: a plain hash, not a merge of CVs.
    single_root: Option<Cv>,
}

impl Verifier {
    /// A verifier for a `size`-byte file whose first chunks (`kept`) were verified before.
    pub fn new(mode: Mode, size: u64, kept: Vec<Cv>) -> Self {
        Self {
            mode,
            size,
            cvs: kept,
            current: None,
            single_root: None,
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes verified so far (a chunk boundary, or the size).
    pub fn verified(&self) -> u64 {
        (self.cvs.len() as u64 * CHUNK).min(self.size)
    }

    /// Bytes received so far, verified or not.
    pub fn received(&self) -> u64 {
        self.verified() + self.current.as_ref().map_or(0, |(_, h)| h.len())
    }

    /// Whether every chunk is verified.
    pub fn complete(&self) -> bool {
        self.cvs.len() as u64 == chunk_count(self.size)
    }

    /// The CVs verified so far.
    pub fn cvs(&self) -> &[Cv] {
        &self.cvs
    }

    /// Starts the next chunk, of `len` bytes, which must hash to `cv` (checking mode).
    pub fn begin_chunk(&mut self, cv: Cv, len: u64) -> Result<(), VerifyError> {
        let index = self.cvs.len() as u64;
        if self.mode != Mode::Check {
            return Err(VerifyError::Shape("chunk CVs are computed here".into()));
        }
        if self.current.is_some() {
            return Err(VerifyError::Shape(format!(
                "chunk {} started before the previous one ended",
                index + 1
            )));
        }
        let expected = chunk_len(self.size, index);
        if len != expected || index >= chunk_count(self.size) {
            return Err(VerifyError::Shape(format!(
                "chunk {index} is {len} bytes, expected {expected}"
            )));
        }
        self.current = Some((Some(cv), ChunkHasher::new(index)));
        Ok(())
    }

    /// Records the next chunk as verified without hashing it here: its CV was computed from its
    /// bytes by whoever read them (an update's chunks taken from the version it replaces).
    pub fn accept(&mut self, cv: Cv, len: u64) -> Result<(), VerifyError> {
        let index = self.cvs.len() as u64;
        if self.current.is_some()
            || index >= chunk_count(self.size)
            || len != chunk_len(self.size, index)
        {
            return Err(VerifyError::Shape(format!(
                "chunk {index} cannot be taken here"
            )));
        }
        if self.size <= CHUNK {
            // A one-chunk file's digest is a plain hash of its bytes, not known from a CV.
            return Err(VerifyError::Shape(
                "a one-chunk file cannot reuse chunks".into(),
            ));
        }
        self.cvs.push(cv);
        Ok(())
    }

    /// Room left in the current chunk: how many of the next bytes [`Verifier::update`] takes at
    /// once. In computing mode a new chunk starts by itself.
    pub fn room(&self) -> u64 {
        let index = self.cvs.len() as u64;
        match &self.current {
            Some((_, h)) => chunk_len(self.size, index) - h.len(),
            None if self.mode == Mode::Compute => chunk_len(self.size, index),
            None => 0,
        }
    }

    /// Hashes the next bytes, at most [`Verifier::room`] of them. Returns the chunk's CV when
    /// they complete it and it is verified.
    pub fn update(&mut self, piece: &[u8]) -> Result<Option<Cv>, VerifyError> {
        let index = self.cvs.len() as u64;
        if piece.len() as u64 > self.room() {
            return Err(VerifyError::Shape(if self.complete() {
                format!("more bytes than the declared size ({})", self.size)
            } else if self.current.is_none() {
                "data outside a chunk".into()
            } else {
                "more bytes than the chunk holds".into()
            }));
        }
        if piece.is_empty() {
            return Ok(None);
        }
        let (declared, hasher) = self
            .current
            .get_or_insert_with(|| (None, ChunkHasher::new(index)));
        hasher.update(piece);
        let len = hasher.len();
        if len < chunk_len(self.size, index) {
            return Ok(None);
        }
        let cv = hasher.cv();
        if let Some(declared) = declared
            && *declared != cv
        {
            let start = index * CHUNK;
            return Err(VerifyError::Mismatch {
                index,
                start,
                end: start + len,
            });
        }
        if self.size <= CHUNK {
            self.single_root = hasher.root();
        }
        self.current = None;
        self.cvs.push(cv);
        Ok(Some(cv))
    }

    /// The whole file's digest, once every chunk is verified.
    pub fn digest(&self) -> Option<Cv> {
        if !self.complete() {
            return None;
        }
        if self.size == 0 {
            return Some(*blake3::hash(b"").as_bytes());
        }
        if self.size <= CHUNK {
            return self.single_root;
        }
        file_digest(&self.cvs, self.size, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barge_proto::tree::chunk_cv;

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn computing_any_split_gives_the_b3sum_digest() {
        for len in [
            0,
            1,
            1000,
            CHUNK as usize,
            CHUNK as usize + 1,
            3 * CHUNK as usize - 5,
        ] {
            let data = body(len);
            for piece in [1usize << 10, 64 << 10, 1 << 20] {
                let mut v = Verifier::new(Mode::Compute, len as u64, Vec::new());
                let mut rest = &data[..];
                while !rest.is_empty() {
                    let n = (v.room() as usize).min(piece).min(rest.len());
                    v.update(&rest[..n]).unwrap();
                    rest = &rest[n..];
                }
                assert!(v.complete());
                assert_eq!(
                    v.digest(),
                    Some(*blake3::hash(&data).as_bytes()),
                    "{len}/{piece}"
                );
            }
        }
    }

    #[test]
    fn checking_refuses_a_changed_byte_and_names_the_chunk() {
        let size = 2 * CHUNK + 10;
        let data = body(size as usize);
        let mut v = Verifier::new(Mode::Check, size, Vec::new());
        let c0 = &data[..CHUNK as usize];
        v.begin_chunk(chunk_cv(0, c0), CHUNK).unwrap();
        assert_eq!(v.update(c0).unwrap(), Some(chunk_cv(0, c0)));
        let mut c1 = data[CHUNK as usize..2 * CHUNK as usize].to_vec();
        v.begin_chunk(chunk_cv(1, &c1), CHUNK).unwrap();
        c1[5] ^= 1;
        let e = v.update(&c1).unwrap_err();
        assert!(matches!(e, VerifyError::Mismatch { index: 1, start, .. } if start == CHUNK));
        assert_eq!(v.verified(), CHUNK);
    }

    #[test]
    fn checking_refuses_wrong_shapes() {
        let mut v = Verifier::new(Mode::Check, 10, Vec::new());
        assert!(v.update(b"x").is_err(), "data before a chunk");
        assert!(v.begin_chunk([0; 32], 9).is_err(), "wrong length");
        v.begin_chunk([0; 32], 10).unwrap();
        assert!(v.begin_chunk([0; 32], 10).is_err(), "chunk inside a chunk");
        assert!(v.update(&[0; 11]).is_err(), "more than the chunk");
    }

    #[test]
    fn a_resume_continues_from_the_kept_cvs() {
        let size = 3 * CHUNK;
        let data = body(size as usize);
        let kept: Vec<Cv> = (0..2)
            .map(|i| chunk_cv(i, &data[(i * CHUNK) as usize..((i + 1) * CHUNK) as usize]))
            .collect();
        let mut v = Verifier::new(Mode::Compute, size, kept);
        assert_eq!(v.verified(), 2 * CHUNK);
        v.update(&data[2 * CHUNK as usize..]).unwrap();
        assert_eq!(v.digest(), Some(*blake3::hash(&data).as_bytes()));
    }
}
