//! kill -9 of either side mid-send and mid-receive, on every reliable transport (those with
//! `peer_loss`): the survivor, in this process, must get `ConnectionLost` on receive and
//! `ConnectionLost` or `Closed` on send, within [`DETECT`] (a bound against hangs; the
//! measured detection times are printed, not asserted), and never a clean end (`None`).
//!
//! Five ways per transport: the client killed while it sends (we receive) and while it
//! receives (we send at full rate, and, the slow case, 1 KiB every 10 ms); the listener
//! killed while it sends and while it receives.

use crate::roles::{good_frame, STREAM_FRAME};
use crate::support::{child::Child, must};
use ductwork_core::{BoxConnection, ErrorKind};
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};

/// The bound on noticing a dead peer.
const DETECT: Duration = Duration::from_secs(20);

/// The ways to die.
#[derive(Clone, Copy, Debug)]
enum Way {
    ClientMidSend,
    ClientMidReceive,
    ClientMidReceiveSlowSender,
    ServerMidSend,
    ServerMidReceive,
}

/// Receives until an error; it must be `ConnectionLost`.
async fn recv_until_error(c: &mut BoxConnection) -> Result<ErrorKind, String> {
    // Bounded by DETECT (the caller's timeout) and a count.
    for _ in 0..100_000_000u64 {
        match c.next().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) if e.kind() == ErrorKind::ConnectionLost => return Ok(e.kind()),
            Some(Err(e)) => return Err(format!("recv: expected ConnectionLost, got {e}")),
            None => return Err("recv: a clean end (None) from a killed peer".into()),
        }
    }
    Err("recv: 100 M frames from a killed peer".into())
}

/// Sends (every `gap`, or at full rate) until an error; it must be `ConnectionLost` or
/// `Closed`.
async fn send_until_error(
    c: &mut BoxConnection,
    gap: Option<Duration>,
) -> Result<ErrorKind, String> {
    // Bounded by DETECT (the caller's timeout) and a count.
    for seq in 0..100_000_000u64 {
        if let Some(g) = gap {
            tokio::time::sleep(g).await;
        }
        match c.send(good_frame(0, seq, STREAM_FRAME - 32)).await {
            Ok(()) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Closed) => {
                return Ok(e.kind())
            }
            Err(e) => return Err(format!("send: expected ConnectionLost or Closed, got {e}")),
        }
    }
    Err("send: 100 M frames to a killed peer".into())
}

/// Sets up `way` on `scheme`: the victim child and the survivor's connection, with the
/// victim busy (its stream flowing).
async fn set_up(scheme: &str, way: Way) -> (Child, BoxConnection) {
    let server_dies = matches!(way, Way::ServerMidSend | Way::ServerMidReceive);
    let ep = crate::local_endpoint(scheme, "killed");
    if server_dies {
        let role = match way {
            Way::ServerMidSend => "serve-stream",
            _ => "serve-drain",
        };
        let mut child = Child::spawn(role, &[ep]).unwrap();
        let ep = must("victim ready", child.ready()).await.unwrap();
        let c = must("connect", ductwork_transports::connect(ep.as_str())).await;
        return (child, c.unwrap());
    }
    let mut l = must("bind", ductwork_transports::bind(ep.as_str()))
        .await
        .unwrap();
    let role = match way {
        Way::ClientMidSend => "stream-to",
        _ => "drain-from",
    };
    let child = Child::spawn(role, &[l.endpoint().to_string()]).unwrap();
    let mut c = must("accept", l.accept()).await.unwrap();
    if !matches!(way, Way::ClientMidSend) {
        // The drain-from client's first frame: it is connected and reading.
        must("first frame", c.next()).await.unwrap().unwrap();
    }
    (child, c)
}

/// One way on one transport; returns the survivor's error kind and how long after the kill
/// it came.
async fn one(scheme: &str, way: Way) -> (ErrorKind, Duration) {
    let (mut victim, mut c) = set_up(scheme, way).await;
    let receives = matches!(way, Way::ClientMidSend | Way::ServerMidSend);
    // Get the victim's stream flowing (or ours into it) before it dies.
    for i in 0..200u64 {
        let r = if receives {
            must("recv", c.next()).await.map(|r| r.map(drop))
        } else {
            Some(must("send", c.send(good_frame(0, i, STREAM_FRAME - 32))).await)
        };
        if !matches!(r, Some(Ok(()))) {
            panic!("{scheme} {way:?}: before the kill: {r:?}");
        }
    }
    let t = Instant::now();
    must("kill", victim.kill()).await.unwrap();
    let gap = matches!(way, Way::ClientMidReceiveSlowSender).then_some(Duration::from_millis(10));
    let outcome = if receives {
        tokio::time::timeout(DETECT, recv_until_error(&mut c)).await
    } else {
        tokio::time::timeout(DETECT, send_until_error(&mut c, gap)).await
    };
    let took = t.elapsed();
    match outcome {
        Ok(Ok(kind)) => (kind, took),
        Ok(Err(e)) => panic!("{scheme} {way:?}: {e}"),
        Err(_) => panic!("{scheme} {way:?}: the death went unnoticed for {DETECT:?} (hang)"),
    }
}

/// Every way.
const ALL: &[Way] = &[
    Way::ClientMidSend,
    Way::ClientMidReceive,
    Way::ClientMidReceiveSlowSender,
    Way::ServerMidSend,
    Way::ServerMidReceive,
];

/// `ways` on `scheme`, with the figures printed.
async fn case(scheme: &str, ways: &[Way]) {
    let mut line = format!("killed {scheme}:");
    for &way in ways {
        let (kind, took) = one(scheme, way).await;
        line += &format!(
            " {way:?} -> {kind:?} in {:.1} ms;",
            took.as_secs_f64() * 1e3
        );
    }
    println!("{line}");
}

macro_rules! killed_tests {
    ($($(#[$m:meta])* $name:ident => $scheme:literal, $ways:expr;)+) => {$(
        #[test]
        $(#[$m])*
        fn $name() {
            crate::support::runtime().block_on(case($scheme, $ways));
        }
    )+};
}

// On Windows tcp and tls are left out: under Wine a peer killed while streaming is never
// reported gone (the conformance suite's `tcp::peer_killed`, see scripts/windows-tests.sh).
killed_tests! {
    #[cfg(target_os = "linux")]
    killed_tcp => "tcp", ALL;
    #[cfg(target_os = "linux")]
    killed_unix => "unix", ALL;
    killed_pipe => "pipe", ALL;
    #[cfg(target_os = "linux")]
    killed_tls => "tls", ALL;
    killed_shm => "shm", &[
        Way::ClientMidSend,
        Way::ClientMidReceive,
        Way::ServerMidSend,
        Way::ServerMidReceive,
    ];
    killed_shm_slow_sender => "shm", &[Way::ClientMidReceiveSlowSender];
}
