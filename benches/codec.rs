//! Codec micro-benchmarks: postcard encode and decode of a typed message with a byte payload,
//! at the sizes `ductwork bench` uses (64 B, 1 KiB, 64 KiB, 1 MiB).
//!
//! Run with `cargo bench --bench codec`. The shared-memory ring has its own bench,
//! `benches/ring.rs`.

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use serde::{Deserialize, Serialize};
use std::hint::black_box;

/// The same shape as the CLI bench's message: a sequence number and a payload.
#[derive(Debug, Serialize, Deserialize)]
struct Msg {
    seq: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

const SIZES: &[usize] = &[64, 1024, 64 * 1024, 1024 * 1024];

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    for &size in SIZES {
        let msg = Msg {
            seq: 42,
            payload: (0..size).map(|i| i as u8).collect(),
        };
        let frame = ductwork::codec::encode(&msg, usize::MAX).expect("encodes");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encode", size), &msg, |b, m| {
            b.iter(|| ductwork::codec::encode(black_box(m), usize::MAX).expect("encodes"))
        });
        // Reference points for the codec's encoder: the same value sized first and written
        // into one exact allocation, and postcard's growable Vec. If these beat `encode`
        // clearly, the codec's allocation strategy is the overhead.
        g.bench_with_input(BenchmarkId::new("presized", size), &msg, |b, m| {
            b.iter(|| {
                let n = postcard::experimental::serialized_size(black_box(m)).expect("sizes");
                let mut buf = bytes::BytesMut::zeroed(n);
                postcard::to_slice(m, &mut buf).expect("encodes");
                buf.freeze()
            })
        });
        g.bench_with_input(BenchmarkId::new("reserved", size), &msg, |b, m| {
            b.iter(|| {
                let n = postcard::experimental::serialized_size(black_box(m)).expect("sizes");
                let w = bytes::BufMut::writer(bytes::BytesMut::with_capacity(n));
                postcard::to_io(m, w)
                    .expect("encodes")
                    .into_inner()
                    .freeze()
            })
        });
        g.bench_with_input(BenchmarkId::new("allocvec", size), &msg, |b, m| {
            b.iter(|| bytes::Bytes::from(postcard::to_allocvec(black_box(m)).expect("encodes")))
        });
        g.bench_with_input(BenchmarkId::new("decode", size), &frame, |b, f| {
            b.iter(|| ductwork::codec::decode::<Msg>(black_box(f)).expect("decodes"))
        });
    }
    g.finish();
}

// The macro generates an undocumented `pub fn benches`.
#[allow(missing_docs)]
mod group {
    criterion::criterion_group!(benches, super::codec);
}
use group::benches;
criterion_main!(benches);
