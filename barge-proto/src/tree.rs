//! BLAKE3 over 1 MiB chunks: each chunk's chaining value (CV) is its integrity tag on the wire, and
//! the file's digest — the ordinary BLAKE3 hash, identical to `b3sum` — is merged from the CVs.
//!
//! BLAKE3 is a binary tree over 1 KiB chunks whose left subtrees are always the largest power of
//! two that fits. A 1 MiB chunk at a 1 MiB-aligned offset is therefore exactly one complete subtree
//! (or the final, possibly shorter, right edge), so the file's root hash can be assembled from the
//! 1 MiB subtrees' CVs without hashing any byte twice. That gives three things at once: per-chunk
//! verification as data arrives, a whole-file digest in the same pass, and a resume point that is
//! just the list of verified CVs.

use blake3::hazmat::{
    HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// Bytes per chunk: a power of two, so chunks are aligned BLAKE3 subtrees.
pub const CHUNK: u64 = 1 << 20;
/// A chaining value (or digest): 32 bytes.
pub type Cv = [u8; 32];

/// Number of chunks of a `size`-byte file (an empty file has none).
pub fn chunk_count(size: u64) -> u64 {
    size.div_ceil(CHUNK)
}

/// Length of chunk `index` in a `size`-byte file.
pub fn chunk_len(size: u64, index: u64) -> u64 {
    size.saturating_sub(index * CHUNK).min(CHUNK)
}

/// The chaining value of chunk `index` (its bytes are `data`).
pub fn chunk_cv(index: u64, data: &[u8]) -> Cv {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * CHUNK);
    h.update(data);
    h.finalize_non_root()
}

/// Hashes chunk `index` as its bytes arrive in pieces: the same CV as [`chunk_cv`] over their
/// concatenation, without holding the chunk.
#[derive(Debug, Clone)]
pub struct ChunkHasher {
    hasher: blake3::Hasher,
    index: u64,
    len: u64,
}

impl ChunkHasher {
    /// Starts chunk `index`.
    pub fn new(index: u64) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.set_input_offset(index * CHUNK);
        Self {
            hasher,
            index,
            len: 0,
        }
    }

    /// Adds the next bytes of the chunk.
    pub fn update(&mut self, piece: &[u8]) {
        self.hasher.update(piece);
        self.len += piece.len() as u64;
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before any byte.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunk's CV.
    pub fn cv(&self) -> Cv {
        self.hasher.finalize_non_root()
    }

    /// The hash of a file that is this one chunk (chunk 0, the whole file).
    pub fn root(&self) -> Option<Cv> {
        (self.index == 0).then(|| *self.hasher.finalize().as_bytes())
    }
}

/// The BLAKE3 hash of a whole `size`-byte file from its chunk CVs. For files of one chunk or less
/// the root is not a merge, so the caller passes that chunk's bytes as `single`.
pub fn file_digest(cvs: &[Cv], size: u64, single: Option<&[u8]>) -> Option<Cv> {
    if size <= CHUNK {
        return single.map(|d| *blake3::hash(d).as_bytes());
    }
    if cvs.len() as u64 != chunk_count(size) {
        return None;
    }
    let left = left_subtree_len(size);
    let k = (left / CHUNK) as usize;
    let l = subtree(&cvs[..k], left);
    let r = subtree(&cvs[k..], size - left);
    Some(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

/// The non-root CV of a complete subtree of `len` bytes made of `cvs.len()` chunks.
fn subtree(cvs: &[Cv], len: u64) -> Cv {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(len);
    let k = (left / CHUNK) as usize;
    merge_subtrees_non_root(
        &subtree(&cvs[..k], left),
        &subtree(&cvs[k..], len - left),
        Mode::Hash,
    )
}

/// A digest of a list of CVs: what two sides compare to agree that their kept prefixes match.
pub fn prefix_digest(cvs: &[Cv]) -> Cv {
    let mut h = blake3::Hasher::new();
    for cv in cvs {
        h.update(cv);
    }
    *h.finalize().as_bytes()
}

/// Lower-case hex of a digest.
pub fn hex(cv: &Cv) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in cv {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Parses 64 hex digits.
pub fn parse_hex(s: &str) -> Option<Cv> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn digest_via_chunks(d: &[u8]) -> Cv {
        let size = d.len() as u64;
        let cvs: Vec<Cv> = d
            .chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| chunk_cv(i as u64, c))
            .collect();
        file_digest(&cvs, size, (size <= CHUNK).then_some(d)).unwrap()
    }

    #[test]
    fn chunk_hasher_in_pieces_equals_chunk_cv() {
        let d = data(CHUNK as usize);
        for index in [0, 1, 7] {
            let mut h = ChunkHasher::new(index);
            for piece in d.chunks(65_537) {
                h.update(piece);
            }
            assert_eq!(h.len(), CHUNK);
            assert_eq!(h.cv(), chunk_cv(index, &d));
        }
        let small = data(5000);
        let mut h = ChunkHasher::new(0);
        h.update(&small[..10]);
        h.update(&small[10..]);
        assert_eq!(h.root(), Some(*blake3::hash(&small).as_bytes()));
        assert_eq!(ChunkHasher::new(1).root(), None);
    }

    #[test]
    fn file_digest_equals_blake3_hash() {
        let c = CHUNK as usize;
        for len in [
            0,
            1,
            1024,
            c - 1,
            c,
            c + 1,
            2 * c,
            2 * c + 7,
            3 * c,
            5 * c - 3,
            8 * c,
            9 * c + 1,
        ] {
            let d = data(len);
            assert_eq!(
                digest_via_chunks(&d),
                *blake3::hash(&d).as_bytes(),
                "len {len}"
            );
        }
    }

    #[test]
    fn chunk_geometry() {
        assert_eq!(chunk_count(0), 0);
        assert_eq!(chunk_count(1), 1);
        assert_eq!(chunk_count(CHUNK), 1);
        assert_eq!(chunk_count(CHUNK + 1), 2);
        assert_eq!(chunk_len(CHUNK + 1, 0), CHUNK);
        assert_eq!(chunk_len(CHUNK + 1, 1), 1);
        assert_eq!(chunk_len(CHUNK, 1), 0);
    }

    #[test]
    fn a_changed_byte_changes_its_chunk_cv_only() {
        let mut d = data(3 * CHUNK as usize);
        let before: Vec<Cv> = d
            .chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| chunk_cv(i as u64, c))
            .collect();
        d[CHUNK as usize + 5] ^= 1;
        let after: Vec<Cv> = d
            .chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| chunk_cv(i as u64, c))
            .collect();
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1], after[1]);
        assert_eq!(before[2], after[2]);
        // The same bytes at another position have another CV: chunks cannot be reordered.
        assert_ne!(
            chunk_cv(0, &d[..CHUNK as usize]),
            chunk_cv(2, &d[..CHUNK as usize])
        );
    }

    #[test]
    fn hex_round_trip() {
        let cv = *blake3::hash(b"x").as_bytes();
        assert_eq!(parse_hex(&hex(&cv)), Some(cv));
        assert_eq!(parse_hex("zz"), None);
        assert_eq!(parse_hex(&"g".repeat(64)), None);
    }
}
