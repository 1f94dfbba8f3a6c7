//! A thousand concurrent clients: one echo listener (a child process) holds [`CLIENTS`]
//! connections at once, opened by [`PROCS`] client processes; then every connection
//! exchanges [`MSGS`] sequence-checked messages and closes. Nothing may be lost, duplicated
//! or reordered: each echo must be the message just sent, and after the close the stream
//! must end cleanly (no extra frame).
//!
//! shm runs [`SHM_CLIENTS`] too, now that a connection commits its pages as they are used.

use crate::roles::{good_frame, read_good};
use crate::support::{child::announce_ready, child::Child, must, within};
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};

/// Concurrent clients on tcp, unix and pipe.
#[cfg(target_os = "linux")]
const CLIENTS: u64 = 1_000;
/// Concurrent clients on shm (see the module docs).
#[cfg(target_os = "linux")]
pub const SHM_CLIENTS: u64 = 1_000;
/// Concurrent clients per transport on Windows (the CI leg under Wine, where every process
/// and connection costs far more): the same checks on a smaller crowd.
#[cfg(windows)]
pub const WIN_CLIENTS: u64 = 100;
/// Client processes sharing them.
const PROCS: u64 = 4;
/// Messages per client.
const MSGS: u64 = 100;
/// A bound against hangs for one step of one client.
const STEP: Duration = Duration::from_secs(60);

/// Role `clients EP FIRST N MSGS`: opens `N` connections to `EP` (ids `FIRST..`), announces
/// `connected N`, waits for a stdin line, then on every connection at once sends `MSGS`
/// sequence-numbered frames one at a time, each followed by its echo, closes, and checks
/// the clean end; announces `done`.
pub async fn clients(ep: &str, first: u64, n: u64, msgs: u64) -> Result<(), String> {
    use tokio::io::AsyncBufReadExt;
    let limit = crate::raise_nofile();
    if limit < n + 64 {
        return Err(format!(
            "the open-file limit {limit} is too low for {n} connections"
        ));
    }
    let mut conns = Vec::with_capacity(n as usize);
    for id in first..first + n {
        let c = within("connect", STEP, ductwork_transports::connect(ep)).await?;
        conns.push(c.map_err(|e| format!("client {id}: connect: {e}"))?);
    }
    announce_ready(format!("connected {n}"));
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    within("go", STEP, lines.next_line())
        .await?
        .map_err(|e| e.to_string())?;
    let tasks: Vec<_> = conns
        .into_iter()
        .zip(first..)
        .map(|(c, id)| tokio::spawn(exchange(c, id, msgs)))
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    announce_ready("done");
    Ok(())
}

/// One client's messages: each echo must be the frame just sent; then a clean end.
async fn exchange(mut c: ductwork_core::BoxConnection, id: u64, msgs: u64) -> Result<(), String> {
    for seq in 0..msgs {
        let f = good_frame(id, seq, 32);
        within("send", STEP, c.send(f.clone()))
            .await?
            .map_err(|e| format!("client {id} #{seq}: send: {e}"))?;
        match within("echo", STEP, c.next()).await? {
            Some(Ok(back)) if back == f => {}
            Some(Ok(back)) => {
                return Err(format!(
                    "client {id} #{seq}: got {:?} (id, seq) back: lost, duplicated or reordered",
                    read_good(&back)
                ))
            }
            other => return Err(format!("client {id} #{seq}: echo: {other:?}")),
        }
    }
    within("close", STEP, c.close())
        .await?
        .map_err(|e| format!("client {id}: close: {e}"))?;
    match within("end", STEP, c.next()).await? {
        None => Ok(()),
        other => Err(format!(
            "client {id}: after {msgs} echoes and close: {other:?}"
        )),
    }
}

/// The case for `scheme` with `total` clients.
async fn case(scheme: &str, total: u64) {
    let per = total / PROCS;
    let mut listener = Child::spawn("echo", &[crate::local_endpoint(scheme, "crowd")]).unwrap();
    let ep = must("listener ready", listener.ready()).await.unwrap();
    let pid = listener.id().unwrap();
    let t = Instant::now();
    let mut procs = Vec::new();
    for p in 0..PROCS {
        let args = [
            ep.clone(),
            (p * per).to_string(),
            per.to_string(),
            MSGS.to_string(),
        ];
        procs.push(Child::spawn("clients", &args).unwrap());
    }
    for (p, c) in procs.iter_mut().enumerate() {
        let said = must("clients connected", c.ready()).await;
        let said = said.unwrap_or_else(|e| panic!("{scheme}: client process {p}: {e}"));
        assert_eq!(said, format!("connected {per}"), "{scheme}");
    }
    let connected = t.elapsed();
    let held_rss = crate::memory(pid).map(|m| m.0);
    for c in &mut procs {
        c.say("go").await.unwrap();
    }
    for (p, c) in procs.iter_mut().enumerate() {
        let said = must("clients done", c.ready()).await;
        assert_eq!(said, Ok("done".to_string()), "{scheme}: client process {p}");
    }
    for c in procs {
        must("client exit", c.finish()).await.unwrap();
    }
    let hwm = crate::memory(pid).map(|m| m.1);
    println!(
        "crowd {scheme}: {} clients in {PROCS} processes held at once (connected in {connected:?}), \
         {MSGS} sequence-checked round trips each, all in {:?}; listener VmRSS holding them \
         {}, VmHWM {}",
        per * PROCS,
        t.elapsed(),
        crate::kib(held_rss),
        crate::kib(hwm),
    );
    must("listener exit", listener.finish()).await.unwrap();
}

macro_rules! crowd_tests {
    ($($name:ident => $scheme:literal, $n:expr;)+) => {$(
        #[test]
        fn $name() {
            crate::support::runtime().block_on(case($scheme, $n));
        }
    )+};
}

#[cfg(target_os = "linux")]
crowd_tests! {
    crowd_tcp => "tcp", CLIENTS;
    crowd_unix => "unix", CLIENTS;
    crowd_pipe => "pipe", CLIENTS;
    crowd_shm => "shm", SHM_CLIENTS;
}

#[cfg(windows)]
crowd_tests! {
    crowd_tcp => "tcp", WIN_CLIENTS;
    crowd_pipe => "pipe", WIN_CLIENTS;
    crowd_shm => "shm", WIN_CLIENTS;
}
