//! The raw baselines a transport row is compared with: what each is, where it exists, which
//! sizes it applies to, what it measures, and how to measure it.
//!
//! - `raw-cacheline`, `raw-eventfd`, `raw-shmcopy`: shared memory between two processes
//!   ([`sys`], Linux only).
//! - `raw-memcpy`: one thread copying buffers ([`raw::memcpy`]).
//! - `raw-unix`, `raw-tcp`: plain tokio streams with a length header ([`raw`]).
//! - `peer-iceoryx2`: the same round trip over the iceoryx2 crate (cargo feature
//!   `peer-iceoryx2`, Linux; `iox.rs`).
//!
//! Which baselines a transport is compared with, nearest first, is [`Baseline::for_transport`]:
//! the one place that knows it.

#[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
use super::iox;
use super::{
    raw::{self, Stream},
    sys,
    types::{Measured, Timing},
};
use std::{path::Path, time::Duration};

/// A raw baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Baseline {
    /// Busy-polled atomics on one shared cache line, 64 B.
    Cacheline,
    /// eventfd wake-ups, payload through a shared mapping, 64 B.
    Eventfd,
    /// One-way copies through a shared ring between two processes (throughput only).
    ShmCopy,
    /// Single-thread memcpy bandwidth (throughput only).
    Memcpy,
    /// Plain Unix stream sockets.
    Unix,
    /// Plain loopback TCP.
    Tcp,
    /// The same round trip over iceoryx2.
    Iceoryx2,
}

/// What a baseline measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measures {
    /// Round-trip latency only.
    Latency,
    /// One-way throughput only.
    Throughput,
    /// Both.
    Both,
}

/// What measuring one baseline cell needs from the runner.
pub struct Env<'a> {
    /// The runtime the stream baselines run on.
    pub rt: &'a tokio::runtime::Runtime,
    /// The CPU the peer is pinned to.
    pub cpu: Option<usize>,
    /// Warm-up and measuring time.
    pub timing: Timing,
    /// How long a stream cell may take in all.
    pub limit: Duration,
    /// A fresh path for a Unix socket.
    pub socket: &'a Path,
}

/// The smallest size `raw-memcpy` and `raw-shmcopy` are measured at: copy bandwidth bounds
/// bulk transfers only; small messages are bound by wake-ups.
pub const COPY_MIN_SIZE: usize = 64 * 1024;
/// The one size the cache-line and eventfd ping-pongs carry.
pub const PING_PONG_SIZE: usize = 64;

use Baseline::*;

impl Baseline {
    /// Every baseline, in report order.
    pub const ALL: [Baseline; 7] = [Cacheline, Eventfd, ShmCopy, Memcpy, Unix, Tcp, Iceoryx2];

    /// Its name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Cacheline => "raw-cacheline",
            Eventfd => "raw-eventfd",
            ShmCopy => "raw-shmcopy",
            Memcpy => "raw-memcpy",
            Unix => "raw-unix",
            Tcp => "raw-tcp",
            Iceoryx2 => "peer-iceoryx2",
        }
    }

    /// Its place in [`Baseline::ALL`].
    pub fn rank(self) -> usize {
        Self::ALL
            .iter()
            .position(|b| *b == self)
            .unwrap_or(Self::ALL.len())
    }

    /// Whether this build asks for it at all: iceoryx2 only with its cargo feature.
    pub fn in_build(self) -> bool {
        self != Iceoryx2 || cfg!(feature = "peer-iceoryx2")
    }

    /// Why it cannot run on this platform, if it cannot.
    pub fn unavailable(self) -> Option<&'static str> {
        let ok = match self {
            Tcp | Memcpy => true,
            Unix => cfg!(unix),
            Cacheline | Eventfd | ShmCopy => sys::HAS_SHM_BASELINES,
            Iceoryx2 => cfg!(all(feature = "peer-iceoryx2", target_os = "linux")),
        };
        let reason = match self {
            Unix => "not available on this platform (Unix only)",
            _ => "not available on this platform (Linux only)",
        };
        (!ok).then_some(reason)
    }

    /// The sizes it is measured at, of the run's `sizes`.
    pub fn sizes(self, sizes: &[usize]) -> Vec<usize> {
        match self {
            Cacheline | Eventfd => vec![PING_PONG_SIZE],
            ShmCopy | Memcpy => sizes
                .iter()
                .copied()
                .filter(|&s| s >= COPY_MIN_SIZE)
                .collect(),
            Unix | Tcp | Iceoryx2 => sizes.to_vec(),
        }
    }

    /// What it measures.
    pub fn measures(self) -> Measures {
        match self {
            Cacheline | Eventfd | Iceoryx2 => Measures::Latency,
            ShmCopy | Memcpy => Measures::Throughput,
            Unix | Tcp => Measures::Both,
        }
    }

    /// Whether it only matters next to shm (the copy bounds): a default run without shm
    /// leaves it out.
    pub fn shm_only(self) -> bool {
        matches!(self, ShmCopy | Memcpy)
    }

    /// The baselines a transport row is compared with, nearest first. `parked` is an shm row
    /// that never spins (`shm?spin=0`).
    pub fn for_transport(scheme: &str, parked: bool) -> Vec<Baseline> {
        let list: &[Baseline] = match scheme {
            "tcp" => &[Tcp],
            // tls:// is tcp plus encryption: the raw TCP stream shows what TLS costs.
            "tls" => &[Tcp],
            // nats:// is two TCP hops through a local server: raw TCP shows what it costs.
            "nats" => &[Tcp],
            "unix" => &[Unix],
            // On Unix, pipe:// and mailslot:// are Unix domain sockets.
            "pipe" | "mailslot" if cfg!(unix) => &[Unix],
            // A parked receiver is woken by the OS, like the eventfd ping-pong. A spinning one
            // polls memory: iceoryx2 (a busy-polling shared-memory library, what a user would
            // pick instead) where the build has it, at every size; else the cache-line
            // ping-pong. Throughput compares with the copies (in the JSON).
            "shm" if parked => &[Eventfd, Cacheline, ShmCopy, Memcpy, Iceoryx2],
            "shm" => &[Iceoryx2, Cacheline, Eventfd, Unix, ShmCopy, Memcpy],
            _ => &[],
        };
        list.iter().copied().filter(|b| b.in_build()).collect()
    }

    /// Measures one cell of `size` bytes.
    pub fn measure(self, size: usize, env: &Env<'_>) -> Result<Measured, String> {
        let (cpu, t) = (env.cpu, env.timing);
        let measured = match self {
            Cacheline | Eventfd => (Some(sys::shm_baseline(self == Cacheline, cpu, t)?), None),
            ShmCopy => (None, Some(sys::shmcopy_baseline(size, cpu, t)?)),
            Memcpy => (None, Some(raw::memcpy(size, t))),
            Unix | Tcp => {
                let stream = if self == Tcp {
                    Stream::Tcp
                } else {
                    Stream::Unix
                };
                let cell = raw::stream_cell(stream, size, cpu, t, env.socket);
                let (rtt, tp) = env.rt.block_on(async {
                    tokio::time::timeout(env.limit, cell)
                        .await
                        .unwrap_or_else(|_| Err(format!("no result within {:?}", env.limit)))
                })?;
                (Some(rtt), Some(tp))
            }
            Iceoryx2 => (Some(iceoryx2(size, cpu, t)?), None),
        };
        debug_assert_eq!(
            self.measures(),
            match measured {
                (Some(_), None) => Measures::Latency,
                (None, Some(_)) => Measures::Throughput,
                _ => Measures::Both,
            }
        );
        Ok(measured)
    }
}

/// The iceoryx2 round trip, where this build has it.
fn iceoryx2(size: usize, cpu: Option<usize>, t: Timing) -> Result<super::types::Rtt, String> {
    #[cfg(all(feature = "peer-iceoryx2", target_os = "linux"))]
    return iox::measure(size, cpu, t);
    #[cfg(not(all(feature = "peer-iceoryx2", target_os = "linux")))]
    {
        let _ = (size, cpu, t);
        Err("peer-iceoryx2 needs Linux and the cargo feature `peer-iceoryx2`".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spinning shm row is compared with iceoryx2 first where the build has it (the
    /// comparison its users make), else with the cache-line ping-pong; a parked one with
    /// the eventfd ping-pong.
    #[test]
    fn spinning_shm_is_compared_with_iceoryx2_when_built_in() {
        let spinning = Baseline::for_transport("shm", false);
        let first = if cfg!(all(feature = "peer-iceoryx2", target_os = "linux")) {
            Iceoryx2
        } else {
            Cacheline
        };
        assert_eq!(spinning.first(), Some(&first), "{spinning:?}");
        assert_eq!(Baseline::for_transport("shm", true).first(), Some(&Eventfd));
        assert_eq!(Baseline::for_transport("unix", false), vec![Unix]);
    }
}
