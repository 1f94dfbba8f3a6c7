//! Peer checks of Windows `pipe://` through the pipe's process ids and those processes'
//! tokens: the default same-user check, `peer_sid` (client) and `allow_sids` (listener), the
//! credentials on `ConnectionInfo`, and the refusal a client is told.
//!
//! Under Wine every process runs as the one user of the prefix, so these tests show the
//! checks with our own SID, SYSTEM's and the Users group's (a SID no process runs as): a
//! listener of another real user (a squatter) and a client of another real user cannot be
//! made here, and Wine does not enforce DACLs, so what another user is denied is not shown.
#![cfg(windows)]

mod support;

use bytes::Bytes;
use ductwork_core::{ErrorKind, PeerCredentials};
use futures::{SinkExt, StreamExt};
use std::time::Duration;

const DEADLINE: Duration = support::DEADLINE;

fn name(tag: &str) -> String {
    support::unique(&format!("peer-{tag}"))
}

/// Our own user's SID, as the credentials of a connection to ourselves report it.
async fn own_sid() -> String {
    let ep = format!("pipe://{}", name("self"));
    let mut l = ductwork_transports::bind(ep.as_str()).await.unwrap();
    let c = ductwork_transports::connect(ep.as_str()).await.unwrap();
    let creds = c
        .info()
        .peer_credentials()
        .expect("credentials of our listener");
    drop(l.accept().await);
    creds.sid
}

/// Opens `path` raw (a client that never reads), waiting while every instance is busy (the
/// listener makes the next one after it handled the last client); bounded by `DEADLINE`.
async fn open_when_free(path: &str) -> support::win32::Handle {
    use windows_sys::Win32::Foundation::{ERROR_PIPE_BUSY, GENERIC_WRITE};
    let start = std::time::Instant::now();
    loop {
        match support::win32::open(path, GENERIC_WRITE) {
            Ok(h) => return h,
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY as i32) => {
                assert!(start.elapsed() < DEADLINE, "{path} stayed busy");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(e) => panic!("open {path}: {e}"),
        }
    }
}

/// With no option the client checks that the listener runs as our user, which passes; both
/// ends carry the peer's pid and SID, typed; and messages flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_same_user_check_passes_and_reports_credentials() {
    let ep = format!("pipe://{}", name("default"));
    let mut l = ductwork_transports::bind(ep.as_str()).await.unwrap();
    let mut c = ductwork_transports::connect(ep.as_str()).await.unwrap();
    let mut s = tokio::time::timeout(DEADLINE, l.accept())
        .await
        .unwrap()
        .unwrap();
    let theirs = c
        .info()
        .peer_credentials()
        .expect("client: listener's credentials");
    let mine = s
        .info()
        .peer_credentials()
        .expect("listener: client's credentials");
    println!("client sees {theirs}; listener sees {mine}");
    assert_eq!(theirs.pid, Some(std::process::id()));
    assert_eq!(mine.pid, Some(std::process::id()));
    assert_eq!(theirs.sid, mine.sid);
    assert!(theirs.sid.starts_with("S-1-5-"), "{theirs}");
    assert_eq!(
        c.info().peer.as_deref().unwrap().parse::<PeerCredentials>(),
        Ok(theirs.clone())
    );
    // The same check, asked for explicitly, passes too.
    let explicit = format!("{ep}?peer_sid={}", theirs.sid);
    let _c2 = ductwork_transports::connect(explicit.as_str())
        .await
        .unwrap();
    c.send(Bytes::from_static(b"ping")).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, s.next()).await.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"ping");
}

/// A client that requires a SID the listener does not run as is refused at `connect`, with
/// `PermissionDenied` naming the endpoint, the SID found and the SID required (an SDDL alias
/// is read in its canonical form).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_sid_that_does_not_match_is_refused() {
    let me = own_sid().await;
    let base = format!("pipe://{}", name("want"));
    let mut l = ductwork_transports::bind(base.as_str()).await.unwrap();
    // Accepting, so that each client finds a free instance (it drops the ones it refuses).
    let accepting = tokio::spawn(async move {
        for _ in 0..10 {
            if l.accept().await.is_err() {
                return;
            }
        }
    });
    for (want, canonical) in [
        ("S-1-5-18", "S-1-5-18"),
        ("SY", "S-1-5-18"),
        ("S-1-5-32-545", "S-1-5-32-545"),
    ] {
        let ep = format!("{base}?peer_sid={want}");
        let e = ductwork_transports::connect(ep.as_str())
            .await
            .err()
            .expect("connected to a listener of another SID");
        println!("{e}");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        let text = e.to_string();
        assert!(text.contains(&ep), "{e}");
        assert!(text.contains(&format!("runs as {me}")), "{e}");
        assert!(text.contains(&format!("not {canonical}")), "{e}");
    }
    accepting.abort();
}

/// A listener with `allow_sids` that leaves us out: the pipe's DACL grants that SID too, and
/// our client is told why on its first receive and its first send (`PermissionDenied`
/// naming the endpoint and our SID), also after clients that never read; the listener keeps
/// going, and one whose `allow_sids` has our SID serves us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_sids_refuses_a_client_and_says_why() {
    let me = own_sid().await;
    let n = name("allow");
    let ep = format!("pipe://{n}?allow_sids=S-1-5-32-545");
    let mut l = ductwork_transports::bind(ep.as_str()).await.unwrap();
    let path = format!(r"\\.\pipe\ductwork-{n}");
    let sddl = support::win32::dacl_sddl(&path).unwrap();
    println!("DACL with allow_sids: {sddl}");
    assert_eq!(sddl.matches("(A;").count(), 3, "{sddl}");
    assert!(
        sddl.contains(";;;BU)") || sddl.contains(";;;S-1-5-32-545)"),
        "{sddl}"
    );
    let accepting = tokio::spawn(async move {
        let c = l.accept().await;
        panic!(
            "accepted a client it should refuse: {:?}",
            c.map(|c| c.info().clone())
        );
    });
    // Clients that never read.
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(open_when_free(&path).await);
    }
    let plain = format!("pipe://{n}");
    let why = format!("your user {me} is not in its allow_sids");
    let mut c = ductwork_transports::connect(plain.as_str()).await.unwrap();
    let e = tokio::time::timeout(DEADLINE, c.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    println!("recv: {e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains(&why), "{e}");
    assert!(e.to_string().contains(&plain), "{e}");
    let mut c = ductwork_transports::connect(plain.as_str()).await.unwrap();
    let e = tokio::time::timeout(DEADLINE, c.send(Bytes::from_static(b"x")))
        .await
        .unwrap()
        .unwrap_err();
    println!("send: {e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains(&why), "{e}");
    assert!(!accepting.is_finished(), "the listener stopped");
    accepting.abort();
    drop(silent);

    let ok = format!("pipe://{}?allow_sids=S-1-5-32-545,{me}", name("allowed"));
    let mut l = ductwork_transports::bind(ok.as_str()).await.unwrap();
    let plain = ok.split('?').next().unwrap().to_string();
    let mut c = ductwork_transports::connect(plain.as_str()).await.unwrap();
    let mut s = tokio::time::timeout(DEADLINE, l.accept())
        .await
        .unwrap()
        .unwrap();
    c.send(Bytes::from_static(b"in")).await.unwrap();
    let got = tokio::time::timeout(DEADLINE, s.next()).await.unwrap();
    assert_eq!(&got.unwrap().unwrap()[..], b"in");
}

/// A client that connected before the listener looked at its pipe instance (the listener was
/// busy, here: not accepting yet) is told why too, on its first receive and on its first send.
/// Its instance is already connected when the listener first waits on it, a path the
/// listener's other clients (arriving while it waits) rarely take.
///
/// One thread, so tokio's event loop runs only where the test waits: deterministically the
/// order in which the listener meets the connected instance before its first event.
#[tokio::test(flavor = "current_thread")]
async fn a_client_that_connected_before_the_listener_accepted_is_told_why() {
    let me = own_sid().await;
    let why = format!("your user {me} is not in its allow_sids");
    for first in ["recv", "send"] {
        let n = name(&format!("early-{first}"));
        let ep = format!("pipe://{n}?allow_sids=S-1-5-32-545");
        let mut l = ductwork_transports::bind(ep.as_str()).await.unwrap();
        let plain = format!("pipe://{n}");
        // Connected to the listener's waiting instance before any accept.
        let mut c = ductwork_transports::connect(plain.as_str()).await.unwrap();
        let accepting = tokio::spawn(async move {
            let c = l.accept().await;
            panic!(
                "accepted a client it should refuse: {:?}",
                c.map(|c| c.info().clone())
            );
        });
        let e = if first == "recv" {
            let got = tokio::time::timeout(DEADLINE, c.next()).await.unwrap();
            got.unwrap().unwrap_err()
        } else {
            let sent = c.send(Bytes::from_static(b"x"));
            tokio::time::timeout(DEADLINE, sent)
                .await
                .unwrap()
                .unwrap_err()
        };
        println!("{first}: {e}");
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{first}: {e}");
        assert!(e.to_string().contains(&why), "{first}: {e}");
        assert!(e.to_string().contains(&plain), "{first}: {e}");
        assert!(!accepting.is_finished(), "the listener stopped");
        accepting.abort();
    }
}

/// The listener's hello goes out when it accepts, also to a client that connected before the
/// listener waited on its instance: a client that sends first knows the listener's limit
/// without the listener ever reading, so an over-limit frame is refused on the client's side
/// (without the hello it would wait out its hello deadline, then send the frame).
///
/// One thread, so tokio's event loop runs only where the test waits: deterministically the
/// order in which the listener meets the connected instance before its first event.
#[tokio::test(flavor = "current_thread")]
async fn the_listener_hello_reaches_a_client_that_connected_before_the_accept() {
    let n = name("hello");
    let ep = format!("pipe://{n}?max_frame=1024");
    let mut l = ductwork_transports::bind(ep.as_str()).await.unwrap();
    let mut c = ductwork_transports::connect(format!("pipe://{n}").as_str())
        .await
        .unwrap();
    let _s = tokio::time::timeout(DEADLINE, l.accept())
        .await
        .unwrap()
        .unwrap();
    let big = Bytes::from(vec![7u8; 2048]);
    let e = tokio::time::timeout(DEADLINE, c.send(big))
        .await
        .unwrap()
        .expect_err("a 2 KiB frame to a listener with max_frame=1024");
    println!("{e}");
    assert_eq!(e.kind(), ErrorKind::FrameTooLarge, "{e}");
}

/// A listener that refuses at once (here a raw Win32 one: it writes a refusal and closes its
/// end, without `DisconnectNamedPipe`) before our client first sends: the client's hello then
/// fails on the closed pipe while the refusal is already read but not yet handed over by the
/// event loop, and the client must report the refusal, not the broken pipe. One thread, so the
/// event loop runs only where the test yields: deterministically that order.
#[tokio::test(flavor = "current_thread")]
async fn a_refusal_ahead_of_the_closed_pipe_is_reported_by_a_failed_send() {
    use windows_sys::Win32::{
        Foundation::INVALID_HANDLE_VALUE,
        Storage::FileSystem::{WriteFile, PIPE_ACCESS_DUPLEX},
        System::Pipes::{CreateNamedPipeW, PIPE_TYPE_BYTE, PIPE_WAIT},
    };
    let n = name("closed");
    let wide = support::win32::wide(&format!(r"\\.\pipe\ductwork-{n}"));
    // SAFETY: `wide` is a NUL-terminated UTF-16 name that outlives the call; null security
    // attributes are the default ones.
    let h = unsafe {
        CreateNamedPipeW(
            wide.as_ptr(),
            PIPE_ACCESS_DUPLEX,
            PIPE_TYPE_BYTE | PIPE_WAIT,
            1,
            65536,
            65536,
            0,
            std::ptr::null(),
        )
    };
    assert_ne!(
        h,
        INVALID_HANDLE_VALUE,
        "{}",
        std::io::Error::last_os_error()
    );
    let server = support::win32::Handle(h);
    let ep = format!("pipe://{n}");
    let mut c = ductwork_transports::connect(ep.as_str()).await.unwrap();
    // The event loop takes in the client's first events: its next write goes to the pipe.
    tokio::task::yield_now().await;
    let reason = b"not you";
    let mut refusal = vec![0xFF, 0xFF, 0xFF, 0xFD, 0, 1, 0, reason.len() as u8];
    refusal.extend_from_slice(reason);
    let mut written = 0u32;
    // SAFETY: the handle is open; `refusal` and `written` are valid for the call; no overlap.
    let ok = unsafe {
        WriteFile(
            server.0,
            refusal.as_ptr(),
            refusal.len() as u32,
            &mut written,
            std::ptr::null_mut(),
        )
    };
    assert!(ok != 0, "{}", std::io::Error::last_os_error());
    assert_eq!(written as usize, refusal.len());
    drop(server);
    let sent = c.send(Bytes::from_static(b"x"));
    let e = tokio::time::timeout(DEADLINE, sent)
        .await
        .unwrap()
        .unwrap_err();
    println!("send: {e}");
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    assert!(
        e.to_string().contains("refused this connection: not you"),
        "{e}"
    );
}

/// Option values are checked, the Unix options are refused, and the checks that cannot work
/// across hosts are `Unsupported`, each naming the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_options_are_checked() {
    let cases = [
        (
            "pipe://x?peer_sid=nobody",
            ErrorKind::InvalidEndpoint,
            "is not a SID",
        ),
        (
            "pipe://x?peer_sid=D:P(A;;GA;;;WD)",
            ErrorKind::InvalidEndpoint,
            "is not a SID",
        ),
        (
            "pipe://x?allow_sids=S-1-5-18,x",
            ErrorKind::InvalidEndpoint,
            "is not a SID",
        ),
        ("pipe://x?peer_uid=0", ErrorKind::Unsupported, "peer_sid"),
        ("pipe://x?allow_uids=0", ErrorKind::Unsupported, "peer_sid"),
        (
            "pipe://host/x?peer_sid=S-1-5-18",
            ErrorKind::Unsupported,
            "another host",
        ),
    ];
    for (ep, kind, words) in cases {
        let e = ductwork_transports::connect(ep).await.err().unwrap();
        println!("{ep}: {e}");
        assert_eq!(e.kind(), kind, "{ep}: {e}");
        assert!(e.to_string().contains(words), "{ep}: {e}");
        assert!(e.to_string().contains(ep), "{ep}: {e}");
    }
    let ep = format!("pipe://{}?remote=true&allow_sids=S-1-5-18", name("remote"));
    let e = ductwork_transports::bind(ep.as_str()).await.err().unwrap();
    println!("{e}");
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    assert!(e.to_string().contains("remote=true"), "{e}");
}
