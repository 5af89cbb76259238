//! The properties every decoder keeps on any input from a peer, as functions that panic when one
//! fails: the fuzz targets (`fuzz/`) run them on mutated inputs, and proptest runs the same ones
//! in `cargo test` (`tests/properties.rs`).
//!
//! Each takes raw fuzz input: its first byte chooses how the stream is cut into reads (1..=256
//! bytes each), the rest is the stream. Properties checked:
//! - no panic, whatever the bytes;
//! - the same frames (or the same error) however the stream is cut into reads;
//! - bounded buffering: while waiting for more, a decoder never holds more than its largest
//!   acceptable frame (a declared length is checked before anything is buffered for it);
//! - what decodes, re-encodes to bytes that decode to the same thing.

use bytes::BytesMut;

use crate::legacy;
use crate::line::LineDecoder;
use crate::name::{printable, validate_file_name};
use crate::tree::Cv;
use crate::wire;

/// The read size and the stream in a fuzz input.
fn split_input(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&first, rest)) => (usize::from(first) + 1, rest),
        None => (1, data),
    }
}

/// Everything a decoder produced: one string per frame, and the error that ended the stream.
type Outcome = (Vec<String>, Option<String>);

/// Feeds `stream` in reads of `step` bytes (or all at once when `step` is `None`) through
/// `decode`, checking after each `None` that at most `bound` bytes are buffered. `decode` returns
/// what to record of each frame (nothing for frames whose boundaries depend on the reads).
fn drive<F, E>(stream: &[u8], step: Option<usize>, bound: usize, mut decode: F) -> Outcome
where
    F: FnMut(&mut BytesMut) -> Result<Option<Option<String>>, E>,
    E: std::fmt::Display,
{
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let step = step.unwrap_or(stream.len().max(1));
    for piece in stream.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match decode(&mut buf) {
                Ok(Some(record)) => frames.extend(record),
                Ok(None) => break,
                Err(e) => return (frames, Some(e.to_string())),
            }
        }
        assert!(
            buf.len() <= bound,
            "decoder buffers {} bytes waiting for more (bound {bound})",
            buf.len()
        );
    }
    (frames, None)
}

/// The lesson's upload stream. Body frames depend on how reads fall, so bodies are compared as
/// the concatenation of their pieces.
pub fn legacy_stream(data: &[u8]) {
    let (step, stream) = split_input(data);
    let run = |step: Option<usize>| {
        let mut decoder = legacy::Decoder::new();
        let mut body: Vec<u8> = Vec::new();
        // A header in progress is at most its length prefix and JSON; body bytes go out at once.
        let outcome = drive(stream, step, 4 + legacy::MAX_HEADER_LEN, |buf| {
            let record = decoder.decode(buf)?.map(|frame| match frame {
                legacy::Frame::Body(b) => {
                    body.extend_from_slice(&b);
                    None
                }
                legacy::Frame::Header(h) => {
                    // A decoded header re-encodes to one that decodes the same.
                    if let Ok(bytes) = h.to_bytes() {
                        let back = legacy::parse_header(&bytes);
                        assert!(matches!(back, Ok(Some((ref again, _))) if *again == h));
                    }
                    Some(format!("{h:?}"))
                }
                legacy::Frame::End => Some(format!("end {}", blake3::hash(&body))),
            });
            Ok::<_, legacy::DecodeError>(record)
        });
        (outcome, blake3::hash(&body))
    };
    assert_eq!(run(Some(step)), run(None));
}

/// barge's frame stream (after the preface).
pub fn wire_stream(data: &[u8]) {
    let (step, stream) = split_input(data);
    let run = |step: Option<usize>| {
        drive(stream, step, wire::FRAME_HEADER + wire::MAX_DATA, |buf| {
            let frame = wire::decode_frame(buf)?;
            Ok::<_, wire::WireError>(frame.map(|f| {
                round_trip(&f);
                Some(format!("{f:?}"))
            }))
        })
    };
    let whole = run(Some(step));
    assert_eq!(whole, run(None));
    // The stream decoder both ends use, taking data bytes off as they come, sees the same frames.
    let streamed = drive(stream, Some(step), wire::FRAME_HEADER + wire::MAX_JSON, {
        let mut decoder = wire::StreamDecoder::new();
        let mut data: Option<(Cv, Vec<u8>)> = None;
        move |buf| match decoder.decode(buf)? {
            None => Ok(None),
            Some(wire::Item::Frame(f)) => Ok(Some(Some(format!("{f:?}")))),
            // The whole decoder reports the same request as an error.
            Some(wire::Item::Invalid { error, .. }) => Err(wire::WireError::BadJson(error)),
            Some(wire::Item::Data { cv, len }) => {
                assert_eq!(len, decoder.data_left());
                if len > 0 {
                    data = Some((cv, Vec::new()));
                    return Ok(Some(None));
                }
                let frame = wire::Frame::Data {
                    cv,
                    data: bytes::Bytes::new(),
                };
                Ok::<_, wire::WireError>(Some(Some(format!("{frame:?}"))))
            }
            Some(wire::Item::Piece(piece)) => {
                let Some((cv, mut bytes)) = data.take() else {
                    panic!("a piece outside a data frame");
                };
                bytes.extend_from_slice(&piece);
                if decoder.data_left() > 0 {
                    data = Some((cv, bytes));
                    return Ok(Some(None));
                }
                let frame = wire::Frame::Data {
                    cv,
                    data: bytes.into(),
                };
                Ok(Some(Some(format!("{frame:?}"))))
            }
        }
    });
    // A stream ending inside a data frame is only an unfinished frame to the whole decoder.
    assert!(
        whole.0.starts_with(&streamed.0) && whole.1 == streamed.1,
        "streaming decode differs: {streamed:?} vs {whole:?}"
    );
}

/// A decoded frame encodes to bytes that decode to the same frame.
fn round_trip(frame: &wire::Frame) {
    let mut out = BytesMut::new();
    match frame {
        wire::Frame::Request(r) => wire::encode_request(r, &mut out),
        wire::Frame::Reply(r) => wire::encode_reply(r, &mut out),
        wire::Frame::Data { cv, data } => {
            wire::encode_data_header(cv, data.len(), &mut out);
            out.extend_from_slice(data);
        }
    }
    let back = wire::decode_frame(&mut out);
    assert_eq!(back, Ok(Some(frame.clone())), "frame does not round-trip");
    assert!(out.is_empty());
}

/// One request's JSON, as a server parses it, and the paths it carries.
pub fn request_json(data: &[u8]) {
    let Ok(req) = serde_json::from_slice::<wire::Request>(data) else {
        return;
    };
    round_trip(&wire::Frame::Request(req.clone()));
    let path = match &req {
        wire::Request::Probe { path, .. }
        | wire::Request::Put { path, .. }
        | wire::Request::Mkdir { path, .. }
        | wire::Request::List { path, .. }
        | wire::Request::Get { path, .. } => path,
        _ => return,
    };
    if let Ok(parts) = wire::split_path(path) {
        for part in parts {
            assert!(!part.is_empty() && part != "." && part != "..");
            assert!(!part.contains(['/', '\\', '\0']));
        }
    }
}

/// The echo service's lines, with a small cap so long lines are exercised.
pub fn line_stream(data: &[u8]) {
    let (step, stream) = split_input(data);
    const CAP: usize = 64;
    let run = |step: Option<usize>| {
        let mut decoder = LineDecoder::new(CAP);
        drive(stream, step, CAP, |buf| {
            let line = decoder.decode(buf)?;
            Ok::<_, crate::line::LineError>(line.map(|l| {
                assert!(l.len() <= CAP && !l.contains(&b'\n'));
                Some(format!("{l:?}"))
            }))
        })
    };
    assert_eq!(run(Some(step)), run(None));
}

/// A name a peer asks for: if accepted, it is one harmless path component; either way it prints
/// without terminal controls.
pub fn file_name(data: &[u8]) {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ok) = validate_file_name(name) {
        assert!(!ok.is_empty() && ok.len() <= 255);
        assert!(ok != "." && ok != "..");
        assert!(!ok.contains(['/', '\\']) && !ok.chars().any(char::is_control));
    }
    assert!(!printable(name).chars().any(char::is_control));
}
