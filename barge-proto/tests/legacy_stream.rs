//! Stream-level properties of the lesson codec: any split or merge of reads decodes the same uploads.

use barge_proto::legacy::{DecodeError, Decoder, Frame, Header};
use bytes::BytesMut;
use proptest::prelude::*;

/// What a receiver reassembles: each upload's header and its whole body.
type Upload = (Header, Vec<u8>);

fn encode_all(uploads: &[Upload]) -> Vec<u8> {
    let mut wire = Vec::new();
    for (h, body) in uploads {
        h.encode(&mut wire).expect("encodable header");
        wire.extend_from_slice(body);
    }
    wire
}

/// Feeds `wire` to a decoder in pieces cut at `cuts`, collecting complete uploads.
fn decode_in_pieces(wire: &[u8], cuts: &[usize]) -> Result<(Vec<Upload>, bool), DecodeError> {
    let mut d = Decoder::new();
    let mut buf = BytesMut::new();
    let mut out: Vec<Upload> = Vec::new();
    let mut current: Option<Upload> = None;
    let mut start = 0;
    let mut ends: Vec<usize> = cuts.iter().copied().filter(|&c| c < wire.len()).collect();
    ends.sort_unstable();
    ends.push(wire.len());
    for end in ends {
        buf.extend_from_slice(&wire[start..end.max(start)]);
        start = end.max(start);
        while let Some(frame) = d.decode(&mut buf)? {
            match frame {
                Frame::Header(h) => {
                    assert!(current.is_none(), "header inside a body");
                    current = Some((h, Vec::new()));
                }
                Frame::Body(b) => current.as_mut().expect("body after header").1.extend(&b),
                Frame::End => out.push(current.take().expect("end after header")),
            }
        }
    }
    Ok((out, d.is_idle() && buf.is_empty()))
}

fn sample() -> Vec<Upload> {
    vec![
        (
            Header {
                msg: Some("注意身体,多喝营养快线".into()),
                ..Header::new("性感荷官在线发牌.,mp4", 5)
            },
            b"\x00\x01\n\xff\x02".to_vec(),
        ),
        (Header::new("empty", 0), Vec::new()),
        (Header::new("c.bin", 3), b"xyz".to_vec()),
    ]
}

#[test]
fn decode_split_at_every_byte() {
    let uploads = sample();
    let wire = encode_all(&uploads);
    for cut in 0..=wire.len() {
        let (got, idle) = decode_in_pieces(&wire, &[cut]).unwrap();
        assert_eq!(got, uploads, "cut at {cut}");
        assert!(idle);
    }
}

#[test]
fn decode_one_byte_at_a_time() {
    let uploads = sample();
    let wire = encode_all(&uploads);
    let cuts: Vec<usize> = (1..wire.len()).collect();
    assert_eq!(decode_in_pieces(&wire, &cuts).unwrap().0, uploads);
}

#[test]
fn decode_two_uploads_in_one_read() {
    let uploads = sample();
    let wire = encode_all(&uploads);
    let (got, idle) = decode_in_pieces(&wire, &[]).unwrap();
    assert_eq!(got, uploads);
    assert!(idle);
}

#[test]
fn decode_truncated_stream_is_idle_only_at_upload_boundaries() {
    let uploads = sample();
    let wire = encode_all(&uploads);
    // A stream may end cleanly after each whole upload, and, for a zero-size upload, right after
    // its header (its body is already complete).
    let mut boundaries = vec![0];
    let mut at = 0;
    for (h, body) in &uploads {
        at += h.to_bytes().unwrap().len();
        if body.is_empty() {
            boundaries.push(at);
        }
        at += body.len();
        boundaries.push(at);
    }
    for cut in 0..=wire.len() {
        let (_, idle) = decode_in_pieces(&wire[..cut], &[]).unwrap();
        assert_eq!(idle, boundaries.contains(&cut), "cut at {cut}");
    }
}

#[test]
fn decode_rejects_garbage_after_a_good_upload() {
    let mut wire = encode_all(&sample()[..1]);
    wire.extend_from_slice(&(-1i32).to_le_bytes());
    assert_eq!(
        decode_in_pieces(&wire, &[]),
        Err(DecodeError::NonPositiveLength(-1))
    );
}

fn arb_upload() -> impl Strategy<Value = Upload> {
    (
        "[^/\\\\\\x00]{1,40}",
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::option::of(any::<i64>()),
    )
        .prop_map(|(name, body, msg)| {
            (
                Header {
                    msg: msg.map(Into::into),
                    ..Header::new(name, body.len() as u64)
                },
                body,
            )
        })
}

proptest! {
    #[test]
    fn roundtrip_any_uploads_any_splits(
        uploads in proptest::collection::vec(arb_upload(), 0..5),
        cuts in proptest::collection::vec(0usize..4000, 0..20),
    ) {
        let wire = encode_all(&uploads);
        let (got, idle) = decode_in_pieces(&wire, &cuts).unwrap();
        prop_assert_eq!(got, uploads);
        prop_assert!(idle);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_in_pieces(&bytes, &[]);
    }
}
