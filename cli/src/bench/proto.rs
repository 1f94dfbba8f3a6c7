//! What parent and peer process share: the peer's instructions ([`PeerSpec`], passed as JSON
//! on the command line of `ductwork __peer`), the typed message ductwork cells exchange
//! ([`BenchMsg`]), and the parent's handle on a running peer ([`Peer`]).
//!
//! Imports no other bench module: every way of measuring and the peer process itself build
//! on it.

use ductwork::{Channel, Direction};
use serde::{Deserialize, Serialize};
use std::{process::Stdio, time::Duration};
use tokio::{io::AsyncReadExt, process::Child};

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
    /// Request/reply row: bind `endpoint`, say `Ready` on `control` with the endpoint bound
    /// (the real port for port 0), and serve a `patterns::Server` that echoes each request,
    /// until a request with `Op::Quit`.
    ReqRep {
        /// The endpoint to bind.
        endpoint: String,
        /// The parent's plain control endpoint.
        control: String,
    },
    /// Fan-out row: connect `subscribers` `patterns::Subscriber`s to the parent's publisher,
    /// say `Ready` on `control` once all are subscribed, and report their total count there.
    PubSub {
        /// The parent's publisher.
        endpoint: String,
        /// The parent's plain control endpoint.
        control: String,
        /// How many subscribers.
        subscribers: usize,
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
    /// shm ping-pong through the zero-copy API (`shm-loan`, see `loan.rs`): connect to the
    /// parent's bound shm endpoint and echo every message in place.
    ShmLoan {
        /// The parent's bound endpoint.
        endpoint: String,
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

/// Testing aid (`DUCTWORK_BENCH_PEER_DIES_AFTER=N`): a peer exits abruptly after handling
/// this many messages, as a crashed peer would.
pub fn die_after() -> Option<u64> {
    std::env::var("DUCTWORK_BENCH_PEER_DIES_AFTER")
        .ok()
        .and_then(|v| v.parse().ok())
}

/// Whether a transport with these capabilities needs the two-endpoint setup.
pub fn one_way(direction: Direction) -> bool {
    direction == Direction::OneWay
}

/// A peer process that is killed if the cell ends early.
pub struct Peer {
    child: Child,
}

impl Peer {
    /// Starts `ductwork __peer` with `spec`.
    pub fn spawn(spec: &PeerSpec) -> Result<Peer, String> {
        let child = tokio::process::Command::from(command(spec)?)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start the peer process: {e}"))?;
        Ok(Peer { child })
    }

    /// Waits for the peer to exit (up to `limit`), killing it after; returns its stderr if it
    /// failed.
    pub async fn finish(mut self, limit: Duration) -> Result<(), String> {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("waiting for the peer: {e}")),
            Err(_) => {
                let _ = self.child.kill().await;
                return Err("the peer did not exit".into());
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(format!("peer failed ({status}): {}", self.stderr().await))
        }
    }

    /// Kills the peer and returns what it wrote on stderr.
    pub async fn kill(mut self) -> String {
        let _ = self.child.kill().await;
        self.stderr().await
    }

    /// Kills the peer and returns `e` with what the peer wrote on stderr, if anything.
    pub async fn fail(self, e: String) -> String {
        let stderr = self.kill().await;
        if stderr.is_empty() {
            e
        } else {
            format!("{e} (peer: {stderr})")
        }
    }

    /// Waits until the peer exits; for racing against setup steps.
    pub async fn exited(&mut self) -> String {
        let status = self.child.wait().await;
        let err = self.stderr().await;
        match status {
            Ok(s) if err.is_empty() => format!("peer exited early ({s})"),
            Ok(s) => format!("peer exited early ({s}): {err}"),
            Err(e) => format!("peer lost: {e}"),
        }
    }

    async fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut s)).await;
        }
        s.trim().to_string()
    }
}

/// Runs `fut` unless the peer exits first.
pub async fn or_peer_exit<T>(
    peer: &mut Peer,
    fut: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::select! {
        r = fut => r,
        e = peer.exited() => Err(e),
    }
}
