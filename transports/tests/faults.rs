//! Listeners and connecting sides under faults (Linux), each rule as the
//! contract in `ductwork_core::transport` states it:
//!
//! - **Transient accept errors never end a listener.** A listener child whose
//!   `RLIMIT_NOFILE` is lowered is flooded with raw connections until its accept hits
//!   `EMFILE`; once they are released it serves a new client, and its `accept` never returned
//!   an error (the child exits on the first one). tcp, unix, pipe, shm.
//! - **shm set-up errors say what happened.** A listener out of descriptors refuses with
//!   `Refused` ("could not set up the connection"); a client out of descriptors gets `Io`
//!   ("ran out of file descriptors"), not `Protocol`.
//! - **Every connect has a deadline.** Against a SIGSTOPped listener (shm; unix and pipe with
//!   a full backlog) and a tcp socket that never accepts, `connect` fails with `Timeout`
//!   naming the endpoint and the `connect_timeout`.
//!
//! Child processes are this test binary run again through `support::child`; each is stopped
//! by its pid (SIGCONT first when it was stopped), also when a case fails.
#![cfg(target_os = "linux")]

mod support;

use bytes::Bytes;
use ductwork_core::{Endpoint, ErrorKind};
use futures::{SinkExt, StreamExt};
use std::{
    os::fd::OwnedFd,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use support::{child::Child, runtime as rt};

child_entry!(roles);

/// The descriptor limit of a flooded listener child.
const LIMIT: u64 = 64;
/// Raw connections per flood: well over [`LIMIT`].
const FLOOD: usize = 150;

fn roles(role: &str, args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).cloned().ok_or(format!("{role}: argument {i}"));
    match role {
        "echo-listener" => {
            let limit = args.get(1).and_then(|n| n.parse().ok());
            rt().block_on(echo_listener(&arg(0)?, limit))
        }
        "starved-shm-listener" => rt().block_on(starved_shm_listener(&arg(0)?)),
        "starved-shm-client" => rt().block_on(starved_shm_client(&arg(0)?)),
        _ => Err(format!("unknown role {role}")),
    }
}

/// Lowers this process's soft and hard descriptor limit to `n`.
fn limit_descriptors(n: u64) -> Result<(), String> {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let lim = Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    setrlimit(Resource::Nofile, lim).map_err(|e| format!("setrlimit: {e}"))
}

/// Opens descriptors until the limit refuses one; returns them.
fn use_up_descriptors() -> Vec<OwnedFd> {
    let mut held = Vec::new();
    // Bounded: the limit is low ([`LIMIT`]) when this runs.
    for _ in 0..10_000 {
        match rustix::io::dup(rustix::stdio::stdin()) {
            Ok(fd) => held.push(fd),
            Err(_) => break,
        }
    }
    held
}

/// Binds `ep`, with the descriptor limit lowered to `limit` if given, and echoes every frame
/// on every connection. Announces the bound endpoint, then on each stdin line the number of
/// connections accepted so far. Fails (the child exits 1) the first time `accept` fails.
async fn echo_listener(ep: &str, limit: Option<u64>) -> Result<(), String> {
    let mut listener = ductwork_transports::bind(ep)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(n) = limit {
        limit_descriptors(n)?;
    }
    support::child::announce_ready(listener.endpoint());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        use tokio::io::AsyncBufReadExt;
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {
            support::child::announce_ready(format!("count {}", count.load(Ordering::SeqCst)));
        }
    });
    loop {
        let mut conn = listener
            .accept()
            .await
            .map_err(|e| format!("accept returned an error: {e}"))?;
        accepted.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            while let Some(Ok(frame)) = conn.next().await {
                if conn.send(frame).await.is_err() {
                    break;
                }
            }
        });
    }
}

/// An shm listener with exactly one descriptor free: it can accept a client but not make
/// the client's segment.
async fn starved_shm_listener(ep: &str) -> Result<(), String> {
    let mut listener = ductwork_transports::bind(ep)
        .await
        .map_err(|e| e.to_string())?;
    limit_descriptors(LIMIT)?;
    let mut held = use_up_descriptors();
    held.pop();
    support::child::announce_ready(listener.endpoint());
    // It must stay up (a failed set-up is no reason to stop) until killed.
    match listener.accept().await {
        Ok(_) => Err("a client was set up without descriptors".into()),
        Err(e) => Err(format!("accept returned an error: {e}")),
    }
}

/// Connects to `ep` with exactly one descriptor free (for the socket, none for what the
/// listener passes) and announces `kind|error`.
async fn starved_shm_client(ep: &str) -> Result<(), String> {
    limit_descriptors(LIMIT)?;
    let mut held = use_up_descriptors();
    held.pop();
    let e = match ductwork_transports::connect(ep).await {
        Ok(_) => return Err("connected without descriptors".into()),
        Err(e) => e,
    };
    drop(held);
    support::child::announce_ready(format!("{:?}|{e}", e.kind()));
    Ok(())
}

/// The endpoint of `scheme` for the name `name`.
fn endpoint(scheme: &str, name: &str) -> String {
    match scheme {
        "tcp" => "tcp://127.0.0.1:0".into(),
        "unix" => format!("unix://{}/{name}.sock", std::env::temp_dir().display()),
        _ => format!("{scheme}://{name}"),
    }
}

/// A raw stream socket to `ep`'s listener (non-blocking: `Err` once its backlog is full).
fn raw_connect(ep: &Endpoint) -> std::io::Result<OwnedFd> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = match ep.scheme() {
        "tcp" => {
            let addr: std::net::SocketAddr = ep.address().parse().expect("an IP address");
            let fd = rustix::net::socket_with(
                AddressFamily::INET,
                SocketType::STREAM,
                SocketFlags::NONBLOCK,
                None,
            )?;
            match rustix::net::connect(&fd, &addr) {
                Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
                Err(e) => return Err(e.into()),
            }
            return Ok(fd);
        }
        "unix" => std::path::PathBuf::from(ep.address()),
        s => support::unix::private_socket(s, ep.address()),
    };
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::connect(&sock, &SocketAddrUnix::new(&fd)?)?;
    Ok(sock)
}

/// One frame there and back on a new connection to `ep`.
async fn echo_once(ep: &Endpoint) -> Result<(), String> {
    let ep = ep.with_option("connect_timeout", "20s");
    // A listener still closing the flood's connections may refuse for want of descriptors
    // ("try again later", shm says so at once): a client retries that, a bounded number of
    // times; any other error fails.
    let mut tries = 0;
    let mut c = loop {
        match ductwork_transports::connect(&ep).await {
            Ok(c) => break c,
            Err(e) if e.kind() == ductwork_core::ErrorKind::Refused && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("connect after the flood ({tries} refusals): {e}")),
        }
    };
    c.send(Bytes::from_static(b"still there?"))
        .await
        .map_err(|e| e.to_string())?;
    match support::within("echo", Duration::from_secs(20), c.next()).await? {
        Some(Ok(f)) if f == "still there?" => Ok(()),
        other => Err(format!("echo: {other:?}")),
    }
}

/// The flood case for one transport.
async fn flood_then_recover(scheme: &str) {
    let name = support::unique(&format!("flood-{scheme}"));
    let mut child = Child::spawn(
        "echo-listener",
        &[endpoint(scheme, &name), LIMIT.to_string()],
    )
    .unwrap();
    let ep = Endpoint::parse(&child.ready().await.unwrap()).unwrap();
    let flood: Vec<OwnedFd> = (0..FLOOD)
        .map(|i| raw_connect(&ep).unwrap_or_else(|e| panic!("{scheme}: raw connect {i}: {e}")))
        .collect();
    // Let the listener accept until it runs out of descriptors and retry a while.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.say("count").await.unwrap();
    let seen = child
        .ready()
        .await
        .unwrap_or_else(|e| panic!("{scheme}: the listener died under the flood: {e}"));
    if scheme != "shm" {
        // shm set-ups of raw clients never finish; the others are accepted as they come.
        let n: usize = seen.trim_start_matches("count ").parse().unwrap();
        assert!(
            n < FLOOD,
            "{scheme}: {n} of {FLOOD} accepted: the limit was never hit"
        );
    }
    drop(flood);
    echo_once(&ep)
        .await
        .unwrap_or_else(|e| panic!("{scheme}: no service after the flood: {e}"));
    child.kill().await.unwrap();
}

#[test]
fn tcp_listener_survives_running_out_of_descriptors() {
    rt().block_on(flood_then_recover("tcp"));
}

#[test]
fn unix_listener_survives_running_out_of_descriptors() {
    rt().block_on(flood_then_recover("unix"));
}

#[test]
fn pipe_listener_survives_running_out_of_descriptors() {
    rt().block_on(flood_then_recover("pipe"));
}

#[cfg(target_os = "linux")]
#[test]
fn shm_listener_survives_running_out_of_descriptors() {
    rt().block_on(flood_then_recover("shm"));
}

#[cfg(target_os = "linux")]
#[test]
fn shm_listener_out_of_descriptors_refuses_and_says_why() {
    rt().block_on(async {
        let name = support::unique("starved-l");
        let mut child = Child::spawn("starved-shm-listener", &[format!("shm://{name}")]).unwrap();
        let ep = child.ready().await.unwrap();
        let ep = format!("{ep}?connect_timeout=20s");
        let e = ductwork_transports::connect(&ep).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        let text = e.to_string();
        assert!(text.starts_with(&ep), "{text}");
        assert!(
            text.contains("the listener could not set up the connection"),
            "{text}"
        );
        assert!(text.contains("Too many open files"), "{text}");
        // The listener is still up (its accept never returned): a second client is refused
        // the same way, not "nothing listens".
        let e = ductwork_transports::connect(&ep).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Refused, "{e}");
        child.kill().await.unwrap();
    });
}

#[cfg(target_os = "linux")]
#[test]
fn shm_client_out_of_descriptors_says_so() {
    rt().block_on(async {
        let name = support::unique("starved-c");
        let mut listener = ductwork_transports::bind(format!("shm://{name}"))
            .await
            .unwrap();
        let ep = listener.endpoint().to_string();
        let accepting = tokio::spawn(async move {
            let _ = listener.accept().await;
            std::future::pending::<()>().await
        });
        let mut child = Child::spawn("starved-shm-client", std::slice::from_ref(&ep)).unwrap();
        let said = child.ready().await.unwrap();
        let (kind, text) = said.split_once('|').unwrap();
        assert_eq!(kind, "Io", "{said}");
        assert!(text.starts_with(&ep), "{text}");
        assert!(text.contains("ran out of file descriptors"), "{text}");
        child.finish().await.unwrap();
        accepting.abort();
    });
}

/// Resumes (SIGCONT) the stopped child `pid` when dropped, so that a failing case never
/// leaves it stopped; the [`Child`] itself is killed by its pid when dropped.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::CONT);
        }
    }
}

/// Stops the child by its pid (SIGSTOP); resumed when the returned guard drops.
fn stop(child: &Child) -> Resume {
    let raw = child.id().expect("a running child") as i32;
    let pid = rustix::process::Pid::from_raw(raw).expect("a pid");
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).expect("SIGSTOP");
    // kill(2) returns before a thread running on another core has stopped: wait (bounded)
    // until the kernel reports every thread stopped, where /proc says.
    let all_stopped = || {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{raw}/task")) else {
            return true; // no /proc: nothing to wait on
        };
        tasks.flatten().all(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .map(|st| {
                    st.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('T'))
                })
                .unwrap_or(true)
        })
    };
    for _ in 0..200 {
        if all_stopped() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Resume(raw)
}

/// Connecting to `ep` with `connect_timeout=500ms` fails with `Timeout` in time, naming the
/// endpoint and the deadline.
async fn times_out(ep: &Endpoint) {
    let ep = ep.with_option("connect_timeout", "500ms");
    let t = Instant::now();
    let r = support::within(
        "connect to a stopped listener",
        Duration::from_secs(20),
        ductwork_transports::connect(&ep),
    )
    .await
    .unwrap_or_else(|e| panic!("{ep}: {e}"));
    let e = r.err().unwrap_or_else(|| panic!("{ep}: connected"));
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let text = e.to_string();
    assert!(text.starts_with(&ep.to_string()), "{text}");
    assert!(text.contains("connect_timeout of 500ms"), "{text}");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(10),
        "{took:?}"
    );
}

/// A listener child of `scheme`, SIGSTOPped; for the framed transports its backlog is then
/// filled (a stopped listener's kernel still completes connections until it is full).
async fn stopped_listener_times_out(scheme: &str) {
    let name = support::unique(&format!("stopped-{scheme}"));
    let mut child = Child::spawn("echo-listener", &[endpoint(scheme, &name)]).unwrap();
    let ep = Endpoint::parse(&child.ready().await.unwrap()).unwrap();
    let resume = stop(&child);
    let mut backlog = Vec::new();
    if scheme != "shm" {
        // Bounded: the backlog is at most a few thousand.
        while backlog.len() < 20_000 {
            match raw_connect(&ep) {
                Ok(fd) => backlog.push(fd),
                Err(_) => break,
            }
        }
        assert!(backlog.len() < 20_000, "{scheme}: the backlog never filled");
    }
    times_out(&ep).await;
    drop(resume);
    drop(backlog);
    child.kill().await.unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn connect_to_a_stopped_shm_listener_times_out() {
    rt().block_on(stopped_listener_times_out("shm"));
}

#[test]
fn connect_to_a_stopped_unix_listener_times_out() {
    rt().block_on(stopped_listener_times_out("unix"));
}

#[test]
fn connect_to_a_stopped_pipe_listener_times_out() {
    rt().block_on(stopped_listener_times_out("pipe"));
}

/// A tcp socket that listens with a backlog of 0 and never accepts: once its queue holds a
/// connection, the kernel drops further handshakes and a connect would wait for minutes.
#[test]
fn connect_to_a_tcp_listener_with_a_full_backlog_times_out() {
    rt().block_on(async {
        use rustix::net::{AddressFamily, SocketFlags, SocketType};
        let sock = rustix::net::socket_with(
            AddressFamily::INET,
            SocketType::STREAM,
            SocketFlags::empty(),
            None,
        )
        .unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        rustix::net::bind(&sock, &any).unwrap();
        rustix::net::listen(&sock, 0).unwrap();
        let addr =
            std::net::SocketAddr::try_from(rustix::net::getsockname(&sock).unwrap()).unwrap();
        let ep = Endpoint::parse(&format!("tcp://{addr}")).unwrap();
        let fill: Vec<OwnedFd> = (0..4).map(|_| raw_connect(&ep).unwrap()).collect();
        tokio::time::sleep(Duration::from_millis(200)).await;
        times_out(&ep).await;
        drop(fill);
    });
}
