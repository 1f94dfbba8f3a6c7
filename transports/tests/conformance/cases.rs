//! The cases: each states the rule of the contract it checks and which capabilities it needs.
//!
//! Every await that depends on the peer has a deadline: a hang is a failure with a message,
//! never a stuck test run.

use crate::roles::{cue_msg, sized_frame, Msg, SIZED_FRAMES};
use crate::subjects::Subject;
use crate::support::{self, child::Child, XorShift};
use bytes::Bytes;
use ductwork_core::{
    Accept, BoxConnection, Capabilities, Channel, Direction, Endpoint, ErrorKind,
    Result as DwResult,
};
use futures::{FutureExt, SinkExt, StreamExt};
use std::{
    collections::HashMap,
    future::Future,
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// Generous: the first process in a fresh Wine prefix can take many seconds to start.
const PEER_DEADLINE: Duration = support::DEADLINE;

type Check = fn(&Capabilities) -> Result<(), &'static str>;

/// One rule of the contract.
pub struct Case {
    pub name: &'static str,
    pub needs: Check,
    pub run: fn(&Subject) -> Result<(), String>,
}

pub const ALL: &[Case] = &[
    Case {
        name: "round_trip",
        needs: duplex,
        run: round_trip,
    },
    Case {
        name: "one_way_delivery",
        needs: one_way,
        run: one_way_delivery,
    },
    Case {
        name: "ordered_100k",
        needs: reliable,
        run: ordered_100k,
    },
    Case {
        name: "max_size",
        needs: any,
        run: max_size,
    },
    Case {
        name: "oversized_from_peer",
        needs: duplex,
        run: oversized_from_peer,
    },
    Case {
        name: "many_clients",
        needs: duplex_per_peer,
        run: many_clients,
    },
    Case {
        name: "many_senders",
        needs: one_way,
        run: many_senders,
    },
    Case {
        name: "clean_close",
        needs: per_peer,
        run: clean_close,
    },
    Case {
        name: "close_after_peer_left",
        needs: per_peer,
        run: close_after_peer_left,
    },
    Case {
        name: "peer_killed",
        needs: peer_loss,
        run: peer_killed,
    },
    Case {
        name: "garbage",
        needs: any,
        run: garbage,
    },
    Case {
        name: "connect_missing",
        needs: any,
        run: connect_missing,
    },
    Case {
        name: "bind_in_use",
        needs: exclusive_names,
        run: bind_in_use,
    },
    Case {
        name: "rebind_after_crash",
        needs: any,
        run: rebind_after_crash,
    },
    Case {
        name: "one_way_rules",
        needs: one_way,
        run: one_way_rules,
    },
    Case {
        name: "typed_decode_error",
        needs: duplex,
        run: typed_decode_error,
    },
    Case {
        name: "cancel_safe_recv",
        needs: reliable,
        run: cancel_safe_recv,
    },
    Case {
        name: "cancel_safe_accept",
        needs: per_peer,
        run: cancel_safe_accept,
    },
    Case {
        name: "broken_after_error",
        needs: breakable,
        run: broken_after_error,
    },
    Case {
        name: "sized_send_wrong_count",
        needs: any,
        run: sized_send_wrong_count,
    },
    Case {
        name: "peer_limit_refused_on_send",
        needs: exchanges_limits,
        run: peer_limit_refused_on_send,
    },
    Case {
        name: "peer_limit_refused_by_listener",
        needs: exchanges_limits,
        run: peer_limit_refused_by_listener,
    },
];

fn any(_: &Capabilities) -> Result<(), &'static str> {
    Ok(())
}
fn duplex(c: &Capabilities) -> Result<(), &'static str> {
    (c.direction == Direction::Duplex)
        .then_some(())
        .ok_or("one-way transport")
}
fn one_way(c: &Capabilities) -> Result<(), &'static str> {
    (c.direction == Direction::OneWay)
        .then_some(())
        .ok_or("duplex transport")
}
fn per_peer(c: &Capabilities) -> Result<(), &'static str> {
    c.accept
        .per_peer()
        .then_some(())
        .ok_or("one shared receiving connection")
}
fn exclusive_names(c: &Capabilities) -> Result<(), &'static str> {
    c.accept
        .exclusive_names()
        .then_some(())
        .ok_or("listeners of a name form a pool (a NATS queue group): a second bind joins it")
}
fn duplex_per_peer(c: &Capabilities) -> Result<(), &'static str> {
    duplex(c).and(per_peer(c))
}
fn reliable(c: &Capabilities) -> Result<(), &'static str> {
    c.is_reliable().then_some(()).ok_or("best-effort transport")
}
fn peer_loss(c: &Capabilities) -> Result<(), &'static str> {
    c.peer_loss
        .then_some(())
        .ok_or("transport cannot see a peer die")
}

/// Transports whose two sides tell each other their frame limit at connect, so that a frame
/// over the peer's limit is refused on send (the contract's *Size limit*): every reliable
/// duplex transport with a connection per peer (the byte streams through the hello of
/// `common/framed.rs`, shm through its set-up handshake).
fn exchanges_limits(c: &Capabilities) -> Result<(), &'static str> {
    duplex_per_peer(c)?;
    reliable(c).map_err(|_| "best-effort: no limit exchange at connect")
}

/// Connections that one failed receive ends: per peer and reliable. A datagram connection
/// (best-effort) reports an oversized datagram as one lost message and goes on; a shared
/// receiver merges many senders and one sender's bad message does not end the others'.
fn breakable(c: &Capabilities) -> Result<(), &'static str> {
    per_peer(c)
        .map_err(|_| "one shared receiving connection: one sender's error does not end it")?;
    reliable(c).map_err(|_| "best-effort: an oversized datagram is one lost message")
}

/// Whether `case` applies to `subject`: the transport must be usable here (probed once by
/// binding a fresh endpoint) and have the capabilities the case needs.
pub fn applies(subject: &Subject, case: &Case) -> Result<(), String> {
    static PROBED: OnceLock<Mutex<HashMap<&'static str, Result<Capabilities, String>>>> =
        OnceLock::new();
    let mut map = PROBED.get_or_init(Default::default).lock().unwrap();
    let caps = map
        .entry(subject.name)
        .or_insert_with(|| probe(subject))
        .clone()?;
    (case.needs)(&caps).map_err(str::to_string)
}

fn probe(subject: &Subject) -> Result<Capabilities, String> {
    let ep = endpoint(subject, "probe");
    let caps = ductwork_transports::capabilities(&ep).map_err(|e| e.to_string())?;
    support::runtime().block_on(async {
        match ductwork_transports::bind(&ep).await {
            Ok(_) => Ok(caps),
            Err(e) if e.kind() == ErrorKind::Unsupported => Err(e.detail().to_string()),
            Err(e) => Err(format!("probe bind failed: {e}")),
        }
    })
}

fn endpoint(subject: &Subject, case: &str) -> Endpoint {
    let unique = support::unique(&format!("conf-{}-{}", subject.name, case.replace('_', "-")));
    Endpoint::parse(&subject.endpoint(&unique)).expect("subject endpoint parses")
}

/// Runs a case body on a fresh runtime with an overall deadline.
fn run<F: Future<Output = Result<(), String>>>(limit: u64, f: F) -> Result<(), String> {
    support::runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(limit), f)
            .await
            .unwrap_or_else(|_| Err(format!("case did not finish within {limit} s")))
    })
}

async fn within<T>(what: &str, d: Duration, f: impl Future<Output = T>) -> Result<T, String> {
    support::within(what, d, f).await
}

fn e2s(e: ductwork_core::Error) -> String {
    e.to_string()
}

/// Binds a fresh endpoint of `subject` for `case`.
async fn bind(subject: &Subject, case: &str) -> Result<ductwork_core::BoxListener, String> {
    ductwork_transports::bind(&endpoint(subject, case))
        .await
        .map_err(e2s)
}

/// A peer process playing a role of `roles.rs`: the endpoint, then the role's arguments.
fn spawn_peer(role: &str, ep: &Endpoint, args: &[String]) -> Result<Child, String> {
    let all: Vec<String> = std::iter::once(ep.to_string())
        .chain(args.iter().cloned())
        .collect();
    Child::spawn(role, &all)
}

/// Spawns a listener role and waits until it announced the endpoint it bound.
async fn listener(role: &str, ep: &Endpoint, args: &[String]) -> Result<(Child, Endpoint), String> {
    let mut p = spawn_peer(role, ep, args)?;
    let bound = p.ready().await?;
    Ok((p, Endpoint::parse(&bound).map_err(e2s)?))
}

async fn accept(l: &mut ductwork_core::BoxListener) -> Result<BoxConnection, String> {
    within("accept", PEER_DEADLINE, l.accept())
        .await?
        .map_err(e2s)
}

async fn recv_msg(ch: &mut Channel<Msg>) -> Result<Option<Msg>, String> {
    within("recv", PEER_DEADLINE, ch.recv()).await?.map_err(e2s)
}

// ---------------------------------------------------------------------------------------------

/// Typed messages of several sizes come back unchanged from an echo server in another process.
fn round_trip(s: &Subject) -> Result<(), String> {
    run(120, async {
        let (peer, ep) = listener("echo-server", &endpoint(s, "round_trip"), &[]).await?;
        let conn = within("connect", PEER_DEADLINE, ductwork_transports::connect(&ep))
            .await?
            .map_err(e2s)?;
        let expected_caps = ductwork_transports::capabilities(&ep).map_err(e2s)?;
        if conn.info().capabilities != expected_caps {
            return Err("connection capabilities differ from the transport's".into());
        }
        let max = expected_caps.max_message;
        let mut ch: Channel<Msg> = Channel::new(conn);
        for (seq, len) in [0usize, 1, 100, 1000, 60_000.min(max - 200)]
            .into_iter()
            .enumerate()
        {
            let m = Msg::new(9, seq as u64, len);
            ch.send(&m).await.map_err(e2s)?;
            let back = recv_msg(&mut ch).await?;
            if back.as_ref() != Some(&m) {
                return Err(format!("message of {len} bytes came back as {back:?}"));
            }
        }
        ch.close().await.map_err(e2s)?;
        peer.finish().await
    })
}

/// On a one-way transport, 1,000 messages from another process arrive, in order if ordered.
fn one_way_delivery(s: &Subject) -> Result<(), String> {
    run(120, async {
        let mut l = bind(s, "one_way_delivery").await?;
        let caps = ductwork_transports::capabilities(l.endpoint()).map_err(e2s)?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        let peer = spawn_peer(
            "send-close",
            l.endpoint(),
            &["3".into(), "1000".into(), "100".into()],
        )?;
        let mut last = None;
        for _ in 0..1000 {
            let m = recv_msg(&mut ch).await?.ok_or("stream ended early")?;
            if m != Msg::new(3, m.seq, 100) {
                return Err(format!("corrupt message {m:?}"));
            }
            if caps.ordered && last.is_some_and(|l: u64| m.seq != l + 1) {
                return Err(format!("out of order: {} after {last:?}", m.seq));
            }
            last = Some(m.seq);
        }
        peer.finish().await
    })
}

/// 100,000 messages from another process arrive in order, none lost or duplicated.
fn ordered_100k(s: &Subject) -> Result<(), String> {
    const N: u64 = 100_000;
    run(300, async {
        let mut l = bind(s, "ordered_100k").await?;
        let shared = ductwork_transports::capabilities(l.endpoint())
            .map_err(e2s)?
            .accept
            == Accept::Shared;
        let peer = spawn_peer(
            "send-close",
            l.endpoint(),
            &["1".into(), N.to_string(), "16".into()],
        )?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        for expected in 0..N {
            let m = recv_msg(&mut ch)
                .await?
                .ok_or_else(|| format!("ended after {expected} messages"))?;
            if m.seq != expected || m != Msg::new(1, expected, 16) {
                return Err(format!("expected #{expected}, got #{} ({m:?})", m.seq));
            }
        }
        if !shared {
            match recv_msg(&mut ch).await? {
                None => {}
                Some(m) => return Err(format!("extra message after {N}: #{}", m.seq)),
            }
        }
        peer.finish().await
    })
}

/// A message of exactly the limit passes; one byte over is refused on send with FrameTooLarge
/// and the connection stays usable.
fn max_size(s: &Subject) -> Result<(), String> {
    run(120, async {
        let ep = endpoint(s, "max_size").with_option("max_frame", "65536");
        let caps = ductwork_transports::capabilities(&ep).map_err(e2s)?;
        if caps.direction == Direction::OneWay {
            let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            let mut c = accept(&mut l).await?;
            let peer = spawn_peer("send-sizes", l.endpoint(), &[])?;
            let f = within("recv", PEER_DEADLINE, c.next())
                .await?
                .ok_or("ended")?
                .map_err(e2s)?;
            if f.len() != caps.max_message || f.iter().any(|b| *b != 1) {
                return Err(format!("max-size frame arrived as {} bytes", f.len()));
            }
            let f = within("recv", PEER_DEADLINE, c.next())
                .await?
                .ok_or("ended")?
                .map_err(e2s)?;
            if &f[..] != b"end" {
                return Err(format!("after the refused frame got {} bytes", f.len()));
            }
            return peer.finish().await;
        }
        let (peer, ep) = listener("echo-server", &ep, &[]).await?;
        let mut c = within("connect", PEER_DEADLINE, ductwork_transports::connect(&ep))
            .await?
            .map_err(e2s)?;
        let max = c.info().capabilities.max_message;
        let full = Bytes::from((0..max).map(|i| i as u8).collect::<Vec<_>>());
        c.send(full.clone()).await.map_err(e2s)?;
        let back = within("recv", PEER_DEADLINE, c.next())
            .await?
            .ok_or("ended")?
            .map_err(e2s)?;
        if back != full {
            return Err(format!("max-size frame came back as {} bytes", back.len()));
        }
        match c.send(Bytes::from(vec![0u8; max + 1])).await {
            Err(e) if e.kind() == ErrorKind::FrameTooLarge => {
                if !e.to_string().contains(&ep.address().to_string()) {
                    return Err(format!("error does not name the endpoint: {e}"));
                }
            }
            other => return Err(format!("max+1 bytes not refused: {other:?}")),
        }
        c.send(Bytes::from_static(b"still usable"))
            .await
            .map_err(e2s)?;
        let back = within("recv", PEER_DEADLINE, c.next())
            .await?
            .ok_or("ended")?
            .map_err(e2s)?;
        if &back[..] != b"still usable" {
            return Err("connection not usable after a refused frame".into());
        }
        c.close().await.map_err(e2s)?;
        peer.finish().await
    })
}

/// A peer that sends more than our limit makes our recv fail with FrameTooLarge (no hang, no
/// allocation of the claimed size).
fn oversized_from_peer(s: &Subject) -> Result<(), String> {
    run(120, async {
        let (mut c, peer) = oversized_sender(s, "oversized_from_peer", 0).await?;
        match within("recv", PEER_DEADLINE, c.next()).await? {
            Some(Err(e)) if e.kind() == ErrorKind::FrameTooLarge => {}
            other => return Err(format!("expected FrameTooLarge, got {other:?}")),
        }
        drop(c);
        peer.finish().await
    })
}

/// A connection (with a limit of 1 KiB) to a peer process that sends it a frame over that
/// limit, then `after` small frames. A ductwork peer that knows our limit refuses such a
/// frame itself (see `peer_limit_refused_by_listener`), so where the transport exchanges
/// limits the offender is the subject's raw oversized writer (`Subject::oversized`: a raw
/// client that writes a header claiming far more than the limit, then noise, or on shm
/// publishes such a record in the ring); elsewhere a `blast` listener.
async fn oversized_sender(
    s: &Subject,
    case: &str,
    after: u32,
) -> Result<(BoxConnection, Child), String> {
    let ep = endpoint(s, case).with_option("max_frame", "65536");
    let caps = ductwork_transports::capabilities(&ep).map_err(e2s)?;
    if exchanges_limits(&caps).is_ok() && s.oversized.is_some() {
        let mut l = ductwork_transports::bind(&ep.with_option("max_frame", "1024"))
            .await
            .map_err(e2s)?;
        let peer = spawn_peer("raw-oversized", l.endpoint(), &[s.name.into()])?;
        return Ok((accept(&mut l).await?, peer));
    }
    let args = ["4096".to_string(), after.to_string()];
    let (peer, bound) = listener("blast", &ep, &args).await?;
    let mine = bound.with_option("max_frame", "1024");
    let c = within(
        "connect",
        PEER_DEADLINE,
        ductwork_transports::connect(&mine),
    )
    .await?
    .map_err(e2s)?;
    Ok((c, peer))
}

/// The scenario across two processes: a receiver process with `max_frame=1KiB`, a
/// sender (this process) with the default limit. A frame within the receiver's limit arrives;
/// one of 20,000 bytes is refused on send with FrameTooLarge naming the endpoint, before
/// anything is written; the connection stays usable, and the next frame arrives. (The frame
/// used to be written, the receiver dropped the connection, and the sender never knew.)
fn peer_limit_refused_on_send(s: &Subject) -> Result<(), String> {
    run(120, async {
        let ep = endpoint(s, "peer_limit_refused_on_send").with_option("max_frame", "1KiB");
        let (peer, bound) = listener("echo-server", &ep, &[]).await?;
        let mine = bound.with_option("max_frame", "1MiB");
        let mut c = within(
            "connect",
            PEER_DEADLINE,
            ductwork_transports::connect(&mine),
        )
        .await?
        .map_err(e2s)?;
        echo(&mut c, Bytes::from(vec![1u8; 1024])).await?;
        match c.send(Bytes::from(vec![2u8; 20_000])).await {
            Err(e) if e.kind() == ErrorKind::FrameTooLarge => {
                let text = e.to_string();
                if !text.contains(bound.address()) || !text.contains("1024") {
                    return Err(format!("the refusal names neither endpoint nor limit: {e}"));
                }
            }
            other => return Err(format!("20,000 bytes to a 1 KiB peer: {other:?}")),
        }
        echo(&mut c, Bytes::from_static(b"still usable"))
            .await
            .map_err(|e| format!("after the refused frame: {e}"))?;
        c.close().await.map_err(e2s)?;
        peer.finish().await
    })
}

/// Sends `frame` and expects it back from an echo server.
async fn echo(c: &mut BoxConnection, frame: Bytes) -> Result<(), String> {
    c.send(frame.clone()).await.map_err(e2s)?;
    match within("echo", PEER_DEADLINE, c.next()).await? {
        Some(Ok(back)) if back == frame => Ok(()),
        other => Err(format!("{} bytes came back as {other:?}", frame.len())),
    }
}

/// The other direction: a listener process sends to this client, which announced 1 KiB. Its
/// 4,096-byte frame is refused on its side (the role checks the error and exits with 1
/// otherwise); the frame it sends next arrives, then the clean end.
fn peer_limit_refused_by_listener(s: &Subject) -> Result<(), String> {
    run(120, async {
        let ep = endpoint(s, "peer_limit_refused_by_listener");
        let (peer, bound) = listener("send-over-limit", &ep, &["4096".into()]).await?;
        let mine = bound.with_option("max_frame", "1024");
        let mut c = within(
            "connect",
            PEER_DEADLINE,
            ductwork_transports::connect(&mine),
        )
        .await?
        .map_err(e2s)?;
        match within("recv", PEER_DEADLINE, c.next()).await? {
            Some(Ok(f)) if &f[..] == b"after" => {}
            other => {
                let why = peer.finish().await.err().unwrap_or_default();
                return Err(format!(
                    "expected the frame after the refused one: {other:?}; {why}"
                ));
            }
        }
        match within("recv", PEER_DEADLINE, c.next()).await? {
            None => {}
            other => return Err(format!("expected the clean end: {other:?}")),
        }
        peer.finish().await
    })
}

fn spawn_echo_acceptor(
    mut l: ductwork_core::BoxListener,
) -> tokio::sync::mpsc::UnboundedReceiver<DwResult<()>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(c) = l.accept().await {
            serve_echo(c, tx.clone());
        }
    });
    rx
}

/// Four client processes at once, each doing 100 round trips, all served correctly.
fn many_clients(s: &Subject) -> Result<(), String> {
    run(240, async {
        let l = bind(s, "many_clients").await?;
        let ep = l.endpoint().clone();
        let _outcomes = spawn_echo_acceptor(l);
        let peers = (0..4)
            .map(|i| spawn_peer("echo-client", &ep, &[i.to_string(), "100".into()]))
            .collect::<Result<Vec<_>, _>>()?;
        for p in peers {
            p.finish().await?;
        }
        Ok(())
    })
}

/// Four sender processes at once into one receiver; each sender's messages all arrive (if
/// reliable), in order (if ordered).
fn many_senders(s: &Subject) -> Result<(), String> {
    const PER: u64 = 200;
    run(240, async {
        let mut l = bind(s, "many_senders").await?;
        let caps = ductwork_transports::capabilities(l.endpoint()).map_err(e2s)?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        let peers = (0..4u32)
            .map(|i| {
                spawn_peer(
                    "send-close",
                    l.endpoint(),
                    &[i.to_string(), PER.to_string(), "32".into()],
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut next = [0u64; 4];
        for _ in 0..4 * PER {
            let m = recv_msg(&mut ch).await?.ok_or("stream ended")?;
            let slot = next.get_mut(m.sender as usize).ok_or("unknown sender")?;
            if caps.ordered && m.seq != *slot {
                return Err(format!(
                    "sender {}: expected #{}, got #{}",
                    m.sender, slot, m.seq
                ));
            }
            *slot = m.seq + 1;
        }
        for p in peers {
            p.finish().await?;
        }
        Ok(())
    })
}

/// A peer that sends 10 messages and closes: we get all 10, then a clean end (None), not an error.
fn clean_close(s: &Subject) -> Result<(), String> {
    run(120, async {
        let mut l = bind(s, "clean_close").await?;
        let peer = spawn_peer(
            "send-close",
            l.endpoint(),
            &["5".into(), "10".into(), "64".into()],
        )?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        for i in 0..10 {
            match recv_msg(&mut ch).await? {
                Some(m) if m == Msg::new(5, i, 64) => {}
                other => return Err(format!("message {i}: {other:?}")),
            }
        }
        match within("recv after close", PEER_DEADLINE, ch.recv()).await? {
            Ok(None) => {}
            other => return Err(format!("expected a clean end, got {other:?}")),
        }
        peer.finish().await
    })
}

/// A peer that closed cleanly and exited: we read its messages and the clean end, and our own
/// close then succeeds (it has nobody to tell, and that is not an error).
fn close_after_peer_left(s: &Subject) -> Result<(), String> {
    run(120, async {
        let mut l = bind(s, "close_after_peer_left").await?;
        let peer = spawn_peer(
            "send-close",
            l.endpoint(),
            &["2".into(), "3".into(), "8".into()],
        )?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        peer.finish().await?;
        for i in 0..3 {
            if recv_msg(&mut ch).await? != Some(Msg::new(2, i, 8)) {
                return Err(format!("message {i} missing"));
            }
        }
        if recv_msg(&mut ch).await?.is_some() {
            return Err("expected a clean end".into());
        }
        ch.close()
            .await
            .map_err(|e| format!("close after the peer left: {e}"))
    })
}

/// A peer killed while we wait in recv, and one killed mid-stream: the survivor gets
/// ConnectionLost promptly, never a hang and never a clean end.
fn peer_killed(s: &Subject) -> Result<(), String> {
    run(180, async {
        let mut l = bind(s, "peer_killed").await?;
        // 1. Idle peer killed while our recv is pending.
        let mut idle = spawn_peer("send-one-then-wait", l.endpoint(), &[])?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        recv_msg(&mut ch).await?.ok_or("no first message")?;
        let pending = tokio::spawn(async move { ch.recv().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        idle.kill().await?;
        match within("recv after kill (idle)", Duration::from_secs(20), pending).await? {
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionLost => {}
            other => {
                return Err(format!(
                    "idle peer killed: expected ConnectionLost, got {other:?}"
                ))
            }
        }
        // 2. Streaming peer killed mid-stream.
        let mut busy = spawn_peer("stream-forever", l.endpoint(), &[])?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        for _ in 0..50 {
            recv_msg(&mut ch).await?.ok_or("stream ended early")?;
        }
        busy.kill().await?;
        let drained = within("drain after kill", Duration::from_secs(30), async {
            loop {
                match ch.recv().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await?;
        match drained {
            Err(e) if e.kind() == ErrorKind::ConnectionLost => Ok(()),
            other => Err(format!(
                "streaming peer killed: expected ConnectionLost, got {other:?}"
            )),
        }
    })
}

/// Raw garbage from a non-ductwork client fails only that connection; the listener goes on
/// serving a well-behaved client from another process.
fn garbage(s: &Subject) -> Result<(), String> {
    if s.garbage.is_none() {
        return Ok(());
    }
    run(180, async {
        let l = bind(s, "garbage").await?;
        let ep = l.endpoint().clone();
        let caps = ductwork_transports::capabilities(&ep).map_err(e2s)?;
        if caps.direction == Direction::OneWay {
            return garbage_one_way(s, l).await;
        }
        let mut outcomes = spawn_echo_acceptor(l);
        spawn_peer("garbage", &ep, &[s.name.into()])?
            .finish()
            .await?;
        if caps.boundaries == ductwork_core::Boundaries::FramedBytes {
            match within("garbage connection outcome", PEER_DEADLINE, outcomes.recv()).await? {
                Some(Err(e))
                    if matches!(e.kind(), ErrorKind::FrameTooLarge | ErrorKind::Protocol) => {}
                other => return Err(format!("garbage connection ended with {other:?}")),
            }
        }
        spawn_peer("echo-client", &ep, &["1".into(), "20".into()])?
            .finish()
            .await
    })
}

/// The one-way form of `garbage`: an echo cannot answer, so after the raw writer's garbage a
/// well-behaved sender process's messages must still all arrive on the shared receiver. Garbage
/// messages may surface as `Decode` or `FrameTooLarge` errors, which do not end the stream.
async fn garbage_one_way(s: &Subject, mut l: ductwork_core::BoxListener) -> Result<(), String> {
    const N: u64 = 20;
    let ep = l.endpoint().clone();
    let reliable = ductwork_transports::capabilities(&ep)
        .map_err(e2s)?
        .is_reliable();
    let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
    spawn_peer("garbage", &ep, &[s.name.into()])?
        .finish()
        .await?;
    let sender = spawn_peer("send-close", &ep, &["7".into(), N.to_string(), "40".into()])?;
    let (mut next, mut errors) = (0, 0u32);
    while next < N {
        match within("recv after garbage", PEER_DEADLINE, ch.recv()).await? {
            Ok(Some(m)) if m.sender == 7 => {
                if m != Msg::new(7, m.seq, 40) || (reliable && m.seq != next) {
                    return Err(format!("expected #{next} from sender 7, got {m:?}"));
                }
                next = m.seq + 1;
            }
            Ok(Some(_)) => {}
            Err(e)
                if matches!(e.kind(), ErrorKind::Decode | ErrorKind::FrameTooLarge)
                    && errors < 64 =>
            {
                errors += 1
            }
            other => return Err(format!("receiver after garbage: {other:?}")),
        }
    }
    sender.finish().await
}

/// Connecting where nothing listens (any more) is NotFound, naming the endpoint, promptly.
fn connect_missing(s: &Subject) -> Result<(), String> {
    run(60, async {
        let l = bind(s, "connect_missing").await?;
        let gone = l.endpoint().clone();
        drop(l);
        tokio::time::sleep(Duration::from_millis(50)).await;
        match within(
            "connect to a missing endpoint",
            Duration::from_secs(30),
            ductwork_transports::connect(&gone),
        )
        .await?
        {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if e.to_string().contains(gone.address()) {
                    Ok(())
                } else {
                    Err(format!("error does not name the endpoint: {e}"))
                }
            }
            Err(e) => Err(format!("expected NotFound, got {:?}: {e}", e.kind())),
            Ok(_) => Err("connected to an endpoint nobody listens on".into()),
        }
    })
}

/// Binding a name another live process holds is AddrInUse, naming the endpoint; once that
/// process let go, binding works.
fn bind_in_use(s: &Subject) -> Result<(), String> {
    run(120, async {
        let (peer, bound) = listener("hold", &endpoint(s, "bind_in_use"), &[]).await?;
        match ductwork_transports::bind(&bound).await {
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                if !e.to_string().contains(bound.address()) {
                    return Err(format!("error does not name the endpoint: {e}"));
                }
            }
            Err(e) => return Err(format!("expected AddrInUse, got {:?}: {e}", e.kind())),
            Ok(_) => return Err("bound a name another process holds".into()),
        }
        peer.finish().await?;
        ductwork_transports::bind(&bound)
            .await
            .map(drop)
            .map_err(|e| format!("rebind after release: {e}"))
    })
}

/// A listener process that was killed leaves nothing that stops the next bind of its name.
fn rebind_after_crash(s: &Subject) -> Result<(), String> {
    run(120, async {
        let (mut peer, bound) = listener("hold", &endpoint(s, "rebind_after_crash"), &[]).await?;
        peer.kill().await?;
        // The OS may need a moment to release a killed process's handles.
        let mut last = String::new();
        for _ in 0..50 {
            match ductwork_transports::bind(&bound).await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("cannot bind after the holder was killed: {last}"))
    })
}

/// Receiving on the sending side, or sending on the receiving side, is Unsupported; a shared
/// receiver is accepted once.
fn one_way_rules(s: &Subject) -> Result<(), String> {
    run(60, async {
        let mut l = bind(s, "one_way_rules").await?;
        let mut rx = accept(&mut l).await?;
        match rx.send(Bytes::from_static(b"x")).await {
            Err(e) if e.kind() == ErrorKind::Unsupported => {}
            other => return Err(format!("send on the receiving side: {other:?}")),
        }
        if ductwork_transports::capabilities(l.endpoint())
            .map_err(e2s)?
            .accept
            == Accept::Shared
        {
            match within("second accept", Duration::from_secs(5), l.accept()).await? {
                Err(e) if e.kind() == ErrorKind::Unsupported => {}
                Err(e) => return Err(format!("second accept: {e}")),
                Ok(_) => return Err("second accept returned another connection".into()),
            }
        }
        let mut tx = within(
            "connect",
            PEER_DEADLINE,
            ductwork_transports::connect(l.endpoint()),
        )
        .await?
        .map_err(e2s)?;
        match within("recv on sending side", Duration::from_secs(5), tx.next()).await? {
            Some(Err(e)) if e.kind() == ErrorKind::Unsupported => Ok(()),
            other => Err(format!("recv on the sending side: {other:?}")),
        }
    })
}

/// A frame that is not a valid message is a Decode error for that message only; the typed
/// channel goes on working.
fn typed_decode_error(s: &Subject) -> Result<(), String> {
    run(120, async {
        let (peer, ep) = listener("echo-server", &endpoint(s, "typed_decode_error"), &[]).await?;
        let mut c = within("connect", PEER_DEADLINE, ductwork_transports::connect(&ep))
            .await?
            .map_err(e2s)?;
        c.send(Bytes::from_static(&[0xff, 0xff, 0xff]))
            .await
            .map_err(e2s)?;
        let mut ch: Channel<Msg> = Channel::new(c);
        match within("recv", PEER_DEADLINE, ch.recv()).await? {
            Err(e) if e.kind() == ErrorKind::Decode => {}
            other => return Err(format!("expected Decode, got {other:?}")),
        }
        // A typed message over the limit is refused before anything is written.
        let max = ch.info().capabilities.max_message;
        match ch.send(&Msg::new(1, 0, max + 1)).await {
            Err(e) if e.kind() == ErrorKind::FrameTooLarge => {}
            other => return Err(format!("oversized typed message: {other:?}")),
        }
        let m = Msg::new(1, 1, 10);
        ch.send(&m).await.map_err(e2s)?;
        if recv_msg(&mut ch).await? != Some(m) {
            return Err("channel unusable after a decode error".into());
        }
        ch.close().await.map_err(e2s)?;
        peer.finish().await
    })
}

/// `recv` is cancel-safe: a receive dropped while pending loses nothing. A sender process
/// sends bursts of numbered messages (some large, read in parts by stream transports) when
/// told to; between bursts, with nothing in flight, receives are polled once and dropped
/// (surely pending), and during bursts each receive races a short random timer, so many are
/// dropped mid-way. Every message must arrive exactly once, in order, then the clean end.
fn cancel_safe_recv(s: &Subject) -> Result<(), String> {
    const BURSTS: u64 = 40;
    run(240, async {
        let mut l = bind(s, "cancel_safe_recv").await?;
        let caps = ductwork_transports::capabilities(l.endpoint()).map_err(e2s)?;
        let mut sender = spawn_peer("send-on-cue", l.endpoint(), &["4".into()])?;
        let mut ch: Channel<Msg> = Channel::new(accept(&mut l).await?);
        let mut rng = XorShift::new(u64::from(std::process::id()));
        let (mut next, mut dropped, mut polls) = (0u64, 0u32, 0u32);
        for burst in 0..BURSTS {
            // Nothing is in flight: a receive polled now is pending; dropping it must not
            // lose the next message.
            for _ in 0..3 {
                if let Some(r) = ch.recv().now_or_never() {
                    return Err(format!("before burst {burst}: a receive got {r:?}"));
                }
                dropped += 1;
            }
            let n = 1 + rng.below(12);
            sender.say(&n.to_string()).await?;
            let end = next + n;
            while next < end {
                polls += 1;
                if polls > 1_000_000 {
                    return Err(format!("{polls} receives and still waiting for #{next}"));
                }
                let timer = Duration::from_micros(rng.below(1500));
                tokio::select! {
                    r = ch.recv() => {
                        let m = r.map_err(e2s)?.ok_or_else(|| format!("ended before #{next}"))?;
                        if m != cue_msg(4, next, caps.max_message) {
                            return Err(format!(
                                "expected #{next}, got #{} ({} body bytes) after {dropped} \
                                 dropped receives",
                                m.seq,
                                m.body.len()
                            ));
                        }
                        next += 1;
                    }
                    _ = tokio::time::sleep(timer) => dropped += 1,
                }
            }
        }
        sender.finish().await?;
        if caps.accept.per_peer() {
            match recv_msg(&mut ch).await? {
                None => {}
                Some(m) => return Err(format!("extra message after {next}: #{}", m.seq)),
            }
        }
        Ok(())
    })
}

/// `accept` is cancel-safe: an accept dropped while pending loses no connection. With nobody
/// connecting, accepts are polled once and dropped; then four client processes connect (at
/// once, or one by one on a best-effort transport) while each accept races a short random
/// timer. All four must be accepted and served (each does round trips with the echo this
/// process runs on every accepted connection).
fn cancel_safe_accept(s: &Subject) -> Result<(), String> {
    const CLIENTS: u32 = 4;
    run(240, async {
        let mut l = bind(s, "cancel_safe_accept").await?;
        for _ in 0..3 {
            if let Some(r) = l.accept().now_or_never() {
                return Err(format!(
                    "an accept with no client returned {:?}",
                    r.map(|c| c.info().clone())
                ));
            }
        }
        let ep = l.endpoint().clone();
        // On a reliable transport all clients come at once, so several connections queue
        // while accepts are dropped. On a best-effort one they come one at a time: under Wine
        // several UDP echo clients at once lose echoes whatever the accepts do (see
        // udp::many_clients in scripts/windows-tests.sh).
        let batch = if ductwork_transports::capabilities(&ep)
            .map_err(e2s)?
            .is_reliable()
        {
            CLIENTS
        } else {
            1
        };
        let mut rng = XorShift::new(u64::from(std::process::id()) ^ 0xacce);
        let (mut accepted, mut polls) = (0, 0u32);
        let (tx, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
        while accepted < CLIENTS {
            let want = (accepted + batch).min(CLIENTS);
            // Three round trips prove that a client was served.
            let clients = (accepted..want)
                .map(|i| spawn_peer("echo-client", &ep, &[i.to_string(), "3".into()]))
                .collect::<Result<Vec<_>, _>>()?;
            let all = within("accept every client", PEER_DEADLINE, async {
                while accepted < want {
                    polls += 1;
                    if polls > 1_000_000 {
                        return Err(format!("{polls} accepts, {accepted} connections"));
                    }
                    let timer = Duration::from_micros(rng.below(1500));
                    tokio::select! {
                        r = l.accept() => {
                            serve_echo(r.map_err(e2s)?, tx.clone());
                            accepted += 1;
                        }
                        _ = tokio::time::sleep(timer) => {}
                    }
                }
                Ok(())
            })
            .await;
            match all {
                Ok(r) => r?,
                Err(_) => return Err(format!("accepted {accepted} of {CLIENTS} clients (hang)")),
            }
            for c in clients {
                c.finish().await?;
            }
        }
        for _ in 0..CLIENTS {
            match within("echo outcome", PEER_DEADLINE, outcomes.recv()).await? {
                Some(Ok(())) => {}
                other => return Err(format!("a served connection ended with {other:?}")),
            }
        }
        Ok(())
    })
}

/// After a receive returned an error other than Decode the connection is broken: every later
/// receive returns an error or the end, never a frame, never a hang. Twice: a live peer
/// process sends one frame over our limit and then more bytes (valid small frames, or the raw
/// client's noise where the transport exchanges limits; see `oversized_sender`), which a
/// reader that went on would deliver; and (if the transport sees peers die) a peer process is killed. A
/// dead peer also makes a send fail (with ConnectionLost or Closed) within a few sends, and
/// every send after that fails too.
fn broken_after_error(s: &Subject) -> Result<(), String> {
    run(180, async {
        let ep = endpoint(s, "broken_after_error");
        let (mut c, peer) = oversized_sender(s, "broken_after_error", 20).await?;
        match within("recv", PEER_DEADLINE, c.next()).await? {
            Some(Err(e)) if e.kind() == ErrorKind::FrameTooLarge => {}
            other => return Err(format!("expected FrameTooLarge, got {other:?}")),
        }
        still_broken("after FrameTooLarge", &mut c).await?;
        drop(c);
        peer.finish().await?;

        if !ductwork_transports::capabilities(&ep)
            .map_err(e2s)?
            .peer_loss
        {
            return Ok(());
        }
        let mut l = bind(s, "broken_after_error").await?;
        let mut idle = spawn_peer("send-one-then-wait", l.endpoint(), &[])?;
        let mut c = accept(&mut l).await?;
        within("first frame", PEER_DEADLINE, c.next())
            .await?
            .ok_or("ended before the first frame")?
            .map_err(e2s)?;
        idle.kill().await?;
        match within("recv after kill", PEER_DEADLINE, c.next()).await? {
            Some(Err(e)) if e.kind() == ErrorKind::ConnectionLost => {}
            other => {
                return Err(format!(
                    "killed peer: expected ConnectionLost, got {other:?}"
                ))
            }
        }
        still_broken("after ConnectionLost", &mut c).await?;
        // Sends may still be taken by a buffer (a socket's, a ring) before the transport
        // notices that nobody reads them; once that is full (at most 16 MiB here) a send must
        // fail, and every send after it too.
        let frame = Bytes::from(vec![9u8; 1024]);
        let mut failed = None;
        for i in 0..16_384 + 4 {
            let r = within("send to a dead peer", PEER_DEADLINE, c.send(frame.clone())).await?;
            match (r, failed) {
                (Err(e), _)
                    if matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Closed) =>
                {
                    failed.get_or_insert(i);
                }
                (Err(e), _) => return Err(format!("send {i} to a dead peer: {e}")),
                (Ok(()), Some(first)) => {
                    return Err(format!(
                        "send {i} to a dead peer succeeded after send {first} failed"
                    ))
                }
                (Ok(()), None) => {}
            }
            if failed.is_some_and(|f| i >= f + 3) {
                return Ok(());
            }
        }
        Err("16 MiB of sends to a dead peer all succeeded".into())
    })
}

/// Five more receives on a broken connection: each an error or the end, none a frame or a hang.
async fn still_broken(when: &str, c: &mut BoxConnection) -> Result<(), String> {
    for i in 0..5 {
        match within(&format!("recv {i} {when}"), PEER_DEADLINE, c.next()).await? {
            None | Some(Err(_)) => {}
            Some(Ok(f)) => {
                return Err(format!(
                    "recv {i} {when} delivered a frame of {} bytes ({:?}...)",
                    f.len(),
                    &f[..f.len().min(12)]
                ))
            }
        }
    }
    Ok(())
}

/// A sized send whose encoder writes fewer or more bytes than announced (or fails, or
/// announces more than the limit) fails as "Sized sends" says and queues nothing; the
/// connection takes the next frame. The sender is another process (`sized-sends` checks each
/// error and exits with 1 on a wrong one); this side must receive exactly the valid frames,
/// in order, and then the end. On a best-effort transport rounds repeat until one complete
/// round's last frame arrived, and every frame that arrives must be a valid one.
fn sized_send_wrong_count(s: &Subject) -> Result<(), String> {
    run(180, async {
        let mut ep = endpoint(s, "sized_send_wrong_count");
        // A small ring, where a transport has one, so that frames wrap around its end.
        let small = ep.with_option("capacity", "16KiB");
        if ductwork_transports::capabilities(&small).is_ok() {
            ep = small;
        }
        let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
        let caps = ductwork_transports::capabilities(l.endpoint()).map_err(e2s)?;
        let mut sender = spawn_peer("sized-sends", l.endpoint(), &[])?;
        let mut c = accept(&mut l).await?;
        let received = receive_sized(&caps, &mut c).await;
        if let Err(e) = received {
            // The sender's own finding (a wrong error from a sized send) says more.
            return Err(
                match within("sender exit", Duration::from_secs(10), sender.finish()).await {
                    Ok(Err(why)) => format!("{e}; {why}"),
                    _ => e,
                },
            );
        }
        if !caps.is_reliable() {
            sender.say("stop").await?;
        }
        sender.finish().await?;
        if caps.accept.per_peer() && caps.is_reliable() {
            match within("recv after the last frame", PEER_DEADLINE, c.next()).await? {
                None => {}
                other => return Err(format!("after the last valid frame: {other:?}")),
            }
        }
        Ok(())
    })
}

/// The receiving side of `sized_send_wrong_count`.
async fn receive_sized(caps: &Capabilities, c: &mut BoxConnection) -> Result<(), String> {
    if caps.is_reliable() {
        for i in 0..=SIZED_FRAMES {
            let f = within("recv", PEER_DEADLINE, c.next())
                .await?
                .ok_or_else(|| format!("ended before frame {i}"))?
                .map_err(e2s)?;
            if f[..] != sized_frame(0, i)[..] {
                return Err(format!(
                    "expected valid frame {i} ({} bytes), got {} bytes starting {:?}",
                    sized_frame(0, i).len(),
                    f.len(),
                    &f[..f.len().min(12)]
                ));
            }
        }
        return Ok(());
    }
    // Best-effort: anything may be lost, nothing may be invented.
    let mut last: Option<(u32, u32)> = None;
    loop {
        let f = within("recv", PEER_DEADLINE, c.next())
            .await?
            .ok_or("ended before a whole round arrived")?
            .map_err(e2s)?;
        let at = |k: usize| {
            u32::from_be_bytes(f.get(k..k + 4).unwrap_or(&[0xee; 4]).try_into().unwrap())
        };
        let (round, i) = (at(0), at(4));
        if i > SIZED_FRAMES || round >= 50 || f[..] != sized_frame(round, i)[..] {
            return Err(format!(
                "a frame that was never sent validly: {} bytes starting {:?}",
                f.len(),
                &f[..f.len().min(12)]
            ));
        }
        if caps.ordered && last.is_some_and(|l| (round, i) <= l) {
            return Err(format!("frame {round}/{i} after {last:?}"));
        }
        last = Some((round, i));
        if i == SIZED_FRAMES {
            return Ok(());
        }
    }
}

/// Echoes every frame of `c` on a task; the outcome goes to `outcomes`.
fn serve_echo(mut c: BoxConnection, outcomes: tokio::sync::mpsc::UnboundedSender<DwResult<()>>) {
    tokio::spawn(async move {
        let outcome = async {
            while let Some(f) = c.next().await {
                c.send(f?).await?;
            }
            c.close().await
        }
        .await;
        let _ = outcomes.send(outcome);
    });
}
