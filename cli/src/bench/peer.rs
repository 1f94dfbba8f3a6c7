//! The bench's peer process, `ductwork __peer SPEC`: the other side of every cell.
//!
//! The parent writes a [`PeerSpec`] as JSON on the command line; the peer pins itself to the
//! CPU it was given, connects, and serves until the parent says `Quit`, closes, or the spec's
//! deadline passes (so a peer never outlives a parent that died).

use super::{
    patterns,
    proto::{die_after, BenchMsg, BenchMsgRef, Job, Link, Op, PeerSpec},
    raw, sys,
    types::{pattern, payload_ok},
};
use crate::{EXIT_FAILURE, EXIT_USAGE};
use ductwork::{Channel, Endpoint};
use std::time::{Duration, Instant};

/// Entry point of `ductwork __peer SPEC`; returns the exit code.
pub fn run(spec: &str) -> i32 {
    let spec: PeerSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ductwork __peer: bad spec: {e}");
            return EXIT_USAGE;
        }
    };
    if let Some(cpu) = spec.cpu {
        if let Err(e) = sys::pin_current(cpu) {
            eprintln!("ductwork __peer: cannot pin to CPU {cpu}: {e}");
        }
    }
    let deadline = Instant::now() + Duration::from_millis(spec.deadline_ms);
    let result = match &spec.job {
        Job::Cacheline { mem } => sys::cacheline_peer(*mem, deadline),
        Job::Eventfd { mem, ping, pong } => sys::eventfd_peer(*mem, *ping, *pong, deadline),
        Job::ShmCopy { mem } => sys::shmcopy_peer(*mem, spec.size, deadline),
        #[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
        Job::Iceoryx2 { service } => super::iox::peer(service, spec.size, deadline),
        _ => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ductwork __peer: runtime: {e}");
                    return EXIT_FAILURE;
                }
            };
            rt.block_on(async {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, serve(&spec)).await {
                    Ok(r) => r,
                    Err(_) => Err("deadline passed; giving up".to_string()),
                }
            })
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("ductwork __peer: {e}");
            EXIT_FAILURE
        }
    }
}

async fn serve(spec: &PeerSpec) -> Result<(), String> {
    match &spec.job {
        Job::Dw { endpoint, back } => serve_dw(endpoint, back.as_deref(), spec.size).await,
        Job::ReqRep { endpoint, control } => patterns::serve_reqrep(endpoint, control).await,
        Job::PubSub {
            endpoint,
            control,
            subscribers,
        } => patterns::serve_pubsub(endpoint, control, *subscribers, spec.size).await,
        Job::RawTcp { addr } => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("raw-tcp connect {addr}: {e}"))?;
            let _ = s.set_nodelay(true);
            raw::serve(s, spec.size).await
        }
        Job::ShmLoan { endpoint } => super::loan::serve(endpoint).await,
        #[cfg(unix)]
        Job::RawUnix { path } => {
            let s = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| format!("raw-unix connect {path}: {e}"))?;
            raw::serve(s, spec.size).await
        }
        other => Err(format!("job {other:?} is not supported on this platform")),
    }
}

/// Connects to the parent's endpoint; for one-way transports also binds `back` and tells
/// the parent where it is, so that the parent's messages come in over it.
async fn peer_link(endpoint: &str, back: Option<&str>) -> Result<Link, String> {
    let ep = Endpoint::parse(endpoint).map_err(|e| e.to_string())?;
    let Some(back) = back else {
        let conn = crate::connect_ep(&ep).await.map_err(|e| e.to_string())?;
        return Ok(Link::Duplex(Channel::new(conn)));
    };
    // Bound before connecting, so that it is there when the parent reads Ready.
    let back = Endpoint::parse(back).map_err(|e| e.to_string())?;
    let mut listener = crate::bind_ep(&back).await.map_err(|e| e.to_string())?;
    let mut tx: Channel<BenchMsg> =
        Channel::new(crate::connect_ep(&ep).await.map_err(|e| e.to_string())?);
    let ready = BenchMsg {
        seq: 0,
        op: Op::Ready,
        payload: listener.endpoint().to_string().into_bytes(),
    };
    tx.send(&ready).await.map_err(|e| e.to_string())?;
    let rx = ductwork::accept_channel(&mut listener)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Link::Pair { tx, rx })
}

async fn serve_dw(endpoint: &str, back: Option<&str>, size: usize) -> Result<(), String> {
    let mut link = peer_link(endpoint, back).await?;
    let reliable = link.rx().info().capabilities.is_reliable();
    let expected = pattern(size);
    let die_after = die_after();
    let mut handled = 0u64;
    let (mut received, mut bad, mut next) = (0u64, 0u64, 0u64);
    loop {
        // Decoded in place: the payload is checked where it lies in the connection's read
        // buffer, as a bulk consumer using `recv_with` would read it, with no owned copy.
        let got = link.rx().recv_with(|frame| {
            let msg: BenchMsgRef<'_> = frame.decode()?;
            let reply = match msg.op {
                // The echo is a typed message like any other: an owned value, encoded again.
                Op::Ping => Some(BenchMsg {
                    seq: msg.seq,
                    op: msg.op,
                    payload: msg.payload.to_vec(),
                }),
                Op::Data => {
                    received += 1;
                    if !payload_ok(msg.payload, &expected) || (reliable && msg.seq != next) {
                        bad += 1;
                    }
                    next = msg.seq + 1;
                    None
                }
                Op::End => Some(BenchMsg {
                    seq: msg.seq,
                    op: Op::Report { received, bad },
                    payload: Vec::new(),
                }),
                Op::Quit => Some(BenchMsg {
                    seq: msg.seq,
                    op: Op::Quit,
                    payload: Vec::new(),
                }),
                Op::Report { .. } | Op::Ready => None,
            };
            Ok::<_, ductwork::Error>(reply)
        });
        let reply = match got.await {
            Ok(Some(r)) => r.map_err(|e| e.to_string())?,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        handled += 1;
        if die_after.is_some_and(|n| handled > n) {
            std::process::exit(101);
        }
        let Some(reply) = reply else { continue };
        if reply.op == Op::Quit {
            let _ = link.tx().close().await;
            return Ok(());
        }
        link.tx().send(&reply).await.map_err(|e| e.to_string())?;
    }
}
