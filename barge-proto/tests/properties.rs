//! The fuzz targets' properties (`barge_proto::check`), run by proptest on every `cargo test`:
//! random bytes, and random bytes grown from valid streams so decoding gets past the first check.

use barge_proto::check;
use barge_proto::legacy::Header;
use barge_proto::wire::{self, Request};
use bytes::BytesMut;
use proptest::prelude::*;

/// A valid barge frame stream of a few requests and data frames, then arbitrary bytes.
fn wire_streams() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        prop::collection::vec(("[a-z./]{0,12}", any::<u64>(), 0usize..300), 0..4),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(step, frames, tail)| {
            let mut out = BytesMut::new();
            out.extend_from_slice(&[step]);
            for (path, n, data) in frames {
                let req = Request::Put {
                    id: n,
                    path,
                    size: n,
                    from: 0,
                    replaces: None,
                    reuse: None,
                    mtime: None,
                    stripe: None,
                };
                wire::encode_request(&req, &mut out);
                wire::encode_data_header(&[n as u8; 32], data, &mut out);
                out.extend_from_slice(&vec![7u8; data]);
            }
            out.extend_from_slice(&tail);
            out.to_vec()
        })
}

/// A valid lesson stream of a few uploads, then arbitrary bytes.
fn legacy_streams() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        prop::collection::vec((".{0,20}", 0usize..500), 0..4),
        prop::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(step, uploads, tail)| {
            let mut out = vec![step];
            for (name, size) in uploads {
                Header::new(name, size as u64)
                    .encode(&mut out)
                    .expect("encodable header");
                out.extend(std::iter::repeat_n(3u8, size));
            }
            out.extend_from_slice(&tail);
            out
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn wire_stream_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        check::wire_stream(&data);
    }

    #[test]
    fn wire_stream_on_valid_prefixes(data in wire_streams()) {
        check::wire_stream(&data);
    }

    #[test]
    fn legacy_stream_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        check::legacy_stream(&data);
    }

    #[test]
    fn legacy_stream_on_valid_prefixes(data in legacy_streams()) {
        check::legacy_stream(&data);
    }

    #[test]
    fn line_stream_on_random_bytes(data in prop::collection::vec(prop_oneof![Just(b'\n'), any::<u8>()], 0..600)) {
        check::line_stream(&data);
    }

    #[test]
    fn request_json_on_valid_and_near_valid_requests(
        which in 0usize..6,
        path in ".{0,30}",
        n in any::<u64>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let req = match which {
            0 => Request::Put { id: n, path, size: n, from: 0, replaces: None, reuse: None, mtime: None, stripe: None },
            1 => Request::Get {
                id: n,
                path,
                from: n,
                digest: (n % 3 == 0).then(|| "ab".repeat(32)),
            },
            2 => Request::List { id: n, path, recursive: n % 2 == 0 },
            3 => Request::Probe { id: n, path, size: n },
            4 => Request::Mkdir { id: n, path },
            _ => Request::Auth { id: n, token: path },
        };
        let json = serde_json::to_vec(&req).unwrap();
        check::request_json(&json);
        // The same with one byte changed: mostly invalid, sometimes another valid request.
        let mut bent = json.clone();
        let i = flip.index(bent.len());
        bent[i] = bent[i].wrapping_add(1);
        check::request_json(&bent);
    }

    #[test]
    fn file_names(name in ".{0,300}") {
        check::file_name(name.as_bytes());
    }
}
