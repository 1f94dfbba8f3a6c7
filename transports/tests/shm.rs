//! Behaviour specific to `shm://` (Linux), beyond the conformance suite:
//!
//! - a raw client in another process that does the set-up by hand, maps the segment and
//!   scribbles on the ring (bad record headers, bad lengths, a bad read index) makes the
//!   survivor's connection fail
//!   with `Protocol` / `FrameTooLarge`, never a panic, and the listener keeps serving;
//! - a full ring makes `send` wait (backpressure) until the receiver reads;
//! - a sender waiting for space when the peer is killed gets `ConnectionLost`;
//! - 1 MiB messages pass with the default capacity; a message over the ring is refused
//!   with `FrameTooLarge` naming the capacity; the park-only path (`spin=0`) works;
//! - a message over the *listener's* `max_frame` fails locally on the client, which stays
//!   usable (the handshake tells the client the listener's limit), and one over the
//!   *client's* fails locally on the listener (the client's hello tells it);
//! - 1,000 idle connections at default settings cost the listener (a child process) under
//!   64 MiB of RSS (the connect time is printed); 5,000 clients against `max_conns=200`
//!   are refused with `Refused` naming the limit while a good client keeps being served;
//! - a sender of 1 KiB every 10 ms learns of a peer killed with SIGKILL within a few sends,
//!   on either side, while the ring is far from full.
//!
//! - the zero-copy API (loan, commit, receive in place) round-trips with a child process at
//!   sizes that wrap and skip back to the ring's start; a loan dropped uncommitted sends
//!   nothing; a loan over the ring is `FrameTooLarge`; a child killed while holding a loan
//!   publishes nothing (the receiver sees `ConnectionLost`), and a message held in place
//!   stays readable after its sender died.
//!
//! Child processes are this test binary run again through `support::child` (see `roles`).
#![cfg(all(target_os = "linux", feature = "shm"))]

mod support;

use bytes::Bytes;
use ductwork_core::{BoxConnection, ErrorKind};
use ductwork_transports::shm::{Shm, ShmListener};
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
        // The hello: the word, then our max_frame (u64 LE), 16 MiB.
        sock.write_all(b"DWSHMhi2").unwrap();
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
        "hold" => hold(name, args.get(1).map(String::as_str).unwrap_or("")),
        "loan-echo" => rt().block_on(loan_echo(name)),
        "loan-and-wait" => rt().block_on(async {
            // Loans room, writes half of it, says so, and waits to be killed.
            let ep = ductwork_core::Endpoint::parse(&format!("shm://{name}")).unwrap();
            let mut c = Shm::connect_zero_copy(&ep).await.unwrap();
            let mut loan = c.loan(1000).await.unwrap();
            assert!(loan.writer().put(&[7; 500]));
            support::child::announce_ready("loaned");
            std::thread::sleep(Duration::from_secs(3600));
        }),
        "send-one-and-wait" => rt().block_on(async {
            let ep = ductwork_core::Endpoint::parse(&format!("shm://{name}")).unwrap();
            let mut c = Shm::connect_zero_copy(&ep).await.unwrap();
            let mut loan = c.loan(3000).await.unwrap();
            assert!(loan.writer().put(&pattern(3000, 9)));
            loan.commit().unwrap();
            support::child::announce_ready("sent");
            std::thread::sleep(Duration::from_secs(3600));
        }),
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

/// The `loan-echo` role: a client that echoes every message through the zero-copy API (in
/// place, sent back ring to ring, or through a loan when the ring is full) until the
/// listener closes.
async fn loan_echo(name: &str) {
    let ep = ductwork_core::Endpoint::parse(&format!("shm://{name}")).unwrap();
    let mut c = Shm::connect_zero_copy(&ep).await.unwrap();
    loop {
        let Some(mut m) = c.recv_in_place().await.unwrap() else {
            return;
        };
        if m.try_send_back().unwrap() {
            continue;
        }
        let copy = m.to_vec();
        drop(m);
        let mut loan = c.loan(copy.len()).await.unwrap();
        assert!(loan.writer().put(&copy));
        loan.commit().unwrap();
    }
}

/// `len` bytes that differ with `k`.
fn pattern(len: usize, k: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31) ^ k).collect()
}

async fn bind_zero_copy(case: &str, opts: &str) -> (ShmListener, String) {
    let name = name(case);
    let ep = ductwork_core::Endpoint::parse(&format!("shm://{name}{opts}")).unwrap();
    (Shm::bind_zero_copy(&ep).await.unwrap(), name)
}

#[test]
fn zero_copy_round_trips_with_a_peer_process() {
    rt().block_on(async {
        let (mut l, name) = bind_zero_copy("loan-echo", "?capacity=256KiB").await;
        let child = spawn_child("loan-echo", &name);
        let mut c = within(l.accept()).await.unwrap();
        // Sizes up to the ring's largest, wrapping, skipping back to its start.
        for (k, len) in [
            0usize,
            1,
            100,
            5000,
            70_000,
            100,
            200_000,
            3,
            256 * 1024 - 16,
        ]
        .into_iter()
        .enumerate()
        {
            let msg = pattern(len, k as u8);
            let mut loan = within(c.loan(len)).await.unwrap();
            assert_eq!(loan.len(), len);
            assert!(loan.writer().put(&msg));
            loan.commit().unwrap();
            // A loan dropped without commit sends nothing.
            let unsent = within(c.loan(10)).await.unwrap();
            assert_eq!(unsent.len(), 10);
            let echo = within(c.recv_in_place()).await.unwrap().unwrap();
            assert_eq!(echo.len(), len);
            let mut got = vec![0u8; len];
            assert!(echo.copy_to(&mut got));
            assert!(got == msg, "echo of {len} bytes");
            assert!(
                !echo.copy_to(&mut vec![0u8; len + 1]),
                "a wrong length is refused"
            );
            // SAFETY: the peer is this test's own child, an honest ductwork producer.
            let (a, b) = unsafe { echo.as_slices() };
            assert!([a, b].concat() == msg);
        }
        // Over the ring: refused before anything happens, and the connection goes on.
        let e = within(c.loan(256 * 1024)).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert!(e.to_string().contains(&name), "{e}");
        // The copying API on the same connection still works, in both directions.
        c.send(Bytes::from_static(b"plain")).await.unwrap();
        assert_eq!(&within(c.next()).await.unwrap().unwrap()[..], b"plain");
        c.close().await.unwrap();
        child.finish().await.unwrap();
    });
}

#[test]
fn a_peer_killed_while_holding_a_loan_publishes_nothing() {
    rt().block_on(async {
        let (mut l, name) = bind_zero_copy("loan-killed", "").await;
        let mut child = spawn_child("loan-and-wait", &name);
        let mut c = within(l.accept()).await.unwrap();
        assert_eq!(child.ready().await.unwrap(), "loaned");
        child.kill().await.unwrap();
        let e = within(c.recv_in_place()).await.err().expect("no message");
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
    });
}

#[test]
fn a_message_held_in_place_stays_readable_after_its_sender_died() {
    rt().block_on(async {
        let (mut l, name) = bind_zero_copy("inplace-killed", "").await;
        let mut child = spawn_child("send-one-and-wait", &name);
        let mut c = within(l.accept()).await.unwrap();
        assert_eq!(child.ready().await.unwrap(), "sent");
        let m = within(c.recv_in_place()).await.unwrap().unwrap();
        child.kill().await.unwrap();
        assert!(m.to_vec() == pattern(3000, 9));
        drop(m);
        let e = within(c.recv_in_place())
            .await
            .err()
            .expect("the peer is gone");
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
        let e = within(c.loan(10)).await.err().expect("the peer is gone");
        assert_eq!(e.kind(), ErrorKind::ConnectionLost, "{e}");
    });
}

/// The `hold` role: a listener on `shm://<name><opts>` that echoes on every connection it
/// accepts and keeps them all; `rss N` on stdin waits (up to 60 s) until N connections were
/// accepted and answers `READY <accepted> <VmRSS kB>`.
fn hold(name: &str, opts: &str) {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use tokio::io::AsyncBufReadExt;
    rt().block_on(async {
        let mut l = ductwork_transports::bind(format!("shm://{name}{opts}").as_str())
            .await
            .unwrap();
        support::child::announce_ready(l.endpoint());
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok(mut c) = l.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    while let Some(Ok(f)) = c.next().await {
                        if c.send(f).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let want: usize = line.trim_start_matches("rss ").parse().unwrap_or(0);
            for _ in 0..6000 {
                if accepted.load(Ordering::SeqCst) >= want {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            support::child::announce_ready(format!(
                "{} {}",
                accepted.load(Ordering::SeqCst),
                vm_rss_kb()
            ));
        }
    });
}

/// This process's resident set (VmRSS) in kB.
fn vm_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Raises this process's descriptor limit to its hard limit (children inherit it): the
/// tests below hold thousands of connections of six descriptors each.
fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `r` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    r.rlim_cur = r.rlim_max;
    // SAFETY: `r` is a valid rlimit with cur <= max.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    r.rlim_cur
}

/// Starts a `hold` listener child on `shm://<name><opts>`; returns it and its endpoint.
async fn holding_listener(case: &str, opts: &str) -> (Child, String) {
    let n = name(case);
    let mut child = Child::spawn("hold", &[n.as_str(), opts]).unwrap();
    let ep = child.ready().await.unwrap();
    (child, ep)
}

/// Asks a `hold` child for its accepted count and RSS once it accepted `n`.
async fn accepted_and_rss(child: &mut Child, n: usize) -> (usize, u64) {
    child.say(&format!("rss {n}")).await.unwrap();
    let line = child.ready().await.unwrap();
    let mut it = line.split(' ').map(|w| w.parse::<u64>().unwrap());
    (it.next().unwrap() as usize, it.next().unwrap())
}

/// One echo round trip on `c`.
async fn ping(c: &mut BoxConnection, what: &[u8]) {
    within(c.send(Bytes::copy_from_slice(what))).await.unwrap();
    assert_eq!(&within(c.next()).await.unwrap().unwrap()[..], what);
}

/// `n` connects to `ep`, `parallel` at a time; the results in completion order.
async fn connect_many(
    ep: &str,
    n: usize,
    parallel: usize,
) -> Vec<ductwork_core::Result<BoxConnection>> {
    futures::stream::iter(0..n)
        .map(|_| ductwork_transports::connect(ep))
        .buffer_unordered(parallel)
        .collect()
        .await
}

#[test]
fn a_thousand_idle_connections_cost_the_listener_little() {
    let n: usize = std::env::var("DW_SHM_IDLE_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    assert!(
        raise_nofile() >= 8 * n as u64,
        "RLIMIT_NOFILE too low for {n} connections"
    );
    rt().block_on(async {
        let (mut child, ep) = holding_listener("idle-many", "").await;
        let (_, before) = accepted_and_rss(&mut child, 0).await;
        let started = std::time::Instant::now();
        let results = within(connect_many(&ep, n, 32)).await;
        let took = started.elapsed();
        let mut clients: Vec<BoxConnection> = results.into_iter().map(Result::unwrap).collect();
        let (accepted, rss_kb) = accepted_and_rss(&mut child, n).await;
        eprintln!(
            "shm: {n} idle connections: connected in {took:?}; listener VmRSS {} KiB before, \
             {rss_kb} KiB after ({:.1} KiB per connection)",
            before,
            (rss_kb.saturating_sub(before)) as f64 / n as f64
        );
        assert_eq!(accepted, n);
        assert!(
            rss_kb < 64 * 1024,
            "the listener holds {rss_kb} KiB of RSS for {n} idle connections (limit 64 MiB)"
        );
        // Each of them works.
        for (i, c) in clients.iter_mut().enumerate().step_by(97) {
            ping(c, format!("client {i}").as_bytes()).await;
        }
        drop(clients);
        child.kill().await.unwrap();
    });
}

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

#[test]
fn clients_over_max_conns_are_refused_naming_the_limit_while_the_listener_serves() {
    const CAP: usize = 200;
    const CLIENTS: usize = 5000;
    raise_nofile();
    rt().block_on(async {
        let (mut child, ep) = holding_listener("capped", &format!("?max_conns={CAP}")).await;
        let mut good = within(ductwork_transports::connect(ep.as_str()))
            .await
            .unwrap();
        ping(&mut good, b"first").await;
        let started = std::time::Instant::now();
        let mut held = Vec::new();
        let mut refused = 0;
        for round in 0..CLIENTS / 500 {
            for r in within(connect_many(&ep, 500, 64)).await {
                match r {
                    Ok(c) => held.push(c),
                    Err(e) => {
                        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
                        let text = e.to_string();
                        assert!(
                            text.contains(&format!("max_conns={CAP}")) && text.contains(&ep),
                            "the refusal names neither the limit nor the endpoint: {text}"
                        );
                        refused += 1;
                    }
                }
            }
            // The good client is served all along.
            ping(&mut good, format!("round {round}").as_bytes()).await;
        }
        let (accepted, rss_kb) = accepted_and_rss(&mut child, CAP).await;
        eprintln!(
            "shm: {CLIENTS} clients against max_conns={CAP}: {} held, {refused} refused in {:?}; \
             listener VmRSS {rss_kb} KiB",
            held.len(),
            started.elapsed()
        );
        assert_eq!(held.len(), CAP - 1, "the good client holds one slot");
        assert_eq!(refused, CLIENTS - (CAP - 1));
        assert_eq!(accepted, CAP);
        // Closing held connections gives their slots back: a new client gets in (the
        // listener frees a slot once its side of the connection is dropped).
        for mut c in held.drain(..10) {
            c.close().await.unwrap();
        }
        let mut late = None;
        for _ in 0..200 {
            match ductwork_transports::connect(ep.as_str()).await {
                Ok(c) => {
                    late = Some(c);
                    break;
                }
                Err(e) => assert_eq!(e.kind(), ErrorKind::Refused, "{e}"),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut late = late.expect("a slot was given back within 2 s");
        ping(&mut late, b"late").await;
        ping(&mut good, b"last").await;
        drop(held);
        child.kill().await.unwrap();
    });
}

/// Sends 1 KiB every 10 ms on `c` (up to `max` sends) until one fails; returns how many
/// succeeded and the error.
async fn sends_until_failure(c: &mut BoxConnection, max: usize) -> (usize, ductwork_core::Error) {
    let msg = Bytes::from(vec![7u8; 1024]);
    for sent in 0..max {
        if let Err(e) = within(c.send(msg.clone())).await {
            return (sent, e);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{max} sends of 1 KiB to a killed peer all succeeded");
}

/// How many sends a sender may still complete after its peer was killed: the kill is
/// synchronous (the child is reaped before the first send), so the watcher's flag is normally
/// set before the second; the bound allows for a loaded machine.
const SENDS_AFTER_KILL: usize = 20;

#[test]
fn a_slow_sender_learns_of_a_killed_client_within_a_few_sends() {
    rt().block_on(async {
        let name = name("slow-sender");
        let mut l = ductwork_transports::bind(format!("shm://{name}").as_str())
            .await
            .unwrap();
        let mut child = spawn_child("idle", &name);
        let mut c = within(l.accept()).await.unwrap();
        c.send(Bytes::from_static(b"hello")).await.unwrap();
        child.kill().await.unwrap();
        let (sent, e) = sends_until_failure(&mut c, 500).await;
        eprintln!("shm: listener's sends after its client was killed: {sent} succeeded, then {e}");
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Closed),
            "{e}"
        );
        assert!(
            sent <= SENDS_AFTER_KILL,
            "{sent} sends succeeded after the kill"
        );
        listener_still_serves(&mut l, &name).await;
    });
}

#[test]
fn a_slow_sender_learns_of_a_killed_listener_within_a_few_sends() {
    rt().block_on(async {
        let (mut child, ep) = holding_listener("slow-client", "").await;
        let mut c = within(ductwork_transports::connect(ep.as_str()))
            .await
            .unwrap();
        ping(&mut c, b"hello").await;
        child.kill().await.unwrap();
        let (sent, e) = sends_until_failure(&mut c, 500).await;
        eprintln!("shm: client's sends after its listener was killed: {sent} succeeded, then {e}");
        assert!(
            matches!(e.kind(), ErrorKind::ConnectionLost | ErrorKind::Closed),
            "{e}"
        );
        assert!(
            sent <= SENDS_AFTER_KILL,
            "{sent} sends succeeded after the kill"
        );
    });
}

#[test]
fn over_the_listeners_max_frame_fails_locally_and_the_client_goes_on() {
    rt().block_on(async {
        let (mut child, ep) = holding_listener("small-frames", "?max_frame=1000").await;
        // The client's own limit is the default (16 MiB): the listener's is what counts.
        let client_ep = ep.split('?').next().unwrap().to_string();
        let mut c = within(ductwork_transports::connect(client_ep.as_str()))
            .await
            .unwrap();
        assert_eq!(c.info().capabilities.max_message, 1000);
        ping(&mut c, b"one").await;
        let e = c.send(Bytes::from(vec![1u8; 20_000])).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        ping(&mut c, &[2u8; 1000]).await;
        c.close().await.unwrap();
        child.kill().await.unwrap();
    });
}

#[test]
fn over_the_clients_max_frame_fails_on_the_listeners_send_and_it_goes_on() {
    rt().block_on(async {
        let name = name("client-limit");
        let mut l = ductwork_transports::bind(format!("shm://{name}").as_str())
            .await
            .unwrap();
        // The listener's own limit is the default (16 MiB): the client's hello sets its sends'.
        let ep = format!("shm://{name}?max_frame=1000");
        let connect = tokio::spawn(async move { ductwork_transports::connect(ep.as_str()).await });
        let mut server = within(l.accept()).await.unwrap();
        let mut client = within(connect).await.unwrap().unwrap();
        assert_eq!(server.info().capabilities.max_message, 1000);
        let e = server
            .send(Bytes::from(vec![1u8; 20_000]))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
        assert!(
            e.to_string().contains(&name) && e.to_string().contains("1000"),
            "{e}"
        );
        // Nothing entered the ring: the client gets the next message, not an error.
        within(server.send(Bytes::from(vec![2u8; 1000])))
            .await
            .unwrap();
        assert_eq!(
            within(client.next()).await.unwrap().unwrap()[..],
            [2u8; 1000]
        );
        within(client.send(Bytes::from_static(b"back")))
            .await
            .unwrap();
        assert_eq!(&within(server.next()).await.unwrap().unwrap()[..], b"back");
    });
}
