//! The hex test vectors in docs/PROTOCOL.md, checked both ways: encoding the described message
//! gives exactly those bytes, and decoding the bytes gives back the message.

use barge_proto::legacy::{self, Header};
use barge_proto::tree::{chunk_cv, hex};
use barge_proto::wire::{self, Entry, Frame, Reply, Request, Status};
use bytes::{Bytes, BytesMut};

/// The messages the vectors describe, by name, encoded with the codec.
fn vectors() -> Vec<(&'static str, Vec<u8>, Option<Frame>)> {
    let abc_cv = chunk_cv(0, b"abc");
    let abc_digest = hex(blake3::hash(b"abc").as_bytes());
    let frame = |f: &Frame| {
        let mut b = BytesMut::new();
        match f {
            Frame::Request(r) => wire::encode_request(r, &mut b),
            Frame::Reply(r) => wire::encode_reply(r, &mut b),
            Frame::Data { cv, data } => {
                wire::encode_data_header(cv, data.len(), &mut b);
                b.extend_from_slice(data);
            }
        }
        b.to_vec()
    };
    let msgs = vec![
        (
            "auth",
            Frame::Request(Request::Auth {
                id: 2,
                token: "9f2c7e1d4b8a6f3e0c5d".into(),
            }),
        ),
        (
            "reply-unauthorized",
            Frame::Reply(Reply::error(0, Status::Unauthorized, "wrong token")),
        ),
        (
            "probe",
            Frame::Request(Request::Probe {
                id: 1,
                path: "movie.mp4".into(),
                size: 3,
            }),
        ),
        (
            "put",
            Frame::Request(Request::Put {
                id: 2,
                path: "dir/荷官.mp4".into(),
                size: 3,
                from: 0,
                replaces: None,
                reuse: None,
                mtime: None,
                stripe: None,
            }),
        ),
        (
            "data",
            Frame::Data {
                cv: abc_cv,
                data: Bytes::from_static(b"abc"),
            },
        ),
        (
            "end",
            Frame::Request(Request::End {
                id: 2,
                digest: abc_digest.clone(),
            }),
        ),
        (
            "reply-probe",
            Frame::Reply(Reply {
                offset: Some(0),
                prefix: Some(hex(blake3::hash(b"").as_bytes())),
                ..Reply::ok(1)
            }),
        ),
        (
            "reply-put",
            Frame::Reply(Reply {
                path: Some("dir/荷官.mp4".into()),
                size: Some(3),
                digest: Some(abc_digest.clone()),
                ..Reply::ok(2)
            }),
        ),
        (
            "reply-error",
            Frame::Reply(Reply::error(
                3,
                Status::NameRejected,
                "name rejected: file name \"..\" refers to a directory",
            )),
        ),
        (
            "list",
            Frame::Request(Request::List {
                id: 4,
                path: "dir".into(),
                recursive: true,
            }),
        ),
        (
            "reply-list",
            Frame::Reply(Reply {
                entries: Some(vec![Entry {
                    path: "荷官.mp4".into(),
                    dir: false,
                    size: 3,
                    mtime: 1795669208,
                    digest: Some(abc_digest.clone()),
                }]),
                more: Some(false),
                ..Reply::ok(4)
            }),
        ),
        (
            "get",
            Frame::Request(Request::Get {
                id: 5,
                path: "dir/荷官.mp4".into(),
                from: 0,
                digest: None,
            }),
        ),
        (
            "mkdir",
            Frame::Request(Request::Mkdir {
                id: 6,
                path: "dir/empty".into(),
            }),
        ),
    ];
    // A 2.5 MiB file (byte i = (1 + 7i) mod 251): three chunks, the last one short.
    let big: Vec<u8> = (0..2_621_440u64)
        .map(|i| ((1 + 7 * i) % 251) as u8)
        .collect();
    let big_digest = *blake3::hash(&big).as_bytes();
    let more = vec![
        (
            "put-resumed",
            Frame::Request(Request::Put {
                id: 8,
                path: "big.bin".into(),
                size: 2_621_440,
                from: 2_097_152,
                replaces: None,
                reuse: None,
                mtime: None,
                stripe: None,
            }),
        ),
        (
            "put-replacing",
            Frame::Request(Request::Put {
                id: 9,
                path: "notes.txt".into(),
                size: 5,
                from: 0,
                replaces: Some(
                    "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f".into(),
                ),
                reuse: None,
                mtime: None,
                stripe: None,
            }),
        ),
        (
            "cvs",
            Frame::Request(Request::Cvs {
                id: 11,
                path: "disk.img".into(),
            }),
        ),
        (
            "delete",
            Frame::Request(Request::Delete {
                id: 13,
                path: "old/2019".into(),
                recursive: true,
            }),
        ),
        (
            "move",
            Frame::Request(Request::Move {
                id: 14,
                from: "draft.txt".into(),
                to: "done/final.txt".into(),
            }),
        ),
        (
            "put-reusing",
            Frame::Request(Request::Put {
                id: 12,
                path: "disk.img".into(),
                size: 12_582_912,
                from: 0,
                replaces: Some(
                    "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f".into(),
                ),
                reuse: Some("0,2-4,6-10".into()),
                mtime: None,
                stripe: None,
            }),
        ),
        (
            "reply-integrity",
            Frame::Reply(Reply {
                offset: Some(1_048_576),
                ..Reply::error(
                    7,
                    Status::Integrity,
                    "integrity check failed: chunk 1 (bytes 1048576..2097152) does not match its digest",
                )
            }),
        ),
        (
            "reply-out-of-order",
            Frame::Reply(Reply::error(
                9,
                Status::BadRequest,
                "mkdir inside a put or bench: send its end first",
            )),
        ),
        (
            "reply-refused-ids",
            Frame::Reply(Reply::error(
                0,
                Status::BadRequest,
                "request ids must increase: 3 after 5",
            )),
        ),
        (
            "get-conditional",
            Frame::Request(Request::Get {
                id: 10,
                path: "big.bin".into(),
                from: 1_048_576,
                digest: Some(hex(&big_digest)),
            }),
        ),
    ];
    let mut out = vec![("preface", wire::preface(1).to_vec(), None)];
    for (name, f) in more {
        out.push((name, frame(&f), Some(f)));
    }
    let mut cvs = Vec::new();
    for i in 0..3u64 {
        let start = (i << 20) as usize;
        let end = (start + (1 << 20)).min(big.len());
        cvs.extend_from_slice(&chunk_cv(i, &big[start..end]));
    }
    cvs.extend_from_slice(&big_digest);
    out.push(("chunk-cvs", cvs, None));
    for (name, f) in msgs {
        out.push((name, frame(&f), Some(f)));
    }
    let lesson = Header {
        msg: Some("注意身体,多喝营养快线".into()),
        ..Header::new("a.txt", 3)
    };
    out.push(("lesson-header", lesson.to_bytes().expect("encodable"), None));
    out
}

/// `name -> bytes` from the doc's "```hex NAME" blocks.
fn doc_vectors() -> Vec<(String, Vec<u8>)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line.strip_prefix("```hex ") else {
            continue;
        };
        let mut hexdigits = String::new();
        for l in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            // Everything after '#' on a line is a comment.
            hexdigits.extend(
                l.split('#')
                    .next()
                    .unwrap_or("")
                    .chars()
                    .filter(|c| !c.is_whitespace()),
            );
        }
        let bytes = (0..hexdigits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hexdigits[i..i + 2], 16).expect("hex"))
            .collect();
        out.push((name.trim().to_owned(), bytes));
    }
    out
}

#[test]
fn protocol_md_vectors_match_the_codec_both_ways() {
    let doc = doc_vectors();
    if std::env::var_os("BARGE_PRINT_VECTORS").is_some() {
        for (name, bytes, _) in vectors() {
            println!(
                "{name}: {}",
                bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
            );
        }
    }
    let vectors = vectors();
    assert_eq!(
        doc.len(),
        vectors.len(),
        "every vector is in the doc, and only those"
    );
    for (name, bytes, frame) in vectors {
        let (_, documented) = doc
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} missing from PROTOCOL.md"));
        assert_eq!(documented, &bytes, "encoding of {name}");
        if let Some(frame) = frame {
            let mut buf = BytesMut::from(&documented[..]);
            assert_eq!(
                wire::decode_frame(&mut buf).unwrap(),
                Some(frame),
                "decoding of {name}"
            );
            assert!(buf.is_empty());
        }
        if name == "lesson-header" {
            let (h, used) = legacy::parse_header(documented).unwrap().unwrap();
            assert_eq!(
                (h.file_name.as_str(), h.file_size, used),
                ("a.txt", 3, documented.len())
            );
        }
        if name == "preface" {
            assert_eq!(wire::parse_preface(documented), Ok(Some(1)));
        }
    }
}
