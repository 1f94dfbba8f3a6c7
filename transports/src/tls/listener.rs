//! The `tls://` listener: TCP accepts in one task, each handshake in a task of its own with a
//! deadline, finished sessions handed to [`Listener::accept`] through a bounded queue. A
//! client that fails its handshake, or never finishes it, costs the others nothing: silent
//! connections wait for their first bytes without a handshake slot, so they cannot lock the
//! slots, and the number of connections in either state is bounded.

use super::{config, stream, stream::TlsByteStream, timeout, Config};
use crate::common::faults::{is_fatal_accept, Backoff};
use crate::common::framed::framed;
use ductwork_core::{async_trait, BoxConnection, Capabilities, Endpoint, Error, Listener, Result};
use std::{io, sync::Arc, time::Duration};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

/// Handshakes one listener runs at once (a connection takes a slot when its first bytes
/// arrive); further talking clients wait for a slot within their deadline.
pub const MAX_HANDSHAKES: usize = 64;

/// Connections one listener holds before their sessions are handed over (silent, waiting for
/// a slot or shaking hands); one more is closed at once and logged.
pub const MAX_PENDING: usize = 1024;

/// Finished sessions not yet taken by `accept` (each also holds a handshake slot until taken,
/// so this and [`MAX_HANDSHAKES`] bound the memory together).
const QUEUE: usize = 16;

/// A bound `tls://` listener. See the module docs.
pub(super) struct TlsListener {
    endpoint: Endpoint,
    ready: mpsc::Receiver<Result<BoxConnection>>,
    task: JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp`, known as `endpoint`.
    pub(super) fn spawn(
        tcp: TcpListener,
        endpoint: Endpoint,
        acceptor: TlsAcceptor,
        cfg: Config,
        caps: Capabilities,
    ) -> TlsListener {
        let (tx, ready) = mpsc::channel(QUEUE);
        let task = tokio::spawn(accept_loop(tcp, endpoint.clone(), acceptor, cfg, caps, tx));
        TlsListener {
            endpoint,
            ready,
            task,
        }
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        // Closes the socket; handshakes in flight end at their deadline or when they find
        // nobody to hand their session to.
        self.task.abort();
    }
}

#[async_trait]
impl Listener for TlsListener {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        match self.ready.recv().await {
            Some(r) => r,
            // The accept task never ends by itself; only a panic gets here.
            None => Err(Error::io(
                &self.endpoint,
                "accept",
                io::Error::other("the accept task ended"),
            )),
        }
    }
}

async fn accept_loop(
    tcp: TcpListener,
    endpoint: Endpoint,
    acceptor: TlsAcceptor,
    cfg: Config,
    caps: Capabilities,
    tx: mpsc::Sender<Result<BoxConnection>>,
) {
    let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let pending = Arc::new(Semaphore::new(MAX_PENDING));
    let mut backoff = Backoff::default();
    loop {
        let stream = match tcp.accept().await {
            Ok((s, _)) => {
                backoff.reset();
                s
            }
            // A client that gave up before we accepted it is no reason to fail.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) if is_fatal_accept(&e) => {
                let e = Error::io(&endpoint, "accept (the listener is broken)", e);
                let _ = tx.send(Err(e)).await;
                return;
            }
            // Out of descriptors or memory: logged, retried, never fatal.
            Err(e) => {
                backoff.wait(&endpoint, "accept", &e).await;
                continue;
            }
        };
        let Ok(held) = pending.clone().try_acquire_owned() else {
            tracing::warn!(
                endpoint = %endpoint,
                peer = ?stream.peer_addr().ok(),
                "{MAX_PENDING} connections are already waiting for their TLS handshake: closing a new one"
            );
            continue;
        };
        let _ = stream.set_nodelay(cfg.nodelay);
        let job = Handshake {
            acceptor: acceptor.clone(),
            endpoint: endpoint.clone(),
            caps: caps.clone(),
            tx: tx.clone(),
            slots: slots.clone(),
            deadline: cfg.handshake,
        };
        tokio::spawn(async move {
            job.run(stream).await;
            drop(held);
        });
    }
}

/// What one connection's handshake task needs.
struct Handshake {
    acceptor: TlsAcceptor,
    endpoint: Endpoint,
    caps: Capabilities,
    tx: mpsc::Sender<Result<BoxConnection>>,
    slots: Arc<Semaphore>,
    deadline: Duration,
}

impl Handshake {
    /// Waits for the client's first bytes, then for a slot, then shakes hands, all within the
    /// deadline; hands the session to `accept` or logs why not.
    async fn run(self, stream: TcpStream) {
        let peer = stream.peer_addr().ok().map(|a| a.to_string());
        let who = peer.as_deref().unwrap_or("?");
        let endpoint = &self.endpoint;
        let shake = async {
            // Waits for a byte to read (`readable` alone may wake without one), or for the
            // end of stream or an error, with which the handshake then fails at once.
            let _ = stream.peek(&mut [0u8; 1]).await;
            let slot = self.slots.clone().acquire_owned().await;
            let tls = self.acceptor.accept(stream::buffered(stream)).await;
            (tls, slot)
        };
        let (tls, slot) = match tokio::time::timeout(self.deadline, shake).await {
            Ok((Ok(tls), slot)) => (tls, slot),
            Ok((Err(e), _)) => {
                let e = config::handshake_error(endpoint, e, false);
                tracing::warn!(endpoint = %endpoint, peer = who, "TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                let e = timeout(endpoint, self.deadline, "the client");
                tracing::warn!(endpoint = %endpoint, peer = who, "{e}");
                return;
            }
        };
        let conn = framed(
            TlsByteStream::new(tls.into()),
            endpoint.clone(),
            peer,
            self.caps,
        );
        // The slot is held until `accept` takes the session: the queue is bounded by it too.
        let _ = self.tx.send(Ok(conn)).await;
        drop(slot);
    }
}
