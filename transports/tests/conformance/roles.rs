//! The peer side of the conformance suite: roles this executable plays as a child process
//! (started with `support::child::Child::spawn(ROLE, [ENDPOINT, ARGS...])`).
//!
//! Listener roles announce `READY <endpoint>` (`support::child::announce_ready`) once bound
//! and exit when their stdin closes (the parent went away). A role's error makes the child
//! exit with 1 and is printed on stderr.

use crate::support::{self, child::announce_ready, XorShift};
use bytes::Bytes;
use ductwork_core::{Channel, Endpoint, Error, ErrorKind, FrameWriter};
use futures::{future::poll_fn, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use std::{io::Write, time::Duration};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

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

/// Runs `role` (the child's entry, see `support::child`).
pub fn run(role: &str, args: &[String]) -> Result<(), String> {
    support::runtime().block_on(child(role, args))
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

async fn child(role: &str, args: &[String]) -> Result<(), String> {
    let ep = Endpoint::parse(args.first().ok_or("missing endpoint")?).map_err(|e| e.to_string())?;
    let e2s = |e: ductwork_core::Error| e.to_string();
    match role {
        // Bind, echo every frame on every connection, until stdin closes.
        "echo-server" => {
            let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            announce_ready(l.endpoint());
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
        // Bind; send each client one raw frame of SIZE bytes, then AFTER (default 0) small
        // frames a broken reader must never deliver.
        "blast" => {
            let size: usize = arg(args, 1)?;
            let after: u32 = if args.len() > 2 { arg(args, 2)? } else { 0 };
            let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            announce_ready(l.endpoint());
            let serve = async move {
                loop {
                    if let Ok(mut c) = l.accept().await {
                        tokio::spawn(async move {
                            let _ = c.send(Bytes::from(vec![7u8; size])).await;
                            for i in 0..after {
                                if c.send(Bytes::from(format!("after #{i}"))).await.is_err() {
                                    break;
                                }
                            }
                            // Keep the connection open until the peer goes away.
                            while let Some(Ok(_)) = c.next().await {}
                        });
                    }
                }
            };
            tokio::select! { _ = serve => {}, _ = until_stdin_closes() => {} }
            Ok(())
        }
        // Bind; accept one client; send it a frame of SIZE bytes, which must be refused on
        // send with FrameTooLarge (the client announced a smaller limit), then the frame
        // "after" on the same connection, and close.
        "send-over-limit" => {
            let size: usize = arg(args, 1)?;
            let mut l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            announce_ready(l.endpoint());
            let mut c = l.accept().await.map_err(e2s)?;
            match c.send(Bytes::from(vec![7u8; size])).await {
                Err(e) if e.kind() == ErrorKind::FrameTooLarge => {
                    if !e.to_string().contains(l.endpoint().address()) {
                        return Err(format!("the refusal does not name the endpoint: {e}"));
                    }
                }
                other => return Err(format!("{size} bytes over the peer's limit: {other:?}")),
            }
            c.send(Bytes::from_static(b"after")).await.map_err(e2s)?;
            c.close().await.map_err(e2s)?;
            until_stdin_closes().await;
            Ok(())
        }
        // Bind and hold the name until stdin closes.
        "hold" => {
            let l = ductwork_transports::bind(&ep).await.map_err(e2s)?;
            announce_ready(l.endpoint());
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
        // Put one frame over any limit on the wire, past a sender's own check, with the
        // subject's raw OS-level writer (see `Subject::oversized`).
        "raw-oversized" => {
            let name: String = arg(args, 1)?;
            let subject = crate::subjects::all()
                .into_iter()
                .find(|s| s.name == name)
                .ok_or_else(|| format!("no subject {name}"))?;
            let write = subject
                .oversized
                .ok_or("subject has no raw oversized writer")?;
            write(&ep).map_err(|e| format!("raw oversized writer: {e}"))
        }
        // Connect as sender ID; on every line from stdin (a count N) send the next N messages
        // of `cue_msg`; at the end of stdin close cleanly.
        "send-on-cue" => {
            let id: u32 = arg(args, 1)?;
            let mut ch: Channel<Msg> =
                Channel::new(ductwork_transports::connect(&ep).await.map_err(e2s)?);
            let max = ch.info().capabilities.max_message;
            let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
            let mut seq = 0;
            // Bounded by the parent, which sends a bounded number of lines.
            while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
                let n: u64 = line
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad cue {line:?}"))?;
                for _ in 0..n {
                    ch.feed(&cue_msg(id, seq, max)).await.map_err(e2s)?;
                    seq += 1;
                }
                ch.flush().await.map_err(e2s)?;
            }
            ch.close().await.map_err(e2s)
        }
        // Connect and send rounds of `sized_frame`s, each followed by a sized send with a
        // wrong byte count that must fail and queue nothing (see `sized_round`). Reliable
        // transports send one round then close; best-effort ones repeat rounds (at most 50)
        // until a line arrives on stdin, since any round may be lost.
        "sized-sends" => {
            let mut c = ductwork_transports::connect(&ep).await.map_err(e2s)?;
            let reliable = c.info().capabilities.is_reliable();
            let (stop_tx, stop) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                let _ = lines.next_line().await;
                let _ = stop_tx.send(true);
            });
            for round in 0..if reliable { 1 } else { 50 } {
                sized_round(&mut c, round).await?;
                if *stop.borrow() {
                    break;
                }
                if !reliable {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            c.close().await.map_err(e2s)
        }
        other => Err(format!("unknown role {other}")),
    }
}

/// Message `seq` of sender `id` in `send-on-cue`: every fifth one large (so stream transports
/// read it in parts), the others of varied small sizes; `max` is the frame limit.
pub fn cue_msg(id: u32, seq: u64, max: usize) -> Msg {
    let len = if seq % 5 == 4 {
        (max - 256).min(60_000)
    } else {
        (seq * 37 % 500) as usize
    };
    Msg::new(id, seq, len)
}

/// Valid frames per round of `sized-sends`; frame `SIZED_FRAMES` ends the round.
pub const SIZED_FRAMES: u32 = 36;

/// Valid frame `i` of round `round` in `sized-sends`: a 12-byte header (round, i, length)
/// then a pattern, of a length between 12 and 4 KiB that depends on `i` only.
pub fn sized_frame(round: u32, i: u32) -> Vec<u8> {
    let len = 12 + XorShift::new(u64::from(i) * 0x9e37_79b9 + 7).below(4096) as usize;
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&round.to_be_bytes());
    f.extend_from_slice(&i.to_be_bytes());
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.extend((12..len).map(|j| (j as u32 ^ i) as u8 | 1));
    f
}

/// One round of `sized-sends`: frames `0..=SIZED_FRAMES` by `start_send_sized`, and after
/// each but the last a sized send whose encoder breaks a rule of "Sized sends" in
/// `core/src/transport.rs` (too few bytes, too many, one write past the end, its own error,
/// a length over the limit, bytes for an empty frame). Each must fail as the contract says,
/// and the connection must take the next frame. The bytes a bad encoder writes are 0xEE,
/// which no valid frame contains.
async fn sized_round(c: &mut ductwork_core::BoxConnection, round: u32) -> Result<(), String> {
    let ep = c.info().endpoint.clone();
    let max = c.info().capabilities.max_message;
    let e2s = |e: Error| e.to_string();
    let mut rng = XorShift::new(u64::from(round) + 1);
    for i in 0..=SIZED_FRAMES {
        let frame = sized_frame(round, i);
        poll_fn(|cx| c.poll_ready_unpin(cx)).await.map_err(e2s)?;
        c.start_send_sized(frame.len(), &mut |w| {
            w.write_all(&frame)
                .map_err(|e| Error::io(&ep, "write a valid frame", e))
        })
        .map_err(|e| format!("valid frame {i}: {e}"))?;
        c.flush().await.map_err(e2s)?;
        if i == SIZED_FRAMES {
            break;
        }
        let len = 1 + rng.below(4096) as usize;
        let junk = vec![0xeeu8; len + 8];
        let mut ran = false;
        let (want, what, sized): (ErrorKind, &str, usize) = match i % 6 {
            0 => (ErrorKind::Encode, "one byte too few", len),
            1 => (ErrorKind::Encode, "one byte too many", len),
            2 => (ErrorKind::Encode, "one write past the end", len),
            3 => (ErrorKind::Io, "the encoder's own error", len),
            4 => (ErrorKind::FrameTooLarge, "a length over the limit", max + 1),
            _ => (ErrorKind::Encode, "a byte in an empty frame", 0),
        };
        poll_fn(|cx| c.poll_ready_unpin(cx)).await.map_err(e2s)?;
        let r = c.start_send_sized(sized, &mut |w: &mut FrameWriter<'_>| {
            ran = true;
            match i % 6 {
                0 => w
                    .write_all(&junk[..len - 1])
                    .map_err(|e| Error::io(&ep, "", e)),
                1 => {
                    w.write_all(&junk[..len])
                        .map_err(|e| Error::io(&ep, "", e))?;
                    // Refused (WriteZero, nothing written); the encoder ignores that.
                    let _ = w.write_all(&junk[..1]);
                    Ok(())
                }
                2 => match w.write_all(&junk[..len + 8]) {
                    Err(e) if e.kind() == std::io::ErrorKind::WriteZero => Ok(()),
                    other => Err(Error::new(
                        ErrorKind::Protocol,
                        &ep,
                        format!("a write past the end returned {other:?}, not WriteZero"),
                    )),
                },
                3 => {
                    let _ = w.write_all(&junk[..len / 2]);
                    Err(Error::new(ErrorKind::Io, &ep, "the encoder gave up"))
                }
                // A well-behaved encoder (only the length is wrong): if it runs at all, it
                // writes every announced byte.
                4 => {
                    for _ in 0..sized / 4096 + 1 {
                        let n = (w.len() - w.written()).min(4096);
                        let _ = w.write_all(&vec![0xee; n]);
                    }
                    Ok(())
                }
                _ => {
                    let _ = w.write_all(&junk[..1]);
                    Ok(())
                }
            }
        });
        match r {
            Err(e) if e.kind() == want => {}
            other => return Err(format!("after frame {i}, {what}: {other:?}, not {want:?}")),
        }
        // The contract: a length over the limit is refused before the encoder runs.
        if i % 6 == 4 && ran {
            return Err(format!("after frame {i}: the encoder ran for {what}"));
        }
    }
    Ok(())
}
