//! `udp://host:port`: best-effort datagrams, one frame per datagram.
//!
//! Each datagram starts with a one-byte tag (see `docs/wire-format.md`): `0` data, `1` hello,
//! `2` welcome, `3` bye. `connect` sends hello until the listener answers welcome, so connecting
//! where nothing listens fails with `NotFound` instead of sending into the void. The listener
//! reads the one socket on a task and hands each peer address its own connection, with a
//! bounded queue: when a slow receiver lets it fill, further datagrams are dropped, as UDP
//! would drop them in the kernel. Datagrams with an unknown tag, or data from an address that
//! never said hello, are dropped and logged.

use crate::common::datagram::{datagram_sink, DatagramSend, Outbox};
use bytes::{BufMut, Bytes, BytesMut};
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, BoxListener, Capabilities, Connection,
    ConnectionInfo, Delivery, Direction, Endpoint, Error, ErrorKind, Listener, Reach, Result,
    Transport, OPT_CONNECT_TIMEOUT, OPT_CONNECT_TIMEOUT_MS,
};
use futures::{ready, Stream};
use std::{
    collections::HashMap,
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

const OPTIONS: &[&str] = &[OPT_CONNECT_TIMEOUT_MS, "max_peers"];
const TAG_DATA: u8 = 0;
const TAG_HELLO: u8 = 1;
const TAG_WELCOME: u8 = 2;
const TAG_BYE: u8 = 3;
/// The largest UDP payload over IPv4 (65,507 bytes) less the tag byte.
pub const UDP_MAX_MESSAGE: usize = 65_507 - 1;
const PEER_QUEUE: usize = 1024;
const RECV_BUF: usize = 65_536;

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
        Ok(Capabilities {
            direction: Direction::Duplex,
            delivery: Delivery::BestEffort,
            ordered: false,
            boundaries: Boundaries::Messages,
            max_message: ep.max_frame()?.min(UDP_MAX_MESSAGE),
            reach: Reach::Network,
            peer_loss: false,
            accept: Accept::PerPeer,
        })
    }

    async fn bind(&self, ep: &Endpoint) -> Result<BoxListener> {
        let caps = self.capabilities(ep)?;
        let max_peers = ep.parse_option::<usize>("max_peers")?.unwrap_or(1024);
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
            max_peers,
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
/// delivered first.
///
/// The answer is polled with `try_recv` and short sleeps rather than awaited with `recv`:
/// under Wine, awaiting `recv` on a connected UDP socket whose hello bounced (ICMP port
/// unreachable) spins inside one poll and starves even the timeout around it.
async fn handshake(sock: &UdpSocket, ep: &Endpoint, timeout: Duration) -> Result<Option<Bytes>> {
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_millis(20);
    let mut buf = vec![0u8; RECV_BUF];
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
                Ok(n) if n >= 1 && buf[0] == TAG_WELCOME => return Ok(None),
                Ok(n) if n >= 1 && (buf[0] == TAG_DATA || buf[0] == TAG_BYE) => {
                    return Ok(Some(Bytes::copy_from_slice(&buf[..n])))
                }
                Ok(_) => {}
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
            return Err(Error::new(
                ErrorKind::NotFound,
                ep,
                format!(
                    "no ductwork listener answered within {} ms",
                    timeout.as_millis()
                ),
            ));
        }
        wait = (wait * 2).min(Duration::from_millis(250));
    }
}

/// Aborts the listener's socket task when the listener and all its connections are gone.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Incoming {
    Data(Bytes),
    Bye,
}

/// The listener's socket task: its state, and one method per datagram tag.
struct Server {
    sock: Arc<UdpSocket>,
    endpoint: Endpoint,
    caps: Capabilities,
    max_peers: usize,
    accept_tx: mpsc::Sender<BoxConnection>,
    /// Lets each accepted connection keep this task alive (see `AbortOnDrop`).
    task_guard: Weak<AbortOnDrop>,
    peers: HashMap<SocketAddr, mpsc::Sender<Incoming>>,
    /// Datagrams dropped because a receiver was slow, for the log.
    dropped: u64,
}

async fn serve(
    sock: Arc<UdpSocket>,
    endpoint: Endpoint,
    caps: Capabilities,
    max_peers: usize,
    accept_tx: mpsc::Sender<BoxConnection>,
    guard_rx: oneshot::Receiver<Weak<AbortOnDrop>>,
) {
    let task_guard = guard_rx.await.unwrap_or_default();
    let mut server = Server {
        sock,
        endpoint,
        caps,
        max_peers,
        accept_tx,
        task_guard,
        peers: HashMap::new(),
        dropped: 0,
    };
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        let (n, from) = match server.sock.recv_from(&mut buf).await {
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
        if n == 0 {
            continue;
        }
        match buf[0] {
            TAG_HELLO => server.on_hello(from).await,
            TAG_DATA => server.on_data(from, &buf[1..n]),
            TAG_BYE => {
                if let Some(tx) = server.peers.remove(&from) {
                    let _ = tx.try_send(Incoming::Bye);
                }
            }
            tag => {
                tracing::debug!(endpoint = %server.endpoint, %from, tag, "udp datagram with an unknown tag dropped");
            }
        }
    }
}

impl Server {
    /// A new peer gets a connection (within `max_peers`); a known one said hello again
    /// because our welcome was lost: welcome it again.
    async fn on_hello(&mut self, from: SocketAddr) {
        if self.peers.contains_key(&from) {
            let _ = self.sock.send_to(&[TAG_WELCOME], from).await;
            return;
        }
        if self.peers.len() >= self.max_peers {
            self.peers.retain(|_, tx| !tx.is_closed());
        }
        if self.peers.len() >= self.max_peers {
            let (endpoint, max_peers) = (&self.endpoint, self.max_peers);
            tracing::warn!(endpoint = %endpoint, %from, max_peers, "udp peer refused: too many peers");
            return;
        }
        // Reserve the accept slot first (a connection dropped for lack of room would say bye
        // to a peer that was never welcomed), then welcome, then hand the connection over:
        // once accepted the application may send data, which must not overtake the welcome.
        let Ok(permit) = self.accept_tx.try_reserve() else {
            // The accept queue is full or the listener is gone: the peer retries.
            return;
        };
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let conn = UdpConn {
            early: None,
            sock: self.sock.clone(),
            to: Some(from),
            rx: Rx::Queue(rx),
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
        permit.send(Box::new(conn));
        self.peers.insert(from, tx);
    }

    /// Queues a data datagram for its peer's connection, or drops it (unknown peer, or a
    /// receiver too slow to keep its queue from filling).
    fn on_data(&mut self, from: SocketAddr, payload: &[u8]) {
        let Some(tx) = self.peers.get(&from) else {
            tracing::debug!(endpoint = %self.endpoint, %from, "udp data from an unknown peer dropped");
            return;
        };
        match tx.try_send(Incoming::Data(Bytes::copy_from_slice(payload))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    let (endpoint, dropped) = (&self.endpoint, self.dropped);
                    tracing::warn!(endpoint = %endpoint, %from, dropped, "udp receiver is slow: datagrams dropped");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.peers.remove(&from);
            }
        }
    }
}

struct UdpListen {
    endpoint: Endpoint,
    accept_rx: mpsc::Receiver<BoxConnection>,
    _task: Arc<AbortOnDrop>,
}

#[async_trait]
impl Listener for UdpListen {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        self.accept_rx.recv().await.ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                &self.endpoint,
                "the listener's socket task stopped",
            )
        })
    }
}

enum Rx {
    /// A connected client socket, read directly.
    Socket(Box<[u8]>),
    /// An accepted peer, fed by the listener's task.
    Queue(mpsc::Receiver<Incoming>),
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
                Rx::Queue(rx) => match ready!(rx.poll_recv(cx)) {
                    Some(Incoming::Data(b)) => b,
                    Some(Incoming::Bye) => {
                        this.read_done = true;
                        this.peer_left = true;
                        return Poll::Ready(None);
                    }
                    None => {
                        this.read_done = true;
                        return Poll::Ready(Some(Err(Error::new(
                            ErrorKind::ConnectionLost,
                            &this.info.endpoint,
                            "the listener's socket task stopped",
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
                    match d.first() {
                        Some(&TAG_DATA) => Bytes::copy_from_slice(&d[1..]),
                        Some(&TAG_BYE) => {
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
