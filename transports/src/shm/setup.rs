//! The portable half of an `shm://` connection's set-up, shared by the Linux and Windows
//! layers: the handshake words, reading the client's hello, and the listener whose set-ups run
//! on their own tasks.
//!
//! Both layers speak the same handshake over their naming channel (a Unix socket, a named
//! pipe): the client sends [`HELLO`]; the listener answers [`REPLY_OK`] followed by the
//! capacity, the segment length and the OS objects (descriptors or handle values; the reply's
//! length is the OS layer's), or refuses.

use ductwork_core::{async_trait, BoxConnection, Endpoint, Error, ErrorKind, Listener, Result};
use std::{future::Future, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::mpsc,
    task::JoinHandle,
};

/// What a client sends first.
pub(super) const HELLO: &[u8; 8] = b"DWSHMhi1";
/// How the listener's set-up reply starts when it accepts the client.
pub(super) const REPLY_OK: &[u8; 8] = b"DWSHMok1";
/// How long a connecting client may take to say hello.
pub(super) const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How many finished set-ups may wait for `accept`.
const ACCEPT_QUEUE: usize = 16;

/// Reads the client's hello (within [`HELLO_TIMEOUT`]) and checks it.
pub(super) async fn read_hello(stream: &mut (impl AsyncRead + Unpin), ep: &Endpoint) -> Result<()> {
    let mut hello = [0u8; 8];
    match tokio::time::timeout(HELLO_TIMEOUT, stream.read_exact(&mut hello)).await {
        Ok(Ok(_)) if &hello == HELLO => Ok(()),
        Ok(Ok(_)) => Err(Error::new(
            ErrorKind::Protocol,
            ep,
            "bad hello from a client",
        )),
        Ok(Err(e)) => Err(Error::io(ep, "read the client's hello", e)),
        Err(_) => Err(Error::new(
            ErrorKind::Timeout,
            ep,
            "the client said no hello",
        )),
    }
}

/// Where an OS accept loop hands its results: finished connections, or accept errors.
pub(super) type Accepted = mpsc::Sender<Result<BoxConnection>>;

/// Runs one client's set-up on its own task, so that a slow or hostile client cannot hold up
/// others; a finished connection queues (boundedly) for `accept`, a failed one is logged.
pub(super) fn spawn_setup(
    tx: &Accepted,
    setup: impl Future<Output = Result<BoxConnection>> + Send + 'static,
) {
    let tx = tx.clone();
    tokio::spawn(async move {
        match setup.await {
            Ok(c) => {
                let _ = tx.send(Ok(c)).await;
            }
            Err(e) => tracing::debug!(error = %e, "shm set-up with a client failed"),
        }
    });
}

/// The `shm://` listener on every OS: `accept` takes what the OS accept loop queued.
pub(super) struct QueuedListener {
    endpoint: Endpoint,
    rx: mpsc::Receiver<Result<BoxConnection>>,
    task: JoinHandle<()>,
    /// Whatever must live as long as the listener (the socket file's guard on Unix).
    _keep: Box<dyn Send + Sync>,
}

impl QueuedListener {
    /// Starts `accept_loop` with the sending end of the accept queue; `keep` lives as long as
    /// the listener.
    pub(super) fn start<F>(
        ep: &Endpoint,
        keep: Box<dyn Send + Sync>,
        accept_loop: impl FnOnce(Accepted) -> F,
    ) -> QueuedListener
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        QueuedListener {
            endpoint: ep.clone(),
            rx,
            task: tokio::spawn(accept_loop(tx)),
            _keep: keep,
        }
    }
}

#[async_trait]
impl Listener for QueuedListener {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn accept(&mut self) -> Result<BoxConnection> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::new(
                ErrorKind::Io,
                &self.endpoint,
                "the accepting task stopped",
            )),
        }
    }
}

impl Drop for QueuedListener {
    fn drop(&mut self) {
        // The accept loop stops first; then `_keep` (the socket file) goes.
        self.task.abort();
    }
}
