//! Request/reply over real transports (a server and its clients on sockets or shared memory in
//! this process): replies reach their own callers, deadlines fail one call only, a late reply
//! is never handed to another caller, handler panics are answered, shutdown drains.

use ductwork::patterns::{Client, ClientOptions, Server, ServerOptions};
use ductwork::ErrorKind;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Serialize, Deserialize)]
enum Op {
    Add(i64, i64),
    /// Sleeps, then answers with the value given.
    Slow(u64, i64),
    Panic,
    /// Answers with the value given after a millisecond; the bytes only take room on the way.
    Bulk(#[serde(with = "serde_bytes")] Vec<u8>, i64),
}

async fn handler(op: Op) -> i64 {
    match op {
        Op::Add(a, b) => a + b,
        Op::Slow(ms, v) => {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            v
        }
        Op::Panic => panic!("handler asked to panic"),
        Op::Bulk(_, v) => {
            tokio::time::sleep(Duration::from_millis(1)).await;
            v
        }
    }
}

type BoxedAnswer = std::pin::Pin<Box<dyn std::future::Future<Output = i64> + Send>>;
use tokio::sync::mpsc::UnboundedReceiver;

/// `handler`, telling the test each time a request has reached it (so a test waits for that
/// instead of guessing with a sleep).
fn signalling_handler() -> (impl Fn(Op) -> BoxedAnswer + Clone, UnboundedReceiver<()>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let h = move |op: Op| {
        let _ = tx.send(());
        Box::pin(handler(op)) as BoxedAnswer
    };
    (h, rx)
}

fn endpoints(case: &str) -> Vec<String> {
    let mut v = vec!["tcp://127.0.0.1:0".to_string()];
    if cfg!(unix) {
        let dir = std::env::temp_dir();
        v.push(format!(
            "unix://{}/dw-rr-{case}-{}.sock",
            dir.display(),
            std::process::id()
        ));
        v.push(format!("shm://dw-rr-{case}-{}", std::process::id()));
    }
    v.push(format!("pipe://dw-rr-{case}-{}", std::process::id()));
    v
}

/// The stale-reply defect: a call that timed out must not make the next call receive its
/// answer. Every value is distinct, so any mix-up shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_call_never_delivers_its_reply_to_the_next() {
    for ep in endpoints("stale") {
        let server = Server::bind(ep.as_str(), handler).await.unwrap().spawn();
        let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
        for round in 0..5i64 {
            let e = client
                .call_timeout(Op::Slow(200, -round - 1), Duration::from_millis(20))
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Timeout, "{ep}: {e}");
            // The slow reply arrives while this call waits; it must be discarded.
            let got = client.call(Op::Slow(250, 1000 + round)).await.unwrap();
            assert_eq!(got, 1000 + round, "{ep}: got another call's reply");
        }
        client.close().await.unwrap();
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// Many tasks share one client; replies finish out of order and each reaches its caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_each_get_their_own_reply() {
    for ep in endpoints("many") {
        let server = Server::bind(ep.as_str(), handler).await.unwrap().spawn();
        let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..200i64 {
            let c = client.clone();
            tasks.spawn(async move {
                // Later requests sleep less, so replies come back in another order.
                let got = c.call(Op::Slow((200 - i as u64) % 23, i)).await.unwrap();
                assert_eq!(got, i);
                let got = c.call(Op::Add(i, 1)).await.unwrap();
                assert_eq!(got, i + 1);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// Requests larger than what the connection holds, from many callers at once, to a server that
/// reads one at a time: sends wait for room (a caller that found nobody reading must then let
/// another read), and every reply still reaches its own caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_whose_requests_fill_the_connection_each_get_their_own_reply() {
    for ep in endpoints("full") {
        // A small ring for shm; the sockets' buffers fill with the same load.
        let ep = if ep.starts_with("shm") {
            format!("{ep}?capacity=64KiB")
        } else {
            ep
        };
        let server = Server::bind(ep.as_str(), handler)
            .await
            .unwrap()
            .with_options(ServerOptions {
                max_in_flight: 1,
                ..ServerOptions::default()
            })
            .spawn();
        let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32i64 {
            let c = client.clone();
            tasks.spawn(async move {
                for round in 0..2 {
                    let v = i * 10 + round;
                    let got = c.call(Op::Bulk(vec![i as u8; 24 * 1024], v)).await;
                    assert_eq!(got.unwrap(), v);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        client.close().await.unwrap();
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_fails_that_request_only() {
    let server = Server::bind("tcp://127.0.0.1:0", handler)
        .await
        .unwrap()
        .spawn();
    let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
    let e = client.call(Op::Panic).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Remote, "{e}");
    assert!(e.to_string().contains("panicked"), "{e}");
    assert_eq!(client.call(Op::Add(2, 3)).await.unwrap(), 5);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// Shutdown lets a request in flight finish and be answered, then closes the connection:
/// later calls fail with the connection's end, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_in_flight_requests_then_closes() {
    let (h, mut started) = signalling_handler();
    let server = Server::bind("tcp://127.0.0.1:0", h).await.unwrap().spawn();
    let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
    let c = client.clone();
    let slow = tokio::spawn(async move { c.call(Op::Slow(300, 7)).await });
    started.recv().await.unwrap(); // the request is in its handler
    server.shutdown(Duration::from_secs(10)).await.unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), 7);
    let e = client.call(Op::Add(1, 1)).await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Closed | ErrorKind::ConnectionLost),
        "{e}"
    );
}

/// A shutdown whose grace runs out drops what is still running and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_its_grace_reports_a_timeout() {
    let (h, mut started) = signalling_handler();
    let server = Server::bind("tcp://127.0.0.1:0", h).await.unwrap().spawn();
    let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
    let c = client.clone();
    let slow = tokio::spawn(async move { c.call(Op::Slow(5_000, 7)).await });
    started.recv().await.unwrap(); // the request is in its handler
    let e = server
        .shutdown(Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let e = slow.await.unwrap().unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::Closed | ErrorKind::ConnectionLost),
        "{e}"
    );
}

/// With one request allowed in flight, the server stops reading until it answered: requests
/// are still all answered, in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_bounds_the_handlers_of_a_connection() {
    let running = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let (r, p) = (running.clone(), peak.clone());
    let h = move |op: Op| {
        let (r, p) = (r.clone(), p.clone());
        async move {
            let now = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            p.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
            let v = handler(op).await;
            r.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            v
        }
    };
    let server = Server::bind("tcp://127.0.0.1:0", h)
        .await
        .unwrap()
        .with_options(ServerOptions {
            max_in_flight: 2,
            ..ServerOptions::default()
        })
        .spawn();
    let client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let c = client.clone();
        tasks.spawn(async move { assert_eq!(c.call(Op::Slow(50, i)).await.unwrap(), i) });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 2);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// When the server goes away, waiting callers get an error and later calls fail at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_server_fails_waiting_and_later_calls() {
    let server = Server::bind("tcp://127.0.0.1:0", handler)
        .await
        .unwrap()
        .spawn();
    let opts = ClientOptions {
        timeout: None,
        ..ClientOptions::default()
    };
    let ch = ductwork::connect_channel(server.endpoint()).await.unwrap();
    let client = Client::<Op, i64>::with_options(ch, opts);
    let c = client.clone();
    let waiting = tokio::spawn(async move { c.call(Op::Slow(10_000, 1)).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = server.shutdown(Duration::from_millis(50)).await;
    let e = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting call must end")
        .unwrap()
        .unwrap_err();
    let kind = e.kind();
    assert!(
        matches!(kind, ErrorKind::Closed | ErrorKind::ConnectionLost),
        "{e}"
    );
    let e = client.call(Op::Add(1, 1)).await.unwrap_err();
    assert_eq!(e.kind(), kind, "{e}");
}

/// Closing a client whose server is already gone is no error: every call has its answer or its
/// error by then. (The race CI met: a reconnect reaches a listener that exits without accepting,
/// and the close marker's write fails with a broken pipe.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_after_the_server_went_away_succeeds() {
    for ep in endpoints("gone") {
        if ep.starts_with("shm://") {
            continue; // shm connects in a handshake with the listener: no connection to an unaccepted one
        }
        let listener = ductwork::bind(ep.as_str()).await.unwrap();
        let ep = listener.endpoint().clone();
        let client = Client::<Op, i64>::connect(ep.clone()).await.unwrap();
        drop(listener); // never accepted: the client's connection is reset, not closed
        client.close().await.unwrap_or_else(|e| panic!("{ep}: {e}"));
        let e = client.call(Op::Add(1, 1)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{ep}: {e}");
    }
}

/// tower's layers apply: a `Timeout` layer around the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_a_tower_service() {
    use tower_service::Service;
    let server = Server::bind("tcp://127.0.0.1:0", handler)
        .await
        .unwrap()
        .spawn();
    let mut client = Client::<Op, i64>::connect(server.endpoint()).await.unwrap();
    std::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .unwrap();
    assert_eq!(client.call(Op::Add(20, 22)).await.unwrap(), 42);
    server.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A client with `reconnect` notices a server that went away while it was idle, reports each
/// step, lets calls wait for the new connection, and works again once a server is back at
/// the same endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_finds_a_restarted_server() {
    use ductwork::patterns::{Backoff, LinkState};
    let first = Server::bind("tcp://127.0.0.1:0", handler)
        .await
        .unwrap()
        .spawn();
    let at = first.endpoint().clone();
    let opts = ClientOptions {
        reconnect: Some(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            jitter: 0.5,
            ..Backoff::default()
        }),
        ..ClientOptions::default()
    };
    let client = Client::<Op, i64>::connect_with(&at, opts).await.unwrap();
    let mut state = client.state();
    assert_eq!(*state.borrow(), LinkState::Connected);
    assert_eq!(client.call(Op::Add(1, 1)).await.unwrap(), 2);

    first.shutdown(Duration::from_secs(5)).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            state.changed().await.unwrap();
            if let LinkState::Reconnecting { attempt } = *state.borrow_and_update() {
                if attempt >= 2 {
                    return attempt; // at least one attempt failed: nobody is listening
                }
            }
        }
    })
    .await
    .expect("the idle client must notice the loss and retry");
    assert!(seen >= 2);
    // While nothing listens, a call waits for the link within its deadline.
    let e = client
        .call_timeout(Op::Add(1, 2), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");

    let second = Server::bind(&at, handler).await.unwrap().spawn();
    tokio::time::timeout(Duration::from_secs(10), async {
        while *state.borrow_and_update() != LinkState::Connected {
            state.changed().await.unwrap();
        }
    })
    .await
    .expect("reconnected to the restarted server");
    assert_eq!(client.call(Op::Add(2, 2)).await.unwrap(), 4);
    client.close().await.unwrap();
    assert_eq!(*client.state().borrow(), LinkState::Lost);
    assert_eq!(
        client.call(Op::Add(1, 1)).await.unwrap_err().kind(),
        ErrorKind::Closed
    );
    second.shutdown(Duration::from_secs(5)).await.unwrap();
}

/// A reconnecting client whose server is gone for good gives up past its backoff's limit:
/// its state says so (after each attempt was reported), a call that was waiting for the new
/// connection gets the final error rather than its own deadline, and so does every later
/// call; the error names the endpoint and the attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gives_up_after_its_attempts() {
    use ductwork::patterns::{Backoff, LinkState};
    for ep in endpoints("giveup") {
        let server = Server::bind(ep.as_str(), handler).await.unwrap().spawn();
        let at = server.endpoint().clone();
        let opts = ClientOptions {
            reconnect: Some(Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                max_attempts: Some(3),
                give_up_after: None,
                ..Backoff::default()
            }),
            ..ClientOptions::default()
        };
        let client = Client::<Op, i64>::connect_with(&at, opts).await.unwrap();
        let mut state = client.state();
        assert_eq!(client.call(Op::Add(1, 1)).await.unwrap(), 2);
        server.shutdown(Duration::from_secs(5)).await.unwrap();

        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| matches!(s, LinkState::Reconnecting { .. })),
        )
        .await
        .unwrap_or_else(|_| panic!("{at}: the idle client must notice the loss"))
        .unwrap();
        // Waits for the link, within a deadline far past the give-up.
        let waiting = client.call_timeout(Op::Add(1, 2), Duration::from_secs(60));
        let (waited, gave_up) = tokio::time::timeout(Duration::from_secs(30), async {
            let gave_up = async {
                let mut seen = Vec::new();
                loop {
                    let s = *state.borrow_and_update();
                    seen.push(s);
                    if !matches!(s, LinkState::Reconnecting { .. }) {
                        return seen;
                    }
                    state.changed().await.unwrap();
                }
            };
            tokio::join!(waiting, gave_up)
        })
        .await
        .unwrap_or_else(|_| panic!("{at}: the client never gave up"));
        assert_eq!(
            gave_up.last(),
            Some(&LinkState::GaveUp { attempts: 3 }),
            "{at}: {gave_up:?}"
        );
        let attempts: Vec<u32> = gave_up
            .iter()
            .filter_map(|s| match s {
                LinkState::Reconnecting { attempt } => Some(*attempt),
                _ => None,
            })
            .collect();
        assert!(
            attempts.windows(2).all(|w| w[0] < w[1]) && attempts.iter().all(|&a| a <= 3),
            "{at}: {gave_up:?}"
        );
        for e in [
            waited.unwrap_err(),
            client.call(Op::Add(2, 2)).await.unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{at}: {e}");
            let text = e.to_string();
            assert!(text.contains(&at.to_string()), "{at}: {text}");
            assert!(
                text.contains("gave up reconnecting after 3"),
                "{at}: {text}"
            );
        }
        client.close().await.unwrap();
    }
}

/// A give-up deadline ends reconnecting too, however many attempts fit in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gives_up_past_its_deadline() {
    use ductwork::patterns::{Backoff, LinkState};
    let server = Server::bind("tcp://127.0.0.1:0", handler)
        .await
        .unwrap()
        .spawn();
    let at = server.endpoint().clone();
    let opts = ClientOptions {
        reconnect: Some(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(50),
            give_up_after: Some(Duration::from_millis(300)),
            ..Backoff::default()
        }),
        ..ClientOptions::default()
    };
    let client = Client::<Op, i64>::connect_with(&at, opts).await.unwrap();
    let mut state = client.state();
    server.shutdown(Duration::from_secs(5)).await.unwrap();
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| matches!(s, LinkState::GaveUp { .. })),
    )
    .await
    .expect("the client must give up past its deadline")
    .map(|s| *s)
    .unwrap();
    let LinkState::GaveUp { attempts } = s else {
        unreachable!()
    };
    assert!(attempts >= 1, "{s:?}");
    let e = client.call(Op::Add(1, 1)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
    assert!(e.to_string().contains("300ms"), "{e}");
}

/// A reply whose body does not decode as the client's type fails its own call at once, with a
/// decode error (the envelope still names the call), rather than leaving it to its deadline;
/// the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_reply_fails_its_own_call_at_once() {
    for ep in endpoints("badreply") {
        // Strings where the client expects numbers: an empty one reads as 0 (its length, a
        // zero byte, is the whole body), a longer one leaves bytes over.
        let server = Server::bind(ep.as_str(), |op: Op| async move {
            match op {
                Op::Add(..) => String::new(),
                _ => "not a number".to_string(),
            }
        })
        .await
        .unwrap()
        .spawn();
        let at = server.endpoint().clone();
        let client = Client::<Op, i64>::connect(&at).await.unwrap();
        let e = client
            .call_timeout(Op::Slow(0, 1), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Decode, "{at}: {e}");
        assert_eq!(client.call(Op::Add(1, 2)).await.unwrap(), 0, "{at}");
        client.close().await.unwrap();
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// A request whose body does not decode as the server's type is answered at once as failed
/// (the envelope still names it), rather than dropped for the caller to time out; the
/// connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_request_is_answered_as_failed() {
    for ep in endpoints("badreq") {
        let server = Server::bind(ep.as_str(), handler).await.unwrap().spawn();
        let at = server.endpoint().clone();
        // `Op` has four variants: 200 is none of them; 0 with two zeros is `Add(0, 0)`.
        let client = Client::<(u32, i64, i64), i64>::connect(&at).await.unwrap();
        let e = client
            .call_timeout((200, 0, 0), Duration::from_secs(20))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Remote, "{at}: {e}");
        assert!(e.to_string().contains("decode"), "{at}: {e}");
        assert_eq!(client.call((0, 20, 22)).await.unwrap(), 42, "{at}");
        client.close().await.unwrap();
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// A reply larger than the endpoint's frame limit is answered as failed, saying so, and the
/// connection stays usable (it used to end the connection, failing every call on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_frame_limit_is_answered_as_failed() {
    for ep in endpoints("bigreply") {
        let sep = if ep.contains('?') { '&' } else { '?' };
        let ep = format!("{ep}{sep}max_frame=1KiB");
        let server = Server::bind(ep.as_str(), |n: u32| async move { vec![7u8; n as usize] })
            .await
            .unwrap()
            .spawn();
        let at = server.endpoint().clone();
        let client = Client::<u32, Vec<u8>>::connect(&at).await.unwrap();
        let e = client
            .call_timeout(4096, Duration::from_secs(20))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Remote, "{at}: {e}");
        assert!(e.to_string().contains("too large"), "{at}: {e}");
        assert_eq!(client.call(10).await.unwrap(), vec![7u8; 10], "{at}");
        client.close().await.unwrap();
        server.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

/// The bytes docs/wire-format.md shows for the request/reply envelope.
#[test]
fn the_envelope_bytes_match_the_wire_format_doc() {
    use ductwork::patterns::{Reply, Request};
    let call = postcard::to_allocvec(&Request::Call { id: 1, body: 5u32 }).unwrap();
    assert_eq!(call, [0x00, 0x01, 0x05]);
    let ok = postcard::to_allocvec(&Reply::Ok { id: 1, body: 8u32 }).unwrap();
    assert_eq!(ok, [0x00, 0x01, 0x08]);
    let pong = postcard::to_allocvec(&Reply::<u32>::Pong).unwrap();
    assert_eq!(pong, [0x02]);
    let msg = postcard::to_allocvec(&ductwork::patterns::pubsub::Publication::Message {
        topic: "p".into(),
        body: 1u8,
    })
    .unwrap();
    assert_eq!(msg, [0x01, 0x01, 0x70, 0x01]);
}
