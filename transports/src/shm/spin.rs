//! How long a waiting side of an shm connection busy-polls before it parks.
//!
//! Parking costs a kernel wake-up (tens to a hundred microseconds on a VM), so a wait that
//! ends soon is better spent spinning; a long one (an idle connection) must park at once and
//! cost no CPU. The right budget depends on the traffic, so by default each side of each
//! connection learns it ([`SpinPolicy`]): it times every wait until the awaited event (data,
//! or space in the ring) and spins a bit longer than recent waits took, up to a cap. An
//! explicit `?spin=` fixes the budget instead. Either way spinning that keeps running out
//! backs off to parking at once (a peer sharing our core cannot answer while we spin).
//!
//! The policy is plain arithmetic on nanoseconds ([`SpinPolicy`], unit-tested with made-up
//! waits); [`Spinner`] adds the clock and the busy loop.

use std::time::{Duration, Instant};

/// The most a learned budget spins: waits longer than this are left to parking. A kernel
/// wake-up costs up to ~100 µs on a VM, so spinning saves a large share of waits up to a few
/// times that, and past it the saving is small next to the wait while the CPU burnt is not.
pub(crate) const LEARNED_CAP: Duration = Duration::from_micros(500);

/// Added to the learned wait: the jitter a spin must cover so that it does not just miss.
const SLACK_NS: u64 = 5_000;

/// Consecutive spins that ran out before backing off to parking at once.
const FAILS_TO_BACK_OFF: u32 = 3;

/// The longest back-off, in waits parked at once before one spin probes again.
const MAX_BACK_OFF: u32 = 64;

/// What a wait's spin budget comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SpinMode {
    /// Learned from the waits of this connection, at most [`LEARNED_CAP`] (the default).
    Learned,
    /// A fixed budget (`?spin=10us`; zero parks at once).
    Fixed(Duration),
}

/// The budget arithmetic: one per waiting side of a connection.
///
/// - **Learning.** `learned` follows the upper envelope of recent waits no longer than the
///   cap: a longer wait raises it at once, a shorter one lowers it by an eighth of the
///   difference, so an occasional fast answer does not make the next usual one miss. Waits
///   that ended after parking count too (they include the wake-up, so they overestimate):
///   that is how a connection that parks learns that it should spin. Waits over the cap
///   teach nothing. The budget is `learned` plus a quarter plus [`SLACK_NS`], at most the
///   cap; nothing learned yet (a new or idle connection) means parking at once.
/// - **Back-off.** A spin that runs out without the event is a failure; after
///   [`FAILS_TO_BACK_OFF`] in a row the side parks at once for 1 wait, then probes with one
///   spin; each further failed probe doubles the parked stretch (up to [`MAX_BACK_OFF`]
///   waits). A spin that catches its event ends the back-off.
#[derive(Debug, Clone)]
pub(crate) struct SpinPolicy {
    mode: SpinMode,
    cap_ns: u64,
    /// The envelope of recent waits (ns); 0 = nothing learned.
    learned_ns: u64,
    /// Spins in a row that ran out.
    fails: u32,
    /// Waits left to park at once.
    parked_left: u32,
    /// The next back-off's length in waits.
    back_off: u32,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl SpinPolicy {
    /// A policy in `mode`; a learned budget never exceeds `cap`.
    pub(crate) fn new(mode: SpinMode, cap: Duration) -> SpinPolicy {
        SpinPolicy {
            mode,
            cap_ns: nanos(cap),
            learned_ns: 0,
            fails: 0,
            parked_left: 0,
            back_off: 1,
        }
    }

    /// The spin budget for the wait that starts now, in nanoseconds (0: park at once).
    pub(crate) fn plan(&mut self) -> u64 {
        if self.parked_left > 0 {
            self.parked_left -= 1;
            return 0;
        }
        match self.mode {
            SpinMode::Fixed(d) => nanos(d),
            SpinMode::Learned if self.learned_ns == 0 => 0,
            SpinMode::Learned => self
                .learned_ns
                .saturating_add(self.learned_ns / 4)
                .saturating_add(SLACK_NS)
                .min(self.cap_ns),
        }
    }

    /// Records how a wait ended: it was planned `budget` ns of spinning, and the event came
    /// `waited` ns after the wait began, `caught` while spinning or (if not) after parking.
    pub(crate) fn record(&mut self, budget: u64, caught: bool, waited: u64) {
        if caught {
            self.fails = 0;
            self.back_off = 1;
        } else if budget > 0 {
            self.fails += 1;
            if self.fails >= FAILS_TO_BACK_OFF {
                self.parked_left = self.back_off;
                self.back_off = (self.back_off * 2).min(MAX_BACK_OFF);
                // One more failure (the probe after this stretch) backs off again.
                self.fails = FAILS_TO_BACK_OFF - 1;
            }
        }
        if waited <= self.cap_ns {
            self.learned_ns = if waited >= self.learned_ns {
                waited.max(1)
            } else {
                self.learned_ns - (self.learned_ns - waited) / 8
            };
        }
    }
}

/// A wait in progress.
#[derive(Debug, Clone, Copy)]
struct Wait {
    started: Instant,
    budget: u64,
    /// The spin ran out (or there was none): the event came after parking.
    parked: bool,
}

/// Bounded busy-waiting before parking, for one waiting side of a connection.
///
/// A wait begins with the first [`spin`](Self::spin) after the caller found nothing, and
/// ends with [`done`](Self::done) (the event came) or [`abandon`](Self::abandon). Only the
/// first `spin` of a wait spins; later ones (after a wake-up that found nothing yet) look
/// once, so a wait spins at most its budget. The spin never holds a tokio worker longer than
/// the budget, which is at most the cap or the `spin` option (at most 10 ms).
#[derive(Debug, Clone)]
pub(crate) struct Spinner {
    policy: SpinPolicy,
    wait: Option<Wait>,
}

impl Spinner {
    /// A spinner whose budgets come from `mode`.
    pub(crate) fn new(mode: SpinMode) -> Spinner {
        Spinner {
            policy: SpinPolicy::new(mode, LEARNED_CAP),
            wait: None,
        }
    }

    /// Spins until `ready()` or this wait's budget runs out; returns whether `ready()` became
    /// true. Starts the wait's clock if it is the first call of a wait.
    pub(crate) fn spin(&mut self, mut ready: impl FnMut() -> bool) -> bool {
        let wait = match &mut self.wait {
            Some(w) => {
                w.parked = true;
                return ready();
            }
            None => self.wait.insert(Wait {
                started: Instant::now(),
                budget: self.policy.plan(),
                parked: true,
            }),
        };
        if wait.budget == 0 {
            return false;
        }
        let budget = Duration::from_nanos(wait.budget);
        loop {
            // The clock is read once per 64 looks: a short wait costs few clock reads.
            for _ in 0..64 {
                if ready() {
                    wait.parked = false;
                    return true;
                }
                std::hint::spin_loop();
            }
            if wait.started.elapsed() >= budget {
                return false;
            }
        }
    }

    /// The awaited event came: learn from how long the wait took (nothing if no wait began).
    pub(crate) fn done(&mut self) {
        if let Some(w) = self.wait.take() {
            let waited = nanos(w.started.elapsed());
            self.policy.record(w.budget, !w.parked, waited);
        }
    }

    /// The wait ended without its event (closed, failed): it teaches nothing.
    pub(crate) fn abandon(&mut self) {
        self.wait = None;
    }

    /// Whether a wait is in progress.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> bool {
        self.wait.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: u64 = 1_000;

    fn learned() -> SpinPolicy {
        SpinPolicy::new(SpinMode::Learned, LEARNED_CAP)
    }

    /// Plans a wait that ends `waited` ns after it began: caught if the budget covers it.
    fn wait(p: &mut SpinPolicy, waited: u64) -> u64 {
        let budget = p.plan();
        p.record(budget, budget >= waited, waited);
        budget
    }

    #[test]
    fn a_new_or_idle_side_parks_at_once() {
        let mut p = learned();
        assert_eq!(p.plan(), 0, "nothing learned: park");
        // An idle connection: every wait is far over the cap.
        for _ in 0..100 {
            assert_eq!(wait(&mut p, 5_000_000 * US), 0);
        }
    }

    #[test]
    fn a_reply_that_came_after_parking_is_caught_spinning_next_time() {
        let mut p = learned();
        // A 64 KiB reply takes 40 us; the first wait parked and measured it with the
        // wake-up (140 us).
        assert_eq!(p.plan(), 0);
        p.record(0, false, 140 * US);
        let budget = p.plan();
        assert!(
            budget >= 140 * US && budget <= nanos(LEARNED_CAP),
            "{budget}"
        );
        // From then on every 40 us wait is caught, and the budget comes down towards it
        // without dropping below it.
        let mut last = budget;
        for _ in 0..200 {
            let b = wait(&mut p, 40 * US);
            assert!(b >= 40 * US && b <= last, "{b} after {last}");
            last = b;
        }
        assert!(last <= 40 * US + 40 * US / 4 + SLACK_NS + US, "{last}");
    }

    #[test]
    fn a_slower_wait_raises_the_budget_at_once() {
        let mut p = learned();
        for _ in 0..50 {
            wait(&mut p, 3 * US);
        }
        let b = p.plan();
        assert!(b < 20 * US, "{b}");
        // One wait ran out (150 us, after parking): the next budget covers it.
        p.record(b, false, 150 * US);
        assert!(p.plan() >= 150 * US);
    }

    #[test]
    fn the_budget_never_exceeds_the_cap() {
        let mut p = learned();
        let cap = nanos(LEARNED_CAP);
        for w in [cap, cap - 1, cap / 2, cap] {
            p.record(0, false, w);
            assert!(p.plan() <= cap);
        }
        // Waits over the cap teach nothing.
        let before = p.plan();
        p.record(before, false, 10 * cap);
        p.record(0, false, 10 * cap);
        assert!(p.plan() <= cap);
    }

    #[test]
    fn spinning_that_keeps_running_out_backs_off_then_probes() {
        // A peer on our core: it answers only once we park, so every spin runs out.
        let mut p = learned();
        p.record(0, false, 30 * US);
        let mut spins = 0;
        let mut plans = Vec::new();
        for _ in 0..400 {
            let b = p.plan();
            plans.push(b);
            if b > 0 {
                spins += 1;
            }
            p.record(b, false, b + 30 * US);
        }
        // Three failures, then parked stretches of 1, 2, 4 ... 64 waits between probes.
        assert!(plans[..3].iter().all(|&b| b > 0), "{:?}", &plans[..4]);
        assert_eq!(plans[3], 0);
        assert!(spins <= 3 + 7 + 400 / 64, "{spins} of 400 waits spun");
        // A probe that catches its event ends the back-off.
        for _ in 0..=MAX_BACK_OFF {
            if p.plan() > 0 {
                break;
            }
        }
        p.record(40 * US, true, 10 * US);
        assert!(p.plan() > 0);
        assert!(p.plan() > 0);
    }

    #[test]
    fn a_fixed_budget_is_kept() {
        let mut p = SpinPolicy::new(SpinMode::Fixed(Duration::from_micros(200)), LEARNED_CAP);
        for w in [1, 10 * US, 150 * US] {
            assert_eq!(wait(&mut p, w), 200 * US);
        }
        let mut zero = SpinPolicy::new(SpinMode::Fixed(Duration::ZERO), LEARNED_CAP);
        for w in [1, 10 * US, 5_000 * US] {
            assert_eq!(wait(&mut zero, w), 0, "spin=0 always parks");
        }
        // A fixed budget that keeps running out backs off as well.
        for _ in 0..FAILS_TO_BACK_OFF {
            assert_eq!(wait(&mut p, 900 * US), 200 * US);
        }
        assert_eq!(p.plan(), 0);
    }

    #[test]
    fn a_spinner_spins_once_per_wait() {
        let mut s = Spinner::new(SpinMode::Fixed(Duration::from_millis(5)));
        // Ready on the third look: caught while spinning.
        let mut looks = 0;
        assert!(s.spin(|| {
            looks += 1;
            looks == 3
        }));
        s.done();
        assert_eq!(s.policy.fails, 0);
        // Budget zero: no look at all; a later call in the same wait looks exactly once.
        let mut s = Spinner::new(SpinMode::Learned);
        let mut looks = 0;
        assert!(!s.spin(|| {
            looks += 1;
            false
        }));
        assert!(!s.spin(|| {
            looks += 1;
            false
        }));
        assert_eq!(looks, 1);
        s.done();
        assert!(s.policy.learned_ns > 0, "a parked wait is learned");
        s.spin(|| true);
        s.abandon();
        assert!(s.wait.is_none());
    }
}
