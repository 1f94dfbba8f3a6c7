//! The portable half of an `shm://` connection's set-up, shared by the Linux and Windows
//! layers: the handshake words, reading the client's hello, and the listener whose set-ups run
//! on their own tasks.
//!
//! Both layers speak the same handshake over their naming channel (a Unix socket, a named
//! pipe): the client sends [`HELLO`]; the listener answers [`REPLY_OK`] followed by the
//! capacity, the segment length and the OS objects (descriptors or handle values; the reply's
//! length is the OS layer's), or refuses with [`REPLY_NO`], a reason code and, for
//! [`NO_RESOURCES`], the operating system's error number (u64 LE each, then zeros up to the
//! reply's length), so that the client can say what went wrong instead of "closed".

use ductwork_core::{async_trait, BoxConnection, Endpoint, Error, ErrorKind, Listener, Result};
use std::{future::Future, io, time::Duration};
use tokio::{
    io::{AsyncRead, AsyncReadExt},
    sync::mpsc,
    task::JoinHandle,
};

/// What a client sends first.
pub(super) const HELLO: &[u8; 8] = b"DWSHMhi1";
/// How the listener's set-up reply starts when it accepts the client.
pub(super) const REPLY_OK: &[u8; 8] = b"DWSHMok1";
/// How the listener's set-up reply starts when it refuses the client.
pub(super) const REPLY_NO: &[u8; 8] = b"DWSHMno1";
/// Refusal reason: the client runs as another user.
pub(super) const NO_OTHER_USER: u64 = 1;
/// Refusal reason: the listener could not make the connection's objects (out of
/// descriptors, memory, handles); the OS error number follows.
pub(super) const NO_RESOURCES: u64 = 2;
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

/// A refusal reply of `len` bytes (at least 24): [`REPLY_NO`], `code`, the OS error number
/// of `cause` (0 if it has none), zeros.
pub(super) fn refusal(len: usize, code: u64, cause: Option<&io::Error>) -> Vec<u8> {
    let mut no = vec![0u8; len.max(24)];
    no[..8].copy_from_slice(REPLY_NO);
    no[8..16].copy_from_slice(&code.to_le_bytes());
    let os = cause.and_then(io::Error::raw_os_error).unwrap_or(0);
    no[16..24].copy_from_slice(&i64::from(os).to_le_bytes());
    no
}

/// The client's error for a refusal reply (one that starts with [`REPLY_NO`]).
pub(super) fn refused(ep: &Endpoint, reply: &[u8]) -> Error {
    let word = |i: usize| {
        reply
            .get(i..i + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
    };
    match word(8) {
        NO_OTHER_USER => Error::new(
            ErrorKind::PermissionDenied,
            ep,
            "the listener refused us (it runs as another user)",
        ),
        NO_RESOURCES => {
            let os = i32::try_from(word(16) as i64).unwrap_or(0);
            let e = Error::new(
                ErrorKind::Refused,
                ep,
                "the listener could not set up the connection: it ran out of resources \
                 (descriptors, memory or handles); try again later",
            );
            if os != 0 {
                e.with_source(io::Error::from_raw_os_error(os))
            } else {
                e
            }
        }
        code => Error::new(
            ErrorKind::Refused,
            ep,
            format!("the listener refused the connection (reason code {code})"),
        ),
    }
}

/// Where an OS accept loop hands its results: finished connections, or the one error that
/// ended the loop (the listener cannot accept any more).
pub(super) type Accepted = mpsc::Sender<Result<BoxConnection>>;

/// Runs one client's set-up on its own task, so that a slow or hostile client cannot hold up
/// others; a finished connection queues (boundedly) for `accept`, a failed one is logged at
/// `warn` (the client got a refusal saying why, when the listener could still send one) and
/// never reaches `accept`: one client's failed set-up does not end the listener.
pub(super) fn spawn_setup(
    tx: &Accepted,
    ep: &Endpoint,
    setup: impl Future<Output = Result<BoxConnection>> + Send + 'static,
) {
    let tx = tx.clone();
    let ep = ep.clone();
    tokio::spawn(async move {
        match setup.await {
            Ok(c) => {
                let _ = tx.send(Ok(c)).await;
            }
            Err(e) => tracing::warn!(
                endpoint = %ep,
                error = %e,
                "shm set-up with a client failed; the listener keeps accepting"
            ),
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

    /// Only the error that ended the accept loop comes out here (then "stopped"): transient
    /// ones are logged and retried by the loop itself.
    async fn accept(&mut self) -> Result<BoxConnection> {
        match self.rx.recv().await {
            Some(r) => r,
            None => Err(Error::new(
                ErrorKind::Io,
                &self.endpoint,
                "the listener's accepting task stopped",
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
