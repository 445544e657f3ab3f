// ANCHOR: frames
//! `cargo bench`: what a frame and a request cost, next to a plain copy of
//! the same bytes.

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kv::{CommandRequest, FrameCoder, MemTable, Service};

/// The payloads: a small request, and 64 KiB values that compress well
/// (text) and not at all (random bytes).
fn requests() -> Vec<(&'static str, CommandRequest)> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let text = "a value that repeats itself ".repeat(64 * 1024 / 28);
    vec![
        ("small", CommandRequest::new_hget("table", "key")),
        ("64KiB-text", CommandRequest::new_hset("table", "key", text)),
        (
            "64KiB-random",
            CommandRequest::new_hset("table", "key", random),
        ),
    ]
}

fn frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("frame");
    for (name, request) in requests() {
        let mut frame = BytesMut::new();
        request.encode_frame(&mut frame).unwrap();
        let plain = prost::Message::encode_to_vec(&request);
        group.throughput(Throughput::Bytes(plain.len() as u64));

        group.bench_with_input(BenchmarkId::new("encode", name), &request, |b, request| {
            let mut buf = BytesMut::new();
            b.iter(|| {
                buf.clear();
                black_box(request).encode_frame(&mut buf).unwrap();
            })
        });
        // Decoding consumes the frame: each run gets a copy, made outside
        // the time measured.
        group.bench_with_input(BenchmarkId::new("decode", name), &frame, |b, frame| {
            b.iter_batched(
                || frame.clone(),
                |mut frame| CommandRequest::decode_frame(&mut frame, usize::MAX).unwrap(),
                BatchSize::SmallInput,
            )
        });
        // The floor: copying the message's bytes once.
        group.bench_with_input(BenchmarkId::new("memcpy", name), &plain, |b, plain| {
            let mut copy = vec![0; plain.len()];
            b.iter(|| copy.copy_from_slice(black_box(plain)))
        });
    }
    group.finish();
}
// ANCHOR_END: frames

// ANCHOR: service
fn service(c: &mut Criterion) {
    let mut group = c.benchmark_group("service");
    let service = Service::new(MemTable::new());
    service.execute(CommandRequest::new_hset("table", "key", 42));
    let set = CommandRequest::new_hset("table", "key", 42);
    let get = CommandRequest::new_hget("table", "key");
    group.bench_function("hset", |b| {
        b.iter(|| service.execute(black_box(set.clone())))
    });
    group.bench_function("hget", |b| {
        b.iter(|| service.execute(black_box(get.clone())))
    });
    group.finish();
}

criterion_group!(benches, frames, service);
criterion_main!(benches);
// ANCHOR_END: service
