//! Behaviour specific to `shm://` (Linux), beyond the conformance suite:
//!
//! - a raw client in another process that does the set-up by hand, maps the segment and
//!   scribbles on the ring (bad record headers, bad lengths, a bad read index) makes the
//!   survivor's connection fail
//!   with `Protocol` / `FrameTooLarge`, never a panic, and the listener keeps serving;
//! - a full ring makes `send` wait (backpressure) until the receiver reads;
//! - a sender waiting for space when the peer is killed gets `ConnectionLost`;
//! - 1 MiB messages pass with the default capacity; a message over the ring is refused
//!   with `FrameTooLarge` naming the capacity; the park-only path (`spin=0`) works.
//!
//! Child processes are this test binary run again through `support::child` (see `roles`).
#![cfg(target_os = "linux")]

mod support;

use bytes::Bytes;
use ductwork_core::{BoxConnection, ErrorKind};
use futures::{FutureExt, SinkExt, StreamExt};
use std::{io::Write, mem::MaybeUninit, os::fd::OwnedFd, time::Duration};
use support::{child::Child, runtime as rt};

fn name(case: &str) -> String {
    support::unique(&format!("shmtest-{case}"))
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    support::must("shm", f).await
}

/// Starts this binary as a child playing `mode` (see `roles`) against shm name `name`.
fn spawn_child(mode: &str, name: &str) -> Child {
    Child::spawn(mode, &[name]).unwrap()
}

/// A client that speaks the set-up by hand (no ductwork code) and maps the segment.
struct RawClient {
    _sock: std::os::unix::net::UnixStream,
    base: *mut u8,
    cap: usize,
    /// Descriptors: memfd, client data, client space, server data, server space.
    fds: Vec<OwnedFd>,
}

impl RawClient {
    fn connect(name: &str) -> RawClient {
        use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
        let mut sock =
            std::os::unix::net::UnixStream::connect(support::unix::private_socket("shm", name))
                .unwrap();
        sock.write_all(b"DWSHMhi2").unwrap();
        // Our max_frame, u64 LE.
        sock.write_all(&(16u64 << 20).to_le_bytes()).unwrap();
        let mut reply = [0u8; 32];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(5))];
        let mut ctl = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            &sock,
            &mut [std::io::IoSliceMut::new(&mut reply)],
            &mut ctl,
            RecvFlags::empty(),
        )
        .unwrap();
        assert_eq!(got.bytes, 32);
        assert_eq!(&reply[..8], b"DWSHMok2");
        let mut fds = Vec::new();
        for m in ctl.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                fds.extend(r);
            }
        }
        assert_eq!(fds.len(), 5);
        let cap = u64::from_le_bytes(reply[8..16].try_into().unwrap()) as usize;
        let len = u64::from_le_bytes(reply[16..24].try_into().unwrap()) as usize;
        // SAFETY: a fresh shared mapping of the sealed memfd, `len` bytes as announced.
        let base = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fds[0],
                0,
            )
        }
        .unwrap()
        .cast::<u8>();
        RawClient {
            _sock: sock,
            base,
            cap,
            fds,
        }
    }

    /// Ring B (client to server): header offset.
    fn ring_b(&self) -> usize {
        128 + 512 + self.cap
    }

    fn put_u64(&self, off: usize, v: u64) {
        // SAFETY: test code writing inside the mapping (offsets from the documented layout).
        unsafe { std::ptr::write_volatile(self.base.add(off).cast::<u64>(), v) }
    }

    /// A record header word as the layout documents it: `len | stamp << 32`, the stamp
    /// derived from the record's absolute position.
    fn header_word(pos: u64, len: u32) -> u64 {
        let stamp = ((pos / 8) as u32) ^ 0x5354_4d50;
        len as u64 | (stamp as u64) << 32
    }

    /// Stores the header word at the first record position of ring B (client to server).
    fn put_first_header(&self, word: u64) {
        self.put_u64(self.ring_b() + 512, word);
    }

    /// Rings the server's data doorbell.
    fn ring_server(&self) {
        rustix::io::write(&self.fds[3], &1u64.to_ne_bytes()).unwrap();
    }
}

crate::child_entry!(roles);

/// The child's roles: a raw client that scribbles on the ring and waits until its stdin
/// closes, or (`idle`) a ductwork client that does nothing until it is killed.
fn roles(mode: &str, args: &[String]) -> Result<(), String> {
    let name = args.first().ok_or("missing shm name")?;
    let wait_stdin = || {
        let mut buf = [0u8; 16];
        while std::io::Read::read(&mut std::io::stdin(), &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    };
    match mode {
        "bad-header" => {
            let c = RawClient::connect(name);
            c.put_first_header(12345);
            c.ring_server();
            wait_stdin();
        }
        "header-for-the-next-lap" => {
            let c = RawClient::connect(name);
            // A well-formed record, but stamped for position C, not 0.
            c.put_first_header(RawClient::header_word(c.cap as u64, 5));
            c.ring_server();
            wait_stdin();
        }
        "unstamped-record" => {
            let c = RawClient::connect(name);
            // A record header of the previous layout: length 100, zero high word.
            c.put_first_header(100);
            c.ring_server();
            wait_stdin();
        }
        "huge-length" => {
            let c = RawClient::connect(name);
            c.put_first_header(RawClient::header_word(0, 0x7fff_fff0));
            c.ring_server();
            wait_stdin();
        }
        "bad-read-index" => {
            let c = RawClient::connect(name);
            // Ring A (server to client): its read index, written by us, the consumer.
            c.put_u64(128 + 128, 7);
            // Wake the server if it already waits for space.
            rustix::io::write(&c.fds[4], &1u64.to_ne_bytes()).unwrap();
            wait_stdin();
        }
        "idle" => {
            let rt = rt();
            let _conn = rt.block_on(ductwork_transports::connect(format!("shm://{name}")));
            // Killed by the test (or, should it be left behind, by the child's lifetime).
            std::thread::sleep(Duration::from_secs(3600));
        }
        other => return Err(format!("unknown child mode {other}")),
    }
    Ok(())
}

/// After a broken connection, the listener still serves a good client.
async fn listener_still_serves(l: &mut ductwork_core::BoxListener, name: &str) {
    let ep = format!("shm://{name}");
    let client = tokio::spawn(async move {
        let mut c = ductwork_transports::connect(ep.as_str()).await.unwrap();
        c.send(Bytes::from_static(b"ping")).await.unwrap();
        c.next().await.unwrap().unwrap()
    });
    let mut s = within(l.accept()).await.unwrap();
    let f = within(s.next()).await.unwrap().unwrap();
    s.send(f).await.unwrap();
    assert_eq!(&within(client).await.unwrap()[..], b"ping");
}

fn garbage_case(mode: &str, expect: ErrorKind) {
    rt().block_on(async {
        let name = name(mode);
        let mut l = ductwork_transports::bind(format!("shm://{name}?capacity=4KiB").as_str())
            .await
            .unwrap();
        let child = spawn_child(mode, &name);
        let mut c = within(l.accept()).await.unwrap();
        match within(c.next()).await {
            Some(Err(e)) => assert_eq!(e.kind(), expect, "{mode}: {e}"),
            other => panic!("{mode}: expected {expect:?}, got {other:?}"),
        }
        // Broken for good: later calls end or fail, no panic.
        assert!(!matches!(within(c.next()).await, Some(Ok(_))));
        listener_still_serves(&mut l, &name).await;
        child.finish().await.unwrap();
    });
}

#[test]
fn garbage_record_header_from_peer_is_protocol() {
    garbage_case("bad-header", ErrorKind::Protocol);
    garbage_case("header-for-the-next-lap", ErrorKind::Protocol);
}

#[test]
fn unstamped_record_from_peer_is_protocol() {
    garbage_case("unstamped-record", ErrorKind::Protocol);
}

#[test]
fn huge_record_length_from_peer_is_frame_too_large() {
    garbage_case("huge-length", ErrorKind::FrameTooLarge);
}

#[test]
fn garbage_read_index_from_peer_fails_send_with_protocol() {
    rt().block_on(async {
        let name = name("bad-read");
        let mut l = ductwork_transports::bind(format!("shm://{name}?capacity=4KiB").as_str())
            .await
            .unwrap();
        let child = spawn_child("bad-read-index", &name);
        let mut c = within(l.accept()).await.unwrap();
        // Send until the ring looks full, which makes the sender load the (corrupted) read
        // index; if the child scribbles late, the send waits for space and the child's
        // doorbell makes it look again.
        let mut result = Ok(());
        for _ in 0..1000 {
            result = within(c.send(Bytes::from(vec![1u8; 100]))).await;
            if result.is_err() {
                break;
            }
        }
        match result {
            Err(e) => assert_eq!(e.kind(), ErrorKind::Protocol, "{e}"),
            Ok(()) => panic!("1000 sends into a 4 KiB ring nobody reads all succeeded"),
        }
        listener_still_serves(&mut l, &name).await;
        child.finish().await.unwrap();
    });
}

async fn pair(ep: &str) -> (ductwork_core::BoxListener, BoxConnection, BoxConnection) {
    let mut l = ductwork_transports::bind(ep).await.unwrap();
    let bound = l.endpoint().to_string();
    let connect = tokio::spawn(async move { ductwork_transports::connect(bound.as_str()).await });
    let server = within(l.accept()).await.unwrap();
    let client = within(connect).await.unwrap().unwrap();
    (l, server, client)
}

#[test]
fn full_ring_makes_send_wait_until_the_receiver_reads() {
    rt().block_on(async {
        let ep = format!("shm://{}?capacity=4KiB", name("backpressure"));
        let (_l, mut server, mut client) = pair(&ep).await;
        let msg = Bytes::from(vec![3u8; 1000]);
        // 4 KiB holds four records of 1008 bytes.
        for _ in 0..4 {
            client.send(msg.clone()).await.unwrap();
        }
        let mut blocked = Box::pin(client.send(msg.clone()));
        assert!(
            (&mut blocked).now_or_never().is_none(),
            "a send into a full ring completed"
        );
        assert_eq!(within(server.next()).await.unwrap().unwrap(), msg);
        within(blocked).await.unwrap();
        for _ in 0..4 {
            assert_eq!(within(server.next()).await.unwrap().unwrap(), msg);
        }
        client.close().await.unwrap();
        assert!(
            within(server.next()).await.is_none(),
            "clean end after close"
        );
    });
}

#[test]
fn sender_waiting_for_space_sees_a_killed_peer() {
    rt().block_on(async {
        let name = name("killed-while-full");
        let mut l = ductwork_transports::bind(format!("shm://{name}?capacity=4KiB").as_str())
            .await
            .unwrap();
        let mut child = spawn_child("idle", &name);
        let mut c = within(l.accept()).await.unwrap();
        let msg = Bytes::from(vec![3u8; 1000]);
        for _ in 0..4 {
            c.send(msg.clone()).await.unwrap();
        }
        let pending = tokio::spawn(async move { c.send(msg).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        child.kill().await.unwrap();
        match within(pending).await.unwrap() {
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}"),
            Ok(()) => panic!("send into a full ring of a killed peer succeeded"),
        }
    });
}

#[test]
fn one_mebibyte_messages_pass_with_the_default_capacity() {
    rt().block_on(async {
        let ep = format!("shm://{}", name("big"));
        let (_l, mut server, mut client) = pair(&ep).await;
        assert!(client.info().capabilities.max_message >= 1 << 20);
        let msgs: Vec<Bytes> = (0..8u8)
            .map(|k| Bytes::from((0..1 << 20).map(|i| (i as u8) ^ k).collect::<Vec<_>>()))
            .collect();
        let to_send = msgs.clone();
        let sender = tokio::spawn(async move {
            for m in to_send {
                client.send(m).await.unwrap();
            }
            client.close().await.unwrap();
        });
        for m in &msgs {
            assert_eq!(&within(server.next()).await.unwrap().unwrap(), m);
        }
        assert!(within(server.next()).await.is_none());
        within(sender).await.unwrap();
    });
}

#[test]
fn over_the_ring_is_frame_too_large_naming_the_capacity() {
    rt().block_on(async {
        let ep = format!("shm://{}?capacity=8KiB", name("too-large"));
        let (_l, mut server, mut client) = pair(&ep).await;
        let max = client.info().capabilities.max_message;
        assert_eq!(max, 8192 - 16);
        let e = client
            .send(Bytes::from(vec![0u8; max + 1]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge);
        assert!(e.to_string().contains("capacity 8192"), "{e}");
        client.send(Bytes::from(vec![1u8; max])).await.unwrap();
        assert_eq!(within(server.next()).await.unwrap().unwrap().len(), max);
    });
}

#[test]
fn park_only_round_trips() {
    rt().block_on(async {
        let ep = format!("shm://{}?spin=0&capacity=4KiB", name("park"));
        let (_l, mut server, mut client) = pair(&ep).await;
        let echo = tokio::spawn(async move {
            while let Some(Ok(f)) = server.next().await {
                server.send(f).await.unwrap();
            }
        });
        for i in 0..2000u32 {
            let m = Bytes::from(i.to_le_bytes().repeat((i % 200) as usize + 1));
            client.send(m.clone()).await.unwrap();
            assert_eq!(within(client.next()).await.unwrap().unwrap(), m);
        }
        client.close().await.unwrap();
        within(echo).await.unwrap();
    });
}

#[test]
fn send_to_a_dropped_peer_is_closed() {
    rt().block_on(async {
        let ep = format!("shm://{}", name("dropped"));
        let (_l, server, mut client) = pair(&ep).await;
        drop(server);
        let e = client.send(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed, "{e}");
        assert!(
            within(client.next()).await.is_none(),
            "dropped = clean close"
        );
    });
}

#[test]
fn dropping_with_a_pending_send_is_connection_lost_not_a_clean_end() {
    rt().block_on(async {
        let ep = format!("shm://{}?capacity=4KiB", name("abandon"));
        let (_l, mut server, mut client) = pair(&ep).await;
        let msg = Bytes::from(vec![3u8; 1000]);
        for _ in 0..4 {
            client.send(msg.clone()).await.unwrap();
        }
        // A fifth frame is accepted by the sink but cannot enter the full ring.
        client.feed(msg.clone()).await.unwrap();
        drop(client);
        for _ in 0..4 {
            assert_eq!(within(server.next()).await.unwrap().unwrap(), msg);
        }
        match within(server.next()).await {
            Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}"),
            other => panic!("expected ConnectionLost, got {other:?}"),
        }
    });
}
