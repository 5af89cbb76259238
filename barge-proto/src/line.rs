//! Newline-delimited messages with a length cap: the echo service's framing (the lesson's client
//! sends `hello\n`).
//!
//! A message is the bytes before a `\n`; the `\n` is not part of it. The cap is checked as bytes
//! arrive, so a peer that never sends a newline cannot make the receiver buffer more than
//! `max_len + 1` bytes.

use bytes::{Buf, BytesMut};

/// Why the stream is not a sequence of acceptable lines.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line ran past the cap before its newline.
    #[error("line longer than {max} bytes")]
    TooLong {
        /// The cap in force.
        max: usize,
    },
}

/// Incremental splitter of `\n`-terminated lines.
#[derive(Debug, Clone)]
pub struct LineDecoder {
    max_len: usize,
    /// Bytes of `buf` already scanned without finding a newline: each byte is looked at once.
    scanned: usize,
}

impl LineDecoder {
    /// A decoder accepting lines of at most `max_len` bytes (newline excluded).
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            scanned: 0,
        }
    }

    /// The cap on a line's length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Takes the next complete line off `buf` (without its `\n`). `Ok(None)`: no complete line yet.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        // Only look as far as a line may reach (its bytes plus the newline).
        let limit = buf.len().min(self.max_len.saturating_add(1));
        match buf[self.scanned.min(limit)..limit]
            .iter()
            .position(|&b| b == b'\n')
        {
            Some(i) => {
                let end = self.scanned.min(limit) + i;
                self.scanned = 0;
                let line = buf.split_to(end);
                buf.advance(1);
                Ok(Some(line))
            }
            None if limit > self.max_len => Err(LineError::TooLong { max: self.max_len }),
            None => {
                self.scanned = limit;
                Ok(None)
            }
        }
    }

    /// At end of input: the last line if it had no newline (empty input gives `None`).
    pub fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<BytesMut>, LineError> {
        if let Some(line) = self.decode(buf)? {
            return Ok(Some(line));
        }
        self.scanned = 0;
        if buf.is_empty() {
            Ok(None)
        } else {
            Ok(Some(buf.split()))
        }
    }
}

/// The lesson's reply rule, `bytes.upper()`: ASCII letters upper-cased, every other byte kept, so
/// any input (non-UTF-8 included) has a reply and multi-byte characters are never split.
pub fn upper_in_place(bytes: &mut [u8]) {
    bytes.make_ascii_uppercase();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize, cuts: &[usize]) -> Result<Vec<Vec<u8>>, LineError> {
        let mut d = LineDecoder::new(max);
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&input.len())) {
            let end = end.clamp(start, input.len());
            buf.extend_from_slice(&input[start..end]);
            start = end;
            while let Some(l) = d.decode(&mut buf)? {
                out.push(l.to_vec());
            }
        }
        if let Some(l) = d.decode_eof(&mut buf)? {
            out.push(l.to_vec());
        }
        Ok(out)
    }

    #[test]
    fn decode_lines_split_at_every_byte() {
        let input = b"hello\n\nworld\nlast";
        let want: Vec<Vec<u8>> = vec![
            b"hello".to_vec(),
            vec![],
            b"world".to_vec(),
            b"last".to_vec(),
        ];
        for cut in 0..=input.len() {
            assert_eq!(lines(input, 10, &[cut]).unwrap(), want, "cut {cut}");
        }
        let every: Vec<usize> = (1..input.len()).collect();
        assert_eq!(lines(input, 10, &every).unwrap(), want);
    }

    #[test]
    fn decode_accepts_exactly_max_and_refuses_one_more() {
        assert_eq!(lines(b"12345\n", 5, &[]).unwrap(), vec![b"12345".to_vec()]);
        assert_eq!(
            lines(b"123456\n", 5, &[]),
            Err(LineError::TooLong { max: 5 })
        );
        // Refused before the newline arrives: nothing more is buffered.
        let mut d = LineDecoder::new(5);
        let mut buf = BytesMut::from(&b"123456"[..]);
        assert_eq!(d.decode(&mut buf), Err(LineError::TooLong { max: 5 }));
        // An unterminated last line is capped the same way.
        assert_eq!(lines(b"123456", 5, &[]), Err(LineError::TooLong { max: 5 }));
    }

    #[test]
    fn decode_eof_of_empty_input_is_nothing() {
        assert_eq!(lines(b"", 5, &[]).unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(lines(b"a\n", 5, &[]).unwrap(), vec![b"a".to_vec()]);
    }

    #[test]
    fn upper_keeps_non_ascii_and_garbage() {
        let mut b = "héllo 荷官 \u{0}\u{ff}".as_bytes().to_vec();
        b.push(0xff);
        upper_in_place(&mut b);
        let mut want = "HéLLO 荷官 \u{0}\u{ff}".as_bytes().to_vec();
        want.push(0xff);
        assert_eq!(b, want);
    }
}
