//! The udp listener's table of peers, kept apart from the socket so that it can be fuzzed: who
//! said hello, each peer's queue of received datagrams, and the limits on both.
//!
//! - **Peers**: at most `max_peers`. A peer whose connection the application dropped is
//!   forgotten at the next sweep. A peer whose connection still waits for `accept` and that
//!   sent nothing for `idle_timeout` is forgotten too, and `accept` skips its connection. An
//!   accepted connection is the application's: its peer stays until the application drops the
//!   connection or the peer says bye, unless a new peer finds every slot taken; then the
//!   accepted peer silent the longest, if for `idle_timeout` at least, makes room.
//! - **Queues, bounded in bytes**: each queued datagram costs its payload plus
//!   [`DATAGRAM_OVERHEAD`]. One peer's queue holds at most `max_peer_queue`; a datagram that
//!   would pass it is dropped. All queues together hold at most `max_queue`; to make room the
//!   oldest datagram of the longest other queue is dropped, or the new one if its own queue
//!   would be the longest, so that stalled receivers cannot crowd out a peer that is read.
//!   Dropping is within udp's best-effort contract; every drop is counted and logged.

use super::{classify, Datagram};
use bytes::Bytes;
use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

/// What one queued datagram costs beyond its payload (queue slot, allocation header), so that
/// a flood of empty datagrams is bounded too.
pub(crate) const DATAGRAM_OVERHEAD: usize = 64;

/// The listener's limits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Peers known at once.
    pub max_peers: usize,
    /// Bytes queued for one peer.
    pub max_peer_queue: usize,
    /// Bytes queued for all peers together.
    pub max_queue: usize,
    /// How long a peer whose connection was not accepted may stay silent.
    pub idle_timeout: Duration,
}

/// The cost of queueing a payload of `len` bytes.
fn cost(len: usize) -> usize {
    len + DATAGRAM_OVERHEAD
}

/// How a peer's queue ended, once its datagrams are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The peer said bye.
    Bye,
    /// The peer was forgotten before its connection was accepted.
    Expired,
    /// The peer was forgotten, though accepted, to make room for a new one: it was silent
    /// for `idle_timeout` while every peer slot was taken.
    MadeRoom,
    /// The listener's task stopped.
    ListenerGone,
}

/// Whether the application took a peer's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Waiting,
    Accepted,
    Expired,
}

struct State {
    items: VecDeque<Bytes>,
    /// The cost of `items`.
    bytes: usize,
    end: Option<End>,
    admission: Admission,
    /// The connection was dropped: nothing is queued any more.
    receiver_gone: bool,
    waker: Option<Waker>,
}

/// One peer's queue: the listener's task pushes, the peer's connection pops.
struct Queue {
    state: Mutex<State>,
    /// Bytes queued for all peers of the listener.
    total: Arc<AtomicUsize>,
}

impl Queue {
    fn new(total: Arc<AtomicUsize>) -> Queue {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                end: None,
                admission: Admission::Waiting,
                receiver_gone: false,
                waker: None,
            }),
            total,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; should it, the state is still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes the oldest datagram and releases its cost.
    fn pop(&self, s: &mut State) -> Option<Bytes> {
        let d = s.items.pop_front()?;
        let c = cost(d.len());
        s.bytes -= c;
        self.total.fetch_sub(c, Ordering::Relaxed);
        // A burst of small datagrams must not leave a large ring behind.
        if s.items.capacity() > 64 && s.items.len() * 4 < s.items.capacity() {
            s.items.shrink_to(s.items.capacity() / 2);
        }
        Some(d)
    }

    /// Ends the queue (unless it already ended) and wakes its reader.
    fn end(&self, end: End) {
        let waker = {
            let mut s = self.lock();
            s.end.get_or_insert(end);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

/// What a connection reads: its peer's queue.
pub(crate) struct Inbox(Arc<Queue>);

/// One step of reading an [`Inbox`].
#[derive(Debug)]
pub(crate) enum Popped {
    /// The next datagram's payload.
    Data(Bytes),
    /// No more datagrams, and why.
    End(End),
}

impl Inbox {
    /// The next datagram, or the end once every queued one was read.
    pub(crate) fn poll_pop(&self, cx: &mut Context<'_>) -> Poll<Popped> {
        let mut s = self.0.lock();
        if let Some(d) = self.0.pop(&mut s) {
            return Poll::Ready(Popped::Data(d));
        }
        if let Some(end) = s.end {
            return Poll::Ready(Popped::End(end));
        }
        match &mut s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            w => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Marks the connection accepted by the application. False if its peer was forgotten
    /// first (idle): the connection is dead and must be skipped.
    pub(crate) fn accept(&self) -> bool {
        let mut s = self.0.lock();
        match s.admission {
            Admission::Waiting => {
                s.admission = Admission::Accepted;
                true
            }
            Admission::Accepted => true,
            Admission::Expired => false,
        }
    }

    /// Bytes queued here (payloads plus overhead).
    fn bytes(&self) -> usize {
        self.0.bytes()
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.receiver_gone = true;
        self.0.total.fetch_sub(s.bytes, Ordering::Relaxed);
        s.bytes = 0;
        s.items = VecDeque::new();
        s.waker = None;
    }
}

/// A known peer, as the table holds it.
struct Peer {
    queue: Arc<Queue>,
    last_heard: Instant,
}

impl Drop for Peer {
    fn drop(&mut self) {
        // Whatever ended it earlier (bye, expiry) stays; otherwise the table itself is gone.
        self.queue.end(End::ListenerGone);
    }
}

/// What the listener's task must do about one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing (queued, dropped, or ignored).
    Nothing,
    /// Welcome a known peer again (our welcome was lost).
    Welcome,
    /// A new peer and there is room: make its connection with [`Table::admit`] and welcome it.
    Admit,
    /// A new peer and no room: answer with a refusal naming `max_peers`.
    Refuse,
}

/// Datagrams and peers the table turned away, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// Dropped because the sender's own queue was full.
    pub peer_full: u64,
    /// Dropped (new or evicted old) because the listener's queues together were full.
    pub listener_full: u64,
    /// Hellos refused for lack of a peer slot.
    pub refused: u64,
    /// Peers forgotten because they stayed silent while their connection waited.
    pub expired: u64,
    /// Accepted peers forgotten because they stayed silent while the listener was full.
    pub made_room: u64,
}

/// The listener's peers and their queues.
pub(crate) struct Table {
    limits: Limits,
    peers: HashMap<SocketAddr, Peer>,
    /// Queues whose peer left (bye, expiry) but whose connection still holds datagrams: they
    /// count towards `max_queue` and can be made to give room.
    retired: Vec<Arc<Queue>>,
    total: Arc<AtomicUsize>,
    counters: Counters,
    /// For the log.
    endpoint: String,
}

impl Table {
    /// An empty table with `limits`; `endpoint` names the listener in the log.
    pub(crate) fn new(limits: Limits, endpoint: String) -> Table {
        Table {
            limits,
            peers: HashMap::new(),
            retired: Vec::new(),
            total: Arc::new(AtomicUsize::new(0)),
            counters: Counters::default(),
            endpoint,
        }
    }

    /// Peers known now.
    pub(crate) fn len(&self) -> usize {
        self.peers.len()
    }

    /// Bytes queued for all peers (payloads plus overhead).
    pub(crate) fn queued(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// What was turned away so far.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> Counters {
        self.counters
    }

    /// Handles one datagram from `from` received at `now`.
    pub(crate) fn datagram(&mut self, from: SocketAddr, d: &[u8], now: Instant) -> Action {
        match classify(d) {
            Datagram::Hello => self.hello(from, now),
            Datagram::Data(payload) => {
                self.data(from, payload, now);
                Action::Nothing
            }
            Datagram::Bye => {
                self.bye(from);
                Action::Nothing
            }
            Datagram::Empty => Action::Nothing,
            Datagram::Welcome | Datagram::Refused(_) | Datagram::Unknown(_) => {
                let tag = d.first().copied().unwrap_or_default();
                tracing::debug!(endpoint = %self.endpoint, %from, tag, "udp datagram with a tag a listener does not take dropped");
                Action::Nothing
            }
        }
    }

    fn hello(&mut self, from: SocketAddr, now: Instant) -> Action {
        if let Some(p) = self.peers.get_mut(&from) {
            if !p.queue.lock().receiver_gone {
                p.last_heard = now;
                return Action::Welcome;
            }
            // Its connection was dropped: this is a new connection from the same address.
            self.remove(from);
        }
        if self.peers.len() >= self.limits.max_peers {
            self.sweep(now);
        }
        if self.peers.len() >= self.limits.max_peers {
            self.make_room_for_a_peer(now);
        }
        if self.peers.len() < self.limits.max_peers {
            return Action::Admit;
        }
        self.counters.refused += 1;
        if self.counters.refused.is_power_of_two() {
            let (endpoint, max_peers, refused) =
                (&self.endpoint, self.limits.max_peers, self.counters.refused);
            tracing::warn!(endpoint = %endpoint, %from, max_peers, refused, "udp peer refused: every peer slot is taken");
        }
        Action::Refuse
    }

    /// With every slot taken, forgets the accepted peer that has been silent the longest, if
    /// for `idle_timeout` at least: hellos whose connections the application accepts and
    /// holds must not lock the listener for good either. (A peer that keeps sending keeps
    /// its slot.) Its connection's reader learns it (`End::MadeRoom`).
    fn make_room_for_a_peer(&mut self, now: Instant) {
        let idle = self.limits.idle_timeout;
        let Some((&from, _)) = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.last_heard) >= idle)
            .min_by_key(|(_, p)| p.last_heard)
        else {
            return;
        };
        self.counters.made_room += 1;
        tracing::debug!(endpoint = %self.endpoint, %from, "udp peer forgotten to make room: silent for idle_timeout while the listener was full");
        if let Some(p) = self.peers.remove(&from) {
            p.queue.end(End::MadeRoom);
            self.retire(p);
        }
    }

    /// Records the peer `from`, after [`datagram`](Self::datagram) said [`Action::Admit`] for
    /// it, and returns what its connection reads.
    pub(crate) fn admit(&mut self, from: SocketAddr, now: Instant) -> Inbox {
        let queue = Arc::new(Queue::new(self.total.clone()));
        let old = self.peers.insert(
            from,
            Peer {
                queue: queue.clone(),
                last_heard: now,
            },
        );
        if let Some(old) = old {
            self.retire(old);
        }
        Inbox(queue)
    }

    fn bye(&mut self, from: SocketAddr) {
        if let Some(p) = self.peers.remove(&from) {
            p.queue.end(End::Bye);
            self.retire(p);
        }
    }

    /// Removes `from`; its queue keeps what its connection has not read yet.
    fn remove(&mut self, from: SocketAddr) {
        if let Some(p) = self.peers.remove(&from) {
            self.retire(p);
        }
    }

    /// Keeps a departed peer's queue where room can be made, if it still holds datagrams.
    fn retire(&mut self, p: Peer) {
        let keep = {
            let s = p.queue.lock();
            !s.receiver_gone && !s.items.is_empty()
        };
        if keep {
            self.retired.push(p.queue.clone());
        }
    }

    /// Queues a data datagram for its peer (see the module docs for what is dropped).
    fn data(&mut self, from: SocketAddr, payload: &[u8], now: Instant) {
        let Some(peer) = self.peers.get_mut(&from) else {
            tracing::debug!(endpoint = %self.endpoint, %from, "udp data from an unknown peer dropped");
            return;
        };
        peer.last_heard = now;
        let queue = peer.queue.clone();
        let c = cost(payload.len());
        let own = {
            let s = queue.lock();
            if s.receiver_gone {
                drop(s);
                self.remove(from);
                return;
            }
            s.bytes
        };
        let before = self.dropped();
        if own + c > self.limits.max_peer_queue {
            self.counters.peer_full += 1;
            return self.log_drop(before, from, "its receiver is slow: its queue is full");
        }
        if !self.make_room(&queue, own + c, c) {
            self.counters.listener_full += 1;
            return self.log_drop(before, from, "the listener's queues are full");
        }
        // Room may have been made by dropping a stalled receiver's oldest datagrams.
        self.log_drop(
            before,
            from,
            "the listener's queues are full: older datagrams of the longest queue dropped",
        );
        let waker = {
            let mut s = queue.lock();
            // The receiver may have gone meanwhile: then nothing may be charged to it.
            if s.receiver_gone {
                return;
            }
            s.items.push_back(Bytes::copy_from_slice(payload));
            s.bytes += c;
            self.total.fetch_add(c, Ordering::Relaxed);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Drops the oldest datagrams of the longest other queue until `max_queue` has room for
    /// `add` more bytes in `own`, which then holds `need`. False if `own` would be the
    /// longest queue: then the new datagram is the one to drop. Each round of the loop
    /// either makes room or empties a queue, so it runs at most once per queue.
    fn make_room(&mut self, own: &Arc<Queue>, need: usize, add: usize) -> bool {
        let fits = |t: &Table| t.total.load(Ordering::Relaxed) + add <= t.limits.max_queue;
        for _ in 0..=self.peers.len() + self.retired.len() {
            if fits(self) {
                return true;
            }
            let longest = self
                .peers
                .values()
                .map(|p| &p.queue)
                .chain(&self.retired)
                .filter(|q| !Arc::ptr_eq(q, own))
                .map(|q| (q.bytes(), q))
                .max_by_key(|(bytes, _)| *bytes);
            let Some((bytes, victim)) = longest else {
                return false;
            };
            if bytes <= need {
                return false;
            }
            let victim = victim.clone();
            let mut s = victim.lock();
            while !fits(self) && victim.pop(&mut s).is_some() {
                self.counters.listener_full += 1;
            }
        }
        fits(self)
    }

    /// Datagrams dropped so far, for whatever reason.
    fn dropped(&self) -> u64 {
        self.counters.peer_full + self.counters.listener_full
    }

    /// Logs at `warn` each time the count of drops since `before` reached a new power of two
    /// (1, 2, 4, ...), so that a flood is visible without flooding the log.
    fn log_drop(&self, before: u64, from: SocketAddr, why: &str) {
        let dropped = self.dropped();
        if dropped > 0 && (before == 0 || dropped.ilog2() > before.ilog2()) {
            let (endpoint, queued) = (&self.endpoint, self.queued());
            tracing::warn!(endpoint = %endpoint, %from, dropped, queued, "udp datagrams dropped: {why}");
        }
    }

    /// Forgets peers whose connection was dropped, and peers whose connection still waits
    /// for `accept` and that sent nothing for `idle_timeout`. Returns how many it forgot.
    pub(crate) fn sweep(&mut self, now: Instant) -> usize {
        let idle = self.limits.idle_timeout;
        let mut gone = Vec::new();
        for (a, p) in &self.peers {
            match forgettable(p, now, idle) {
                Forget::No => {}
                Forget::Dropped => gone.push(*a),
                Forget::Expired => {
                    self.counters.expired += 1;
                    tracing::debug!(endpoint = %self.endpoint, from = %a, "udp peer forgotten: silent while its connection waited for accept");
                    gone.push(*a);
                }
            }
        }
        for a in &gone {
            self.remove(*a);
        }
        self.retired.retain(|q| {
            let s = q.lock();
            !s.receiver_gone && !s.items.is_empty()
        });
        gone.len()
    }
}

/// Why a peer is forgotten at a sweep.
enum Forget {
    No,
    /// The application dropped its connection.
    Dropped,
    /// Silent for `idle_timeout` while its connection waited for `accept`.
    Expired,
}

/// Whether a peer is to be forgotten now; one found idle is marked expired on the spot, so
/// that `accept` cannot take its connection any more.
fn forgettable(p: &Peer, now: Instant, idle: Duration) -> Forget {
    let waker = {
        let mut s = p.queue.lock();
        if s.receiver_gone {
            return Forget::Dropped;
        }
        if s.admission != Admission::Waiting || now.saturating_duration_since(p.last_heard) < idle {
            return Forget::No;
        }
        s.admission = Admission::Expired;
        s.end.get_or_insert(End::Expired);
        s.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
    Forget::Expired
}

/// The fuzz target `udp_tags` (see `fuzz/`): runs the peer table, and the client's reading of
/// each datagram, over events read from `input`, and checks the limits after every event.
///
/// `input`: four bytes of limits (peers, queue sizes, idle timeout), then events, each an
/// opcode byte and its operands: a datagram from one of a few addresses (its tag, then see
/// `fuzz_datagram`; the opcode's top bit says whether the accept queue had room), time
/// passing, a sweep, a connection reading, dropping or being accepted.
pub(crate) fn fuzz_one(input: &[u8]) {
    let mut input = input.iter().copied();
    let mut next = move || input.next();
    let (Some(a), Some(b), Some(c), Some(d)) = (next(), next(), next(), next()) else {
        return;
    };
    let max_peer_queue = DATAGRAM_OVERHEAD + 1 + usize::from(b) * 64;
    let limits = Limits {
        max_peers: 1 + usize::from(a % 8),
        max_peer_queue,
        max_queue: max_peer_queue * (1 + usize::from(c % 6)),
        idle_timeout: Duration::from_millis(1 + u64::from(d)),
    };
    let mut table = Table::new(limits, "udp://fuzz".into());
    let mut now = Instant::now();
    let mut inboxes: Vec<Inbox> = Vec::new();
    while let Some(op) = next() {
        match op % 8 {
            0..=2 => {
                let from =
                    SocketAddr::from(([127, 0, 0, 1], 1000 + u16::from(next().unwrap_or(0) % 12)));
                let tag = next().unwrap_or(0);
                let datagram = fuzz_datagram(tag, &mut next);
                fuzz_client_reads(&datagram);
                match table.datagram(from, &datagram, now) {
                    Action::Admit => {
                        assert!(table.len() < limits.max_peers, "admitted past max_peers");
                        if op & 0x80 == 0 {
                            inboxes.push(table.admit(from, now));
                        }
                    }
                    Action::Refuse => assert!(table.len() >= limits.max_peers),
                    Action::Welcome | Action::Nothing => {}
                }
            }
            3 => now += Duration::from_millis(u64::from(next().unwrap_or(0))),
            4 => {
                table.sweep(now);
            }
            5..=7 if !inboxes.is_empty() => {
                let i = usize::from(next().unwrap_or(0)) % inboxes.len();
                fuzz_connection(&mut inboxes, i, op % 8, &limits);
            }
            _ => {}
        }
        let queued: usize = inboxes.iter().map(Inbox::bytes).sum();
        assert_eq!(table.queued(), queued, "the total is the sum of the queues");
        assert!(
            queued <= limits.max_queue,
            "{queued} bytes queued, over max_queue"
        );
        assert!(table.len() <= limits.max_peers, "more peers than max_peers");
        for inbox in &inboxes {
            assert!(
                inbox.bytes() <= limits.max_peer_queue,
                "a queue over max_peer_queue"
            );
        }
    }
}

/// A datagram with `tag`: a length byte, then under 32 that many bytes of the input, else a
/// payload of up to 7 KiB of one byte (so that large datagrams cost the input little).
fn fuzz_datagram(tag: u8, next: &mut impl FnMut() -> Option<u8>) -> Vec<u8> {
    let mut d = vec![tag];
    match next() {
        None => {}
        Some(n @ 0..=31) => d.extend((0..n).map_while(|_| next())),
        Some(n) => d.resize(1 + usize::from(n - 32) * 32, n),
    }
    d
}

/// What a client does with a datagram from a listener: no panic, and a refusal reason that
/// is short and printable.
fn fuzz_client_reads(datagram: &[u8]) {
    if let super::Answer::Refused(why) = super::answer(datagram) {
        assert!(why.len() <= super::MAX_REASON, "reason too long");
        assert!(
            why.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{why:?}"
        );
    }
}

/// One connection event of [`fuzz_one`]: `5` reads what is queued, `6` drops the
/// connection, `7` accepts it.
fn fuzz_connection(inboxes: &mut Vec<Inbox>, i: usize, op: u8, limits: &Limits) {
    match op {
        5 => {
            let mut cx = Context::from_waker(futures::task::noop_waker_ref());
            // Bounded: every datagram queued costs at least the overhead.
            for _ in 0..=limits.max_queue / DATAGRAM_OVERHEAD {
                match inboxes[i].poll_pop(&mut cx) {
                    Poll::Ready(Popped::Data(d)) => assert!(d.len() < limits.max_peer_queue),
                    Poll::Ready(Popped::End(_)) | Poll::Pending => break,
                }
            }
        }
        6 => {
            inboxes.swap_remove(i);
        }
        _ => {
            inboxes[i].accept();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn table(max_peers: usize, max_peer_queue: usize, max_queue: usize) -> Table {
        let limits = Limits {
            max_peers,
            max_peer_queue,
            max_queue,
            idle_timeout: SECOND,
        };
        Table::new(limits, "udp://test".into())
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Says hello from `port` and admits it (there must be room).
    fn join(t: &mut Table, port: u16, now: Instant) -> Inbox {
        assert_eq!(t.datagram(addr(port), &[1], now), Action::Admit);
        t.admit(addr(port), now)
    }

    fn data(t: &mut Table, port: u16, len: usize, fill: u8, now: Instant) {
        let mut d = vec![fill; len + 1];
        d[0] = 0;
        assert_eq!(t.datagram(addr(port), &d, now), Action::Nothing);
    }

    fn pop(inbox: &Inbox) -> Poll<Popped> {
        inbox.poll_pop(&mut Context::from_waker(futures::task::noop_waker_ref()))
    }

    /// A full table refuses; a peer that stayed silent while its connection waited is
    /// forgotten after `idle_timeout` (its connection cannot be accepted any more), while an
    /// accepted one stays; then a new peer has room.
    #[test]
    fn silent_waiting_peers_expire_and_make_room() {
        let t0 = Instant::now();
        let mut t = table(2, 4096, 8192);
        let waiting = join(&mut t, 1, t0);
        let accepted = join(&mut t, 2, t0);
        assert!(accepted.accept());
        assert_eq!(t.datagram(addr(3), &[1], t0), Action::Refuse);
        assert_eq!(t.datagram(addr(1), &[1], t0), Action::Welcome, "known peer");
        assert_eq!(t.datagram(addr(3), &[1], t0 + SECOND / 2), Action::Refuse);
        // The hello of a new peer at a full table sweeps first.
        assert_eq!(t.datagram(addr(3), &[1], t0 + SECOND), Action::Admit);
        assert!(
            !waiting.accept(),
            "an expired connection cannot be accepted"
        );
        assert!(matches!(
            pop(&waiting),
            Poll::Ready(Popped::End(End::Expired))
        ));
        assert!(
            matches!(pop(&accepted), Poll::Pending),
            "the accepted one stays"
        );
        assert_eq!(
            (t.len(), t.counters().expired, t.counters().refused),
            (1, 1, 2)
        );
    }

    /// A full table makes room for a new peer by forgetting the accepted peer silent the
    /// longest, once silent for `idle_timeout`; a peer that keeps sending keeps its slot.
    #[test]
    fn accepted_silent_peers_make_room_only_when_the_table_is_full() {
        let t0 = Instant::now();
        let mut t = table(2, 4096, 8192);
        let quiet = join(&mut t, 1, t0);
        let talking = join(&mut t, 2, t0);
        assert!(quiet.accept() && talking.accept());
        t.sweep(t0 + 2 * SECOND);
        assert_eq!(
            t.len(),
            2,
            "accepted peers stay while there is no one to make room for"
        );
        data(&mut t, 2, 10, 1, t0 + 2 * SECOND);
        assert_eq!(t.datagram(addr(3), &[1], t0 + 2 * SECOND), Action::Admit);
        let _new = t.admit(addr(3), t0 + 2 * SECOND);
        assert!(matches!(
            pop(&quiet),
            Poll::Ready(Popped::End(End::MadeRoom))
        ));
        assert!(matches!(pop(&talking), Poll::Ready(Popped::Data(_))));
        // The talking peer was heard within idle_timeout, and so was the new one: no room.
        assert_eq!(
            t.datagram(addr(4), &[1], t0 + 2 * SECOND + SECOND / 2),
            Action::Refuse
        );
        assert_eq!(t.counters().made_room, 1);
    }

    /// Hearing from a peer keeps it; a dropped connection's peer is forgotten at the next
    /// sweep and can connect again from the same address.
    #[test]
    fn heard_peers_stay_and_dropped_ones_go() {
        let t0 = Instant::now();
        let mut t = table(4, 4096, 8192);
        let a = join(&mut t, 1, t0);
        let b = join(&mut t, 2, t0);
        data(&mut t, 1, 10, 7, t0 + SECOND / 2);
        drop(b);
        assert_eq!(
            t.sweep(t0 + SECOND),
            1,
            "the dropped one goes; the heard one stays"
        );
        assert_eq!(t.len(), 1);
        assert!(matches!(pop(&a), Poll::Ready(Popped::Data(d)) if d[..] == [7; 10]));
        let _b = join(&mut t, 2, t0 + SECOND);
        assert_eq!(t.len(), 2);
    }

    /// One peer's queue stops at `max_peer_queue`; the listener's at `max_queue`, where room
    /// is made by dropping from the longest queue, so a fresh peer still gets through while
    /// stalled receivers hold everything they may.
    #[test]
    fn queues_are_bounded_in_bytes_and_stalled_ones_give_way() {
        let t0 = Instant::now();
        let c = cost(1000);
        let mut t = table(8, 4 * c, 10 * c);
        let stalled: Vec<Inbox> = (1..=4).map(|p| join(&mut t, p, t0)).collect();
        for round in 0..10u8 {
            for p in 1..=4 {
                data(&mut t, p, 1000, round, t0);
            }
        }
        assert!(t.queued() <= 10 * c, "{} queued", t.queued());
        assert!(stalled.iter().all(|i| i.bytes() <= 4 * c));
        let dropped = t.counters().peer_full + t.counters().listener_full;
        assert_eq!(dropped, 40 - 10, "everything past the limits is counted");
        let good = join(&mut t, 9, t0);
        data(&mut t, 9, 1000, 42, t0);
        assert!(matches!(pop(&good), Poll::Ready(Popped::Data(d)) if d[0] == 42));
        assert!(t.queued() <= 10 * c);
        // Dropping the stalled connections gives their bytes back.
        drop(stalled);
        assert_eq!(t.queued(), good.bytes());
    }

    /// A bye ends the queue after what was queued, and the queue still counts (and can give
    /// way) until it is read.
    #[test]
    fn bye_comes_after_the_queued_datagrams() {
        let t0 = Instant::now();
        let c = cost(1000);
        let mut t = table(4, 4 * c, 4 * c);
        let left = join(&mut t, 1, t0);
        for i in 1..=3 {
            data(&mut t, 1, 1000, i, t0);
        }
        assert_eq!(t.datagram(addr(1), &[3], t0), Action::Nothing);
        assert_eq!(t.len(), 0);
        let other = join(&mut t, 2, t0);
        for _ in 0..3 {
            data(&mut t, 2, 1000, 9, t0);
        }
        // The departed queue was the longest once: its oldest gave way; then the two were
        // even and the newcomer's third datagram was the one dropped.
        assert_eq!((left.bytes(), other.bytes()), (2 * c, 2 * c));
        for i in 2..=3 {
            assert!(matches!(pop(&left), Poll::Ready(Popped::Data(d)) if d[0] == i));
        }
        assert!(matches!(pop(&left), Poll::Ready(Popped::End(End::Bye))));
    }

    /// The fuzz target's checks on a deterministic sweep (the fuzzer goes deeper).
    #[test]
    fn fuzz_harness_holds_on_a_sweep() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..3000 {
            let mut input: Vec<u8> = (0..4).map(|_| next() as u8).collect();
            for _ in 0..next() % 200 {
                // Events as the fuzzer finds them: mostly hellos and data from a few peers.
                let (op, port, size) = (next() as u8, next() as u8 % 4, next() as u8);
                match next() % 10 {
                    0..=2 => input.extend([op & 0x80, port, 1, 0]),
                    3..=6 => input.extend([op & 0x80, port, 0, size.max(32)]),
                    7 => input.extend([op & 0x80, port, op % 6, size % 32]),
                    _ => input.extend([3 + op % 5, size]),
                }
            }
            fuzz_one(&input);
        }
    }
}
