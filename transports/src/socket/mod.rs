//! Socket transports: `tcp://host:port`, `udp://host:port` and `unix:///path`.
//!
//! - **tcp**: duplex, reliable, ordered, length-prefixed frames on a byte stream; crosses hosts.
//!   Options: `nodelay` (default `true`: small messages leave at once).
//! - **udp**: duplex, best-effort datagrams, one frame per datagram with a one-byte tag; a
//!   small handshake makes `connect` fail clearly when nothing listens. The listener
//!   demultiplexes peers by address into one connection each. Messages are capped at
//!   65,506 bytes. Options: `connect_timeout` (or `connect_timeout_ms`; default 2 s),
//!   `max_peers` (default 1024; a hello past it is refused, naming the limit), `idle_timeout`
//!   (default 30 s: a silent peer is forgotten), `max_peer_queue` (1 MiB) and `max_queue`
//!   (16 MiB) bound the bytes queued for unread connections (past them datagrams are dropped,
//!   counted and logged: udp is best-effort).
//! - **unix**: like tcp, on one host, at a filesystem path. The socket file is owner-only
//!   (`0600`) unless `mode=0660` (octal) widens it, from the moment it appears (no window, no
//!   symlink followed); a stale file left by a dead listener is replaced, a live one is
//!   [`ErrorKind::AddrInUse`](ductwork_core::ErrorKind). `peer_uid` (client) and `allow_uids`
//!   (listener) check the peer's uid (`SO_PEERCRED`). Unix only.
//!
//! Every transport here also takes `connect_timeout` (default 10 s; udp: 2 s unless given):
//! a connect that does not complete in time fails with `Timeout`. A unix listener whose
//! backlog is full (it is not accepting) is retried until then. Listeners keep accepting
//! through transient errors (out of descriptors, memory; a client that gave up).
//!
//! Every option is an endpoint option; unknown options are rejected.

mod tcp;
mod udp;
mod unix;

#[cfg(feature = "tls")]
pub(crate) use tcp::connect_stream;
pub use tcp::Tcp;
pub use udp::Udp;
pub use unix::Unix;

#[cfg(all(unix, feature = "pipe"))]
pub(crate) use unix::{bind_path, connect_path};

use crate::common::faults::{is_fatal_accept, Backoff};
use ductwork_core::{
    async_trait, Accept, Boundaries, BoxConnection, Capabilities, Delivery, Direction, Endpoint,
    Error, Listener, Reach, Result,
};
use std::{future::Future, io};

/// Capabilities of a framed byte stream (tcp, unix, and pipe) with the given reach.
pub(crate) fn stream_caps(ep: &Endpoint, reach: Reach) -> Result<Capabilities> {
    Ok(Capabilities {
        direction: Direction::Duplex,
        delivery: Delivery::Reliable,
        ordered: true,
        boundaries: Boundaries::FramedBytes,
        max_message: ep.max_frame()?,
        reach,
        peer_loss: true,
        accept: Accept::PerPeer,
    })
}

/// A bound stream socket (TCP, Unix) that accepts clients.
pub(crate) trait StreamSource: Send + Sync + 'static {
    /// One client's stream.
    type Stream;
    /// Waits for the next client.
    fn accept_stream(&self) -> impl Future<Output = io::Result<Self::Stream>> + Send;
}

/// Implements [`StreamSource`] for a tokio listener type and its stream type.
macro_rules! stream_source {
    ($listener:ty => $stream:ty) => {
        impl $crate::socket::StreamSource for $listener {
            type Stream = $stream;

            async fn accept_stream(&self) -> std::io::Result<$stream> {
                Ok(self.accept().await?.0)
            }
        }
    };
}
use stream_source;

/// Makes a connection of an accepted stream, for the listener's endpoint.
type Wrap<S> = Box<dyn Fn(S, Endpoint) -> BoxConnection + Send>;

/// The listener of the stream transports (tcp, unix, pipe on Unix): accepts a stream, wraps
/// it. Transient accept errors are logged and retried with a backoff (see
/// `crate::common::faults`); only a listener that cannot accept any more returns an error.
pub(crate) struct StreamListener<L: StreamSource> {
    listener: L,
    endpoint: Endpoint,
    wrap: Wrap<L::Stream>,
    backoff: Backoff,
    /// Whatever must live as long as the listener (the socket file's guard for unix).
    _keep: Box<dyn Send>,
}

impl<L: StreamSource> StreamListener<L> {
    /// A listener on `listener`, known as `endpoint`; `keep` lives as long as it.
    pub(crate) fn new(
        listener: L,
        endpoint: Endpoint,
        wrap: impl Fn(L::Stream, Endpoint) -> BoxConnection + Send + 'static,
        keep: Box<dyn Send>,
    ) -> StreamListener<L> {
        StreamListener {
            listener,
            endpoint,
            wrap: Box::new(wrap),
            backoff: Backoff::default(),
            _keep: keep,
        }
    }
}

#[async_trait]
impl<L: StreamSource> Listener for StreamListener<L> {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        loop {
            let e = match self.listener.accept_stream().await {
                Ok(stream) => {
                    self.backoff.reset();
                    return Ok((self.wrap)(stream, self.endpoint.clone()));
                }
                Err(e) => e,
            };
            if e.kind() == io::ErrorKind::ConnectionAborted {
                // A client that gave up before we accepted it is no reason to pause.
                continue;
            }
            if is_fatal_accept(&e) {
                return Err(Error::io(
                    &self.endpoint,
                    "accept (the listener is broken)",
                    e,
                ));
            }
            // Out of descriptors, memory, buffers: the system recovers, so do we.
            self.backoff.wait(&self.endpoint, "accept", &e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use ductwork_core::{Endpoint, ErrorKind, Transport};

    fn ep(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }

    /// Item: `tcp://127.0.0.1` says "missing port" (it used to reach the OS and come back as
    /// `invalid endpoint: bind: invalid socket address`).
    #[tokio::test]
    async fn a_missing_port_is_named() {
        for (t, s) in [
            (&super::Tcp as &dyn Transport, "tcp://127.0.0.1"),
            (&super::Udp, "udp://127.0.0.1"),
        ] {
            let e = t.bind(&ep(s)).await.err().unwrap();
            assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{e}");
            assert!(e.to_string().contains("missing port"), "{e}");
            let e = t.connect(&ep(s)).await.err().unwrap();
            assert!(e.to_string().contains("missing port"), "{e}");
        }
    }

    /// Item: binding an address this host does not have is `Bind`, "cannot bind" (it used to
    /// be `NotFound`, "nothing listening").
    #[tokio::test]
    async fn binding_a_foreign_address_is_a_bind_error() {
        // 192.0.2.1 (TEST-NET-1) is never assigned to a host.
        for (t, s) in [
            (&super::Tcp as &dyn Transport, "tcp://192.0.2.1:0"),
            (&super::Udp, "udp://192.0.2.1:0"),
        ] {
            let e = match t.bind(&ep(s)).await {
                Err(e) => e,
                // Wine lets a socket bind any address; Windows and Unix refuse.
                Ok(_) if cfg!(windows) => continue,
                Ok(_) => panic!("bound {s}, an address no host has"),
            };
            assert_eq!(e.kind(), ErrorKind::Bind, "{e}");
            assert!(
                e.to_string().starts_with(&format!("{s}: cannot bind: ")),
                "{e}"
            );
        }
    }

    /// Item: `unix://tmp/rel.sock` is refused, not silently relative; a missing directory is
    /// a bind error, not "nothing listening".
    #[cfg(unix)]
    #[tokio::test]
    async fn unix_paths_are_absolute_or_explicitly_relative() {
        let e = super::Unix
            .bind(&ep("unix://tmp/rel.sock"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{e}");
        assert!(e.to_string().contains("unix:///tmp/rel.sock"), "{e}");
        let e = super::Unix
            .connect(&ep("unix://tmp/rel.sock"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::InvalidEndpoint, "{e}");
        let e = super::Unix
            .bind(&ep("unix:///nonexistent-dw-dir/a.sock"))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Bind, "{e}");
        // Explicitly relative works: climb from the working directory to the root, then down.
        let dir = std::env::temp_dir().join(format!("dw-rel-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let up = std::env::current_dir().unwrap().components().count() - 1;
        let down = dir.strip_prefix("/").unwrap().display().to_string();
        let s = format!("unix://./{}{down}/a.sock", "../".repeat(up));
        let l = super::Unix.bind(&ep(&s)).await.unwrap();
        super::Unix.connect(l.endpoint()).await.unwrap();
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
