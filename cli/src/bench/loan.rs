//! The `shm-loan` row: shm round trips through the zero-copy API, to compare with
//! `peer-iceoryx2` (which loans a sample and reads the echo in place) at the same size.
//!
//! The parent loans room in the ring for an 8-byte sequence number and the payload, writes
//! both there and commits; the peer process ([`Job::ShmLoan`]) receives the message in place,
//! loans room for the echo while it still holds it, copies the message from ring to ring and
//! commits, then releases the message; the parent receives the echo in place and checks the
//! sequence number and every payload byte where they lie, then releases it. So each round
//! trip has two payload copies, as iceoryx2's row. Reading in place uses the `unsafe`
//! accessors: the peer is our own process image, trusted not to write published messages.
//! Latency only (no throughput phase), with the default options (`spin=auto`).

use super::{
    proto::{die_after, or_peer_exit, Job, Peer, PeerSpec},
    types::{pattern, RoundTrips, Rtt, Timing},
};
use ductwork::Endpoint;
use ductwork_transports::shm::{InPlace, Shm, ShmConnection};
use std::time::{Duration, Instant};

/// The sequence number that tells the peer to exit.
const QUIT: u64 = u64::MAX;

fn err(e: ductwork::Error) -> String {
    e.to_string()
}

/// The sequence number at the head of a message, and whether the rest equals `payload`.
fn check(msg: &InPlace<'_>, payload: &[u8]) -> (u64, bool) {
    // SAFETY: the peer is this bench's own `ductwork __peer`, an honest ductwork producer
    // that does not write a message it published before we release it (the guard `msg`
    // outlives the slices).
    let (a, b) = unsafe { msg.as_slices() };
    let mut seq = [0u8; 8];
    for (s, g) in seq.iter_mut().zip(a.iter().chain(b.iter())) {
        *s = *g;
    }
    // Compared as slices (memcmp), not byte by byte: a slow check keeps the peer waiting
    // long enough to park, and the next round trip would then pay its wake-up.
    let same = msg.len() == 8 + payload.len() && {
        let (a, b) = if a.len() >= 8 {
            (&a[8..], b)
        } else {
            (&[][..], &b[8 - a.len()..])
        };
        a == &payload[..a.len()] && b == &payload[a.len()..]
    };
    (u64::from_le_bytes(seq), same)
}

/// Sends `seq` and `payload` through a loan.
async fn send(conn: &mut ShmConnection, seq: u64, payload: &[u8]) -> Result<(), String> {
    let mut loan = conn.loan(8 + payload.len()).await.map_err(err)?;
    let mut w = loan.writer();
    w.put(&seq.to_le_bytes());
    w.put(payload);
    if !w.is_complete() {
        return Err("the loan was not filled".into());
    }
    loan.commit().map_err(err)
}

/// Parent side: measures round trips of `size`-byte payloads over `ep` (an unbound shm
/// endpoint) with the peer pinned to `cpu`.
pub async fn measure(
    ep: Endpoint,
    size: usize,
    cpu: Option<usize>,
    t: Timing,
) -> Result<Rtt, String> {
    let mut listener = Shm::bind_zero_copy(&ep).await.map_err(err)?;
    let spec = PeerSpec {
        job: Job::ShmLoan {
            endpoint: ep.to_string(),
        },
        size,
        cpu,
        deadline_ms: t.peer_deadline_ms(),
    };
    let mut peer = Peer::spawn(&spec)?;
    let accept = async {
        tokio::time::timeout(t.reply_limit, listener.accept())
            .await
            .map_err(|_| format!("{ep}: the peer did not connect within {:?}", t.reply_limit))?
            .map_err(err)
    };
    let mut conn = match or_peer_exit(&mut peer, accept).await {
        Ok(c) => c,
        Err(e) => return Err(peer.fail(e).await),
    };
    let guard = t.warmup + t.duration + t.reply_limit;
    let run = async {
        tokio::time::timeout(guard, round_trips(&mut conn, size, t))
            .await
            .map_err(|_| format!("{ep}: echoes did not come back within {guard:?}"))?
    };
    let rtt = match or_peer_exit(&mut peer, run).await {
        Ok(r) => r,
        Err(e) => {
            drop(conn);
            return Err(peer.fail(e).await);
        }
    };
    let _ = send(&mut conn, QUIT, &[]).await;
    drop(conn);
    let _ = peer.finish(Duration::from_secs(2)).await;
    Ok(rtt)
}

async fn round_trips(conn: &mut ShmConnection, size: usize, t: Timing) -> Result<Rtt, String> {
    let payload = pattern(size);
    let mut round_trips = RoundTrips::new(t);
    let mut seq = 0u64;
    while round_trips.next() {
        seq += 1;
        let t0 = Instant::now();
        send(conn, seq, &payload).await?;
        let echo = conn
            .recv_in_place()
            .await
            .map_err(err)?
            .ok_or("the peer closed the connection")?;
        let elapsed = t0.elapsed();
        let (got, same) = check(&echo, &payload);
        if got != seq || !same {
            return Err(format!(
                "the echo of message {seq} differs from what was sent"
            ));
        }
        drop(echo);
        round_trips.record(elapsed);
    }
    Ok(round_trips.finish())
}

/// Peer side (`ductwork __peer`): echoes every message in place until told to quit or the
/// parent closes.
pub async fn serve(endpoint: &str) -> Result<(), String> {
    let ep = Endpoint::parse(endpoint).map_err(err)?;
    let mut conn = Shm::connect_zero_copy(&ep).await.map_err(err)?;
    let die_after = die_after();
    let mut handled = 0u64;
    loop {
        let Some(mut msg) = conn.recv_in_place().await.map_err(err)? else {
            return Ok(());
        };
        if check(&msg, &[]).0 == QUIT {
            return Ok(());
        }
        handled += 1;
        if die_after.is_some_and(|n| handled > n) {
            std::process::exit(101);
        }
        if msg.try_send_back().map_err(err)? {
            continue;
        }
        // No room for the echo while the message is held: copy it out, release, then wait.
        let copy = msg.to_vec();
        drop(msg);
        let mut loan = conn.loan(copy.len()).await.map_err(err)?;
        loan.writer().put(&copy);
        loan.commit().map_err(err)?;
    }
}
