//! What the patterns share to keep a connection alive: reconnect backoff, heartbeats, and the
//! link state a connecting side reports.

use crate::Capabilities;
use std::time::Duration;

/// Exponential backoff with jitter, for reconnecting.
///
/// Attempt `n` (from 1) waits `initial * 2^(n-1)`, capped at `max`, then scaled by a random
/// factor in `[1 - jitter, 1]` so that many clients of one restarted server do not reconnect
/// in lockstep.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The wait before the first attempt. Default: 50 ms.
    pub initial: Duration,
    /// The longest wait between attempts. Default: 5 s.
    pub max: Duration,
    /// The share of each wait that is random, 0.0 to 1.0. Default: 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The wait before attempt `attempt` (1 for the first).
    pub fn delay(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(30);
        let full = self.initial.saturating_mul(1u32 << doublings).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        full.mul_f64(1.0 - jitter * fastrand::f64())
    }
}

/// Heartbeats: how a pattern notices a dead peer on a transport that cannot see one itself
/// (udp, and mailslot where it applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Heartbeats {
    /// On, with [`Heartbeat::default`], exactly where the transport's capabilities say it does
    /// not report a lost peer (`peer_loss: false`); off elsewhere. The default.
    #[default]
    Auto,
    /// Never.
    Off,
    /// Always, with these settings.
    On(Heartbeat),
}

/// How often to send a heartbeat when idle, and how many may go unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// A heartbeat goes out after this long without sending. Default: 1 s.
    pub interval: Duration,
    /// The peer counts as lost after `interval * misses` without hearing from it. Default: 3.
    pub misses: u32,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Heartbeat {
            interval: Duration::from_secs(1),
            misses: 3,
        }
    }
}

impl Heartbeat {
    /// How long without a frame before the peer counts as lost.
    pub fn bound(&self) -> Duration {
        self.interval.saturating_mul(self.misses.max(1))
    }
}

impl Heartbeats {
    /// The heartbeat to run on a connection with `caps`, if any.
    pub fn resolve(self, caps: &Capabilities) -> Option<Heartbeat> {
        match self {
            Heartbeats::Auto if !caps.peer_loss => Some(Heartbeat::default()),
            Heartbeats::Auto | Heartbeats::Off => None,
            Heartbeats::On(h) => Some(h),
        }
    }
}

/// The state of a connecting side's link to its peer, as [`Client::state`] reports it.
///
/// [`Client::state`]: super::Client::state
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Connected; calls go out.
    Connected,
    /// The connection was lost; attempt `attempt` to connect again is under way. Calls made
    /// now wait for it (within their deadline).
    Reconnecting {
        /// From 1.
        attempt: u32,
    },
    /// Lost for good (no reconnect configured, or the client was closed); calls fail.
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_down_only() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.5,
        };
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d40 = b.delay(40);
            assert!(d40 >= Duration::from_millis(500) && d40 <= Duration::from_secs(1));
        }
        let exact = Backoff { jitter: 0.0, ..b };
        assert_eq!(exact.delay(2), Duration::from_millis(200));
    }
}
