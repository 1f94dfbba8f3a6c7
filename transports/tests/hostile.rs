//! Hostile input against real receivers in other processes (issue 11, "hold under hostile
//! input"): what one peer sends must not end the receiver for everyone.
//!
//! - `stalled_claims_do_not_exhaust_a_capped_listener` (Linux): a listener process whose
//!   address space is capped at 1 GiB (`RLIMIT_AS`) holds 1,200 connections that each sent
//!   only a header claiming a 16 MiB frame and then stalled; it must stay alive and serve a
//!   good client. Before frame buffers grew with the bytes that arrive, each header reserved
//!   16 MiB and the process aborted after about 60 of them.
//! - `an_over_long_datagram_is_one_error_on_the_shared_receiver`: one raw 70,000-byte
//!   mailslot message from another process is one `FrameTooLarge` on the shared receiver,
//!   which goes on receiving a good sender process's messages (the contract's rule for shared
//!   receivers).
//! - `bytes_after_the_close_marker_in_a_later_read_fail_the_connection`: a raw client process
//!   sends a frame and the close marker, waits until the receiver has read them, then sends
//!   garbage; the receiver reports `Protocol`, not a clean end (tcp; and pipe on Unix, a
//!   Unix stream socket; a Windows named pipe has no half-close and ends at the marker).
// Each test needs its transport's feature, and the capped listener Linux; elsewhere some
// helpers go unused.
#![cfg_attr(
    not(all(target_os = "linux", feature = "socket", feature = "mailslot")),
    allow(unused)
)]

mod support;

use bytes::Bytes;
use ductwork_core::{Endpoint, ErrorKind};
use futures::{SinkExt, StreamExt};
use support::child::{announce_ready, Child};
use support::must;

crate::child_entry!(roles);

/// The child roles of this suite.
fn roles(role: &str, args: &[String]) -> Result<(), String> {
    match role {
        #[cfg(target_os = "linux")]
        "capped-echo" => capped::echo(args),
        "raw-mailslot" => raw_mailslot(args),
        "send-frames" => send_frames(args),
        "raw-after-close" => raw_after_close(args),
        _ => Err(format!("unknown role {role}")),
    }
}

#[cfg(target_os = "linux")]
mod capped {
    //! The capped listener: `RLIMIT_AS` lowered before anything is bound.
    use super::*;

    /// The address-space cap of the listener process.
    pub const CAP: u64 = 1 << 30;

    /// Raises this process's open-file soft limit to its hard limit; returns the new limit.
    pub fn raise_nofile() -> u64 {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `r` is a valid rlimit for getrlimit to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            return 1024;
        }
        r.rlim_cur = r.rlim_max;
        // SAFETY: `r` is a valid rlimit with cur <= max.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        r.rlim_cur
    }

    /// Caps this process's address space at `bytes`.
    fn cap_address_space(bytes: u64) -> Result<(), String> {
        let r = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: `r` is a valid rlimit that lives across the call.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &r) } != 0 {
            return Err(format!("setrlimit: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// This process's peak virtual memory, from /proc (for the log).
    fn vm_peak() -> String {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmPeak"))
                    .map(str::to_string)
            })
            .unwrap_or_default()
    }

    /// Role `capped-echo`: caps its address space, binds `tcp://127.0.0.1:0`, announces the
    /// endpoint and echoes every frame on every connection until its stdin closes.
    pub fn echo(_args: &[String]) -> Result<(), String> {
        raise_nofile();
        cap_address_space(CAP)?;
        // One thread: no per-thread malloc arenas to spend the capped space on.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("runtime: {e}"))?;
        rt.block_on(async {
            let ep = Endpoint::parse("tcp://127.0.0.1:0").map_err(|e| e.to_string())?;
            let mut l = ductwork_transports::bind(&ep)
                .await
                .map_err(|e| e.to_string())?;
            announce_ready(l.endpoint());
            // Ends only with an accept error (or when stdin's end wins the select).
            let serve = async {
                loop {
                    let mut c = match l.accept().await {
                        Ok(c) => c,
                        Err(e) => return Err::<(), String>(e.to_string()),
                    };
                    tokio::spawn(async move {
                        while let Some(Ok(f)) = c.next().await {
                            if c.send(f).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            };
            let stdin_closed = async {
                use tokio::io::AsyncReadExt;
                let mut sink = Vec::new();
                let _ = tokio::io::stdin().read_to_end(&mut sink).await;
            };
            tokio::select! {
                r = serve => r,
                () = stdin_closed => Ok(()),
            }
        })?;
        eprintln!("capped-echo: {}", vm_peak());
        Ok(())
    }
}

/// A header claiming a 16 MiB frame (the default limit) and one byte of it.
const CLAIM: [u8; 5] = [0x01, 0x00, 0x00, 0x00, 0xab];

#[cfg(all(target_os = "linux", feature = "socket"))]
#[test]
fn stalled_claims_do_not_exhaust_a_capped_listener() {
    use tokio::io::AsyncWriteExt;
    // Each side holds one socket per connection; leave room for everything else.
    let n = 1_200.min(capped::raise_nofile().saturating_sub(100));
    assert!(n >= 200, "the open-file limit allows only {n} connections");
    support::runtime().block_on(async {
        let mut child = Child::spawn("capped-echo", &[""]).unwrap();
        let ep = must("ready", child.ready()).await.unwrap();
        let addr = Endpoint::parse(&ep).unwrap().address().to_string();
        let mut stalled = Vec::with_capacity(n as usize);
        for i in 0..n {
            let connected = must("connect", tokio::net::TcpStream::connect(&addr)).await;
            let mut s = connected.unwrap_or_else(|e| panic!("connection {i}: {e}"));
            must("write the claim", s.write_all(&CLAIM))
                .await
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            stalled.push(s);
        }
        // The listener accepted every stalled connection (and read its claim) before this
        // one; it must still be alive and serving.
        let mut good = must(
            "connect",
            ductwork_transports::connect(&Endpoint::parse(&ep).unwrap()),
        )
        .await
        .expect("a good client connects to the listener under attack");
        let frame = Bytes::from(vec![7u8; 100_000]);
        must("send", good.send(frame.clone())).await.unwrap();
        match must("echo", good.next()).await {
            Some(Ok(f)) => assert_eq!(f, frame),
            other => panic!("the listener holding {n} claims did not echo: {other:?}"),
        }
        drop(good);
        drop(stalled);
        // It exits normally when told to, so it was never killed by a failed allocation.
        child.finish().await.unwrap();
    });
}

/// Role `raw-mailslot NAME LEN`: writes one message of `LEN` bytes to the mailslot `NAME` as a
/// foreign writer would, without ductwork. A write the OS refuses (Windows checks the
/// mailslot's maximum) is fine: the message then never reaches the receiver.
fn raw_mailslot(args: &[String]) -> Result<(), String> {
    let [name, len] = args else {
        return Err("usage: raw-mailslot NAME LEN".into());
    };
    let len: usize = len.parse().map_err(|e| format!("LEN: {e}"))?;
    let msg = vec![0xabu8; len];
    #[cfg(unix)]
    {
        let path = support::unix::private_socket("mailslot", name);
        let sock = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
        let sent = sock
            .send_to(&msg, &path)
            .map_err(|e| format!("send: {e}"))?;
        if sent != len {
            return Err(format!("sent {sent} of {len} bytes"));
        }
    }
    #[cfg(windows)]
    {
        let path = format!(r"\\.\mailslot\ductwork\{name}");
        if let Err(e) = support::win32::write_all(&path, &[&msg]) {
            eprintln!("raw-mailslot: the OS refused the {len}-byte message: {e}");
        }
    }
    Ok(())
}

/// Role `send-frames ENDPOINT COUNT`: sends `COUNT` frames `[i as u8; 100]` and closes.
fn send_frames(args: &[String]) -> Result<(), String> {
    let [ep, count] = args else {
        return Err("usage: send-frames ENDPOINT COUNT".into());
    };
    let count: u8 = count.parse().map_err(|e| format!("COUNT: {e}"))?;
    let ep = Endpoint::parse(ep).map_err(|e| e.to_string())?;
    support::runtime().block_on(async {
        let mut c = ductwork_transports::connect(&ep)
            .await
            .map_err(|e| e.to_string())?;
        for i in 0..count {
            c.send(Bytes::from(vec![i; 100]))
                .await
                .map_err(|e| e.to_string())?;
        }
        c.close().await.map_err(|e| e.to_string())
    })
}

#[cfg(feature = "mailslot")]
#[test]
fn an_over_long_datagram_is_one_error_on_the_shared_receiver() {
    const N: u8 = 20;
    let name = support::unique("hostile-overlong");
    let ep = Endpoint::parse(&format!("mailslot://{name}")).unwrap();
    support::runtime().block_on(async {
        let mut l = must("bind", ductwork_transports::bind(&ep)).await.unwrap();
        let mut rx = must("accept", l.accept()).await.unwrap();
        must(
            "raw writer",
            Child::spawn("raw-mailslot", &[&name, "70000"])
                .unwrap()
                .finish(),
        )
        .await
        .unwrap();
        let sender = Child::spawn("send-frames", &[ep.to_string(), N.to_string()]).unwrap();
        let (mut next, mut too_large) = (0u8, 0);
        while next < N {
            match must("recv", rx.next()).await {
                Some(Ok(f)) => {
                    assert_eq!(f, Bytes::from(vec![next; 100]), "message {next}");
                    next += 1;
                }
                Some(Err(e)) if e.kind() == ErrorKind::FrameTooLarge && too_large == 0 => {
                    assert!(e.to_string().contains("65536"), "names the limit: {e}");
                    too_large += 1;
                }
                other => panic!("the shared receiver after an over-long message: {other:?}"),
            }
        }
        if cfg!(unix) {
            assert_eq!(too_large, 1, "the over-long message is reported once");
        }
        must("sender", sender.finish()).await.unwrap();
    });
}

/// Role `raw-after-close ADDRESS`: connects to ADDRESS (`host:port`, or on Unix a socket
/// path) without ductwork, sends the frame `"a"` and the close marker, waits for a line on
/// stdin, sends garbage, then waits for stdin's end before closing.
fn raw_after_close(args: &[String]) -> Result<(), String> {
    use std::io::{BufRead, Write};
    let [addr] = args else {
        return Err("usage: raw-after-close ADDRESS".into());
    };
    let mut s: Box<dyn Write> = match addr.parse::<std::net::SocketAddr>() {
        Ok(a) => Box::new(std::net::TcpStream::connect(a).map_err(|e| e.to_string())?),
        #[cfg(unix)]
        Err(_) => {
            Box::new(std::os::unix::net::UnixStream::connect(addr).map_err(|e| e.to_string())?)
        }
        #[cfg(not(unix))]
        Err(e) => return Err(format!("{addr}: {e}")),
    };
    s.write_all(b"\0\0\0\x01a\xff\xff\xff\xff")
        .map_err(|e| e.to_string())?;
    let mut lines = std::io::stdin().lock().lines();
    lines.next();
    s.write_all(b"garbage").map_err(|e| e.to_string())?;
    lines.count();
    Ok(())
}

#[cfg(feature = "socket")]
#[test]
fn bytes_after_the_close_marker_in_a_later_read_fail_the_connection() {
    let mut endpoints = vec![("tcp://127.0.0.1:0".to_string(), None)];
    #[cfg(all(unix, feature = "pipe"))]
    {
        let name = support::unique("hostile-marker");
        let path = support::unix::private_socket("pipe", &name);
        endpoints.push((format!("pipe://{name}"), Some(path.display().to_string())));
    }
    support::runtime().block_on(async {
        for (ep, path) in endpoints {
            let mut l = must(
                "bind",
                ductwork_transports::bind(&Endpoint::parse(&ep).unwrap()),
            )
            .await
            .unwrap();
            let addr = path.unwrap_or_else(|| l.endpoint().address().to_string());
            let mut child = Child::spawn("raw-after-close", &[&addr]).unwrap();
            let mut c = must("accept", l.accept()).await.unwrap();
            match must("recv", c.next()).await {
                Some(Ok(f)) => assert_eq!(&f[..], b"a", "{ep}"),
                other => panic!("{ep}: the first frame: {other:?}"),
            }
            // The marker is read now or in this wait; no end of stream follows it, so the
            // receiver must still be waiting (the wait is a chance to read, not a bound).
            let early = tokio::time::timeout(std::time::Duration::from_millis(300), c.next());
            if let Ok(r) = early.await {
                panic!("{ep}: after the marker, before the end of stream: {r:?}");
            }
            child.say("go").await.unwrap();
            match must("recv", c.next()).await {
                Some(Err(e)) => assert_eq!(e.kind(), ErrorKind::Protocol, "{ep}: {e}"),
                other => panic!("{ep}: bytes after the close marker gave {other:?}"),
            }
            child.finish().await.unwrap();
        }
    });
}
