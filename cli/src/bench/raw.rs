//! The `raw-tcp` and `raw-unix` baselines: plain tokio streams, no ductwork, no serde; and
//! `raw-memcpy`, the bandwidth of copying memory in one thread.
//!
//! Each message is a 4-byte big-endian header and the payload. The header's top bit asks the
//! peer to echo the message (latency); without it the peer only counts and checks it
//! (throughput, written through a `BufWriter` and flushed per batch); [`END`] asks the peer
//! for its count as 8 bytes. This is the least any framed stream transport must do, so
//! ductwork's rows are compared with it.

use super::{
    proto::{or_peer_exit, Job, Peer, PeerSpec},
    types::{batch_len, pattern, payload_ok, RoundTrips, Rtt, Throughput, Timing},
};
use std::{
    path::Path,
    time::{Duration, Instant},
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const ECHO: u32 = 0x8000_0000;
const END: u32 = 0xFFFF_FFFE;

/// Which plain stream a raw cell measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// `raw-tcp`: loopback TCP with `TCP_NODELAY`.
    Tcp,
    /// `raw-unix`: a Unix domain stream socket (Unix only).
    Unix,
}

/// Measures one raw stream cell: starts the peer, accepts its connection, runs [`measure`].
/// `path` is where the Unix socket goes (unused for TCP).
pub async fn stream_cell(
    stream: Stream,
    size: usize,
    cpu: Option<usize>,
    t: Timing,
    path: &Path,
) -> Result<(Rtt, Throughput), String> {
    let spec = |job| PeerSpec {
        job,
        size,
        cpu,
        deadline_ms: t.peer_deadline_ms(),
    };
    match stream {
        Stream::Tcp => {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("raw-tcp bind: {e}"))?;
            let addr = l.local_addr().map_err(|e| e.to_string())?.to_string();
            let mut peer = Peer::spawn(&spec(Job::RawTcp { addr }))?;
            let s = accept(&mut peer, "raw-tcp", t, l.accept()).await?;
            let _ = s.set_nodelay(true);
            finish(peer, measure(s, size, t)).await
        }
        #[cfg(unix)]
        Stream::Unix => {
            let l = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("raw-unix bind {}: {e}", path.display()))?;
            let mut peer = Peer::spawn(&spec(Job::RawUnix {
                path: path.display().to_string(),
            }))?;
            let s = accept(&mut peer, "raw-unix", t, l.accept()).await?;
            let r = finish(peer, measure(s, size, t)).await;
            let _ = std::fs::remove_file(path);
            r
        }
        #[cfg(not(unix))]
        Stream::Unix => {
            let _ = path;
            Err("raw-unix is not available on this platform".into())
        }
    }
}

/// The peer's connection, from `accept`, unless the peer exits or takes longer than
/// `t.reply_limit`.
async fn accept<S, A>(
    peer: &mut Peer,
    name: &str,
    t: Timing,
    accept: impl std::future::Future<Output = std::io::Result<(S, A)>>,
) -> Result<S, String> {
    let accepted = async {
        tokio::time::timeout(t.reply_limit, accept)
            .await
            .map_err(|_| format!("{name}: the peer did not connect"))?
            .map_err(|e| format!("{name} accept: {e}"))
    };
    Ok(or_peer_exit(peer, accepted).await?.0)
}

/// Runs `work` unless the peer exits first, then lets the peer exit.
async fn finish<T>(
    mut peer: Peer,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let r = or_peer_exit(&mut peer, work).await;
    let _ = peer.finish(Duration::from_secs(2)).await;
    r
}

/// The peer side: echo, count, report, until the parent closes.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(s: S, size: usize) -> Result<(), String> {
    let (r, mut w) = tokio::io::split(s);
    let mut r = BufReader::with_capacity(256 * 1024, r);
    let expected = pattern(size);
    let mut buf = vec![0u8; 4 + size];
    let (mut count, mut bad) = (0u64, 0u64);
    loop {
        let mut hdr = [0u8; 4];
        match r.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(format!("raw peer read: {e}")),
        }
        let h = u32::from_be_bytes(hdr);
        if h == END {
            let reply = if bad == 0 { count } else { u64::MAX };
            w.write_all(&reply.to_be_bytes())
                .await
                .map_err(|e| format!("raw peer write: {e}"))?;
            continue;
        }
        let len = (h & !ECHO) as usize;
        if len != size {
            return Err(format!(
                "raw peer: got a {len}-byte message, expected {size}"
            ));
        }
        r.read_exact(&mut buf[4..])
            .await
            .map_err(|e| format!("raw peer read: {e}"))?;
        if h & ECHO != 0 {
            buf[..4].copy_from_slice(&hdr);
            w.write_all(&buf)
                .await
                .map_err(|e| format!("raw peer write: {e}"))?;
        } else {
            count += 1;
            if !payload_ok(&buf[4..], &expected) {
                bad += 1;
            }
        }
    }
}

/// The parent side: warm up, then measure round trips and one-way throughput on `s`.
pub async fn measure<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    size: usize,
    t: Timing,
) -> Result<(Rtt, Throughput), String> {
    let payload = pattern(size);
    // One timer guards the whole latency phase, as in ductwork's cells (`measure::run_link`),
    // so that both rows carry the same bookkeeping: the timer is polled each time a read
    // waits (~140 instructions per round trip).
    let guard = t.warmup + t.duration + t.reply_limit;
    let rtt = tokio::time::timeout(guard, latency(&mut s, &payload, t))
        .await
        .map_err(|_| format!("raw echoes did not come back within {guard:?}"))??;
    let tp = throughput(&mut s, &payload, t).await?;
    let _ = s.shutdown().await;
    Ok((rtt, tp))
}

/// Echoed round trips of `payload` with the echo flag set in the header.
async fn latency<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
    t: Timing,
) -> Result<Rtt, String> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&((payload.len() as u32) | ECHO).to_be_bytes());
    frame.extend_from_slice(payload);
    let mut back = vec![0u8; frame.len()];
    let mut round_trips = RoundTrips::new(t);
    while round_trips.next() {
        let t0 = Instant::now();
        s.write_all(&frame)
            .await
            .map_err(|e| format!("raw write: {e}"))?;
        s.read_exact(&mut back)
            .await
            .map_err(|e| format!("raw read: {e}"))?;
        let elapsed = t0.elapsed();
        if back != frame {
            return Err("raw echo differs from what was sent".into());
        }
        round_trips.record(elapsed);
    }
    Ok(round_trips.finish())
}

/// Each message written (header, payload) into a buffered writer, flushed once per batch:
/// what a hand-written sender does, and what ductwork's feed + flush does.
async fn throughput<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    payload: &[u8],
    t: Timing,
) -> Result<Throughput, String> {
    let size = payload.len();
    let per_batch = batch_len(4 + size);
    let hdr = (size as u32).to_be_bytes();
    let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, &mut *s);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < t.duration {
        for _ in 0..per_batch {
            w.write_all(&hdr)
                .await
                .map_err(|e| format!("raw write: {e}"))?;
            w.write_all(payload)
                .await
                .map_err(|e| format!("raw write: {e}"))?;
        }
        w.flush().await.map_err(|e| format!("raw write: {e}"))?;
        sent += per_batch as u64;
    }
    drop(w);
    s.write_all(&END.to_be_bytes())
        .await
        .map_err(|e| format!("raw write: {e}"))?;
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .await
        .map_err(|e| format!("raw read: {e}"))?;
    let elapsed = start.elapsed();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(format!(
            "raw peer counted {received} messages of {sent} sent (or saw corrupt ones)"
        ));
    }
    Ok(Throughput::new(sent, received, size, elapsed))
}

/// The `raw-memcpy` baseline: how fast one thread copies `size`-byte buffers (one `memcpy`
/// per message, source and destination allocated once). Shared-memory throughput is bounded
/// by copying: a message crosses at least one copy into the ring and one out of it.
pub fn memcpy(size: usize, t: Timing) -> Throughput {
    let src = pattern(size);
    let mut dst = vec![0u8; size];
    let mut copied = 0u64;
    let mut elapsed = Duration::ZERO;
    for measuring in [false, true] {
        let phase = if measuring { t.duration } else { t.warmup };
        let start = Instant::now();
        let mut n = 0u64;
        // The clock is read once per batch of copies, so small sizes measure memcpy, not
        // `Instant::now`.
        let batch = (1 << 20) / size.max(1) + 1;
        while start.elapsed() < phase || n == 0 {
            for _ in 0..batch {
                dst.copy_from_slice(std::hint::black_box(&src));
                std::hint::black_box(&mut dst);
            }
            n += batch as u64;
        }
        if measuring {
            copied = n;
            elapsed = start.elapsed();
        }
    }
    Throughput::new(copied, copied, size, elapsed)
}
