//! `udp://host:port`: best-effort datagrams, one frame per datagram.
//!
//! Each datagram starts with a one-byte tag (see `docs/wire-format.md`): `0` data, `1` hello,
//! `2` welcome, `3` bye, `4` refused. `connect` sends hello until the listener answers welcome,
//! so connecting where nothing listens fails with `NotFound` instead of sending into the void,
//! and connecting to a listener with no room for another peer fails at once with `Refused`
//! naming the limit. A listener whose accept queue is full (the application is not calling
//! `accept`) answers a hello with an empty datagram, so such a client fails with `Timeout`
//! saying the listener did not accept, not with `NotFound`. The listener reads the one socket on a task and hands each peer address
//! its own connection; the peer table (`peers`) bounds peers and queued bytes.
//!
//! Listener options (all endpoint options; see `peers` for the rules):
//! - `max_peers` (default 1024): peers known at once; a new peer beyond it is refused.
//! - `idle_timeout` (default 30 s; `500ms`, `10s`, ...): a peer whose connection has not been
//!   accepted and that sends nothing for this long is forgotten, so hellos alone cannot hold
//!   the peer slots for good. A peer whose connection the application dropped is forgotten at
//!   once. An accepted connection is kept until dropped or its peer says bye, except when a
//!   new peer finds every slot taken: then the accepted peer silent the longest, if for
//!   `idle_timeout` at least, is forgotten to make room, and its connection's `recv` fails
//!   with `ConnectionLost` saying so.
//! - `max_peer_queue` (default 1 MiB) and `max_queue` (default 16 MiB): bytes queued for one
//!   peer whose receiver is slow, and for all peers together. What does not fit is dropped,
//!   as UDP would drop it in the kernel, counted and logged at `warn`.
//!
//! Datagrams with an unknown tag, or data from an address that never said hello, are dropped
//! and logged at `debug`.

use crate::common::datagram::{datagram_sink, DatagramSend, Outbox};
use bytes::{BufMut, Bytes, BytesMut};
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Connection,
    ConnectionInfo, Delivery, Direction, Endpoint, Error, ErrorKind, Listener, Reach, Result,
    Transport, OPT_CONNECT_TIMEOUT, OPT_CONNECT_TIMEOUT_MS,
};
use futures::{ready, Stream};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

mod peers;

use peers::{Action, End, Inbox, Limits, Popped, Table, DATAGRAM_OVERHEAD};

const OPT_MAX_PEERS: &str = "max_peers";
const OPT_IDLE_TIMEOUT: &str = "idle_timeout";
const OPT_MAX_PEER_QUEUE: &str = "max_peer_queue";
const OPT_MAX_QUEUE: &str = "max_queue";
const OPTIONS: &[&str] = &[
    OPT_CONNECT_TIMEOUT_MS,
    OPT_MAX_PEERS,
    OPT_IDLE_TIMEOUT,
    OPT_MAX_PEER_QUEUE,
    OPT_MAX_QUEUE,
];
const DEFAULT_MAX_PEERS: usize = 1024;
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_PEER_QUEUE: usize = 1 << 20;
const DEFAULT_MAX_QUEUE: usize = 16 << 20;
/// The longest `idle_timeout` accepted: one day (a typo in the unit should not mean "never").
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

const TAG_DATA: u8 = 0;
const TAG_HELLO: u8 = 1;
const TAG_WELCOME: u8 = 2;
const TAG_BYE: u8 = 3;
const TAG_REFUSED: u8 = 4;
/// The longest refusal reason a client shows (a listener's reason is a few bytes).
const MAX_REASON: usize = 128;
/// The largest UDP payload over IPv4 (65,507 bytes) less the tag byte.
pub const UDP_MAX_MESSAGE: usize = 65_507 - 1;
const RECV_BUF: usize = 65_536;

/// One datagram, by its tag (see `docs/wire-format.md`). Hello, welcome and bye ignore any
/// bytes after the tag, as they always did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Datagram<'a> {
    Data(&'a [u8]),
    Hello,
    Welcome,
    Bye,
    /// The listener has no room for another peer; the payload names the limit.
    Refused(&'a [u8]),
    Unknown(u8),
    Empty,
}

/// Reads a datagram's tag.
fn classify(d: &[u8]) -> Datagram<'_> {
    match d.split_first() {
        None => Datagram::Empty,
        Some((&TAG_DATA, rest)) => Datagram::Data(rest),
        Some((&TAG_HELLO, _)) => Datagram::Hello,
        Some((&TAG_WELCOME, _)) => Datagram::Welcome,
        Some((&TAG_BYE, _)) => Datagram::Bye,
        Some((&TAG_REFUSED, rest)) => Datagram::Refused(rest),
        Some((&tag, _)) => Datagram::Unknown(tag),
    }
}

/// What a connecting client makes of one datagram from the listener.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// Not an answer: keep waiting.
    Wait,
    /// Connected; a data or bye datagram that overtook the welcome comes along, to be
    /// delivered first.
    Welcome(Option<Bytes>),
    /// The listener has no room; its reason, made printable.
    Refused(String),
}

fn answer(d: &[u8]) -> Answer {
    match classify(d) {
        Datagram::Welcome => Answer::Welcome(None),
        Datagram::Data(_) | Datagram::Bye => Answer::Welcome(Some(Bytes::copy_from_slice(d))),
        Datagram::Refused(reason) => Answer::Refused(printable_reason(reason)),
        Datagram::Hello | Datagram::Unknown(_) | Datagram::Empty => Answer::Wait,
    }
}

/// A listener's refusal reason as a client may show it: printable ASCII only, at most
/// [`MAX_REASON`] bytes (it comes from the network).
fn printable_reason(reason: &[u8]) -> String {
    let text: String = reason
        .iter()
        .take(MAX_REASON)
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    if text.is_empty() {
        "no limit named".into()
    } else {
        text
    }
}

/// The refusal a full listener sends: the tag and the limit reached.
fn refusal(max_peers: usize) -> Bytes {
    let mut d = BytesMut::new();
    d.put_u8(TAG_REFUSED);
    d.put_slice(format!("{OPT_MAX_PEERS}={max_peers}").as_bytes());
    d.freeze()
}

/// The listener's limits from the endpoint's options; a bad value is `InvalidEndpoint`.
fn limits(ep: &Endpoint, max_message: usize) -> Result<Limits> {
    let bad = |why: String| Error::new(ErrorKind::InvalidEndpoint, ep, why);
    let max_peers = ep
        .parse_option::<usize>(OPT_MAX_PEERS)?
        .unwrap_or(DEFAULT_MAX_PEERS);
    if max_peers == 0 {
        return Err(bad(format!("option `{OPT_MAX_PEERS}` must be at least 1")));
    }
    let idle_timeout = match ep.option(OPT_IDLE_TIMEOUT) {
        None => DEFAULT_IDLE_TIMEOUT,
        Some(v) => match ductwork_core::parse_duration(v) {
            Ok(d) if d.is_zero() => {
                return Err(bad(format!(
                    "option `{OPT_IDLE_TIMEOUT}` must be more than 0"
                )))
            }
            Ok(d) if d > MAX_IDLE_TIMEOUT => {
                return Err(bad(format!("option `{OPT_IDLE_TIMEOUT}` is over one day")))
            }
            Ok(d) => d,
            Err(why) => return Err(bad(format!("option `{OPT_IDLE_TIMEOUT}={v}`: {why}"))),
        },
    };
    // One queue must hold at least one largest message, and the whole at least one queue.
    let least = max_message + DATAGRAM_OVERHEAD;
    let max_peer_queue = ep
        .size_option(OPT_MAX_PEER_QUEUE)?
        .unwrap_or(DEFAULT_MAX_PEER_QUEUE.max(least));
    if max_peer_queue < least {
        return Err(bad(format!(
            "option `{OPT_MAX_PEER_QUEUE}` ({max_peer_queue} bytes) cannot hold one message of \
             {max_message} bytes: it must be at least {least}"
        )));
    }
    let max_queue = ep
        .size_option(OPT_MAX_QUEUE)?
        .unwrap_or(DEFAULT_MAX_QUEUE.max(max_peer_queue));
    if max_queue < max_peer_queue {
        return Err(bad(format!(
            "option `{OPT_MAX_QUEUE}` ({max_queue} bytes) is less than `{OPT_MAX_PEER_QUEUE}` \
             ({max_peer_queue} bytes)"
        )));
    }
    Ok(Limits {
        max_peers,
        max_peer_queue,
        max_queue,
        idle_timeout,
    })
}

/// The UDP transport (`udp://host:port`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Udp;

#[async_trait]
impl Transport for Udp {
    fn scheme(&self) -> &'static str {
        "udp"
    }

    fn local_endpoint(&self, _unique: &str) -> String {
        "udp://127.0.0.1:0".into()
    }

    fn capabilities(&self, ep: &Endpoint) -> Result<Capabilities> {
        ep.check_options(OPTIONS)?;
        ep.host_port()?; // "missing port" here, not the OS's "invalid socket address" later
        let max_message = ep.max_frame()?.min(UDP_MAX_MESSAGE);
        limits(ep, max_message)?; // listener options are checked on either side
        Ok(Capabilities {
            direction: Direction::Duplex,
            delivery: Delivery::BestEffort,
            ordered: false,
            boundaries: Boundaries::Messages,
            max_message,
            reach: Reach::Network,
            peer_loss: false,
            accept: Accept::PerPeer,
        })
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let caps = self.capabilities(ep)?;
        let limits = limits(ep, caps.max_message)?;
        let sock = UdpSocket::bind(ep.address())
            .await
            .map_err(|e| Error::bind(ep, "", e))?;
        let local = sock
            .local_addr()
            .map_err(|e| Error::io(ep, "local address", e))?;
        let endpoint = ep.with_address(local.to_string());
        let sock = Arc::new(sock);
        let (accept_tx, accept_rx) = mpsc::channel(64);
        let (guard_tx, guard_rx) = oneshot::channel();
        let task = tokio::spawn(serve(
            sock.clone(),
            endpoint.clone(),
            caps.clone(),
            limits,
            accept_tx,
            guard_rx,
        ));
        let guard = Arc::new(AbortOnDrop(task));
        // The task holds only a weak reference: it must not keep itself alive.
        let _ = guard_tx.send(Arc::downgrade(&guard));
        Ok(Box::new(UdpListen {
            endpoint,
            accept_rx,
            _task: guard,
        }))
    }

    async fn connect(&self, ep: &Endpoint) -> Result<BoxConnection> {
        let caps = self.capabilities(ep)?;
        // Silence is what "nothing listens" usually looks like over UDP: a shorter default.
        let given =
            ep.option(OPT_CONNECT_TIMEOUT).is_some() || ep.option(OPT_CONNECT_TIMEOUT_MS).is_some();
        let timeout = if given {
            ep.connect_timeout()?
        } else {
            Duration::from_secs(2)
        };
        let target = tokio::net::lookup_host(ep.address())
            .await
            .map_err(|e| Error::io(ep, "resolve", e))?
            .next()
            .ok_or_else(|| Error::new(ErrorKind::NotFound, ep, "the host name has no address"))?;
        let local = if target.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        let sock = UdpSocket::bind(local)
            .await
            .map_err(|e| Error::bind(ep, "the local socket to send from", e))?;
        sock.connect(target)
            .await
            .map_err(|e| Error::io(ep, "connect", e))?;
        let early = handshake(&sock, ep, timeout).await?;
        Ok(Box::new(UdpConn {
            early,
            sock: Arc::new(sock),
            to: None,
            rx: Rx::Socket(vec![0u8; RECV_BUF].into_boxed_slice()),
            info: ConnectionInfo {
                endpoint: ep.clone(),
                peer: Some(target.to_string()),
                capabilities: caps,
            },
            outbox: Outbox::default(),
            peer_left: false,
            read_done: false,
            _task: None,
        }))
    }
}

impl Udp {
    /// The fuzz target `udp_tags` (in `fuzz/`): everything a peer's datagram reaches, the
    /// listener's peer table and the client's reading of the tags, driven by `input`. Not
    /// part of the API.
    #[doc(hidden)]
    pub fn __fuzz_tags(input: &[u8]) {
        peers::fuzz_one(input)
    }
}

/// Whether a socket error means "nothing listens at that port" (ICMP port unreachable: Unix
/// reports it as refused, Windows as reset).
fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    )
}

/// Says hello until the listener answers. Returns a data or bye datagram that arrived before
/// the welcome (the welcome may be lost or overtaken): it counts as the welcome and must be
/// delivered first. A refusal (the listener is full) ends it at once with `Refused`.
///
/// The answer is polled with `try_recv` and short sleeps rather than awaited with `recv`:
/// under Wine, awaiting `recv` on a connected UDP socket whose hello bounced (ICMP port
/// unreachable) spins inside one poll and starves even the timeout around it.
async fn handshake(sock: &UdpSocket, ep: &Endpoint, timeout: Duration) -> Result<Option<Bytes>> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(20);
    let mut buf = vec![0u8; RECV_BUF];
    // Something answered that was neither a welcome nor a refusal: a listener is there.
    let mut heard = false;
    let nothing =
        |e: io::Error| Error::new(ErrorKind::NotFound, ep, "nothing listens there").with_source(e);
    loop {
        match sock.send(&[TAG_HELLO]).await {
            Ok(_) => {}
            Err(e) if is_unreachable(&e) => return Err(nothing(e)),
            Err(e) => return Err(Error::io(ep, "send hello", e)),
        }
        let until = (Instant::now() + wait).min(deadline);
        loop {
            match sock.try_recv(&mut buf) {
                Ok(n) => match answer(&buf[..n]) {
                    Answer::Wait => heard = true,
                    Answer::Welcome(early) => return Ok(early),
                    Answer::Refused(limit) => {
                        return Err(Error::new(
                            ErrorKind::Refused,
                            ep,
                            format!("the listener has no room for another peer ({limit} reached)"),
                        ))
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err(e) if is_unreachable(&e) => return Err(nothing(e)),
                Err(e) => return Err(Error::io(ep, "receive welcome", e)),
            }
        }
        if Instant::now() >= deadline {
            return Err(unanswered(ep, timeout, heard));
        }
        wait = (wait * 2).min(Duration::from_millis(250));
    }
}

/// The error of a handshake that ran out of time: `Timeout` when a listener was heard (its
/// accept queue stayed full), `NotFound` when nothing answered at all.
fn unanswered(ep: &Endpoint, timeout: Duration, heard: bool) -> Error {
    let ms = timeout.as_millis();
    if heard {
        Error::new(
            ErrorKind::Timeout,
            ep,
            format!("the listener answered but did not accept within {ms} ms (its accept queue is full: is the application calling accept?)"),
        )
    } else {
        Error::new(
            ErrorKind::NotFound,
            ep,
            format!("no ductwork listener answered within {ms} ms"),
        )
    }
}

/// Aborts the listener's socket task when the listener and all its connections are gone.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The listener's socket task: the socket, the peer table, and the hand-over to `accept`.
struct Server {
    sock: Arc<UdpSocket>,
    endpoint: Endpoint,
    caps: Capabilities,
    table: Table,
    /// What a full listener answers to a new peer's hello.
    refusal: Bytes,
    accept_tx: mpsc::Sender<UdpConn>,
    /// Lets each accepted connection keep this task alive (see `AbortOnDrop`).
    task_guard: Weak<AbortOnDrop>,
}

async fn serve(
    sock: Arc<UdpSocket>,
    endpoint: Endpoint,
    caps: Capabilities,
    limits: Limits,
    accept_tx: mpsc::Sender<UdpConn>,
    guard_rx: oneshot::Receiver<Weak<AbortOnDrop>>,
) {
    let task_guard = guard_rx.await.unwrap_or_default();
    // Sweeps often enough that a silent peer goes within about a quarter past its timeout.
    let every = (limits.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut server = Server {
        sock,
        table: Table::new(limits, endpoint.to_string()),
        endpoint,
        caps,
        refusal: refusal(limits.max_peers),
        accept_tx,
        task_guard,
    };
    let mut sweep = tokio::time::interval(every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let received = tokio::select! {
            r = server.sock.recv_from(&mut buf) => r,
            _ = sweep.tick() => {
                server.table.sweep(Instant::now());
                continue;
            }
        };
        let (n, from) = match received {
            Ok(x) => x,
            // Windows reports an earlier send's ICMP error on the next receive; not fatal.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionRefused
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::warn!(endpoint = %server.endpoint, error = %e, "udp receive failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        match server.table.datagram(from, &buf[..n], Instant::now()) {
            Action::Nothing => {}
            Action::Welcome => {
                let _ = server.sock.send_to(&[TAG_WELCOME], from).await;
            }
            Action::Refuse => {
                let _ = server.sock.send_to(&server.refusal, from).await;
            }
            Action::Admit => server.admit(from).await,
        }
    }
}

impl Server {
    /// A new peer with room in the table: its connection goes to `accept`.
    async fn admit(&mut self, from: SocketAddr) {
        // Reserve the accept slot first (a connection dropped for lack of room would say bye
        // to a peer that was never welcomed), then welcome, then hand the connection over:
        // once accepted the application may send data, which must not overtake the welcome.
        let Ok(permit) = self.accept_tx.try_reserve() else {
            // The accept queue is full or the listener is gone: the peer retries. The empty
            // datagram tells it a listener is there, so it can time out with the right error.
            let _ = self.sock.send_to(&[], from).await;
            return;
        };
        let conn = UdpConn {
            early: None,
            sock: self.sock.clone(),
            to: Some(from),
            rx: Rx::Queue(self.table.admit(from, Instant::now())),
            info: ConnectionInfo {
                endpoint: self.endpoint.clone(),
                peer: Some(from.to_string()),
                capabilities: self.caps.clone(),
            },
            outbox: Outbox::default(),
            peer_left: false,
            read_done: false,
            _task: self.task_guard.upgrade(),
        };
        let _ = self.sock.send_to(&[TAG_WELCOME], from).await;
        permit.send(conn);
    }
}

struct UdpListen {
    endpoint: Endpoint,
    accept_rx: mpsc::Receiver<UdpConn>,
    _task: Arc<AbortOnDrop>,
}

#[async_trait]
impl Listener for UdpListen {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        loop {
            let mut conn = self.accept_rx.recv().await.ok_or_else(|| {
                Error::new(
                    ErrorKind::Io,
                    &self.endpoint,
                    "the listener's socket task stopped",
                )
            })?;
            if conn.take_accepted() {
                return Ok(Box::new(conn));
            }
            // Its peer was forgotten while it waited (silent for `idle_timeout`). No bye: the
            // peer is probably gone, and a bounce from its closed port is all a bye would get.
            conn.peer_left = true;
        }
    }
}

enum Rx {
    /// A connected client socket, read directly.
    Socket(Box<[u8]>),
    /// An accepted peer, fed by the listener's task.
    Queue(Inbox),
}

struct UdpConn {
    /// A tagged datagram that arrived during the handshake, delivered before anything else.
    early: Option<Bytes>,
    sock: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    rx: Rx,
    info: ConnectionInfo,
    /// The datagram waiting for the socket; closed once we said bye.
    outbox: Outbox,
    /// The peer said bye: it is gone, so we send no bye back. A datagram to its closed port
    /// would only bounce, and under Wine a bounce wedges the listener's shared socket.
    peer_left: bool,
    read_done: bool,
    _task: Option<Arc<AbortOnDrop>>,
}

impl UdpConn {
    /// Marks a listener's connection accepted; false if its peer was forgotten first.
    fn take_accepted(&self) -> bool {
        match &self.rx {
            Rx::Queue(inbox) => inbox.accept(),
            Rx::Socket(_) => true,
        }
    }

    fn poll_send_raw(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.to {
            Some(to) => self.sock.poll_send_to(cx, buf, to),
            None => self.sock.poll_send(cx, buf),
        }
    }

    fn lost(&self, e: io::Error) -> Error {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            Error::new(
                ErrorKind::ConnectionLost,
                &self.info.endpoint,
                "the peer's port is closed (ICMP port unreachable)",
            )
            .with_source(e)
        } else {
            Error::io(&self.info.endpoint, "udp", e)
        }
    }
}

impl Connection for UdpConn {
    fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

impl Stream for UdpConn {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        let this = &mut *self;
        if this.read_done {
            return Poll::Ready(None);
        }
        let max = this.info.capabilities.max_message;
        loop {
            let datagram = match &mut this.rx {
                Rx::Queue(inbox) => match ready!(inbox.poll_pop(cx)) {
                    Popped::Data(b) => b,
                    Popped::End(End::Bye) => {
                        this.read_done = true;
                        this.peer_left = true;
                        return Poll::Ready(None);
                    }
                    Popped::End(end) => {
                        this.read_done = true;
                        let why = match end {
                            End::Expired => "the listener forgot this peer: it was silent while its connection waited for accept",
                            End::MadeRoom => "the listener forgot this peer to make room for a new one: it was silent for idle_timeout while every peer slot was taken",
                            End::Bye | End::ListenerGone => "the listener's socket task stopped",
                        };
                        return Poll::Ready(Some(Err(Error::new(
                            ErrorKind::ConnectionLost,
                            &this.info.endpoint,
                            why,
                        ))));
                    }
                },
                Rx::Socket(buf) => {
                    let early = this.early.take();
                    let mut rb = tokio::io::ReadBuf::new(buf);
                    let d: &[u8] = match &early {
                        Some(e) => e,
                        None => {
                            match ready!(this.sock.poll_recv(cx, &mut rb)) {
                                Ok(()) => {}
                                Err(e) => {
                                    this.read_done = true;
                                    return Poll::Ready(Some(Err(this.lost(e))));
                                }
                            }
                            rb.filled()
                        }
                    };
                    match classify(d) {
                        Datagram::Data(payload) => Bytes::copy_from_slice(payload),
                        Datagram::Bye => {
                            this.read_done = true;
                            this.peer_left = true;
                            return Poll::Ready(None);
                        }
                        _ => continue,
                    }
                }
            };
            if datagram.len() > max {
                // One oversized datagram does not break a datagram connection.
                return Poll::Ready(Some(Err(Error::codec(
                    &this.info.endpoint,
                    ductwork_codec::CodecError::FrameTooLarge {
                        len: datagram.len(),
                        max,
                    },
                ))));
            }
            return Poll::Ready(Some(Ok(datagram)));
        }
    }
}

impl DatagramSend for UdpConn {
    fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    fn poll_send_datagram(&mut self, cx: &mut Context<'_>, d: &Bytes) -> Poll<Result<()>> {
        let r = ready!(self.poll_send_raw(cx, d));
        Poll::Ready(r.map(drop).map_err(|e| self.lost(e)))
    }

    fn datagram(&self, frame: Bytes) -> Bytes {
        let mut d = BytesMut::with_capacity(frame.len() + 1);
        d.put_u8(TAG_DATA);
        d.put_slice(&frame);
        d.freeze()
    }

    fn poll_goodbye(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.peer_left {
            // Best effort, like everything on UDP.
            let _ = ready!(self.poll_send_raw(cx, &[TAG_BYE]));
        }
        Poll::Ready(())
    }
}

datagram_sink!(UdpConn);

impl Drop for UdpConn {
    fn drop(&mut self) {
        if !self.outbox.is_closed() && !self.peer_left {
            let _ = match self.to {
                Some(to) => self.sock.try_send_to(&[TAG_BYE], to),
                None => self.sock.try_send(&[TAG_BYE]),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }

    /// The tags of `docs/wire-format.md`: the old four unchanged, refused new.
    #[test]
    fn tags_are_read_as_documented() {
        assert_eq!(classify(&[]), Datagram::Empty);
        assert_eq!(classify(&[0, 7]), Datagram::Data(&[7]));
        assert_eq!(classify(&[1, 9]), Datagram::Hello);
        assert_eq!(classify(&[2]), Datagram::Welcome);
        assert_eq!(classify(&[3]), Datagram::Bye);
        assert_eq!(
            classify(b"\x04max_peers=4"),
            Datagram::Refused(b"max_peers=4")
        );
        assert_eq!(classify(&[5]), Datagram::Unknown(5));
        assert_eq!(answer(&refusal(4)), Answer::Refused("max_peers=4".into()));
        assert_eq!(answer(&[4]), Answer::Refused("no limit named".into()));
        // A reason from the network is shown short and printable.
        let mut hostile = vec![4u8];
        hostile.extend(b"\x1b[2Jmax\n");
        hostile.extend([b'x'; 500]);
        let Answer::Refused(why) = answer(&hostile) else {
            panic!("not a refusal")
        };
        assert!(why.starts_with("?[2Jmax?x"), "{why}");
        assert_eq!(why.len(), MAX_REASON);
        assert_eq!(answer(&[2]), Answer::Welcome(None));
        assert_eq!(
            answer(&[3]),
            Answer::Welcome(Some(Bytes::from_static(&[3])))
        );
        assert_eq!(answer(&[1]), Answer::Wait);
    }

    /// The limits' options: defaults, and bad values named.
    #[test]
    fn limit_options_are_checked() {
        let l = limits(&ep("udp://127.0.0.1:1"), UDP_MAX_MESSAGE).unwrap();
        assert_eq!(
            l,
            Limits {
                max_peers: 1024,
                max_peer_queue: 1 << 20,
                max_queue: 16 << 20,
                idle_timeout: Duration::from_secs(30),
            }
        );
        let l = ep(
            "udp://127.0.0.1:1?max_peers=3&idle_timeout=250ms&max_peer_queue=128KiB&max_queue=1MiB",
        );
        let l = limits(&l, UDP_MAX_MESSAGE).unwrap();
        assert_eq!(
            (l.max_peers, l.idle_timeout, l.max_peer_queue, l.max_queue),
            (3, Duration::from_millis(250), 128 << 10, 1 << 20)
        );
        for (opts, says) in [
            ("max_peers=0", "max_peers"),
            ("idle_timeout=0", "idle_timeout"),
            ("idle_timeout=2days", "idle_timeout"),
            ("idle_timeout=25h", "idle_timeout"),
            (
                "max_peer_queue=1KiB",
                "cannot hold one message of 65506 bytes",
            ),
            ("max_queue=64KiB", "less than `max_peer_queue`"),
            ("max_quue=1", "unknown option"),
        ] {
            let e = Udp
                .capabilities(&ep(&format!("udp://127.0.0.1:1?{opts}")))
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{opts}: {e}");
            assert!(e.to_string().contains(says), "{opts}: {e}");
            assert!(e.to_string().contains("udp://127.0.0.1:1"), "{opts}: {e}");
        }
        // A smaller max_frame lets a smaller queue hold one message.
        let small = ep("udp://127.0.0.1:1?max_frame=1KiB&max_peer_queue=2KiB");
        assert_eq!(Udp.capabilities(&small).unwrap().max_message, 1024);
    }
}
