//! The roles this suite's test binary plays as a child process (see `support::child`).
//! Listener roles announce their bound endpoint; roles that run "until killed" are bounded
//! by a count and by the child's lifetime watchdog.

use crate::support::{self, child::announce_ready, within};
use bytes::Bytes;
use ductwork_core::ErrorKind;
use futures::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// The cap on frames a "forever" role sends or receives (its lifetime bounds it too).
const FOREVER: u64 = 100_000_000;
/// The frame streaming roles send.
pub const STREAM_FRAME: usize = 1024;
/// How a good client's frames start (garbage never does by chance: 16 bytes).
pub const MAGIC: &[u8; 16] = b"ductwork-trust-1";

/// A good frame: [`MAGIC`], `id`, `seq` (u64 LE each) and a body derived from them.
pub fn good_frame(id: u64, seq: u64, body: usize) -> Bytes {
    let mut v = Vec::with_capacity(32 + body);
    v.extend_from_slice(MAGIC);
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend((0..body).map(|i| (i as u64 ^ seq ^ id) as u8));
    Bytes::from(v)
}

/// `(id, seq)` of a frame made by [`good_frame`], if it is one (body checked too).
pub fn read_good(f: &[u8]) -> Option<(u64, u64)> {
    let rest = f.strip_prefix(MAGIC)?;
    let id = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    let seq = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
    (good_frame(id, seq, rest.len() - 16) == f).then_some((id, seq))
}

/// Runs `role` with `args` (the child's entry).
pub fn run(role: &str, args: &[String]) -> Result<(), String> {
    let arg = |i: usize| args.get(i).cloned().ok_or(format!("{role}: argument {i}"));
    let num = |i: usize| -> Result<u64, String> {
        arg(i)?
            .parse()
            .map_err(|e| format!("{role}: argument {i}: {e}"))
    };
    let rt = support::runtime();
    let r = match role {
        "echo" => rt.block_on(echo(&arg(0)?)),
        "slot-check" => rt.block_on(slot_check(&arg(0)?)),
        "clients" => rt.block_on(crate::crowd::clients(&arg(0)?, num(1)?, num(2)?, num(3)?)),
        "stream-to" => rt.block_on(stream_to(&arg(0)?)),
        "drain-from" => rt.block_on(drain_from(&arg(0)?)),
        "serve-stream" => rt.block_on(serve(&arg(0)?, true)),
        "serve-drain" => rt.block_on(serve(&arg(0)?, false)),
        "die-mid-frame" => crate::hostile::die_mid_frame(&arg(0)?, &arg(1)?),
        #[cfg(target_os = "linux")]
        "exhaust-echo" => rt.block_on(crate::exhaust::listener(&arg(0)?, num(1)?)),
        _ => Err(format!("unknown role {role}")),
    };
    // Not a drop: that would wait for the blocking read of stdin, and an ended listener
    // would linger instead of exiting with its error.
    rt.shutdown_background();
    r
}

fn e2s(e: ductwork_core::Error) -> String {
    e.to_string()
}

/// Role `echo EP`: binds `EP` with the open-file limit raised, announces it and echoes every
/// frame on every connection until stdin closes; exits 1 if `accept` ever fails.
async fn echo(ep: &str) -> Result<(), String> {
    crate::raise_nofile();
    let mut l = ductwork_transports::bind(ep).await.map_err(e2s)?;
    announce_ready(l.endpoint());
    let serve = async {
        loop {
            let mut c = l
                .accept()
                .await
                .map_err(|e| format!("accept failed: {e}"))?;
            tokio::spawn(async move {
                while let Some(Ok(f)) = c.next().await {
                    if c.send(f).await.is_err() {
                        return;
                    }
                }
                let _ = c.close().await;
            });
        }
    };
    tokio::select! {
        r = serve => r,
        () = stdin_closed() => Ok(()),
    }
}

/// Resolves once the parent closed this process's stdin (or died).
pub async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// What [`slot_check`] has seen.
#[derive(Default)]
struct SlotSeen {
    good: u64,
    misordered: u64,
    refused: u64,
}

/// Role `slot-check EP`: binds the mailslot `EP`, receives on it and checks that the good
/// frames ([`good_frame`]) arrive in order; counts the per-message errors (`Decode`,
/// `FrameTooLarge`) a shared receiver reports; ends with any other error. On each stdin line
/// announces `good=N misordered=M refused=R`.
async fn slot_check(ep: &str) -> Result<(), String> {
    let mut l = ductwork_transports::bind(ep).await.map_err(e2s)?;
    announce_ready(l.endpoint());
    let mut rx = l.accept().await.map_err(e2s)?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut seen = SlotSeen::default();
    // Bounded by FOREVER frames and the child's lifetime.
    for _ in 0..FOREVER {
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(_)) => announce_ready(format!(
                    "good={} misordered={} refused={}",
                    seen.good, seen.misordered, seen.refused
                )),
                _ => return Ok(()),
            },
            f = rx.next() => match f {
                Some(Ok(f)) => match read_good(&f) {
                    Some((_, seq)) if seq == seen.good => seen.good += 1,
                    Some(_) => seen.misordered += 1,
                    None => {}
                },
                Some(Err(e)) if matches!(e.kind(), ErrorKind::Decode | ErrorKind::FrameTooLarge) => {
                    seen.refused += 1
                }
                other => return Err(format!("the shared receiver ended: {other:?}")),
            },
        }
    }
    Ok(())
}

/// Role `stream-to EP`: connects and sends [`STREAM_FRAME`]-byte frames until killed.
async fn stream_to(ep: &str) -> Result<(), String> {
    let mut c = ductwork_transports::connect(ep).await.map_err(e2s)?;
    send_forever(&mut c).await
}

async fn send_forever(c: &mut ductwork_core::BoxConnection) -> Result<(), String> {
    for seq in 0..FOREVER {
        c.send(good_frame(0, seq, STREAM_FRAME - 32))
            .await
            .map_err(e2s)?;
    }
    Ok(())
}

async fn recv_forever(c: &mut ductwork_core::BoxConnection) -> Result<(), String> {
    for _ in 0..FOREVER {
        match c.next().await {
            Some(Ok(_)) => {}
            other => return Err(format!("recv: {other:?}")),
        }
    }
    Ok(())
}

/// Role `drain-from EP`: connects, sends one frame (so that the listener accepts it, on
/// every transport) and receives until killed.
async fn drain_from(ep: &str) -> Result<(), String> {
    let mut c = ductwork_transports::connect(ep).await.map_err(e2s)?;
    c.send(good_frame(0, 0, 8)).await.map_err(e2s)?;
    recv_forever(&mut c).await
}

/// Role `serve-stream EP` / `serve-drain EP`: binds, announces, accepts one connection and
/// sends to it (or receives from it) until killed.
async fn serve(ep: &str, send: bool) -> Result<(), String> {
    let mut l = ductwork_transports::bind(ep).await.map_err(e2s)?;
    announce_ready(l.endpoint());
    let mut c = within("accept", Duration::from_secs(60), l.accept())
        .await?
        .map_err(e2s)?;
    if send {
        send_forever(&mut c).await
    } else {
        recv_forever(&mut c).await
    }
}
