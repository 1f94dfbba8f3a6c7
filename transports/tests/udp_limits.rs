//! The udp listener's limits under abuse (issue 11, defect 7), on loopback:
//!
//! - `a_full_listener_refuses_and_silent_peers_expire`: raw sockets that only say hello fill
//!   `max_peers`; a new raw socket gets the refusal datagram (tag `04`) and a real client fails
//!   at once with `Refused` naming the limit and the endpoint (it used to hear nothing and fail
//!   after its connect timeout with "no ductwork listener answered"). Once the silent peers'
//!   `idle_timeout` passed, a new client connects and the application accepts it and hears
//!   from it. Peers used to stay for good.
//! - `accepted_silent_peers_make_room_when_the_listener_is_full`: the application accepted
//!   and holds two connections whose peers went silent, with `max_peers=2`; a new client is
//!   refused until `idle_timeout` passed, then gets the slot of the one silent the longest,
//!   whose held connection fails with `ConnectionLost` saying why.
//! - `a_listener_that_does_not_accept_times_out_clients`: the application never calls
//!   `accept`; 64 raw peers fill the accept queue; a real client then fails with `Timeout`
//!   saying the listener did not accept (it used to fail with `NotFound`, "no ductwork
//!   listener answered", although one did).
//! - `stalled_receivers_keep_the_listener_bounded`: a listener process holds connections it
//!   never reads while 24 peers send 60 KB datagrams (58 MB in all, paced so that the
//!   kernel does not drop them first). What the listener queued (read back at the end) stays
//!   within the default `max_queue`, its peak RSS within that plus a margin (Linux), and a
//!   peer that is read keeps getting its echoes, before and after. The queues used to hold
//!   1,024 datagrams per peer whatever their size: all 58 MB.
// The RSS figures are read on Linux only; elsewhere their helpers go unused.
#![cfg_attr(not(target_os = "linux"), allow(unused))]
#![cfg(feature = "socket")]

mod support;

use bytes::Bytes;
use ductwork_core::{BoxConnection, Endpoint, ErrorKind};
use futures::{FutureExt, SinkExt, StreamExt};
use std::{
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    time::Duration,
};
use support::child::{announce_ready, Child};
use support::must;

crate::child_entry!(roles);

/// The child roles of this suite.
fn roles(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        "stalled-listener" => stalled_listener(args),
        _ => Err(format!("unknown role {role}")),
    }
}

/// The listener's default `max_queue` (bytes queued for all peers together).
const MAX_QUEUE: usize = 16 << 20;

/// A raw socket that said hello to `to` until welcomed (tag `02`); bounded in tries.
fn raw_peer(to: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    for _ in 0..50 {
        s.send_to(&[1], to).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            assert_eq!(&buf[..n], &[2], "the answer to a hello with room");
            return s;
        }
    }
    panic!("no welcome for a raw hello in 50 tries");
}

/// What the listener answers a raw hello when it is full, if anything (bounded in tries).
fn raw_refusal(to: SocketAddr) -> Option<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 256];
    for _ in 0..10 {
        s.send_to(&[1], to).unwrap();
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

#[test]
fn a_full_listener_refuses_and_silent_peers_expire() {
    let rt = support::runtime();
    let ep = Endpoint::parse("udp://127.0.0.1:0?max_peers=4&idle_timeout=300ms").unwrap();
    let mut l = rt
        .block_on(must("bind", ductwork_transports::bind(&ep)))
        .unwrap();
    let bound = l.endpoint().clone();
    let addr: SocketAddr = bound.address().parse().unwrap();
    // The application does not accept yet: four peers that only said hello fill the table.
    let silent: Vec<UdpSocket> = (0..4).map(|_| raw_peer(addr)).collect();
    assert_eq!(
        raw_refusal(addr).as_deref(),
        Some(&b"\x04max_peers=4"[..]),
        "a full listener answers a new peer's hello with the refusal datagram"
    );
    let e = match rt.block_on(must("connect", ductwork_transports::connect(&bound))) {
        Err(e) => e,
        Ok(_) => panic!("a fifth peer connected past max_peers=4"),
    };
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    let text = e.to_string();
    assert!(text.contains("max_peers=4"), "names the limit: {text}");
    assert!(
        text.contains(&bound.to_string()),
        "names the endpoint: {text}"
    );
    let silent_addrs: Vec<String> = silent
        .iter()
        .map(|s| s.local_addr().unwrap().to_string())
        .collect();
    drop(silent);
    // The silent peers are forgotten once idle_timeout (300 ms) has passed; bounded retries.
    let mut client = rt.block_on(connect_when_room(&bound));
    rt.block_on(async {
        // The forgotten peers' connections are skipped; a silent peer that was not forgotten
        // yet when the client came (a slot is enough) may still be accepted before it.
        let mut accepted = None;
        for _ in 0..=silent_addrs.len() {
            let c = must("accept", l.accept()).await.unwrap();
            let peer = c.info().peer.clone().unwrap_or_default();
            if !silent_addrs.contains(&peer) {
                accepted = Some(c);
                break;
            }
        }
        let mut accepted = accepted.expect("the client's connection was not accepted");
        let hello = Bytes::from_static(b"after the timeout");
        must("send", client.send(hello.clone())).await.unwrap();
        match must("recv", accepted.next()).await {
            Some(Ok(f)) => assert_eq!(f, hello),
            other => panic!("the accepted connection received {other:?}"),
        }
    });
}

#[test]
fn a_listener_that_does_not_accept_times_out_clients() {
    let rt = support::runtime();
    let ep = Endpoint::parse("udp://127.0.0.1:0").unwrap();
    let l = rt
        .block_on(must("bind", ductwork_transports::bind(&ep)))
        .unwrap();
    let addr: SocketAddr = l.endpoint().address().parse().unwrap();
    // The accept queue holds 64 connections; the application accepts none of them.
    let queued: Vec<UdpSocket> = (0..64).map(|_| raw_peer(addr)).collect();
    let client = Endpoint::parse(&format!("udp://{addr}?connect_timeout_ms=600")).unwrap();
    let e = match rt.block_on(must("connect", ductwork_transports::connect(&client))) {
        Err(e) => e,
        Ok(_) => panic!("a client connected past a full accept queue"),
    };
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let text = e.to_string();
    assert!(text.contains("did not accept"), "says why: {text}");
    assert!(
        text.contains(&addr.to_string()),
        "names the endpoint: {text}"
    );
    drop(queued);
    drop(l);
}

/// Connects to `ep` until it is not refused (bounded in tries); any other error fails.
async fn connect_when_room(ep: &Endpoint) -> BoxConnection {
    for _ in 0..100 {
        match must("connect", ductwork_transports::connect(ep)).await {
            Ok(c) => return c,
            Err(e) if e.kind() == ErrorKind::Refused => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect: {e}"),
        }
    }
    panic!("still refused after 100 tries (5 s)");
}

#[test]
fn accepted_silent_peers_make_room_when_the_listener_is_full() {
    support::runtime().block_on(async {
        let ep = Endpoint::parse("udp://127.0.0.1:0?max_peers=2&idle_timeout=300ms").unwrap();
        let mut l = must("bind", ductwork_transports::bind(&ep)).await.unwrap();
        let bound = l.endpoint().clone();
        let mut clients = Vec::new();
        let mut accepted = Vec::new();
        for _ in 0..2 {
            clients.push(
                must("connect", ductwork_transports::connect(&bound))
                    .await
                    .unwrap(),
            );
            accepted.push(must("accept", l.accept()).await.unwrap());
        }
        let e = must("connect", ductwork_transports::connect(&bound))
            .await
            .err()
            .expect("a third peer connected past max_peers=2");
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        // Both held peers are silent; once for idle_timeout, the one silent the longest (the
        // first) gives its slot to a new client, and its connection says so.
        let mut newcomer = connect_when_room(&bound).await;
        let mut third = must("accept", l.accept()).await.unwrap();
        match must("recv", accepted[0].next()).await {
            Some(Err(e)) if e.kind() == ErrorKind::ConnectionLost => {
                assert!(e.to_string().contains("make room"), "{e}");
            }
            other => panic!("the silent peer's held connection: {other:?}"),
        }
        assert!(
            accepted[1].next().now_or_never().is_none(),
            "only one slot was needed"
        );
        let hello = Bytes::from_static(b"in the freed slot");
        must("send", newcomer.send(hello.clone())).await.unwrap();
        match must("recv", third.next()).await {
            Some(Ok(f)) => assert_eq!(f, hello),
            other => panic!("the newcomer's connection received {other:?}"),
        }
    });
}

/// Role `stalled-listener HOLD`: binds `udp://127.0.0.1:0` with the default limits and
/// announces it; holds the first HOLD connections without reading them and echoes every
/// later one. On stdin, `mem` announces `mem RSS_KIB PEAK_KIB` (Linux; zeros elsewhere) and
/// `drain` reads what the held connections have queued and announces `drained BYTES COUNT`;
/// it exits when stdin closes.
fn stalled_listener(args: &[String]) -> Result<(), String> {
    let hold: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .ok_or("usage: stalled-listener HOLD")?;
    support::runtime().block_on(async {
        let ep = Endpoint::parse("udp://127.0.0.1:0").map_err(|e| e.to_string())?;
        let mut l = ductwork_transports::bind(&ep)
            .await
            .map_err(|e| e.to_string())?;
        announce_ready(l.endpoint());
        let held: Arc<Mutex<Vec<BoxConnection>>> = Arc::default();
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok(mut c) = l.accept().await {
                let mut h = keep.lock().unwrap();
                if h.len() < hold {
                    h.push(c);
                    continue;
                }
                tokio::spawn(async move {
                    while let Some(Ok(f)) = c.next().await {
                        if c.send(f).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match line.trim() {
                "mem" => {
                    let (rss, peak) = memory_kib();
                    announce_ready(format!("mem {rss} {peak}"));
                }
                "drain" => {
                    let mut conns = std::mem::take(&mut *held.lock().unwrap());
                    let (bytes, count) = drain(&mut conns).await;
                    announce_ready(format!("drained {bytes} {count}"));
                    held.lock().unwrap().extend(conns);
                }
                other => return Err(format!("unknown command {other:?}")),
            }
        }
        Ok(())
    })
}

/// Reads every datagram the connections have queued now (nothing that is still on its way).
async fn drain(conns: &mut [BoxConnection]) -> (usize, usize) {
    let (mut bytes, mut count) = (0, 0);
    for c in conns {
        // Bounded: the queues hold at most MAX_QUEUE bytes, each datagram at least 64.
        let mut idle = 0;
        for _ in 0..MAX_QUEUE / 64 {
            match c.next().now_or_never() {
                Some(Some(Ok(f))) => {
                    bytes += f.len();
                    count += 1;
                    idle = 0;
                }
                // Not ready may be tokio's budget for one task (a channel says so after 128
                // reads): yield once so that it is renewed, then take it as empty.
                None if idle == 0 => {
                    idle += 1;
                    tokio::task::yield_now().await;
                }
                _ => break,
            }
        }
    }
    (bytes, count)
}

/// This process's resident set and its peak, in KiB (Linux; zeros elsewhere).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Sends `frame` on `c` until it comes back (udp may lose either way); bounded in tries.
async fn echo(c: &mut BoxConnection, frame: Bytes) {
    for _ in 0..10 {
        must("send", c.send(frame.clone())).await.unwrap();
        // Skip late echoes of earlier tries.
        let wait = async {
            loop {
                match c.next().await {
                    Some(Ok(f)) if f == frame => return true,
                    Some(Ok(_)) => continue,
                    _ => return false,
                }
            }
        };
        if let Ok(true) = tokio::time::timeout(Duration::from_secs(1), wait).await {
            return;
        }
    }
    panic!("a peer that is read got no echo in 10 tries");
}

/// Asks the child for a line (`command`) and returns the numbers after its first word.
async fn ask(child: &mut Child, command: &str) -> Vec<u64> {
    child.say(command).await.unwrap();
    let line = must(command, child.ready()).await.unwrap();
    line.split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn stalled_receivers_keep_the_listener_bounded() {
    const STALLED: usize = 24;
    const ROUNDS: usize = 40;
    const SIZE: usize = 60_000;
    support::runtime().block_on(async {
        let mut child = Child::spawn("stalled-listener", &[STALLED.to_string()]).unwrap();
        let ep = Endpoint::parse(&must("ready", child.ready()).await.unwrap()).unwrap();
        let mut stalled = Vec::new();
        for _ in 0..STALLED {
            stalled.push(
                must("connect", ductwork_transports::connect(&ep))
                    .await
                    .unwrap(),
            );
        }
        let mut good = must("connect", ductwork_transports::connect(&ep))
            .await
            .unwrap();
        echo(&mut good, Bytes::from_static(b"before")).await;
        let before = ask(&mut child, "mem").await;
        let big = Bytes::from(vec![0xa5u8; SIZE]);
        for round in 0..ROUNDS {
            for (i, c) in stalled.iter_mut().enumerate() {
                must("send", c.send(big.clone())).await.unwrap();
                // The echo makes the listener catch up with the socket (datagrams from all
                // peers wait in one kernel queue, in order), so the kernel's small buffer
                // does not drop the flood before the listener's queues see it.
                if i % 2 == 1 {
                    echo(&mut good, Bytes::from(format!("{round}/{i}"))).await;
                }
            }
        }
        let after = ask(&mut child, "mem").await;
        let late = must("connect", ductwork_transports::connect(&ep))
            .await
            .unwrap();
        let mut late = late;
        echo(
            &mut late,
            Bytes::from_static(b"a newcomer while the flood is queued"),
        )
        .await;
        let drained = ask(&mut child, "drain").await;
        let sent = STALLED * ROUNDS * SIZE;
        eprintln!(
            "udp_limits: sent {sent} bytes to {STALLED} stalled receivers; the listener had \
             queued {} bytes in {} datagrams; RSS {} KiB before, {} KiB after, peak {} KiB",
            drained[0], drained[1], before[0], after[0], after[1]
        );
        assert!(
            drained[0] as usize <= MAX_QUEUE,
            "the listener queued {} bytes for receivers that never read (max_queue {MAX_QUEUE})",
            drained[0]
        );
        if cfg!(target_os = "linux") {
            // The queues' bound plus a margin for the allocator and the runtime.
            let margin_kib = 16 << 10;
            let grown = after[1].saturating_sub(before[0]);
            assert!(
                grown <= (MAX_QUEUE >> 10) as u64 + margin_kib,
                "the listener's peak RSS grew by {grown} KiB under the flood"
            );
        }
        echo(&mut good, Bytes::from_static(b"after")).await;
        drop((stalled, good, late));
        must("child exit", child.finish()).await.unwrap();
    });
}
