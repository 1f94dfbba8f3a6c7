//! Publish/subscribe over real transports: fan-out by topic prefix, late joiners, the three
//! slow-subscriber policies with the publisher's memory bounded, the subscriber limit.

use ductwork::patterns::{Publisher, PublisherOptions, SlowSubscriber, Subscriber};
use ductwork::ErrorKind;
use std::time::Duration;

fn endpoints(case: &str) -> Vec<String> {
    let pid = std::process::id();
    let mut v = vec!["tcp://127.0.0.1:0".to_string()];
    if cfg!(unix) {
        let dir = std::env::temp_dir();
        v.push(format!("unix://{}/dw-ps-{case}-{pid}.sock", dir.display()));
        v.push(format!("shm://dw-ps-{case}-{pid}"));
    }
    v.push(format!("pipe://dw-ps-{case}-{pid}"));
    v
}

const WITHIN: Duration = Duration::from_secs(20);

async fn recv_n(sub: &mut Subscriber<u64>, n: usize) -> Vec<(String, u64)> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(WITHIN, sub.recv())
            .await
            .expect("a message in time")
            .unwrap()
            .expect("not closed");
        got.push((m.topic, m.body));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_subscriber_gets_its_topics_in_order() {
    for ep in endpoints("fan") {
        let publisher = Publisher::<u64>::bind(ep.as_str()).await.unwrap();
        let at = publisher.endpoint().clone();
        let mut all = Subscriber::<u64>::connect(&at, &[""]).await.unwrap();
        let mut bolts = Subscriber::<u64>::connect(&at, &["bolt."]).await.unwrap();
        let mut two = Subscriber::<u64>::connect(&at, &["nut.", "washer"])
            .await
            .unwrap();
        assert_eq!(publisher.subscribers(), 3);
        let topics = ["bolt.m8", "nut.m8", "washer", "screw"];
        for i in 0..400u64 {
            publisher.publish(topics[i as usize % 4], &i).await.unwrap();
        }
        let want = |f: &dyn Fn(&str) -> bool| -> Vec<(String, u64)> {
            (0..400u64)
                .map(|i| (topics[i as usize % 4].to_string(), i))
                .filter(|(t, _)| f(t))
                .collect()
        };
        assert_eq!(recv_n(&mut all, 400).await, want(&|_| true), "{ep}");
        assert_eq!(
            recv_n(&mut bolts, 100).await,
            want(&|t| t.starts_with("bolt.")),
            "{ep}"
        );
        let expect_two = want(&|t| t.starts_with("nut.") || t == "washer");
        assert_eq!(recv_n(&mut two, 200).await, expect_two, "{ep}");
        publisher.shutdown(WITHIN).await.unwrap();
        // After the publisher closed: the end, nothing more.
        assert!(all.recv().await.unwrap().is_none(), "{ep}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_receives_from_its_subscription_on() {
    let publisher = Publisher::<u64>::bind("tcp://127.0.0.1:0").await.unwrap();
    let mut early = Subscriber::<u64>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    for i in 0..10u64 {
        publisher.publish("t", &i).await.unwrap();
    }
    let mut late = Subscriber::<u64>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    for i in 10..20u64 {
        publisher.publish("t", &i).await.unwrap();
    }
    let got: Vec<u64> = recv_n(&mut late, 10)
        .await
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(got, (10..20).collect::<Vec<_>>());
    assert_eq!(recv_n(&mut early, 20).await.len(), 20);
    publisher.shutdown(WITHIN).await.unwrap();
    assert!(
        late.recv().await.unwrap().is_none(),
        "nothing before the join, nothing extra"
    );
}

fn opts(slow: SlowSubscriber) -> PublisherOptions {
    PublisherOptions {
        max_queued_bytes: 256 * 1024,
        slow,
        ..PublisherOptions::default()
    }
}

// As bytes, not a sequence of u8: postcard then copies instead of walking every byte.
type Blob = serde_bytes::ByteBuf;

/// A subscriber that stops reading never grows the publisher past its bound; with the default
/// policy it is told exactly how many messages it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_bounds_memory_and_counts_what_was_missed() {
    let publisher =
        Publisher::<Blob>::bind_with("tcp://127.0.0.1:0", opts(SlowSubscriber::DropOldest))
            .await
            .unwrap();
    let mut stalled = Subscriber::<Blob>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    let blob = Blob::from(vec![7u8; 16 * 1024]);
    let n = 1_500u64; // 24 MB through a subscriber that does not read: far past the socket buffers
    let mut peak = 0;
    for _ in 0..n {
        publisher.publish("blob", &blob).await.unwrap();
        peak = peak.max(publisher.queued_bytes());
    }
    assert!(peak <= 256 * 1024 + 17 * 1024, "queued {peak} bytes");
    // Now it reads; shutdown sends it what is queued, then the end.
    let reading = tokio::spawn(async move {
        let mut received = 0u64;
        while let Some(m) = tokio::time::timeout(WITHIN, stalled.recv())
            .await
            .unwrap()
            .unwrap()
        {
            assert_eq!(m.body.as_slice(), &[7u8; 16 * 1024][..]);
            received += 1;
        }
        (received, stalled)
    });
    publisher.shutdown(WITHIN).await.unwrap();
    let (received, stalled) = reading.await.unwrap();
    assert!(
        stalled.missed() > 0,
        "a stalled subscriber must have missed some"
    );
    assert_eq!(
        received + stalled.missed(),
        n,
        "every message delivered or counted as missed"
    );
}

/// `Wait`: publish waits for a stalled subscriber, nothing is dropped, memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_makes_the_publisher_wait_and_loses_nothing() {
    let publisher = Publisher::<Blob>::bind_with("tcp://127.0.0.1:0", opts(SlowSubscriber::Wait))
        .await
        .unwrap();
    let mut sub = Subscriber::<Blob>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    let blob = Blob::from(vec![1u8; 16 * 1024]);
    let n = 2_000u64;
    let publishing = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..n {
            publisher.publish("blob", &blob).await.unwrap();
            peak = peak.max(publisher.queued_bytes());
        }
        (publisher, peak)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !publishing.is_finished(),
        "32 MB cannot fit: the publisher must be waiting"
    );
    for _ in 0..n {
        tokio::time::timeout(WITHIN, sub.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
    let (publisher, peak) = publishing.await.unwrap();
    assert!(peak <= 256 * 1024 + 17 * 1024, "queued {peak} bytes");
    assert_eq!(sub.missed(), 0);
    publisher.shutdown(WITHIN).await.unwrap();
}

/// `Disconnect`: the stalled subscriber is dropped; the others keep receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_drops_only_the_slow_subscriber() {
    let publisher =
        Publisher::<Blob>::bind_with("tcp://127.0.0.1:0", opts(SlowSubscriber::Disconnect))
            .await
            .unwrap();
    let mut stalled = Subscriber::<Blob>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    let mut reader = Subscriber::<Blob>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    // The reader confirms each message, and the publisher waits for that: its queue never
    // holds more than one, so only the stalled subscriber can be too slow.
    let (got, mut confirmed) = tokio::sync::mpsc::unbounded_channel();
    let reading = tokio::spawn(async move {
        let mut n = 0u64;
        while let Ok(Some(_)) = reader.recv().await {
            n += 1;
            let _ = got.send(());
        }
        n
    });
    let blob = Blob::from(vec![2u8; 16 * 1024]);
    let mut i = 0u64;
    while publisher.subscribers() == 2 {
        assert!(i < 100_000, "the stalled subscriber was never disconnected");
        publisher.publish("blob", &blob).await.unwrap();
        i += 1;
        tokio::time::timeout(WITHIN, confirmed.recv())
            .await
            .unwrap();
    }
    assert_eq!(publisher.subscribers(), 1);
    publisher.shutdown(WITHIN).await.unwrap();
    assert_eq!(
        reading.await.unwrap(),
        i,
        "the reading subscriber lost nothing"
    );
    // The stalled one reads what reached it, then the end (not a hang).
    let mut tail = 0u64;
    while let Ok(Some(_)) = tokio::time::timeout(WITHIN, stalled.recv()).await.unwrap() {
        tail += 1;
    }
    assert!(tail < i);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_subscribers_a_subscriber_is_refused_by_name() {
    let o = PublisherOptions {
        max_subscribers: 2,
        ..PublisherOptions::default()
    };
    let publisher = Publisher::<u64>::bind_with("tcp://127.0.0.1:0", o)
        .await
        .unwrap();
    let _a = Subscriber::<u64>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    let _b = Subscriber::<u64>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    let e = Subscriber::<u64>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
    assert!(e.to_string().contains("max_subscribers"), "{e}");
    assert_eq!(publisher.subscribers(), 2);
    publisher.shutdown(WITHIN).await.unwrap();
}

#[cfg(unix)]
#[tokio::test]
async fn a_one_way_transport_says_it_cannot_carry_pubsub() {
    let e = Publisher::<u64>::bind(format!("mailslot://dw-ps-oneway-{}", std::process::id()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("duplex"), "{e}");
}

/// With `reconnect`, a subscriber outlives its publisher: a new publisher at the same
/// endpoint is found, the subscription is made again, and the gap is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_subscriber_resubscribes_to_a_restarted_publisher() {
    use ductwork::patterns::{Backoff, SubscriberOptions};
    let first = Publisher::<u64>::bind("tcp://127.0.0.1:0").await.unwrap();
    let at = first.endpoint().clone();
    let opts = SubscriberOptions {
        reconnect: Some(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
            jitter: 0.5,
            ..Backoff::default()
        }),
        ..SubscriberOptions::default()
    };
    let mut sub = Subscriber::<u64>::connect_with(&at, &["t"], opts)
        .await
        .unwrap();
    first.publish("t", &1).await.unwrap();
    assert_eq!(recv_n(&mut sub, 1).await[0].1, 1);
    first.shutdown(WITHIN).await.unwrap();

    // The subscriber is waiting in recv while the publisher is away and comes back.
    let receiving = tokio::spawn(async move {
        let got = recv_n(&mut sub, 1).await;
        (got, sub)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = Publisher::<u64>::bind(&at).await.unwrap();
    let t0 = std::time::Instant::now();
    while second.subscribers() == 0 {
        assert!(t0.elapsed() < WITHIN, "the subscriber never came back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    second.publish("t", &2).await.unwrap();
    let (got, sub) = receiving.await.unwrap();
    assert_eq!(got[0].1, 2);
    assert_eq!(sub.gaps(), 1);
    second.shutdown(WITHIN).await.unwrap();
}

/// A reconnecting subscriber whose publisher is gone for good gives up past its backoff's
/// limit: `recv` fails with an error naming the endpoint (and keeps failing with it, rather
/// than waiting or reconnecting again), and the state says it gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_subscriber_gives_up_after_its_attempts() {
    use ductwork::patterns::{Backoff, LinkState, SubscriberOptions};
    for ep in endpoints("giveup") {
        let publisher = Publisher::<u64>::bind(ep.as_str()).await.unwrap();
        let at = publisher.endpoint().clone();
        let opts = SubscriberOptions {
            reconnect: Some(Backoff {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(100),
                max_attempts: Some(2),
                give_up_after: None,
                ..Backoff::default()
            }),
            ..SubscriberOptions::default()
        };
        let mut sub = Subscriber::<u64>::connect_with(&at, &[""], opts)
            .await
            .unwrap();
        let state = sub.state();
        publisher.shutdown(WITHIN).await.unwrap();
        let e = tokio::time::timeout(WITHIN, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{at}: the subscriber never gave up"))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{at}: {e}");
        let text = e.to_string();
        assert!(text.contains(&at.to_string()), "{at}: {text}");
        assert!(
            text.contains("gave up reconnecting after 2"),
            "{at}: {text}"
        );
        assert_eq!(*state.borrow(), LinkState::GaveUp { attempts: 2 }, "{at}");
        let again = tokio::time::timeout(WITHIN, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{at}: a recv after giving up must not wait"))
            .unwrap_err();
        assert_eq!(again.to_string(), text, "{at}");
        assert_eq!(*state.borrow(), LinkState::GaveUp { attempts: 2 }, "{at}");
    }
}

/// Over udp (best-effort, no native peer-loss signal) the pattern still works on loopback,
/// with heartbeats on by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_over_udp() {
    let publisher = Publisher::<u64>::bind("udp://127.0.0.1:0").await.unwrap();
    let mut sub = Subscriber::<u64>::connect(publisher.endpoint(), &[""])
        .await
        .unwrap();
    for i in 0..50u64 {
        publisher.publish("t", &i).await.unwrap();
        // Paced: loopback UDP rarely drops, and never when the reader keeps up.
        assert_eq!(recv_n(&mut sub, 1).await[0].1, i);
    }
    publisher.shutdown(WITHIN).await.unwrap();
}
