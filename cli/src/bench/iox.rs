//! The `peer-iceoryx2` baseline: the bench's round trip over iceoryx2, in the same run.
//!
//! Built only with the cargo feature `peer-iceoryx2`, on Linux
//! (`cargo run --release --features peer-iceoryx2 -- bench`); the feature is off by default
//! because it pulls the `iceoryx2` crate (about a minute to build, Rust 1.89 or newer). When
//! it is on, the row runs in every default bench and whenever `shm` is measured, and shm rows
//! show their ratio to it after raw-eventfd and raw-cacheline.
//!
//! Setup, following iceoryx2's own publish-subscribe latency benchmark: two `ipc`
//! publish-subscribe services of `[u8]` slices (ping and pong; one publisher and one
//! subscriber each, no history, a subscriber buffer of one sample, safe overflow), and both
//! sides busy-poll `receive()`: iceoryx2 has no async API, and waking a sleeping reader would
//! add an event service's cost on top. Each sample carries the sequence number in a `u64` user
//! header. The parent loans a sample, copies the payload in and sends it; the peer process
//! (`ductwork __peer`, [`Job::Iceoryx2`]) copies what it received into a sample of its own and
//! sends that back; the parent checks sequence number and every payload byte. So each round
//! trip has two payload copies (like ductwork's echo), not iceoryx2's zero-copy best case.
//! Every payload size in `--sizes` is measured (a size the shared memory cannot hold fails its
//! cell with a note); there is no throughput phase.
//!
//! Both sides spin; a wait longer than 50 µs yields to the scheduler between polls, so that
//! `--pin same` still makes progress (slowly, as for `raw-cacheline`). Every wait has a
//! deadline: the parent notices a peer that exited or stopped answering and fails the cell
//! with the peer's stderr; the peer exits when told to, when its parent goes away, or at the
//! spec's deadline. Service names carry the parent's pid and a counter, so parallel runs do
//! not meet. Each cell removes its services when both sides have left (a killed peer's are
//! reclaimed by iceoryx2's dead-node cleanup); what stays is what any iceoryx2 program leaves:
//! the empty `/tmp/iceoryx2/` folders and one global management segment in `/dev/shm`.

use super::{
    proto::{command, die_after, Job, PeerSpec},
    types::{pattern, RoundTrips, Rtt, Timing},
};
use iceoryx2::{
    port::{publisher::Publisher, subscriber::Subscriber},
    prelude::*,
    sample::Sample,
    service::port_factory::publish_subscribe::PortFactory,
};
use std::{
    io::Read,
    process::{Child, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Sequence number that tells the peer to exit.
const QUIT: u64 = u64::MAX;
/// Empty polls between looks at the clock.
const POLLS: u32 = 16;
/// How long a wait only spins; after that it yields to the scheduler between polls, so that a
/// peer on the same CPU (`--pin same`) gets to run.
const SPIN_FOR: Duration = Duration::from_micros(50);
/// How often the first ping is repeated until the peer has connected.
const HELLO_EVERY: Duration = Duration::from_millis(10);

type Svc = ipc::Service;
type Factory = PortFactory<Svc, [u8], u64>;
type Pub = Publisher<Svc, [u8], u64>;
type Sub = Subscriber<Svc, [u8], u64>;

fn node() -> Result<Node<Svc>, String> {
    // Quiet unless the user asks (IOX2_LOG_LEVEL); the bench prints its own notes.
    set_log_level_from_env_or(LogLevel::Error);
    NodeBuilder::new()
        // The parent must keep Ctrl-C's default behaviour.
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<Svc>()
        .map_err(|e| format!("iceoryx2 node: {e}"))
}

fn service(node: &Node<Svc>, name: &str, create: bool) -> Result<Factory, String> {
    let sname = ServiceName::new(name).map_err(|e| format!("iceoryx2 service name {name}: {e}"))?;
    let b = node
        .service_builder(&sname)
        .publish_subscribe::<[u8]>()
        .user_header::<u64>();
    let r = if create {
        b.max_publishers(1)
            .max_subscribers(1)
            .max_nodes(2)
            .history_size(0)
            .subscriber_max_buffer_size(1)
            .enable_safe_overflow(true)
            .create()
            .map_err(|e| e.to_string())
    } else {
        b.open().map_err(|e| e.to_string())
    };
    r.map_err(|e| format!("iceoryx2 service {name}: {e}"))
}

fn publisher(f: &Factory, size: usize) -> Result<Pub, String> {
    f.publisher_builder()
        .initial_max_slice_len(size.max(1))
        .create()
        .map_err(|e| format!("iceoryx2 publisher: {e}"))
}

fn subscriber(f: &Factory) -> Result<Sub, String> {
    f.subscriber_builder()
        .create()
        .map_err(|e| format!("iceoryx2 subscriber: {e}"))
}

/// Loans a sample, fills it with `seq` and `payload`, sends it.
fn send(p: &Pub, seq: u64, payload: &[u8]) -> Result<(), String> {
    let mut s = p
        .loan_slice_uninit(payload.len())
        .map_err(|e| format!("iceoryx2 loan: {e}"))?;
    *s.user_header_mut() = seq;
    s.write_from_slice(payload)
        .send()
        .map_err(|e| format!("iceoryx2 send: {e}"))?;
    Ok(())
}

/// The peer process, killed if still running when dropped.
struct PeerProc(Child);

impl PeerProc {
    fn spawn(spec: &PeerSpec) -> Result<PeerProc, String> {
        let child = command(spec)?
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the peer process: {e}"))?;
        Ok(PeerProc(child))
    }

    /// An error if the peer has exited.
    fn check(&mut self) -> Result<(), String> {
        match self.0.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("peer exited early ({status})")),
            Err(e) => Err(format!("peer lost: {e}")),
        }
    }

    /// Kills the peer and returns `e` with what the peer wrote on stderr.
    fn fail(mut self, e: String) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let mut err = String::new();
        if let Some(mut s) = self.0.stderr.take() {
            let _ = s.read_to_string(&mut err);
        }
        match err.trim() {
            "" => e,
            err => format!("{e} (peer: {err})"),
        }
    }

    /// Waits up to `limit` for a clean exit; kills the peer after.
    fn finish(mut self, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Busy-polls `sub` for the sample with sequence number `want` (skipping stale ones), failing
/// when `peer` exits or after `limit`. With `resend`, repeats the ping every [`HELLO_EVERY`]
/// while waiting (the first ping may be sent before the peer has subscribed).
fn await_echo(
    sub: &Sub,
    want: u64,
    peer: &mut PeerProc,
    limit: Duration,
    resend: Option<(&Pub, &[u8])>,
) -> Result<Sample<Svc, [u8], u64>, String> {
    let start = Instant::now();
    let mut last_send = start;
    let mut idle = 0u32;
    loop {
        match sub.receive() {
            Ok(Some(s)) if *s.user_header() == want => return Ok(s),
            // An echo of an earlier (repeated) ping.
            Ok(Some(_)) => continue,
            Ok(None) => {}
            Err(e) => return Err(format!("iceoryx2 receive: {e}")),
        }
        idle += 1;
        if idle % POLLS == 0 {
            let now = Instant::now();
            if now - start > SPIN_FOR {
                std::thread::yield_now();
            }
            if now - start > limit {
                return Err(format!("no echo within {limit:?}"));
            }
            if idle % (POLLS * 256) == 0 {
                peer.check()?;
            }
            if let Some((p, payload)) = resend {
                if now - last_send > HELLO_EVERY {
                    send(p, want, payload)?;
                    last_send = now;
                }
            }
        }
    }
}

/// Parent side: measures round trips of `size`-byte payloads with the peer pinned to `cpu`.
pub fn measure(size: usize, cpu: Option<usize>, t: Timing) -> Result<Rtt, String> {
    static CELLS: AtomicU32 = AtomicU32::new(0);
    let n = CELLS.fetch_add(1, Ordering::Relaxed);
    let name = format!("ductwork-bench/{}/{n}", std::process::id());
    let node = node()?;
    let ping = service(&node, &format!("{name}/ping"), true)?;
    let pong = service(&node, &format!("{name}/pong"), true)?;
    let tx = publisher(&ping, size)?;
    let rx = subscriber(&pong)?;
    let mut peer = PeerProc::spawn(&PeerSpec {
        job: Job::Iceoryx2 { service: name },
        size,
        cpu,
        deadline_ms: t.peer_deadline_ms(),
    })?;
    match run(&tx, &rx, size, t, &mut peer) {
        Ok(rtt) => {
            // Best effort: the measurement is done whatever the peer does now.
            let _ = send(&tx, QUIT, &[]);
            peer.finish(Duration::from_secs(2));
            Ok(rtt)
        }
        Err(e) => Err(peer.fail(e)),
    }
}

fn run(tx: &Pub, rx: &Sub, size: usize, t: Timing, peer: &mut PeerProc) -> Result<Rtt, String> {
    let payload = pattern(size);
    // Handshake: repeat ping 0 until the peer echoes it.
    send(tx, 0, &payload)?;
    await_echo(rx, 0, peer, t.reply_limit, Some((tx, &payload)))?;
    let mut round_trips = RoundTrips::new(t);
    let mut seq = 0u64;
    while round_trips.next() {
        seq += 1;
        let t0 = Instant::now();
        send(tx, seq, &payload)?;
        let echo = await_echo(rx, seq, peer, t.reply_limit, None)?;
        let elapsed = t0.elapsed();
        if echo.payload() != payload.as_slice() {
            return Err(format!(
                "the echo of message {seq} differs from what was sent"
            ));
        }
        drop(echo);
        round_trips.record(elapsed);
    }
    Ok(round_trips.finish())
}

/// Peer side (`ductwork __peer`): echoes every sample on `{service}/ping` to
/// `{service}/pong` until told to quit, the parent goes away, or `deadline` passes. `size` is
/// the payload size the parent sends.
pub fn peer(service_name: &str, size: usize, deadline: Instant) -> Result<(), String> {
    let parent = std::os::unix::process::parent_id();
    let node = node()?;
    let ping = service(&node, &format!("{service_name}/ping"), false)?;
    let pong = service(&node, &format!("{service_name}/pong"), false)?;
    let rx = subscriber(&ping)?;
    let tx = publisher(&pong, size)?;
    let die_after = die_after();
    let mut handled = 0u64;
    let mut idle = 0u32;
    let mut since = Instant::now();
    loop {
        let s = match rx.receive() {
            Ok(Some(s)) => s,
            Ok(None) => {
                idle += 1;
                if idle % POLLS == 0 {
                    let now = Instant::now();
                    if now - since > SPIN_FOR {
                        std::thread::yield_now();
                    }
                    if now > deadline {
                        return Err("deadline passed; giving up".into());
                    }
                    if idle % (POLLS * 256) == 0 && std::os::unix::process::parent_id() != parent {
                        return Err("the bench process went away".into());
                    }
                }
                continue;
            }
            Err(e) => return Err(format!("iceoryx2 receive: {e}")),
        };
        idle = 0;
        let seq = *s.user_header();
        if seq == QUIT {
            return Ok(());
        }
        handled += 1;
        if die_after.is_some_and(|n| handled > n) {
            std::process::exit(101);
        }
        send(&tx, seq, s.payload())?;
        drop(s);
        since = Instant::now();
    }
}
