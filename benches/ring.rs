//! Shared-memory ring micro-benchmarks: the in-process cost of one message through the ring
//! the `shm://` transport uses (copy in, publish, copy out), with no wake-ups and no second
//! process. `ductwork bench` measures the whole transport across processes; this isolates the
//! ring, so a regression in its bookkeeping or copies shows up here first.
//!
//! Run with `cargo bench --bench ring`.

use criterion::{criterion_main, BenchmarkId, Criterion, Throughput};
use ductwork_transports::__bench::Ring;
use std::hint::black_box;

const SIZES: &[usize] = &[64, 1024, 64 * 1024, 1024 * 1024];

fn ring(c: &mut Criterion) {
    let mut g = c.benchmark_group("ring");
    for &size in SIZES {
        let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
        // Room for a few messages of the largest size, as the transport's default (4 MiB).
        let mut ring = Ring::new(4 << 20).expect("valid capacity");
        assert!(ring.max_message() >= size);
        g.throughput(Throughput::Bytes(size as u64));
        // One message in and out: the per-message cost when the consumer keeps up.
        g.bench_with_input(BenchmarkId::new("push_pop", size), &msg, |b, m| {
            b.iter(|| {
                assert!(ring.push(black_box(m)).expect("push"));
                black_box(ring.pop().expect("pop").expect("a message"))
            })
        });
        // A burst of pushes, then the pops: indices wrap around and the cached copies of the
        // other side's index go stale, as under a producer that runs ahead.
        let burst = ((2 << 20) / (size + 8)).clamp(1, 64);
        g.throughput(Throughput::Bytes((size * burst) as u64));
        g.bench_with_input(BenchmarkId::new("burst", size), &msg, |b, m| {
            b.iter(|| {
                for _ in 0..burst {
                    assert!(ring.push(black_box(m)).expect("push"));
                }
                for _ in 0..burst {
                    black_box(ring.pop().expect("pop").expect("a message"));
                }
            })
        });
    }
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    ring(&mut c);
}

criterion_main!(benches);
