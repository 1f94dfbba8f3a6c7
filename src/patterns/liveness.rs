//! What the patterns share to keep a connection alive: reconnect backoff, heartbeats, and the
//! link state a connecting side reports.

use crate::{Capabilities, Endpoint, Error, ErrorKind};
use std::time::{Duration, Instant};

/// Exponential backoff with jitter, for reconnecting, and when to give up.
///
/// Attempt `n` (from 1) waits `initial * 2^(n-1)`, capped at `max`, then scaled by a random
/// factor in `[1 - jitter, 1]` so that many clients of one restarted server do not reconnect
/// in lockstep.
///
/// Reconnecting gives up after `max_attempts` failed attempts or once `give_up_after` has
/// passed since the loss, whichever comes first: the link's state becomes
/// [`LinkState::GaveUp`] and the client's calls (or the subscriber's `recv`) fail with
/// [`ErrorKind::ConnectionLost`], naming the endpoint, the attempts and the last attempt's
/// error. The default gives up after 5 minutes: long enough
/// to ride out a restart or a deploy, short enough that a peer gone for good is reported
/// instead of waited for without end (a subscriber's `recv` would otherwise never return).
/// A process that must outlive any outage sets both limits to `None`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The wait before the first attempt. Default: 50 ms.
    pub initial: Duration,
    /// The longest wait between attempts. Default: 5 s.
    pub max: Duration,
    /// The share of each wait that is random, 0.0 to 1.0. Default: 0.5.
    pub jitter: f64,
    /// Give up after this many failed attempts; `None`: no limit by count. Default: `None`.
    pub max_attempts: Option<u32>,
    /// Give up once this long has passed since the connection was lost without an attempt
    /// succeeding (no attempt starts later; the last wait is cut short to start one at this
    /// bound); `None`: no limit by time. Default: 5 minutes.
    pub give_up_after: Option<Duration>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            jitter: 0.5,
            max_attempts: None,
            give_up_after: Some(Duration::from_secs(300)),
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

    /// The wait before attempt `attempt` (from 1) of a reconnect that began at `since`, or
    /// `None` once the limits say to give up (`attempt - 1` attempts failed already).
    pub(crate) fn next_wait(&self, attempt: u32, since: Instant) -> Option<Duration> {
        if self.max_attempts.is_some_and(|max| attempt > max) {
            return None;
        }
        let wait = self.delay(attempt);
        match self.give_up_after {
            None => Some(wait),
            // Cut short to start one last attempt at the bound; past it, none.
            Some(limit) => limit
                .checked_sub(since.elapsed())
                .map(|left| wait.min(left)),
        }
    }

    /// The final error of a reconnect to `endpoint` that gave up after `attempts` failed
    /// attempts since `since`, the last one failing with `last`.
    pub(crate) fn gave_up(
        &self,
        endpoint: &Endpoint,
        attempts: u32,
        since: Instant,
        last: Option<Error>,
    ) -> Error {
        let mut detail = format!(
            "gave up reconnecting after {attempts} failed attempts in {:.1?} (max_attempts {:?}, give_up_after {:?})",
            since.elapsed(),
            self.max_attempts,
            self.give_up_after,
        );
        // In the detail, not as a source: a client keeps a failure as kind and detail.
        if let Some(e) = last {
            detail.push_str(&format!("; the last attempt: {e}"));
        }
        Error::new(ErrorKind::ConnectionLost, endpoint, detail)
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
    /// Reconnecting gave up: `attempts` attempts failed within the [`Backoff`]'s limits.
    /// Final, like `Lost`; calls fail with the error that says so.
    GaveUp {
        /// Failed attempts.
        attempts: u32,
    },
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
            ..Backoff::default()
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

    #[test]
    fn reconnecting_gives_up_past_either_limit_and_cuts_the_last_wait_to_the_deadline() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            jitter: 0.0,
            max_attempts: Some(2),
            give_up_after: None,
        };
        let now = Instant::now();
        assert_eq!(b.next_wait(1, now), Some(Duration::from_millis(100)));
        assert_eq!(b.next_wait(2, now), Some(Duration::from_millis(200)));
        assert_eq!(b.next_wait(3, now), None);
        let by_time = Backoff {
            max_attempts: None,
            give_up_after: Some(Duration::from_secs(60)),
            ..b
        };
        assert_eq!(by_time.next_wait(1_000, now), Some(Duration::from_secs(1)));
        let long_ago = now - Duration::from_millis(59_500);
        let cut = by_time.next_wait(9, long_ago).unwrap();
        assert!(cut <= Duration::from_millis(500), "{cut:?}");
        assert_eq!(by_time.next_wait(9, now - Duration::from_secs(61)), None);
        let forever = Backoff {
            give_up_after: None,
            ..by_time
        };
        assert!(forever.next_wait(u32::MAX, long_ago).is_some());
    }
}
