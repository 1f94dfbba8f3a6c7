//! The small types every part of the bench shares: timing, results, the payload pattern.
//!
//! A leaf: it imports no other bench module, so measuring code, the peer process, the plan
//! and the report can all use it without importing each other.

use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Where parent and peer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pin {
    /// Parent and peer on two different CPUs.
    Cross,
    /// Parent and peer on the same CPU.
    Same,
    /// Let the OS choose.
    None,
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Pin::Cross => "cross",
            Pin::Same => "same",
            Pin::None => "none",
        })
    }
}

/// Timing of one cell.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Warm-up before latency is recorded.
    pub warmup: Duration,
    /// Duration of each measurement (latency, throughput).
    pub duration: Duration,
    /// How long one reply may take before the cell fails (reliable transports).
    pub reply_limit: Duration,
}

impl Timing {
    /// How long a peer process may live: it gives up after this, so it never outlives a
    /// parent that died.
    pub fn peer_deadline_ms(&self) -> u64 {
        (self.duration * 4 + self.reply_limit * 4).as_millis() as u64
    }
}

/// What one cell measured: round-trip latency, one-way throughput, or both.
pub type Measured = (Option<Rtt>, Option<Throughput>);

/// Round-trip latency percentiles, in nanoseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Rtt {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest round trip.
    pub max: u64,
    /// Round trips measured.
    pub samples: u64,
    /// The samples, so that rounds of one cell can be merged.
    #[serde(skip)]
    pub hist: Option<Box<Histogram<u64>>>,
}

impl Rtt {
    /// Adds `other`'s samples (another round of the same cell) and recomputes the percentiles.
    pub fn merge(&mut self, other: &Rtt) {
        let Some(o) = other.hist.as_ref() else {
            return;
        };
        if let Some(mut h) = self.hist.take() {
            // Both come from `RoundTrips::new`, with the same bounds, so adding cannot fail.
            let _ = h.add(o.as_ref());
            *self = Rtt::from_hist(h);
        }
    }

    fn from_hist(h: Box<Histogram<u64>>) -> Rtt {
        Rtt {
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            samples: h.len(),
            hist: Some(h),
        }
    }
}

/// One-way throughput.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Messages received per second.
    pub msgs_per_s: f64,
    /// Payload bytes received per second.
    pub bytes_per_s: f64,
    /// Messages sent.
    pub sent: u64,
    /// Messages the receiver counted.
    pub received: u64,
    /// Fraction of messages lost (best-effort transports), 0 otherwise.
    pub loss: f64,
    /// Payload size and measuring time, so that rounds can be merged.
    #[serde(skip)]
    basis: (usize, Duration),
}

impl Throughput {
    /// Rates from counts and the elapsed time.
    pub fn new(sent: u64, received: u64, size: usize, elapsed: Duration) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Throughput {
            msgs_per_s: received as f64 / secs,
            bytes_per_s: received as f64 * size as f64 / secs,
            sent,
            received,
            loss: if sent == 0 {
                0.0
            } else {
                1.0 - (received.min(sent) as f64 / sent as f64)
            },
            basis: (size, elapsed),
        }
    }

    /// Adds another round of the same cell: rates over the summed counts and times.
    pub fn merge(&mut self, other: &Throughput) {
        let (size, elapsed) = self.basis;
        *self = Throughput::new(
            self.sent + other.sent,
            self.received + other.received,
            size,
            elapsed + other.basis.1,
        );
    }
}

/// Adds `b` (another round of the same cell) to `a`.
pub fn merge(a: &mut Measured, b: &Measured) {
    if let (Some(a), Some(b)) = (a.0.as_mut(), b.0.as_ref()) {
        a.merge(b);
    }
    if let (Some(a), Some(b)) = (a.1.as_mut(), b.1.as_ref()) {
        a.merge(b);
    }
}

/// The latency loop every ping-pong shares: a warm-up, then a measured phase of at least
/// [`RoundTrips::MIN_SAMPLES`] round trips, recorded in an HdrHistogram.
///
/// ```text
/// let mut rt = RoundTrips::new(timing);
/// while rt.next() { /* one round trip */ rt.record(elapsed); }
/// let rtt = rt.finish();
/// ```
pub struct RoundTrips {
    hist: Histogram<u64>,
    warmup: Duration,
    duration: Duration,
    measuring: bool,
    start: Instant,
    counted: u64,
}

impl RoundTrips {
    /// Round trips measured at least, even past the duration.
    pub const MIN_SAMPLES: u64 = 20;

    /// A warm-up of `t.warmup`, then `t.duration` of measuring (1 ns to 60 s, 3 significant
    /// digits); the warm-up starts now.
    pub fn new(t: Timing) -> Self {
        RoundTrips {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
            warmup: t.warmup,
            duration: t.duration,
            measuring: false,
            start: Instant::now(),
            counted: 0,
        }
    }

    /// Whether to make another round trip; moves from warm-up to measuring on the way.
    pub fn next(&mut self) -> bool {
        let phase = if self.measuring {
            self.duration
        } else {
            self.warmup
        };
        if self.start.elapsed() < phase || (self.measuring && self.counted < Self::MIN_SAMPLES) {
            return true;
        }
        if self.measuring {
            return false;
        }
        self.measuring = true;
        self.start = Instant::now();
        self.counted = 0;
        true
    }

    /// A completed round trip: counted, and recorded once the warm-up is over.
    pub fn record(&mut self, d: Duration) {
        if self.measuring {
            let ns = (d.as_nanos() as u64).clamp(1, 60_000_000_000);
            let _ = self.hist.record(ns);
        }
        self.counted += 1;
    }

    /// Round trips completed in the current phase.
    pub fn counted(&self) -> u64 {
        self.counted
    }

    /// The percentiles (and the samples, for merging rounds).
    pub fn finish(self) -> Rtt {
        Rtt::from_hist(Box::new(self.hist))
    }
}

/// How many messages of `frame_len` bytes to queue per flush: about 256 KiB, 1 to 64.
pub fn batch_len(frame_len: usize) -> usize {
    (256 * 1024 / frame_len.max(1)).clamp(1, 64)
}

/// The payload content both sides expect for `size` bytes.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(7) as u8)
        .collect()
}

/// Whether a received payload is the expected one, as the throughput phase checks it:
/// payloads up to 64 KiB byte for byte; larger ones by their length, their first and last
/// 4 KiB and 64 bytes at the start of every 4 KiB page in between. A bulk receiver is
/// measured, not `memcmp`: comparing every byte of a 1 MiB message would read 2 MiB more
/// per message than the transport delivered. (The latency phase checks every byte.)
pub fn payload_ok(got: &[u8], expected: &[u8]) -> bool {
    const FULL: usize = 64 << 10;
    const PAGE: usize = 4096;
    const PROBE: usize = 64;
    let n = got.len();
    if n != expected.len() {
        return false;
    }
    if n <= FULL {
        return got == expected;
    }
    got[..PAGE] == expected[..PAGE]
        && got[n - PAGE..] == expected[n - PAGE..]
        && (PAGE..n - PAGE)
            .step_by(PAGE)
            .all(|at| got[at..at + PROBE] == expected[at..at + PROBE])
}

#[cfg(test)]
mod tests {
    use super::{pattern, payload_ok};

    #[test]
    fn payload_check_compares_small_payloads_fully() {
        let want = pattern(1000);
        assert!(payload_ok(&want, &want));
        for at in [0, 500, 999] {
            let mut got = want.clone();
            got[at] ^= 1;
            assert!(!payload_ok(&got, &want), "byte {at}");
        }
        assert!(!payload_ok(&want[..999], &want));
    }

    #[test]
    fn payload_check_samples_large_payloads() {
        let want = pattern(1 << 20);
        assert!(payload_ok(&want, &want));
        // The first and last page and the head of every page are compared.
        for at in [
            0,
            4095,
            4096,
            4096 * 100 + 63,
            (1 << 20) - 4096,
            (1 << 20) - 1,
        ] {
            let mut got = want.clone();
            got[at] ^= 1;
            assert!(!payload_ok(&got, &want), "byte {at}");
        }
        // A message of the wrong length always fails.
        assert!(!payload_ok(&want[..(1 << 20) - 8], &want));
    }
}
