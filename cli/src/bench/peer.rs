//! The bench's peer process (`ductwork __peer SPEC`) and the messages both sides exchange.
//!
//! The parent writes a [`PeerSpec`] as JSON on the command line; the peer pins itself to the
//! CPU it was given, connects, and serves until the parent says `Quit`, closes, or the spec's
//! deadline passes (so a peer never outlives a parent that died).

use super::{raw, sys};
use ductwork::{Channel, Direction, Endpoint};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// What the peer process does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Job {
    /// Serve a ductwork endpoint: echo pings, count data. `back` is set for one-way
    /// transports: the peer binds it and sends its replies over `endpoint`.
    Dw {
        /// The parent's bound endpoint.
        endpoint: String,
        /// The endpoint the peer binds for one-way transports.
        back: Option<String>,
    },
    /// Raw TCP baseline: connect to this address.
    RawTcp {
        /// `host:port`.
        addr: String,
    },
    /// Raw Unix-socket baseline: connect to this path.
    RawUnix {
        /// Socket path.
        path: String,
    },
    /// Busy-poll ping-pong on a shared mapping passed as an inherited fd.
    Cacheline {
        /// Inherited memfd.
        mem: i32,
    },
    /// eventfd ping-pong; the payload goes through the shared mapping.
    Eventfd {
        /// Inherited memfd.
        mem: i32,
        /// Inherited eventfd the parent signals.
        ping: i32,
        /// Inherited eventfd the peer signals.
        pong: i32,
    },
    /// One-way copies through a shared ring in a memfd passed as an inherited fd
    /// (`raw-shmcopy`).
    ShmCopy {
        /// Inherited memfd.
        mem: i32,
    },
    /// iceoryx2 ping-pong (`peer-iceoryx2`, see `iox.rs`): echo samples from the service
    /// `{service}/ping` on `{service}/pong`.
    Iceoryx2 {
        /// The services' common name prefix.
        service: String,
    },
}

/// The command that starts `ductwork __peer` with `spec` (this same executable), stdin and
/// stdout closed; callers choose what happens to stderr.
pub fn command(spec: &PeerSpec) -> Result<std::process::Command, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    let spec = serde_json::to_string(spec).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("__peer")
        .arg(spec)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    Ok(cmd)
}

/// The peer's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerSpec {
    /// What to do.
    pub job: Job,
    /// Payload size in bytes (for content checks).
    pub size: usize,
    /// The CPU to pin to, if any.
    pub cpu: Option<usize>,
    /// Give up after this many milliseconds.
    pub deadline_ms: u64,
}

/// What a bench message asks of the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// Echo this message back unchanged.
    Ping,
    /// Count this message (throughput phase) and check its payload.
    Data,
    /// End of the throughput phase: reply with a `Report`.
    End,
    /// The peer's count of data messages.
    Report {
        /// Data messages received.
        received: u64,
        /// Data messages whose payload was wrong.
        bad: u64,
    },
    /// One-way setup: the peer's bound endpoint is in the payload (UTF-8).
    Ready,
    /// The parent is done; the peer exits.
    Quit,
}

/// The typed message every ductwork bench cell carries: a payload of the cell's size.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchMsg {
    /// Sequence number.
    pub seq: u64,
    /// What to do with it.
    pub op: Op,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// [`BenchMsg`] as the peer reads it: the payload borrowed from the received frame.
#[derive(Debug, Deserialize)]
pub struct BenchMsgRef<'a> {
    /// Sequence number.
    pub seq: u64,
    /// What to do with it.
    pub op: Op,
    /// The payload, in place.
    pub payload: &'a [u8],
}

/// The payload content both sides expect for `size` bytes.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(7) as u8)
        .collect()
}

/// Whether a received payload is the expected one, as the throughput phase checks it:
/// payloads up to 64 KiB byte for byte; larger ones by their length, their first and last
/// 4 KiB and 64 bytes at the start of every 4 KiB page in between. A bulk receiver is
/// measured, not `memcmp`: comparing every byte of a 1 MiB message would read 2 MiB more
/// per message than the transport delivered. (The latency phase checks every byte.)
pub fn payload_ok(got: &[u8], expected: &[u8]) -> bool {
    const FULL: usize = 64 << 10;
    const PAGE: usize = 4096;
    const PROBE: usize = 64;
    let n = got.len();
    if n != expected.len() {
        return false;
    }
    if n <= FULL {
        return got == expected;
    }
    got[..PAGE] == expected[..PAGE]
        && got[n - PAGE..] == expected[n - PAGE..]
        && (PAGE..n - PAGE)
            .step_by(PAGE)
            .all(|at| got[at..at + PROBE] == expected[at..at + PROBE])
}

/// A bench connection: one duplex channel, or a pair of one-way channels.
pub enum Link {
    /// Both directions on one connection.
    Duplex(Channel<BenchMsg>),
    /// One-way transports: send on `tx`, receive on `rx`.
    Pair {
        /// Sending side.
        tx: Channel<BenchMsg>,
        /// Receiving side.
        rx: Channel<BenchMsg>,
    },
}

impl Link {
    /// The channel to send on.
    pub fn tx(&mut self) -> &mut Channel<BenchMsg> {
        match self {
            Link::Duplex(c) => c,
            Link::Pair { tx, .. } => tx,
        }
    }

    /// The channel to receive on.
    pub fn rx(&mut self) -> &mut Channel<BenchMsg> {
        match self {
            Link::Duplex(c) => c,
            Link::Pair { rx, .. } => rx,
        }
    }
}

/// Entry point of `ductwork __peer SPEC`; returns the exit code.
pub fn run(spec: &str) -> i32 {
    let spec: PeerSpec = match serde_json::from_str(spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ductwork __peer: bad spec: {e}");
            return super::super::EXIT_USAGE;
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
                    return super::super::EXIT_FAILURE;
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
            super::super::EXIT_FAILURE
        }
    }
}

async fn serve(spec: &PeerSpec) -> Result<(), String> {
    match &spec.job {
        Job::Dw { endpoint, back } => serve_dw(endpoint, back.as_deref(), spec.size).await,
        Job::RawTcp { addr } => {
            let s = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("raw-tcp connect {addr}: {e}"))?;
            let _ = s.set_nodelay(true);
            raw::serve(s, spec.size).await
        }
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

async fn serve_dw(endpoint: &str, back: Option<&str>, size: usize) -> Result<(), String> {
    let ep = Endpoint::parse(endpoint).map_err(|e| e.to_string())?;
    let mut link = match back {
        None => Link::Duplex(Channel::new(
            crate::connect_ep(&ep).await.map_err(|e| e.to_string())?,
        )),
        Some(back) => {
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
            Link::Pair { tx, rx }
        }
    };
    let reliable = link.rx().info().capabilities.is_reliable();
    let expected = pattern(size);
    // Testing aid: die abruptly after this many messages, as a crashed peer would.
    let die_after: Option<u64> = std::env::var("DUCTWORK_BENCH_PEER_DIES_AFTER")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut handled = 0u64;
    let (mut received, mut bad, mut next) = (0u64, 0u64, 0u64);
    loop {
        // Decoded in place: the payload is checked where it lies in the received frame, as a
        // bulk consumer using `decode_frame` would read it, with no owned copy.
        let frame = match link.rx().recv_frame().await {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        let msg: BenchMsgRef<'_> = link.rx().decode_frame(&frame).map_err(|e| e.to_string())?;
        handled += 1;
        if die_after.is_some_and(|n| handled > n) {
            std::process::exit(101);
        }
        match msg.op {
            // The echo is a typed message like any other: an owned value, encoded again.
            Op::Ping => {
                let echo = BenchMsg {
                    seq: msg.seq,
                    op: msg.op,
                    payload: msg.payload.to_vec(),
                };
                link.tx().send(&echo).await.map_err(|e| e.to_string())?
            }
            Op::Data => {
                received += 1;
                if !payload_ok(msg.payload, &expected) || (reliable && msg.seq != next) {
                    bad += 1;
                }
                next = msg.seq + 1;
            }
            Op::End => {
                let report = BenchMsg {
                    seq: msg.seq,
                    op: Op::Report { received, bad },
                    payload: Vec::new(),
                };
                link.tx().send(&report).await.map_err(|e| e.to_string())?;
            }
            Op::Quit => {
                let _ = link.tx().close().await;
                return Ok(());
            }
            Op::Report { .. } | Op::Ready => {}
        }
    }
}

/// Whether a transport with these capabilities needs the two-endpoint setup.
pub fn one_way(direction: Direction) -> bool {
    direction == Direction::OneWay
}

#[cfg(test)]
mod tests {
    use super::{pattern, payload_ok};

    #[test]
    fn payload_check_compares_small_payloads_fully() {
        let want = pattern(1000);
        assert!(payload_ok(&want, &want));
        for at in [0, 500, 999] {
            let mut got = want.clone();
            got[at] ^= 1;
            assert!(!payload_ok(&got, &want), "byte {at}");
        }
        assert!(!payload_ok(&want[..999], &want));
    }

    #[test]
    fn payload_check_samples_large_payloads() {
        let want = pattern(1 << 20);
        assert!(payload_ok(&want, &want));
        // The first and last page and the head of every page are compared.
        for at in [
            0,
            4095,
            4096,
            4096 * 100 + 63,
            (1 << 20) - 4096,
            (1 << 20) - 1,
        ] {
            let mut got = want.clone();
            got[at] ^= 1;
            assert!(!payload_ok(&got, &want), "byte {at}");
        }
        // A message of the wrong length always fails.
        assert!(!payload_ok(&want[..(1 << 20) - 8], &want));
    }
}
