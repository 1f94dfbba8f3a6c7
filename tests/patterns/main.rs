//! The patterns' conformance suite: request/reply and publish/subscribe over every transport
//! this build has, the server or publisher in a separate process (this executable again,
//! through the same `support/child.rs` every transport suite uses).
//!
//! Capabilities decide: the patterns need a duplex transport; reconnect after a kill needs
//! one that sees a dead peer; heartbeats are for one that does not. A case that does not
//! apply is listed as ignored with the reason. Test names are `SCHEME::CASE`.
//!
//! `nats://` needs a server: when this build has the transport, the suite starts its own
//! `nats-server` on a free loopback port for the whole run (the transports' launcher, through
//! `support/nats.rs`), points `local_endpoint` at it (the variable the child processes
//! inherit) and stops it by its pid at the end. Without the binary the `nats::` cases are
//! ignored with that reason, except under `CI=true` on Unix, where the run fails.

mod nats;
#[path = "../../transports/tests/support/nats.rs"]
mod nats_server;
#[path = "../../transports/tests/support/mod.rs"]
mod support;

use ductwork::patterns::{
    Backoff, Client, ClientOptions, Heartbeat, Heartbeats, LinkState, Publisher, Server,
    ServerOptions, Subscriber, SubscriberOptions,
};
use ductwork::{Capabilities, Direction, Endpoint, ErrorKind, Transport};
use libtest_mimic::{Arguments, Trial};
use std::{sync::Arc, time::Duration};
use support::{child::Child, must, unique};

fn main() {
    support::child::enter_if_child(roles);
    let args = Arguments::from_args();
    let nats = start_nats();
    let mut trials = Vec::new();
    for t in ductwork::transports() {
        let probed = match (&nats, t.scheme()) {
            (Some(Err(why)), "nats") => Err(why.clone()),
            // Another crate turned the transport on: the patterns refuse nats:// without it.
            (_, "nats") if !cfg!(feature = "nats") => {
                Err("the ductwork crate's `nats` feature is off (--features nats)".into())
            }
            _ => probe(&*t),
        };
        // Over nats:// the patterns map natively onto NATS: their own cases.
        let cases = if t.scheme() == "nats" {
            NATS_CASES
        } else {
            CASES
        };
        for case in cases {
            let name = format!("{}::{}", t.scheme(), case.name);
            let t = t.clone();
            let why = match &probed {
                Ok(caps) => (case.applies)(caps).err(),
                Err(why) => Some(why.clone()), // not on this platform
            };
            trials.push(match why {
                None => Trial::test(name, move || (case.run)(t).map_err(Into::into)),
                Some(why) => {
                    Trial::test(format!("{name} ({why})"), || Ok(())).with_ignored_flag(true)
                }
            });
        }
    }
    let conclusion = libtest_mimic::run(&args, trials);
    drop(nats); // stops the server: `exit` would skip the drop
    conclusion.exit();
}

/// The variable `nats://`'s `local_endpoint` reads (`ductwork_transports::nats::SERVER_VAR`,
/// which a build without the `nats` feature does not have).
const NATS_SERVER_VAR: &str = "DUCTWORK_NATS_SERVER";

/// The suite's own nats-server when this build has `nats://`, or why there is none.
fn start_nats() -> Option<Result<nats_server::NatsServer, String>> {
    if !ductwork::transports().iter().any(|t| t.scheme() == "nats") {
        return None;
    }
    let server = nats_server::NatsServer::start(&[]).map_err(|why| nats_server::skip(&why));
    if let Ok(s) = &server {
        // Single-threaded still: no other thread reads the environment yet.
        std::env::set_var(NATS_SERVER_VAR, s.addr());
    }
    Some(server)
}

/// The transport's capabilities, if it works here: probed by binding a fresh endpoint once
/// (`unix://` on Windows, for example, says it is unsupported only when used).
fn probe(t: &dyn Transport) -> Result<Capabilities, String> {
    let at = ep(&t.local_endpoint(&unique("probe")));
    let caps = t.capabilities(&at).map_err(|e| e.to_string())?;
    support::runtime().block_on(async {
        match ductwork::bind(&at).await {
            Ok(_) => Ok(caps),
            Err(e) if e.kind() == ErrorKind::Unsupported => Err(e.detail().to_string()),
            Err(e) => Err(format!("probe bind failed: {e}")),
        }
    })
}

struct Case {
    name: &'static str,
    applies: fn(&Capabilities) -> Result<(), String>,
    run: fn(Arc<dyn Transport>) -> Result<(), String>,
}

const CASES: &[Case] = &[
    Case {
        name: "reqrep",
        applies: duplex,
        run: reqrep,
    },
    Case {
        name: "pubsub",
        applies: duplex,
        run: pubsub,
    },
    Case {
        name: "reconnect_after_kill",
        applies: |c| duplex_seeing_loss(c, "see heartbeat_finds_a_dead_server"),
        run: reconnect_after_kill,
    },
    Case {
        name: "reconnect_gives_up",
        applies: |c| duplex_seeing_loss(c, "a loss is found by heartbeats, then as here"),
        run: reconnect_gives_up,
    },
    Case {
        name: "heartbeat_finds_a_dead_server",
        applies: |c| {
            duplex(c).and(if c.peer_loss {
                Err("the transport sees a dead peer itself".into())
            } else {
                Ok(())
            })
        },
        run: heartbeat_finds_a_dead_server,
    },
];

/// Over nats://: request/reply as NATS requests, publish/subscribe on subjects, a pool of
/// servers in a queue group (see `src/patterns/nats/mod.rs`).
const NATS_CASES: &[Case] = &[
    Case {
        name: "reqrep",
        applies: duplex,
        run: reqrep,
    },
    Case {
        name: "pubsub_on_subjects",
        applies: duplex,
        run: nats::pubsub_on_subjects,
    },
    Case {
        name: "servers_in_a_queue_group",
        applies: duplex,
        run: nats::servers_in_a_queue_group,
    },
    Case {
        name: "a_killed_server_costs_its_calls_only",
        applies: duplex,
        run: nats::a_killed_server_costs_its_calls_only,
    },
    Case {
        name: "topics_must_be_subjects",
        applies: duplex,
        run: nats::topics_must_be_subjects,
    },
    Case {
        name: "plain_nats_clients_are_peers",
        applies: duplex,
        run: nats::plain_nats_clients_are_peers,
    },
];

fn duplex(c: &Capabilities) -> Result<(), String> {
    match c.direction {
        Direction::Duplex => Ok(()),
        Direction::OneWay => Err("one-way transport: no replies, no subscriptions".into()),
    }
}

/// Duplex, and the transport reports a dead peer (else `why` says what covers the case).
fn duplex_seeing_loss(c: &Capabilities, why: &str) -> Result<(), String> {
    duplex(c)?;
    match c.peer_loss {
        true => Ok(()),
        false => Err(format!("no peer-loss signal: {why}")),
    }
}

pub(crate) fn ep(s: &str) -> Endpoint {
    Endpoint::parse(s).expect("a valid endpoint")
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) enum Op {
    Echo(u64),
    Sleep(u64, u64),
    /// The serving process's id: which server of a pool answered.
    Pid,
}

async fn handle(op: Op) -> u64 {
    match op {
        Op::Echo(v) => v,
        Op::Sleep(ms, v) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            v
        }
        Op::Pid => u64::from(std::process::id()),
    }
}

/// The child roles: `server ENDPOINT [HEARTBEAT_MS]` and `publisher ENDPOINT N [go]` (with
/// `go`: publishing when the parent says so, not when three subscribers are in).
fn roles(role: &str, args: &[String]) -> Result<(), String> {
    support::runtime().block_on(async {
        match (role, args) {
            ("server", [at, rest @ ..]) => {
                let hb = match rest {
                    [ms] => Heartbeats::On(heartbeat(ms.parse().map_err(|_| "heartbeat ms")?)),
                    _ => Heartbeats::Auto,
                };
                let opts = ServerOptions {
                    heartbeats: hb,
                    ..ServerOptions::default()
                };
                let server = Server::bind(at.as_str(), handle)
                    .await
                    .map_err(|e| e.to_string())?
                    .with_options(opts)
                    .spawn();
                support::child::announce_ready(server.endpoint());
                // Serves until the parent closes stdin (or kills this process).
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                server
                    .shutdown(Duration::from_secs(10))
                    .await
                    .map_err(|e| e.to_string())
            }
            ("publisher", [at, n]) => publisher(at, n.parse().map_err(|_| "N")?, false).await,
            ("publisher", [at, n, go]) if go == "go" => {
                publisher(at, n.parse().map_err(|_| "N")?, true).await
            }
            _ => Err(format!("unknown role {role} {args:?}")),
        }
    })
}

fn heartbeat(ms: u64) -> Heartbeat {
    Heartbeat {
        interval: Duration::from_millis(ms),
        misses: 3,
    }
}

/// Waits for three subscribers (or, with `go`, for the parent's word: a NATS publisher does
/// not see its subscribers), publishes `n` messages on three topics in turn, then closes.
async fn publisher(at: &str, n: u64, go: bool) -> Result<(), String> {
    let p = Publisher::<u64>::bind(at)
        .await
        .map_err(|e| e.to_string())?;
    support::child::announce_ready(p.endpoint());
    if go {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    }
    for _ in 0..2_000 {
        if go || p.subscribers() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for i in 0..n {
        let topic = ["a.x", "b.y", "c"][(i % 3) as usize];
        p.publish(topic, &i).await.map_err(|e| e.to_string())?;
        if i % 16 == 15 {
            // Paced a little, so a best-effort transport is not flooded on loopback.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    p.shutdown(Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())
}

fn reqrep(t: Arc<dyn Transport>) -> Result<(), String> {
    support::runtime().block_on(async {
        let mut server = Child::spawn("server", &[t.local_endpoint(&unique("rr"))])?;
        let at = server.ready().await?;
        let client = Client::<Op, u64>::connect(at.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..200u64 {
            let c = client.clone();
            calls.spawn(async move { (i, c.call(Op::Sleep(i % 7, i)).await) });
        }
        while let Some(done) = must("calls", calls.join_next()).await {
            let (i, r) = done.map_err(|e| e.to_string())?;
            match r {
                Ok(v) if v == i => {}
                Ok(v) => return Err(format!("call {i} got {v}: another call's reply")),
                Err(e) => return Err(format!("call {i}: {e}")),
            }
        }
        // A timed-out call's late reply never reaches the next call.
        let e = client
            .call_timeout(Op::Sleep(300, 1), Duration::from_millis(20))
            .await
            .err()
            .ok_or("a 300 ms call finished within 20 ms")?;
        if e.kind() != ErrorKind::Timeout {
            return Err(format!("timed-out call: {e}"));
        }
        let v = client
            .call(Op::Sleep(400, 2))
            .await
            .map_err(|e| e.to_string())?;
        if v != 2 {
            return Err(format!("got {v}: the timed-out call's reply"));
        }
        client.close().await.map_err(|e| e.to_string())?;
        server.finish().await
    })
}

fn pubsub(t: Arc<dyn Transport>) -> Result<(), String> {
    let n = 300u64;
    support::runtime().block_on(async {
        let mut publisher = Child::spawn(
            "publisher",
            &[t.local_endpoint(&unique("ps")), n.to_string()],
        )?;
        let at = publisher.ready().await?;
        let connect = |topics: &'static [&'static str]| {
            let at = at.clone();
            async move { Subscriber::<u64>::connect(at.as_str(), topics).await }
        };
        let subs = [
            (connect(&["a."]).await, 0u64),
            (connect(&["b.", "c"]).await, 1),
            (connect(&[""]).await, 2),
        ];
        let reliable = t
            .capabilities(&ep(&at))
            .map_err(|e| e.to_string())?
            .is_reliable();
        for (sub, which) in subs {
            let mut sub = sub.map_err(|e| e.to_string())?;
            let want: Vec<u64> = (0..n)
                .filter(|i| match which {
                    0 => i % 3 == 0,
                    1 => i % 3 != 0,
                    _ => true,
                })
                .collect();
            let mut got = Vec::new();
            loop {
                match must("publication", sub.recv()).await {
                    Ok(Some(m)) => got.push(m.body),
                    Ok(None) => break,
                    // Without a close handshake, a best-effort subscriber may learn of the
                    // publisher's exit as a lost peer (its heartbeat bounced).
                    Err(e) if !reliable && e.kind() == ErrorKind::ConnectionLost => break,
                    Err(e) => return Err(e.to_string()),
                }
            }
            check_delivery(&got, &want, reliable)?;
        }
        publisher.finish().await
    })
}

/// Reliable: exactly `want`. Best-effort: in order, nothing unexpected, something arrived.
pub(crate) fn check_delivery(got: &[u64], want: &[u64], reliable: bool) -> Result<(), String> {
    if reliable && got != want {
        return Err(format!(
            "received {} of {} messages, or out of order",
            got.len(),
            want.len()
        ));
    }
    let mut it = want.iter();
    for g in got {
        if !it.any(|w| w == g) {
            return Err(format!("message {g} unexpected or out of order"));
        }
    }
    if got.is_empty() {
        return Err("nothing arrived".into());
    }
    Ok(())
}

/// A killed server, restarted at the same endpoint, is found again within one backoff step
/// (at most one failed attempt after it is back), and no call in flight is retried.
fn reconnect_after_kill(t: Arc<dyn Transport>) -> Result<(), String> {
    support::runtime().block_on(async {
        let mut first = Child::spawn("server", &[t.local_endpoint(&unique("rc"))])?;
        let at = first.ready().await?;
        let backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
            jitter: 0.5,
            ..Backoff::default()
        };
        let opts = ClientOptions {
            reconnect: Some(backoff),
            ..ClientOptions::default()
        };
        let client = Client::<Op, u64>::connect_with(at.as_str(), opts)
            .await
            .map_err(|e| e.to_string())?;
        let mut state = client.state();
        client.call(Op::Echo(1)).await.map_err(|e| e.to_string())?;
        let c = client.clone();
        let in_flight = tokio::spawn(async move { c.call(Op::Sleep(10_000, 0)).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        first.kill().await?;
        match must("in-flight call", in_flight)
            .await
            .map_err(|e| e.to_string())?
        {
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Closed) => {}
            other => return Err(format!("a call in flight at the kill: {other:?}")),
        }
        must(
            "reconnecting",
            state.wait_for(|s| matches!(s, LinkState::Reconnecting { .. })),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut second = Child::spawn("server", std::slice::from_ref(&at))?;
        second.ready().await?;
        let back_at = match *state.borrow_and_update() {
            LinkState::Reconnecting { attempt } => attempt,
            _ => 0,
        };
        let mut last = back_at;
        must("reconnected", async {
            loop {
                match *state.borrow_and_update() {
                    LinkState::Connected => return Ok(()),
                    LinkState::Reconnecting { attempt } => last = last.max(attempt),
                    s @ (LinkState::Lost | LinkState::GaveUp { .. }) => {
                        return Err(format!("{s:?}"))
                    }
                }
                state.changed().await.map_err(|e| e.to_string())?;
            }
        })
        .await?;
        if back_at > 0 && last > back_at + 1 {
            return Err(format!(
                "{} attempts failed after the server was back",
                last - back_at
            ));
        }
        let v = client.call(Op::Echo(7)).await.map_err(|e| e.to_string())?;
        if v != 7 {
            return Err(format!("after reconnecting got {v}"));
        }
        client.close().await.map_err(|e| e.to_string())?;
        second.finish().await
    })
}

/// A killed server (and publisher) that never comes back: the reconnecting client and
/// subscriber give up after their backoff's attempts, say so in their state, and fail with an
/// error naming the endpoint.
fn reconnect_gives_up(t: Arc<dyn Transport>) -> Result<(), String> {
    let backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        max_attempts: Some(3),
        give_up_after: None,
        ..Backoff::default()
    };
    let check = |e: ductwork::Error, at: &str| {
        let text = e.to_string();
        match e.kind() {
            ErrorKind::ConnectionLost
                if text.contains(at) && text.contains("gave up reconnecting after 3") =>
            {
                Ok(())
            }
            _ => Err(format!("after giving up: {text}")),
        }
    };
    support::runtime().block_on(async {
        let mut server = Child::spawn("server", &[t.local_endpoint(&unique("gu"))])?;
        let at = server.ready().await?;
        let opts = ClientOptions {
            reconnect: Some(backoff.clone()),
            ..ClientOptions::default()
        };
        let client = Client::<Op, u64>::connect_with(at.as_str(), opts)
            .await
            .map_err(|e| e.to_string())?;
        let mut state = client.state();
        client.call(Op::Echo(1)).await.map_err(|e| e.to_string())?;
        server.kill().await?;
        let gave_up = *must(
            "client gave up",
            state.wait_for(|s| matches!(s, LinkState::GaveUp { .. } | LinkState::Lost)),
        )
        .await
        .map_err(|e| e.to_string())?;
        if gave_up != (LinkState::GaveUp { attempts: 3 }) {
            return Err(format!("client state {gave_up:?}"));
        }
        check(
            client
                .call(Op::Echo(2))
                .await
                .err()
                .ok_or("a call worked")?,
            &at,
        )?;

        let mut publisher = Child::spawn(
            "publisher",
            &[t.local_endpoint(&unique("gu")), "0".into(), "go".into()],
        )?;
        let at = publisher.ready().await?;
        let opts = SubscriberOptions {
            reconnect: Some(backoff.clone()),
            ..SubscriberOptions::default()
        };
        let mut sub = Subscriber::<u64>::connect_with(at.as_str(), &[""], opts)
            .await
            .map_err(|e| e.to_string())?;
        publisher.kill().await?;
        match must("subscriber gave up", sub.recv()).await {
            Err(e) => check(e, &at)?,
            Ok(m) => return Err(format!("after the kill: {m:?}")),
        }
        match *sub.state().borrow() {
            LinkState::GaveUp { attempts: 3 } => Ok(()),
            s => Err(format!("subscriber state {s:?}")),
        }
    })
}

/// On a transport that cannot see a dead peer, heartbeats do: a killed server is reported
/// lost after about `interval * misses`.
fn heartbeat_finds_a_dead_server(t: Arc<dyn Transport>) -> Result<(), String> {
    support::runtime().block_on(async {
        let mut server = Child::spawn("server", &[t.local_endpoint(&unique("hb")), "100".into()])?;
        let at = server.ready().await?;
        let opts = ClientOptions {
            heartbeats: Heartbeats::On(heartbeat(100)),
            ..ClientOptions::default()
        };
        let client = Client::<Op, u64>::connect_with(at.as_str(), opts)
            .await
            .map_err(|e| e.to_string())?;
        client.call(Op::Echo(1)).await.map_err(|e| e.to_string())?;
        let mut state = client.state();
        server.kill().await?;
        let killed = std::time::Instant::now();
        must(
            "dead server noticed",
            state.wait_for(|s| *s == LinkState::Lost),
        )
        .await
        .map_err(|e| e.to_string())?;
        eprintln!(
            "{}: dead server noticed after {:?}",
            t.scheme(),
            killed.elapsed()
        );
        let e = client
            .call(Op::Echo(2))
            .await
            .err()
            .ok_or("a call to a dead server worked")?;
        match e.kind() {
            ErrorKind::ConnectionLost => Ok(()),
            _ => Err(format!("after the loss: {e}")),
        }
    })
}
