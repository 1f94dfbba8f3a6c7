//! `shm://name`: shared-memory rings between two processes on one host.
//!
//! Each connection is a shared mapping holding two single-producer/single-consumer rings of
//! variable-length messages, one per direction ([`ring`] documents the byte layout). A message
//! is copied into the ring by the sender and copied out by the receiver: no system call per
//! message while both sides are busy. A receiver that finds its ring empty spins for a
//! budget it learned, then *parks* on a doorbell the OS can wake (an eventfd on Linux); the
//! sender rings the doorbell only when the receiver announced parking.
//!
//! # Behaviour
//! - **Duplex, reliable, ordered, message boundaries kept**, one host.
//! - **Size limit.** A message must fit in the ring: a connection's `max_message` = the
//!   smallest of its `max_frame`, `capacity - 16` and the peer's `max_frame`, which the set-up
//!   carries both ways (the client's hello, the listener's reply). A larger send fails locally
//!   with `FrameTooLarge` (naming the limit) and the connection stays usable, so neither side
//!   sends what the other would refuse. A message over the limit that a peer writes into the
//!   ring anyway (not a ductwork peer) fails the receiver's `recv` with `FrameTooLarge`, as on
//!   every transport. Messages are not chunked.
//! - **Copies.** A typed send whose record fits in the ring right away is encoded straight
//!   into the ring (one pass over the payload); one that must wait for space is encoded into
//!   a reusable buffer and copied in once there is room. A ping-pong of large messages keeps
//!   reusing the start of the ring (a skip record, see [`ring`]), so its memory stays in the
//!   cache instead of the messages walking the whole ring.
//! - **Zero copy** (opt-in). [`Shm::connect_zero_copy`] and [`Shm::bind_zero_copy`] give the
//!   [`ShmConnection`] itself: [`ShmConnection::loan`] lends room in the ring for one message
//!   (write it there, then [`Loan::commit`]; dropping the loan sends nothing), and
//!   [`ShmConnection::recv_in_place`] receives a message without copying it out (read it
//!   through the [`InPlace`] guard; dropping the guard gives its room back). What a
//!   misbehaving peer can do under each: see [`ShmConnection`]'s zero-copy section. In short,
//!   the copying API and the safe accessors (a loan's writer, [`InPlace::copy_to`]) only
//!   ever copy raw bytes: a peer can garble its own messages or fail the connection, never
//!   cause undefined behaviour; the `unsafe` in-place slices require trusting the peer not
//!   to write published messages.
//! - **Memory.** The mapping is `2 * capacity` plus 1 KiB of address space, but its pages
//!   are committed as used (Linux: a sparse memfd, no `MAP_POPULATE`; Windows: demand-zero
//!   pages of a committed section; see each OS layer's docs for what running out of memory
//!   does): an idle connection costs about two pages, a busy one what its messages went
//!   through, at most the mapping. A listener holds at most `max_conns` connections (1024)
//!   and at most `max_memory` bytes of mappings (no limit by default, so `max_conns` times
//!   the mapping: 8 GiB at the default capacity); a client over a limit is refused at
//!   set-up, its `connect` failing with `Refused` naming the limit (`max_conns=1024`), and
//!   the listener and its other connections go on. Each connection keeps two reusable heap buffers so that steady traffic allocates
//!   nothing: typed sends that wait for space encode into one (it keeps the size of the
//!   largest such message), and messages of 4 KiB or more are copied out into the other (a
//!   received frame shares it; its memory is reused once the application dropped the frame).
//!   Each is at most the ring capacity.
//! - **Waiting** (`spin`). A wake-up from parking costs a system call on each side and the
//!   scheduler's latency (about 100 µs on a VM, a few µs on bare metal), so a wait that ends
//!   soon is better spent busy-polling. By default (`spin=auto`) each side of a connection
//!   times its waits (for data, or for space in a full ring) and spins a little longer than
//!   recent waits took (their upper envelope plus a quarter plus 5 µs), at most [`SPIN_CAP`]
//!   (500 µs); waits that ended after parking count too, which is how a side that parks learns
//!   to spin. A new or idle connection has learnt nothing and parks at once (an idle
//!   connected pair costs no CPU), and waits longer than the cap teach nothing. A side whose
//!   spins ran out three times in a row (a peer sharing its core, traffic that slowed down)
//!   parks at once for 1, then 2, 4 ... up to 64 waits between single probing spins, until a
//!   spin catches its event again. The spin holds the tokio worker thread, at most for the
//!   budget. `spin=10us` fixes the budget instead (`0`: always park), with the same back-off.
//! - **Backpressure.** A full ring makes `send` wait (asynchronously) until the receiver
//!   consumed enough; nothing is dropped, nothing grows.
//! - **Close.** `close` marks the direction closed in shared memory; the peer receives every
//!   message sent before, then `None`. Dropping a connection closes it the same way unless a
//!   message was still waiting for space: then the direction is marked "abandoned" in shared
//!   memory and the peer sees `ConnectionLost` after the published messages.
//! - **Dead peer.** On Linux a Unix socket between the two processes stays open for the life
//!   of the connection; when the peer dies the kernel closes it. On Windows each side waits on
//!   the peer's process handle. Either way a waiting `recv` or `send` fails with
//!   `ConnectionLost` at once (after the messages already published), and so does the next
//!   `send` of a sender that is not waiting (a flag set by the watcher task or thread, one
//!   atomic load per send), or `Closed` if the peer closed its receiving side first.
//! - **A misbehaving peer** that writes garbage into the mapping makes that connection fail
//!   with `Protocol` (or `FrameTooLarge`): every index and length read from shared memory is
//!   checked before use, and messages are copied out before anyone decodes them.
//! - **Names.** On Linux the name is a Unix socket `shm-<name>.sock` in a private per-user
//!   directory (see `crate::common::unix` for where: `$XDG_RUNTIME_DIR/ductwork/` or
//!   `/tmp/ductwork-<uid>/`, else one in the home directory; mode 0700, checked by
//!   descriptor). A live listener holds the name
//!   (`AddrInUse`); a file left by a killed one is replaced. Only processes of the same user
//!   can connect, and each side checks the other's uid (`SO_PEERCRED`): `peer_uid=N` on a
//!   client and `allow_uids=A,B` on a listener change whom it accepts, as on `unix://` (the
//!   directory's mode still keeps other users out unless `DUCTWORK_RUNTIME_DIR` names a shared
//!   one); the mapping itself (a sealed memfd) is passed over that socket and is private
//!   to the two processes. Names are 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
//! - **Faults.** A listener that cannot make a client's segment or doorbells (out of
//!   descriptors, memory or handles) logs it at `warn` and tells the client, whose `connect`
//!   fails with `Refused` ("the listener could not set up the connection", with the OS
//!   error); a client that runs out of descriptors itself while receiving them gets `Io`
//!   ("this process ran out of file descriptors"). Neither ends the listener: transient
//!   accept errors are logged and retried with a backoff (10 ms doubling to 1 s). A
//!   listener that does not answer (stopped, overloaded) makes `connect` fail with `Timeout`
//!   after `connect_timeout`.
//! - **Windows**: the name is the named pipe `\\.\pipe\ductwork-shm-<name>` (local clients
//!   only) that carries the set-up; the section and the doorbell events are unnamed and
//!   duplicated straight into the client process, so no other process can open them. A
//!   thread per connection waits on the events and wakes the tokio tasks. Tested under Wine
//!   (correctness only). Other platforms: `Unsupported`.
//!
//! # Options
//! | option | default | meaning |
//! |---|---|---|
//! | `capacity` | `4MiB` | bytes per ring (per direction), 4 KiB to 1 GiB, rounded up to 128; set by the listener, the connecting side learns it |
//! | `spin` | `auto` | how long a waiting side busy-polls before parking. `auto`: learned per connection and direction from how long recent waits took, at most 500 µs ([`SPIN_CAP`]); see "Waiting" above. A duration (`0`, `500ns`, `10us`, `1ms`, at most `10ms`; a bare number is nanoseconds) fixes the budget; `0` parks at once. Either way a side whose spins keep running out parks at once for a while |
//! | `max_frame` | 16 MiB | the largest message (also capped by the ring) |
//! | `connect_timeout` | `10s` | the deadline of `connect`, set-up included (`500ms`, `10s`, or bare milliseconds) |
//! | `max_conns` | `1024` | listener: the most connections held at once (1 to 1048576); one more client is refused with `Refused` naming the limit |
//! | `max_memory` | none | listener: the most bytes of mappings (each `2 * capacity` + 1 KiB) over all its connections; at least one mapping |

// Portable; used by the Linux and Windows layers.
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
mod conn;
#[cfg(any(target_os = "linux", windows))]
mod mapped;
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
pub mod ring;
#[cfg(any(target_os = "linux", windows))]
mod setup;
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
mod spin;
#[cfg(any(target_os = "linux", windows))]
pub(crate) use setup::fuzz_one as fuzz_setup;

#[cfg(target_os = "linux")]
mod unix;
#[cfg(target_os = "linux")]
use unix as imp;
#[cfg(windows)]
mod windows;
#[cfg(windows)]
use windows as imp;
#[cfg(not(any(target_os = "linux", windows)))]
mod unsupported;
#[cfg(not(any(target_os = "linux", windows)))]
use unsupported as imp;

pub use conn::{InPlace, Loan, ShmConnection};
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Delivery, Direction,
    Endpoint, Error, ErrorKind, Listener, Reach, Result, Transport,
};
use std::time::Duration;

/// The options this transport knows (besides `max_frame`).
const OPTIONS: &[&str] = &[
    "capacity",
    "spin",
    "max_conns",
    "max_memory",
    "peer_uid",
    "allow_uids",
];

/// The default limit of connections a listener holds at once.
pub const DEFAULT_MAX_CONNS: usize = 1024;

/// The largest `max_conns` accepted (each connection also takes a handful of descriptors).
const MAX_MAX_CONNS: usize = 1 << 20;

/// The default ring capacity per direction: 4 MiB, so that 1 MiB messages pass with room to
/// stream.
pub const DEFAULT_CAPACITY: usize = 4 << 20;

/// The most a learned spin budget (the default, `spin=auto`) spins before parking.
pub const SPIN_CAP: Duration = spin::LEARNED_CAP;

/// The shared-memory transport (`shm://name`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Shm;

/// Settings read from an endpoint.
#[derive(Debug, Clone)]
#[cfg_attr(not(unix), derive(Copy))]
#[cfg_attr(not(any(target_os = "linux", windows)), allow(dead_code))]
pub(crate) struct Config {
    /// Ring capacity in bytes (valid, rounded).
    pub(crate) capacity: usize,
    /// Spin budget: learned (`auto`, the default) or fixed.
    pub(crate) spin: spin::SpinMode,
    /// The endpoint's `max_frame`.
    pub(crate) max_frame: usize,
    /// A listener's limit of connections held at once.
    pub(crate) max_conns: usize,
    /// A listener's limit of shared memory (segment bytes) over all its connections.
    pub(crate) max_memory: usize,
    /// Whom each side accepts at the other end (`peer_uid`, `allow_uids`; default: this user).
    #[cfg(unix)]
    pub(crate) policy: crate::common::unix::PeerPolicy,
}

impl Config {
    pub(crate) fn from_endpoint(ep: &Endpoint) -> Result<Config> {
        ep.check_options(OPTIONS)?;
        let capacity =
            ring::valid_capacity(ep.size_option("capacity")?.unwrap_or(DEFAULT_CAPACITY))
                .map_err(|why| Error::new(ErrorKind::InvalidEndpoint, ep, why))?;
        let spin = match ep.option("spin") {
            None | Some("auto") => spin::SpinMode::Learned,
            Some(v) => spin::SpinMode::Fixed(parse_duration(v).map_err(|why| {
                Error::new(
                    ErrorKind::InvalidEndpoint,
                    ep,
                    format!("option `spin={v}`: {why}"),
                )
            })?),
        };
        if matches!(spin, spin::SpinMode::Fixed(d) if d > Duration::from_millis(10)) {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                "option `spin` is over 10ms: spinning that long only burns a core",
            ));
        }
        check_name(ep)?;
        let max_conns = ep
            .parse_option::<usize>("max_conns")?
            .unwrap_or(DEFAULT_MAX_CONNS);
        if !(1..=MAX_MAX_CONNS).contains(&max_conns) {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                format!("option `max_conns={max_conns}`: use 1 to {MAX_MAX_CONNS}"),
            ));
        }
        let max_memory = ep.size_option("max_memory")?.unwrap_or(usize::MAX);
        if max_memory < ring::segment_len(capacity) {
            return Err(Error::new(
                ErrorKind::InvalidEndpoint,
                ep,
                format!(
                    "option `max_memory={max_memory}` is less than one connection's segment \
                     ({} bytes for capacity {capacity})",
                    ring::segment_len(capacity)
                ),
            ));
        }
        #[cfg(not(unix))]
        if ep.option("peer_uid").is_some() || ep.option("allow_uids").is_some() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                ep,
                "`peer_uid`/`allow_uids` are Unix uids; on Windows shm:// is limited to this \
                 user by its objects' security descriptors",
            ));
        }
        Ok(Config {
            capacity,
            spin,
            max_frame: ep.max_frame()?,
            max_conns,
            max_memory,
            #[cfg(unix)]
            policy: crate::common::unix::PeerPolicy::from_endpoint(ep, true)?,
        })
    }
}

/// Capabilities for a connection whose rings hold `capacity` bytes.
pub(crate) fn caps(capacity: usize, max_frame: usize) -> Capabilities {
    Capabilities {
        direction: Direction::Duplex,
        delivery: Delivery::Reliable,
        ordered: true,
        boundaries: Boundaries::Messages,
        max_message: max_frame.min(ring::max_message(capacity)),
        reach: Reach::Host,
        peer_loss: true,
        accept: Accept::PerPeer,
    }
}

fn parse_duration(v: &str) -> std::result::Result<Duration, String> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| "not a duration (e.g. 0, 500ns, 10us, 1ms) or `auto`".to_string())?;
    let ns = match unit.trim() {
        "" | "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" => 1_000_000,
        u => return Err(format!("unknown unit `{u}` (use ns, us or ms)")),
    };
    n.checked_mul(ns)
        .map(Duration::from_nanos)
        .ok_or_else(|| "too large".to_string())
}

/// Checks the name: it becomes part of a file name.
fn check_name(ep: &Endpoint) -> Result<()> {
    let name = ep.address();
    // The rules of the other named transports, then a stricter character set.
    crate::common::names::check_name(ep, name)?;
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::InvalidEndpoint,
            ep,
            "an shm name is 1 to 64 characters of A-Z a-z 0-9 . _ - and does not start with `.`",
        ))
    }
}

#[async_trait]
impl Transport for Shm {
    fn scheme(&self) -> &'static str {
        "shm"
    }

    fn local_endpoint(&self, unique: &str) -> String {
        format!("shm://{unique}")
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        let cfg = Config::from_endpoint(ep)?;
        Ok(caps(cfg.capacity, cfg.max_frame))
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        Ok(Box::new(Shm::bind_zero_copy(ep).await?))
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        Ok(Box::new(Shm::connect_zero_copy(ep).await?))
    }
}

impl Shm {
    /// Connects like [`Transport::connect`], returning the connection itself: a
    /// [`Connection`](ductwork_core::Connection) with the zero-copy API
    /// ([`ShmConnection::loan`], [`ShmConnection::recv_in_place`]) besides.
    pub async fn connect_zero_copy(ep: &Endpoint) -> Result<ShmConnection> {
        let cfg = Config::from_endpoint(ep)?;
        // One deadline for both OS layers: the socket or pipe and the whole set-up.
        crate::common::faults::connect_within(
            ep,
            "the listener accepted no set-up: is it stopped or overloaded?",
            imp::connect(ep, cfg),
        )
        .await
    }

    /// Binds like [`Transport::bind`], returning a listener whose
    /// [`accept`](ShmListener::accept) gives [`ShmConnection`]s.
    pub async fn bind_zero_copy(ep: &Endpoint) -> Result<ShmListener> {
        let cfg = Config::from_endpoint(ep)?;
        Ok(ShmListener(imp::bind(ep, cfg).await?))
    }
}

#[cfg(any(target_os = "linux", windows))]
type ListenerImpl = setup::QueuedListener;
#[cfg(not(any(target_os = "linux", windows)))]
type ListenerImpl = std::convert::Infallible;

/// An `shm://` listener from [`Shm::bind_zero_copy`]: a [`Listener`] like any other, whose
/// [`accept`](Self::accept) also gives the [`ShmConnection`] itself.
pub struct ShmListener(ListenerImpl);

impl ShmListener {
    /// The next connection (see [`Listener::accept`]).
    pub async fn accept(&mut self) -> Result<ShmConnection> {
        self.accept_impl().await
    }
}

#[cfg(any(target_os = "linux", windows))]
impl ShmListener {
    async fn accept_impl(&mut self) -> Result<ShmConnection> {
        self.0.accept_shm().await
    }
    fn endpoint_impl(&self) -> &Endpoint {
        self.0.endpoint()
    }
}

#[cfg(not(any(target_os = "linux", windows)))]
impl ShmListener {
    async fn accept_impl(&mut self) -> Result<ShmConnection> {
        match self.0 {}
    }
    fn endpoint_impl(&self) -> &Endpoint {
        match self.0 {}
    }
}

#[async_trait]
impl Listener for ShmListener {
    fn endpoint(&self) -> &Endpoint {
        self.endpoint_impl()
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        Ok(Box::new(ShmListener::accept(self).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let ep = Endpoint::parse("shm://a?capacity=64KiB&spin=2us").unwrap();
        let c = Config::from_endpoint(&ep).unwrap();
        assert_eq!(c.capacity, 65536);
        assert_eq!(c.spin, spin::SpinMode::Fixed(Duration::from_micros(2)));
        for (ep, want) in [
            ("shm://a", spin::SpinMode::Learned),
            ("shm://a?spin=auto", spin::SpinMode::Learned),
            ("shm://a?spin=0", spin::SpinMode::Fixed(Duration::ZERO)),
            (
                "shm://a?spin=10ms",
                spin::SpinMode::Fixed(Duration::from_millis(10)),
            ),
        ] {
            let c = Config::from_endpoint(&Endpoint::parse(ep).unwrap()).unwrap();
            assert_eq!(c.spin, want, "{ep}");
        }
        assert_eq!(Shm.capabilities(&ep).unwrap().max_message, 65536 - 16);
        let ep = Endpoint::parse("shm://a?max_frame=1000").unwrap();
        assert_eq!(Shm.capabilities(&ep).unwrap().max_message, 1000);
        let ep = Endpoint::parse("shm://a").unwrap();
        assert!(Shm.capabilities(&ep).unwrap().max_message >= 1 << 20);
        let c = Config::from_endpoint(&ep).unwrap();
        assert_eq!((c.max_conns, c.max_memory), (DEFAULT_MAX_CONNS, usize::MAX));
        let ep = Endpoint::parse("shm://a?max_conns=3&max_memory=64MiB").unwrap();
        let c = Config::from_endpoint(&ep).unwrap();
        assert_eq!((c.max_conns, c.max_memory), (3, 64 << 20));
        for bad in [
            "shm://a?capacity=1",
            "shm://a?capacity=2GiB",
            "shm://a?spin=fast",
            "shm://a?spin=1s",
            "shm://a?spin=20ms",
            "shm://a?colour=red",
            "shm://../x",
            "shm://a/b",
            "shm://.hidden",
            "shm://a?max_conns=0",
            "shm://a?max_conns=many",
            "shm://a?max_conns=2000000",
            "shm://a?max_memory=4KiB",
        ] {
            let e = Shm
                .capabilities(&Endpoint::parse(bad).unwrap())
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{bad}");
        }
    }
}
