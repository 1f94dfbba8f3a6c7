//! The patterns' conformance suite: request/reply and publish/subscribe over every transport
//! this build has, the server or publisher in a separate process (this executable again,
//! through the same `support/child.rs` every transport suite uses).
//!
//! Capabilities decide: the patterns need a duplex transport; reconnect after a kill needs
//! one that sees a dead peer; heartbeats are for one that does not. A case that does not
//! apply is listed as ignored with the reason. Test names are `SCHEME::CASE`.

#[path = "../../transports/tests/support/mod.rs"]
mod support;

use ductwork::patterns::{
    Backoff, Client, ClientOptions, Heartbeat, Heartbeats, LinkState, Publisher, Server,
    ServerOptions, Subscriber,
};
use ductwork::{Capabilities, Direction, Endpoint, ErrorKind, Transport};
use libtest_mimic::{Arguments, Trial};
use std::{sync::Arc, time::Duration};
use support::{child::Child, must, unique};

fn main() {
    support::child::enter_if_child(roles);
    let args = Arguments::from_args();
    let mut trials = Vec::new();
    for t in ductwork::transports() {
        let probed = probe(&*t);
        for case in CASES {
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
    libtest_mimic::run(&args, trials).exit();
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
        applies: |c| {
            duplex(c).and(if c.peer_loss {
                Ok(())
            } else {
                Err("no peer-loss signal: see heartbeat_finds_a_dead_server".into())
            })
        },
        run: reconnect_after_kill,
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

fn duplex(c: &Capabilities) -> Result<(), String> {
    match c.direction {
        Direction::Duplex => Ok(()),
        Direction::OneWay => Err("one-way transport: no replies, no subscriptions".into()),
    }
}

fn ep(s: &str) -> Endpoint {
    Endpoint::parse(s).expect("a valid endpoint")
}

#[derive(serde::Serialize, serde::Deserialize)]
enum Op {
    Echo(u64),
    Sleep(u64, u64),
}

async fn handle(op: Op) -> u64 {
    match op {
        Op::Echo(v) => v,
        Op::Sleep(ms, v) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            v
        }
    }
}

/// The child roles: `server ENDPOINT [HEARTBEAT_MS]` and `publisher ENDPOINT N`.
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
            ("publisher", [at, n]) => publisher(at, n.parse().map_err(|_| "N")?).await,
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

/// Waits for three subscribers, publishes `n` messages on three topics in turn, then closes.
async fn publisher(at: &str, n: u64) -> Result<(), String> {
    let p = Publisher::<u64>::bind(at)
        .await
        .map_err(|e| e.to_string())?;
    support::child::announce_ready(p.endpoint());
    for _ in 0..2_000 {
        if p.subscribers() >= 3 {
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
fn check_delivery(got: &[u64], want: &[u64], reliable: bool) -> Result<(), String> {
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
                    LinkState::Lost => return Err("lost".to_string()),
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
