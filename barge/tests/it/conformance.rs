//! The conformance cases of `conformance/v1.json` run against a server over a socket: barge's own
//! (a fresh server per case) or, with `BARGE_CONFORMANCE_ADDR`, any other. The runner speaks the
//! wire format itself from the case descriptions (see `conformance/README.md`), never through
//! barge's client, so it checks what PROTOCOL.md promises, not what barge's client happens to do.

use std::collections::HashMap;
use std::time::Duration;

use barge_proto::tree::{CHUNK, Cv, chunk_count, chunk_cv, chunk_len, hex, prefix_digest};
use barge_proto::wire::{self, Frame};
use bytes::{BufMut, BytesMut};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const CASES: &str = include_str!("../../../conformance/v1.json");

/// The contents a case refers to by name.
struct Files(HashMap<String, Vec<u8>>);

impl Files {
    fn load(spec: &Value) -> Self {
        let mut files = HashMap::new();
        for (name, f) in spec.as_object().expect("files") {
            let size = f["size"].as_u64().expect("size");
            let seed = f["seed"].as_u64().expect("seed");
            let bytes = (0..size).map(|i| ((seed + 7 * i) % 251) as u8).collect();
            files.insert(name.clone(), bytes);
        }
        Self(files)
    }

    fn get(&self, name: &str) -> &[u8] {
        self.0.get(name).unwrap_or_else(|| panic!("no file {name}"))
    }

    fn chunk(&self, name: &str, i: u64) -> &[u8] {
        let f = self.get(name);
        let start = (i * CHUNK) as usize;
        &f[start..start + chunk_len(f.len() as u64, i) as usize]
    }

    fn cvs(&self, name: &str, count: u64) -> Vec<Cv> {
        (0..count)
            .map(|i| chunk_cv(i, self.chunk(name, i)))
            .collect()
    }

    /// Replaces `$P`, `$digest:F`, `$prefix:F:K` and `$size:F` in every string of `v`; a string
    /// that is only `$size:F` becomes a number.
    fn substitute(&self, v: &Value, prefix: &str) -> Value {
        match v {
            Value::String(s) => {
                if let Some(f) = s.strip_prefix("$size:") {
                    return Value::from(self.get(f).len() as u64);
                }
                if let Some(f) = s.strip_prefix("$digest:") {
                    return Value::from(hex(blake3::hash(self.get(f)).as_bytes()));
                }
                if let Some(rest) = s.strip_prefix("$prefix:") {
                    let (f, k) = rest.rsplit_once(':').expect("$prefix:F:K");
                    let cvs = self.cvs(f, k.parse().expect("K"));
                    return Value::from(hex(&prefix_digest(&cvs)));
                }
                Value::from(s.replace("$P", prefix))
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| self.substitute(x, prefix)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), self.substitute(x, prefix)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Whether `got` has everything `want` describes (see the README's `expect`).
fn matches(want: &Value, got: Option<&Value>) -> bool {
    match (want, got) {
        (Value::Null, None | Some(Value::Null)) => true,
        (Value::String(s), Some(_)) if s == "*" => true,
        (Value::Object(w), Some(Value::Object(g))) => w.iter().all(|(k, wv)| matches(wv, g.get(k))),
        (Value::Array(w), Some(Value::Array(g))) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches(a, Some(b)))
        }
        (w, Some(g)) => w == g,
        _ => false,
    }
}

/// One connection to the server under test.
struct Conn {
    stream: TcpStream,
    buf: BytesMut,
}

impl Conn {
    async fn open(addr: &str, version: u16) -> Self {
        let mut stream = within("connect", TcpStream::connect(addr)).await.unwrap();
        stream.write_all(&wire::preface(version)).await.unwrap();
        let mut conn = Self {
            stream,
            buf: BytesMut::new(),
        };
        while conn.buf.len() < wire::PREFACE_LEN {
            let n = conn.read(Duration::from_secs(5)).await;
            assert!(n > 0, "no preface from the server");
        }
        assert_eq!(
            wire::parse_preface(&conn.buf).unwrap(),
            Some(1),
            "the server speaks version 1"
        );
        let _ = conn.buf.split_to(wire::PREFACE_LEN);
        conn
    }

    async fn read(&mut self, limit: Duration) -> usize {
        match tokio::time::timeout(limit, self.stream.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0, // reset: closed as far as the case is concerned
            Err(_) => panic!("nothing from the server within {limit:?}"),
        }
    }

    /// The next whole frame, or `None` if the server closed the connection first.
    async fn frame(&mut self, limit: Duration) -> Option<Frame> {
        loop {
            if let Some(f) = wire::decode_frame(&mut self.buf).expect("a valid frame") {
                return Some(f);
            }
            if self.read(limit).await == 0 {
                assert!(self.buf.is_empty(), "closed inside a frame");
                return None;
            }
        }
    }
}

/// A frame in a few words (a data frame's bytes would drown the message).
fn describe(frame: &Option<Frame>) -> String {
    match frame {
        Some(Frame::Data { data, .. }) => format!("a data frame of {} bytes", data.len()),
        other => format!("{other:?}"),
    }
}

fn request(payload: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_u8(1);
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
    out.to_vec()
}

async fn run_case(addr: &str, files: &Files, case: &Value, prefix: &str) {
    let name = case["name"].as_str().unwrap_or("?");
    let version = case.get("preface").and_then(Value::as_u64).unwrap_or(1) as u16;
    let mut conn = Conn::open(addr, version).await;
    for (n, step) in case["steps"].as_array().expect("steps").iter().enumerate() {
        let step = files.substitute(step, prefix);
        let at = format!("case {name:?}, step {n}: {step}");
        let limit = Duration::from_millis(
            step.get("within_ms")
                .and_then(Value::as_u64)
                .unwrap_or(5000),
        );
        if let Some(req) = step.get("send") {
            let bytes = request(&serde_json::to_vec(req).unwrap());
            conn.stream.write_all(&bytes).await.unwrap();
        } else if let Some(text) = step.get("send_json").and_then(Value::as_str) {
            conn.stream
                .write_all(&request(text.as_bytes()))
                .await
                .unwrap();
        } else if let Some(h) = step.get("send_hex").and_then(Value::as_str) {
            let bytes: Vec<u8> = (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect();
            conn.stream.write_all(&bytes).await.unwrap();
        } else if let Some(d) = step.get("data") {
            let f = d["file"].as_str().unwrap();
            let i = d["chunk"].as_u64().unwrap();
            let mut data = files.chunk(f, i).to_vec();
            if let Some(len) = d.get("len").and_then(Value::as_u64) {
                data.truncate(len as usize);
            }
            let cv = chunk_cv(i, &data);
            if d.get("corrupt").and_then(Value::as_bool) == Some(true) {
                let mid = data.len() / 2;
                data[mid] ^= 0x01;
            }
            let mut out = BytesMut::new();
            wire::encode_data_header(&cv, data.len(), &mut out);
            out.extend_from_slice(&data);
            // The server may refuse at once and close: a failed write is for the next step to see.
            let _ = conn.stream.write_all(&out).await;
        } else if let Some(e) = step.get("end") {
            let f = e["file"].as_str().unwrap();
            let req = serde_json::json!({
                "op": "end",
                "id": e["id"],
                "digest": hex(blake3::hash(files.get(f)).as_bytes()),
            });
            let bytes = request(&serde_json::to_vec(&req).unwrap());
            let _ = conn.stream.write_all(&bytes).await;
        } else if let Some(want) = step.get("expect") {
            match conn.frame(limit).await {
                Some(Frame::Reply(r)) => {
                    let got = serde_json::to_value(&r).unwrap();
                    assert!(matches(want, Some(&got)), "{at}: got {got}");
                }
                other => panic!("{at}: got {}", describe(&other)),
            }
        } else if let Some(want) = step.get("expect_data") {
            let f = want["file"].as_str().unwrap();
            let i = want["chunk"].as_u64().unwrap();
            assert!(i < chunk_count(files.get(f).len() as u64));
            match conn.frame(limit).await {
                Some(Frame::Data { cv, data }) => {
                    assert_eq!(&data[..], files.chunk(f, i), "{at}: data");
                    assert_eq!(cv, chunk_cv(i, &data), "{at}: chain value");
                }
                other => panic!("{at}: got {}", describe(&other)),
            }
        } else if step.get("expect_close").is_some() {
            let next = conn.frame(limit).await;
            assert!(
                next.is_none(),
                "{at}: got {} instead of the end",
                describe(&next)
            );
        } else if step.get("reconnect").is_some() {
            drop(conn);
            conn = Conn::open(addr, 1).await;
        } else {
            panic!("{at}: unknown step");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_case_holds() {
    let doc: Value = serde_json::from_str(CASES).expect("conformance/v1.json");
    let files = Files::load(&doc["files"]);
    let external = std::env::var("BARGE_CONFORMANCE_ADDR").ok();
    let run = std::process::id();
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20);
    for (n, case) in cases.iter().enumerate() {
        let prefix = format!("conf-{run}-{n}");
        match &external {
            Some(addr) => run_case(addr, &files, case, &prefix).await,
            None => {
                let server = TestServer::start().await;
                run_case(&server.addr.to_string(), &files, case, &prefix).await;
            }
        }
    }
}

#[test]
fn the_matcher_needs_every_described_field() {
    let got = serde_json::json!({"id": 1, "status": "ok", "entries": [{"path": "a", "size": 0}]});
    assert!(matches(&serde_json::json!({"id": 1}), Some(&got)));
    assert!(matches(&serde_json::json!({"digest": null}), Some(&got)));
    assert!(matches(
        &serde_json::json!({"entries": [{"path": "*"}]}),
        Some(&got)
    ));
    assert!(!matches(&serde_json::json!({"id": 2}), Some(&got)));
    assert!(!matches(
        &serde_json::json!({"status": "*", "offset": "*"}),
        Some(&got)
    ));
    assert!(!matches(&serde_json::json!({"entries": []}), Some(&got)));
    assert!(!matches(
        &serde_json::json!({"entries": [{"dir": true}]}),
        Some(&got)
    ));
}
