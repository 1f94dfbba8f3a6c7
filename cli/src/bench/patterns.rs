//! The pattern rows: `ductwork::patterns` measured against the plain channel of the same
//! transport, in the same run.
//!
//! - **`TRANSPORT+reqrep`**: the peer serves a [`Server`] whose handler echoes the
//!   [`BenchMsg`] it gets; the parent's [`Client`] calls it in a loop and checks every echo,
//!   recording round trips exactly as the plain row's latency phase does (same warm-up, same
//!   histogram). The client runs with no per-call deadline (`ClientOptions::timeout: None`):
//!   one timer guards the whole phase, as it does the plain row, so the ratio shows what the
//!   pattern adds (request ids, the waiting map, the reply hand-over), not a timer per call.
//!   No throughput: request/reply is a round trip by nature.
//! - **`TRANSPORT+pubsub×100`**: the parent binds a [`Publisher`] (policy
//!   [`SlowSubscriber::Wait`], so nothing is dropped and the rate is what every subscriber
//!   really got); the peer connects [`FANOUT`] [`Subscriber`]s and, once all are subscribed,
//!   says `Ready` over a plain control channel. The parent publishes for the duration (and
//!   at least 20 messages), then `End`; each subscriber checks order and payload of what it got, and the peer reports the
//!   sum. The rate is messages delivered to all subscribers per second, from the first
//!   publish to the report, like the plain row's throughput. No latency.
//!
//! Imports only [`proto`](super::proto) and [`types`](super::types).

use super::{
    proto::{die_after, or_peer_exit, BenchMsg, Job, Op, Peer, PeerSpec},
    types::{pattern, payload_ok, Measured, RoundTrips, Rtt, Throughput, Timing},
};
use ductwork::{
    patterns::{
        Client, ClientOptions, Publisher, PublisherOptions, Server, SlowSubscriber, Subscriber,
    },
    Channel, Endpoint,
};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Subscribers of the fan-out row.
pub const FANOUT: usize = 100;

/// A pattern measured next to a transport's plain channel row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pattern {
    /// Request/reply round trips.
    ReqRep,
    /// Publish/subscribe fan-out to [`FANOUT`] subscribers.
    PubSub,
}

impl Pattern {
    /// The row's name: `unix+reqrep`, `unix+pubsub×100`.
    pub fn row_name(self, subject: &str) -> String {
        match self {
            Pattern::ReqRep => format!("{subject}+reqrep"),
            Pattern::PubSub => format!("{subject}+pubsub×{FANOUT}"),
        }
    }

    /// Its name in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::ReqRep => "reqrep",
            Pattern::PubSub => "pubsub",
        }
    }

    /// Subscribers (fan-out rows only).
    pub fn subscribers(self) -> Option<usize> {
        (self == Pattern::PubSub).then_some(FANOUT)
    }

    /// What its ratio to the plain channel row compares, in words (for the JSON).
    pub fn compares(self) -> &'static str {
        match self {
            Pattern::ReqRep => {
                "p50: median request/reply round trip / median round trip of the plain channel row \
                 named in `baseline` (same transport and size, same run); lower is better"
            }
            Pattern::PubSub => {
                "throughput: messages/s delivered in all to the subscribers / one-way messages/s of \
                 the plain channel row named in `baseline` (same transport and size, same run); \
                 higher is better"
            }
        }
    }

    /// Measures one round: `ep` is a fresh endpoint of the transport, `control` another
    /// (the fan-out's control channel).
    pub async fn measure(
        self,
        ep: Endpoint,
        control: Endpoint,
        size: usize,
        cpu: Option<usize>,
        t: Timing,
    ) -> Result<Measured, String> {
        match self {
            Pattern::ReqRep => Ok((Some(reqrep_cell(ep, control, size, cpu, t).await?), None)),
            Pattern::PubSub => Ok((None, Some(pubsub_cell(ep, control, size, cpu, t).await?))),
        }
    }
}

fn err(e: ductwork::Error) -> String {
    e.to_string()
}

/// Client options for the bench: the defaults but no per-call deadline (see the module docs).
/// Heartbeats stay `Auto`: off on transports that see a dead peer themselves.
fn client_options() -> ClientOptions {
    ClientOptions {
        timeout: None,
        ..ClientOptions::default()
    }
}

/// The request/reply row's round: spawn the server peer, connect to the endpoint it
/// announces on `control`, measure, quit.
async fn reqrep_cell(
    ep: Endpoint,
    control: Endpoint,
    size: usize,
    cpu: Option<usize>,
    t: Timing,
) -> Result<Rtt, String> {
    let mut listener = crate::bind_ep(&control).await.map_err(err)?;
    let spec = PeerSpec {
        job: Job::ReqRep {
            endpoint: ep.to_string(),
            control: listener.endpoint().to_string(),
        },
        size,
        cpu,
        deadline_ms: t.peer_deadline_ms(),
    };
    let mut peer = Peer::spawn(&spec)?;
    let setup = async {
        // The server's real endpoint (a port 0 becomes a real port).
        let (_, ready) = accept_ready(&mut listener, t.reply_limit).await?;
        let real = String::from_utf8(ready.payload).map_err(|e| e.to_string())?;
        let conn = ductwork::connect(real.as_str()).await.map_err(err)?;
        Ok(Client::with_options(Channel::new(conn), client_options()))
    };
    let client: Client<BenchMsg, BenchMsg> = match or_peer_exit(&mut peer, setup).await {
        Ok(c) => c,
        Err(e) => return Err(peer.fail(e).await),
    };
    let guard = t.warmup + t.duration + t.reply_limit;
    let phase = async {
        tokio::time::timeout(guard, reqrep_latency(&client, size, t))
            .await
            .map_err(|_| format!("{ep}: replies did not come back within {guard:?}"))?
    };
    let rtt = match or_peer_exit(&mut peer, phase).await {
        Ok(r) => r,
        Err(e) => return Err(peer.fail(e).await),
    };
    // `Quit` makes the server shut down after answering it.
    let quit = BenchMsg {
        seq: 0,
        op: Op::Quit,
        payload: Vec::new(),
    };
    let _ = client.call_timeout(quit, t.reply_limit).await;
    let _ = client.close().await;
    let _ = peer.finish(Duration::from_secs(2)).await;
    Ok(rtt)
}

/// Accepts the peer's control connection and its `Ready`, within `limit` each.
async fn accept_ready(
    listener: &mut ductwork::BoxListener,
    limit: Duration,
) -> Result<(Channel<BenchMsg>, BenchMsg), String> {
    let mut ch: Channel<BenchMsg> = tokio::time::timeout(limit, ductwork::accept_channel(listener))
        .await
        .map_err(|_| format!("the peer did not connect within {limit:?}"))?
        .map_err(err)?;
    let ready = tokio::time::timeout(limit, ch.recv())
        .await
        .map_err(|_| format!("no Ready from the peer within {limit:?}"))?
        .map_err(err)?;
    match ready {
        Some(m) if m.op == Op::Ready => Ok((ch, m)),
        other => Err(format!("expected Ready from the peer, got {other:?}")),
    }
}

/// Connects to `control` and says `Ready`, with `payload`.
async fn say_ready(control: &str, payload: Vec<u8>) -> Result<Channel<BenchMsg>, String> {
    let control = Endpoint::parse(control).map_err(err)?;
    let mut ch: Channel<BenchMsg> = Channel::new(crate::connect_ep(&control).await.map_err(err)?);
    let ready = BenchMsg {
        seq: 0,
        op: Op::Ready,
        payload,
    };
    ch.send(&ready).await.map_err(err)?;
    Ok(ch)
}

/// The latency phase through the client: call, check the echo, record the round trip.
async fn reqrep_latency(
    client: &Client<BenchMsg, BenchMsg>,
    size: usize,
    t: Timing,
) -> Result<Rtt, String> {
    let payload = pattern(size);
    let mut round_trips = RoundTrips::new(t);
    let mut seq = 0u64;
    // `call` takes the request by value and the reply comes back owned: each request is the
    // previous echo, sent on. So each round trip makes one buffer (the reply's, decoded) on
    // each side, as the plain row's does (its parent decodes the echo into a new message, its
    // peer copies the payload out of the frame), and no copy the plain row does not make.
    let mut msg = BenchMsg {
        seq,
        op: Op::Ping,
        payload: payload.clone(),
    };
    while round_trips.next() {
        seq += 1;
        msg.seq = seq;
        let t0 = Instant::now();
        let echo = client.call(msg).await.map_err(err)?;
        let elapsed = t0.elapsed();
        if echo.op != Op::Ping || echo.seq != seq || echo.payload != payload {
            return Err(format!(
                "the reply to request {seq} differs from what was sent"
            ));
        }
        round_trips.record(elapsed);
        msg = echo;
    }
    Ok(round_trips.finish())
}

/// The peer's side of the request/reply row: an echo server until `Quit`, its endpoint
/// announced on `control`.
pub async fn serve_reqrep(endpoint: &str, control: &str) -> Result<(), String> {
    let ep = Endpoint::parse(endpoint).map_err(err)?;
    let listener = crate::bind_ep(&ep).await.map_err(err)?;
    let real = listener.endpoint().to_string().into_bytes();
    let quit = Arc::new(tokio::sync::Notify::new());
    let asked = quit.clone();
    let handled = Arc::new(AtomicU64::new(0));
    let die_after = die_after();
    let handler = move |m: BenchMsg| {
        // Testing aid: a server that crashes mid-run.
        if die_after.is_some_and(|n| handled.fetch_add(1, Ordering::Relaxed) >= n) {
            std::process::exit(101);
        }
        if m.op == Op::Quit {
            asked.notify_one();
        }
        async move { m }
    };
    let server = Server::new(listener, handler).spawn();
    let _control = say_ready(control, real).await?;
    quit.notified().await;
    server.shutdown(Duration::from_secs(2)).await.map_err(err)
}

/// The fan-out row's round: bind the publisher and the control listener, spawn the
/// subscribers' peer, publish, collect the peer's count.
async fn pubsub_cell(
    ep: Endpoint,
    control: Endpoint,
    size: usize,
    cpu: Option<usize>,
    t: Timing,
) -> Result<Throughput, String> {
    let opts = PublisherOptions {
        slow: SlowSubscriber::Wait,
        ..PublisherOptions::default()
    };
    let publisher = Publisher::<BenchMsg>::bind_with(ep, opts)
        .await
        .map_err(err)?;
    let mut listener = crate::bind_ep(&control).await.map_err(err)?;
    let spec = PeerSpec {
        job: Job::PubSub {
            endpoint: publisher.endpoint().to_string(),
            control: listener.endpoint().to_string(),
            subscribers: FANOUT,
        },
        size,
        cpu,
        // Connecting 100 subscribers takes a moment more than one connection.
        deadline_ms: t.peer_deadline_ms() + 10_000,
    };
    let mut peer = Peer::spawn(&spec)?;
    // The peer connects once its 100 subscribers are in: that takes a moment longer.
    let setup = accept_ready(&mut listener, t.reply_limit * 2);
    let mut ch = match or_peer_exit(&mut peer, setup).await {
        Ok((c, _)) => c,
        Err(e) => return Err(peer.fail(e).await),
    };
    let run = fan_out(&publisher, &mut ch, size, t);
    let tp = match or_peer_exit(&mut peer, run).await {
        Ok(tp) => tp,
        Err(e) => return Err(peer.fail(e).await),
    };
    let _ = ch.close().await;
    let _ = publisher.shutdown(Duration::from_secs(2)).await;
    let _ = peer.finish(Duration::from_secs(5)).await;
    Ok(tp)
}

/// Publishes `Ping`s for the warm-up, then `Data` for the duration, then `End`; the
/// subscribers' total comes back over `ch`.
async fn fan_out(
    publisher: &Publisher<BenchMsg>,
    ch: &mut Channel<BenchMsg>,
    size: usize,
    t: Timing,
) -> Result<Throughput, String> {
    let subs = publisher.subscribers();
    if subs != FANOUT {
        return Err(format!("{subs} of {FANOUT} subscribers are connected"));
    }
    let mut msg = BenchMsg {
        seq: 0,
        op: Op::Ping,
        payload: pattern(size),
    };
    let warm = Instant::now();
    while warm.elapsed() < t.warmup {
        publisher.publish("", &msg).await.map_err(err)?;
    }
    msg.op = Op::Data;
    let start = Instant::now();
    let mut published = 0u64;
    // At least as many as the latency phase's minimum, however short the duration.
    while start.elapsed() < t.duration || published < RoundTrips::MIN_SAMPLES {
        msg.seq = published;
        publisher.publish("", &msg).await.map_err(err)?;
        published += 1;
    }
    msg.op = Op::End;
    msg.payload.clear();
    publisher.publish("", &msg).await.map_err(err)?;
    let limit = t.reply_limit;
    let report = tokio::time::timeout(limit, ch.recv())
        .await
        .map_err(|_| format!("no report from the subscribers within {limit:?}"))?
        .map_err(err)?;
    let elapsed = start.elapsed();
    let Some(BenchMsg {
        op: Op::Report { received, bad },
        ..
    }) = report
    else {
        return Err(format!("expected the subscribers' report, got {report:?}"));
    };
    let sent = published * FANOUT as u64;
    if bad > 0 || received != sent {
        return Err(format!(
            "the subscribers got {received} of {sent} messages, {bad} of them wrong"
        ));
    }
    Ok(Throughput::new(sent, received, size, elapsed))
}

/// The peer's side of the fan-out row: `n` subscribers, a `Ready` once all are in, then the
/// sum of their counts once each has seen `End`.
pub async fn serve_pubsub(
    endpoint: &str,
    control: &str,
    n: usize,
    size: usize,
) -> Result<(), String> {
    let ep = Endpoint::parse(endpoint).map_err(err)?;
    let mut subs = tokio::task::JoinSet::new();
    for _ in 0..n {
        let sub = Subscriber::<BenchMsg>::connect(ep.clone(), &[""])
            .await
            .map_err(err)?;
        subs.spawn(count(sub, pattern(size)));
    }
    let mut ch = say_ready(control, Vec::new()).await?;
    let (mut received, mut bad) = (0u64, 0u64);
    while let Some(done) = subs.join_next().await {
        let (r, b) = done.map_err(|e| e.to_string())??;
        received += r;
        bad += b;
    }
    let report = BenchMsg {
        seq: 0,
        op: Op::Report { received, bad },
        payload: Vec::new(),
    };
    ch.send(&report).await.map_err(err)?;
    // Stay until the parent is done with the control channel.
    while let Ok(Some(_)) = ch.recv().await {}
    Ok(())
}

/// One subscriber: counts `Data` messages (checking order and payload) until `End`.
async fn count(mut sub: Subscriber<BenchMsg>, expected: Vec<u8>) -> Result<(u64, u64), String> {
    let (mut received, mut bad, mut next) = (0u64, 0u64, 0u64);
    let die_after = die_after();
    loop {
        // Testing aid: a subscriber process that crashes mid-run.
        if die_after.is_some_and(|n| received >= n) {
            std::process::exit(101);
        }
        let Some(m) = sub.recv().await.map_err(err)? else {
            return Err("the publisher closed before End".into());
        };
        match m.body.op {
            Op::Data => {
                received += 1;
                if m.body.seq != next || !payload_ok(&m.body.payload, &expected) {
                    bad += 1;
                }
                next = m.body.seq + 1;
            }
            Op::End => return Ok((received, bad + sub.missed())),
            _ => {}
        }
    }
}
