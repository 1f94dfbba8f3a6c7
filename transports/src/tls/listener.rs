//! The `tls://` listener: TCP accepts in one task, each handshake in a task of its own with a
//! deadline, finished sessions handed to [`Listener::accept`] through a bounded queue. A
//! client that fails its handshake, or never finishes it, costs the others nothing.

use super::{config, stream, stream::TlsByteStream, timeout, Config};
use crate::common::framed::framed;
use ductwork_core::{async_trait, BoxConnection, Capabilities, Endpoint, Error, Listener, Result};
use std::{io, sync::Arc, time::Duration};
use tokio::{
    net::TcpListener,
    sync::{mpsc, Semaphore},
    task::JoinHandle,
};
use tokio_rustls::TlsAcceptor;

/// Handshakes one listener runs at once; further clients wait in the OS's backlog.
pub const MAX_HANDSHAKES: usize = 64;

/// Finished sessions not yet taken by `accept` (each also holds a handshake slot until taken,
/// so this and [`MAX_HANDSHAKES`] bound the memory together).
const QUEUE: usize = 16;

/// Why the accept loop waits after an error of the OS (out of descriptors, say) before
/// accepting again: it must not spin, and it must not stop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

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
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match tcp.accept().await {
            Ok((s, _)) => s,
            // A client that gave up before we accepted it is no reason to fail.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => {
                // Reported to whoever accepts, who may call again: transient errors never
                // end a listener.
                if tx
                    .send(Err(Error::io(&endpoint, "accept", e)))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(cfg.nodelay);
        let peer = stream.peer_addr().ok().map(|a| a.to_string());
        let (acceptor, endpoint, caps, tx) =
            (acceptor.clone(), endpoint.clone(), caps.clone(), tx.clone());
        let deadline = cfg.handshake;
        tokio::spawn(async move {
            let who = peer.as_deref().unwrap_or("?");
            let tls = match tokio::time::timeout(
                deadline,
                acceptor.accept(stream::buffered(stream)),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let e = config::handshake_error(&endpoint, e, false);
                    tracing::warn!(endpoint = %endpoint, peer = who, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    let e = timeout(&endpoint, deadline, "the client");
                    tracing::warn!(endpoint = %endpoint, peer = who, "{e}");
                    return;
                }
            };
            let conn = framed(TlsByteStream::new(tls.into()), endpoint, peer, caps);
            let _ = tx.send(Ok(conn)).await;
            drop(slot);
        });
    }
}
