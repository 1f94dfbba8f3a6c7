//! Behaviour specific to `pipe://` and `mailslot://` that the generic conformance suite does
//! not cover: limits, platform rules and the mailslot's slow-reader behaviour.

mod support;

use bytes::Bytes;
use ductwork_core::{Delivery, Endpoint, ErrorKind, Reach};
use futures::{SinkExt, StreamExt};
use std::time::Duration;

fn ep(s: &str) -> Endpoint {
    Endpoint::parse(s).unwrap()
}

fn unique(tag: &str) -> String {
    support::unique(&format!("pm-{tag}"))
}

const DEADLINE: Duration = Duration::from_secs(60);

#[test]
fn mailslot_capabilities_are_honest() {
    let local = ductwork_transports::capabilities(&ep("mailslot://a")).unwrap();
    assert_eq!(local.delivery, Delivery::Reliable);
    assert!(local.ordered);
    assert_eq!(local.max_message, 64 * 1024);
    assert_eq!(local.reach, Reach::Host);
    assert!(!local.peer_loss);

    let bcast = ductwork_transports::capabilities(&ep("mailslot://*/a")).unwrap();
    assert_eq!(bcast.delivery, Delivery::BestEffort);
    assert!(!bcast.ordered);
    assert_eq!(bcast.max_message, 424);
    assert_eq!(bcast.reach, Reach::Network);

    for over in [
        "mailslot://*/a?max_frame=425",
        "mailslot://a?max_frame=204801",
    ] {
        assert!(
            ductwork_transports::capabilities(&ep(over)).is_err(),
            "{over}"
        );
    }
    let e = ductwork_transports::capabilities(&ep("mailslot://a?max_frame=300KiB")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidEndpoint);
    assert!(e.to_string().contains("204800"), "{e}");
}

#[test]
fn pipe_capabilities() {
    let c = ductwork_transports::capabilities(&ep("pipe://a")).unwrap();
    assert_eq!(c.reach, Reach::Host);
    assert!(c.is_reliable() && c.peer_loss);
    let c = ductwork_transports::capabilities(&ep("pipe://srv/a")).unwrap();
    assert_eq!(c.reach, Reach::Network);
    for bad in [
        "pipe://a?remote=maybe",
        "pipe://a?colour=blue",
        "pipe://a\\b",
    ] {
        let e = ductwork_transports::capabilities(&ep(bad)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{bad}");
    }
}

#[tokio::test]
async fn binding_a_remote_name_is_refused() {
    for s in ["pipe://srv/a", "mailslot://*/a"] {
        let e = ductwork_transports::bind(&ep(s)).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{s}: {e}");
        assert!(
            e.to_string().contains("only be created on this machine"),
            "{e}"
        );
    }
}

#[cfg(unix)]
#[tokio::test]
async fn remote_names_need_windows() {
    for s in ["pipe://srv/a", "mailslot://*/a", "mailslot://host/a"] {
        let e = ductwork_transports::connect(&ep(s)).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Unsupported, "{s}: {e}");
        assert!(e.to_string().contains("need Windows"), "{e}");
    }
    let e = ductwork_transports::bind(&ep("pipe://a?remote=true"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
}

/// On Unix the socket is owner-only in an owner-only directory.
#[cfg(unix)]
#[tokio::test]
async fn unix_files_are_private() {
    use std::os::unix::fs::MetadataExt;
    for scheme in ["pipe", "mailslot"] {
        let name = unique(scheme);
        let l = ductwork_transports::bind(&ep(&format!("{scheme}://{name}")))
            .await
            .unwrap();
        let dir = support::unix::private_dir();
        let sock = support::unix::private_socket(scheme, &name);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600);
        drop(l);
        assert!(!sock.exists(), "{} left behind", sock.display());
    }
}

/// A message of exactly the largest local size (200 KiB) arrives whole; one byte more is
/// refused on send and the sender stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailslot_largest_message() {
    let e = ep(&format!("mailslot://{}?max_frame=200KiB", unique("max")));
    let mut l = ductwork_transports::bind(&e).await.unwrap();
    let mut rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&e).await.unwrap();
    let max = tx.info().capabilities.max_message;
    assert_eq!(max, 200 * 1024);
    let big = Bytes::from((0..max).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    // The sender may wait for the reader (a 200 KiB datagram fills a Unix socket's send
    // buffer), so it runs beside the reader.
    let sender = tokio::spawn({
        let big = big.clone();
        async move {
            tx.send(big).await.unwrap();
            let e2 = tx.send(Bytes::from(vec![0u8; max + 1])).await.unwrap_err();
            assert_eq!(e2.kind(), ErrorKind::FrameTooLarge);
            tx.send(Bytes::from_static(b"after")).await.unwrap();
        }
    });
    let got = tokio::time::timeout(DEADLINE, rx.next()).await.unwrap();
    assert_eq!(got.unwrap().unwrap(), big);
    let got = tokio::time::timeout(DEADLINE, rx.next()).await.unwrap();
    tokio::time::timeout(DEADLINE, sender)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"after");
}

/// A receiver that does not read loses nothing: every message sent meanwhile arrives once, in
/// order, when it reads. On Unix the sender waits while the receiver's queue is full
/// (backpressure); Windows queues accepted messages in the mailslot instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailslot_slow_reader_loses_nothing() {
    const N: u32 = 2000;
    let e = ep(&format!("mailslot://{}", unique("slow")));
    let mut l = ductwork_transports::bind(&e).await.unwrap();
    let mut rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&e).await.unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let mut m = i.to_be_bytes().to_vec();
            m.resize(1024, 0xab);
            tx.send(Bytes::from(m)).await?;
        }
        tx.close().await
    });
    let mut writer = writer;
    if cfg!(unix) {
        // Nobody reads: the writer must be held back, not finish (and not fail).
        let early = tokio::time::timeout(Duration::from_millis(500), &mut writer).await;
        assert!(
            early.is_err(),
            "the writer was not held back by a receiver that does not read: {early:?}"
        );
    }
    for i in 0..N {
        let m = tokio::time::timeout(DEADLINE, rx.next())
            .await
            .unwrap_or_else(|_| panic!("message {i}: hang"))
            .unwrap()
            .unwrap();
        assert_eq!(m.len(), 1024);
        assert_eq!(u32::from_be_bytes(m[..4].try_into().unwrap()), i);
    }
    tokio::time::timeout(DEADLINE, writer)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// Many clients connecting at once all get served (on Windows, clients retry while every pipe
/// instance is busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_burst_of_clients() {
    const CLIENTS: usize = 16;
    let e = ep(&format!("pipe://{}", unique("burst")));
    let mut l = ductwork_transports::bind(&e).await.unwrap();
    let server = tokio::spawn(async move {
        for _ in 0..CLIENTS {
            let mut c = l.accept().await.unwrap();
            tokio::spawn(async move {
                while let Some(Ok(f)) = c.next().await {
                    if c.send(f).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let clients = (0..CLIENTS).map(|i| {
        let e = e.clone();
        tokio::spawn(async move {
            let mut c = ductwork_transports::connect(&e).await.unwrap();
            let msg = Bytes::from(format!("client {i}"));
            c.send(msg.clone()).await.unwrap();
            let back = c.next().await.unwrap().unwrap();
            assert_eq!(back, msg);
            c.close().await.unwrap();
        })
    });
    for c in clients.collect::<Vec<_>>() {
        tokio::time::timeout(DEADLINE, c).await.unwrap().unwrap();
    }
    tokio::time::timeout(DEADLINE, server)
        .await
        .unwrap()
        .unwrap();
}

/// On Unix a sender whose receiver went away gets `ConnectionLost` on its next send. (Windows
/// does not tell: under Wine the write succeeds and the message is lost, which is why
/// mailslots declare `peer_loss: false`.)
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailslot_send_after_receiver_gone() {
    let e = ep(&format!("mailslot://{}", unique("gone")));
    let mut l = ductwork_transports::bind(&e).await.unwrap();
    let rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&e).await.unwrap();
    tx.send(Bytes::from_static(b"one")).await.unwrap();
    drop(rx);
    drop(l);
    let r = tx.send(Bytes::from_static(b"two")).await;
    let err = r.expect_err("a send to a receiver that is gone succeeded");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
}

/// A sender configured with a larger limit than the receiver: its oversized message does not
/// break the receiver, and later messages still arrive. Unix (and Wine) deliver a
/// `FrameTooLarge` error on the receiver, which goes on; Windows may refuse the write on the
/// sender instead (the mailslot was created with the receiver's limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailslot_oversized_from_a_sender() {
    let name = unique("oversized");
    let rx_ep = ep(&format!("mailslot://{name}?max_frame=1024"));
    let tx_ep = ep(&format!("mailslot://{name}?max_frame=4096"));
    let mut l = ductwork_transports::bind(&rx_ep).await.unwrap();
    let mut rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&tx_ep).await.unwrap();
    match tx.send(Bytes::from(vec![5u8; 2048])).await {
        // Windows refuses the write: the mailslot was created with the receiver's limit.
        // (Not seen under Wine, so the error kind is not pinned down here.)
        Err(_) if cfg!(windows) => {}
        Err(e) => panic!("the sender refused a message within its own limit: {e}"),
        // Unix (and Wine) accept it; the receiver reports it and goes on.
        Ok(()) => {
            let got = tokio::time::timeout(DEADLINE, rx.next()).await.unwrap();
            match got {
                Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}"),
                other => panic!("expected FrameTooLarge, got {other:?}"),
            }
        }
    }
    tx.send(Bytes::from_static(b"small")).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, rx.next()).await.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"small");
}

/// Windows pipes carry the owner-only DACL: the user and SYSTEM, protected, and no entry for
/// Everyone, anonymous or other users.
#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_dacl_is_owner_only() {
    let name = unique("dacl");
    let _l = ductwork_transports::bind(&ep(&format!("pipe://{name}")))
        .await
        .unwrap();
    let sddl = support::win32::dacl_sddl(&format!(r"\\.\pipe\ductwork-{name}")).unwrap();
    eprintln!("pipe DACL: {sddl}");
    assert!(sddl.starts_with("D:P"), "not a protected DACL: {sddl}");
    assert!(sddl.contains(";;;SY)"), "no SYSTEM entry: {sddl}");
    assert_eq!(
        sddl.matches("(A;").count(),
        2,
        "expected two allow entries: {sddl}"
    );
    for other in [";;;WD)", ";;;AN)", ";;;BU)", ";;;AU)"] {
        assert!(!sddl.contains(other), "{other} has access: {sddl}");
    }
}

/// A sender held back by a full receiver queue is released with an error, not left hanging,
/// when the receiver goes away.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailslot_blocked_sender_sees_receiver_gone() {
    let e = ep(&format!("mailslot://{}", unique("blocked")));
    let mut l = ductwork_transports::bind(&e).await.unwrap();
    let rx = l.accept().await.unwrap();
    let mut tx = ductwork_transports::connect(&e).await.unwrap();
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let writer = tokio::spawn(async move {
        for i in 0u32.. {
            tx.send(Bytes::from(vec![1u8; 4096])).await?;
            let _ = progress_tx.send(i);
        }
        Ok::<(), ductwork_core::Error>(())
    });
    // Wait until the writer is stuck: no progress for a while after some sends.
    let mut sent = 0;
    while let Ok(Some(i)) = tokio::time::timeout(Duration::from_millis(300), progress.recv()).await
    {
        sent = i + 1;
    }
    assert!(
        sent > 0 && !writer.is_finished(),
        "writer not blocked ({sent} sent)"
    );
    drop(rx);
    drop(l);
    let r = tokio::time::timeout(DEADLINE, writer)
        .await
        .expect("the blocked sender hung after the receiver went away")
        .unwrap();
    let err = r.expect_err("the writer cannot finish an endless loop without an error");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
}

/// `remote=true` creates a pipe that accepts remote clients; local clients work the same.
#[cfg(windows)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipe_remote_true_serves_local_clients() {
    let e = ep(&format!("pipe://{}?remote=true", unique("remote")));
    assert_eq!(
        ductwork_transports::capabilities(&e).unwrap().reach,
        Reach::Network
    );
    let mut l = ductwork_transports::bind(&e).await.unwrap();
    let client = tokio::spawn({
        let e = e.clone();
        async move {
            let mut c = ductwork_transports::connect(&e).await.unwrap();
            c.send(Bytes::from_static(b"hi")).await.unwrap();
            c.close().await.unwrap();
        }
    });
    let mut s = tokio::time::timeout(DEADLINE, l.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&s.next().await.unwrap().unwrap()[..], b"hi");
    assert!(s.next().await.is_none());
    client.await.unwrap();
}
