//! Micro-benchmarks of the hot pure paths: decoding lesson uploads and barge data frames as they
//! arrive in socket-sized pieces, and hashing chunks (per-chunk CV vs plain BLAKE3, and merging CVs
//! into the file digest).

use barge_proto::legacy::{Decoder, Frame as LessonFrame, Header};
use barge_proto::tree::{CHUNK, Cv, chunk_cv, file_digest};
use barge_proto::wire::{self, Frame};
use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const BODY: usize = 8 << 20;
const READ: usize = 256 * 1024;

fn body() -> Vec<u8> {
    (0..BODY).map(|i| (i * 131 % 251) as u8).collect()
}

fn lesson_decode(c: &mut Criterion) {
    let mut wire = Header::new("movie.mp4", BODY as u64)
        .to_bytes()
        .expect("header");
    wire.extend_from_slice(&body());
    let mut g = c.benchmark_group("lesson");
    g.throughput(Throughput::Bytes(BODY as u64));
    g.bench_function("decode 8 MiB upload in 256 KiB reads", |b| {
        b.iter(|| {
            let mut d = Decoder::new();
            let mut buf = BytesMut::with_capacity(READ);
            let mut got = 0;
            for piece in wire.chunks(READ) {
                buf.extend_from_slice(piece);
                while let Some(f) = d.decode(&mut buf).expect("valid") {
                    if let LessonFrame::Body(b) = f {
                        got += b.len();
                    }
                }
            }
            black_box(got)
        })
    });
    g.finish();
}

fn wire_decode(c: &mut Criterion) {
    let data = body();
    let mut stream = Vec::new();
    for (i, chunk) in data.chunks(CHUNK as usize).enumerate() {
        let mut head = BytesMut::new();
        wire::encode_data_header(&chunk_cv(i as u64, chunk), chunk.len(), &mut head);
        stream.extend_from_slice(&head);
        stream.extend_from_slice(chunk);
    }
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Bytes(BODY as u64));
    g.bench_function("decode 8 data frames in 256 KiB reads", |b| {
        b.iter(|| {
            let mut buf = BytesMut::with_capacity(READ);
            let mut got = 0;
            for piece in stream.chunks(READ) {
                buf.extend_from_slice(piece);
                while let Some(f) = wire::decode_frame(&mut buf).expect("valid") {
                    if let Frame::Data { data, .. } = f {
                        got += data.len();
                    }
                }
            }
            black_box(got)
        })
    });
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let chunk: Vec<u8> = body()[..CHUNK as usize].to_vec();
    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(CHUNK));
    g.bench_function("chunk_cv 1 MiB", |b| {
        b.iter(|| black_box(chunk_cv(3, black_box(&chunk))))
    });
    g.bench_function("blake3::hash 1 MiB (baseline)", |b| {
        b.iter(|| black_box(blake3::hash(black_box(&chunk))))
    });
    g.finish();
    let cvs: Vec<Cv> = (0..4096u64).map(|i| chunk_cv(i, &chunk[..64])).collect();
    c.bench_function("file_digest from 4096 CVs (a 4 GiB file)", |b| {
        b.iter(|| black_box(file_digest(black_box(&cvs), 4096 * CHUNK, None)))
    });
}

criterion_group!(benches, lesson_decode, wire_decode, hashing);
criterion_main!(benches);
