//! One bench cell: spawn the peer, set up the link, warm up, measure latency and throughput.
//!
//! Latency: the parent sends a typed [`BenchMsg`] with `Op::Ping`, the peer echoes it, and the
//! parent checks the echo (sequence number and every payload byte) before recording the round
//! trip in an HdrHistogram. Throughput: the parent queues `Op::Data` messages with
//! `Channel::feed` and flushes once per batch for the cell's duration, then sends `Op::End`;
//! the peer replies with how many it received and how many were wrong (by
//! [`payload_ok`](super::types::payload_ok): every byte up to 64 KiB, a sample of larger
//! payloads, the same check on every row, baselines included). The peer decodes each
//! message in place (`Channel::recv_frame` + `decode_frame` into a type that borrows the
//! payload), as a bulk consumer would; its echoes are owned values encoded again. The rate is what the
//! peer received divided by the time from the first send to the report. Reliable transports
//! must deliver every message intact or the cell fails; best-effort ones report their loss.

use super::{
    proto::{or_peer_exit, BenchMsg, Job, Link, Op, Peer, PeerSpec},
    types::{batch_len, pattern, RoundTrips, Rtt, Throughput, Timing},
};
use ductwork::{BoxListener, Channel, Endpoint};
use std::time::{Duration, Instant};

fn err(e: ductwork::Error) -> String {
    e.to_string()
}

/// Best-effort transports: a ping or report that does not come back in this time is lost.
const LOST_AFTER: Duration = Duration::from_millis(200);

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
        deadline_ms: t.peer_deadline_ms(),
    };
    let mut peer = Peer::spawn(&spec)?;
    let setup = accept_link(&mut listener, back.is_some(), t.reply_limit);
    let mut link = match or_peer_exit(&mut peer, setup).await {
        Ok(l) => l,
        Err(e) => return Err(peer.fail(e).await),
    };
    let result = match or_peer_exit(&mut peer, run_link(&mut link, size, t)).await {
        Ok(r) => r,
        Err(e) => {
            drop(link);
            return Err(peer.fail(e).await);
        }
    };
    let quit = BenchMsg {
        seq: 0,
        op: Op::Quit,
        payload: Vec::new(),
    };
    let _ = link.tx().send(&quit).await;
    let _ = link.tx().close().await;
    drop(link);
    // A peer that fails to exit cleanly after a good measurement is not worth failing the
    // cell for; it is killed.
    let _ = peer.finish(Duration::from_secs(2)).await;
    Ok(result)
}

/// The parent's side of the link: the peer's connection, and for one-way transports (`pair`)
/// a connection of ours to the endpoint the peer announces with `Ready`.
async fn accept_link(
    listener: &mut BoxListener,
    pair: bool,
    limit: Duration,
) -> Result<Link, String> {
    let real = listener.endpoint().clone();
    let first: Channel<BenchMsg> = tokio::time::timeout(limit, ductwork::accept_channel(listener))
        .await
        .map_err(|_| format!("{real}: the peer did not connect within {limit:?}"))?
        .map_err(err)?;
    if !pair {
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
}

async fn run_link(link: &mut Link, size: usize, t: Timing) -> Result<(Rtt, Throughput), String> {
    let mut msg = BenchMsg {
        seq: 0,
        op: Op::Ping,
        payload: pattern(size),
    };
    let rtt = if link.tx().info().capabilities.is_reliable() {
        // No timer per ping on a reliable link (the raw baselines have none either): one
        // timer guards the whole phase instead, as it does the raw baselines'
        // (`raw::measure`).
        let guard = t.warmup + t.duration + t.reply_limit;
        let ep = link.tx().info().endpoint.clone();
        tokio::time::timeout(guard, latency(link, &mut msg, t))
            .await
            .map_err(|_| format!("{ep}: pings did not come back within {guard:?}"))??
    } else {
        latency(link, &mut msg, t).await?
    };
    let tp = throughput(link, &mut msg, size, t).await?;
    Ok((rtt, tp))
}

/// The latency phase: ping, wait for the echo, check it, record the round trip.
async fn latency(link: &mut Link, msg: &mut BenchMsg, t: Timing) -> Result<Rtt, String> {
    let ep = link.tx().info().endpoint.clone();
    let reliable = link.tx().info().capabilities.is_reliable();
    msg.op = Op::Ping;
    let mut round_trips = RoundTrips::new(t);
    let (mut seq, mut lost_pings) = (0u64, 0u64);
    while round_trips.next() {
        seq += 1;
        msg.seq = seq;
        let t0 = Instant::now();
        link.tx().send(msg).await.map_err(err)?;
        let echo = if reliable {
            match link.rx().recv().await {
                Err(e) => return Err(err(e)),
                Ok(None) => return Err(format!("{ep}: the peer closed early")),
                Ok(Some(m)) => m,
            }
        } else {
            match await_echo(link, seq, t0).await? {
                Some(m) => m,
                None => {
                    lost_pings += 1;
                    if lost_pings > 100 && lost_pings > round_trips.counted() {
                        return Err(format!("{ep}: most pings were lost"));
                    }
                    continue;
                }
            }
        };
        let elapsed = t0.elapsed();
        if echo.op != Op::Ping || echo.seq != seq || echo.payload != msg.payload {
            return Err(format!(
                "{ep}: the echo of message {seq} differs from what was sent"
            ));
        }
        round_trips.record(elapsed);
    }
    Ok(round_trips.finish())
}

/// A best-effort link's echo of ping `seq` sent at `t0`, or `None` once it counts as lost.
async fn await_echo(link: &mut Link, seq: u64, t0: Instant) -> Result<Option<BenchMsg>, String> {
    loop {
        let left = LOST_AFTER.saturating_sub(t0.elapsed());
        match tokio::time::timeout(left, link.rx().recv()).await {
            Err(_) => return Ok(None),
            Ok(Err(e)) => return Err(err(e)),
            Ok(Ok(None)) => {
                let ep = &link.tx().info().endpoint;
                return Err(format!("{ep}: the peer closed early"));
            }
            // A late echo of an earlier ping is skipped.
            Ok(Ok(Some(m))) if m.op != Op::Ping || m.seq != seq => continue,
            Ok(Ok(Some(m))) => return Ok(Some(m)),
        }
    }
}

/// The throughput phase: feed data messages in batches for the duration, then ask the peer
/// how many arrived intact.
async fn throughput(
    link: &mut Link,
    msg: &mut BenchMsg,
    size: usize,
    t: Timing,
) -> Result<Throughput, String> {
    let ep = link.tx().info().endpoint.clone();
    let reliable = link.tx().info().capabilities.is_reliable();
    msg.op = Op::Data;
    let frame_len = link.tx().encode(msg).map_err(err)?.len();
    let per_batch = batch_len(frame_len);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < t.duration {
        for _ in 0..per_batch {
            msg.seq = sent;
            link.tx().feed(msg).await.map_err(err)?;
            sent += 1;
        }
        link.tx().flush().await.map_err(err)?;
    }
    let wait = if reliable { t.reply_limit } else { LOST_AFTER };
    let (received, bad) = report(link, sent, wait).await?;
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
    Ok(Throughput::new(sent, received, size, elapsed))
}

/// Sends `End` (again after `wait` on a best-effort link, up to 10 times) until the peer's
/// report comes back: (received, bad).
async fn report(link: &mut Link, sent: u64, wait: Duration) -> Result<(u64, u64), String> {
    let ep = link.tx().info().endpoint.clone();
    let reliable = link.tx().info().capabilities.is_reliable();
    let end = BenchMsg {
        seq: sent,
        op: Op::End,
        payload: Vec::new(),
    };
    for _ in 0..10 {
        link.tx().send(&end).await.map_err(err)?;
        let t0 = Instant::now();
        loop {
            let left = wait.saturating_sub(t0.elapsed());
            match tokio::time::timeout(left, link.rx().recv()).await {
                Err(_) if reliable => return Err(format!("{ep}: no report within {wait:?}")),
                Err(_) => break,
                Ok(Err(e)) => return Err(err(e)),
                Ok(Ok(None)) => return Err(format!("{ep}: the peer closed early")),
                Ok(Ok(Some(BenchMsg {
                    op: Op::Report { received, bad },
                    ..
                }))) => return Ok((received, bad)),
                Ok(Ok(Some(_))) => continue,
            }
        }
    }
    Err(format!("{ep}: no report from the peer after 10 tries"))
}
