//! One bench cell: spawn the peer, set up the link, warm up, measure latency and throughput.
//!
//! Latency: the parent sends a typed [`BenchMsg`] with `Op::Ping`, the peer echoes it, and the
//! parent checks the echo (sequence number and every payload byte) before recording the round
//! trip in an HdrHistogram. Throughput: the parent queues `Op::Data` messages with
//! `Channel::feed` and flushes once per batch for the cell's duration, then sends `Op::End`;
//! the peer replies with how many it received and how many were wrong (by
//! [`payload_ok`](super::peer::payload_ok): every byte up to 64 KiB, a sample of larger
//! payloads, the same check on every row, baselines included). The peer decodes each
//! message in place (`Channel::recv_frame` + `decode_frame` into a type that borrows the
//! payload), as a bulk consumer would; its echoes are owned values encoded again. The rate is what the
//! peer received divided by the time from the first send to the report. Reliable transports
//! must deliver every message intact or the cell fails; best-effort ones report their loss.

use super::peer::{pattern, BenchMsg, Job, Link, Op, PeerSpec};
use ductwork::{Channel, Endpoint};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::{
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::{io::AsyncReadExt, process::Child};

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
            // Both come from `Sampler::new`, with the same bounds, so adding cannot fail.
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

/// Collects round-trip times.
pub struct Sampler {
    hist: Histogram<u64>,
}

impl Sampler {
    /// Round trips measured at least, even past the duration.
    pub const MIN_SAMPLES: u64 = 20;

    /// An empty sampler (1 ns to 60 s, 3 significant digits).
    pub fn new() -> Self {
        Sampler {
            hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one round trip.
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, 60_000_000_000);
        let _ = self.hist.record(ns);
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

/// A peer process that is killed if the cell ends early.
pub struct Peer {
    child: Child,
}

impl Peer {
    /// Starts `ductwork __peer` with `spec`.
    pub fn spawn(spec: &PeerSpec) -> Result<Peer, String> {
        let child = tokio::process::Command::from(super::peer::command(spec)?)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the peer process: {e}"))?;
        Ok(Peer { child })
    }

    /// Waits for the peer to exit (up to `limit`), killing it after; returns its stderr if it
    /// failed.
    pub async fn finish(mut self, limit: Duration) -> Result<(), String> {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("waiting for the peer: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                return Err("the peer did not exit".into());
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!("peer failed ({status}): {}", self.stderr().await))
        }
    }

    /// Kills the peer and returns what it wrote on stderr.
    pub async fn kill(mut self) -> String {
        let _ = self.child.kill().await;
        self.stderr().await
    }

    /// Waits until the peer exits; for racing against setup steps.
    pub async fn exited(&mut self) -> String {
        let status = self.child.wait().await;
        let err = self.stderr().await;
        match status {
            Ok(s) if err.is_empty() => format!("peer exited early ({s})"),
            Ok(s) => format!("peer exited early ({s}): {err}"),
            Err(e) => format!("peer lost: {e}"),
        }
    }

    async fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut s)).await;
        }
        s.trim().to_string()
    }
}

/// Runs `fut` unless the peer exits first.
pub async fn or_peer_exit<T>(
    peer: &mut Peer,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = fut => r,
        e = peer.exited() => Err(e),
    }
}

fn err(e: ductwork::Error) -> String {
    e.to_string()
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

/// Measures one ductwork cell: `ep` (unbound, `back` for one-way transports) with payloads of
/// `size` bytes; the peer is pinned to `cpu`.
pub async fn dw_cell(
    ep: Endpoint,
    back: Option<Endpoint>,
    size: usize,
    cpu: Option<usize>,
    t: Timing,
) -> Result<(Rtt, Throughput), String> {
    let mut listener = crate::bind_ep(&ep).await.map_err(err)?;
    let real = listener.endpoint().clone();
    let spec = PeerSpec {
        job: Job::Dw {
            endpoint: real.to_string(),
            back: back.as_ref().map(|b| b.to_string()),
        },
        size,
        cpu,
        deadline_ms: (t.duration * 4 + t.reply_limit * 4).as_millis() as u64,
    };
    let mut peer = Peer::spawn(&spec)?;
    let setup = async {
        let limit = t.reply_limit;
        let first: Channel<BenchMsg> =
            tokio::time::timeout(limit, ductwork::accept_channel(&mut listener))
                .await
                .map_err(|_| format!("{real}: the peer did not connect within {limit:?}"))?
                .map_err(err)?;
        if back.is_none() {
            return Ok(Link::Duplex(first));
        }
        let mut rx = first;
        let ready = tokio::time::timeout(limit, rx.recv())
            .await
            .map_err(|_| format!("{real}: no Ready from the peer within {limit:?}"))?
            .map_err(err)?
            .ok_or_else(|| format!("{real}: the peer closed before Ready"))?;
        if ready.op != Op::Ready {
            return Err(format!("{real}: expected Ready, got {:?}", ready.op));
        }
        let back = String::from_utf8(ready.payload).map_err(|e| e.to_string())?;
        let tx = ductwork::connect_channel(back.as_str())
            .await
            .map_err(err)?;
        Ok(Link::Pair { tx, rx })
    };
    let mut link = match or_peer_exit(&mut peer, setup).await {
        Ok(l) => l,
        Err(e) => {
            let stderr = peer.kill().await;
            return Err(if stderr.is_empty() {
                e
            } else {
                format!("{e} (peer: {stderr})")
            });
        }
    };
    let result = or_peer_exit(&mut peer, run_link(&mut link, size, t)).await;
    match result {
        Ok(r) => {
            let _ = link
                .tx()
                .send(&BenchMsg {
                    seq: 0,
                    op: Op::Quit,
                    payload: Vec::new(),
                })
                .await;
            let _ = link.tx().close().await;
            drop(link);
            // A peer that fails to exit cleanly after a good measurement is not worth failing
            // the cell for; it is killed.
            let _ = peer.finish(Duration::from_secs(2)).await;
            Ok(r)
        }
        Err(e) => {
            drop(link);
            let stderr = peer.kill().await;
            Err(if stderr.is_empty() {
                e
            } else {
                format!("{e} (peer: {stderr})")
            })
        }
    }
}

async fn run_link(link: &mut Link, size: usize, t: Timing) -> Result<(Rtt, Throughput), String> {
    let info = link.tx().info().clone();
    let ep = info.endpoint.clone();
    let reliable = info.capabilities.is_reliable();
    // Best-effort transports: a ping or report that does not come back in this time is lost.
    let lost_after = Duration::from_millis(200);
    let wait = if reliable { t.reply_limit } else { lost_after };
    let mut msg = BenchMsg {
        seq: 0,
        op: Op::Ping,
        payload: pattern(size),
    };
    let mut sampler = Sampler::new();
    let mut seq = 0u64;
    let mut lost_pings = 0u64;
    let latency = async {
        for measuring in [false, true] {
            let phase = if measuring { t.duration } else { t.warmup };
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed() < phase || (measuring && n < Sampler::MIN_SAMPLES) {
                seq += 1;
                msg.seq = seq;
                let t0 = Instant::now();
                link.tx().send(&msg).await.map_err(err)?;
                let echo = if reliable {
                    // No timer per ping on a reliable link (the raw baselines have none either):
                    // one timer guards the whole phase instead, below, as it does the raw
                    // baselines' (`raw::measure`).
                    match link.rx().recv().await {
                        Err(e) => return Err(err(e)),
                        Ok(None) => return Err(format!("{ep}: the peer closed early")),
                        Ok(Some(m)) => Some(m),
                    }
                } else {
                    loop {
                        let left = wait.saturating_sub(t0.elapsed());
                        match tokio::time::timeout(left, link.rx().recv()).await {
                            Err(_) => break None,
                            Ok(Err(e)) => return Err(err(e)),
                            Ok(Ok(None)) => return Err(format!("{ep}: the peer closed early")),
                            // A late echo of an earlier ping is skipped.
                            Ok(Ok(Some(m))) if m.op != Op::Ping || m.seq != seq => continue,
                            Ok(Ok(Some(m))) => break Some(m),
                        }
                    }
                };
                let elapsed = t0.elapsed();
                let Some(echo) = echo else {
                    lost_pings += 1;
                    if lost_pings > 100 && lost_pings > n {
                        return Err(format!("{ep}: most pings were lost"));
                    }
                    continue;
                };
                if echo.op != Op::Ping || echo.seq != seq || echo.payload != msg.payload {
                    return Err(format!(
                        "{ep}: the echo of message {seq} differs from what was sent"
                    ));
                }
                if measuring {
                    sampler.record(elapsed);
                }
                n += 1;
            }
        }
        Ok::<(), String>(())
    };
    if reliable {
        let guard = t.warmup + t.duration + wait;
        tokio::time::timeout(guard, latency)
            .await
            .map_err(|_| format!("{ep}: pings did not come back within {guard:?}"))??;
    } else {
        latency.await?;
    }

    // Throughput.
    msg.op = Op::Data;
    let frame_len = link.tx().encode(&msg).map_err(err)?.len();
    let per_batch = batch_len(frame_len);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < t.duration {
        for _ in 0..per_batch {
            msg.seq = sent;
            link.tx().feed(&msg).await.map_err(err)?;
            sent += 1;
        }
        link.tx().flush().await.map_err(err)?;
    }
    let end = BenchMsg {
        seq: sent,
        op: Op::End,
        payload: Vec::new(),
    };
    let mut tries = 0;
    let (received, bad) = 'report: loop {
        tries += 1;
        if tries > 10 {
            return Err(format!("{ep}: no report from the peer after 10 tries"));
        }
        link.tx().send(&end).await.map_err(err)?;
        let t0 = Instant::now();
        loop {
            let left = wait.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, link.rx().recv()).await {
                Err(_) if reliable => return Err(format!("{ep}: no report within {wait:?}")),
                Err(_) => continue 'report,
                Ok(Err(e)) => return Err(err(e)),
                Ok(Ok(None)) => return Err(format!("{ep}: the peer closed early")),
                Ok(Ok(Some(BenchMsg {
                    op: Op::Report { received, bad },
                    ..
                }))) => break 'report (received, bad),
                Ok(Ok(Some(_))) => continue,
            }
        }
    };
    let elapsed = start.elapsed();
    if bad > 0 {
        return Err(format!(
            "{ep}: {bad} messages arrived corrupted or out of order"
        ));
    }
    if reliable && received != sent {
        return Err(format!(
            "{ep}: reliable transport delivered {received} of {sent} messages"
        ));
    }
    Ok((
        sampler.finish(),
        Throughput::new(sent, received, size, elapsed),
    ))
}
