//! The peer side of the conformance suite: roles this executable plays as a child process.
//!
//! Started as `EXE --dw-child ROLE ENDPOINT ARGS...`. Listener roles print `READY <endpoint>`
//! on stdout once bound and exit when their stdin closes (the parent went away). The exit
//! code is 0 on success; failures are printed on stderr and exit with 1.

use bytes::Bytes;
use ductwork_core::{Channel, Endpoint, ErrorKind};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The typed message every case sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Msg {
    pub sender: u32,
    pub seq: u64,
    pub body: Vec<u8>,
    pub note: String,
}

impl Msg {
    pub fn new(sender: u32, seq: u64, body_len: usize) -> Msg {
        Msg {
            sender,
            seq,
            body: (0..body_len).map(|i| (i as u64 ^ seq) as u8).collect(),
            note: format!("from {sender} #{seq} ✓"),
        }
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn run_child(args: &[String]) -> i32 {
    let role = args.first().cloned().unwrap_or_default();
    let rest = args.get(1..).unwrap_or(&[]).to_vec();
    match runtime().block_on(child(&role, &rest)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child role {role} failed: {e}");
            1
        }
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> Result<T, String> {
    args.get(i)
        .ok_or_else(|| format!("missing argument {i}"))?
        .parse()
        .map_err(|_| format!("bad argument {i}"))
}

/// Waits until the parent closes our stdin (or dies).
async fn until_stdin_closes() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

fn ready(ep: &Endpoint) {
    use std::io::Write;
    println!("READY {ep}");
    let _ = std::io::stdout().flush();
}

async fn child(role: &str, args: &[String]) -> Result<(), String> {
    let ep = Endpoint::parse(args.first().ok_or("missing endpoint")?).map_err(|e| e.to_string())?;
    let e2s = |e: ductwork_core::Error| e.to_string();
    match role {
        // Bind, echo every frame on every connection, until stdin closes.
        "echo-server" => {
            let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            ready(l.endpoint());
            let serve = async move {
                loop {
                    match l.accept().await {
                        Ok(mut c) => {
                            tokio::spawn(async move {
                                while let Some(Ok(f)) = c.next().await {
                                    if c.send(f).await.is_err() {
                                        break;
                                    }
                                }
                                let _ = c.close().await;
                            });
                        }
                        Err(e) => eprintln!("accept: {e}"),
                    }
                }
            };
            tokio::select! { _ = serve => {}, _ = until_stdin_closes() => {} }
            Ok(())
        }
        // Connect, do N typed round trips as sender ID, check every echo, close.
        "echo-client" => {
            let id: u32 = arg(args, 1)?;
            let n: u64 = arg(args, 2)?;
            let mut ch: Channel<Msg> =
                Channel::new(ductwork_transports::connect(&ep).await.map_err(e2s)?);
            // On a best-effort transport a request or its echo may be lost: like any UDP
            // application, resend after a while and skip late echoes of earlier requests.
            let best_effort = !ch.info().capabilities.is_reliable();
            for seq in 0..n {
                let m = Msg::new(id, seq, (seq % 300) as usize);
                let mut tries = 0;
                'resend: loop {
                    ch.send(&m).await.map_err(e2s)?;
                    loop {
                        let got = if best_effort {
                            match tokio::time::timeout(Duration::from_millis(300), ch.recv()).await
                            {
                                Ok(r) => r.map_err(e2s)?,
                                Err(_) if tries < 50 => {
                                    tries += 1;
                                    continue 'resend;
                                }
                                Err(_) => {
                                    return Err(format!("no echo for #{seq} after {tries} resends"))
                                }
                            }
                        } else {
                            ch.recv().await.map_err(e2s)?
                        };
                        match got {
                            Some(back) if back == m => break 'resend,
                            Some(back) if best_effort && back.sender == id && back.seq < seq => {}
                            other => return Err(format!("echo mismatch at {seq}: {other:?}")),
                        }
                    }
                }
            }
            ch.close().await.map_err(e2s)
        }
        // Connect, send N messages of SIZE body bytes as sender ID, close cleanly.
        "send-close" => {
            let id: u32 = arg(args, 1)?;
            let n: u64 = arg(args, 2)?;
            let size: usize = arg(args, 3)?;
            let mut ch: Channel<Msg> =
                Channel::new(ductwork_transports::connect(&ep).await.map_err(e2s)?);
            for seq in 0..n {
                ch.feed(&Msg::new(id, seq, size)).await.map_err(e2s)?;
                if seq % 64 == 63 {
                    ch.flush().await.map_err(e2s)?;
                }
            }
            ch.close().await.map_err(e2s)
        }
        // Connect and send 1 KiB messages until killed.
        "stream-forever" => {
            let mut ch: Channel<Msg> =
                Channel::new(ductwork_transports::connect(&ep).await.map_err(e2s)?);
            let mut seq = 0;
            loop {
                ch.send(&Msg::new(0, seq, 1024)).await.map_err(e2s)?;
                seq += 1;
            }
        }
        // Connect, send one message, then idle until killed.
        "send-one-then-wait" => {
            let mut ch: Channel<Msg> =
                Channel::new(ductwork_transports::connect(&ep).await.map_err(e2s)?);
            ch.send(&Msg::new(0, 0, 8)).await.map_err(e2s)?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }
        // Bind with this endpoint's (large) limit; send each client one raw frame of SIZE bytes.
        "blast" => {
            let size: usize = arg(args, 1)?;
            let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            ready(l.endpoint());
            let serve = async move {
                loop {
                    if let Ok(mut c) = l.accept().await {
                        tokio::spawn(async move {
                            let _ = c.send(Bytes::from(vec![7u8; size])).await;
                            // Keep the connection open until the peer goes away.
                            while let Some(Ok(_)) = c.next().await {}
                        });
                    }
                }
            };
            tokio::select! { _ = serve => {}, _ = until_stdin_closes() => {} }
            Ok(())
        }
        // Bind and hold the name until stdin closes.
        "hold" => {
            let l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            ready(l.endpoint());
            until_stdin_closes().await;
            drop(l);
            Ok(())
        }
        // Send exactly max_message raw bytes, check that max+1 is refused, send a 3-byte frame.
        "send-sizes" => {
            let mut c = ductwork_transports::connect(&ep).await.map_err(e2s)?;
            let max = c.info().capabilities.max_message;
            c.send(Bytes::from(vec![1u8; max])).await.map_err(e2s)?;
            match c.send(Bytes::from(vec![2u8; max + 1])).await {
                Err(e) if e.kind() == ErrorKind::FrameTooLarge => {}
                other => return Err(format!("max+1 was not refused: {other:?}")),
            }
            c.send(Bytes::from_static(b"end")).await.map_err(e2s)?;
            c.close().await.map_err(e2s)
        }
        // Write raw garbage to the listener with the subject's own OS-level client.
        "garbage" => {
            let name: String = arg(args, 1)?;
            let subject = crate::subjects::all()
                .into_iter()
                .find(|s| s.name == name)
                .ok_or_else(|| format!("no subject {name}"))?;
            let garbage = subject.garbage.ok_or("subject has no raw client")?;
            garbage(&ep).map_err(|e| format!("raw client: {e}"))
        }
        other => Err(format!("unknown role {other}")),
    }
}
