//! The patterns over `nats://`, mapped natively onto NATS (see `src/patterns/nats/mod.rs`),
//! against the suite's own nats-server, the serving side in other processes: subjects and
//! prefixes (one that ends inside a token too), a pool of servers in a queue group, what a
//! killed server costs, and the topics NATS refuses.

use super::{check_delivery, support, Op};
use ductwork::patterns::{Client, Publisher, Subscriber};
use ductwork::{ErrorKind, Transport};
use std::{collections::BTreeSet, sync::Arc, time::Duration};
use support::{child::Child, must, unique};

/// How long one subscriber waits for its next message before it takes what arrived (at most
/// once: a message may be lost; then the last is not awaited forever). A bound, not a claim.
const IDLE: Duration = Duration::from_secs(10);

/// A subscriber's prefixes, and which of the publisher's messages (by number) they match.
type Want = (&'static [&'static str], fn(u64) -> bool);

/// Four subscribers, the publisher in another process: token-aligned prefixes (`a.`, `b.`),
/// a whole topic (`c`), everything (`""`), and prefixes that end inside a token (`a.x`, `b`),
/// which subscribe to a wider subtree and filter. Each gets exactly its topics, in order.
pub fn pubsub_on_subjects(t: Arc<dyn Transport>) -> Result<(), String> {
    let n = 300u64;
    support::runtime().block_on(async {
        let at = t.local_endpoint(&unique("ps"));
        let mut publisher = Child::spawn("publisher", &[at, n.to_string(), "go".into()])?;
        let at = publisher.ready().await?;
        let wants: [Want; 4] = [
            (&["a."], |i| i % 3 == 0),
            (&["b.", "c"], |i| i % 3 != 0),
            (&[""], |_| true),
            (&["a.x", "b"], |i| i % 3 != 2),
        ];
        let mut subs = Vec::new();
        for (prefixes, _) in &wants {
            let sub = Subscriber::<u64>::connect(at.as_str(), prefixes).await;
            subs.push(sub.map_err(|e| format!("subscribe {prefixes:?}: {e}"))?);
        }
        publisher.say("go").await?;
        for (mut sub, (prefixes, keep)) in subs.into_iter().zip(wants) {
            let want: Vec<u64> = (0..n).filter(|i| keep(*i)).collect();
            let mut got = Vec::new();
            while got.last() != want.last() {
                match tokio::time::timeout(IDLE, sub.recv()).await {
                    Ok(Ok(Some(m))) => {
                        let topic = ["a.x", "b.y", "c"][(m.body % 3) as usize];
                        if m.topic != topic {
                            return Err(format!(
                                "message {} on {:?}, not {topic}",
                                m.body, m.topic
                            ));
                        }
                        got.push(m.body);
                    }
                    Ok(Ok(None)) => return Err(format!("{prefixes:?}: the subscription ended")),
                    Ok(Err(e)) => return Err(format!("{prefixes:?}: {e}")),
                    Err(_) => break,
                }
            }
            check_delivery(&got, &want, false).map_err(|e| format!("{prefixes:?}: {e}"))?;
            eprintln!("nats pubsub {prefixes:?}: {} of {}", got.len(), want.len());
            sub.close().await.map_err(|e| e.to_string())?;
        }
        publisher.finish().await
    })
}

/// Two server processes bind one name: both join its queue group and share the calls (each
/// call goes to one of them); once one is killed the other answers every call.
pub fn servers_in_a_queue_group(t: Arc<dyn Transport>) -> Result<(), String> {
    support::runtime().block_on(async {
        let at = t.local_endpoint(&unique("pool"));
        let mut first = Child::spawn("server", std::slice::from_ref(&at))?;
        let mut second = Child::spawn("server", std::slice::from_ref(&at))?;
        first.ready().await?;
        second.ready().await?;
        let client = Client::<Op, u64>::connect(at.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut pids = BTreeSet::new();
        for _ in 0..40 {
            pids.insert(client.call(Op::Pid).await.map_err(|e| e.to_string())?);
        }
        // NATS picks a member at random per request: all 40 to one has odds of 2^-39.
        if pids.len() != 2 {
            return Err(format!(
                "40 calls reached {} server(s): {pids:?}",
                pids.len()
            ));
        }
        let killed = u64::from(first.id().ok_or("no pid")?);
        first.kill().await?;
        // Calls sent before the NATS server saw the process go may still go to it, and time
        // out (at most once); within a few, every call reaches the survivor.
        let mut lost = 0;
        let mut answered = 0;
        for _ in 0..200 {
            match client.call_timeout(Op::Pid, Duration::from_secs(2)).await {
                Ok(pid) if pid == killed => return Err("a killed server answered".into()),
                Ok(_) => answered += 1,
                Err(e) if e.kind() == ErrorKind::Timeout => lost += 1,
                Err(e) => return Err(format!("after the kill: {e}")),
            }
            if answered == 20 {
                break;
            }
        }
        eprintln!("nats pool: {lost} calls lost to the killed server, then 20 answered");
        if answered < 20 {
            return Err(format!("only {answered} calls answered after the kill"));
        }
        client.close().await.map_err(|e| e.to_string())?;
        second.finish().await
    })
}

/// With no server, a call fails at once ("no responders"), not at its deadline; a call in
/// flight when its server is killed fails at its deadline (the request may have run: at most
/// once), and a server started later is reached by the same client, which never reconnects.
pub fn a_killed_server_costs_its_calls_only(t: Arc<dyn Transport>) -> Result<(), String> {
    support::runtime().block_on(async {
        let at = t.local_endpoint(&unique("kill"));
        let client = Client::<Op, u64>::connect(at.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let no_server = |r: ductwork::Result<u64>| match r {
            Err(e) if e.kind() == ErrorKind::Remote && e.to_string().contains("no responders") => {
                Ok(())
            }
            other => Err(format!("a call with no server: {other:?}")),
        };
        // A deadline far beyond the test's own bound: only "no responders" ends it in time.
        let forever = Duration::from_secs(3_600);
        no_server(must("no server", client.call_timeout(Op::Echo(1), forever)).await)?;
        let mut server = Child::spawn("server", std::slice::from_ref(&at))?;
        server.ready().await?;
        let v = client.call(Op::Echo(2)).await.map_err(|e| e.to_string())?;
        if v != 2 {
            return Err(format!("got {v}"));
        }
        let c = client.clone();
        let in_flight = tokio::spawn(async move {
            c.call_timeout(Op::Sleep(10_000, 0), Duration::from_secs(2))
                .await
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.kill().await?;
        match must("in-flight call", in_flight)
            .await
            .map_err(|e| e.to_string())?
        {
            Err(e) if e.kind() == ErrorKind::Timeout => {}
            other => return Err(format!("a call in flight at the kill: {other:?}")),
        }
        no_server(must("server gone", client.call_timeout(Op::Echo(3), forever)).await)?;
        let mut again = Child::spawn("server", std::slice::from_ref(&at))?;
        again.ready().await?;
        let v = client.call(Op::Echo(4)).await.map_err(|e| e.to_string())?;
        if v != 4 || *client.state().borrow() != ductwork::patterns::LinkState::Connected {
            return Err(format!(
                "after the restart got {v}, {:?}",
                *client.state().borrow()
            ));
        }
        client.close().await.map_err(|e| e.to_string())?;
        again.finish().await
    })
}

/// A topic that is no NATS subject is refused by `publish`, naming the endpoint, and nothing
/// is sent; the publisher goes on.
pub fn topics_must_be_subjects(t: Arc<dyn Transport>) -> Result<(), String> {
    support::runtime().block_on(async {
        let at = t.local_endpoint(&unique("topics"));
        let p = Publisher::<u64>::bind(at.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let mut sub = Subscriber::<u64>::connect(at.as_str(), &[""])
            .await
            .map_err(|e| e.to_string())?;
        for bad in ["a b", "a..b", "a.", "a.*", "a.>", "tab\there"] {
            match p.publish(bad, &1).await {
                Err(e) if e.kind() == ErrorKind::Encode && e.to_string().contains(&at) => {}
                other => return Err(format!("topic {bad:?}: {other:?}")),
            }
        }
        p.publish("", &2).await.map_err(|e| e.to_string())?;
        p.publish("ok.topic", &3).await.map_err(|e| e.to_string())?;
        for (topic, body) in [("", 2), ("ok.topic", 3)] {
            let m = must("publication", sub.recv())
                .await
                .map_err(|e| e.to_string())?
                .ok_or("ended")?;
            if (m.topic.as_str(), m.body) != (topic, body) {
                return Err(format!("got {m:?}, want {topic:?} {body}"));
            }
        }
        sub.close().await.map_err(|e| e.to_string())?;
        p.shutdown(Duration::from_secs(10))
            .await
            .map_err(|e| e.to_string())
    })
}

/// NATS clients that know nothing of ductwork are peers, with postcard bodies: a plain
/// request reaches a ductwork server (another process) and a plain responder answers a
/// ductwork client; a ductwork publication is a plain message on `NAME.TOPIC`, and a plain
/// publication there reaches a ductwork subscriber.
#[cfg(feature = "nats")]
pub fn plain_nats_clients_are_peers(t: Arc<dyn Transport>) -> Result<(), String> {
    use ductwork_transports::nats::native;
    use futures::StreamExt;
    let s = |e: &dyn std::fmt::Display| e.to_string();
    support::runtime().block_on(async {
        let at = t.local_endpoint(&unique("plain"));
        let name = at.rsplit('/').next().unwrap_or_default().to_string();
        let raw = native::connect(&super::ep(&at), ErrorKind::NotFound)
            .await
            .map_err(|e| s(&e))?
            .client;
        let mut server = Child::spawn("server", std::slice::from_ref(&at))?;
        server.ready().await?;
        let body = postcard::to_allocvec(&Op::Echo(41)).map_err(|e| s(&e))?;
        let reply = must("plain request", raw.request(name.clone(), body.into()))
            .await
            .map_err(|e| s(&e))?;
        let v: u64 = postcard::from_bytes(&reply.payload).map_err(|e| s(&e))?;
        if v != 41 {
            return Err(format!("a plain request got {v}"));
        }
        // A plain responder on another name answers a ductwork client.
        let mut requests = raw
            .subscribe(format!("{name}-plain"))
            .await
            .map_err(|e| s(&e))?;
        raw.flush().await.map_err(|e| s(&e))?;
        let responder = raw.clone();
        let answering = tokio::spawn(async move {
            let m = requests.next().await?;
            let Ok(Op::Echo(v)) = postcard::from_bytes::<Op>(&m.payload) else {
                return None;
            };
            let answer = postcard::to_allocvec(&(v + 1)).ok()?;
            responder.publish(m.reply?, answer.into()).await.ok()?;
            responder.flush().await.ok()
        });
        let client = Client::<Op, u64>::connect(format!("{at}-plain").as_str())
            .await
            .map_err(|e| s(&e))?;
        let v = client.call(Op::Echo(7)).await.map_err(|e| s(&e))?;
        if v != 8 {
            return Err(format!("the plain responder's answer read as {v}"));
        }
        must("responder", answering)
            .await
            .map_err(|e| s(&e))?
            .ok_or("the plain responder saw no ductwork request")?;
        // Publications are plain messages, both ways.
        let mut plain = raw
            .subscribe(format!("{name}.>"))
            .await
            .map_err(|e| s(&e))?;
        raw.flush().await.map_err(|e| s(&e))?;
        let p = Publisher::<u64>::bind(at.as_str())
            .await
            .map_err(|e| s(&e))?;
        p.publish("a.b", &5).await.map_err(|e| s(&e))?;
        let m = must("plain subscriber", plain.next())
            .await
            .ok_or("ended")?;
        let v: u64 = postcard::from_bytes(&m.payload).map_err(|e| s(&e))?;
        if (m.subject.as_str(), v) != (format!("{name}.a.b").as_str(), 5) {
            return Err(format!("a plain subscriber got {v} on {}", m.subject));
        }
        let mut sub = Subscriber::<u64>::connect(at.as_str(), &["c"])
            .await
            .map_err(|e| s(&e))?;
        let nine = postcard::to_allocvec(&9u64).map_err(|e| s(&e))?;
        raw.publish(format!("{name}.c"), nine.into())
            .await
            .map_err(|e| s(&e))?;
        raw.flush().await.map_err(|e| s(&e))?;
        let m = must("ductwork subscriber", sub.recv())
            .await
            .map_err(|e| s(&e))?
            .ok_or("ended")?;
        if (m.topic.as_str(), m.body) != ("c", 9) {
            return Err(format!("a plain publication arrived as {m:?}"));
        }
        sub.close().await.map_err(|e| s(&e))?;
        client.close().await.map_err(|e| s(&e))?;
        p.shutdown(Duration::from_secs(10))
            .await
            .map_err(|e| s(&e))?;
        server.finish().await
    })
}

/// Without the `ductwork` crate's `nats` feature the NATS cases are not run (see `main`).
#[cfg(not(feature = "nats"))]
pub fn plain_nats_clients_are_peers(_: Arc<dyn Transport>) -> Result<(), String> {
    Err("built without the nats feature".into())
}
